//! wl-soak DIR: a tree of three processes, each with three threads, that
//! checks its own state all the time, for kill and soak tests.
//!
//! The main process P0 forks C1 and C2 (same session and group), writes
//! `P0 C1 C2` to DIR/pids, and says ready. In every process:
//! - a checker thread verifies a 2 MiB anonymous region (32 chunks, each
//!   with a pattern of its own generation) over and over, rewrites one chunk
//!   with a new generation after each pass, and appends the pass number as
//!   an 8-byte record to its own file DIR/rec-I through an fd whose offset
//!   must stay 8 × passes (so the file grows while the process lives and
//!   its memory is intact);
//! - a register thread loops on a 2 ms nanosleep made with inline asm,
//!   holding known values in r12-r15 and, when the CPU has them, in zmm16
//!   (AVX-512) or ymm8 (AVX) across it, and compares them after each, and
//!   its signal mask and alternate signal stack before each;
//! - the main thread: in P0 writes numbered 16-byte records into a pipe
//!   every ms (blocking when it is full), in C1 reads and checks them (one
//!   every 2 ms, so the pipe keeps data), in C2 sleeps.
//!
//! Any difference is written at once to DIR/fail-I and stops that process's
//! checking. On SIGTERM, P0 passes it to C1 and C2, waits for them (exit 0:
//! no failure), joins its threads and writes PASS unless DIR holds a fail
//! file.

use std::arch::asm;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use workloads::{check_pattern, die, errno, fill_pattern, mix64, sleep_ms, terminated};

static FAILED: AtomicBool = AtomicBool::new(false);
/// What the last read returned (minus 1000 × bytes read before it).
static LAST_READ: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

const REGION: usize = 2 << 20;
const CHUNKS: usize = 32;
const CHUNK: usize = REGION / CHUNKS;

/// Record a failure of process `idx` in DIR/fail-IDX.
fn fail(dir: &str, idx: usize, what: String) {
    if !FAILED.swap(true, Ordering::SeqCst) {
        let path = format!("{dir}/fail-{idx}");
        workloads::write_atomic(&path, format!("process {idx}: {what}\n").as_bytes());
    }
}

fn failed() -> bool {
    FAILED.load(Ordering::SeqCst)
}

/// Checker thread: memory passes, recorded in DIR/rec-IDX.
fn checker(dir: String, idx: usize) {
    let region = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            REGION,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if region == libc::MAP_FAILED {
        die("mmap");
    }
    let base = region as *mut u8;
    let mut gens = [0u64; CHUNKS];
    for (i, g) in gens.iter_mut().enumerate() {
        *g = mix64(i as u64 + 1000 * idx as u64);
        unsafe { fill_pattern(base.add(i * CHUNK), CHUNK, *g) };
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(format!("{dir}/rec-{idx}"))
        .unwrap_or_else(|e| die(&format!("open rec-{idx}: {e}")));
    let fd = file.as_raw_fd();
    let mut pass: u64 = 0;
    while !terminated() && !failed() {
        for (i, g) in gens.iter().enumerate() {
            if let Err(off) = unsafe { check_pattern(base.add(i * CHUNK), CHUNK, *g) } {
                fail(
                    &dir,
                    idx,
                    format!("pass {pass}: chunk {i} differs at {off}"),
                );
                return;
            }
        }
        let c = pass as usize % CHUNKS;
        gens[c] = mix64(gens[c] ^ pass);
        unsafe { fill_pattern(base.add(c * CHUNK), CHUNK, gens[c]) };
        pass += 1;
        let rec = pass.to_ne_bytes();
        let n = unsafe { libc::write(fd, rec.as_ptr().cast(), 8) };
        if n != 8 {
            fail(
                &dir,
                idx,
                format!("write of record {pass}: {n}, errno {}", errno()),
            );
            return;
        }
        let off = unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) };
        if off != 8 * pass as i64 {
            fail(
                &dir,
                idx,
                format!("record file offset {off} after {pass} records"),
            );
            return;
        }
        sleep_ms(5);
    }
}

/// A 2 ms nanosleep with known values in r12-r15 across it; returns them.
fn sleep_keeping(ts: &libc::timespec, v: [u64; 4]) -> [u64; 4] {
    let mut r = v;
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") libc::SYS_nanosleep => _,
            in("rdi") ts as *const libc::timespec,
            in("rsi") 0usize,
            inout("r12") r[0],
            inout("r13") r[1],
            inout("r14") r[2],
            inout("r15") r[3],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    r
}

/// The same with 64 known bytes in zmm16 across it.
#[target_feature(enable = "avx512f")]
unsafe fn sleep_keeping_zmm(ts: &libc::timespec, src: &[u64; 8], dst: &mut [u64; 8]) {
    asm!(
        "vmovdqu64 zmm16, [{src}]",
        "syscall",
        "vmovdqu64 [{dst}], zmm16",
        src = in(reg) src.as_ptr(),
        dst = in(reg) dst.as_mut_ptr(),
        inlateout("rax") libc::SYS_nanosleep => _,
        in("rdi") ts as *const libc::timespec,
        in("rsi") 0usize,
        out("zmm16") _,
        lateout("rcx") _,
        lateout("r11") _,
        options(nostack),
    );
}

/// The same with 32 known bytes in ymm8 across it.
#[target_feature(enable = "avx")]
unsafe fn sleep_keeping_ymm(ts: &libc::timespec, src: &[u64; 8], dst: &mut [u64; 8]) {
    asm!(
        "vmovdqu ymm8, [{src}]",
        "syscall",
        "vmovdqu [{dst}], ymm8",
        src = in(reg) src.as_ptr(),
        dst = in(reg) dst.as_mut_ptr(),
        inlateout("rax") libc::SYS_nanosleep => _,
        in("rdi") ts as *const libc::timespec,
        in("rsi") 0usize,
        out("ymm8") _,
        lateout("rcx") _,
        lateout("r11") _,
        options(nostack),
    );
}

/// Register thread.
fn registers(dir: String, idx: usize) {
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 2_000_000,
    };
    let zmm = std::arch::is_x86_feature_detected!("avx512f");
    let ymm = std::arch::is_x86_feature_detected!("avx");
    // Its signal mask (SIGUSR2 blocked on top of what it had) and its
    // alternate signal stack must stay as they are, too.
    let mask_and_altstack = || unsafe {
        let mut m: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut m);
        let mut ss: libc::stack_t = std::mem::zeroed();
        libc::sigaltstack(std::ptr::null(), &mut ss);
        let blocked: Vec<i32> = (1..=64)
            .filter(|&s| libc::sigismember(&m, s) == 1)
            .collect();
        (blocked, ss.ss_sp as usize, ss.ss_size, ss.ss_flags)
    };
    unsafe {
        let mut m: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut m);
        libc::sigaddset(&mut m, libc::SIGUSR2);
        libc::pthread_sigmask(libc::SIG_BLOCK, &m, std::ptr::null_mut());
    }
    let own = mask_and_altstack();
    let mut round: u64 = 0;
    while !terminated() && !failed() {
        round += 1;
        let now = mask_and_altstack();
        if now != own {
            fail(
                &dir,
                idx,
                format!("round {round}: mask and altstack were {own:?}, now {now:?}"),
            );
            return;
        }
        let v = [0u64, 1, 2, 3].map(|i| mix64(round * 4 + i + ((idx as u64) << 40)));
        let got = sleep_keeping(&ts, v);
        if got != v {
            fail(
                &dir,
                idx,
                format!("round {round}: r12-r15 were {v:x?}, now {got:x?}"),
            );
            return;
        }
        let src = [0u64, 1, 2, 3, 4, 5, 6, 7].map(|i| mix64(round ^ (i << 56)));
        let mut dst = [0u64; 8];
        let n = if zmm {
            unsafe { sleep_keeping_zmm(&ts, &src, &mut dst) };
            8
        } else if ymm {
            unsafe { sleep_keeping_ymm(&ts, &src, &mut dst) };
            4
        } else {
            0
        };
        if src[..n] != dst[..n] {
            fail(
                &dir,
                idx,
                format!("round {round}: vector register was {src:x?}, now {dst:x?}"),
            );
            return;
        }
    }
}

/// Start the two checking threads of process `idx`.
fn start_threads(dir: &str, idx: usize) -> Vec<std::thread::JoinHandle<()>> {
    let (d1, d2) = (dir.to_string(), dir.to_string());
    vec![
        std::thread::spawn(move || checker(d1, idx)),
        std::thread::spawn(move || registers(d2, idx)),
    ]
}

fn write_all(fd: i32, buf: &[u8]) -> bool {
    let mut done = 0;
    while done < buf.len() {
        let n = unsafe { libc::write(fd, buf[done..].as_ptr().cast(), buf.len() - done) };
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return false;
        }
        done += n as usize;
    }
    true
}

fn read_exact(fd: i32, buf: &mut [u8]) -> bool {
    LAST_READ.store(0, Ordering::SeqCst);
    let mut done = 0;
    while done < buf.len() {
        let n = unsafe { libc::read(fd, buf[done..].as_mut_ptr().cast(), buf.len() - done) };
        LAST_READ.store(n as i64 - 1000 * done as i64, Ordering::SeqCst);
        if n < 0 {
            if errno() == libc::EINTR {
                if terminated() {
                    return false;
                }
                continue;
            }
            return false;
        }
        if n == 0 {
            return false;
        }
        done += n as usize;
    }
    true
}

/// C1's main thread: read and check the records.
fn reader(dir: &str, fd: i32) {
    let mut next: u64 = 0;
    let mut rec = [0u8; 16];
    while !terminated() && !failed() {
        if !read_exact(fd, &mut rec) {
            if !terminated() {
                fail(
                    dir,
                    1,
                    format!(
                        "pipe read after record {next}: returned {}, errno {}",
                        LAST_READ.load(Ordering::SeqCst),
                        errno()
                    ),
                );
            }
            return;
        }
        let seq = u64::from_ne_bytes(rec[..8].try_into().unwrap());
        let sum = u64::from_ne_bytes(rec[8..].try_into().unwrap());
        if seq != next || sum != mix64(seq) {
            fail(
                dir,
                1,
                format!("pipe record {seq} ({sum:#x}) where {next} was due"),
            );
            return;
        }
        next += 1;
        sleep_ms(2);
    }
}

/// A child: its threads, its main loop, exit 0 unless it failed.
fn child(dir: &str, idx: usize, main: impl FnOnce()) -> ! {
    let threads = start_threads(dir, idx);
    main();
    while !terminated() {
        sleep_ms(10);
    }
    for t in threads {
        let _ = t.join();
    }
    unsafe { libc::_exit(if failed() { 1 } else { 0 }) }
}

fn main() {
    let proto = workloads::init();
    let dir = proto
        .args
        .first()
        .cloned()
        .unwrap_or_else(|| die("usage: wl-soak PIDFILE OUTFILE DIR"));
    let mut fds = [0i32; 2];
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        die("pipe");
    }
    let c1 = unsafe { libc::fork() };
    if c1 == 0 {
        unsafe { libc::close(fds[1]) };
        child(&dir, 1, || reader(&dir, fds[0]));
    }
    let c2 = unsafe { libc::fork() };
    if c2 == 0 {
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        child(&dir, 2, || {});
    }
    if c1 < 0 || c2 < 0 {
        die("fork");
    }
    unsafe { libc::close(fds[0]) };
    workloads::write_atomic(
        &format!("{dir}/pids"),
        format!("{} {c1} {c2}\n", proto.pid()).as_bytes(),
    );
    let threads = start_threads(&dir, 0);
    proto.ready();
    let mut seq: u64 = 0;
    while !terminated() && !failed() {
        let mut rec = [0u8; 16];
        rec[..8].copy_from_slice(&seq.to_ne_bytes());
        rec[8..].copy_from_slice(&mix64(seq).to_ne_bytes());
        if !write_all(fds[1], &rec) {
            if !terminated() {
                fail(
                    &dir,
                    0,
                    format!("pipe write of record {seq}: errno {}", errno()),
                );
            }
            break;
        }
        seq += 1;
        sleep_ms(1);
    }
    while !terminated() {
        sleep_ms(10);
    }
    let mut result = Ok(());
    for c in [c1, c2] {
        unsafe { libc::kill(c, libc::SIGTERM) };
        let mut status = 0;
        let r = unsafe { libc::waitpid(c, &mut status, 0) };
        if r != c || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
            result = Err(format!("child {c}: waitpid {r}, status {status:#x}"));
        }
    }
    for t in threads {
        let _ = t.join();
    }
    for i in 0..3 {
        if let Ok(s) = std::fs::read_to_string(format!("{dir}/fail-{i}")) {
            result = Err(s.trim().to_string());
        }
    }
    proto.finish(result)
}

//! The workload protocol shared by every test program.
//!
//! Every workload is invoked as `wl-NAME PIDFILE OUTFILE [args...]`. It
//!
//! 1. calls [`init`]: `setsid()` (so it is its own session and group leader
//!    and needs no `--shell-job`; [`init_shell_job`] instead stays in the
//!    launcher's session, as a job of its own group), closes every inherited
//!    fd above 2,
//!    installs the SIGTERM handler (a plain `sigaction`, which also tests that
//!    sigactions survive a dump and restore);
//! 2. builds its state and records everything it will check;
//! 3. calls [`Protocol::ready`], which writes its pid to PIDFILE atomically
//!    (PIDFILE.tmp, then rename). `ready` allocates nothing, so a workload
//!    that compares `/proc/self/maps` can record it just before;
//! 4. waits until SIGTERM arrived ([`terminated`], [`wait_for_term`]);
//! 5. checks its state and calls [`Protocol::finish`], which adds the
//!    protocol-level facts (pid unchanged, still session and group leader,
//!    SIGTERM handler still installed) and writes `PASS\n` or
//!    `FAIL: <what differs>\n` to OUTFILE atomically, then exits 0.

pub mod sigrec;

use std::ffi::CString;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};

/// Where wl-pipe puts its pipe: read end, write end.
pub const PIPE_FDS: [i32; 2] = [40, 41];
/// Where wl-socket puts its unix socketpair.
pub const SOCKET_FDS: [i32; 2] = [50, 51];

/// The fds wl-files opens, by number, and the file (in DIR) behind each.
pub mod files {
    /// O_RDONLY, offset 5.
    pub const RO_FD: i32 = 3;
    pub const RO_NAME: &str = "ro.txt";
    /// O_WRONLY|O_APPEND.
    pub const APPEND_FD: i32 = 7;
    pub const APPEND_NAME: &str = "append.txt";
    /// O_RDWR, offset 10.
    pub const RW_FD: i32 = 100;
    pub const RW_NAME: &str = "rw.txt";
    /// O_RDONLY|O_NONBLOCK.
    pub const NONBLOCK_FD: i32 = 1000;
    pub const NONBLOCK_NAME: &str = "nonblock.txt";
    /// O_RDONLY with FD_CLOEXEC.
    pub const CLOEXEC_FD: i32 = 42;
    pub const CLOEXEC_NAME: &str = "cloexec.txt";
    /// O_RDONLY|O_DIRECTORY on DIR itself.
    pub const DIR_FD: i32 = 50;
    /// /dev/null, O_WRONLY.
    pub const DEVNULL_FD: i32 = 60;
    /// /dev/zero, O_RDONLY.
    pub const DEVZERO_FD: i32 = 61;
}

/// The fds wl-eventfds builds, by number, and the epoll data words of its
/// watches.
pub mod evfds {
    /// eventfd, counter 7, EFD_NONBLOCK.
    pub const EFD: i32 = 10;
    /// eventfd, counter 3, EFD_SEMAPHORE | EFD_NONBLOCK.
    pub const EFD_SEM: i32 = 11;
    /// timerfd, CLOCK_MONOTONIC, one-shot in an hour.
    pub const TFD_LONG: i32 = 12;
    /// signalfd for SIGUSR1, SFD_NONBLOCK.
    pub const SFD: i32 = 13;
    /// A pipe, read end (with one byte in it) and write end.
    pub const PIPE_R: i32 = 14;
    pub const PIPE_W: i32 = 15;
    /// timerfd, CLOCK_BOOTTIME, expired once, not read.
    pub const TFD_EXPIRED: i32 = 16;
    /// timerfd, CLOCK_MONOTONIC, every 100 ms, never read.
    pub const TFD_PERIODIC: i32 = 17;
    /// timerfd, CLOCK_MONOTONIC, TFD_TIMER_ABSTIME an hour ahead.
    pub const TFD_ABS: i32 = 18;
    /// The epoll watching them, and the epoll nested in it.
    pub const EP: i32 = 20;
    pub const EP_INNER: i32 = 21;
    pub const D_EFD: u64 = 0xe0;
    pub const D_TFD_LONG: u64 = 0x12;
    pub const D_SFD: u64 = 0x13;
    pub const D_PIPE_R: u64 = 0x14;
    pub const D_PIPE_W: u64 = 0x15;
    pub const D_TFD_EXPIRED: u64 = 0x16;
    pub const D_INNER: u64 = 0x21;
}

static TERM: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigterm(_sig: libc::c_int) {
    TERM.store(true, Ordering::SeqCst);
}

/// True once SIGTERM arrived.
pub fn terminated() -> bool {
    TERM.load(Ordering::SeqCst)
}

/// Address of the SIGTERM handler, for comparisons.
pub fn sigterm_handler_addr() -> usize {
    on_sigterm as extern "C" fn(libc::c_int) as usize
}

/// Sleep `ms` milliseconds with nanosleep (returns early on a signal).
pub fn sleep_ms(ms: u64) {
    let ts = libc::timespec {
        tv_sec: (ms / 1000) as libc::time_t,
        tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
    };
    unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
}

/// Loop sleeping 10 ms until SIGTERM arrived.
pub fn wait_for_term() {
    while !terminated() {
        sleep_ms(10);
    }
}

/// CLOCK_MONOTONIC in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The raw pid from the kernel (no libc caching).
pub fn raw_getpid() -> i32 {
    unsafe { libc::syscall(libc::SYS_getpid) as i32 }
}

/// errno of the last failed call.
pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A pseudo-random 64-bit value derived from `x` (splitmix64).
pub fn mix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fill `len` bytes at `addr` with the pattern of `seed` (one u64 per 8
/// bytes, derived from its address), so it can be checked without a copy.
///
/// # Safety
/// `addr..addr+len` must be writable and 8-byte aligned; `len % 8 == 0`.
pub unsafe fn fill_pattern(addr: *mut u8, len: usize, seed: u64) {
    let p = addr as *mut u64;
    for i in 0..len / 8 {
        let a = p.add(i) as u64;
        p.add(i).write_volatile(mix64(a ^ seed));
    }
}

/// Check the pattern written by [`fill_pattern`]; returns the offset of the
/// first mismatching word.
///
/// # Safety
/// `addr..addr+len` must be readable and 8-byte aligned; `len % 8 == 0`.
pub unsafe fn check_pattern(addr: *const u8, len: usize, seed: u64) -> Result<(), usize> {
    let p = addr as *const u64;
    for i in 0..len / 8 {
        let a = p.add(i) as u64;
        if p.add(i).read_volatile() != mix64(a ^ seed) {
            return Err(i * 8);
        }
    }
    Ok(())
}

/// Accumulates the differences a workload finds.
#[derive(Default)]
pub struct Checker {
    failures: Vec<String>,
}

impl Checker {
    pub fn new() -> Self {
        Self::default()
    }
    /// Record `what` as a failure unless `ok`.
    pub fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(what());
        }
    }
    /// Record a failure if `before != after`.
    pub fn eq<T: PartialEq + std::fmt::Debug>(&mut self, what: &str, before: T, after: T) {
        if before != after {
            self.failures
                .push(format!("{what}: was {before:?}, now {after:?}"));
        }
    }
    pub fn fail(&mut self, what: impl Into<String>) {
        self.failures.push(what.into());
    }
    pub fn failed(&self) -> bool {
        !self.failures.is_empty()
    }
    pub fn into_result(self) -> Result<(), String> {
        if self.failures.is_empty() {
            Ok(())
        } else {
            Err(self.failures.join("; "))
        }
    }
}

/// The state of the protocol; made by [`init`].
pub struct Protocol {
    /// Arguments after PIDFILE and OUTFILE.
    pub args: Vec<String>,
    pub pidfile: String,
    pub outfile: String,
    pid: i32,
    /// Stayed in the launcher's session ([`init_shell_job`]).
    shell_job: bool,
    pidfile_c: CString,
    pidfile_tmp_c: CString,
    pid_text: Vec<u8>,
}

/// Start the protocol: parse `PIDFILE OUTFILE [args...]`, setsid, close
/// inherited fds above 2, install the SIGTERM handler.
pub fn init() -> Protocol {
    init_opts(false)
}

/// Like [`init`], but stay in the launcher's session (a shell's, with its
/// terminal) and only become a process group leader, like a shell job: such
/// a task needs `--shell-job`. [`Protocol::finish`] then checks that it is
/// still its group's leader and not a session leader.
pub fn init_shell_job() -> Protocol {
    init_opts(true)
}

fn init_opts(shell_job: bool) -> Protocol {
    let mut argv: Vec<String> = std::env::args().collect();
    if argv.len() < 3 {
        eprintln!(
            "usage: {} PIDFILE OUTFILE [args...]",
            argv.first().map(String::as_str).unwrap_or("wl")
        );
        std::process::exit(2);
    }
    let args = argv.split_off(3);
    let outfile = argv.pop().unwrap();
    let pidfile = argv.pop().unwrap();
    unsafe {
        if shell_job {
            if libc::setpgid(0, 0) < 0 {
                die(&format!("setpgid: {}", std::io::Error::last_os_error()));
            }
            if libc::getsid(0) == raw_getpid() {
                die("a session leader: start it from a shell (e.g. under `script -c`)");
            }
        } else if libc::setsid() < 0 {
            die(&format!("setsid: {}", std::io::Error::last_os_error()));
        }
        // Whatever the launcher leaked (a test runner's pipes, say) is not
        // this workload's state.
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = sigterm_handler_addr();
        sa.sa_flags = 0;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut()) != 0 {
            die("sigaction(SIGTERM)");
        }
    }
    let pid = raw_getpid();
    Protocol {
        args,
        pidfile_c: CString::new(pidfile.clone()).unwrap(),
        pidfile_tmp_c: CString::new(format!("{pidfile}.tmp")).unwrap(),
        pid_text: format!("{pid}\n").into_bytes(),
        pidfile,
        outfile,
        pid,
        shell_job,
    }
}

/// Print to stderr (the workload log) and exit 1: setup failed.
pub fn die(msg: &str) -> ! {
    eprintln!("workload setup failed: {msg}");
    std::process::exit(1);
}

impl Protocol {
    /// The pid at init.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Say "ready": write the pid to PIDFILE atomically. Allocates nothing.
    pub fn ready(&self) {
        unsafe {
            let fd = libc::open(
                self.pidfile_tmp_c.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
                0o644,
            );
            if fd < 0 {
                die("open pidfile.tmp");
            }
            let n = libc::write(
                fd,
                self.pid_text.as_ptr() as *const libc::c_void,
                self.pid_text.len(),
            );
            if n != self.pid_text.len() as isize {
                die("write pidfile.tmp");
            }
            libc::close(fd);
            if libc::rename(self.pidfile_tmp_c.as_ptr(), self.pidfile_c.as_ptr()) != 0 {
                die("rename pidfile");
            }
        }
    }

    /// Check the protocol-level facts, then write PASS or FAIL to OUTFILE
    /// and exit 0.
    pub fn finish(self, result: Result<(), String>) -> ! {
        let mut c = Checker::new();
        if let Err(e) = result {
            c.fail(e);
        }
        let now = raw_getpid();
        c.eq("getpid()", self.pid, now);
        match std::fs::read_to_string(&self.pidfile) {
            Ok(s) => c.eq(
                "pid in pidfile vs getpid()",
                s.trim().to_string(),
                now.to_string(),
            ),
            Err(e) => c.fail(format!("read pidfile {}: {e}", self.pidfile)),
        }
        unsafe {
            if self.shell_job {
                let sid = libc::getsid(0);
                c.check(sid != now, || {
                    format!("getsid(0) is {sid}: the shell job became a session leader")
                });
            } else {
                c.eq("getsid(0)", now, libc::getsid(0));
            }
            c.eq("getpgid(0)", now, libc::getpgid(0));
            let mut old: libc::sigaction = std::mem::zeroed();
            libc::sigaction(libc::SIGTERM, std::ptr::null(), &mut old);
            c.eq("SIGTERM handler", sigterm_handler_addr(), old.sa_sigaction);
        }
        let text = match c.into_result() {
            Ok(()) => "PASS\n".to_string(),
            Err(e) => format!("FAIL: {e}\n"),
        };
        eprint!("{text}");
        write_atomic(&self.outfile, text.as_bytes());
        std::process::exit(0);
    }
}

/// Write `data` to `path` via `path.tmp` and rename.
pub fn write_atomic(path: &str, data: &[u8]) {
    let tmp = format!("{path}.tmp");
    if let Err(e) = std::fs::write(&tmp, data).and_then(|_| std::fs::rename(&tmp, path)) {
        eprintln!("write {path}: {e}");
        std::process::exit(1);
    }
}

/// Read a whole file with raw syscalls into a preallocated buffer (no
/// allocation). Returns the number of bytes read, or None if it did not fit.
pub fn read_into(path: &std::ffi::CStr, buf: &mut [u8]) -> Option<usize> {
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return None;
        }
        let mut n = 0;
        loop {
            if n == buf.len() {
                libc::close(fd);
                return None;
            }
            let r = libc::read(
                fd,
                buf[n..].as_mut_ptr() as *mut libc::c_void,
                buf.len() - n,
            );
            if r < 0 {
                if errno() == libc::EINTR {
                    continue;
                }
                libc::close(fd);
                return None;
            }
            if r == 0 {
                break;
            }
            n += r as usize;
        }
        libc::close(fd);
        Some(n)
    }
}

/// Describe the differences between two line-oriented texts.
pub fn diff_lines(before: &str, after: &str) -> Option<String> {
    if before == after {
        return None;
    }
    let b: Vec<&str> = before.lines().collect();
    let a: Vec<&str> = after.lines().collect();
    let mut out = String::new();
    for l in &b {
        if !a.contains(l) {
            let _ = write!(out, " [-{l}]");
        }
    }
    for l in &a {
        if !b.contains(l) {
            let _ = write!(out, " [+{l}]");
        }
    }
    if out.is_empty() {
        out.push_str(" (same lines, different order)");
    }
    Some(out)
}

/// The SIGTERM flag's address (a byte that becomes non-zero), for asm loops.
pub fn term_flag_ptr() -> *const u8 {
    TERM.as_ptr() as *const u8
}

// ------------------------------------------------ helpers for process families

/// The directory of OUTFILE: the test's scratch dir, where a family of
/// processes coordinates through files.
pub fn scratch_dir(p: &Protocol) -> std::path::PathBuf {
    std::path::Path::new(&p.outfile)
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .to_path_buf()
}

/// Wait until `path` exists (polling every 2 ms); false after `ms`.
pub fn wait_file(path: &std::path::Path, ms: u64) -> bool {
    let t0 = std::time::Instant::now();
    while !path.exists() {
        if t0.elapsed() > std::time::Duration::from_millis(ms) {
            return false;
        }
        sleep_ms(2);
    }
    true
}

/// Create the (empty) file `dir/name`, atomically.
pub fn touch(dir: &std::path::Path, name: &str) {
    write_atomic(dir.join(name).to_str().unwrap(), b"");
}

/// A child's end: write `PASS` or `FAIL (child PID): ...` to
/// `dir/CHILD-OUT-<pid>` and `_exit` 0 or 1.
pub fn child_finish(dir: &std::path::Path, c: Checker) -> ! {
    let me = raw_getpid();
    let text = match c.into_result() {
        Ok(()) => "PASS\n".to_string(),
        Err(e) => format!("FAIL (child {me}): {e}\n"),
    };
    eprint!("child {me}: {text}");
    let _ = std::fs::write(dir.join(format!("CHILD-OUT-{me}")), &text);
    unsafe { libc::_exit(if text == "PASS\n" { 0 } else { 1 }) }
}

/// Reap `kid` (up to 10 s); a kid that exited non-zero, was killed or did
/// not end is a failure, with what its CHILD-OUT file says.
pub fn reap_child(dir: &std::path::Path, kid: i32, c: &mut Checker) {
    let t0 = std::time::Instant::now();
    loop {
        let mut st = 0;
        let r = unsafe { libc::waitpid(kid, &mut st, libc::WNOHANG) };
        if r == kid {
            if !(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0) {
                let details = std::fs::read_to_string(dir.join(format!("CHILD-OUT-{kid}")))
                    .unwrap_or_else(|e| format!("no CHILD-OUT-{kid}: {e}"));
                c.fail(format!("child {kid} status {st:#x}: {}", details.trim()));
            }
            return;
        }
        if r < 0 {
            c.fail(format!(
                "waitpid({kid}): {}",
                std::io::Error::last_os_error()
            ));
            return;
        }
        if t0.elapsed() > std::time::Duration::from_secs(10) {
            c.fail(format!("child {kid} did not end within 10 s"));
            return;
        }
        sleep_ms(2);
    }
}

/// The /proc/self/maps line of the mapping that starts at `addr`.
pub fn maps_line(addr: usize) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .find(|l| {
            l.split('-')
                .next()
                .and_then(|a| usize::from_str_radix(a, 16).ok())
                == Some(addr)
        })
        .map(str::to_string)
}

/// Check that the mapping at `addr` has permissions `perms` (like "rw-s"),
/// ends at `addr + len` and names `path` (the whole rest of the line after
/// the inode), recording failures under `who`.
pub fn check_maps_line(
    c: &mut Checker,
    who: &str,
    addr: usize,
    len: usize,
    perms: &str,
    path: &str,
) {
    let Some(l) = maps_line(addr) else {
        c.fail(format!(
            "{who}: no mapping starts at {addr:#x} in /proc/self/maps"
        ));
        return;
    };
    let f: Vec<&str> = l.splitn(6, ' ').collect();
    let range = format!("{addr:x}-{:x}", addr + len);
    let name = f.get(5).map(|s| s.trim_start()).unwrap_or("");
    c.check(
        f.first() == Some(&range.as_str()) && f.get(1) == Some(&perms) && name == path,
        || format!("{who}: maps line {l:?}, expected {range} {perms} ... {path}"),
    );
}

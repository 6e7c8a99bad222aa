//! wl-threads N: a process with N extra threads.
//!
//! Every thread has its own thread_local value, its own signal mask (SIGTERM
//! plus a distinct set of signals derived from its index, so that SIGTERM
//! goes to the main thread) and records its tid (gettid). By index i % 4
//! the thread then waits in one of four ways until told to stop:
//!  0. blocked in a std Condvar wait (a futex under the hood);
//!  1. a loop of 20 ms nanosleep syscalls made with inline asm, holding
//!     known values in r8, r9, r12-r15 across each syscall;
//!  2. a raw FUTEX_WAIT made with inline asm, with known values in the same
//!     registers;
//!  3. spinning on a computation (a 100 000-step mix64 chain) whose result
//!     it compares with the first round's; at most 3 threads spin, the rest
//!     of this class sleep like class 1.
//!
//! The main thread waits for SIGTERM. Then it checks /proc/self/task lists
//! exactly the tids it listed at ready time, sets the stop flag, wakes the
//! waiters and joins everyone. Each thread verifies its tid, thread_local
//! (value and address), sigmask (pthread_sigmask query) and registers or
//! computation. PASS if every thread passed.

use std::arch::asm;
use std::cell::Cell;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use workloads::{die, mix64, raw_getpid, terminated, Checker};

thread_local! {
    static TL: Cell<u64> = const { Cell::new(0) };
}

static STOP: AtomicBool = AtomicBool::new(false);
static FUTEX_WORD: AtomicU32 = AtomicU32::new(0);
static READY: AtomicUsize = AtomicUsize::new(0);
static SPINNERS: AtomicUsize = AtomicUsize::new(0);
const MAX_SPINNERS: usize = 3;

fn gettid() -> i32 {
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// The signals a thread may block, one per bit of (index + 1).
fn mask_signals() -> Vec<i32> {
    let r = libc::SIGRTMIN();
    vec![
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGPIPE,
        libc::SIGALRM,
        libc::SIGWINCH,
        libc::SIGURG,
        r + 1,
        r + 2,
        r + 3,
    ]
}

/// The set of signal numbers thread `i` blocks.
fn wanted_mask(i: usize) -> BTreeSet<i32> {
    let sigs = mask_signals();
    let mut set: BTreeSet<i32> = sigs
        .iter()
        .enumerate()
        .filter(|(b, _)| (i + 1) >> b & 1 == 1)
        .map(|(_, s)| *s)
        .collect();
    set.insert(libc::SIGTERM);
    set
}

fn current_mask() -> BTreeSet<i32> {
    unsafe {
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut old);
        (1..=64)
            .filter(|&s| libc::sigismember(&old, s) == 1)
            .collect()
    }
}

fn set_mask(set: &BTreeSet<i32>) {
    unsafe {
        let mut m: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut m);
        for &s in set {
            libc::sigaddset(&mut m, s);
        }
        if libc::pthread_sigmask(libc::SIG_SETMASK, &m, std::ptr::null_mut()) != 0 {
            die("pthread_sigmask");
        }
    }
}

/// A syscall with six known values in r8, r9, r12-r15 across it.
///
/// # Safety
/// The syscall must be one that is safe with these arguments.
unsafe fn syscall_keeping(nr: i64, a: [u64; 4], regs: &mut [u64; 6]) -> i64 {
    let ret: i64;
    asm!(
        "syscall",
        inlateout("rax") nr => ret,
        in("rdi") a[0],
        in("rsi") a[1],
        in("rdx") a[2],
        in("r10") a[3],
        inout("r8") regs[0],
        inout("r9") regs[1],
        inout("r12") regs[2],
        inout("r13") regs[3],
        inout("r14") regs[4],
        inout("r15") regs[5],
        lateout("rcx") _,
        lateout("r11") _,
        options(nostack),
    );
    ret
}

fn reg_values(i: usize) -> [u64; 6] {
    let mut v = [0u64; 6];
    for (k, x) in v.iter_mut().enumerate() {
        *x = mix64((i as u64) << 8 | k as u64);
    }
    v
}

fn chain(seed: u64, steps: u32) -> u64 {
    let mut x = seed;
    for _ in 0..steps {
        x = mix64(std::hint::black_box(x));
    }
    x
}

struct Shared {
    lock: Mutex<bool>,
    cv: Condvar,
    tids: Mutex<Vec<i32>>,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Condvar,
    Sleep,
    Futex,
    Spin,
}

fn worker(i: usize, sh: Arc<Shared>) -> Result<(), String> {
    let tid = gettid();
    let tl_value = mix64(0x7100_0000 ^ i as u64);
    TL.with(|t| t.set(tl_value));
    let tl_addr = TL.with(|t| t as *const Cell<u64> as usize);
    let mask = wanted_mask(i);
    set_mask(&mask);
    sh.tids.lock().unwrap().push(tid);
    let mode = match i % 4 {
        0 => Mode::Condvar,
        1 => Mode::Sleep,
        2 => Mode::Futex,
        _ => {
            if SPINNERS.fetch_add(1, Ordering::SeqCst) < MAX_SPINNERS {
                Mode::Spin
            } else {
                Mode::Sleep
            }
        }
    };
    let mut c = Checker::new();
    let want_regs = reg_values(i);
    let mut rounds = 0u64;
    match mode {
        Mode::Condvar => {
            let mut g = sh.lock.lock().unwrap();
            READY.fetch_add(1, Ordering::SeqCst);
            while !*g {
                g = sh.cv.wait(g).unwrap();
                rounds += 1;
            }
        }
        Mode::Sleep => {
            READY.fetch_add(1, Ordering::SeqCst);
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 20_000_000,
            };
            while !STOP.load(Ordering::SeqCst) {
                let mut regs = want_regs;
                let r = unsafe {
                    syscall_keeping(
                        libc::SYS_nanosleep,
                        [&ts as *const _ as u64, 0, 0, 0],
                        &mut regs,
                    )
                };
                rounds += 1;
                if r != 0 && r != -(libc::EINTR as i64) {
                    c.fail(format!("nanosleep returned {r}"));
                    break;
                }
                if regs != want_regs {
                    c.fail(format!(
                        "r8,r9,r12-r15 across nanosleep: {regs:x?}, want {want_regs:x?}"
                    ));
                    break;
                }
            }
        }
        Mode::Futex => {
            READY.fetch_add(1, Ordering::SeqCst);
            while FUTEX_WORD.load(Ordering::SeqCst) == 0 {
                let mut regs = want_regs;
                let r = unsafe {
                    syscall_keeping(
                        libc::SYS_futex,
                        [
                            FUTEX_WORD.as_ptr() as u64,
                            (libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG) as u64,
                            0,
                            0,
                        ],
                        &mut regs,
                    )
                };
                rounds += 1;
                if r != 0 && r != -(libc::EINTR as i64) && r != -(libc::EAGAIN as i64) {
                    c.fail(format!("futex wait returned {r}"));
                    break;
                }
                if regs != want_regs {
                    c.fail(format!(
                        "r8,r9,r12-r15 across futex wait: {regs:x?}, want {want_regs:x?}"
                    ));
                    break;
                }
            }
        }
        Mode::Spin => {
            let seed = mix64(0x5919 ^ i as u64);
            let first = chain(seed, 100_000);
            READY.fetch_add(1, Ordering::SeqCst);
            let mut bad = 0u64;
            while !STOP.load(Ordering::SeqCst) {
                if chain(seed, 100_000) != first {
                    bad += 1;
                }
                rounds += 1;
                workloads::sleep_ms(1);
            }
            c.eq("spin rounds with a wrong result", 0, bad);
            c.eq("final computation", first, chain(seed, 100_000));
        }
    }
    c.eq("gettid()", tid, gettid());
    c.eq("thread_local value", tl_value, TL.with(|t| t.get()));
    c.eq(
        "thread_local address",
        tl_addr,
        TL.with(|t| t as *const Cell<u64> as usize),
    );
    c.eq("sigmask", mask, current_mask());
    let _ = rounds;
    c.into_result()
        .map_err(|e| format!("thread {i} (tid {tid}, {mode:?}): {e}"))
}

fn task_tids() -> BTreeSet<i32> {
    std::fs::read_dir("/proc/self/task")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn main() {
    let p = workloads::init();
    let n: usize = p
        .args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| die("usage: wl-threads PIDFILE OUTFILE N"));
    let main_tl = 0x3a1_0000_0000_0001u64;
    TL.with(|t| t.set(main_tl));
    let main_mask = current_mask();
    let sh = Arc::new(Shared {
        lock: Mutex::new(false),
        cv: Condvar::new(),
        tids: Mutex::new(Vec::new()),
    });
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let sh2 = sh.clone();
        let h = std::thread::Builder::new()
            .name(format!("w{i}"))
            .stack_size(128 * 1024)
            .spawn(move || worker(i, sh2))
            .unwrap_or_else(|e| die(&format!("spawn thread {i}: {e}")));
        handles.push(h);
    }
    let t0 = std::time::Instant::now();
    while READY.load(Ordering::SeqCst) < n {
        if t0.elapsed() > std::time::Duration::from_secs(8) {
            die("threads not ready");
        }
        workloads::sleep_ms(2);
    }
    // Let the waiters get into their waits.
    workloads::sleep_ms(50);
    let mut expected: BTreeSet<i32> = sh.tids.lock().unwrap().iter().copied().collect();
    expected.insert(raw_getpid());
    let listed = task_tids();
    if listed != expected {
        die(&format!(
            "/proc/self/task {listed:?} is not the threads' tids {expected:?}"
        ));
    }
    eprintln!("{} tasks: {listed:?}", listed.len());
    p.ready();
    while !terminated() {
        workloads::sleep_ms(10);
    }
    let mut c = Checker::new();
    let now = task_tids();
    if now != listed {
        let gone: Vec<_> = listed.difference(&now).collect();
        let new: Vec<_> = now.difference(&listed).collect();
        c.fail(format!(
            "/proc/self/task differs: gone {gone:?}, new {new:?} ({} tasks now)",
            now.len()
        ));
    }
    c.eq("main gettid()", raw_getpid(), gettid());
    c.eq("main thread_local", main_tl, TL.with(|t| t.get()));
    c.eq("main sigmask", main_mask, current_mask());
    STOP.store(true, Ordering::SeqCst);
    {
        let mut g = sh.lock.lock().unwrap();
        *g = true;
        sh.cv.notify_all();
    }
    FUTEX_WORD.store(1, Ordering::SeqCst);
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            FUTEX_WORD.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        );
    }
    let mut failed = 0;
    for (i, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failed += 1;
                if failed <= 8 {
                    c.fail(e);
                }
            }
            Err(_) => {
                failed += 1;
                c.fail(format!("thread {i} panicked"));
            }
        }
    }
    c.check(failed == 0, || format!("{failed} of {n} threads failed"));
    p.finish(c.into_result());
}

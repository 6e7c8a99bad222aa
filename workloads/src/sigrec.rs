//! Records every delivery of the signals a workload watches, from an
//! SA_SIGINFO handler (atomics only: async-signal-safe): signal, si_code,
//! the two ints after the header (si_pid/si_uid, or si_timerid/si_overrun),
//! si_value, the receiving thread and the CLOCK_MONOTONIC time.

use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};

const MAX: usize = 4096;

static N: AtomicUsize = AtomicUsize::new(0);
static SIG: [AtomicI32; MAX] = [const { AtomicI32::new(0) }; MAX];
static CODE: [AtomicI32; MAX] = [const { AtomicI32::new(0) }; MAX];
static A: [AtomicI32; MAX] = [const { AtomicI32::new(0) }; MAX];
static B: [AtomicI32; MAX] = [const { AtomicI32::new(0) }; MAX];
static VALUE: [AtomicU64; MAX] = [const { AtomicU64::new(0) }; MAX];
static TID: [AtomicI32; MAX] = [const { AtomicI32::new(0) }; MAX];
static NS: [AtomicU64; MAX] = [const { AtomicU64::new(0) }; MAX];

/// One delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rec {
    pub sig: i32,
    pub code: i32,
    /// si_pid (kill, sigqueue) or si_timerid (POSIX timers).
    pub a: i32,
    /// si_uid (kill, sigqueue) or si_overrun (POSIX timers).
    pub b: i32,
    pub value: u64,
    pub tid: i32,
    pub ns: u64,
}

extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let i = N.fetch_add(1, Ordering::SeqCst);
    if i >= MAX {
        return;
    }
    let p = info as *const u8;
    let int_at = |off: usize| unsafe { (p.add(off) as *const i32).read_unaligned() };
    let value = unsafe { (p.add(24) as *const u64).read_unaligned() };
    SIG[i].store(sig, Ordering::SeqCst);
    CODE[i].store(int_at(8), Ordering::SeqCst);
    A[i].store(int_at(16), Ordering::SeqCst);
    B[i].store(int_at(20), Ordering::SeqCst);
    VALUE[i].store(value, Ordering::SeqCst);
    TID[i].store(gettid(), Ordering::SeqCst);
    NS[i].store(crate::monotonic_ns(), Ordering::SeqCst);
}

/// The calling thread's id.
pub fn gettid() -> i32 {
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// Install the recording handler for `sig` (SA_SIGINFO | SA_RESTART).
pub fn watch(sig: i32) {
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
            crate::die(&format!("sigaction({sig})"));
        }
    }
}

/// Every delivery so far, in order.
pub fn all() -> Vec<Rec> {
    let n = N.load(Ordering::SeqCst).min(MAX);
    (0..n)
        .map(|i| Rec {
            sig: SIG[i].load(Ordering::SeqCst),
            code: CODE[i].load(Ordering::SeqCst),
            a: A[i].load(Ordering::SeqCst),
            b: B[i].load(Ordering::SeqCst),
            value: VALUE[i].load(Ordering::SeqCst),
            tid: TID[i].load(Ordering::SeqCst),
            ns: NS[i].load(Ordering::SeqCst),
        })
        .collect()
}

/// The deliveries of `sig` so far.
pub fn of(sig: i32) -> Vec<Rec> {
    all().into_iter().filter(|r| r.sig == sig).collect()
}

/// A signal set holding `sigs`.
pub fn set_of(sigs: &[i32]) -> libc::sigset_t {
    unsafe {
        let mut s: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut s);
        for &g in sigs {
            libc::sigaddset(&mut s, g);
        }
        s
    }
}

/// pthread_sigmask(how, sigs) for the calling thread.
pub fn mask(how: i32, sigs: &[i32]) {
    let s = set_of(sigs);
    unsafe { libc::pthread_sigmask(how, &s, std::ptr::null_mut()) };
}

/// Whether `sig` is pending for the calling thread (its own or shared).
pub fn is_pending(sig: i32) -> bool {
    unsafe {
        let mut s: libc::sigset_t = std::mem::zeroed();
        libc::sigpending(&mut s);
        libc::sigismember(&s, sig) == 1
    }
}

/// A line of /proc/self/status (e.g. "ShdPnd"), its value.
pub fn status_field(key: &str) -> String {
    let t = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    t.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

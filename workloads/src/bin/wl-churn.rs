//! wl-churn: a root whose tree changes all the time, for dumps that race
//! with fork, clone, exit and execve.
//!
//! The main thread forks a child every 2 ms that execs /bin/true (exit 0)
//! and reaps every child it forked (waitpid(-1, WNOHANG) between forks); a
//! second thread creates and joins a short-lived thread every ms. A 256 KiB
//! pattern buffer is checked after SIGTERM, every reaped child must have
//! exited 0 and every forked child must be reaped; no unknown child may
//! show up.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use workloads::{check_pattern, die, errno, fill_pattern, sleep_ms, terminated, Checker};

const BUF_LEN: usize = 256 << 10;
const SEED: u64 = 0x6368_7572_6e00_0001;
static THREADS: AtomicU64 = AtomicU64::new(0);

fn reap(live: &mut BTreeSet<i32>, c: &mut Checker, block: bool) {
    loop {
        let mut st = 0;
        let flags = if block { 0 } else { libc::WNOHANG };
        let k = unsafe { libc::waitpid(-1, &mut st, flags) };
        if k <= 0 {
            if k < 0 && errno() != libc::ECHILD {
                c.fail(format!("waitpid: errno {}", errno()));
            }
            return;
        }
        if !live.remove(&k) {
            c.fail(format!("reaped unknown child {k}"));
        }
        if !libc::WIFEXITED(st) || libc::WEXITSTATUS(st) != 0 {
            c.fail(format!("child {k} ended with status {st:#x}"));
        }
    }
}

fn main() {
    let proto = workloads::init();
    let mut buf = vec![0u8; BUF_LEN];
    unsafe { fill_pattern(buf.as_mut_ptr(), BUF_LEN, SEED) };
    let true_path = c"/bin/true";
    let argv = [true_path.as_ptr(), std::ptr::null()];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let spinner = std::thread::spawn(|| {
        while !terminated() {
            std::thread::spawn(|| THREADS.fetch_add(1, Ordering::SeqCst))
                .join()
                .unwrap_or_else(|_| die("a short-lived thread panicked"));
            sleep_ms(1);
        }
    });
    let mut c = Checker::new();
    let mut live = BTreeSet::new();
    let mut forked = 0u64;
    proto.ready();
    while !terminated() {
        let k = unsafe { libc::fork() };
        if k == 0 {
            unsafe {
                libc::execve(true_path.as_ptr(), argv.as_ptr(), envp.as_ptr());
                libc::_exit(127);
            }
        }
        if k < 0 {
            c.fail(format!("fork: errno {}", errno()));
            break;
        }
        live.insert(k);
        forked += 1;
        reap(&mut live, &mut c, false);
        sleep_ms(2);
    }
    while !live.is_empty() && !c.failed() {
        reap(&mut live, &mut c, true);
    }
    let _ = spinner.join();
    c.check(forked > 0, || "forked nothing".into());
    c.check(THREADS.load(Ordering::SeqCst) > 0, || {
        "made no short-lived thread".into()
    });
    if let Err(off) = unsafe { check_pattern(buf.as_ptr(), BUF_LEN, SEED) } {
        c.fail(format!("pattern buffer differs at {off}"));
    }
    proto.finish(c.into_result())
}

//! wl-forker: a root that forks a short-lived child every millisecond.
//!
//! Each child `_exit`s at once with code 7; the root reaps every child it
//! forked (waitpid(-1, WNOHANG) between forks) and counts them.
//!
//! After SIGTERM: the root keeps forking and reaping for 50 ms more, then
//! reaps the rest; every reaped child must have exited 7, every forked child
//! must be reaped, and no unknown child may show up. Its pattern buffer
//! must be intact.

use std::collections::BTreeSet;
use workloads::{check_pattern, die, errno, fill_pattern, sleep_ms, terminated, Checker};

const BUF_LEN: usize = 256 << 10;
const SEED: u64 = 0x666f_726b_6572_0001;

struct State {
    live: BTreeSet<i32>,
    forked: u64,
    reaped: u64,
}

fn fork_one(s: &mut State, c: &mut Checker) {
    let k = unsafe { libc::fork() };
    if k == 0 {
        unsafe { libc::_exit(7) };
    }
    if k < 0 {
        c.fail(format!("fork: errno {}", errno()));
        return;
    }
    s.live.insert(k);
    s.forked += 1;
}

fn reap(s: &mut State, c: &mut Checker, block: bool) {
    loop {
        let mut st = 0;
        let r = unsafe { libc::waitpid(-1, &mut st, if block { 0 } else { libc::WNOHANG }) };
        if r <= 0 {
            return;
        }
        if !s.live.remove(&r) {
            c.fail(format!("reaped an unknown child {r}"));
        }
        if !(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 7) {
            c.fail(format!("child {r} ended with status {st:#x}"));
        }
        s.reaped += 1;
        if block && s.live.is_empty() {
            return;
        }
    }
}

fn main() {
    let p = workloads::init();
    if !p.args.is_empty() {
        die("usage: wl-forker PIDFILE OUTFILE");
    }
    let buf = vec![0u64; BUF_LEN / 8];
    unsafe { fill_pattern(buf.as_ptr() as *mut u8, BUF_LEN, SEED) };
    let mut s = State {
        live: BTreeSet::new(),
        forked: 0,
        reaped: 0,
    };
    // Failures before SIGTERM are kept for the end.
    let mut c = Checker::new();
    for _ in 0..10 {
        fork_one(&mut s, &mut c);
        reap(&mut s, &mut c, false);
        sleep_ms(1);
    }
    p.ready();
    while !terminated() {
        fork_one(&mut s, &mut c);
        reap(&mut s, &mut c, false);
        sleep_ms(1);
    }
    let t0 = std::time::Instant::now();
    let before = s.forked;
    while t0.elapsed() < std::time::Duration::from_millis(50) {
        fork_one(&mut s, &mut c);
        reap(&mut s, &mut c, false);
        sleep_ms(1);
    }
    if !s.live.is_empty() {
        reap(&mut s, &mut c, true);
    }
    c.check(s.forked > before, || "no fork after SIGTERM".into());
    c.check(s.live.is_empty(), || {
        format!("children never reaped: {:?}", s.live)
    });
    c.eq("forked vs reaped", s.forked, s.reaped);
    if let Err(off) = unsafe { check_pattern(buf.as_ptr() as *const u8, BUF_LEN, SEED) } {
        c.fail(format!("pattern buffer differs at offset {off}"));
    }
    eprintln!("forked {} children", s.forked);
    p.finish(c.into_result());
}

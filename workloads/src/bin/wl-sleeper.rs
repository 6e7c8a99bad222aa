//! wl-sleeper KIND: waits inside a syscall when dumped.
//!
//! KIND is one of:
//! - `nanosleep`: clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME) to a
//!   deadline 2 s ahead, again and again;
//! - `poll`: poll(NULL, 0, 500 ms);
//! - `select`: select(0, NULL, NULL, NULL, 500 ms);
//! - `futex`: FUTEX_WAIT_BITSET on a word with an absolute 500 ms deadline;
//! - `pause`: pause() until SIGTERM.
//!
//! EINTR (from SIGTERM or from a restore, which turns an interrupted
//! restartable sleep into -EINTR) means: retry until the deadline, as a
//! correct program does. Each completed wait must have lasted at least as
//! long as asked; any other error is a failure.

use workloads::{die, monotonic_ns, terminated, Checker};

const FUTEX_VALUE: u32 = 0x5eed_f00d;

fn ts_of(ns: u64) -> libc::timespec {
    libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    }
}

fn main() {
    let p = workloads::init();
    let kind = p
        .args
        .first()
        .cloned()
        .unwrap_or_else(|| die("usage: wl-sleeper PIDFILE OUTFILE KIND"));
    let period_ns: u64 = match kind.as_str() {
        "nanosleep" => 2_000_000_000,
        "poll" | "select" | "futex" => 500_000_000,
        "pause" => 0,
        _ => die(&format!("unknown KIND {kind}")),
    };
    let futex_word = Box::new(FUTEX_VALUE);
    let mut c = Checker::new();
    let mut completed = 0u64;
    let mut eintr = 0u64;
    p.ready();
    while !terminated() {
        let start = monotonic_ns();
        let deadline = start + period_ns;
        // One wait to the deadline, retrying on EINTR.
        loop {
            let now = monotonic_ns();
            let left_ms = (deadline.saturating_sub(now)).div_ceil(1_000_000) as i32;
            let r = unsafe {
                match kind.as_str() {
                    "nanosleep" => {
                        let ts = ts_of(deadline);
                        let e = libc::clock_nanosleep(
                            libc::CLOCK_MONOTONIC,
                            libc::TIMER_ABSTIME,
                            &ts,
                            std::ptr::null_mut(),
                        );
                        if e == 0 {
                            0
                        } else {
                            -e
                        }
                    }
                    "poll" => {
                        let r = libc::poll(std::ptr::null_mut(), 0, left_ms);
                        if r < 0 {
                            -workloads::errno()
                        } else {
                            r
                        }
                    }
                    "select" => {
                        let mut tv = libc::timeval {
                            tv_sec: (left_ms / 1000) as libc::time_t,
                            tv_usec: ((left_ms % 1000) * 1000) as libc::suseconds_t,
                        };
                        let r = libc::select(
                            0,
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            &mut tv,
                        );
                        if r < 0 {
                            -workloads::errno()
                        } else {
                            r
                        }
                    }
                    "futex" => {
                        let ts = ts_of(deadline);
                        let r = libc::syscall(
                            libc::SYS_futex,
                            &*futex_word as *const u32,
                            libc::FUTEX_WAIT_BITSET | libc::FUTEX_PRIVATE_FLAG,
                            FUTEX_VALUE,
                            &ts,
                            std::ptr::null::<u32>(),
                            libc::FUTEX_BITSET_MATCH_ANY,
                        );
                        match (r, workloads::errno()) {
                            (0, _) => 1, // a wakeup nobody sent
                            (_, libc::ETIMEDOUT) => 0,
                            (_, e) => -e,
                        }
                    }
                    _ => {
                        libc::pause();
                        -workloads::errno()
                    }
                }
            };
            match r {
                0 => {
                    // poll/select round to ms: allow 1 ms early.
                    let slack = if kind == "poll" || kind == "select" {
                        1_000_000
                    } else {
                        0
                    };
                    let now = monotonic_ns();
                    c.check(now + slack >= deadline, || {
                        format!("{kind} returned {} ns before its deadline", deadline - now)
                    });
                    completed += 1;
                    break;
                }
                e if e == -libc::EINTR => {
                    eintr += 1;
                    if terminated() {
                        break;
                    }
                }
                e => {
                    c.fail(format!(
                        "{kind} returned {r} ({})",
                        std::io::Error::from_raw_os_error(-e)
                    ));
                    break;
                }
            }
            if c.failed() {
                break;
            }
        }
        if c.failed() {
            break;
        }
    }
    c.eq("futex word", FUTEX_VALUE, *futex_word);
    eprintln!("{kind}: {completed} waits completed, {eintr} EINTR");
    p.finish(c.into_result());
}

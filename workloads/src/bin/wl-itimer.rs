//! wl-itimer: interval timers keep their remaining time and interval.
//!
//! ITIMER_REAL is armed for 3 s with a 1 s interval, ITIMER_VIRTUAL for
//! 50 s (interval 10 s) and ITIMER_PROF for 40 s (interval 20 s); SIGALRM
//! deliveries are recorded with their time. The main loop sleeps 10 ms at
//! a time and takes the longest pause it sees (over 700 ms) as the time the
//! task was dumped and not yet restored.
//!
//! crust, like CRIU, does not count that pause: the first SIGALRM must come
//! the remaining time (as of the dump) after the pause ended, within
//! 300 ms; then one every second, none missing until SIGTERM. Without a
//! pause, the first comes 3 s after arming. ITIMER_VIRTUAL and ITIMER_PROF
//! must have their intervals and at most 2 s less CPU time left (and at
//! most 10 ms more: the kernel adds a tick to each value it is set to); their
//! signals must never come.

use workloads::{monotonic_ns, sigrec, sleep_ms, terminated, Checker};

const MS: u64 = 1_000_000;

fn itimer(which: i32) -> (u64, u64) {
    let mut v: libc::itimerval = unsafe { std::mem::zeroed() };
    unsafe { libc::getitimer(which, &mut v) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    (us(v.it_value), us(v.it_interval))
}

fn set(which: i32, value_ms: i64, interval_ms: i64) {
    let tv = |ms: i64| libc::timeval {
        tv_sec: ms / 1000,
        tv_usec: (ms % 1000) * 1000,
    };
    let v = libc::itimerval {
        it_interval: tv(interval_ms),
        it_value: tv(value_ms),
    };
    if unsafe { libc::setitimer(which, &v, std::ptr::null_mut()) } != 0 {
        workloads::die("setitimer");
    }
}

fn main() {
    let p = workloads::init();
    for s in [libc::SIGALRM, libc::SIGVTALRM, libc::SIGPROF] {
        sigrec::watch(s);
    }
    set(libc::ITIMER_VIRTUAL, 50_000, 10_000);
    set(libc::ITIMER_PROF, 40_000, 20_000);
    let armed = monotonic_ns();
    set(libc::ITIMER_REAL, 3_000, 1_000);
    let before_virt = itimer(libc::ITIMER_VIRTUAL);
    let before_prof = itimer(libc::ITIMER_PROF);
    p.ready();
    let mut last = monotonic_ns();
    let mut pause = (0u64, 0u64);
    while !terminated() {
        sleep_ms(10);
        let now = monotonic_ns();
        if now - last > 700 * MS && now - last > pause.1 - pause.0 {
            pause = (last, now);
        }
        last = now;
    }
    let end = monotonic_ns();
    let mut c = Checker::new();
    let fires: Vec<u64> = sigrec::of(libc::SIGALRM).iter().map(|r| r.ns).collect();
    let first_due = if pause.1 > 0 {
        eprintln!("pause of {} ms", (pause.1 - pause.0) / MS);
        pause.1 + (armed + 3_000 * MS).saturating_sub(pause.0)
    } else {
        armed + 3_000 * MS
    };
    match fires.first() {
        None => c.check(end < first_due + 300 * MS, || {
            format!(
                "no SIGALRM, due {} ms before SIGTERM",
                (end - first_due) / MS
            )
        }),
        Some(&f) => {
            let off = f as i64 - first_due as i64;
            c.check(off.abs() < 300 * MS as i64, || {
                format!("first SIGALRM {} ms off its due time", off / MS as i64)
            });
            c.check(pause.1 == 0 || f > pause.1, || {
                "a SIGALRM before the pause".to_string()
            });
        }
    }
    for w in fires.windows(2) {
        let d = (w[1] - w[0]) / MS;
        c.check((850..=1150).contains(&d), || {
            format!("SIGALRMs {d} ms apart, interval 1000 ms")
        });
    }
    if let Some(&l) = fires.last() {
        c.check(end - l < 1_150 * MS, || {
            format!("no SIGALRM in the last {} ms", (end - l) / MS)
        });
    }
    eprintln!("{} SIGALRMs", fires.len());
    c.eq(
        "ITIMER_REAL interval",
        1_000_000,
        itimer(libc::ITIMER_REAL).1,
    );
    for (name, which, before) in [
        ("ITIMER_VIRTUAL", libc::ITIMER_VIRTUAL, before_virt),
        ("ITIMER_PROF", libc::ITIMER_PROF, before_prof),
    ] {
        let now = itimer(which);
        c.eq(&format!("{name} interval"), before.1, now.1);
        // Each setitimer of a CPU timer adds a tick to its value.
        c.check(
            now.0 <= before.0 + 10_000 && now.0 + 2_000_000 >= before.0,
            || format!("{name} value {} us, was {} us", now.0, before.0),
        );
    }
    c.eq("SIGVTALRM/SIGPROF deliveries", 0, {
        sigrec::of(libc::SIGVTALRM).len() + sigrec::of(libc::SIGPROF).len()
    });
    p.finish(c.into_result());
}

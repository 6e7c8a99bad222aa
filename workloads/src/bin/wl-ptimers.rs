//! wl-ptimers: POSIX timers keep their ids, clocks, notification and
//! remaining time, and fire as before.
//!
//! Timers, made with the raw syscalls (kernel timer ids):
//! - A: CLOCK_REALTIME, SIGEV_SIGNAL SIGRTMIN+2, every 400 ms;
//! - a timer created and deleted, so the ids have a hole;
//! - B: CLOCK_MONOTONIC, SIGEV_THREAD_ID to the second thread,
//!   SIGRTMIN+3, every 250 ms;
//! - C: CLOCK_BOOTTIME, SIGEV_NONE, one shot in 100 s;
//! - D: CLOCK_PROCESS_CPUTIME_ID, SIGEV_SIGNAL SIGRTMIN+4, 1000 s, then
//!   every 10 s;
//! - E: CLOCK_THREAD_CPUTIME_ID of the main thread, SIGEV_NONE, 500 s;
//! - F: CLOCK_MONOTONIC, SIGEV_SIGNAL SIGRTMIN+6, one shot in 2.5 s;
//! - G: CLOCK_REALTIME, never armed.
//!
//! After SIGTERM: /proc/self/timers must read as before (ids, signals,
//! values, notification targets, clocks); the deleted id must not exist;
//! C, D and E must have their intervals and no more time left than before
//! (and at most 30 s less); G must be unarmed; F must have fired exactly
//! once. Within the next second A must fire 2 or 3 times and B 3 to 5
//! times, B always on the second thread; every delivery must carry
//! SI_TIMER, its timer's id and its sigev value.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use workloads::{diff_lines, monotonic_ns, raw_getpid, sigrec, sleep_ms, wait_for_term, Checker};

static T2_TID: AtomicI32 = AtomicI32::new(0);
static STOP: AtomicBool = AtomicBool::new(false);

const SI_TIMER: i32 = -2;
const NS: i64 = 1_000_000_000;

fn create(clock: i32, notify: i32, sig: i32, value: u64, tid: i32) -> i32 {
    let mut ev = [0u8; 64];
    ev[0..8].copy_from_slice(&value.to_ne_bytes());
    ev[8..12].copy_from_slice(&sig.to_ne_bytes());
    ev[12..16].copy_from_slice(&notify.to_ne_bytes());
    ev[16..20].copy_from_slice(&tid.to_ne_bytes());
    let mut id: i32 = -1;
    let r = unsafe { libc::syscall(libc::SYS_timer_create, clock, ev.as_ptr(), &mut id) };
    if r != 0 {
        workloads::die(&format!(
            "timer_create({clock}): {}",
            std::io::Error::last_os_error()
        ));
    }
    id
}

fn arm(id: i32, value_ns: i64, interval_ns: i64) {
    let ts = |ns: i64| libc::timespec {
        tv_sec: ns / NS,
        tv_nsec: ns % NS,
    };
    let v = libc::itimerspec {
        it_interval: ts(interval_ns),
        it_value: ts(value_ns),
    };
    let r = unsafe {
        libc::syscall(
            libc::SYS_timer_settime,
            id,
            0,
            &v,
            std::ptr::null_mut::<u8>(),
        )
    };
    if r != 0 {
        workloads::die("timer_settime");
    }
}

/// (value, interval) in ns, or None when the id does not exist.
fn get(id: i32) -> Option<(i64, i64)> {
    let mut v: libc::itimerspec = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::syscall(libc::SYS_timer_gettime, id, &mut v) };
    let ns = |t: libc::timespec| t.tv_sec * NS + t.tv_nsec;
    (r == 0).then(|| (ns(v.it_value), ns(v.it_interval)))
}

fn main() {
    let p = workloads::init();
    let r = libc::SIGRTMIN();
    let (sa, sb, sd, sf) = (r + 2, r + 3, r + 4, r + 6);
    for s in [sa, sb, sd, sf] {
        sigrec::watch(s);
    }
    let t2 = std::thread::spawn(|| {
        T2_TID.store(sigrec::gettid(), Ordering::SeqCst);
        while !STOP.load(Ordering::SeqCst) {
            sleep_ms(10);
        }
    });
    while T2_TID.load(Ordering::SeqCst) == 0 {
        sleep_ms(1);
    }
    let tid2 = T2_TID.load(Ordering::SeqCst);
    let a = create(libc::CLOCK_REALTIME, libc::SIGEV_SIGNAL, sa, 0xA11, 0);
    let hole = create(libc::CLOCK_MONOTONIC, libc::SIGEV_NONE, 0, 0, 0);
    let b = create(
        libc::CLOCK_MONOTONIC,
        libc::SIGEV_SIGNAL | libc::SIGEV_THREAD_ID,
        sb,
        0xB22,
        tid2,
    );
    let tc = create(libc::CLOCK_BOOTTIME, libc::SIGEV_NONE, 0, 0xC33, 0);
    let d = create(
        libc::CLOCK_PROCESS_CPUTIME_ID,
        libc::SIGEV_SIGNAL,
        sd,
        0xD44,
        0,
    );
    let e = create(libc::CLOCK_THREAD_CPUTIME_ID, libc::SIGEV_NONE, 0, 0xE55, 0);
    let f = create(libc::CLOCK_MONOTONIC, libc::SIGEV_SIGNAL, sf, 0xF66, 0);
    let g = create(libc::CLOCK_REALTIME, libc::SIGEV_SIGNAL, sa, 0x177, 0);
    unsafe { libc::syscall(libc::SYS_timer_delete, hole) };
    arm(a, 400_000_000, 400_000_000);
    arm(b, 250_000_000, 250_000_000);
    arm(tc, 100 * NS, 0);
    arm(d, 1000 * NS, 10 * NS);
    arm(e, 500 * NS, 0);
    arm(f, 2_500_000_000, 0);
    let before: Vec<(i64, i64)> = [tc, d, e].iter().map(|&t| get(t).unwrap()).collect();
    let timers_before = std::fs::read_to_string("/proc/self/timers").unwrap();
    eprintln!("timers a={a} hole={hole} b={b} c={tc} d={d} e={e} f={f} g={g}");
    p.ready();
    wait_for_term();

    let mut c = Checker::new();
    let timers_after = std::fs::read_to_string("/proc/self/timers").unwrap();
    if let Some(d) = diff_lines(&timers_before, &timers_after) {
        c.fail(format!("/proc/self/timers differs:{d}"));
    }
    c.eq("timer_gettime of the deleted id", None, get(hole));
    for (i, (&t, &(v0, i0))) in [tc, d, e].iter().zip(&before).enumerate() {
        match get(t) {
            None => c.fail(format!("timer {t} is gone")),
            Some((v, iv)) => {
                c.eq(&format!("interval of timer {t}"), i0, iv);
                c.check(v > 0 && v <= v0 && v + 30 * NS >= v0, || {
                    format!("timer {t} ({i}): {v} ns left, was {v0}")
                });
            }
        }
    }
    c.eq("timer G", Some((0, 0)), get(g));
    let n_a = sigrec::of(sa).len();
    let n_b = sigrec::of(sb).len();
    // Timer signals cut sleeps short: sleep to a deadline.
    let until = monotonic_ns() + 1_000_000_000;
    while monotonic_ns() < until {
        sleep_ms(10);
    }
    let da = sigrec::of(sa).len() - n_a;
    let db = sigrec::of(sb).len() - n_b;
    c.check((2..=3).contains(&da), || {
        format!("A fired {da} times in 1 s (every 400 ms)")
    });
    c.check((3..=5).contains(&db), || {
        format!("B fired {db} times in 1 s (every 250 ms)")
    });
    c.eq("deliveries of F", 1, sigrec::of(sf).len());
    c.eq("deliveries of D", 0, sigrec::of(sd).len());
    let pid = raw_getpid();
    for (sig, id, value, tid) in [
        (sa, a, 0xA11, None),
        (sb, b, 0xB22, Some(tid2)),
        (sf, f, 0xF66, None),
    ] {
        for rec in sigrec::of(sig) {
            let ok = rec.code == SI_TIMER
                && rec.a == id
                && rec.value == value
                && tid.is_none_or(|t| rec.tid == t);
            c.check(ok, || format!("timer {id} (pid {pid}) delivered {rec:?}"));
            if !ok {
                break;
            }
        }
    }
    STOP.store(true, Ordering::SeqCst);
    t2.join().unwrap();
    p.finish(c.into_result());
}

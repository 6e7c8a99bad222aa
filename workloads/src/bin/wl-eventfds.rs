//! wl-eventfds: a daemon-like task waiting in epoll on event fds.
//!
//! Builds, at fixed fd numbers (`workloads::evfds`): an eventfd (counter 7,
//! nonblocking) and a semaphore eventfd (counter 3); timerfds: a long
//! relative one-shot, a long absolute one (TFD_TIMER_ABSTIME), one that
//! expired once and was not read, and a periodic one (100 ms) never read;
//! a signalfd for SIGUSR1 (blocked); a pipe with data; an epoll watching
//! them (level, EPOLLET on the pipe, a fired EPOLLONESHOT on the expired
//! timer, EPOLLEXCLUSIVE on the pipe's write end) and a nested epoll.
//!
//! After SIGTERM (the test sends SIGUSR1 first): the epoll fdinfo lists the
//! same watches (fd, events, data); the epoll reports the same readiness,
//! the edge-triggered pipe once only, the fired one-shot not until re-armed;
//! the nested epoll reports its own; the counters read back (the semaphore
//! one by ones); the timers kept their clock, flags, remaining time (within
//! the time that passed), the unread expiration, and the periodic one fires
//! on time; the signalfd returns the SIGUSR1 sent after restore.

use std::collections::BTreeSet;

use workloads::evfds::*;
use workloads::{die, monotonic_ns, Checker};

const LONG_S: i64 = 3600;
const PERIOD_MS: i64 = 100;

fn ck(r: i32, what: &str) -> i32 {
    if r < 0 {
        die(&format!("{what}: {}", std::io::Error::last_os_error()));
    }
    r
}

fn place(fd: i32, at: i32) {
    unsafe {
        ck(libc::dup2(fd, at), "dup2");
        libc::close(fd);
    }
}

fn add(ep: i32, fd: i32, events: u32, data: u64) {
    let mut ev = libc::epoll_event { events, u64: data };
    unsafe {
        ck(
            libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev),
            "epoll_ctl",
        )
    };
}

fn settime(fd: i32, flags: i32, value: (i64, i64), interval: (i64, i64)) {
    let its = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: interval.0,
            tv_nsec: interval.1,
        },
        it_value: libc::timespec {
            tv_sec: value.0,
            tv_nsec: value.1,
        },
    };
    unsafe {
        ck(
            libc::timerfd_settime(fd, flags, &its, std::ptr::null_mut()),
            "timerfd_settime",
        )
    };
}

/// timerfd_gettime: (remaining ns, interval ns).
fn gettime(fd: i32) -> (i64, i64) {
    let mut its: libc::itimerspec = unsafe { std::mem::zeroed() };
    unsafe { libc::timerfd_gettime(fd, &mut its) };
    (
        its.it_value.tv_sec * 1_000_000_000 + its.it_value.tv_nsec,
        its.it_interval.tv_sec * 1_000_000_000 + its.it_interval.tv_nsec,
    )
}

/// Read one u64 (eventfd counter or timerfd ticks); None on EAGAIN.
fn read_u64(fd: i32) -> Option<u64> {
    let mut v = 0u64;
    let r = unsafe { libc::read(fd, &mut v as *mut u64 as *mut _, 8) };
    (r == 8).then_some(v)
}

/// The data words epoll_wait(ep, timeout 0) reports.
fn ready(ep: i32) -> BTreeSet<u64> {
    let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 32];
    let n = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 32, 0) };
    evs[..n.max(0) as usize].iter().map(|e| e.u64).collect()
}

fn fdinfo(fd: i32) -> String {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default()
}

/// The watches of an epoll fd: (tfd, events, data) of each tfd line,
/// sorted (ino, sdev and pos name the target files, which are new after
/// restore). EPOLLERR|EPOLLHUP are left out: the kernel adds them to every
/// registration, so a fired one-shot (whose mask it clears) gets them back.
fn watches(fd: i32) -> Vec<(String, u32, String)> {
    let mut v: Vec<(String, u32, String)> = fdinfo(fd)
        .lines()
        .filter(|l| l.starts_with("tfd:"))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let ev = u32::from_str_radix(w.get(3).unwrap_or(&""), 16).unwrap_or(u32::MAX);
            let err_hup = (libc::EPOLLERR | libc::EPOLLHUP) as u32;
            (
                w.get(1).unwrap_or(&"").to_string(),
                ev & !err_hup,
                w.get(5).unwrap_or(&"").to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

/// The lines of a timerfd's fdinfo that do not change with time.
fn timer_lines(fd: i32) -> Vec<String> {
    fdinfo(fd)
        .lines()
        .filter(|l| l.starts_with("clockid") || l.starts_with("settime flags"))
        .map(String::from)
        .collect()
}

fn set(v: &[u64]) -> BTreeSet<u64> {
    v.iter().copied().collect()
}

fn main() {
    let p = workloads::init();
    let t_setup = monotonic_ns() as i64;
    unsafe {
        let mut mask: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut mask);
        libc::sigaddset(&mut mask, libc::SIGUSR1);
        ck(
            libc::sigprocmask(libc::SIG_BLOCK, &mask, std::ptr::null_mut()),
            "sigprocmask",
        );
        place(ck(libc::eventfd(7, libc::EFD_NONBLOCK), "eventfd"), EFD);
        place(
            ck(
                libc::eventfd(3, libc::EFD_NONBLOCK | libc::EFD_SEMAPHORE),
                "eventfd",
            ),
            EFD_SEM,
        );
        let tfd = |clock| ck(libc::timerfd_create(clock, libc::TFD_NONBLOCK), "timerfd");
        place(tfd(libc::CLOCK_MONOTONIC), TFD_LONG);
        settime(TFD_LONG, 0, (LONG_S, 0), (0, 0));
        place(tfd(libc::CLOCK_MONOTONIC), TFD_ABS);
        let mut now: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now);
        settime(
            TFD_ABS,
            libc::TFD_TIMER_ABSTIME,
            (now.tv_sec + LONG_S, now.tv_nsec),
            (0, 0),
        );
        place(tfd(libc::CLOCK_BOOTTIME), TFD_EXPIRED);
        settime(TFD_EXPIRED, 0, (0, 1_000_000), (0, 0));
        place(tfd(libc::CLOCK_MONOTONIC), TFD_PERIODIC);
        settime(
            TFD_PERIODIC,
            0,
            (0, PERIOD_MS * 1_000_000),
            (0, PERIOD_MS * 1_000_000),
        );
        place(
            ck(libc::signalfd(-1, &mask, libc::SFD_NONBLOCK), "signalfd"),
            SFD,
        );
        let mut fds = [0i32; 2];
        ck(libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK), "pipe");
        place(fds[0], PIPE_R);
        place(fds[1], PIPE_W);
        place(ck(libc::epoll_create1(0), "epoll_create1"), EP);
        place(
            ck(libc::epoll_create1(libc::EPOLL_CLOEXEC), "epoll_create1"),
            EP_INNER,
        );
        let (inn, out, et, one, excl) = (
            libc::EPOLLIN as u32,
            libc::EPOLLOUT as u32,
            libc::EPOLLET as u32,
            libc::EPOLLONESHOT as u32,
            libc::EPOLLEXCLUSIVE as u32,
        );
        add(EP_INNER, EFD_SEM, inn, 0x11);
        add(EP_INNER, PIPE_R, inn, 0x1414);
        add(EP, EFD, inn, D_EFD);
        add(EP, TFD_LONG, inn, D_TFD_LONG);
        add(EP, SFD, inn, D_SFD);
        add(EP, PIPE_R, inn | et, D_PIPE_R);
        add(EP, PIPE_W, out | excl, D_PIPE_W);
        add(EP, TFD_EXPIRED, inn | one, D_TFD_EXPIRED);
        add(EP, EP_INNER, inn, D_INNER);
    }
    workloads::sleep_ms(20);
    // Fires the one-shot (the expired timer); the pipe is still empty.
    let first = ready(EP);
    let want_first = set(&[D_EFD, D_PIPE_W, D_TFD_EXPIRED, D_INNER]);
    if first != want_first {
        die(&format!(
            "first epoll_wait: {first:x?}, not {want_first:x?}"
        ));
    }
    unsafe {
        if libc::write(PIPE_W, b"x".as_ptr() as *const _, 1) != 1 {
            die("write pipe");
        }
    }
    let watches_ep = watches(EP);
    let watches_inner = watches(EP_INNER);
    let timers: Vec<Vec<String>> = [TFD_LONG, TFD_ABS, TFD_EXPIRED, TFD_PERIODIC]
        .iter()
        .map(|&fd| timer_lines(fd))
        .collect();
    let sigmask_line = fdinfo(SFD)
        .lines()
        .find(|l| l.starts_with("sigmask"))
        .map(String::from);
    p.ready();
    workloads::wait_for_term();
    let elapsed = monotonic_ns() as i64 - t_setup;
    let mut c = Checker::new();
    c.eq("epoll watches", watches_ep, watches(EP));
    c.eq("nested epoll watches", watches_inner, watches(EP_INNER));
    let timers_now: Vec<Vec<String>> = [TFD_LONG, TFD_ABS, TFD_EXPIRED, TFD_PERIODIC]
        .iter()
        .map(|&fd| timer_lines(fd))
        .collect();
    c.eq("timerfd clocks and flags", timers, timers_now);
    c.eq(
        "signalfd mask",
        sigmask_line,
        fdinfo(SFD)
            .lines()
            .find(|l| l.starts_with("sigmask"))
            .map(String::from),
    );
    // Readiness: the ET pipe once, the signalfd (SIGUSR1 sent by the test).
    c.eq(
        "epoll readiness",
        set(&[D_EFD, D_PIPE_R, D_PIPE_W, D_INNER, D_SFD]),
        ready(EP),
    );
    c.eq(
        "epoll readiness again (EPOLLET reported once)",
        set(&[D_EFD, D_PIPE_W, D_INNER, D_SFD]),
        ready(EP),
    );
    c.eq(
        "nested epoll readiness",
        set(&[0x11, 0x1414]),
        ready(EP_INNER),
    );
    // Re-arm the one-shot: now it reports the expired timer.
    let mut ev = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLONESHOT) as u32,
        u64: D_TFD_EXPIRED,
    };
    unsafe { libc::epoll_ctl(EP, libc::EPOLL_CTL_MOD, TFD_EXPIRED, &mut ev) };
    c.check(ready(EP).contains(&D_TFD_EXPIRED), || {
        "the re-armed one-shot does not report the expired timer".into()
    });
    // Counters.
    c.eq("eventfd counter", Some(7), read_u64(EFD));
    c.eq("eventfd after read", None, read_u64(EFD));
    let sem: Vec<Option<u64>> = (0..4).map(|_| read_u64(EFD_SEM)).collect();
    c.eq(
        "semaphore eventfd reads",
        vec![Some(1), Some(1), Some(1), None],
        sem,
    );
    // Timers.
    for (name, fd) in [("relative", TFD_LONG), ("absolute", TFD_ABS)] {
        let (left, interval) = gettime(fd);
        let max = LONG_S * 1_000_000_000;
        c.check(
            left <= max && left >= max - elapsed - 1_000_000_000 && interval == 0,
            || format!("{name} timer: {left} ns left, interval {interval}, after {elapsed} ns"),
        );
    }
    c.eq("unread expiration", Some(1), read_u64(TFD_EXPIRED));
    c.eq("expired one-shot disarmed", (0, 0), gettime(TFD_EXPIRED));
    let poll_ms = |timeout: i32| {
        let t0 = monotonic_ns();
        let mut pfd = libc::pollfd {
            fd: TFD_PERIODIC,
            events: libc::POLLIN,
            revents: 0,
        };
        let n = unsafe { libc::poll(&mut pfd, 1, timeout) };
        (n, (monotonic_ns() - t0) / 1_000_000)
    };
    poll_ms(2000);
    let missed = read_u64(TFD_PERIODIC);
    c.check(missed.is_some_and(|n| n >= 1), || {
        format!("periodic timer: {missed:?} expirations since setup")
    });
    c.eq(
        "periodic interval",
        PERIOD_MS * 1_000_000,
        gettime(TFD_PERIODIC).1,
    );
    let (n, waited_ms) = poll_ms(2000);
    c.check(n == 1 && waited_ms <= PERIOD_MS as u64 + 150, || {
        format!("periodic timer: next expiry after {waited_ms} ms (poll {n})")
    });
    // The signal sent after restore.
    let mut si: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    let r = unsafe { libc::read(SFD, &mut si as *mut _ as *mut _, size) };
    c.check(
        r == size as isize && si.ssi_signo == libc::SIGUSR1 as u32,
        || format!("signalfd read {r} bytes, signal {}", si.ssi_signo),
    );
    // The pipe still carries its byte.
    let mut b = [0u8; 4];
    let r = unsafe { libc::read(PIPE_R, b.as_mut_ptr() as *mut _, 4) };
    c.check(r == 1 && b[0] == b'x', || format!("pipe read {r}"));
    p.finish(c.into_result());
}

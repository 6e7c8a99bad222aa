//! wl-pidfd [PID]: pidfds of every kind: fd 20 of a live child (in the tree) and
//! fd 25 a dup of it; fd 21 of itself, O_NONBLOCK and close-on-exec; fd 22
//! of its own main thread, PIDFD_THREAD; fd 23 of a child that exited and
//! was reaped; fd 24 of its parent, outside the tree; with PID, fd 26 of
//! that process (outside the tree too).
//!
//! After SIGTERM: each fdinfo names the same pid (-1 for fd 23), the flags
//! are the same; fd 23 polls readable and pidfd_send_signal on it fails
//! with ESRCH, the one on fd 24 works; then SIGKILL sent through fd 20
//! kills the restored child: fd 20 polls readable and waitid(P_PIDFD)
//! reaps it, killed by SIGKILL.

use workloads::{die, Checker};

const CHILD_FD: i32 = 20;
const SELF_FD: i32 = 21;
const THREAD_FD: i32 = 22;
const DEAD_FD: i32 = 23;
const PARENT_FD: i32 = 24;
const DUP_FD: i32 = 25;
const PIDFD_THREAD: i32 = libc::O_EXCL;
const P_PIDFD: libc::idtype_t = 3;

fn pidfd_at(pid: i32, flags: i32, fd: i32) {
    unsafe {
        let got = libc::syscall(libc::SYS_pidfd_open, pid, flags) as i32;
        if got < 0 || libc::dup2(got, fd) != fd {
            die(&format!(
                "pidfd_open({pid}, {flags:#x}): {}",
                std::io::Error::last_os_error()
            ));
        }
        libc::close(got);
    }
}

fn fdinfo_pid(fd: i32) -> Option<i32> {
    let t = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    t.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse().ok())
}

fn readable(fd: i32, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    unsafe { libc::poll(&mut p, 1, ms) == 1 && p.revents & libc::POLLIN != 0 }
}

fn send(fd: i32, sig: i32) -> i32 {
    let r = unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd, sig, 0usize, 0u32) };
    if r == 0 {
        0
    } else {
        workloads::errno()
    }
}

/// What does not change: (fd, pid, status flags, fd flags) of each pidfd,
/// whether the dead one polls readable, the signal results.
fn state() -> Vec<String> {
    let mut v: Vec<String> = [CHILD_FD, SELF_FD, THREAD_FD, DEAD_FD, PARENT_FD, DUP_FD]
        .iter()
        .map(|&fd| unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL) & (libc::O_NONBLOCK | PIDFD_THREAD);
            let fdfl = libc::fcntl(fd, libc::F_GETFD);
            format!(
                "fd {fd}: pid {:?} flags {fl:#o} fd flags {fdfl}",
                fdinfo_pid(fd)
            )
        })
        .collect();
    v.push(format!("dead readable {}", readable(DEAD_FD, 0)));
    v.push(format!("child readable {}", readable(CHILD_FD, 0)));
    v.push(format!("signal 0 to the dead: {}", send(DEAD_FD, 0)));
    v.push(format!("signal 0 to the parent: {}", send(PARENT_FD, 0)));
    v
}

fn main() {
    let parent = unsafe { libc::getppid() };
    let p = workloads::init();
    let me = workloads::raw_getpid();
    let kid = unsafe { libc::fork() };
    if kid == 0 {
        loop {
            unsafe { libc::pause() };
        }
    }
    let dead = unsafe { libc::fork() };
    if dead == 0 {
        unsafe { libc::_exit(7) };
    }
    pidfd_at(kid, 0, CHILD_FD);
    pidfd_at(me, libc::O_NONBLOCK, SELF_FD);
    pidfd_at(me, PIDFD_THREAD, THREAD_FD);
    pidfd_at(dead, 0, DEAD_FD);
    pidfd_at(parent, 0, PARENT_FD);
    if let Some(other) = p.args.first() {
        pidfd_at(other.parse().unwrap_or_else(|_| die("PID")), 0, 26);
    }
    unsafe {
        libc::waitpid(dead, std::ptr::null_mut(), 0);
        libc::fcntl(SELF_FD, libc::F_SETFD, libc::FD_CLOEXEC);
        if libc::dup2(CHILD_FD, DUP_FD) != DUP_FD {
            die("dup2");
        }
    }
    let before = state();
    let want = |fd: i32, pid: i32| {
        before
            .iter()
            .any(|l| l.starts_with(&format!("fd {fd}: pid Some({pid}) ")))
    };
    if !(want(CHILD_FD, kid) && want(SELF_FD, me) && want(DEAD_FD, -1) && want(PARENT_FD, parent)) {
        die(&format!("unexpected state before the dump: {before:?}"));
    }
    p.ready();
    workloads::wait_for_term();
    let mut c = Checker::new();
    c.eq("pidfd state", before, state());
    c.eq(
        "SIGKILL through the child's pidfd",
        0,
        send(CHILD_FD, libc::SIGKILL),
    );
    c.check(readable(CHILD_FD, 5000), || {
        "the child's pidfd does not poll readable".into()
    });
    c.check(readable(DUP_FD, 0), || {
        "the dup of the child's pidfd does not poll readable".into()
    });
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::waitid(P_PIDFD, CHILD_FD as libc::id_t, &mut info, libc::WEXITED) };
    c.eq(
        "waitid(P_PIDFD)",
        0,
        if r == 0 { 0 } else { workloads::errno() },
    );
    unsafe {
        c.eq("waitid: pid", kid, info.si_pid());
        c.eq("waitid: killed by", libc::SIGKILL, info.si_status());
    }
    p.finish(c.into_result());
}

//! wl-tty: a shell job on a terminal. Started from a shell under a pty (e.g.
//! `script -qfec "wl-tty PIDFILE OUTFILE; true" /dev/null`), it stays in the
//! shell's session ([`workloads::init_shell_job`]) with fds 0-2 on the pty.
//!
//! After SIGTERM: fds 0-2 are still terminals, all three the same terminal
//! (at restore with --shell-job they are the restoring crust's terminal,
//! not the old one), with the same access modes as before, and writing to
//! stdout and stderr works.
//!
//! With `foreground`, it makes its group the terminal's foreground job (as
//! an interactive shell does for the job it starts), and checks after
//! restore that it still is.

use workloads::{die, Checker};

struct Tty {
    isatty: bool,
    rdev: u64,
    accmode: i32,
}

fn tty(fd: i32) -> Tty {
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        let ok = libc::fstat(fd, &mut st) == 0;
        Tty {
            isatty: libc::isatty(fd) == 1,
            rdev: if ok { st.st_rdev } else { u64::MAX },
            accmode: libc::fcntl(fd, libc::F_GETFL) & libc::O_ACCMODE,
        }
    }
}

fn write_all(fd: i32, msg: &[u8]) -> Result<(), String> {
    let n = unsafe { libc::write(fd, msg.as_ptr() as *const libc::c_void, msg.len()) };
    if n == msg.len() as isize {
        Ok(())
    } else {
        Err(format!(
            "write to fd {fd}: {n} of {} bytes ({})",
            msg.len(),
            std::io::Error::last_os_error()
        ))
    }
}

fn main() {
    let p = workloads::init_shell_job();
    let foreground = p.args.first().is_some_and(|a| a == "foreground");
    if foreground {
        // SIGTTOU is ignored meanwhile: the group starts in the background.
        unsafe {
            let old = libc::signal(libc::SIGTTOU, libc::SIG_IGN);
            if libc::tcsetpgrp(0, libc::getpgrp()) != 0 {
                die(&format!("tcsetpgrp: {}", std::io::Error::last_os_error()));
            }
            libc::signal(libc::SIGTTOU, old);
        }
    }
    let before: Vec<Tty> = (0..3).map(tty).collect();
    for (fd, t) in before.iter().enumerate() {
        if !t.isatty {
            die(&format!("fd {fd} is not a terminal: run me under a pty"));
        }
    }
    if let Err(e) = write_all(1, b"wl-tty: ready\n") {
        die(&e);
    }
    p.ready();
    workloads::wait_for_term();

    let after: Vec<Tty> = (0..3).map(tty).collect();
    let mut c = Checker::new();
    for fd in 0..3 {
        c.check(after[fd].isatty, || {
            format!("fd {fd} is no longer a terminal")
        });
        c.eq(
            &format!("access mode of fd {fd}"),
            before[fd].accmode,
            after[fd].accmode,
        );
    }
    c.check(
        after[0].rdev == after[1].rdev && after[1].rdev == after[2].rdev,
        || {
            format!(
                "fds 0-2 are not one terminal: rdev {:#x} {:#x} {:#x}",
                after[0].rdev, after[1].rdev, after[2].rdev
            )
        },
    );
    if foreground {
        let (me, fg) = unsafe { (libc::getpgrp(), libc::tcgetpgrp(0)) };
        c.eq("foreground job of the terminal", me, fg);
    }
    if let Err(e) = write_all(1, b"wl-tty: stdout still works\n") {
        c.fail(e);
    }
    if let Err(e) = write_all(2, b"wl-tty: stderr still works\n") {
        c.fail(e);
    }
    p.finish(c.into_result());
}

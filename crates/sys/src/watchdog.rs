//! A process that outlives crust for the last step of a restore: if crust
//! dies before it says the restore is done, the watchdog kills the tree, so
//! that a crust killed while it lets the tree go leaves nothing behind.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use libc::pid_t;

/// A running watchdog: it SIGKILLs its processes when this is dropped
/// without [`Watchdog::disarm`], or when crust dies.
pub struct Watchdog {
    /// The write end of the watchdog's pipe: one byte disarms it, end of
    /// file (crust gone) fires it.
    arm: Option<OwnedFd>,
    pid: pid_t,
}

/// Fork a watchdog over the processes of `pidfds`. The watchdog keeps
/// only the pidfds and its pipe, blocks every signal it can, and holds no
/// fd that other processes wait on.
pub fn spawn(pidfds: &[OwnedFd]) -> io::Result<Watchdog> {
    let (read, write) = crate::pipe::pipe2(libc::O_CLOEXEC)?;
    let keep: Vec<RawFd> = pidfds
        .iter()
        .map(|f| f.as_raw_fd())
        .chain([0, 1, 2, read.as_raw_fd()])
        .collect();
    let keep = crate::fd::sorted_fds(&keep);
    let targets: Vec<RawFd> = pidfds.iter().map(|f| f.as_raw_fd()).collect();
    let read_fd = read.as_raw_fd();
    // SAFETY: the child runs only raw syscalls on values built before the
    // fork (no allocation, no lock), so other threads of crust (a mover
    // just joined and not yet gone) do not matter; it leaves with _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: as above; the fds closed are the child's copies.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
            // Every other fd, also one another thread opened meanwhile
            // (best effort: an error, no allocation, leaves some open).
            let _ = crate::fd::close_all_except_sorted(&keep);
            let mut byte = 0u8;
            let n = loop {
                let n = libc::read(read_fd, (&mut byte as *mut u8).cast(), 1);
                if n >= 0 || *libc::__errno_location() != libc::EINTR {
                    break n;
                }
            };
            if n != 1 {
                for fd in &targets {
                    libc::syscall(libc::SYS_pidfd_send_signal, *fd, libc::SIGKILL, 0, 0);
                }
            }
            libc::_exit(0);
        }
    }
    drop(read);
    Ok(Watchdog {
        arm: Some(write),
        pid,
    })
}

impl Watchdog {
    /// The restore is done: let the watchdog exit without killing, and
    /// reap it.
    pub fn disarm(mut self) -> io::Result<()> {
        let arm = self.arm.take().expect("armed until disarmed or dropped");
        let r = nix::unistd::write(&arm, &[1]).map_err(io::Error::from);
        drop(arm);
        self.reap();
        r.map(|_| ())
    }

    fn reap(&self) {
        let mut status = 0;
        // SAFETY: waits for our own child; status is a valid out pointer.
        while unsafe { libc::waitpid(self.pid, &mut status, 0) } < 0
            && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
        {}
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if self.arm.take().is_some() {
            self.reap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The watchdog keeps its pidfds, its pipe and stdio, nothing else;
    /// disarmed, it leaves its process alive; dropped, it kills it.
    #[test]
    fn watchdog_keeps_only_its_fds_and_kills_when_dropped() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pidfd = crate::pidfd::pidfd_open(child.id() as pid_t).unwrap();
        // An fd another process could wait on: a pipe's write end.
        let (_rd, wr) = crate::pipe::pipe2(libc::O_CLOEXEC).unwrap();
        let dog = spawn(std::slice::from_ref(&pidfd)).unwrap();
        let mut held = Vec::new();
        for _ in 0..100 {
            held = std::fs::read_dir(format!("/proc/{}/fd", dog.pid))
                .unwrap()
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<RawFd>().ok())
                .collect();
            if !held.contains(&wr.as_raw_fd()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!held.contains(&wr.as_raw_fd()), "watchdog holds {held:?}");
        assert!(held.contains(&pidfd.as_raw_fd()), "watchdog holds {held:?}");
        assert!(held.len() <= 5, "watchdog holds {held:?}");
        dog.disarm().unwrap();
        assert!(child.try_wait().unwrap().is_none(), "disarmed, it killed");
        let dog = spawn(std::slice::from_ref(&pidfd)).unwrap();
        drop(dog);
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
    }
}

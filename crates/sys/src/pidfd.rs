//! pidfd_open and pidfd_getfd: crust's handle on another task's open files.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use libc::pid_t;

/// `pidfd_open(pid, 0)`.
pub fn pidfd_open(pid: pid_t) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; on success it returns a new fd we own.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: r is a fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

/// `pidfd_getfd(pidfd, fd, 0)`: a duplicate of the task's fd `fd`, the very
/// same open file description.
pub fn pidfd_getfd(pidfd: &OwnedFd, fd: i32) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall; on success it returns a new fd we own.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: r is a fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

/// `PIDFD_THREAD` (Linux 6.9): a pidfd of one thread, not its process.
pub const PIDFD_THREAD: u32 = libc::O_EXCL as u32;

/// `pidfd_open(pid, flags)`, with `flags` O_NONBLOCK and [`PIDFD_THREAD`].
pub fn pidfd_open_with(pid: pid_t, flags: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; on success it returns a new fd we own.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: r is a fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

/// A pidfd (with `flags`, as [`pidfd_open_with`]) of a process that has
/// exited and been reaped: a child that exits at once, opened while it is
/// a zombie, then reaped. The caller must be single-threaded, as for
/// [`crate::clone::fork_with`].
pub fn pidfd_of_exited(flags: u32) -> io::Result<OwnedFd> {
    let child = crate::clone::fork_with(0, None, || 0)?;
    let fd = pidfd_open_with(child, flags);
    let mut status = 0;
    // SAFETY: waits for our own child; status is a valid out pointer.
    let r = unsafe { libc::waitpid(child, &mut status, 0) };
    if r != child {
        return Err(io::Error::last_os_error());
    }
    fd
}

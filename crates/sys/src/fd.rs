//! File descriptor numbering helpers.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Duplicate `fd` (close-on-exec) to the lowest free number >= `min`.
pub fn dup_above(fd: impl AsFd, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on a valid borrowed fd.
    let r = unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: r is a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

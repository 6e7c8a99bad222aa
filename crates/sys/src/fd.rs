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

/// Close every fd of this process but those in `keep`, with one
/// close_range per gap between them (no listing of /proc/self/fd).
pub fn close_all_except(keep: &[RawFd]) -> io::Result<()> {
    close_all_except_sorted(&sorted_fds(keep))
}

/// `fds` (negative ones left out) sorted and without repeats, for
/// [`close_all_except_sorted`].
pub fn sorted_fds(fds: &[RawFd]) -> Vec<u32> {
    let mut keep: Vec<u32> = fds
        .iter()
        .filter_map(|&fd| u32::try_from(fd).ok())
        .collect();
    keep.sort_unstable();
    keep.dedup();
    keep
}

/// [`close_all_except`] with `keep` from [`sorted_fds`]: allocates nothing,
/// so a child forked from a process of many threads may call it.
pub fn close_all_except_sorted(keep: &[u32]) -> io::Result<()> {
    let mut from = 0u32;
    for &k in keep.iter().chain(&[u32::MAX]) {
        if k > from {
            // SAFETY: close_range only closes fds of this process in
            // [from, k - 1]; no memory is passed.
            let r = unsafe { libc::syscall(libc::SYS_close_range, from, k - 1, 0u32) };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        from = k.saturating_add(1);
    }
    Ok(())
}

//! Probes for kernel features crust relies on (for `crust check`).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// Whether the PAGEMAP_SCAN ioctl works on crust's own pagemap.
pub fn pagemap_scan() -> io::Result<()> {
    let pm = crate::procfs::Pagemap::open(std::process::id() as i32).map_err(io::Error::other)?;
    let probe = [0u8; 4096];
    let start = (probe.as_ptr() as u64) & !4095;
    pm.scan(start, start + 4096, crate::procfs::PAGE_IS_PRESENT, 0)
        .map_err(io::Error::other)?;
    Ok(())
}

/// Open (and close) a userfaultfd.
pub fn userfaultfd() -> io::Result<()> {
    // SAFETY: plain syscall returning a new fd.
    let r = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: r is a fresh fd we own.
    drop(unsafe { OwnedFd::from_raw_fd(r as i32) });
    Ok(())
}

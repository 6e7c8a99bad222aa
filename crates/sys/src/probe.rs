//! Probes for kernel features crust relies on (for `crust check`).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `struct pm_scan_arg` of the PAGEMAP_SCAN ioctl (newer than Debian 12's
/// headers).
#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `PAGEMAP_SCAN` = _IOWR('f', 16, struct pm_scan_arg).
const PAGEMAP_SCAN: u64 =
    (3 << 30) | ((std::mem::size_of::<PmScanArg>() as u64) << 16) | ((b'f' as u64) << 8) | 16;
/// `PAGE_IS_PRESENT` category.
const PAGE_IS_PRESENT: u64 = 1 << 1;

/// Whether the PAGEMAP_SCAN ioctl works on crust's own pagemap.
pub fn pagemap_scan() -> io::Result<()> {
    let f = File::open("/proc/self/pagemap")?;
    let probe = [0u8; 4096];
    let start = (probe.as_ptr() as u64) & !4095;
    let arg = PmScanArg {
        size: std::mem::size_of::<PmScanArg>() as u64,
        start,
        end: start + 4096,
        category_anyof_mask: PAGE_IS_PRESENT,
        return_mask: PAGE_IS_PRESENT,
        ..Default::default()
    };
    // SAFETY: a valid pm_scan_arg with no output vector.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), PAGEMAP_SCAN as _, &arg as *const PmScanArg) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
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

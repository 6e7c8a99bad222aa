//! userfaultfd, used at restore to fill fresh anonymous memory of another
//! task: UFFDIO_COPY allocates each page and copies into it in one step,
//! where a write into a missing page first zeroes it (measured here: 0.28
//! against 0.43 s/GiB). The descriptor is created by the task itself (a
//! remote `userfaultfd`), taken over with pidfd_getfd, and acts on the
//! task's memory from crust.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// `userfaultfd()` flag: handle faults from user mode only (allowed
/// without privileges whatever `vm.unprivileged_userfaultfd` says).
pub const UFFD_USER_MODE_ONLY: u64 = 1;

const UFFD_API: u64 = 0xaa;
// _IOWR(0xaa, nr, size) of linux/userfaultfd.h.
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
const UFFDIO_COPY: libc::c_ulong = 0xc028_aa03;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// A userfaultfd of another task, ready for [`Uffd::register_missing`] and
/// [`Uffd::copy`]. Closing it unregisters every range.
pub struct Uffd(OwnedFd);

impl Uffd {
    /// Take over `fd`, a fresh userfaultfd, and do the API handshake.
    pub fn adopt(fd: OwnedFd) -> io::Result<Self> {
        let mut api = UffdioApi {
            api: UFFD_API,
            features: 0,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API reads and writes a struct uffdio_api.
        if unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Uffd(fd))
    }

    /// Register `[start, start + len)` (one or more whole anonymous VMAs)
    /// for missing pages, so that [`Uffd::copy`] may fill it.
    pub fn register_missing(&self, start: u64, len: u64) -> io::Result<()> {
        let mut reg = UffdioRegister {
            start,
            len,
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes a struct uffdio_register.
        if unsafe { libc::ioctl(self.0.as_raw_fd(), UFFDIO_REGISTER, &mut reg) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Copy `src` into the task's missing pages at `dst` (page-aligned, in a
    /// registered range).
    pub fn copy(&self, dst: u64, src: &[u8]) -> io::Result<()> {
        let mut done = 0usize;
        let mut stalls = 0;
        while done < src.len() {
            let mut c = UffdioCopy {
                dst: dst + done as u64,
                src: src[done..].as_ptr() as u64,
                len: (src.len() - done) as u64,
                mode: 0,
                copy: 0,
            };
            // SAFETY: UFFDIO_COPY reads `len` bytes at `src`, inside the
            // slice, and writes the struct back.
            let r = unsafe { libc::ioctl(self.0.as_raw_fd(), UFFDIO_COPY, &mut c) };
            if r == 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            match (err.raw_os_error(), c.copy) {
                // Partly done: go on from there.
                (Some(libc::EAGAIN), n) if n > 0 => done += n as usize,
                // The layout changed under the copy; try again, a few times.
                (Some(libc::EAGAIN), _) if stalls < 16 => stalls += 1,
                _ => return Err(err),
            }
        }
        Ok(())
    }
}

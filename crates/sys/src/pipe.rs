//! Pipes: creating them, their size, how much they hold, and copying their
//! contents without consuming them (tee).

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// pipe2(2) with `flags` (O_CLOEXEC, O_NONBLOCK, O_DIRECT): (read end,
/// write end).
pub fn pipe2(flags: i32) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as libc::c_int; 2];
    // SAFETY: fds is a valid array of two ints for the kernel to fill.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), flags) })?;
    // SAFETY: both fds are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The capacity of the pipe (F_GETPIPE_SZ), in bytes.
pub fn pipe_size(fd: impl AsFd) -> io::Result<u32> {
    // SAFETY: fcntl on a valid borrowed fd, no pointers.
    let r = cvt(unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), libc::F_GETPIPE_SZ) })?;
    Ok(r as u32)
}

/// Set the capacity of the pipe (F_SETPIPE_SZ); returns the capacity the
/// kernel chose (`size` rounded up to a power of two of pages).
pub fn set_pipe_size(fd: impl AsFd, size: u32) -> io::Result<u32> {
    let size =
        libc::c_int::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: fcntl on a valid borrowed fd with an int argument.
    let r = cvt(unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), libc::F_SETPIPE_SZ, size) })?;
    Ok(r as u32)
}

/// How many bytes the pipe holds (FIONREAD).
pub fn pipe_bytes(fd: impl AsFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the valid pointer.
    cvt(unsafe {
        libc::ioctl(
            fd.as_fd().as_raw_fd(),
            libc::FIONREAD,
            &mut n as *mut libc::c_int,
        )
    })?;
    Ok(n.max(0) as usize)
}

/// tee(2): duplicate up to `len` bytes from the pipe `from` (a read end)
/// into the pipe `to` (a write end) without consuming them. With
/// `nonblock` (SPLICE_F_NONBLOCK), an empty `from` or a full `to` gives
/// `WouldBlock` instead of waiting.
pub fn tee(from: impl AsFd, to: impl AsFd, len: usize, nonblock: bool) -> io::Result<usize> {
    let flags = if nonblock { libc::SPLICE_F_NONBLOCK } else { 0 };
    // SAFETY: tee on two valid borrowed fds, no pointers.
    let r = unsafe { libc::tee(from.as_fd().as_raw_fd(), to.as_fd().as_raw_fd(), len, flags) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn tee_keeps_the_data() {
        let (r, w) = pipe2(libc::O_CLOEXEC).unwrap();
        std::fs::File::from(w.try_clone().unwrap())
            .write_all(b"hello")
            .unwrap();
        assert_eq!(pipe_bytes(&r).unwrap(), 5);
        let (r2, w2) = pipe2(libc::O_CLOEXEC).unwrap();
        assert_eq!(tee(&r, &w2, 4096, true).unwrap(), 5);
        assert_eq!(pipe_bytes(&r).unwrap(), 5);
        let mut buf = [0u8; 5];
        std::fs::File::from(r2).read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        assert!(set_pipe_size(&r, 65536 * 2).unwrap() >= 131072);
        assert_eq!(pipe_size(&w).unwrap(), 131072);
    }
}

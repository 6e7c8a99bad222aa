//! Terminals: the ioctls that read and set a tty's state (termios, window
//! size, pty lock and packet mode, exclusive mode, session and foreground
//! group), pty pairs, and opening /dev/tty for a given terminal.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A terminal's settings (the kernel's `struct termios2`: flags, line
/// discipline, control characters and both speeds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Termios {
    /// Input modes.
    pub iflag: u32,
    /// Output modes.
    pub oflag: u32,
    /// Control modes.
    pub cflag: u32,
    /// Local modes.
    pub lflag: u32,
    /// Line discipline (0 is N_TTY).
    pub line: u8,
    /// Control characters (the kernel's NCCS is 19).
    pub cc: [u8; 19],
    /// Input speed.
    pub ispeed: u32,
    /// Output speed.
    pub ospeed: u32,
}

impl From<libc::termios2> for Termios {
    fn from(t: libc::termios2) -> Self {
        Termios {
            iflag: t.c_iflag,
            oflag: t.c_oflag,
            cflag: t.c_cflag,
            lflag: t.c_lflag,
            line: t.c_line,
            cc: t.c_cc,
            ispeed: t.c_ispeed,
            ospeed: t.c_ospeed,
        }
    }
}

impl From<&Termios> for libc::termios2 {
    fn from(t: &Termios) -> Self {
        libc::termios2 {
            c_iflag: t.iflag,
            c_oflag: t.oflag,
            c_cflag: t.cflag,
            c_lflag: t.lflag,
            c_line: t.line,
            c_cc: t.cc,
            c_ispeed: t.ispeed,
            c_ospeed: t.ospeed,
        }
    }
}

fn zero_termios2() -> libc::termios2 {
    libc::termios2 {
        c_iflag: 0,
        c_oflag: 0,
        c_cflag: 0,
        c_lflag: 0,
        c_line: 0,
        c_cc: [0; 19],
        c_ispeed: 0,
        c_ospeed: 0,
    }
}

/// TCGETS2: the terminal's settings.
pub fn get_termios(fd: impl AsFd) -> io::Result<Termios> {
    let mut t = zero_termios2();
    // SAFETY: TCGETS2 fills one struct termios2 at the valid pointer.
    cvt(unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TCGETS2, &mut t) })?;
    Ok(t.into())
}

/// TCSETS2: set the terminal's settings at once.
pub fn set_termios(fd: impl AsFd, t: &Termios) -> io::Result<()> {
    let k: libc::termios2 = t.into();
    // SAFETY: TCSETS2 reads one struct termios2 from the valid pointer.
    cvt(unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TCSETS2, &k) })?;
    Ok(())
}

/// TIOCGLCKTRMIOS: which settings are locked (a non-zero bit or control
/// character cannot be changed by TCSETS). The speeds are not part of it.
pub fn get_locked_termios(fd: impl AsFd) -> io::Result<Termios> {
    // struct termios2 starts with struct termios, which is what the
    // kernel writes here.
    let mut t = zero_termios2();
    // SAFETY: the kernel writes a struct termios (a prefix of termios2).
    cvt(unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCGLCKTRMIOS, &mut t) })?;
    Ok(Termios {
        ispeed: 0,
        ospeed: 0,
        ..t.into()
    })
}

/// TIOCSLCKTRMIOS: lock settings (needs CAP_SYS_ADMIN).
pub fn set_locked_termios(fd: impl AsFd, t: &Termios) -> io::Result<()> {
    let k: libc::termios2 = t.into();
    // SAFETY: the kernel reads a struct termios (a prefix of termios2).
    cvt(unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCSLCKTRMIOS, &k) })?;
    Ok(())
}

/// A terminal's window size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Winsize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
    /// Width in pixels.
    pub xpixel: u16,
    /// Height in pixels.
    pub ypixel: u16,
}

/// TIOCGWINSZ.
pub fn get_winsize(fd: impl AsFd) -> io::Result<Winsize> {
    let mut w = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ fills one struct winsize.
    cvt(unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCGWINSZ, &mut w) })?;
    Ok(Winsize {
        rows: w.ws_row,
        cols: w.ws_col,
        xpixel: w.ws_xpixel,
        ypixel: w.ws_ypixel,
    })
}

/// TIOCSWINSZ (the foreground group gets SIGWINCH if it changed).
pub fn set_winsize(fd: impl AsFd, w: &Winsize) -> io::Result<()> {
    let k = libc::winsize {
        ws_row: w.rows,
        ws_col: w.cols,
        ws_xpixel: w.xpixel,
        ws_ypixel: w.ypixel,
    };
    // SAFETY: TIOCSWINSZ reads one struct winsize.
    cvt(unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &k) })?;
    Ok(())
}

fn get_int(fd: BorrowedFd, req: libc::Ioctl) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: these ioctls write one int at the valid pointer.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), req, &mut v as *mut libc::c_int) })?;
    Ok(v)
}

fn set_int(fd: BorrowedFd, req: libc::Ioctl, v: i32) -> io::Result<()> {
    // SAFETY: these ioctls read one int from the valid pointer.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), req, &v as *const libc::c_int) })?;
    Ok(())
}

/// TIOCGPTN on a pty master: the index of its slave (/dev/pts/N).
pub fn pty_index(master: impl AsFd) -> io::Result<u32> {
    Ok(get_int(master.as_fd(), libc::TIOCGPTN)? as u32)
}

/// TIOCGPTLCK on a pty master: whether its slave is locked (cannot be
/// opened).
pub fn pty_locked(master: impl AsFd) -> io::Result<bool> {
    Ok(get_int(master.as_fd(), libc::TIOCGPTLCK)? != 0)
}

/// TIOCSPTLCK on a pty master: lock or unlock its slave.
pub fn set_pty_locked(master: impl AsFd, locked: bool) -> io::Result<()> {
    set_int(master.as_fd(), libc::TIOCSPTLCK, locked as i32)
}

/// TIOCGPKT on a pty master: whether packet mode is on.
pub fn packet_mode(master: impl AsFd) -> io::Result<bool> {
    Ok(get_int(master.as_fd(), libc::TIOCGPKT)? != 0)
}

/// TIOCPKT on a pty master: packet mode on or off.
pub fn set_packet_mode(master: impl AsFd, on: bool) -> io::Result<()> {
    set_int(master.as_fd(), libc::TIOCPKT, on as i32)
}

/// TIOCGEXCL: whether the terminal is in exclusive mode.
pub fn exclusive(fd: impl AsFd) -> io::Result<bool> {
    Ok(get_int(fd.as_fd(), libc::TIOCGEXCL)? != 0)
}

/// TIOCEXCL or TIOCNXCL: exclusive mode on or off.
pub fn set_exclusive(fd: impl AsFd, on: bool) -> io::Result<()> {
    let req = if on { libc::TIOCEXCL } else { libc::TIOCNXCL };
    // SAFETY: no argument.
    cvt(unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), req) })?;
    Ok(())
}

/// FIONREAD: bytes waiting to be read from this side.
pub fn bytes_to_read(fd: impl AsFd) -> io::Result<usize> {
    Ok(get_int(fd.as_fd(), libc::FIONREAD)?.max(0) as usize)
}

/// TIOCOUTQ: bytes written to this side not yet taken by the other.
pub fn bytes_unsent(fd: impl AsFd) -> io::Result<usize> {
    Ok(get_int(fd.as_fd(), libc::TIOCOUTQ)?.max(0) as usize)
}

/// TIOCGSID through a pty master: the session whose controlling terminal
/// its slave is (None if none).
pub fn session_of(master: impl AsFd) -> io::Result<Option<i32>> {
    match get_int(master.as_fd(), libc::TIOCGSID) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.raw_os_error() == Some(libc::ENOTTY) => Ok(None),
        Err(e) => Err(e),
    }
}

/// TIOCGPGRP through a pty master (or on crust's own controlling
/// terminal): the terminal's foreground process group (0 if none).
pub fn foreground_group(fd: impl AsFd) -> io::Result<i32> {
    get_int(fd.as_fd(), libc::TIOCGPGRP)
}

/// TIOCSPGRP on the caller's controlling terminal, with SIGTTOU blocked
/// meanwhile (so that a caller in a background group may do it too).
pub fn set_foreground_group(fd: impl AsFd, pgrp: i32) -> io::Result<()> {
    // SAFETY: sigset operations on a local set; pthread_sigmask with valid
    // pointers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTTOU);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        let r = set_int(fd.as_fd(), libc::TIOCSPGRP, pgrp);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        r
    }
}

/// TIOCGDEV: the device number of the terminal behind `fd` (for /dev/tty
/// and /dev/console, the real terminal), in `st_rdev` encoding.
pub fn real_device(fd: impl AsFd) -> io::Result<u64> {
    let mut v: libc::c_uint = 0;
    // SAFETY: TIOCGDEV writes one unsigned int.
    cvt(unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCGDEV, &mut v) })?;
    // The kernel's old encoding: major in bits 8-19 (12 bits), minor in
    // bits 0-7 and 20-31.
    let major = ((v >> 8) & 0xfff) as u32;
    let minor = ((v & 0xff) | ((v >> 12) & 0xfff00)) as u32;
    Ok(libc::makedev(major, minor))
}

/// TIOCGPTPEER: open the slave of the pty master `master` with `flags`
/// (O_NOCTTY is added).
pub fn open_slave(master: impl AsFd, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: TIOCGPTPEER takes the open flags as an integer argument.
    let fd = cvt(unsafe {
        libc::ioctl(
            master.as_fd().as_raw_fd(),
            libc::TIOCGPTPEER,
            (flags | libc::O_NOCTTY) as libc::c_ulong,
        )
    })?;
    // SAFETY: a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// TIOCSCTTY: make the terminal at fd number `fd` the caller's
/// controlling terminal (the caller must be a session leader without one).
/// For a forked child that inherited `fd`; a number that is not open
/// gives EBADF.
pub fn set_controlling_raw(fd: std::os::fd::RawFd) -> io::Result<()> {
    // SAFETY: an ioctl on an fd number with integer argument 0 (do not
    // steal); no memory is passed.
    cvt(unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0 as libc::c_ulong) })?;
    Ok(())
}

/// Open /dev/tty as a file of the terminal `tty`: a short-lived child
/// makes `tty` the controlling terminal of a new session, opens /dev/tty
/// with `flags`, crust takes that file with pidfd_getfd, and the child
/// exits (which leaves the terminal without a session again).
pub fn open_dev_tty_of(tty: impl AsFd, flags: i32) -> io::Result<OwnedFd> {
    let (rd, wr) = crate::pipe::pipe2(libc::O_CLOEXEC)?;
    let (hold_rd, hold_wr) = crate::pipe::pipe2(libc::O_CLOEXEC)?;
    let tty_fd = tty.as_fd().as_raw_fd();
    let hold_wr_fd = hold_wr.as_raw_fd();
    let path = c"/dev/tty";
    // SAFETY: the child only makes raw system calls (setsid, ioctl, open,
    // write, read, _exit) on fds and a static string, all async-signal-safe.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(io::Error::last_os_error());
    }
    if child == 0 {
        // SAFETY: see above; the child never returns.
        unsafe {
            let mut res: libc::c_int = -1;
            if libc::setsid() >= 0 && libc::ioctl(tty_fd, libc::TIOCSCTTY, 0 as libc::c_ulong) == 0
            {
                res = libc::open(path.as_ptr(), flags | libc::O_NOCTTY);
            }
            if res < 0 {
                res = -*libc::__errno_location();
            }
            libc::write(
                wr.as_raw_fd(),
                &res as *const libc::c_int as *const libc::c_void,
                4,
            );
            // Our copy of the write end would keep the read below from
            // ever seeing EOF.
            libc::close(hold_wr_fd);
            let mut b = 0u8;
            libc::read(
                hold_rd.as_raw_fd(),
                &mut b as *mut u8 as *mut libc::c_void,
                1,
            );
            libc::_exit(0);
        }
    }
    drop(wr);
    drop(hold_rd);
    let got = (|| -> io::Result<OwnedFd> {
        let mut buf = [0u8; 4];
        let mut f = std::fs::File::from(rd);
        std::io::Read::read_exact(&mut f, &mut buf)?;
        let fd = i32::from_ne_bytes(buf);
        if fd < 0 {
            return Err(io::Error::from_raw_os_error(-fd));
        }
        let pidfd = crate::pidfd::pidfd_open(child)?;
        crate::pidfd::pidfd_getfd(&pidfd, fd)
    })();
    drop(hold_wr);
    let mut status = 0;
    // SAFETY: waiting for our own child with a valid status pointer.
    unsafe {
        while libc::waitpid(child, &mut status, libc::__WALL) < 0
            && *libc::__errno_location() == libc::EINTR
        {}
    }
    got
}

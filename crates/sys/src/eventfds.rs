//! Event fds: eventfd, signalfd, timerfd, epoll and inotify. Creating them
//! again at restore (with the kernel's checkpoint/restore ioctls
//! TFD_IOC_SET_TICKS and INOTIFY_IOC_SETNEXTWD), reading a timerfd, finding
//! an epoll target with kcmp, and opening a watched inode by its handle.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use libc::pid_t;

/// `TFD_IOC_SET_TICKS`: `_IOW('T', 0, u64)` (CONFIG_CHECKPOINT_RESTORE).
const TFD_IOC_SET_TICKS: libc::c_ulong = 0x4008_5400;
/// `INOTIFY_IOC_SETNEXTWD`: `_IOW('I', 0, int)` (CONFIG_CHECKPOINT_RESTORE).
const INOTIFY_IOC_SETNEXTWD: libc::c_ulong = 0x4004_4900;
/// kcmp type comparing a task's fd with an epoll target.
const KCMP_EPOLL_TFD: libc::c_int = 7;

fn fd_result(r: libc::c_long) -> io::Result<OwnedFd> {
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: r is a fresh fd the kernel just returned; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

fn int_result(r: libc::c_long) -> io::Result<libc::c_long> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `eventfd2(0, flags)`: a new eventfd with a zero counter.
pub fn eventfd(flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    fd_result(unsafe { libc::syscall(libc::SYS_eventfd2, 0, flags) })
}

/// `signalfd4(-1, mask, 8, flags)`: a new signalfd for the signals of
/// `mask` (bit N-1 for signal N).
pub fn signalfd(mask: u64, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: the kernel reads 8 bytes from &mask, which lives across the call.
    fd_result(unsafe { libc::syscall(libc::SYS_signalfd4, -1, &mask as *const u64, 8, flags) })
}

/// `timerfd_create(clockid, flags)`.
pub fn timerfd_create(clockid: i32, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    fd_result(unsafe { libc::syscall(libc::SYS_timerfd_create, clockid, flags) })
}

/// A timer setting: time to the next expiry (or absolute expiry) and the
/// period, as (seconds, nanoseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimerSpec {
    /// Expiry.
    pub value: (i64, i64),
    /// Period (zero: one-shot).
    pub interval: (i64, i64),
}

fn itimerspec(s: &TimerSpec) -> libc::itimerspec {
    libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: s.interval.0,
            tv_nsec: s.interval.1,
        },
        it_value: libc::timespec {
            tv_sec: s.value.0,
            tv_nsec: s.value.1,
        },
    }
}

/// `timerfd_settime(fd, flags, spec, NULL)`.
pub fn timerfd_settime(fd: impl AsFd, flags: i32, spec: &TimerSpec) -> io::Result<()> {
    let its = itimerspec(spec);
    // SAFETY: the kernel reads `its`, which lives across the call.
    int_result(unsafe {
        libc::syscall(
            libc::SYS_timerfd_settime,
            fd.as_fd().as_raw_fd(),
            flags,
            &its as *const libc::itimerspec,
            std::ptr::null_mut::<libc::itimerspec>(),
        )
    })
    .map(drop)
}

/// `timerfd_gettime(fd)`: the time left to the next expiry and the period.
/// On a periodic timer that expired, this also moves the timer forward and
/// counts the missed periods into its ticks, as a read would see them.
pub fn timerfd_gettime(fd: impl AsFd) -> io::Result<TimerSpec> {
    let mut its = itimerspec(&TimerSpec::default());
    // SAFETY: the kernel writes one itimerspec into `its`.
    int_result(unsafe {
        libc::syscall(
            libc::SYS_timerfd_gettime,
            fd.as_fd().as_raw_fd(),
            &mut its as *mut libc::itimerspec,
        )
    })?;
    Ok(TimerSpec {
        value: (its.it_value.tv_sec, its.it_value.tv_nsec),
        interval: (its.it_interval.tv_sec, its.it_interval.tv_nsec),
    })
}

/// `ioctl(TFD_IOC_SET_TICKS)`: set the expirations not yet read.
pub fn timerfd_set_ticks(fd: impl AsFd, ticks: u64) -> io::Result<()> {
    // SAFETY: the kernel reads one u64 from &ticks.
    int_result(unsafe {
        libc::ioctl(
            fd.as_fd().as_raw_fd(),
            TFD_IOC_SET_TICKS,
            &ticks as *const u64,
        ) as libc::c_long
    })
    .map(drop)
}

/// `clock_gettime(clockid)` as (seconds, nanoseconds).
pub fn clock_now(clockid: i32) -> io::Result<(i64, i64)> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: the kernel writes one timespec into `ts`.
    int_result(unsafe { libc::clock_gettime(clockid, &mut ts) as libc::c_long })?;
    Ok((ts.tv_sec, ts.tv_nsec))
}

/// `epoll_create1(flags)`.
pub fn epoll_create(flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with an integer argument.
    fd_result(unsafe { libc::syscall(libc::SYS_epoll_create1, flags) })
}

/// `epoll_ctl(epfd, EPOLL_CTL_ADD, fd, {events, data})`, on raw fd numbers
/// (a restored task registers its own fd numbers).
pub fn epoll_add(epfd: RawFd, fd: RawFd, events: u32, data: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: the kernel reads `ev`; bad fd numbers give EBADF.
    int_result(unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) as libc::c_long })
        .map(drop)
}

/// kcmp(pid, pid, KCMP_EPOLL_TFD, fd, {epfd, tfd, toff}): whether the task's
/// fd `fd` is the file its epoll fd `epfd` watches as the `toff`-th target
/// registered with fd number `tfd`.
pub fn kcmp_epoll_tfd(
    pid: pid_t,
    fd: RawFd,
    epfd: RawFd,
    tfd: RawFd,
    toff: u32,
) -> io::Result<bool> {
    let slot: [u32; 3] = [epfd as u32, tfd as u32, toff];
    // SAFETY: the kernel reads the 12-byte kcmp_epoll_slot from `slot`.
    let r = int_result(unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid,
            pid,
            KCMP_EPOLL_TFD,
            fd as libc::c_ulong,
            slot.as_ptr(),
        )
    })?;
    Ok(r == 0)
}

/// `inotify_init1(flags)`.
pub fn inotify_init(flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with an integer argument.
    fd_result(unsafe { libc::syscall(libc::SYS_inotify_init1, flags) })
}

/// `ioctl(INOTIFY_IOC_SETNEXTWD, wd)`: the next watch gets `wd` if free.
pub fn inotify_set_next_wd(fd: impl AsFd, wd: i32) -> io::Result<()> {
    // SAFETY: integer ioctl argument.
    int_result(unsafe {
        libc::ioctl(
            fd.as_fd().as_raw_fd(),
            INOTIFY_IOC_SETNEXTWD,
            wd as libc::c_ulong,
        ) as libc::c_long
    })
    .map(drop)
}

/// `inotify_add_watch(fd, path, mask)`: the watch descriptor.
pub fn inotify_add_watch(fd: impl AsFd, path: &Path, mask: u32) -> io::Result<i32> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is a NUL-terminated string living across the call.
    int_result(unsafe {
        libc::inotify_add_watch(fd.as_fd().as_raw_fd(), c.as_ptr(), mask) as libc::c_long
    })
    .map(|wd| wd as i32)
}

/// `open_by_handle_at(mount, {bytes, type}, O_PATH | O_CLOEXEC)`: the inode
/// a file handle names, on the filesystem of `mount`.
pub fn open_by_handle(mount: impl AsFd, handle_type: i32, handle: &[u8]) -> io::Result<OwnedFd> {
    // struct file_handle { u32 handle_bytes; int handle_type; u8 f_handle[]; }
    // built in u32 words, so it is aligned.
    let mut raw = Vec::with_capacity(8 + handle.len());
    raw.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
    raw.extend_from_slice(&handle_type.to_ne_bytes());
    raw.extend_from_slice(handle);
    let mut buf = vec![0u32; raw.len().div_ceil(4)];
    for (w, c) in buf.iter_mut().zip(raw.chunks(4)) {
        let mut b = [0u8; 4];
        b[..c.len()].copy_from_slice(c);
        *w = u32::from_ne_bytes(b);
    }
    // SAFETY: `buf` holds a complete struct file_handle with handle_bytes
    // bytes of handle after its header, and lives across the call.
    fd_result(unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount.as_fd().as_raw_fd(),
            buf.as_ptr(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    })
}

/// Whether `fd` is an open fd number of this process.
pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD on any number is harmless; EBADF if not open.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// `dup2(old, new)` then, after `f` ran, `close(new)`: `new` exists only
/// while `f` runs. `new` must not be open (checked with [`fd_is_open`]).
pub fn with_fd_at<T>(old: RawFd, new: RawFd, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    if fd_is_open(new) {
        return Err(io::Error::from_raw_os_error(libc::EBUSY));
    }
    // SAFETY: dup2 onto a number that is not open: it clobbers nothing.
    int_result(unsafe { libc::dup2(old, new) as libc::c_long })?;
    let out = f();
    // SAFETY: `new` is the fd this function just created.
    unsafe { libc::close(new) };
    out
}

/// `fanotify_init(flags, event_f_flags)`.
pub fn fanotify_init(flags: u32, event_f_flags: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    fd_result(unsafe { libc::syscall(libc::SYS_fanotify_init, flags, event_f_flags) })
}

/// `fanotify_mark(fd, flags, mask, AT_FDCWD, path)`.
pub fn fanotify_mark(fd: impl AsFd, flags: u32, mask: u64, path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is a NUL-terminated string living across the call.
    int_result(unsafe {
        libc::fanotify_mark(
            fd.as_fd().as_raw_fd(),
            flags,
            mask,
            libc::AT_FDCWD,
            c.as_ptr(),
        ) as libc::c_long
    })
    .map(drop)
}

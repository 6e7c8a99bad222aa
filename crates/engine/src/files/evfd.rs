//! eventfd, signalfd and timerfd: small anon-inode files whose whole state
//! is in their fdinfo.
//!
//! * eventfd: `eventfd_file_entry {flags, counter}`; EFD_SEMAPHORE, which
//!   the file's flags do not show, goes into the crust extension
//!   `crust_semaphore`. Restored as eventfd(0, flags) plus a write of the
//!   counter (eventfd() itself takes only 32 bits).
//! * signalfd: `signalfd_entry {flags, sigmask}`, restored by signalfd().
//! * timerfd: `timerfd_entry {clockid, ticks, settime_flags, vsec/vnsec,
//!   isec/insec}`. The value is the time left to the next expiry, as CRIU
//!   stores it: crust reads it with timerfd_gettime on its duplicate of the
//!   file (which also moves an expired periodic timer forward and counts the
//!   missed periods into its ticks, as the task's next read would), then the
//!   ticks from fdinfo. At restore an absolute timer (TFD_TIMER_ABSTIME)
//!   gets the restoring clock's time added, like CRIU; expirations not yet
//!   read are put back with the TFD_IOC_SET_TICKS ioctl.

use std::io::Write;
use std::os::fd::OwnedFd;

use crust_image::pb;
use crust_sys::eventfds as sys;
use crust_sys::procfs;

use super::{fd_type, DumpCtx, FileKind, OpenCtx, OpenFd};
use crate::error::{Context, Error, Result};

const O_CLOEXEC: u32 = libc::O_CLOEXEC as u32;
const O_NONBLOCK: u32 = libc::O_NONBLOCK as u32;
const NSEC: u64 = 1_000_000_000;

fn bad(e: &pb::FileEntry, what: String) -> Error {
    Error::BadImage {
        file: "files.img".into(),
        what: format!("file id {}: {what}", e.id),
    }
}

/// A parse error in the fdinfo of `f`.
pub(super) fn proc_err(f: &OpenFd, source: procfs::ProcError) -> Error {
    Error::Proc(procfs::ReadError::Parse {
        path: format!("/proc/{}/fdinfo/{}", f.pid, f.fd).into(),
        source,
    })
}

/// The open flags crust restores: O_NONBLOCK, plus O_CLOEXEC for crust's
/// own copy (install sets the task's close-on-exec flags).
fn create_flags(flags: u32) -> i32 {
    ((flags & O_NONBLOCK) | O_CLOEXEC) as i32
}

/// eventfd files.
pub struct Eventfd;

impl FileKind for Eventfd {
    fn claims(&self, f: &OpenFd, _: &DumpCtx) -> bool {
        f.link == "anon_inode:[eventfd]"
    }

    fn dump(&self, f: &OpenFd, id: u32, _: &mut DumpCtx) -> Result<pb::FileEntry> {
        let ev = f.info.eventfd().map_err(|e| proc_err(f, e))?;
        let semaphore = ev.semaphore.ok_or_else(|| Error::Unsupported {
            pid: f.pid,
            what: format!(
                "{}: an eventfd on a kernel whose fdinfo does not show EFD_SEMAPHORE",
                f.describe()
            ),
        })?;
        Ok(pb::FileEntry {
            r#type: fd_type::EVENTFD,
            id,
            efd: Some(pb::EventfdFileEntry {
                id,
                flags: f.info.flags & !O_CLOEXEC,
                fown: Default::default(),
                counter: ev.count,
                crust_semaphore: Some(semaphore),
            }),
            ..Default::default()
        })
    }

    fn restores(&self, t: i32) -> bool {
        t == fd_type::EVENTFD
    }

    fn open(&self, e: &pb::FileEntry, _: &mut OpenCtx) -> Result<OwnedFd> {
        let efd = e
            .efd
            .as_ref()
            .ok_or_else(|| bad(e, "an EVENTFD file without its efd entry".into()))?;
        if efd.counter == u64::MAX {
            return Err(bad(
                e,
                "an eventfd counter of 2^64-1, above its maximum".into(),
            ));
        }
        let mut flags = create_flags(efd.flags);
        if efd.crust_semaphore == Some(true) {
            flags |= libc::EFD_SEMAPHORE;
        }
        let fd = sys::eventfd(flags).ctx(|| format!("eventfd for file id {}", e.id))?;
        if efd.counter != 0 {
            let mut f = std::fs::File::from(fd);
            f.write_all(&efd.counter.to_ne_bytes())
                .ctx(|| format!("setting the counter of eventfd id {}", e.id))?;
            return Ok(f.into());
        }
        Ok(fd)
    }
}

/// signalfd files.
pub struct Signalfd;

impl FileKind for Signalfd {
    fn claims(&self, f: &OpenFd, _: &DumpCtx) -> bool {
        f.link == "anon_inode:[signalfd]"
    }

    fn dump(&self, f: &OpenFd, id: u32, _: &mut DumpCtx) -> Result<pb::FileEntry> {
        let mask = f.info.signalfd_mask().map_err(|e| proc_err(f, e))?;
        Ok(pb::FileEntry {
            r#type: fd_type::SIGNALFD,
            id,
            sgfd: Some(pb::SignalfdEntry {
                id,
                flags: f.info.flags & !O_CLOEXEC,
                fown: Default::default(),
                sigmask: mask,
            }),
            ..Default::default()
        })
    }

    fn restores(&self, t: i32) -> bool {
        t == fd_type::SIGNALFD
    }

    fn open(&self, e: &pb::FileEntry, _: &mut OpenCtx) -> Result<OwnedFd> {
        let s = e
            .sgfd
            .as_ref()
            .ok_or_else(|| bad(e, "a SIGNALFD file without its sgfd entry".into()))?;
        sys::signalfd(s.sigmask, create_flags(s.flags))
            .ctx(|| format!("signalfd for file id {} (mask {:#x})", e.id, s.sigmask))
    }
}

/// timerfd files.
pub struct Timerfd;

impl FileKind for Timerfd {
    fn claims(&self, f: &OpenFd, _: &DumpCtx) -> bool {
        f.link == "anon_inode:[timerfd]"
    }

    fn dump(&self, f: &OpenFd, id: u32, _: &mut DumpCtx) -> Result<pb::FileEntry> {
        // gettime first: it folds missed periods into the ticks fdinfo shows.
        let spec = sys::timerfd_gettime(&f.file)
            .ctx(|| format!("timerfd_gettime of {} of {}", f.describe(), f.pid))?;
        let info = procfs::read_fdinfo(f.pid, f.fd)?;
        let t = info.timerfd().map_err(|e| proc_err(f, e))?;
        let (vsec, vnsec) = (spec.value.0 as u64, spec.value.1 as u64);
        let (isec, insec) = (spec.interval.0 as u64, spec.interval.1 as u64);
        Ok(pb::FileEntry {
            r#type: fd_type::TIMERFD,
            id,
            tfd: Some(pb::TimerfdEntry {
                id,
                flags: f.info.flags & !O_CLOEXEC,
                fown: Default::default(),
                clockid: t.clockid as u32,
                ticks: t.ticks,
                settime_flags: t.settime_flags,
                vsec,
                vnsec,
                isec,
                insec,
            }),
            ..Default::default()
        })
    }

    fn restores(&self, t: i32) -> bool {
        t == fd_type::TIMERFD
    }

    fn open(&self, e: &pb::FileEntry, _: &mut OpenCtx) -> Result<OwnedFd> {
        let t = e
            .tfd
            .as_ref()
            .ok_or_else(|| bad(e, "a TIMERFD file without its tfd entry".into()))?;
        let secs = |s: u64| i64::try_from(s).map_err(|_| bad(e, format!("{s} s is out of range")));
        if t.vnsec >= NSEC || t.insec >= NSEC {
            return Err(bad(e, "a timerfd value with 1e9 ns or more".into()));
        }
        let mut value = (secs(t.vsec)?, t.vnsec as i64);
        let interval = (secs(t.isec)?, t.insec as i64);
        let clockid = t.clockid as i32;
        let fd = sys::timerfd_create(clockid, create_flags(t.flags))
            .ctx(|| format!("timerfd_create(clock {clockid}) for file id {}", e.id))?;
        let armed = value != (0, 0);
        if armed && t.settime_flags & libc::TFD_TIMER_ABSTIME as u32 != 0 {
            let now = sys::clock_now(clockid).ctx(|| format!("reading clock {clockid}"))?;
            let ns = value.1 + now.1;
            value = (
                value
                    .0
                    .saturating_add(now.0)
                    .saturating_add(ns / NSEC as i64),
                ns % NSEC as i64,
            );
        }
        if armed {
            let flags = t.settime_flags as i32;
            sys::timerfd_settime(&fd, flags, &sys::TimerSpec { value, interval })
                .ctx(|| format!("timerfd_settime for file id {}", e.id))?;
        }
        if t.ticks != 0 {
            sys::timerfd_set_ticks(&fd, t.ticks).map_err(|err| {
                if err.raw_os_error() == Some(libc::ENOTTY) {
                    Error::Kernel(
                        "TFD_IOC_SET_TICKS (CONFIG_CHECKPOINT_RESTORE), to restore a timerfd's unread expirations".into(),
                    )
                } else {
                    Error::Sys {
                        what: format!("setting the ticks of timerfd id {}", e.id),
                        err,
                    }
                }
            })?;
        }
        Ok(fd)
    }
}

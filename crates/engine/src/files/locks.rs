//! File locks and leases (file-locks.img, `file_lock_entry`), with
//! `--file-locks`, as CRIU: BSD locks (flock), POSIX record locks, open
//! file description locks (F_OFD_SETLK) and leases (F_SETLEASE), each with
//! its kind, type (read or write) and byte range.
//!
//! At dump the locks come from the `lock:` lines of each fd's fdinfo,
//! which the kernel prints for the open file description the lock was
//! taken through (and, for POSIX locks, only in the owning process): that
//! gives the owner and an fd to take the lock again with. A BSD lock, OFD
//! lock or lease shared by several fds (dup, fork) is written once. Without
//! `--file-locks` a task holding any lock is refused, naming the lock; a
//! lease being broken and kinds crust does not know (delegations) are
//! refused always. A task of the tree blocked waiting for a lock is not a
//! problem: the freeze interrupts its wait (the kernel drops it from the
//! lock's waiters), and the restored task restarts the syscall and waits
//! again.
//!
//! At restore each lock is taken again by its owner, with remote syscalls,
//! after every mapping is in place (mapping a file opens and closes it in
//! the task, which would drop POSIX locks on it) and before credentials
//! change: flock with LOCK_NB, F_SETLK, F_OFD_SETLK, F_SETLEASE. A lock
//! that conflicts with one taken since by a task outside the tree fails the
//! restore, naming it.

use std::collections::{HashMap, HashSet};

use crust_image::{names, pb, ImageKind};
use crust_sys::procfs::{self, LockKind, LockLine};

use super::OpenFd;
use crate::error::{Error, Result};
use crate::images::ImageDir;
use crate::remote::Remote;

/// `file_lock_entry.flag`: a POSIX record lock.
pub const FL_POSIX: u32 = 1;
/// `file_lock_entry.flag`: a BSD lock.
pub const FL_FLOCK: u32 = 2;
/// `file_lock_entry.flag`: an open file description lock.
pub const FL_OFD: u32 = 4;
/// `file_lock_entry.flag`: a lease.
pub const FL_LEASE: u32 = 8;

const F_RDLCK: u32 = libc::F_RDLCK as u32;
const F_WRLCK: u32 = libc::F_WRLCK as u32;
/// fcntl F_OFD_SETLK (Linux 3.15).
const F_OFD_SETLK: u64 = 37;

/// What a key of a dumped lock is made of, to write a shared lock once.
type LockKey = (u32, i64, u64, u64, bool, u64, Option<u64>);

/// The locks collected during one dump.
pub struct DumpState {
    /// --file-locks was given.
    enabled: bool,
    entries: Vec<pb::FileLockEntry>,
    seen: HashSet<LockKey>,
}

fn refuse(f: &OpenFd, what: String) -> Error {
    Error::Unsupported {
        pid: f.pid,
        what: format!("{}: {what}", f.describe()),
    }
}

impl DumpState {
    /// Collect locks if `enabled` (--file-locks), refuse them otherwise.
    pub fn new(enabled: bool) -> Self {
        DumpState {
            enabled,
            entries: Vec::new(),
            seen: HashSet::new(),
        }
    }

    /// Collect the locks held through `f` (file entry `id`), or refuse
    /// them.
    pub fn collect(&mut self, f: &OpenFd, id: u32) -> Result<()> {
        for v in f.info.get_all("lock") {
            let l = procfs::parse_lock_line(v).map_err(|source| {
                Error::Proc(procfs::ReadError::Parse {
                    path: format!("/proc/{}/fdinfo/{}", f.pid, f.fd).into(),
                    source,
                })
            })?;
            let flag = match l.kind {
                LockKind::Posix => FL_POSIX,
                LockKind::Flock => FL_FLOCK,
                LockKind::Ofd => FL_OFD,
                LockKind::Lease if l.state == "ACTIVE" => FL_LEASE,
                LockKind::Lease => {
                    return Err(refuse(
                        f,
                        format!("a lease being broken ({}), not supported", l.describe()),
                    ))
                }
                LockKind::Other => {
                    return Err(refuse(f, format!("a {}, not supported", l.describe())))
                }
            };
            if !self.enabled {
                return Err(refuse(
                    f,
                    format!(
                        "the task holds file locks ({}); dump with --file-locks",
                        l.describe()
                    ),
                ));
            }
            // A POSIX lock belongs to the process, the others to the open
            // file description.
            let (owner, dev, ino) = if flag == FL_POSIX {
                (f.pid as i64, f.stat.st_dev, f.stat.st_ino)
            } else {
                (-(id as i64), 0, 0)
            };
            let key = (flag, owner, dev, ino, l.write, l.start, l.end);
            if !self.seen.insert(key) {
                continue;
            }
            self.entries.push(entry(f, flag, &l)?);
        }
        Ok(())
    }

    /// Write file-locks.img, if any lock was dumped.
    pub fn finish(self, dir: &ImageDir) -> Result<()> {
        if self.entries.is_empty() {
            return Ok(());
        }
        dir.write(names::FILE_LOCKS, ImageKind::FileLocks, &self.entries)
    }
}

fn entry(f: &OpenFd, flag: u32, l: &LockLine) -> Result<pb::FileLockEntry> {
    let too_far = || refuse(f, format!("a lock beyond 2^63 bytes ({})", l.describe()));
    let start = i64::try_from(l.start).map_err(|_| too_far())?;
    let len = match l.end {
        None => 0,
        Some(e) => i64::try_from(e - l.start + 1).map_err(|_| too_far())?,
    };
    Ok(pb::FileLockEntry {
        flag,
        r#type: if l.write { F_WRLCK } else { F_RDLCK },
        pid: f.pid,
        fd: f.fd,
        start,
        len,
    })
}

/// The locks of file-locks.img by owner pid (none if the image is
/// missing), each checked: a known kind and type, a sane range, an owner
/// `has_fd(pid, fd)` says exists.
pub fn load(
    dir: &ImageDir,
    has_fd: impl Fn(u32, u32) -> bool,
) -> Result<HashMap<u32, Vec<pb::FileLockEntry>>> {
    let mut out: HashMap<u32, Vec<pb::FileLockEntry>> = HashMap::new();
    if !dir.file(names::FILE_LOCKS).exists() {
        return Ok(out);
    }
    let bad = |what: String| Error::BadImage {
        file: names::FILE_LOCKS.into(),
        what,
    };
    for e in dir.read::<pb::FileLockEntry>(names::FILE_LOCKS, ImageKind::FileLocks)? {
        if ![FL_POSIX, FL_FLOCK, FL_OFD, FL_LEASE].contains(&e.flag) {
            return Err(bad(format!("lock kind {:#x} is unknown", e.flag)));
        }
        if e.r#type != F_RDLCK && e.r#type != F_WRLCK {
            return Err(bad(format!("lock type {} is unknown", e.r#type)));
        }
        if e.start < 0 || e.len < 0 || e.start.checked_add(e.len).is_none() {
            return Err(bad(format!("lock range {}+{} is invalid", e.start, e.len)));
        }
        if e.pid <= 0 || e.fd < 0 || !has_fd(e.pid as u32, e.fd as u32) {
            return Err(bad(format!(
                "a lock is held through fd {} of pid {}, which the images lack",
                e.fd, e.pid
            )));
        }
        out.entry(e.pid as u32).or_default().push(e);
    }
    Ok(out)
}

/// A name for a lock entry, for messages.
fn describe(e: &pb::FileLockEntry) -> String {
    let kind = match e.flag {
        FL_POSIX => "POSIX lock",
        FL_FLOCK => "flock",
        FL_OFD => "OFD lock",
        _ => "lease",
    };
    let t = if e.r#type == F_WRLCK { "write" } else { "read" };
    let range = if e.len == 0 {
        format!("{}..EOF", e.start)
    } else {
        format!("{}..{}", e.start, e.start + e.len - 1)
    };
    format!("{t} {kind} on fd {}, bytes {range}", e.fd)
}

/// Take the locks `locks` of one restored process again, in it (`r` has
/// its scratch area mapped).
pub fn restore(r: &Remote, locks: &[pb::FileLockEntry]) -> Result<()> {
    for e in locks {
        let fd = e.fd as u64;
        let what = describe(e);
        let got = match e.flag {
            FL_FLOCK => {
                let op = if e.r#type == F_WRLCK {
                    libc::LOCK_EX
                } else {
                    libc::LOCK_SH
                };
                r.raw(
                    &what,
                    libc::SYS_flock,
                    [fd, (op | libc::LOCK_NB) as u64, 0, 0, 0, 0],
                )?
            }
            FL_LEASE => r.raw(
                &what,
                libc::SYS_fcntl,
                [fd, libc::F_SETLEASE as u64, e.r#type as u64, 0, 0, 0],
            )?,
            _ => {
                // struct flock: l_type, l_whence (shorts), l_start, l_len
                // (at 8 and 16), l_pid (0 for OFD locks).
                let mut fl = [0u8; 32];
                fl[0..2].copy_from_slice(&(e.r#type as i16).to_ne_bytes());
                fl[2..4].copy_from_slice(&(libc::SEEK_SET as i16).to_ne_bytes());
                fl[8..16].copy_from_slice(&e.start.to_ne_bytes());
                fl[16..24].copy_from_slice(&e.len.to_ne_bytes());
                let addr = r.put(0, &fl)?;
                let cmd = if e.flag == FL_OFD {
                    F_OFD_SETLK
                } else {
                    libc::F_SETLK as u64
                };
                r.raw(&what, libc::SYS_fcntl, [fd, cmd, addr, 0, 0, 0])?
            }
        };
        if got < 0 {
            let err = std::io::Error::from_raw_os_error(-got as i32);
            return Err(Error::Restore {
                pid: r.pid(),
                what: format!("taking its {what} again: {err}"),
            });
        }
    }
    Ok(())
}

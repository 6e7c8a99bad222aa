//! pidfds: a `pidfd_entry {ino, flags, nspid}` (CRIU 4.x's pidfd.proto),
//! `nspid` from the `Pid:` line of the fd's fdinfo (-1 once the process
//! it refers to has exited and been reaped), flags O_NONBLOCK and
//! PIDFD_THREAD kept.
//!
//! At restore, by what the pidfd refers to:
//! * a process or thread of the restored tree: the restored one. It does
//!   not exist yet when the tree's files are opened, so the fd gets a
//!   stand-in at first, and the owner replaces it with its own
//!   pidfd_open of the pid (remote syscalls, once its threads exist). A
//!   pidfd shared by several fds or processes becomes one open file per
//!   fd; a PIDFD_THREAD pidfd of a thread of another process must name a
//!   process restored before its owner (otherwise the restore fails,
//!   naming it).
//! * a process that is gone (nspid -1): a pidfd of a child crust creates
//!   and reaps at once, which polls readable and reports ESRCH as the
//!   dumped one did; its exit status (PIDFD_GET_INFO) is that child's, 0.
//! * a process outside the tree: pidfd_open of the same pid, which must
//!   exist (otherwise the restore fails, naming it). Nothing tells whether
//!   it is still the same process.

use std::collections::HashSet;
use std::os::fd::OwnedFd;

use crust_image::pb;
use crust_sys::pidfd::{self, PIDFD_THREAD};

use super::{fd_type, DumpCtx, FileKind, OpenCtx, OpenFd};
use crate::error::{Context, Error, Result};
use crate::remote::Remote;

/// pidfds.
pub struct Pidfd;

/// The pidfd_open flags a pidfd's file flags hold.
fn open_flags(flags: u32) -> u32 {
    flags & (libc::O_NONBLOCK as u32 | PIDFD_THREAD)
}

impl FileKind for Pidfd {
    fn claims(&self, f: &OpenFd, _: &DumpCtx) -> bool {
        f.link == "anon_inode:[pidfd]"
    }

    fn dump(&self, f: &OpenFd, id: u32, _: &mut DumpCtx) -> Result<pb::FileEntry> {
        let pid = f
            .info
            .get("Pid")
            .and_then(|v| v.parse::<i32>().ok())
            .ok_or_else(|| Error::Unsupported {
                pid: f.pid,
                what: format!("{}: a pidfd whose fdinfo has no Pid: line", f.describe()),
            })?;
        Ok(pb::FileEntry {
            r#type: fd_type::PIDFD,
            id,
            pidfd: Some(pb::PidfdEntry {
                id,
                ino: f.stat.st_ino,
                flags: f.info.flags & !(libc::O_CLOEXEC as u32),
                nspid: pid,
                fown: Default::default(),
            }),
            ..Default::default()
        })
    }

    fn restores(&self, t: i32) -> bool {
        t == fd_type::PIDFD
    }

    fn open(&self, e: &pb::FileEntry, ctx: &mut OpenCtx) -> Result<OwnedFd> {
        let p = entry(e)?;
        let flags = open_flags(p.flags);
        if p.nspid == -1 {
            return pidfd::pidfd_of_exited(flags)
                .ctx(|| format!("making a pidfd of an exited process (file id {})", e.id));
        }
        if ctx.tree.contains(&(p.nspid as u32)) {
            // A stand-in until the owner opens the real one.
            let me = std::process::id() as i32;
            return pidfd::pidfd_open(me).ctx(|| "pidfd_open of crust".into());
        }
        pidfd::pidfd_open_with(p.nspid, flags).map_err(|err| Error::Restore {
            pid: p.nspid,
            what: format!(
                "a pidfd (file id {}) refers to this process outside the tree, and pidfd_open of it fails: {err}",
                e.id
            ),
        })
    }
}

fn entry(e: &pb::FileEntry) -> Result<&pb::PidfdEntry> {
    let p = e.pidfd.as_ref().ok_or_else(|| Error::BadImage {
        file: "files.img".into(),
        what: format!("file id {}: a PIDFD file without its pidfd entry", e.id),
    })?;
    if p.nspid == 0 || p.nspid < -1 {
        return Err(Error::BadImage {
            file: "files.img".into(),
            what: format!("pidfd file id {}: invalid pid {}", e.id, p.nspid),
        });
    }
    Ok(p)
}

/// A pidfd of the restored tree that its owner opens itself.
#[derive(Debug, Clone)]
pub struct InTree {
    fd: u32,
    target: i32,
    flags: u32,
    cloexec: bool,
}

/// The pidfds among `table` that refer to `tree`'s own pids and tids.
pub fn in_tree(
    files: &std::collections::HashMap<u32, pb::FileEntry>,
    table: &[pb::FdinfoEntry],
    tree: &HashSet<u32>,
) -> Result<Vec<InTree>> {
    let mut out = Vec::new();
    for fi in table {
        let Some(e) = files.get(&fi.id).filter(|e| e.r#type == fd_type::PIDFD) else {
            continue;
        };
        let p = entry(e)?;
        if p.nspid > 0 && tree.contains(&(p.nspid as u32)) {
            out.push(InTree {
                fd: fi.fd,
                target: p.nspid,
                flags: open_flags(p.flags),
                cloexec: fi.flags & libc::FD_CLOEXEC as u32 != 0,
            });
        }
    }
    Ok(out)
}

/// In a restored process: replace the stand-ins of its pidfds of the tree
/// with pidfds of the restored processes.
pub fn restore_in_tree(r: &Remote, pidfds: &[InTree]) -> Result<()> {
    for p in pidfds {
        let what = format!("pidfd_open({}) for fd {}", p.target, p.fd);
        let got = r.raw(
            &what,
            libc::SYS_pidfd_open,
            [p.target as u64, p.flags as u64, 0, 0, 0, 0],
        )?;
        if got < 0 {
            return Err(Error::Restore {
                pid: r.pid(),
                what: format!(
                    "{what}: {} (a thread of a process restored later?)",
                    std::io::Error::from_raw_os_error(-got as i32)
                ),
            });
        }
        let cloexec = if p.cloexec { libc::O_CLOEXEC as u64 } else { 0 };
        r.call(
            "dup3",
            libc::SYS_dup3,
            [got as u64, p.fd as u64, cloexec, 0, 0, 0],
        )?;
        r.call("close", libc::SYS_close, [got as u64, 0, 0, 0, 0, 0])?;
    }
    Ok(())
}

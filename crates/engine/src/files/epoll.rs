//! epoll instances: an `eventpoll_file_entry` with one
//! `eventpoll_tfd_entry {tfd, events, data, dev, inode, pos}` per watched
//! file, from the `tfd:` lines of the epoll fd's fdinfo.
//!
//! The kernel keys a registration by (file, fd number), the fd number being
//! the one the task passed to EPOLL_CTL_ADD. At dump, each target is found
//! among the dumping task's fds with kcmp(KCMP_EPOLL_TFD): usually it is
//! the fd of that number; if the task closed that fd while the file lives
//! on through another of its fds, that other fd stands in (and the number
//! must be free in the task). The target's file id goes into the crust
//! extension `crust_target_id`, filled by [`resolve_targets`] once every fd
//! of the task has its id.
//!
//! At restore the epoll is created empty in crust; the watches are added
//! by each restored process right after [`super::OpenFiles::install`] put
//! its fds in place ([`add_watches`]), with its own fd numbers: where the
//! process has the target at the registered number, directly; where it
//! has the target only at another number, through a temporary dup at the
//! registered number. A watch several processes can add (the epoll and its
//! target shared across fork) is added by the first one (EEXIST for the
//! others). [`collect`] checks before anything is forked that every watch
//! has a process to add it. Images without `crust_target_id` (CRIU's) are
//! restored CRIU's way: the target is whatever the process has at `tfd`.
//!
//! As in CRIU, a watch is added anew, so an edge-triggered (EPOLLET) watch
//! whose file is ready reports it once more after restore; a disabled
//! EPOLLONESHOT watch (no events left in its mask) stays disabled.

use std::collections::{HashMap, HashSet};
use std::os::fd::{OwnedFd, RawFd};

use crust_image::pb;
use crust_sys::eventfds as sys;
use crust_sys::procfs;

use super::evfd::proc_err;
use super::{fd_type, DumpCtx, FileKind, OpenCtx, OpenFd};
use crate::error::{Context, Error, Result};

/// A watch whose target's file id is not known yet: the target is the
/// task's fd `holder`.
struct Pending {
    epoll_id: u32,
    index: usize,
    holder: RawFd,
}

/// The watches of the epoll fds dumped from the current task, waiting for
/// their targets' file ids.
#[derive(Default)]
pub struct DumpState {
    pending: Vec<Pending>,
}

/// epoll instances.
pub struct Epoll;

/// Whether the task's fd `fd` is the `toff`-th target of its epoll fd
/// `epfd` registered as `tfd` (false if `fd` is not open).
fn holds(pid: i32, fd: RawFd, epfd: RawFd, tfd: RawFd, toff: u32) -> Result<bool> {
    match sys::kcmp_epoll_tfd(pid, fd, epfd, tfd, toff) {
        Ok(same) => Ok(same),
        Err(e) if e.raw_os_error() == Some(libc::EBADF) => Ok(false),
        Err(e) => Err(Error::Sys {
            what: format!("kcmp of fd {fd} with epoll fd {epfd}'s target {tfd} in {pid}"),
            err: e,
        }),
    }
}

impl FileKind for Epoll {
    fn claims(&self, f: &OpenFd, _: &DumpCtx) -> bool {
        f.link == "anon_inode:[eventpoll]"
    }

    fn dump(&self, f: &OpenFd, id: u32, ctx: &mut DumpCtx) -> Result<pb::FileEntry> {
        let targets = f.info.epoll_tfds().map_err(|e| proc_err(f, e))?;
        let task_fds = procfs::list_fds(f.pid).ctx(|| format!("listing the fds of {}", f.pid))?;
        let mut seen: HashMap<i32, u32> = HashMap::new();
        let mut tfds = Vec::with_capacity(targets.len());
        for (index, t) in targets.iter().enumerate() {
            let toff = seen.entry(t.tfd).or_default();
            let off = *toff;
            *toff += 1;
            let unsupported = |what: String| Error::Unsupported {
                pid: f.pid,
                what: format!("{}: an epoll watching {what}", f.describe()),
            };
            let holder = if holds(f.pid, t.tfd, f.fd, t.tfd, off)? {
                t.tfd
            } else {
                let mut found = None;
                for &fd in &task_fds {
                    if holds(f.pid, fd, f.fd, t.tfd, off)? {
                        found = Some(fd);
                        break;
                    }
                }
                let fd = found.ok_or_else(|| {
                    unsupported(format!(
                        "a file registered as fd {}, which the task no longer has open (the file lives on elsewhere)",
                        t.tfd
                    ))
                })?;
                if task_fds.contains(&t.tfd) {
                    return Err(unsupported(format!(
                        "a file registered as fd {} (now fd {fd}), while fd {} is another file",
                        t.tfd, t.tfd
                    )));
                }
                fd
            };
            ctx.epolls.pending.push(Pending {
                epoll_id: id,
                index,
                holder,
            });
            tfds.push(pb::EventpollTfdEntry {
                id,
                tfd: t.tfd as u32,
                events: t.events,
                data: t.data,
                dev: t.sdev,
                inode: t.ino,
                pos: t.pos,
                crust_target_id: None,
            });
        }
        Ok(pb::FileEntry {
            r#type: fd_type::EVENTPOLL,
            id,
            epfd: Some(pb::EventpollFileEntry {
                id,
                flags: f.info.flags & !(libc::O_CLOEXEC as u32),
                fown: Default::default(),
                tfd: tfds,
            }),
            ..Default::default()
        })
    }

    fn restores(&self, t: i32) -> bool {
        t == fd_type::EVENTPOLL
    }

    fn open(&self, e: &pb::FileEntry, _: &mut OpenCtx) -> Result<OwnedFd> {
        let ep = e.epfd.as_ref().ok_or_else(|| Error::BadImage {
            file: "files.img".into(),
            what: format!("EVENTPOLL file id {} has no epfd entry", e.id),
        })?;
        let fd = sys::epoll_create(libc::EPOLL_CLOEXEC)
            .ctx(|| format!("epoll_create for file id {}", e.id))?;
        if ep.flags & libc::O_NONBLOCK as u32 != 0 {
            use nix::fcntl::{fcntl, FcntlArg, OFlag};
            use std::os::fd::AsRawFd;
            fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
                .ctx(|| format!("O_NONBLOCK on epoll file id {}", e.id))?;
        }
        Ok(fd)
    }
}

/// Once every fd of a task has its entry (`fds`), fill in the target file
/// ids of the watches of the epolls dumped from it.
pub fn resolve_targets(
    state: &mut DumpState,
    fds: &[pb::FdinfoEntry],
    entries: &mut [pb::FileEntry],
) {
    for p in state.pending.drain(..) {
        let target = fds
            .iter()
            .find(|fi| fi.fd as RawFd == p.holder)
            .map(|fi| fi.id);
        let tfd = entries
            .get_mut(p.epoll_id as usize - 1)
            .and_then(|e| e.epfd.as_mut())
            .and_then(|ep| ep.tfd.get_mut(p.index));
        if let (Some(t), Some(id)) = (tfd, target) {
            t.crust_target_id = Some(id);
        }
    }
}

/// How a process adds one watch.
enum How {
    /// Its fd of the registered number is the target.
    Direct,
    /// It has the target at this other fd; the registered number is free.
    Via(RawFd),
}

fn how(table: &[pb::FdinfoEntry], t: &pb::EventpollTfdEntry) -> Option<How> {
    let at_tfd = table.iter().find(|fi| fi.fd == t.tfd);
    match t.crust_target_id {
        None => at_tfd.map(|_| How::Direct),
        Some(target) => match at_tfd {
            Some(fi) if fi.id == target => Some(How::Direct),
            Some(_) => None,
            None => table
                .iter()
                .find(|fi| fi.id == target)
                .map(|fi| How::Via(fi.fd as RawFd)),
        },
    }
}

/// The watches of every epoll file the fd tables use, by epoll file id;
/// checks that each watch has a process that can add it.
pub fn collect(
    files: &HashMap<u32, pb::FileEntry>,
    fdinfos: &[(String, Vec<pb::FdinfoEntry>)],
) -> Result<HashMap<u32, Vec<pb::EventpollTfdEntry>>> {
    let mut out = HashMap::new();
    let mut holders: HashMap<u32, Vec<&(String, Vec<pb::FdinfoEntry>)>> = HashMap::new();
    for t in fdinfos {
        let ids: HashSet<u32> = t.1.iter().map(|fi| fi.id).collect();
        for id in ids {
            if files
                .get(&id)
                .is_some_and(|f| f.r#type == fd_type::EVENTPOLL)
            {
                holders.entry(id).or_default().push(t);
            }
        }
    }
    for (id, tables) in holders {
        let Some(ep) = files[&id].epfd.as_ref() else {
            continue;
        };
        for t in &ep.tfd {
            if t.tfd >= i32::MAX as u32 {
                return Err(Error::BadImage {
                    file: "files.img".into(),
                    what: format!("epoll file id {id} watches fd {}, not an fd number", t.tfd),
                });
            }
            if !tables.iter().any(|(_, table)| how(table, t).is_some()) {
                let target = t
                    .crust_target_id
                    .map(|i| format!(" (file id {i})"))
                    .unwrap_or_default();
                return Err(Error::BadImage {
                    file: tables[0].0.clone(),
                    what: format!(
                        "epoll file id {id} watches fd {}{target}, which no fd table holding the epoll has",
                        t.tfd
                    ),
                });
            }
        }
        out.insert(id, ep.tfd.clone());
    }
    Ok(out)
}

/// In a restored process whose fds are in place (`table`): add the watches
/// of its epoll fds that it can add, with its own fd numbers.
pub fn add_watches(
    table: &[pb::FdinfoEntry],
    epolls: &HashMap<u32, Vec<pb::EventpollTfdEntry>>,
) -> Result<()> {
    let mut done = HashSet::new();
    for fi in table {
        let Some(watches) = epolls.get(&fi.id) else {
            continue;
        };
        if !done.insert(fi.id) {
            continue;
        }
        let epfd = fi.fd as RawFd;
        for t in watches {
            let tfd = t.tfd as RawFd;
            let add = || match sys::epoll_add(epfd, tfd, t.events, t.data) {
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
                r => r,
            };
            let r = match how(table, t) {
                None => continue,
                Some(How::Direct) => add(),
                Some(How::Via(fd)) => sys::with_fd_at(fd, tfd, add),
            };
            r.ctx(|| format!("adding fd {tfd} to epoll fd {epfd}"))?;
        }
    }
    Ok(())
}

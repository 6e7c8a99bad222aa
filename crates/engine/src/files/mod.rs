//! Open files: the fd table of a task and the files it refers to
//! (files.img + fdinfo-N.img). Each kind of file has its own module that
//! dumps an fd into a `file_entry` and opens it again at restore; this
//! module holds the table and the registry of kinds.

mod epoll;
mod evfd;
mod fanotify;
pub mod ghost;
mod inotify;
pub mod locks;
pub mod memfd;
mod pidfds;
mod pipe;
mod reg;
pub mod tty;

pub use ghost::DEFAULT_GHOST_LIMIT;
pub use reg::check_unchanged;

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crust_image::pb;
use crust_sys::fd::dup_above;
use crust_sys::pidfd;
use crust_sys::procfs;

use crate::error::{Context, Error, Result};
use crate::images::ImageDir;

/// `fd_types` numbers from CRIU's fdinfo.proto that crust writes.
pub mod fd_type {
    /// A regular file, directory or memory device (/dev/null ...).
    pub const REG: i32 = 1;
    /// A pipe.
    pub const PIPE: i32 = 2;
    /// An eventfd.
    pub const EVENTFD: i32 = 6;
    /// An epoll instance.
    pub const EVENTPOLL: i32 = 7;
    /// An inotify instance.
    pub const INOTIFY: i32 = 8;
    /// A signalfd.
    pub const SIGNALFD: i32 = 9;
    /// A terminal.
    pub const TTY: i32 = 11;
    /// A fanotify group.
    pub const FANOTIFY: i32 = 12;
    /// A timerfd.
    pub const TIMERFD: i32 = 17;
    /// A memfd.
    pub const MEMFD: i32 = 18;
    /// A pidfd.
    pub const PIDFD: i32 = 20;
}

/// One open file of a task as seen from crust: the task's fd, a duplicate
/// of its open file description, and what /proc says of it.
pub struct OpenFd {
    /// The task.
    pub pid: i32,
    /// Its fd number.
    pub fd: RawFd,
    /// The very same open file description (pidfd_getfd).
    pub file: OwnedFd,
    /// readlink of /proc/PID/fd/FD.
    pub link: String,
    /// fstat of the file.
    pub stat: nix::sys::stat::FileStat,
    /// /proc/PID/fdinfo/FD.
    pub info: procfs::FdInfo,
}

impl OpenFd {
    /// "fd N (LINK)" for messages.
    pub fn describe(&self) -> String {
        format!("fd {} ({})", self.fd, self.link)
    }
}

/// A kind of file crust can dump and restore: one implementation per
/// module, registered in [`KINDS`].
pub trait FileKind: Sync {
    /// Whether this kind handles `f`.
    fn claims(&self, f: &OpenFd, ctx: &DumpCtx) -> bool;
    /// Dump `f` as file entry `id` (its own images, such as pipe data, go
    /// through `ctx`).
    fn dump(&self, f: &OpenFd, id: u32, ctx: &mut DumpCtx) -> Result<pb::FileEntry>;
    /// Whether this kind restores entries of `fd_type`.
    fn restores(&self, fd_type: i32) -> bool;
    /// Open the file of `e` again, in crust, for the restored tree.
    fn open(&self, e: &pb::FileEntry, ctx: &mut OpenCtx) -> Result<OwnedFd>;
}

/// Options that change how fds are dumped and restored.
#[derive(Debug, Clone, Copy)]
pub struct FdOptions {
    /// --shell-job: terminals on stdio are the shell's.
    pub shell_job: bool,
    /// --ghost-limit: the largest deleted file dumped as a ghost file, bytes.
    pub ghost_limit: u64,
    /// --file-locks: dump the file locks the tasks hold.
    pub file_locks: bool,
}

impl Default for FdOptions {
    fn default() -> Self {
        FdOptions {
            shell_job: false,
            ghost_limit: DEFAULT_GHOST_LIMIT,
            file_locks: false,
        }
    }
}

/// Every kind of file crust handles.
static KINDS: &[&dyn FileKind] = &[
    &memfd::Memfd,
    &reg::RegularFile,
    &tty::Pty,
    &reg::ShellTerminal,
    &pipe::Pipe,
    &evfd::Eventfd,
    &evfd::Signalfd,
    &evfd::Timerfd,
    &epoll::Epoll,
    &inotify::Inotify,
    &fanotify::Fanotify,
    &pidfds::Pidfd,
];

/// What the kinds of files share during one dump.
pub struct DumpCtx<'a> {
    /// Options.
    pub opts: FdOptions,
    /// The images being written.
    pub dir: &'a ImageDir,
    /// State of the pipe module.
    pub pipes: pipe::DumpState,
    /// Deleted files dumped as ghost files.
    pub ghosts: ghost::DumpState,
    /// Epoll watches waiting for their targets' file ids.
    epolls: epoll::DumpState,
    /// The tree's pty pairs.
    ttys: tty::DumpState,
    /// The memfds met.
    pub memfds: memfd::DumpState,
    /// File locks and leases.
    locks: locks::DumpState,
}

impl<'a> DumpCtx<'a> {
    /// A context for a dump into `dir`.
    pub fn new(opts: FdOptions, dir: &'a ImageDir) -> Self {
        DumpCtx {
            opts,
            dir,
            pipes: pipe::DumpState::default(),
            ghosts: ghost::DumpState::default(),
            epolls: epoll::DumpState::default(),
            ttys: tty::DumpState::default(),
            memfds: memfd::DumpState::default(),
            locks: locks::DumpState::new(opts.file_locks),
        }
    }

    /// Before any fd is dumped: find the pty pairs of the frozen tree
    /// (`procs`, root first) and check its controlling terminals.
    pub fn scan_terminals(&mut self, procs: &[&procfs::Stat]) -> Result<()> {
        self.ttys = tty::DumpState::scan(procs, self.opts.shell_job)?;
        Ok(())
    }

    /// Write the images the kinds of files collected (pipe data ...).
    pub fn finish(self) -> Result<()> {
        pipe::finish_dump(self.pipes, self.dir)?;
        self.ttys.finish(self.dir)?;
        memfd::finish_dump(self.memfds, self.dir)?;
        self.locks.finish(self.dir)?;
        ghost::finish_dump(self.ghosts, self.dir)
    }
}

/// What the kinds of files share while the files of a restored tree are
/// opened.
pub struct OpenCtx<'a> {
    /// Options.
    pub opts: FdOptions,
    /// The images being restored.
    pub dir: &'a ImageDir,
    /// State of the pipe module.
    pub pipes: pipe::OpenState,
    /// Deleted files recreated for the restore; their paths are unlinked by
    /// [`ghost::OpenState::unlink_all`], or when this is dropped.
    pub ghosts: ghost::OpenState,
    /// The pty pairs made again.
    pub ttys: tty::OpenState,
    /// The memfds created, held until the tree has mapped them.
    pub memfds: memfd::OpenState,
    /// Every pid and tid of the restored tree (as the images name them).
    pub tree: HashSet<u32>,
    /// With whose identity paths are opened and created.
    pub paths: crate::creds::PathIdentities,
}

/// What a restored process does itself once its memory and threads are in
/// place, before its credentials change: take its file locks again and
/// open its pidfds of the tree's own processes.
#[derive(Default)]
pub struct LateFds {
    locks: Vec<pb::FileLockEntry>,
    pidfds: Vec<pidfds::InTree>,
}

/// The [`LateFds`] of each process of `tables` (pid, fd table), from
/// file-locks.img and the pidfds of `files` that refer to `tree`.
pub fn plan_late(
    dir: &ImageDir,
    files: &HashMap<u32, pb::FileEntry>,
    tables: &HashMap<u32, &[pb::FdinfoEntry]>,
    tree: &HashSet<u32>,
) -> Result<HashMap<u32, LateFds>> {
    let mut locks = locks::load(dir, |pid, fd| {
        tables
            .get(&pid)
            .is_some_and(|t| t.iter().any(|f| f.fd == fd))
    })?;
    let mut out = HashMap::new();
    for (&pid, table) in tables {
        let late = LateFds {
            locks: locks.remove(&pid).unwrap_or_default(),
            pidfds: pidfds::in_tree(files, table, tree)?,
        };
        out.insert(pid, late);
    }
    Ok(out)
}

/// In a restored process (`r` with its scratch area mapped): do what
/// [`LateFds`] holds.
pub fn restore_late(r: &crate::remote::Remote, late: &LateFds) -> Result<()> {
    pidfds::restore_in_tree(r, &late.pidfds)?;
    locks::restore(r, &late.locks)
}

/// The files.img being built during a dump: ids and entries, and one
/// duplicate of every open file description seen, so that an fd shared
/// across fork or dup'ed gets the same entry.
#[derive(Default)]
pub struct FileTable {
    entries: Vec<pb::FileEntry>,
    by_path: HashMap<(String, u32), u32>,
    seen: Vec<(u32, OwnedFd, u64, u64)>,
    ghost_maps: HashMap<(u64, u64, bool), u32>,
}

impl FileTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    fn next_id(&self) -> u32 {
        self.entries.len() as u32 + 1
    }

    /// The id of a file named by path (a mapped file, the exe, cwd, root),
    /// shared by every user of the same path and flags.
    pub fn add_path(&mut self, pid: i32, path: &str, flags: u32, pos: u64) -> Result<u32> {
        if let Some(&id) = self.by_path.get(&(path.to_string(), flags)) {
            return Ok(id);
        }
        let id = self.next_id();
        let entry = reg::entry_for_path(pid, path, id, flags, pos)?;
        self.entries.push(entry);
        self.by_path.insert((path.to_string(), flags), id);
        Ok(id)
    }

    /// The id of a mapped file that was deleted since it was mapped: its
    /// contents are saved as a ghost file (within --ghost-limit), reached
    /// through /proc/PID/map_files.
    pub fn add_deleted_mapping(
        &mut self,
        pid: i32,
        start: u64,
        end: u64,
        writable: bool,
        ctx: &mut DumpCtx,
    ) -> Result<u32> {
        let path = format!("/proc/{pid}/map_files/{start:x}-{end:x}");
        let file: OwnedFd = std::fs::File::open(&path)
            .ctx(|| format!("opening {path}"))?
            .into();
        let stat = nix::sys::stat::fstat(file.as_raw_fd()).ctx(|| format!("fstat of {path}"))?;
        if let Some(&id) = self.ghost_maps.get(&(stat.st_dev, stat.st_ino, writable)) {
            return Ok(id);
        }
        let link = std::fs::read_link(&path)
            .ctx(|| format!("reading {path}"))?
            .to_string_lossy()
            .into_owned();
        let flags = if writable {
            libc::O_RDWR
        } else {
            libc::O_RDONLY
        } as u32;
        let f = OpenFd {
            pid,
            fd: -1,
            file,
            link,
            stat,
            info: procfs::FdInfo {
                pos: 0,
                flags,
                mnt_id: 0,
                ino: None,
                extra: Vec::new(),
            },
        };
        if !ghost::is_ghost(&f) {
            return Err(Error::Unsupported {
                pid,
                what: format!(
                    "a mapping at {start:#x}-{end:#x} of {}, which is not a deleted regular file (not supported yet)",
                    f.link
                ),
            });
        }
        let id = self.next_id();
        let entry = ghost::dump(&f, id, ctx)?;
        self.entries.push(entry);
        self.ghost_maps
            .insert((stat.st_dev, stat.st_ino, writable), id);
        Ok(id)
    }

    /// All entries, for files.img.
    pub fn entries(&self) -> &[pb::FileEntry] {
        &self.entries
    }

    /// The id of an open file description already in the table.
    fn known(&self, f: &OpenFd) -> Result<Option<u32>> {
        for (id, fd, dev, ino) in &self.seen {
            if *dev == f.stat.st_dev
                && *ino == f.stat.st_ino
                && kcmp_same_file(fd.as_raw_fd(), f.file.as_raw_fd())
                    .ctx(|| format!("kcmp of {} of {}", f.describe(), f.pid))?
            {
                return Ok(Some(*id));
            }
        }
        Ok(None)
    }
}

/// Dump every fd of a frozen task: fdinfo entries, their files added to
/// `table`. Anything crust does not support is refused, named.
pub fn dump_fds(
    pid: i32,
    table: &mut FileTable,
    ctx: &mut DumpCtx,
) -> Result<Vec<pb::FdinfoEntry>> {
    let pidfd = pidfd::pidfd_open(pid).ctx(|| format!("pidfd_open({pid})"))?;
    let mut out = Vec::new();
    let fds = procfs::list_fds(pid).ctx(|| format!("listing the fds of {pid}"))?;
    for fd in fds {
        let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
            .ctx(|| format!("reading /proc/{pid}/fd/{fd}"))?
            .to_string_lossy()
            .into_owned();
        let file =
            pidfd::pidfd_getfd(&pidfd, fd).ctx(|| format!("pidfd_getfd of fd {fd} of {pid}"))?;
        let stat =
            nix::sys::stat::fstat(file.as_raw_fd()).ctx(|| format!("fstat of fd {fd} of {pid}"))?;
        let info = procfs::read_fdinfo(pid, fd)?;
        let f = OpenFd {
            pid,
            fd,
            file,
            link,
            stat,
            info,
        };
        let cloexec = if f.info.flags & libc::O_CLOEXEC as u32 != 0 {
            libc::FD_CLOEXEC as u32
        } else {
            0
        };
        if let Some(id) = table.known(&f)? {
            ctx.locks.collect(&f, id)?;
            let t = table.entries[id as usize - 1].r#type;
            out.push(pb::FdinfoEntry {
                id,
                flags: cloexec,
                r#type: t,
                fd: fd as u32,
                ..Default::default()
            });
            continue;
        }
        let kind = KINDS
            .iter()
            .find(|k| k.claims(&f, ctx))
            .ok_or_else(|| Error::Unsupported {
                pid,
                what: format!("{}: {}", f.describe(), unsupported_kind(&f)),
            })?;
        let id = table.next_id();
        let entry = kind.dump(&f, id, ctx)?;
        ctx.locks.collect(&f, id)?;
        out.push(pb::FdinfoEntry {
            id,
            flags: cloexec,
            r#type: entry.r#type,
            fd: fd as u32,
            ..Default::default()
        });
        table.entries.push(entry);
        table.seen.push((id, f.file, f.stat.st_dev, f.stat.st_ino));
    }
    epoll::resolve_targets(&mut ctx.epolls, &out, &mut table.entries);
    Ok(out)
}

/// Whether two of crust's fds are the same open file description.
fn kcmp_same_file(a: RawFd, b: RawFd) -> std::io::Result<bool> {
    let me = std::process::id() as i32;
    crust_sys::task::kcmp_file(me, a, me, b)
}

/// A name for a kind of file crust does not handle.
fn unsupported_kind(f: &OpenFd) -> String {
    let fmt = f.stat.st_mode & libc::S_IFMT;
    let kind = if let Some(name) = f.link.strip_prefix("anon_inode:") {
        anon_kind(name)
    } else {
        match fmt {
            libc::S_IFSOCK => "a socket".into(),
            libc::S_IFIFO if f.link.starts_with("pipe:") => "a pipe".into(),
            libc::S_IFIFO => "a FIFO".into(),
            libc::S_IFBLK => "a block device".into(),
            libc::S_IFCHR if reg::is_tty(&f.stat) || tty::is_terminal(f) => {
                return format!("{}, not supported", tty::describe_unsupported(f))
            }
            libc::S_IFCHR => "a character device".into(),
            _ if f.link.ends_with(" (deleted)") => "an open file that was deleted".into(),
            _ => "this kind of file".into(),
        }
    };
    format!("{kind}, not supported yet")
}

/// A name for an anon-inode file crust does not handle.
fn anon_kind(name: &str) -> String {
    match name {
        "[io_uring]" => "an io_uring instance (io_uring)".into(),
        "[userfaultfd]" => "a userfaultfd".into(),
        "[fanotify]" => "a fanotify group".into(),
        "[perf_event]" => "a perf_event fd".into(),
        "[pidfd]" => "a pidfd".into(),
        n if n.starts_with("bpf") => format!("a BPF object ({n})"),
        n => format!("an anon-inode file ({n})"),
    }
}

/// The files of a restored tree, opened in crust before any process is
/// forked (so every process inherits them): one open file description per
/// file id.
pub struct OpenFiles {
    files: HashMap<u32, OwnedFd>,
    /// The watches of the epoll files, added after install.
    epolls: HashMap<u32, Vec<pb::EventpollTfdEntry>>,
}

/// Recreate the ghost files that VMAs map (`ids`), so that the restored
/// processes can map them by path; the returned fds keep them until the
/// ghost state unlinks them again.
pub fn recreate_mapped_ghosts(
    files: &HashMap<u32, pb::FileEntry>,
    ids: impl IntoIterator<Item = u32>,
    ctx: &mut OpenCtx,
) -> Result<Vec<OwnedFd>> {
    let mut out = Vec::new();
    let mut done = std::collections::HashSet::new();
    for id in ids {
        let Some(r) = files.get(&id).and_then(|f| f.reg.as_ref()) else {
            continue;
        };
        if let Some(g) = r.crust_ghost_id {
            if done.insert(id) {
                out.push(ctx.ghosts.open(r, g, ctx.dir, &ctx.paths, id)?);
            }
        }
    }
    Ok(out)
}

/// Open every file of `files` that some fd table refers to.
pub fn open_all(
    files: &HashMap<u32, pb::FileEntry>,
    fdinfos: &[(String, Vec<pb::FdinfoEntry>)],
    ctx: &mut OpenCtx,
) -> Result<OpenFiles> {
    let mut ids: Vec<u32> = Vec::new();
    for (name, table) in fdinfos {
        let mut seen = std::collections::HashSet::new();
        for fi in table {
            if fi.fd > i32::MAX as u32 || !seen.insert(fi.fd) {
                return Err(Error::BadImage {
                    file: name.clone(),
                    what: format!("fd {} is invalid or listed twice", fi.fd),
                });
            }
            if !files.contains_key(&fi.id) {
                return Err(Error::BadImage {
                    file: name.clone(),
                    what: format!(
                        "fd {} refers to file id {}, which files.img lacks",
                        fi.fd, fi.id
                    ),
                });
            }
            ids.push(fi.id);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    let epolls = epoll::collect(files, fdinfos)?;
    let mut out = HashMap::new();
    for id in ids {
        let e = &files[&id];
        let kind = KINDS
            .iter()
            .find(|k| k.restores(e.r#type))
            .ok_or_else(|| Error::BadImage {
                file: "files.img".into(),
                what: format!(
                    "file id {} has type {}, which crust does not restore",
                    e.id, e.r#type
                ),
            })?;
        out.insert(id, kind.open(e, ctx)?);
    }
    Ok(OpenFiles { files: out, epolls })
}

impl OpenFiles {
    /// In a forked child: put the files of `table` at their fd numbers, set
    /// close-on-exec flags and close everything else except `keep` (the
    /// child's channels to crust), which are moved above the task's fds;
    /// then add the watches of its epoll fds with those numbers.
    pub fn install(&self, table: &[pb::FdinfoEntry], keep: &mut [&mut OwnedFd]) -> Result<()> {
        use nix::fcntl::{fcntl, FcntlArg, FdFlag};
        let high = table
            .iter()
            .map(|fi| fi.fd as RawFd)
            .chain(self.files.values().map(|f| f.as_raw_fd()))
            .chain(keep.iter().map(|k| k.as_raw_fd()))
            .chain(self.epolls.values().flatten().map(|t| t.tfd as RawFd))
            .max()
            .unwrap_or(0)
            + 1;
        for k in keep.iter_mut() {
            **k = dup_above(&**k, high).ctx(|| "moving a channel to crust".into())?;
        }
        let above = keep.iter().map(|k| k.as_raw_fd()).max().unwrap_or(high) + 1;
        let mut moved = Vec::with_capacity(table.len());
        for fi in table {
            let f = &self.files[&fi.id];
            let m = dup_above(f, above).ctx(|| format!("moving fd {}", fi.fd))?;
            moved.push((fi.fd as RawFd, m, fi.flags & libc::FD_CLOEXEC as u32 != 0));
        }
        for (target, m, cloexec) in &moved {
            nix::unistd::dup2(m.as_raw_fd(), *target).ctx(|| format!("dup2 to fd {target}"))?;
            let flags = if *cloexec {
                FdFlag::FD_CLOEXEC
            } else {
                FdFlag::empty()
            };
            fcntl(*target, FcntlArg::F_SETFD(flags)).ctx(|| format!("flags of fd {target}"))?;
        }
        let wanted: Vec<RawFd> = moved
            .iter()
            .map(|m| m.0)
            .chain(keep.iter().map(|k| k.as_raw_fd()))
            .collect();
        drop(moved);
        crust_sys::fd::close_all_except(&wanted).ctx(|| "closing the fds not restored".into())?;
        epoll::add_watches(table, &self.epolls)
    }
}

//! Pipes and FIFOs, with the data in them.
//!
//! Both are pipe inodes in the kernel and share this module, as CRIU's
//! pipes.c and fifo.c share their data code:
//!
//! * An anonymous pipe end is a `file_entry` of type PIPE with a
//!   `pipe_entry {id, pipe_id, flags, fown}`; `pipe_id` is the pipe's inode
//!   number and `flags` its open flags without O_CLOEXEC, so the access
//!   mode says which end it is.
//! * A FIFO is a `file_entry` of type FIFO with a `fifo_entry {id, pipe_id,
//!   regf_id}`, where `regf_id` names a REG entry with the FIFO's path and
//!   open flags. crust puts that REG entry into the FIFO's own file_entry
//!   (its `reg` field, with id `regf_id`), which is what crust's restore
//!   reads; [`DumpState::fifo_reg_entries`] gives the same entries as
//!   separate REG file_entries for files.img, which is what CRIU's restore
//!   looks up.
//! * The contents of each pipe are dumped once, without consuming them
//!   (tee into a private pipe), into pipes-data.img (fifo-data.img for
//!   FIFOs): a `pipe_data_entry {pipe_id, bytes, size}` followed by `bytes`
//!   raw bytes. `size` is the pipe's capacity (F_GETPIPE_SZ).
//!
//! At restore, the first entry of a pipe creates it, sets its capacity and
//! writes its data back; both ends are kept in [`OpenState`] for the other
//! entries, and a second description of the same end is a reopen of
//! /proc/self/fd/N. A FIFO is opened by its path, which must exist, behind
//! a temporary O_RDWR descriptor so that no open blocks; the first entry of
//! a FIFO writes its data.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};

use crust_image::{names, pb, ImageError, ImageKind, ImageWriter};
use crust_sys::pipe as syspipe;

use super::{fd_type, reg, DumpCtx, FileKind, OpenCtx, OpenFd};
use crate::error::{Context, Error, Result};
use crate::images::ImageDir;

/// The `fd_types` number of a FIFO (CRIU's FD_TYPES__FIFO).
pub const FD_TYPE_FIFO: i32 = 3;

/// The ids of the REG entries naming FIFO paths are the FIFO entry's id
/// with this bit set, so they never collide with the file table's
/// sequential ids.
pub const FIFO_REG_ID_BIT: u32 = 0x4000_0000;

const O_CLOEXEC: u32 = libc::O_CLOEXEC as u32;
const O_NONBLOCK: u32 = libc::O_NONBLOCK as u32;
const O_DIRECT: u32 = libc::O_DIRECT as u32;
const O_ACCMODE: u32 = libc::O_ACCMODE as u32;
const O_RDONLY: u32 = libc::O_RDONLY as u32;
const O_WRONLY: u32 = libc::O_WRONLY as u32;
const O_RDWR: u32 = libc::O_RDWR as u32;

/// The contents of one pipe, taken at dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipeData {
    /// The pipe's capacity (F_GETPIPE_SZ), in bytes.
    pub size: u32,
    /// What it held.
    pub bytes: Vec<u8>,
}

/// Take the contents of the pipe or FIFO `file`, an open description with
/// open `flags` (either end), without consuming them: they are tee'd into
/// a private pipe of the same capacity and read from there. A write-only
/// `file` is reopened read-only through /proc/self/fd for the tee.
pub fn peek_pipe(file: BorrowedFd<'_>, flags: u32) -> io::Result<PipeData> {
    let size = syspipe::pipe_size(file)?;
    let reader = if flags & O_ACCMODE == O_WRONLY {
        Some(reopen(file, O_RDONLY)?)
    } else {
        None
    };
    let src = reader.as_ref().map_or(file, |r| r.as_fd());
    let held = syspipe::pipe_bytes(src)?;
    if held == 0 {
        return Ok(PipeData {
            size,
            bytes: Vec::new(),
        });
    }
    let (tr, tw) = syspipe::pipe2(libc::O_CLOEXEC | libc::O_NONBLOCK)?;
    // A pipe of the same capacity has as many slots as the source, so one
    // tee takes every buffer of it (a second one would start over).
    let got = syspipe::set_pipe_size(&tw, size)?;
    if got < size {
        return Err(io::Error::other(format!(
            "a private pipe of {size} bytes got only {got}"
        )));
    }
    let n = match syspipe::tee(src, &tw, size as usize, true) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    if n != held {
        return Err(io::Error::other(format!(
            "tee copied {n} of the {held} bytes the pipe holds"
        )));
    }
    drop(tw);
    let mut bytes = vec![0u8; n];
    File::from(tr).read_exact(&mut bytes)?;
    Ok(PipeData { size, bytes })
}

/// Open /proc/self/fd/N of `fd` again with `mode` (O_RDONLY, O_WRONLY or
/// O_RDWR), O_NONBLOCK and O_CLOEXEC: a new open file description of the
/// same pipe or FIFO. Nonblocking so that it never waits for a partner.
fn reopen(fd: BorrowedFd<'_>, mode: u32) -> io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let f = std::fs::OpenOptions::new()
        .read(mode != O_WRONLY)
        .write(mode != O_RDONLY)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    Ok(f.into())
}

/// Set or clear O_NONBLOCK on an open file description.
fn set_nonblock(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let raw = fd.as_raw_fd();
    let cur = OFlag::from_bits_truncate(fcntl(raw, FcntlArg::F_GETFL)?);
    let new = if on {
        cur | OFlag::O_NONBLOCK
    } else {
        cur - OFlag::O_NONBLOCK
    };
    if new != cur {
        fcntl(raw, FcntlArg::F_SETFL(new))?;
    }
    Ok(())
}

/// The data of the pipes (or the FIFOs) of one dump.
#[derive(Default)]
struct DataSet {
    done: HashSet<u32>,
    entries: Vec<(pb::PipeDataEntry, Vec<u8>)>,
}

impl DataSet {
    /// Take the data of pipe `pipe_id` unless it was taken already.
    fn take(&mut self, pipe_id: u32, f: &OpenFd, flags: u32) -> Result<()> {
        if !self.done.insert(pipe_id) {
            return Ok(());
        }
        let d = peek_pipe(f.file.as_fd(), flags)
            .ctx(|| format!("pid {}: reading the data of {}", f.pid, f.describe()))?;
        self.entries.push((
            pb::PipeDataEntry {
                pipe_id,
                bytes: d.bytes.len() as u32,
                size: Some(d.size),
            },
            d.bytes,
        ));
        Ok(())
    }
}

/// Pipes and FIFOs seen during a dump, with their data.
#[derive(Default)]
pub struct DumpState {
    pipes: DataSet,
    fifos: DataSet,
    fifo_regs: Vec<pb::FileEntry>,
}

impl DumpState {
    /// The REG file entries naming the paths of the dumped FIFOs (id =
    /// their `fifo_entry.regf_id`). crust's restore does not need them
    /// (each FIFO entry carries its own copy); CRIU's restore looks them up
    /// in files.img.
    pub fn fifo_reg_entries(&self) -> &[pb::FileEntry] {
        &self.fifo_regs
    }

    /// The data taken of pipe `pipe_id`, if any (FIFOs with `fifo`).
    pub fn data_of(&self, pipe_id: u32, fifo: bool) -> Option<&[u8]> {
        let set = if fifo { &self.fifos } else { &self.pipes };
        set.entries
            .iter()
            .find(|(e, _)| e.pipe_id == pipe_id)
            .map(|(_, b)| b.as_slice())
    }
}

/// Write the collected pipe data: pipes-data.img and fifo-data.img, each
/// with one entry per pipe (empty ones too, for their capacity).
pub fn finish_dump(state: DumpState, dir: &ImageDir) -> Result<()> {
    write_data(
        dir,
        names::PIPES_DATA,
        ImageKind::PipesData,
        &state.pipes.entries,
    )?;
    write_data(
        dir,
        names::FIFO_DATA,
        ImageKind::FifoData,
        &state.fifos.entries,
    )?;
    Ok(())
}

fn write_data(
    dir: &ImageDir,
    name: &str,
    kind: ImageKind,
    entries: &[(pb::PipeDataEntry, Vec<u8>)],
) -> Result<()> {
    let path = dir.create(name);
    let io = |e| ImageError::io(path.display().to_string(), e);
    let f = File::create(&path).map_err(io)?;
    let mut w = ImageWriter::new(BufWriter::new(f), kind).map_err(io)?;
    for (e, bytes) in entries {
        w.write_entry(e).map_err(io)?;
        w.write_raw(bytes).map_err(io)?;
    }
    let buf = w.finish().map_err(io)?;
    buf.into_inner().map_err(|e| io(e.into_error()))?;
    Ok(())
}

/// The saved data of the pipes (or FIFOs) of a restore, loaded once.
struct SavedData {
    file: &'static str,
    entries: HashMap<u32, (pb::PipeDataEntry, Vec<u8>)>,
    used: HashSet<u32>,
}

impl SavedData {
    /// Read `name` from `dir`; a missing file means no pipe has data.
    fn load(dir: &ImageDir, name: &'static str, kind: ImageKind) -> Result<Self> {
        let path = dir.file(name);
        let mut entries = HashMap::new();
        match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            _ => {
                for (e, bytes) in crust_image::read_pipes_data(&path, kind)? {
                    if let Some(size) = e.size {
                        if e.bytes > size {
                            return Err(Error::BadImage {
                                file: name.into(),
                                what: format!(
                                    "pipe {} holds {} bytes, more than its size {size}",
                                    e.pipe_id, e.bytes
                                ),
                            });
                        }
                    }
                    let id = e.pipe_id;
                    if entries.insert(id, (e, bytes)).is_some() {
                        return Err(Error::BadImage {
                            file: name.into(),
                            what: format!("pipe {id} has two data entries"),
                        });
                    }
                }
            }
        }
        Ok(SavedData {
            file: name,
            entries,
            used: HashSet::new(),
        })
    }

    /// Put the saved capacity and data of pipe `pipe_id` into the pipe
    /// whose write side is `w`.
    fn fill(&mut self, pipe_id: u32, w: BorrowedFd<'_>) -> Result<()> {
        if !self.used.insert(pipe_id) {
            return Ok(());
        }
        let Some((e, bytes)) = self.entries.get(&pipe_id) else {
            return Ok(());
        };
        let file = self.file;
        if let Some(size) = e.size {
            if let Err(err) = syspipe::set_pipe_size(w, size) {
                let cur = syspipe::pipe_size(w).unwrap_or(0);
                if (bytes.len() as u64) > cur as u64 {
                    return Err(Error::Sys {
                        what: format!("{file}: setting the size of pipe {pipe_id} to {size}"),
                        err,
                    });
                }
                tracing::warn!("{file}: pipe {pipe_id} keeps size {cur}, not {size}: {err}");
            }
        }
        if bytes.is_empty() {
            return Ok(());
        }
        set_nonblock(w, true).ctx(|| format!("{file}: flags of pipe {pipe_id}"))?;
        let mut out = File::from(
            w.try_clone_to_owned()
                .ctx(|| format!("{file}: dup of pipe {pipe_id}"))?,
        );
        match out.write_all(bytes) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(Error::BadImage {
                    file: file.into(),
                    what: format!(
                        "the {} bytes of pipe {pipe_id} do not fit in it ({} bytes)",
                        bytes.len(),
                        syspipe::pipe_size(w).unwrap_or(0)
                    ),
                })
            }
            Err(err) => {
                return Err(Error::Sys {
                    what: format!("{file}: writing the data of pipe {pipe_id}"),
                    err,
                })
            }
        }
        set_nonblock(w, false).ctx(|| format!("{file}: flags of pipe {pipe_id}"))?;
        Ok(())
    }

    /// Saved data no restored pipe took.
    fn unused(&self) -> Option<u32> {
        let mut ids: Vec<u32> = self
            .entries
            .iter()
            .filter(|&(id, (e, _))| e.bytes > 0 && !self.used.contains(id))
            .map(|(&id, _)| id)
            .collect();
        ids.sort_unstable();
        ids.first().copied()
    }
}

/// Both ends of a pipe created at restore, and which were handed out.
struct Ends {
    read: OwnedFd,
    write: OwnedFd,
    read_used: bool,
    write_used: bool,
}

/// Pipes and FIFOs opened during a restore.
///
/// It holds both ends of every restored pipe, so that the entries of the
/// other end find them: call [`OpenState::finish`] once every file is
/// opened (before the tree runs), or a reader would wait for a writer that
/// only crust holds.
#[derive(Default)]
pub struct OpenState {
    pipes: HashMap<u32, Ends>,
    pipe_data: Option<SavedData>,
    fifo_data: Option<SavedData>,
    regs: HashMap<u32, pb::RegFileEntry>,
}

impl OpenState {
    /// Make the REG entries of files.img known, for FIFO entries that do
    /// not carry their path themselves (images written by CRIU).
    pub fn set_reg_entries<'e>(&mut self, entries: impl IntoIterator<Item = &'e pb::FileEntry>) {
        for e in entries {
            if let Some(r) = &e.reg {
                self.regs.insert(e.id, r.clone());
            }
        }
    }

    /// Close the pipe ends crust still holds, and check that every saved
    /// pipe data went into some pipe.
    pub fn finish(&mut self) -> Result<()> {
        self.pipes.clear();
        for d in [&self.pipe_data, &self.fifo_data].into_iter().flatten() {
            if let Some(id) = d.unused() {
                return Err(Error::BadImage {
                    file: d.file.into(),
                    what: format!("data of pipe {id}, which no restored file has"),
                });
            }
        }
        Ok(())
    }

    fn pipe_data(&mut self, dir: &ImageDir) -> Result<&mut SavedData> {
        if self.pipe_data.is_none() {
            self.pipe_data = Some(SavedData::load(
                dir,
                names::PIPES_DATA,
                ImageKind::PipesData,
            )?);
        }
        Ok(self.pipe_data.as_mut().expect("just loaded"))
    }

    fn fifo_data(&mut self, dir: &ImageDir) -> Result<&mut SavedData> {
        if self.fifo_data.is_none() {
            self.fifo_data = Some(SavedData::load(dir, names::FIFO_DATA, ImageKind::FifoData)?);
        }
        Ok(self.fifo_data.as_mut().expect("just loaded"))
    }

    /// Open the pipe end of `p`.
    pub fn open_pipe(&mut self, p: &pb::PipeEntry, dir: &ImageDir) -> Result<OwnedFd> {
        let bad = |what: String| Error::BadImage {
            file: names::FILES.into(),
            what: format!("pipe file id {}: {what}", p.id),
        };
        let mode = p.flags & O_ACCMODE;
        if mode != O_RDONLY && mode != O_WRONLY && mode != O_RDWR {
            return Err(bad(format!("invalid flags {:o}", p.flags)));
        }
        let pipe_id = p.pipe_id;
        if !self.pipes.contains_key(&pipe_id) {
            let direct = if p.flags & O_DIRECT != 0 {
                libc::O_DIRECT
            } else {
                0
            };
            let (read, write) = syspipe::pipe2(libc::O_CLOEXEC | direct)
                .ctx(|| format!("creating pipe {pipe_id}"))?;
            self.pipe_data(dir)?.fill(pipe_id, write.as_fd())?;
            self.pipes.insert(
                pipe_id,
                Ends {
                    read,
                    write,
                    read_used: false,
                    write_used: false,
                },
            );
        }
        let ends = self.pipes.get_mut(&pipe_id).expect("just inserted");
        let (own, used) = match mode {
            O_RDONLY => (&ends.read, Some(&mut ends.read_used)),
            O_WRONLY => (&ends.write, Some(&mut ends.write_used)),
            _ => (&ends.read, None),
        };
        let fd = if let Some(used @ &mut false) = used {
            *used = true;
            own.try_clone().ctx(|| format!("dup of pipe {pipe_id}"))?
        } else {
            reopen(own.as_fd(), mode).ctx(|| {
                format!(
                    "reopening pipe {pipe_id} for file id {} (flags {:o})",
                    p.id, p.flags
                )
            })?
        };
        set_nonblock(fd.as_fd(), p.flags & O_NONBLOCK != 0)
            .ctx(|| format!("flags of pipe {pipe_id} for file id {}", p.id))?;
        Ok(fd)
    }

    /// Open the FIFO of `e` (a FIFO file entry) by its path.
    /// It is opened as the task that holds it could (`paths`): crust's own
    /// reader and writer, which keep the opens from blocking and put the
    /// data back, are opened only once that task's access is checked.
    pub fn open_fifo(
        &mut self,
        e: &pb::FileEntry,
        dir: &ImageDir,
        paths: &crate::creds::PathIdentities,
    ) -> Result<OwnedFd> {
        let bad = |what: String| Error::BadImage {
            file: names::FILES.into(),
            what: format!("FIFO file id {}: {what}", e.id),
        };
        let f = e.fifo.as_ref().ok_or_else(|| bad("no fifo entry".into()))?;
        let regf_id = f.regf_id.unwrap_or(f.id);
        let r = match &e.reg {
            Some(r) => r.clone(),
            None => self
                .regs
                .get(&regf_id)
                .cloned()
                .ok_or_else(|| bad(format!("no REG entry {regf_id} with its path")))?,
        };
        reg::check_unchanged(&r)?;
        let md = std::fs::metadata(&r.name).map_err(|err| Error::FileChanged {
            path: r.name.clone().into(),
            what: format!("the FIFO cannot be found ({err})"),
        })?;
        if !md.file_type().is_fifo() {
            return Err(Error::FileChanged {
                path: r.name.clone().into(),
                what: "it is no longer a FIFO".into(),
            });
        }
        let flags =
            r.flags & !((libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_NOCTTY) as u32);
        let mode = flags & O_ACCMODE;
        if mode != O_RDONLY && mode != O_WRONLY && mode != O_RDWR {
            return Err(bad(format!("invalid flags {:o}", r.flags)));
        }
        let access = match mode {
            O_RDONLY => libc::R_OK,
            O_WRONLY => libc::W_OK,
            _ => libc::R_OK | libc::W_OK,
        };
        {
            let acting = paths.act_for_file(e.id)?;
            if acting.is_some() {
                crust_sys::creds::may_access(std::path::Path::new(&r.name), access).ctx(|| {
                    format!(
                        "opening the FIFO {}{}",
                        r.name,
                        crate::creds::AsTask::note(&acting)
                    )
                })?;
            }
        }
        // A reader and a writer of crust's own, so that neither the open
        // below nor the data write waits for a partner.
        let fake: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&r.name)
            .ctx(|| format!("opening the FIFO {}", r.name))?
            .into();
        let file = {
            let acting = paths.act_for_file(e.id)?;
            std::fs::OpenOptions::new()
                .read(mode != O_WRONLY)
                .write(mode != O_RDONLY)
                .custom_flags((flags & !O_ACCMODE) as i32 | libc::O_CLOEXEC)
                .open(&r.name)
                .ctx(|| {
                    format!(
                        "opening the FIFO {} (flags {:o}){}",
                        r.name,
                        r.flags,
                        crate::creds::AsTask::note(&acting)
                    )
                })?
        };
        self.fifo_data(dir)?.fill(f.pipe_id, fake.as_fd())?;
        drop(fake);
        Ok(file.into())
    }
}

/// Anonymous pipes and FIFOs.
pub struct Pipe;

fn is_pipe(f: &OpenFd) -> bool {
    (f.stat.st_mode & libc::S_IFMT) == libc::S_IFIFO && f.link.starts_with("pipe:")
}

fn is_fifo(f: &OpenFd) -> bool {
    (f.stat.st_mode & libc::S_IFMT) == libc::S_IFIFO
        && f.link.starts_with('/')
        && !f.link.ends_with(" (deleted)")
}

/// The file entry of the pipe end `f` (its data goes into `state` once
/// per pipe).
pub fn dump_pipe(f: &OpenFd, id: u32, state: &mut DumpState) -> Result<pb::FileEntry> {
    let flags = f.info.flags & !O_CLOEXEC;
    if flags & O_DIRECT != 0 {
        return Err(Error::Unsupported {
            pid: f.pid,
            what: format!("{}: a pipe in packet mode (O_DIRECT)", f.describe()),
        });
    }
    let pipe_id = f.stat.st_ino as u32;
    state.pipes.take(pipe_id, f, flags)?;
    Ok(pb::FileEntry {
        r#type: fd_type::PIPE,
        id,
        pipe: Some(pb::PipeEntry {
            id,
            pipe_id,
            flags,
            fown: pb::FownEntry::default(),
        }),
        ..Default::default()
    })
}

/// The file entry of the FIFO `f`: its path as a REG entry, and its data
/// into `state` once per FIFO.
pub fn dump_fifo(f: &OpenFd, id: u32, state: &mut DumpState) -> Result<pb::FileEntry> {
    let flags = f.info.flags & !O_CLOEXEC;
    if flags & O_DIRECT != 0 {
        return Err(Error::Unsupported {
            pid: f.pid,
            what: format!("{}: a FIFO in packet mode (O_DIRECT)", f.describe()),
        });
    }
    let md = std::fs::metadata(&f.link)
        .ctx(|| format!("stat of {} (fd {} of {})", f.link, f.fd, f.pid))?;
    if md.ino() != f.stat.st_ino || md.dev() != f.stat.st_dev {
        return Err(Error::Unsupported {
            pid: f.pid,
            what: format!("{}: its path now names another file", f.describe()),
        });
    }
    let regf_id = id | FIFO_REG_ID_BIT;
    let reg_entry = reg::entry_for_path(f.pid, &f.link, regf_id, flags, 0)?;
    let pipe_id = f.stat.st_ino as u32;
    state.fifos.take(pipe_id, f, flags)?;
    let entry = pb::FileEntry {
        r#type: FD_TYPE_FIFO,
        id,
        reg: reg_entry.reg.clone(),
        fifo: Some(pb::FifoEntry {
            id,
            pipe_id,
            regf_id: Some(regf_id),
        }),
        ..Default::default()
    };
    state.fifo_regs.push(reg_entry);
    Ok(entry)
}

impl FileKind for Pipe {
    fn claims(&self, f: &OpenFd, _ctx: &DumpCtx) -> bool {
        is_pipe(f) || is_fifo(f)
    }

    fn dump(&self, f: &OpenFd, id: u32, ctx: &mut DumpCtx) -> Result<pb::FileEntry> {
        if is_pipe(f) {
            dump_pipe(f, id, &mut ctx.pipes)
        } else {
            dump_fifo(f, id, &mut ctx.pipes)
        }
    }

    fn restores(&self, t: i32) -> bool {
        t == fd_type::PIPE || t == FD_TYPE_FIFO
    }

    fn open(&self, e: &pb::FileEntry, ctx: &mut OpenCtx) -> Result<OwnedFd> {
        let dir = ctx.dir;
        if e.r#type == FD_TYPE_FIFO {
            return ctx.pipes.open_fifo(e, dir, &ctx.paths);
        }
        let p = e.pipe.as_ref().ok_or_else(|| Error::BadImage {
            file: names::FILES.into(),
            what: format!("PIPE file id {} has no pipe entry", e.id),
        })?;
        ctx.pipes.open_pipe(p, dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::FdOptions;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    fn tmpdir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "crust-pipe-test-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// An OpenFd of one of crust's own fds (a dup stands for the task's).
    fn open_fd(fd: &OwnedFd) -> OpenFd {
        let me = std::process::id() as i32;
        let raw = fd.as_raw_fd();
        OpenFd {
            pid: me,
            fd: raw,
            file: fd.try_clone().unwrap(),
            link: std::fs::read_link(format!("/proc/self/fd/{raw}"))
                .unwrap()
                .to_string_lossy()
                .into_owned(),
            stat: nix::sys::stat::fstat(raw).unwrap(),
            info: crust_sys::procfs::read_fdinfo(me, raw).unwrap(),
        }
    }

    fn write_all(fd: &OwnedFd, data: &[u8]) {
        File::from(fd.try_clone().unwrap()).write_all(data).unwrap();
    }

    fn read_n(fd: &OwnedFd, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        File::from(fd.try_clone().unwrap())
            .read_exact(&mut v)
            .unwrap();
        v
    }

    fn getfl(fd: &OwnedFd) -> u32 {
        nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::F_GETFL).unwrap() as u32
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    #[test]
    fn pipe_round_trip_keeps_data_and_flags() {
        let d = tmpdir("rt");
        let dir = ImageDir::new(&d);
        let (r, w) = syspipe::pipe2(libc::O_CLOEXEC).unwrap();
        set_nonblock(r.as_fd(), true).unwrap();
        let data = b"hello through a pipe".to_vec();
        write_all(&w, &data);

        let mut dctx = DumpCtx::new(FdOptions::default(), &dir);
        let (fr, fw) = (open_fd(&r), open_fd(&w));
        assert!(Pipe.claims(&fr, &dctx) && Pipe.claims(&fw, &dctx));
        // The write end first: its data goes through a reopened read end.
        let ew = Pipe.dump(&fw, 1, &mut dctx).unwrap();
        let er = Pipe.dump(&fr, 2, &mut dctx).unwrap();
        let pid = fr.stat.st_ino as u32;
        assert_eq!(dctx.pipes.data_of(pid, false), Some(&data[..]));
        assert_eq!(dctx.pipes.pipes.entries.len(), 1);
        assert_eq!(
            syspipe::pipe_bytes(&r).unwrap(),
            data.len(),
            "data consumed"
        );
        assert_eq!(read_n(&r, data.len()), data);
        let pw = ew.pipe.as_ref().unwrap();
        let pr = er.pipe.as_ref().unwrap();
        assert_eq!(pw.flags & O_ACCMODE, O_WRONLY);
        assert_eq!(pr.flags & O_ACCMODE, O_RDONLY);
        assert!(pr.flags & O_NONBLOCK != 0 && pw.flags & O_NONBLOCK == 0);
        assert_eq!(pr.flags & O_CLOEXEC, 0);
        assert_eq!((pw.pipe_id, er.r#type), (pid, fd_type::PIPE));
        dctx.finish().unwrap();

        let mut octx = OpenCtx {
            opts: FdOptions::default(),
            dir: &dir,
            pipes: OpenState::default(),
            ghosts: Default::default(),
            ttys: Default::default(),
            memfds: Default::default(),
            tree: Default::default(),
            paths: Default::default(),
        };
        let nr = Pipe.open(&er, &mut octx).unwrap();
        let nw = Pipe.open(&ew, &mut octx).unwrap();
        octx.pipes.finish().unwrap();
        assert!(getfl(&nr) & O_NONBLOCK != 0);
        assert!(getfl(&nw) & O_NONBLOCK == 0);
        assert_eq!(getfl(&nr) & O_ACCMODE, O_RDONLY);
        assert_eq!(getfl(&nw) & O_ACCMODE, O_WRONLY);
        assert_eq!(read_n(&nr, data.len()), data);
        write_all(&nw, b"more");
        assert_eq!(read_n(&nr, 4), b"more");
        drop(nw);
        // crust holds no end any more: the reader sees end of file.
        let mut rest = Vec::new();
        File::from(nr).read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn one_mebibyte_and_the_size_survive() {
        let d = tmpdir("big");
        let dir = ImageDir::new(&d);
        let (r, w) = syspipe::pipe2(libc::O_CLOEXEC).unwrap();
        let size = syspipe::set_pipe_size(&w, 1 << 20).unwrap();
        assert_eq!(size, 1 << 20);
        let data = pattern(1 << 20);
        write_all(&w, &data);
        let mut dctx = DumpCtx::new(FdOptions::default(), &dir);
        let e = Pipe.dump(&open_fd(&r), 1, &mut dctx).unwrap();
        assert_eq!(syspipe::pipe_bytes(&r).unwrap(), data.len());
        dctx.finish().unwrap();
        let saved =
            crust_image::read_pipes_data(&d.join(names::PIPES_DATA), ImageKind::PipesData).unwrap();
        assert_eq!(saved.len(), 1);
        assert_eq!(saved[0].0.size, Some(1 << 20));
        assert_eq!(saved[0].1, data);

        let mut st = OpenState::default();
        let nr = st.open_pipe(e.pipe.as_ref().unwrap(), &dir).unwrap();
        st.finish().unwrap();
        assert_eq!(syspipe::pipe_size(&nr).unwrap(), 1 << 20);
        assert_eq!(read_n(&nr, data.len()), data);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn empty_pipe_and_missing_data_file() {
        let d = tmpdir("empty");
        let dir = ImageDir::new(&d);
        let (r, _w) = syspipe::pipe2(libc::O_CLOEXEC).unwrap();
        let mut dctx = DumpCtx::new(FdOptions::default(), &dir);
        let e = Pipe.dump(&open_fd(&r), 1, &mut dctx).unwrap();
        assert_eq!(dctx.pipes.data_of(r_ino(&r), false), Some(&[][..]));
        drop(dctx);
        // No pipes-data.img at all (a CRIU dump of a write end only).
        let mut st = OpenState::default();
        let nr = st.open_pipe(e.pipe.as_ref().unwrap(), &dir).unwrap();
        st.finish().unwrap();
        assert_eq!(syspipe::pipe_bytes(&nr).unwrap(), 0);
        let _ = std::fs::remove_dir_all(&d);
    }

    fn r_ino(fd: &OwnedFd) -> u32 {
        nix::sys::stat::fstat(fd.as_raw_fd()).unwrap().st_ino as u32
    }

    #[test]
    fn two_descriptions_of_one_end_are_separate() {
        let d = tmpdir("two");
        let dir = ImageDir::new(&d);
        let p = |id, flags| pb::PipeEntry {
            id,
            pipe_id: 77,
            flags,
            fown: Default::default(),
        };
        let mut st = OpenState::default();
        let a = st.open_pipe(&p(1, O_RDONLY), &dir).unwrap();
        let b = st.open_pipe(&p(2, O_RDONLY | O_NONBLOCK), &dir).unwrap();
        let w = st.open_pipe(&p(3, O_WRONLY), &dir).unwrap();
        st.finish().unwrap();
        assert!(!crust_sys::task::kcmp_file(
            std::process::id() as i32,
            a.as_raw_fd(),
            std::process::id() as i32,
            b.as_raw_fd()
        )
        .unwrap());
        assert!(getfl(&a) & O_NONBLOCK == 0 && getfl(&b) & O_NONBLOCK != 0);
        assert_eq!(r_ino(&a), r_ino(&b));
        assert_eq!(r_ino(&a), r_ino(&w));
        let _ = std::fs::remove_dir_all(&d);
    }

    fn write_image(dir: &std::path::Path, entries: &[(pb::PipeDataEntry, &[u8])]) {
        let mut w = ImageWriter::new(
            File::create(dir.join(names::PIPES_DATA)).unwrap(),
            ImageKind::PipesData,
        )
        .unwrap();
        for (e, b) in entries {
            w.write_entry(e).unwrap();
            w.write_raw(b).unwrap();
        }
        w.finish().unwrap();
    }

    fn pe(pipe_id: u32) -> pb::PipeEntry {
        pb::PipeEntry {
            id: 1,
            pipe_id,
            flags: O_RDONLY,
            fown: Default::default(),
        }
    }

    fn de(pipe_id: u32, bytes: u32, size: Option<u32>) -> pb::PipeDataEntry {
        pb::PipeDataEntry {
            pipe_id,
            bytes,
            size,
        }
    }

    #[test]
    fn bad_data_images_are_errors_naming_the_file() {
        let d = tmpdir("bad");
        let dir = ImageDir::new(&d);
        let msg = |st: &mut OpenState, id| st.open_pipe(&pe(id), &dir).err().unwrap().to_string();
        // bytes larger than the payload
        write_image(&d, &[(de(5, 100, Some(4096)), b"abc")]);
        let m = msg(&mut OpenState::default(), 5);
        assert!(m.contains("pipes-data.img"), "{m}");
        // bytes larger than the size
        write_image(&d, &[(de(5, 8, Some(4)), b"abcdefgh")]);
        let m = msg(&mut OpenState::default(), 5);
        assert!(m.contains("pipes-data.img") && m.contains("size"), "{m}");
        // twice the same pipe
        write_image(&d, &[(de(5, 1, None), b"a"), (de(5, 1, None), b"b")]);
        let m = msg(&mut OpenState::default(), 5);
        assert!(m.contains("pipes-data.img") && m.contains("two"), "{m}");
        // garbage
        std::fs::write(d.join(names::PIPES_DATA), b"\x01\x02\x03").unwrap();
        let m = msg(&mut OpenState::default(), 5);
        assert!(m.contains("pipes-data.img"), "{m}");
        // data for a pipe nobody has
        write_image(&d, &[(de(5, 1, None), b"a"), (de(6, 2, None), b"bc")]);
        let mut st = OpenState::default();
        let r = st.open_pipe(&pe(5), &dir).unwrap();
        assert_eq!(read_n(&r, 1), b"a");
        let m = st.finish().err().unwrap().to_string();
        assert!(m.contains("pipes-data.img") && m.contains("pipe 6"), "{m}");
        // a file entry without its pipe entry
        let e = pb::FileEntry {
            r#type: fd_type::PIPE,
            id: 9,
            ..Default::default()
        };
        let mut octx = OpenCtx {
            opts: FdOptions::default(),
            dir: &dir,
            pipes: OpenState::default(),
            ghosts: Default::default(),
            ttys: Default::default(),
            memfds: Default::default(),
            tree: Default::default(),
            paths: Default::default(),
        };
        let m = Pipe.open(&e, &mut octx).err().unwrap().to_string();
        assert!(m.contains("files.img") && m.contains("9"), "{m}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn fifo_round_trip() {
        let d = tmpdir("fifo");
        let dir = ImageDir::new(&d);
        let path = d.join("the.fifo");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let open = |read, write| -> OwnedFd {
            std::fs::OpenOptions::new()
                .read(read)
                .write(write)
                .custom_flags(libc::O_NONBLOCK)
                .open(&path)
                .unwrap()
                .into()
        };
        let r = open(true, false);
        let w = open(false, true);
        set_nonblock(w.as_fd(), false).unwrap();
        let data = pattern(70_000);
        syspipe::set_pipe_size(&w, 1 << 17).unwrap();
        write_all(&w, &data);

        let mut dctx = DumpCtx::new(FdOptions::default(), &dir);
        let (fr, fw) = (open_fd(&r), open_fd(&w));
        assert!(Pipe.claims(&fw, &dctx));
        let ew = Pipe.dump(&fw, 1, &mut dctx).unwrap();
        let er = Pipe.dump(&fr, 2, &mut dctx).unwrap();
        assert_eq!(ew.r#type, FD_TYPE_FIFO);
        let fifo = ew.fifo.as_ref().unwrap();
        assert_eq!(fifo.regf_id, Some(1 | FIFO_REG_ID_BIT));
        assert_eq!(ew.reg.as_ref().unwrap().name, path.to_str().unwrap());
        assert_eq!(dctx.pipes.fifo_reg_entries().len(), 2);
        assert_eq!(dctx.pipes.fifo_reg_entries()[0].id, 1 | FIFO_REG_ID_BIT);
        assert_eq!(syspipe::pipe_bytes(&r).unwrap(), data.len());
        dctx.finish().unwrap();
        drop((r, w, fr, fw));

        // CRIU's way: the path in a separate REG entry.
        let mut crius = ew.clone();
        crius.reg = None;
        let regs: Vec<pb::FileEntry> = vec![pb::FileEntry {
            r#type: fd_type::REG,
            id: 1 | FIFO_REG_ID_BIT,
            reg: ew.reg.clone(),
            ..Default::default()
        }];
        let mut octx = OpenCtx {
            opts: FdOptions::default(),
            dir: &dir,
            pipes: OpenState::default(),
            ghosts: Default::default(),
            ttys: Default::default(),
            memfds: Default::default(),
            tree: Default::default(),
            paths: Default::default(),
        };
        octx.pipes.set_reg_entries(&regs);
        let nw = Pipe.open(&crius, &mut octx).unwrap();
        let nr = Pipe.open(&er, &mut octx).unwrap();
        octx.pipes.finish().unwrap();
        assert_eq!(getfl(&nw) & O_ACCMODE, O_WRONLY);
        assert!(getfl(&nw) & O_NONBLOCK == 0);
        assert_eq!(syspipe::pipe_size(&nr).unwrap(), 1 << 17);
        assert_eq!(read_n(&nr, data.len()), data);
        assert_eq!(syspipe::pipe_bytes(&nr).unwrap(), 0, "data written twice");

        // A FIFO that is gone: an error naming its path.
        std::fs::remove_file(&path).unwrap();
        let mut st = OpenState::default();
        let m = st
            .open_fifo(&er, &dir, &Default::default())
            .err()
            .unwrap()
            .to_string();
        assert!(m.contains("the.fifo"), "{m}");
        let _ = std::fs::remove_dir_all(&d);
    }
}

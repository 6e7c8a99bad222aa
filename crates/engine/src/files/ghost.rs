//! Ghost files: regular files a task holds open but that were unlinked
//! (their /proc link ends with " (deleted)" and fstat says st_nlink == 0),
//! as CRIU's ghost files.
//!
//! * Dump: the contents are read through crust's duplicate of the task's
//!   open file description (pread from offset 0, the size from fstat) into
//!   `ghost-file-<id>.img` (hex id, as CRIU): a `ghost_file_entry {uid, gid,
//!   mode, dev, ino, atim, mtim, size}` followed by the raw contents up to
//!   the end of the file, CRIU's non-chunked layout, which crit decodes.
//!   Every fd of every process that refers to the same deleted inode
//!   (st_dev, st_ino) shares one ghost image. The fd itself is an ordinary
//!   REG `reg_file_entry` whose `name` is the original path (without
//!   " (deleted)") and whose crust extension field `crust_ghost_id` names
//!   the ghost image. Files larger than the ghost limit (`--ghost-limit`,
//!   1 MiB by default as in CRIU) are refused.
//! * Restore: the first entry of a ghost recreates the file at its original
//!   path (which must be free, in a directory that still exists) with
//!   O_CREAT|O_EXCL, writes the contents, and sets owner, mode and times.
//!   crust keeps one fd of it, and every entry of that ghost is opened
//!   through it (/proc/self/fd/N) with its own flags and offset, so the
//!   restored fds are open file descriptions of one inode, named by the
//!   original path. The recreated paths are unlinked again by
//!   [`OpenState::unlink_all`] or, at the latest, when the [`OpenState`]
//!   is dropped (so a failed restore leaves nothing behind). Once crust has
//!   opened every file, the paths are no longer needed: the fds hold the
//!   inodes.
//! * CRIU's chunked layout (`chunks = true`: `ghost_chunk_entry {len, off}`
//!   + `len` bytes, holes between) is read too.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crust_image::{names, pb, ImageError, ImageKind, ImageReader, ImageWriter};

use super::{fd_type, DumpCtx, OpenFd};
use crate::error::{Context, Error, Result};
use crate::images::ImageDir;

/// The largest deleted file crust dumps unless told otherwise (CRIU's
/// default --ghost-limit, 1 MiB).
pub const DEFAULT_GHOST_LIMIT: u64 = 1 << 20;

/// What /proc appends to the link of an unlinked file.
const DELETED: &str = " (deleted)";

/// How much of a ghost file is read or written at a time.
const CHUNK: usize = 1 << 20;

/// Whether `f` is a deleted regular file crust dumps as a ghost file.
/// memfds (also unlinked regular files, "/memfd:NAME (deleted)") are not.
pub fn is_ghost(f: &OpenFd) -> bool {
    (f.stat.st_mode & libc::S_IFMT) == libc::S_IFREG
        && f.stat.st_nlink == 0
        && f.link.starts_with('/')
        && f.link.ends_with(DELETED)
        && !f.link.starts_with("/memfd:")
}

/// The original path of a deleted file: its /proc link without " (deleted)".
pub fn original_path(link: &str) -> &str {
    link.strip_suffix(DELETED).unwrap_or(link)
}

/// Ghost files seen during one dump: one image per deleted inode.
#[derive(Default)]
pub struct DumpState {
    by_inode: HashMap<(u64, u64), u32>,
}

impl DumpState {
    /// The ghost id of a deleted inode already dumped.
    pub fn id_of(&self, dev: u64, ino: u64) -> Option<u32> {
        self.by_inode.get(&(dev, ino)).copied()
    }

    /// How many ghost images this dump wrote.
    pub fn count(&self) -> usize {
        self.by_inode.len()
    }
}

/// Finish the ghost files of a dump: each image was written when its first
/// fd was dumped (and is made durable with the folder's commit), so there
/// is nothing left but to say so.
pub fn finish_dump(state: DumpState, _dir: &ImageDir) -> Result<()> {
    if state.count() > 0 {
        tracing::debug!("dumped {} ghost file(s)", state.count());
    }
    Ok(())
}

fn human(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
    } else if n >= 1 << 10 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} B")
    }
}

/// The kernel's encoding of a device number (what CRIU stores in `dev`).
fn kernel_dev(dev: u64) -> u32 {
    let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    ((major << 20) | (minor & 0xf_ffff)) as u32
}

fn timeval(sec: i64, nsec: i64) -> pb::Timeval {
    pb::Timeval {
        tv_sec: sec as u64,
        tv_usec: (nsec / 1000) as u64,
    }
}

/// Dump the deleted regular file `f` as file entry `id`: its contents go to
/// its ghost image (once per inode), the entry names the original path.
pub fn dump(f: &OpenFd, id: u32, ctx: &mut DumpCtx) -> Result<pb::FileEntry> {
    let st = &f.stat;
    let size = st.st_size.max(0) as u64;
    let limit = ctx.opts.ghost_limit;
    let name = original_path(&f.link).to_string();
    if size > limit {
        return Err(Error::Unsupported {
            pid: f.pid,
            what: format!(
                "{}: a deleted file of {size} bytes ({}), more than the ghost file limit of \
                 {limit} bytes ({}); `--ghost-limit SIZE` raises it",
                f.describe(),
                human(size),
                human(limit)
            ),
        });
    }
    let ghost_id = match ctx.ghosts.id_of(st.st_dev, st.st_ino) {
        Some(g) => g,
        None => {
            let g = ctx.ghosts.by_inode.len() as u32 + 1;
            write_ghost(f, g, size, ctx.dir)?;
            ctx.ghosts.by_inode.insert((st.st_dev, st.st_ino), g);
            g
        }
    };
    let flags = f.info.flags & !(libc::O_CLOEXEC as u32);
    Ok(pb::FileEntry {
        r#type: fd_type::REG,
        id,
        reg: Some(pb::RegFileEntry {
            id,
            flags,
            pos: f.info.pos,
            fown: pb::FownEntry::default(),
            name,
            size: Some(size),
            mode: Some(st.st_mode),
            crust_ghost_id: Some(ghost_id),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// A readable fd of the file of `f`: its own description unless that one
/// cannot be read (O_WRONLY, O_PATH), then a new one through /proc.
fn readable(f: &OpenFd) -> io::Result<File> {
    let acc = f.info.flags & libc::O_ACCMODE as u32;
    if acc == libc::O_WRONLY as u32 || f.info.flags & libc::O_PATH as u32 != 0 {
        return File::open(format!("/proc/self/fd/{}", f.file.as_raw_fd()));
    }
    Ok(File::from(f.file.try_clone()?))
}

/// Write ghost-file-<g>.img with the first `size` bytes of `f`.
fn write_ghost(f: &OpenFd, g: u32, size: u64, dir: &ImageDir) -> Result<()> {
    let st = &f.stat;
    let what = || {
        format!(
            "pid {}: saving the deleted file of {} into {}",
            f.pid,
            f.describe(),
            names::ghost_file(g)
        )
    };
    let src = readable(f).ctx(what)?;
    let entry = pb::GhostFileEntry {
        uid: st.st_uid,
        gid: st.st_gid,
        mode: st.st_mode,
        dev: Some(kernel_dev(st.st_dev)),
        ino: Some(st.st_ino),
        atim: Some(timeval(st.st_atime, st.st_atime_nsec)),
        mtim: Some(timeval(st.st_mtime, st.st_mtime_nsec)),
        size: Some(size),
        ..Default::default()
    };
    let name = names::ghost_file(g);
    let path = dir.create(&name);
    let io = |e| ImageError::io(path.display().to_string(), e);
    let out = File::create(&path).map_err(io)?;
    let mut w =
        ImageWriter::new(BufWriter::with_capacity(CHUNK, out), ImageKind::GhostFile).map_err(io)?;
    w.write_entry(&entry).map_err(io)?;
    let mut buf = vec![0u8; CHUNK.min(size as usize)];
    let mut off = 0u64;
    while off < size {
        let want = (size - off).min(buf.len() as u64) as usize;
        let n = match src.read_at(&mut buf[..want], off) {
            Ok(0) => {
                return Err(Error::Sys {
                    what: what(),
                    err: io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the file ends at {off} bytes, fstat said {size}"),
                    ),
                })
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::Sys {
                    what: what(),
                    err: e,
                })
            }
        };
        w.write_raw(&buf[..n]).map_err(io)?;
        off += n as u64;
    }
    w.finish()
        .map_err(io)?
        .into_inner()
        .map_err(|e| io(e.into_error()))?;
    Ok(())
}

/// One recreated ghost file.
struct Ghost {
    /// Where it was recreated.
    path: PathBuf,
    /// crust's fd of it; every restored fd of the ghost is opened from it.
    file: File,
    /// Whether `path` still names it.
    linked: bool,
}

/// The ghost files recreated for a restore. Their paths are unlinked by
/// [`OpenState::unlink_all`], or when this is dropped (in the process that
/// made it, not in a forked child).
pub struct OpenState {
    ghosts: HashMap<u32, Ghost>,
    owner: u32,
}

impl Default for OpenState {
    fn default() -> Self {
        OpenState {
            ghosts: HashMap::new(),
            owner: std::process::id(),
        }
    }
}

impl Drop for OpenState {
    fn drop(&mut self) {
        if std::process::id() == self.owner {
            self.unlink_all();
        }
    }
}

/// The contents of a ghost image, checked.
struct Contents<'a> {
    entry: pb::GhostFileEntry,
    /// (offset, bytes) pieces; one at 0 unless the image is chunked.
    pieces: Vec<(u64, &'a [u8])>,
    size: u64,
}

fn parse<'a>(data: &'a [u8], name: &str) -> Result<Contents<'a>> {
    let bad = |what: String| Error::BadImage {
        file: name.to_string(),
        what,
    };
    let mut r = ImageReader::open(data, ImageKind::GhostFile, name)?;
    let entry: pb::GhostFileEntry = r.expect_entry("a ghost_file_entry")?;
    if (entry.mode & libc::S_IFMT) != libc::S_IFREG {
        return Err(bad(format!(
            "the ghost file has mode {:o}; crust recreates only regular files",
            entry.mode
        )));
    }
    let mut pieces = Vec::new();
    let size;
    if entry.chunks == Some(true) {
        let mut end = 0u64;
        while let Some(c) = r.next_entry::<pb::GhostChunkEntry>()? {
            let bytes = r.read_raw_u64(c.len)?;
            let stop = c
                .off
                .checked_add(c.len)
                .ok_or_else(|| bad(format!("a chunk at {} of {} bytes", c.off, c.len)))?;
            if c.off < end {
                return Err(bad(format!("chunk at {} overlaps the one before", c.off)));
            }
            end = stop;
            pieces.push((c.off, bytes));
        }
        size = entry.size.unwrap_or(end);
        if end > size {
            return Err(bad(format!(
                "its chunks end at {end} bytes, past the file size {size}"
            )));
        }
    } else {
        let rest = r.read_rest();
        size = entry.size.unwrap_or(rest.len() as u64);
        if rest.len() as u64 != size {
            return Err(bad(format!(
                "holds {} bytes of contents, but the file had {size}",
                rest.len()
            )));
        }
        pieces.push((0, rest));
    }
    Ok(Contents {
        entry,
        pieces,
        size,
    })
}

fn system_time(t: &pb::Timeval) -> SystemTime {
    let sec = t.tv_sec as i64;
    let sub = Duration::from_micros(t.tv_usec.min(999_999));
    if sec >= 0 {
        UNIX_EPOCH + Duration::from_secs(sec as u64) + sub
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + sub
    }
}

/// Open flags of a restored fd: what the task had, minus what only means
/// something when a file is created or a path is walked.
fn reopen_flags(flags: u32) -> i32 {
    flags as i32
        & !(libc::O_CREAT
            | libc::O_TRUNC
            | libc::O_EXCL
            | libc::O_NOCTTY
            | libc::O_NOFOLLOW
            | libc::O_TMPFILE
            | libc::O_CLOEXEC)
}

impl OpenState {
    /// The paths of the ghost files recreated and not yet unlinked.
    pub fn recreated(&self) -> Vec<&Path> {
        let mut v: Vec<&Path> = self
            .ghosts
            .values()
            .filter(|g| g.linked)
            .map(|g| g.path.as_path())
            .collect();
        v.sort();
        v
    }

    /// Unlink every recreated ghost path (those that still name crust's
    /// file): the restored fds keep the files, deleted again as at dump.
    pub fn unlink_all(&mut self) {
        for g in self.ghosts.values_mut() {
            unlink_ghost(g);
        }
    }

    /// Open the file of REG entry `r` (file id `file_id`), the deleted file
    /// of ghost `ghost_id`: recreated from its image on its first use, at
    /// its path, as the task that holds it could (`paths`).
    pub fn open(
        &mut self,
        r: &pb::RegFileEntry,
        ghost_id: u32,
        dir: &ImageDir,
        paths: &crate::creds::PathIdentities,
        file_id: u32,
    ) -> Result<OwnedFd> {
        if !self.ghosts.contains_key(&ghost_id) {
            let path = PathBuf::from(&r.name);
            // Two deleted files that had the same name: the path is ours,
            // and the first one no longer needs it.
            for g in self.ghosts.values_mut() {
                if g.linked && g.path == path {
                    unlink_ghost(g);
                }
            }
            let g = recreate(&path, ghost_id, dir, paths, file_id)?;
            self.ghosts.insert(ghost_id, g);
        }
        let g = &self.ghosts[&ghost_id];
        let flags = reopen_flags(r.flags);
        let acc = flags & libc::O_ACCMODE;
        let mut file = std::fs::OpenOptions::new()
            .read(acc == libc::O_RDONLY || acc == libc::O_RDWR)
            .write(acc == libc::O_WRONLY || acc == libc::O_RDWR)
            .custom_flags(flags & !libc::O_ACCMODE)
            .open(format!("/proc/self/fd/{}", g.file.as_raw_fd()))
            .ctx(|| format!("opening the recreated deleted file {}", r.name))?;
        if r.pos != 0 {
            file.seek(SeekFrom::Start(r.pos))
                .ctx(|| format!("seeking the recreated deleted file {} to {}", r.name, r.pos))?;
        }
        Ok(file.into())
    }
}

fn unlink_ghost(g: &mut Ghost) {
    if !g.linked {
        return;
    }
    g.linked = false;
    let ours = match (std::fs::symlink_metadata(&g.path), g.file.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    if !ours {
        tracing::warn!(
            "the recreated deleted file {} was moved or replaced; not removing it",
            g.path.display()
        );
        return;
    }
    if let Err(e) = std::fs::remove_file(&g.path) {
        tracing::warn!(
            "removing the recreated deleted file {}: {e}",
            g.path.display()
        );
    }
}

/// Recreate the file of ghost image `ghost_id` at `path`, created as the
/// holder of file `file_id` could (`paths`), then filled, owned and moded
/// by crust.
fn recreate(
    path: &Path,
    ghost_id: u32,
    dir: &ImageDir,
    paths: &crate::creds::PathIdentities,
    file_id: u32,
) -> Result<Ghost> {
    let name = names::ghost_file(ghost_id);
    let data = crust_image::read_file(&dir.file(&name))?;
    let c = parse(&data, &name)?;
    let shown = path.display();
    let acting = paths.act_for_file(file_id)?;
    let created = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(c.entry.mode & 0o7777)
        .open(path);
    let note = crate::creds::AsTask::note(&acting);
    drop(acting);
    let file = created.map_err(|err| match err.kind() {
        io::ErrorKind::AlreadyExists => Error::FileChanged {
            path: path.into(),
            what: format!(
                "the path of a deleted file the tree holds open (saved in {name}, \
                     recreated there for the restore) was taken by another file"
            ),
        },
        io::ErrorKind::NotFound => Error::FileChanged {
            path: path.into(),
            what: format!(
                "the directory of a deleted file the tree holds open (saved in {name}, \
                     recreated there for the restore) was removed"
            ),
        },
        _ => Error::Sys {
            what: format!("recreating the deleted file {shown} from {name}{note}"),
            err,
        },
    })?;
    // From here on, a failure takes the new file away again.
    let mut g = Ghost {
        path: path.to_path_buf(),
        file,
        linked: true,
    };
    if let Err(e) = fill(&g.file, &c, path, &name) {
        unlink_ghost(&mut g);
        return Err(e);
    }
    Ok(g)
}

/// Write the contents and set size, owner, mode and times.
fn fill(file: &File, c: &Contents, path: &Path, name: &str) -> Result<()> {
    let what = |step: &str| {
        format!(
            "recreating the deleted file {} from {name}: {step}",
            path.display()
        )
    };
    for (off, bytes) in &c.pieces {
        for (i, chunk) in bytes.chunks(CHUNK).enumerate() {
            file.write_all_at(chunk, off + (i * CHUNK) as u64)
                .ctx(|| what("writing its contents"))?;
        }
    }
    file.set_len(c.size).ctx(|| what("setting its size"))?;
    std::os::unix::fs::fchown(file, Some(c.entry.uid), Some(c.entry.gid))
        .ctx(|| what("setting its owner"))?;
    // After fchown, which clears set-user-ID and set-group-ID.
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(
        c.entry.mode & 0o7777,
    ))
    .ctx(|| what("setting its mode"))?;
    let mut times = std::fs::FileTimes::new();
    if let Some(t) = &c.entry.atim {
        times = times.set_accessed(system_time(t));
    }
    if let Some(t) = &c.entry.mtim {
        times = times.set_modified(system_time(t));
    }
    if c.entry.atim.is_some() || c.entry.mtim.is_some() {
        file.set_times(times).ctx(|| what("setting its times"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::reg::RegularFile;
    use crate::files::{FdOptions, FileKind, OpenCtx};
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "crust-ghost-test-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// An OpenFd of one of crust's own fds (a dup stands for the task's).
    fn open_fd(fd: &(impl AsRawFd + std::os::fd::AsFd)) -> OpenFd {
        let me = std::process::id() as i32;
        let raw = fd.as_raw_fd();
        OpenFd {
            pid: me,
            fd: raw,
            file: fd.as_fd().try_clone_to_owned().unwrap(),
            link: std::fs::read_link(format!("/proc/self/fd/{raw}"))
                .unwrap()
                .to_string_lossy()
                .into_owned(),
            stat: nix::sys::stat::fstat(raw).unwrap(),
            info: crust_sys::procfs::read_fdinfo(me, raw).unwrap(),
        }
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 13 + i / 251) as u8).collect()
    }

    fn octx(dir: &ImageDir) -> OpenCtx<'_> {
        OpenCtx {
            opts: FdOptions::default(),
            dir,
            pipes: Default::default(),
            ghosts: Default::default(),
            ttys: Default::default(),
            memfds: Default::default(),
            tree: Default::default(),
            paths: Default::default(),
        }
    }

    /// A deleted file of `data` with two fds: O_RDWR at 123 and O_RDONLY.
    fn deleted_file(d: &Path, data: &[u8]) -> (PathBuf, File, File) {
        let p = d.join("victim.dat");
        std::fs::write(&p, data).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let mut rw = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        rw.seek(SeekFrom::Start(123)).unwrap();
        let ro = File::open(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        (p, rw, ro)
    }

    fn pos(f: &impl AsRawFd) -> u64 {
        nix::unistd::lseek(f.as_raw_fd(), 0, nix::unistd::Whence::SeekCur).unwrap() as u64
    }

    #[test]
    fn deleted_file_round_trip_to_a_new_path() {
        let d = tmpdir("rt");
        let imgs = d.join("img");
        std::fs::create_dir(&imgs).unwrap();
        let dir = ImageDir::new(&imgs);
        let data = pattern(100 << 10);
        let (p, rw, ro) = deleted_file(&d, &data);
        let (frw, fro) = (open_fd(&rw), open_fd(&ro));
        assert!(is_ghost(&frw) && is_ghost(&fro));
        let mut dctx = DumpCtx::new(FdOptions::default(), &dir);
        assert!(RegularFile.claims(&frw, &dctx));
        let erw = RegularFile.dump(&frw, 1, &mut dctx).unwrap();
        let ero = RegularFile.dump(&fro, 2, &mut dctx).unwrap();
        assert_eq!(dctx.ghosts.count(), 1, "one image per inode");
        dctx.finish().unwrap();
        let (rrw, rro) = (erw.reg.clone().unwrap(), ero.reg.clone().unwrap());
        assert_eq!(rrw.name, p.to_str().unwrap());
        assert_eq!((rrw.pos, rro.pos), (123, 0));
        assert_eq!((rrw.crust_ghost_id, rro.crust_ghost_id), (Some(1), Some(1)));
        assert_eq!(rrw.flags & libc::O_ACCMODE as u32, libc::O_RDWR as u32);

        // The image: entry, then the raw contents.
        let bytes = std::fs::read(imgs.join("ghost-file-1.img")).unwrap();
        let c = parse(&bytes, "ghost-file-1.img").unwrap();
        assert_eq!(c.entry.mode, 0o100640);
        assert_eq!(c.entry.size, Some(data.len() as u64));
        assert_eq!(c.pieces, vec![(0, &data[..])]);
        let v = crust_image::show(&imgs.join("ghost-file-1.img")).unwrap();
        assert!(v.to_string().contains("\"size\""), "{v}");

        // Restore at a new path.
        let np = d.join("again.dat");
        let (mut erw2, mut ero2) = (erw.clone(), ero.clone());
        for e in [&mut erw2, &mut ero2] {
            e.reg.as_mut().unwrap().name = np.to_str().unwrap().into();
        }
        let mut ctx = octx(&dir);
        let nrw = RegularFile.open(&erw2, &mut ctx).unwrap();
        let nro = RegularFile.open(&ero2, &mut ctx).unwrap();
        assert_eq!(ctx.ghosts.recreated(), vec![np.as_path()]);
        let md = std::fs::metadata(&np).unwrap();
        assert_eq!(md.mode(), 0o100640);
        assert_eq!(md.mtime(), frw.stat.st_mtime);
        ctx.ghosts.unlink_all();
        assert!(!np.exists(), "the recreated path was not unlinked");
        let (nrw, nro) = (File::from(nrw), File::from(nro));
        assert_eq!(nix::sys::stat::fstat(nrw.as_raw_fd()).unwrap().st_nlink, 0);
        assert_eq!((pos(&nrw), pos(&nro)), (123, 0));
        let st_rw = nix::sys::stat::fstat(nrw.as_raw_fd()).unwrap();
        let st_ro = nix::sys::stat::fstat(nro.as_raw_fd()).unwrap();
        assert_eq!(st_rw.st_ino, st_ro.st_ino, "one inode");
        let mut all = Vec::new();
        (&nro).read_to_end(&mut all).unwrap();
        assert_eq!(all, data);
        let mut tail = Vec::new();
        (&nrw).read_to_end(&mut tail).unwrap();
        assert_eq!(tail, &data[123..]);
        nrw.write_all_at(b"shared", 7).unwrap();
        let mut b = [0u8; 6];
        nro.read_exact_at(&mut b, 7).unwrap();
        assert_eq!(&b, b"shared");
        let link = std::fs::read_link(format!("/proc/self/fd/{}", nro.as_raw_fd())).unwrap();
        assert_eq!(
            link.to_str().unwrap(),
            format!("{} (deleted)", np.display())
        );
        drop(ctx);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn too_large_is_refused_naming_the_limit() {
        let d = tmpdir("big");
        let dir = ImageDir::new(&d);
        let (_, rw, _ro) = deleted_file(&d, &pattern(5000));
        let f = open_fd(&rw);
        let opts = FdOptions {
            ghost_limit: 4096,
            ..Default::default()
        };
        let mut dctx = DumpCtx::new(opts, &dir);
        assert!(RegularFile.claims(&f, &dctx));
        let m = RegularFile.dump(&f, 1, &mut dctx).unwrap_err().to_string();
        for w in ["--ghost-limit", "5000", "4096", "victim.dat"] {
            assert!(m.contains(w), "{m:?} lacks {w:?}");
        }
        assert!(!d.join("ghost-file-1.img").exists());
        // Exactly at the limit is fine; an empty file too.
        let (_, rw2, _r2) = deleted_file(&d, &pattern(4096));
        RegularFile.dump(&open_fd(&rw2), 2, &mut dctx).unwrap();
        let (_, rw3, _r3) = deleted_file(&d, b"");
        let e = RegularFile.dump(&open_fd(&rw3), 3, &mut dctx).unwrap();
        assert_eq!(e.reg.unwrap().crust_ghost_id, Some(2));
        let bytes = std::fs::read(d.join("ghost-file-2.img")).unwrap();
        assert!(parse(&bytes, "x").unwrap().pieces[0].1.is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn write_only_and_tmpfile_fds() {
        let d = tmpdir("wo");
        let imgs = d.join("img");
        std::fs::create_dir(&imgs).unwrap();
        let dir = ImageDir::new(&imgs);
        let p = d.join("wo.dat");
        std::fs::write(&p, b"write only contents").unwrap();
        let wo = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        let tmp = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .open(&d)
            .unwrap();
        tmp.write_all_at(b"anonymous", 0).unwrap();
        let (fwo, ftmp) = (open_fd(&wo), open_fd(&tmp));
        assert!(is_ghost(&fwo) && is_ghost(&ftmp), "{}", ftmp.link);
        let mut dctx = DumpCtx::new(FdOptions::default(), &dir);
        let ewo = RegularFile.dump(&fwo, 1, &mut dctx).unwrap();
        let etmp = RegularFile.dump(&ftmp, 2, &mut dctx).unwrap();
        dctx.finish().unwrap();
        drop((wo, tmp, fwo, ftmp));
        let mut ctx = octx(&dir);
        let nwo = File::from(RegularFile.open(&ewo, &mut ctx).unwrap());
        let ntmp = File::from(RegularFile.open(&etmp, &mut ctx).unwrap());
        let fl = nix::fcntl::fcntl(nwo.as_raw_fd(), nix::fcntl::F_GETFL).unwrap();
        assert_eq!(fl & libc::O_ACCMODE, libc::O_WRONLY);
        assert!(fl & libc::O_APPEND != 0);
        drop(ctx); // unlinks
        assert!(!p.exists());
        let mut s = String::new();
        File::open(format!("/proc/self/fd/{}", nwo.as_raw_fd()))
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "write only contents");
        let mut b = [0u8; 9];
        ntmp.read_exact_at(&mut b, 0).unwrap();
        assert_eq!(&b, b"anonymous");
        assert_eq!(
            std::fs::read_dir(&d).unwrap().count(),
            1,
            "only img/ is left"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    fn dumped(d: &Path, data: &[u8]) -> (ImageDir, pb::FileEntry) {
        let imgs = d.join("img");
        std::fs::create_dir_all(&imgs).unwrap();
        let dir = ImageDir::new(&imgs);
        let (_, rw, _ro) = deleted_file(d, data);
        let mut dctx = DumpCtx::new(FdOptions::default(), &dir);
        let e = RegularFile.dump(&open_fd(&rw), 1, &mut dctx).unwrap();
        dctx.finish().unwrap();
        (dir, e)
    }

    #[test]
    fn taken_path_and_missing_directory_are_errors_naming_the_path() {
        let d = tmpdir("taken");
        let (dir, e) = dumped(&d, b"ghostly");
        let p = PathBuf::from(&e.reg.as_ref().unwrap().name);
        std::fs::write(&p, b"someone else's").unwrap();
        let m = RegularFile
            .open(&e, &mut octx(&dir))
            .unwrap_err()
            .to_string();
        assert!(m.contains(p.to_str().unwrap()), "{m}");
        assert_eq!(
            std::fs::read(&p).unwrap(),
            b"someone else's",
            "foreign file touched"
        );
        std::fs::remove_file(&p).unwrap();

        let mut e2 = e.clone();
        let gone = d.join("no-such-dir/victim.dat");
        e2.reg.as_mut().unwrap().name = gone.to_str().unwrap().into();
        let m = RegularFile
            .open(&e2, &mut octx(&dir))
            .unwrap_err()
            .to_string();
        assert!(
            m.contains(gone.to_str().unwrap()) && m.contains("directory"),
            "{m}"
        );

        // A failed restore (the OpenState dropped) leaves nothing behind.
        {
            let mut ctx = octx(&dir);
            RegularFile.open(&e, &mut ctx).unwrap();
            assert!(p.exists());
        }
        assert!(!p.exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn bad_ghost_images_are_errors_naming_the_file() {
        let d = tmpdir("bad");
        let (dir, e) = dumped(&d, &pattern(3000));
        let p = PathBuf::from(&e.reg.as_ref().unwrap().name);
        let img = dir.file("ghost-file-1.img");
        let good = std::fs::read(&img).unwrap();
        let try_open = || {
            let m = RegularFile
                .open(&e, &mut octx(&dir))
                .unwrap_err()
                .to_string();
            assert!(m.contains("ghost-file-1.img"), "{m}");
            assert!(!p.exists(), "a bad image left {} behind", p.display());
            m
        };
        // truncated contents
        std::fs::write(&img, &good[..good.len() - 10]).unwrap();
        assert!(try_open().contains("2990"));
        // truncated entry, empty, bad magic
        std::fs::write(&img, &good[..12]).unwrap();
        try_open();
        std::fs::write(&img, b"").unwrap();
        try_open();
        let mut flipped = good.clone();
        flipped[4] ^= 0xff;
        std::fs::write(&img, &flipped).unwrap();
        try_open();
        // size mismatch: more bytes than the entry says
        let mut longer = good.clone();
        longer.extend_from_slice(b"extra");
        std::fs::write(&img, &longer).unwrap();
        assert!(try_open().contains("3005"));
        // missing
        std::fs::remove_file(&img).unwrap();
        try_open();
        // chunked (CRIU with --ghost-fiemap): a hole, then data
        let mut w = ImageWriter::new(Vec::new(), ImageKind::GhostFile).unwrap();
        w.write_entry(&pb::GhostFileEntry {
            mode: 0o100600,
            chunks: Some(true),
            size: Some(10000),
            ..Default::default()
        })
        .unwrap();
        w.write_entry(&pb::GhostChunkEntry { len: 4, off: 8192 })
            .unwrap();
        w.write_raw(b"tail").unwrap();
        std::fs::write(&img, w.finish().unwrap()).unwrap();
        let mut ctx = octx(&dir);
        let f = File::from(RegularFile.open(&e, &mut ctx).unwrap());
        drop(ctx);
        assert_eq!(f.metadata().unwrap().len(), 10000);
        let mut b = [1u8; 4];
        f.read_exact_at(&mut b, 100).unwrap();
        assert_eq!(b, [0; 4]);
        f.read_exact_at(&mut b, 8192).unwrap();
        assert_eq!(&b, b"tail");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn memfds_and_linked_files_are_not_ghosts() {
        let m = nix::sys::memfd::memfd_create(
            c"crust-ghost-test",
            nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
        )
        .unwrap();
        assert!(!is_ghost(&open_fd(&m)));
        let d = tmpdir("linked");
        let p = d.join("a");
        std::fs::write(&p, b"x").unwrap();
        std::fs::hard_link(&p, d.join("b")).unwrap();
        let f = File::open(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        let of = open_fd(&f);
        assert!(of.link.ends_with(" (deleted)") && !is_ghost(&of));
        let _ = std::fs::remove_dir_all(&d);
    }
}

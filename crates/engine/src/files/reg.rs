//! Regular files, directories and memory devices (/dev/null, /dev/zero ...)
//! as CRIU's REG files: path, flags, offset; and, with --shell-job, the
//! terminal on stdio, re-attached to the restoring crust's terminal.

use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

use crust_image::pb;

use super::{fd_type, ghost, DumpCtx, FileKind, OpenCtx, OpenFd};
use crate::error::{Context, Error, Result};

/// Memory devices (major 1) crust reopens by path.
const MEM_MAJOR: u64 = 1;
/// Pseudo-terminal slaves.
const PTS_MAJOR: u64 = 136;
/// Virtual consoles and /dev/tty (major 4 and 5).
const TTY_MAJORS: [u64; 2] = [4, 5];

/// Whether a char device is a terminal.
pub fn is_tty(st: &nix::sys::stat::FileStat) -> bool {
    let major = nix::sys::stat::major(st.st_rdev);
    (st.st_mode & libc::S_IFMT) == libc::S_IFCHR
        && (major == PTS_MAJOR || TTY_MAJORS.contains(&major) || (136..=143).contains(&major))
}

fn fown() -> pb::FownEntry {
    pb::FownEntry::default()
}

/// A file entry for a path crust found in /proc (a mapped file, the exe,
/// cwd or root): its size and mode are recorded to detect changes.
pub fn entry_for_path(
    pid: i32,
    path: &str,
    id: u32,
    flags: u32,
    pos: u64,
) -> Result<pb::FileEntry> {
    if !path.starts_with('/') {
        return Err(Error::Unsupported {
            pid,
            what: format!("the file {path}, which has no path crust can reopen"),
        });
    }
    let md = std::fs::metadata(path).map_err(|_| Error::Unsupported {
        pid,
        what: format!("the file {path}, which crust cannot find by its path"),
    })?;
    Ok(file_entry(id, path, flags, pos, &md))
}

fn mtime_ns(md: &std::fs::Metadata) -> u64 {
    (md.mtime() as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(md.mtime_nsec() as u64)
}

fn file_entry(id: u32, path: &str, flags: u32, pos: u64, md: &std::fs::Metadata) -> pb::FileEntry {
    let is_reg = md.file_type().is_file();
    pb::FileEntry {
        r#type: fd_type::REG,
        id,
        reg: Some(pb::RegFileEntry {
            id,
            flags,
            pos,
            fown: fown(),
            name: path.to_string(),
            size: is_reg.then_some(md.len()),
            mode: Some(md.mode()),
            crust_mtime_ns: is_reg.then(|| mtime_ns(md)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Regular files, directories and memory devices.
pub struct RegularFile;

impl FileKind for RegularFile {
    fn claims(&self, f: &OpenFd, _: &DumpCtx) -> bool {
        let fmt = f.stat.st_mode & libc::S_IFMT;
        // Deleted: a ghost file (refused at dump if above --ghost-limit).
        if ghost::is_ghost(f) {
            return true;
        }
        if f.link.ends_with(" (deleted)") || !f.link.starts_with('/') {
            return false;
        }
        match fmt {
            libc::S_IFREG | libc::S_IFDIR => true,
            libc::S_IFCHR => nix::sys::stat::major(f.stat.st_rdev) == MEM_MAJOR,
            _ => false,
        }
    }

    fn dump(&self, f: &OpenFd, id: u32, ctx: &mut DumpCtx) -> Result<pb::FileEntry> {
        if ghost::is_ghost(f) {
            return ghost::dump(f, id, ctx);
        }
        let md = std::fs::metadata(&f.link)
            .ctx(|| format!("stat of {} (fd {} of {})", f.link, f.fd, f.pid))?;
        if md.ino() != f.stat.st_ino || md.dev() != f.stat.st_dev {
            return Err(Error::Unsupported {
                pid: f.pid,
                what: format!("{}: its path now names another file", f.describe()),
            });
        }
        let flags = f.info.flags & !(libc::O_CLOEXEC as u32);
        Ok(file_entry(id, &f.link, flags, f.info.pos, &md))
    }

    fn restores(&self, t: i32) -> bool {
        t == fd_type::REG
    }

    fn open(&self, e: &pb::FileEntry, ctx: &mut OpenCtx) -> Result<OwnedFd> {
        let r = e.reg.as_ref().ok_or_else(|| Error::BadImage {
            file: "files.img".into(),
            what: format!("REG file id {} has no reg entry", e.id),
        })?;
        if ctx.opts.shell_job
            && r.mode.is_some_and(|m| (m & libc::S_IFMT) == libc::S_IFCHR)
            && is_tty_path(&r.name)
        {
            return ShellTerminal.open(e, ctx);
        }
        if let Some(g) = r.crust_ghost_id {
            let dir = ctx.dir;
            return ctx.ghosts.open(r, g, dir, &ctx.paths, e.id);
        }
        let acting = ctx.paths.act_for_file(e.id)?;
        let note = || crate::creds::AsTask::note(&acting);
        check_unchanged(r)
            .and_then(|()| open_reg(r))
            .map_err(|err| match err {
                Error::Sys { what, err } => Error::Sys {
                    what: format!("{what}{}", note()),
                    err,
                },
                Error::FileChanged { path, what } => Error::FileChanged {
                    path,
                    what: format!("{what}{}", note()),
                },
                other => other,
            })
    }
}

fn is_tty_path(p: &str) -> bool {
    p.starts_with("/dev/pts/") || p.starts_with("/dev/tty") || p == "/dev/console"
}

/// Check that the file at `r.name` is the kind and size it was at dump.
pub fn check_unchanged(r: &pb::RegFileEntry) -> Result<()> {
    let changed = |what: String| Error::FileChanged {
        path: r.name.clone().into(),
        what,
    };
    let md = std::fs::metadata(&r.name).map_err(|err| match err.kind() {
        std::io::ErrorKind::PermissionDenied => Error::Sys {
            what: format!("looking up {}", r.name),
            err,
        },
        _ => changed(format!("cannot be found ({err})")),
    })?;
    if let Some(mode) = r.mode {
        if (mode & libc::S_IFMT) != (md.mode() & libc::S_IFMT) {
            return Err(changed(format!(
                "its kind changed (mode {:o}, was {:o})",
                md.mode(),
                mode
            )));
        }
    }
    if let Some(size) = r.size {
        if md.file_type().is_file() && md.len() != size {
            return Err(changed(format!(
                "its size changed ({} bytes, was {size})",
                md.len()
            )));
        }
    }
    if let Some(mtime) = r.crust_mtime_ns {
        if md.file_type().is_file() && mtime_ns(&md) != mtime {
            return Err(changed("it was modified (its mtime differs)".into()));
        }
    }
    Ok(())
}

fn open_reg(r: &pb::RegFileEntry) -> Result<OwnedFd> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt;
    let flags = r.flags as i32 & !(libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_NOCTTY);
    let acc = flags & libc::O_ACCMODE;
    let mut file = std::fs::OpenOptions::new()
        .read(acc == libc::O_RDONLY || acc == libc::O_RDWR)
        .write(acc == libc::O_WRONLY || acc == libc::O_RDWR)
        .custom_flags(flags & !libc::O_ACCMODE)
        .open(&r.name)
        .ctx(|| format!("opening {}", r.name))?;
    if r.pos != 0 {
        file.seek(SeekFrom::Start(r.pos))
            .ctx(|| format!("seeking {} to {}", r.name, r.pos))?;
    }
    Ok(file.into())
}

/// With --shell-job, a terminal on the task's fds: dumped as its path and
/// re-attached at restore to the terminal of the restoring crust.
pub struct ShellTerminal;

impl FileKind for ShellTerminal {
    fn claims(&self, f: &OpenFd, ctx: &DumpCtx) -> bool {
        ctx.opts.shell_job && is_tty(&f.stat) && f.link.starts_with('/')
    }

    fn dump(&self, f: &OpenFd, id: u32, _: &mut DumpCtx) -> Result<pb::FileEntry> {
        let flags = f.info.flags & !(libc::O_CLOEXEC as u32);
        Ok(pb::FileEntry {
            r#type: fd_type::REG,
            id,
            reg: Some(pb::RegFileEntry {
                id,
                flags,
                pos: 0,
                fown: fown(),
                name: f.link.clone(),
                mode: Some(f.stat.st_mode),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn restores(&self, _: i32) -> bool {
        false
    }

    fn open(&self, e: &pb::FileEntry, _: &mut OpenCtx) -> Result<OwnedFd> {
        let r = e.reg.as_ref().expect("checked by caller");
        let own = (0..3)
            .find_map(|fd| {
                let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
                nix::unistd::isatty(fd).ok()?.then_some(link)
            })
            .ok_or_else(|| {
                Error::ShellJob(format!(
                    "the task had the terminal {} but crust's stdio has no terminal",
                    r.name
                ))
            })?;
        let mut re = r.clone();
        re.name = own.to_string_lossy().into_owned();
        open_reg(&re)
    }
}

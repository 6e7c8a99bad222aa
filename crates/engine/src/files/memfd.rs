//! memfd files (memfd_create), as CRIU writes them: a `memfd_file_entry`
//! per open file description (flags, offset, inode id) and one
//! `memfd_inode_entry` per memfd in memfd.img (name, owner, size, seals,
//! shmid). The contents go through the shmem module, once per memfd, also
//! when processes map it: `shmid` is the inode number, which the mappings'
//! `vma_entry.shmid` holds too.
//!
//! At restore crust creates each memfd with its name, size, contents and
//! owner, then its seals; every file description of it is a reopening of
//! crust's copy through /proc/self/fd (with its own flags and offset), and
//! mappings of it open that same copy, so fds and mappings still share one
//! memfd.

use std::collections::HashMap;
use std::io::Seek;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use crust_image::{names, pb, ImageKind};

use super::{fd_type, DumpCtx, FileKind, OpenCtx, OpenFd};
use crate::error::{Context, Error, Result};

const O_CLOEXEC: u32 = libc::O_CLOEXEC as u32;
/// F_SEAL_SEAL: what a memfd made without MFD_ALLOW_SEALING carries.
const F_SEAL_SEAL: u32 = 1;

/// The memfds met during a dump.
#[derive(Default)]
pub struct DumpState {
    inodes: Vec<pb::MemfdInodeEntry>,
    /// (inode, pid, fd): where each memfd's contents can be read.
    sources: Vec<(u64, i32, i32)>,
}

impl DumpState {
    /// Where to read each memfd from: (inode, pid, fd).
    pub fn sources(&self) -> &[(u64, i32, i32)] {
        &self.sources
    }
}

/// Write memfd.img, if any memfd was met.
pub(super) fn finish_dump(state: DumpState, dir: &crate::images::ImageDir) -> Result<()> {
    if state.inodes.is_empty() {
        return Ok(());
    }
    dir.write(names::MEMFD, ImageKind::MemfdInode, &state.inodes)
}

/// The memfds of a restore, created on first use.
#[derive(Default)]
pub struct OpenState {
    inodes: Option<HashMap<u64, pb::MemfdInodeEntry>>,
    /// Crust's copy of each memfd created, by inode id.
    created: HashMap<u64, OwnedFd>,
}

impl OpenState {
    /// Each memfd created, by shmid, with the path through which the
    /// restored tree's mappings open it.
    pub fn created(&self) -> impl Iterator<Item = (u64, String)> + '_ {
        let me = std::process::id();
        self.created.iter().filter_map(move |(ino, fd)| {
            let e = self.inodes.as_ref()?.get(ino)?;
            Some((e.shmid as u64, format!("/proc/{me}/fd/{}", fd.as_raw_fd())))
        })
    }
}

fn bad(e: &pb::FileEntry, what: String) -> Error {
    Error::BadImage {
        file: "files.img".into(),
        what: format!("file id {}: {what}", e.id),
    }
}

/// memfd files.
pub struct Memfd;

impl FileKind for Memfd {
    fn claims(&self, f: &OpenFd, _: &DumpCtx) -> bool {
        f.stat.st_mode & libc::S_IFMT == libc::S_IFREG && f.link.starts_with("/memfd:")
    }

    fn dump(&self, f: &OpenFd, id: u32, ctx: &mut DumpCtx) -> Result<pb::FileEntry> {
        let ino = f.stat.st_ino;
        let shmid = u32::try_from(ino).map_err(|_| Error::Unsupported {
            pid: f.pid,
            what: format!(
                "{}: a memfd whose inode number does not fit 32 bits",
                f.describe()
            ),
        })?;
        let state = &mut ctx.memfds;
        if !state.inodes.iter().any(|i| i.inode_id == ino) {
            let name = f
                .link
                .trim_start_matches("/memfd:")
                .trim_end_matches(" (deleted)")
                .to_string();
            if name.starts_with("hugetlb") || f.stat.st_blksize > 4096 {
                return Err(Error::Unsupported {
                    pid: f.pid,
                    what: format!("{}: a hugetlb memfd, not supported yet", f.describe()),
                });
            }
            let seals = nix::fcntl::fcntl(f.file.as_raw_fd(), nix::fcntl::FcntlArg::F_GET_SEALS)
                .ctx(|| format!("F_GET_SEALS of {}", f.describe()))? as u32;
            state.inodes.push(pb::MemfdInodeEntry {
                name,
                uid: f.stat.st_uid,
                gid: f.stat.st_gid,
                size: f.stat.st_size as u64,
                shmid,
                seals,
                inode_id: ino,
                hugetlb_flag: None,
            });
            state.sources.push((ino, f.pid, f.fd));
        }
        Ok(pb::FileEntry {
            r#type: fd_type::MEMFD,
            id,
            memfd: Some(pb::MemfdFileEntry {
                id,
                flags: f.info.flags & !O_CLOEXEC,
                pos: f.info.pos,
                fown: Default::default(),
                inode_id: shmid,
            }),
            ..Default::default()
        })
    }

    fn restores(&self, fd_type: i32) -> bool {
        fd_type == fd_type::MEMFD
    }

    fn open(&self, e: &pb::FileEntry, ctx: &mut OpenCtx) -> Result<OwnedFd> {
        let m = e
            .memfd
            .as_ref()
            .ok_or_else(|| bad(e, "a memfd entry without memfd data".into()))?;
        let state = &mut ctx.memfds;
        if state.inodes.is_none() {
            let all: Vec<pb::MemfdInodeEntry> =
                ctx.dir.read(names::MEMFD, ImageKind::MemfdInode)?;
            state.inodes = Some(all.into_iter().map(|i| (i.shmid as u64, i)).collect());
        }
        let ino = m.inode_id as u64;
        let inode = state
            .inodes
            .as_ref()
            .and_then(|all| all.get(&ino))
            .ok_or_else(|| bad(e, format!("memfd inode {ino} is not in {}", names::MEMFD)))?
            .clone();
        if !state.created.contains_key(&ino) {
            let fd = create(&inode, ctx.dir)?;
            ctx.memfds.created.insert(ino, fd);
        }
        let first = &ctx.memfds.created[&ino];
        // Every description of it is a reopening, with its own flags and
        // offset (O_CLOEXEC for crust's copy; install sets the task's).
        let path = format!("/proc/self/fd/{}", first.as_raw_fd());
        let acc = m.flags & libc::O_ACCMODE as u32;
        let other =
            m.flags & !(libc::O_ACCMODE | libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL) as u32;
        let mut file = std::fs::OpenOptions::new()
            .read(acc != libc::O_WRONLY as u32)
            .write(acc != libc::O_RDONLY as u32)
            .custom_flags((other | O_CLOEXEC) as i32)
            .open(&path)
            .ctx(|| format!("reopening memfd {:?}", inode.name))?;
        file.seek(std::io::SeekFrom::Start(m.pos))
            .ctx(|| format!("seeking memfd {:?} to {}", inode.name, m.pos))?;
        Ok(OwnedFd::from(file))
    }
}

/// Create the memfd of `inode`, filled, owned and sealed as dumped.
fn create(inode: &pb::MemfdInodeEntry, dir: &crate::images::ImageDir) -> Result<OwnedFd> {
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    let sealing = inode.seals & !F_SEAL_SEAL != 0 || inode.seals == 0;
    let mut flags = MemFdCreateFlag::MFD_CLOEXEC;
    if sealing {
        flags |= MemFdCreateFlag::MFD_ALLOW_SEALING;
    }
    let name = std::ffi::CString::new(inode.name.as_str()).map_err(|_| Error::BadImage {
        file: names::MEMFD.into(),
        what: format!("memfd name {:?} holds a NUL", inode.name),
    })?;
    let fd = memfd_create(&name, flags).ctx(|| format!("memfd_create({:?})", inode.name))?;
    let file = std::fs::File::from(fd);
    file.set_len(inode.size)
        .ctx(|| format!("sizing memfd {:?} to {}", inode.name, inode.size))?;
    crate::shmem::fill_file(dir, inode.shmid as u64, inode.size, &file)?;
    std::os::unix::fs::fchown(&file, Some(inode.uid), Some(inode.gid))
        .ctx(|| format!("chown of memfd {:?}", inode.name))?;
    let fd = OwnedFd::from(file);
    if sealing && inode.seals != 0 {
        let seals = nix::fcntl::SealFlag::from_bits_retain(inode.seals as i32);
        nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_ADD_SEALS(seals))
            .ctx(|| format!("sealing memfd {:?} with {:#x}", inode.name, inode.seals))?;
    }
    Ok(fd)
}

//! fanotify groups: a `fanotify_file_entry {faflags, evflags}` with one
//! `fanotify_mark_entry` per mark (CRIU's fsnotify.proto), from the
//! `fanotify` lines of the fd's fdinfo: the fanotify_init flags and event
//! flags, and each mark with its flags, mask and ignored mask, on an inode
//! (by file handle, resolved to a path at dump as for inotify) or on a
//! mount (by mount id, with the mount point's path, as CRIU 4.x's
//! `fanotify_mount_mark_entry.path`).
//!
//! At restore: fanotify_init with the same flags, then fanotify_mark for
//! the mask and for the ignored mask of each mark, on its path (which must
//! still name the same inode). Refused at dump: filesystem marks
//! (FAN_MARK_FILESYSTEM), marks on deleted files or unreachable paths, and
//! marks for permission events (FAN_OPEN_PERM ...): such a mark, live from
//! the moment it is restored, would stop every open of its files until the
//! group's owner answers, and the owner does not run before the whole tree
//! is restored (crust and the restored tasks open files meanwhile); so no
//! restored group has permission events queued or waiting for an answer.
//! A permission group (FAN_CLASS_CONTENT, FAN_CLASS_PRE_CONTENT) with
//! notification marks only is restored. Queued events are lost, as with
//! inotify and CRIU; the dumped group's unanswered permission events are
//! answered FAN_ALLOW when it goes away.

use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crust_image::pb;
use crust_sys::eventfds as sys;
use crust_sys::procfs::{self, FanotifyTarget};

use super::evfd::proc_err;
use super::inotify::{handle_words, resolve, user_dev};
use super::{fd_type, DumpCtx, FileKind, OpenCtx, OpenFd};
use crate::error::{Context, Error, Result};

/// fanotify groups.
pub struct Fanotify;

/// `mark_type.INODE`.
const MARK_INODE: i32 = 1;
/// `mark_type.MOUNT`.
const MARK_MOUNT: i32 = 2;

/// FAN_OPEN_PERM, FAN_ACCESS_PERM, FAN_OPEN_EXEC_PERM, FAN_PRE_ACCESS.
const PERMISSION_EVENTS: u32 = 0x0017_0000;
const FAN_MARK_ADD: u32 = 0x1;
const FAN_MARK_DONT_FOLLOW: u32 = 0x4;
const FAN_MARK_MOUNT: u32 = 0x10;
const FAN_MARK_IGNORED_MASK: u32 = 0x20;
const FAN_MARK_IGNORED_SURV_MODIFY: u32 = 0x40;
const FAN_MARK_EVICTABLE: u32 = 0x200;
const FAN_MARK_IGNORE: u32 = 0x400;

/// A kernel s_dev (major << 20 | minor).
fn kernel_dev(major: u32, minor: u32) -> u32 {
    major << 20 | (minor & 0xfffff)
}

impl FileKind for Fanotify {
    fn claims(&self, f: &OpenFd, _: &DumpCtx) -> bool {
        f.link == "anon_inode:[fanotify]"
    }

    fn dump(&self, f: &OpenFd, id: u32, _: &mut DumpCtx) -> Result<pb::FileEntry> {
        let info = f.info.fanotify().map_err(|e| proc_err(f, e))?;
        let refuse = |what: String| Error::Unsupported {
            pid: f.pid,
            what: format!("{}: a fanotify group with {what}", f.describe()),
        };
        let mut marks = Vec::with_capacity(info.marks.len());
        for m in &info.marks {
            if m.mask & PERMISSION_EVENTS != 0 {
                return Err(refuse(format!(
                    "a mark for permission events (mask {:#x}): restoring it before the tree runs could block crust or the tree on their own opens, not supported",
                    m.mask
                )));
            }
            let mut e = pb::FanotifyMarkEntry {
                id,
                r#type: MARK_INODE,
                mflags: m.mflags,
                mask: m.mask,
                ignored_mask: m.ignored_mask,
                s_dev: 0,
                ie: None,
                me: None,
            };
            match &m.target {
                FanotifyTarget::Inode {
                    ino,
                    sdev,
                    fhandle_type,
                    f_handle,
                } => {
                    let path = resolve(*sdev, *ino, *fhandle_type, f_handle).map_err(|why| {
                        refuse(format!(
                            "a mark on inode {ino} of device {}:{}, because {why}",
                            sdev >> 20,
                            sdev & 0xfffff
                        ))
                    })?;
                    e.s_dev = *sdev;
                    e.ie = Some(pb::FanotifyInodeMarkEntry {
                        i_ino: *ino,
                        f_handle: pb::FhEntry {
                            bytes: f_handle.len() as u32,
                            r#type: *fhandle_type as u32,
                            handle: handle_words(f_handle),
                            path: Some(path),
                            mnt_id: None,
                        },
                    });
                }
                FanotifyTarget::Mount { mnt_id } => {
                    let mounts = procfs::read_mountinfo(f.pid)?;
                    let mnt = mounts
                        .iter()
                        .find(|x| x.mnt_id == *mnt_id as u64)
                        .ok_or_else(|| {
                            refuse(format!(
                                "a mark on mount {mnt_id}, which the task's mountinfo lacks"
                            ))
                        })?;
                    e.r#type = MARK_MOUNT;
                    e.s_dev = kernel_dev(mnt.major, mnt.minor);
                    e.me = Some(pb::FanotifyMountMarkEntry {
                        mnt_id: *mnt_id,
                        path: Some(mnt.mount_point.clone()),
                    });
                }
                FanotifyTarget::Filesystem { sdev } => {
                    return Err(refuse(format!(
                        "a filesystem mark (FAN_MARK_FILESYSTEM) on device {}:{}, not supported",
                        sdev >> 20,
                        sdev & 0xfffff
                    )))
                }
            }
            marks.push(e);
        }
        Ok(pb::FileEntry {
            r#type: fd_type::FANOTIFY,
            id,
            ffy: Some(pb::FanotifyFileEntry {
                id,
                flags: f.info.flags & !(libc::O_CLOEXEC as u32),
                fown: Default::default(),
                faflags: info.flags,
                evflags: info.event_flags,
                mark: marks,
            }),
            ..Default::default()
        })
    }

    fn restores(&self, t: i32) -> bool {
        t == fd_type::FANOTIFY
    }

    fn open(&self, e: &pb::FileEntry, _: &mut OpenCtx) -> Result<OwnedFd> {
        let bad = |what: String| Error::BadImage {
            file: "files.img".into(),
            what: format!("fanotify file id {}: {what}", e.id),
        };
        let ffy = e
            .ffy
            .as_ref()
            .ok_or_else(|| bad("a FANOTIFY file without its ffy entry".into()))?;
        let fd = sys::fanotify_init(ffy.faflags, ffy.evflags).ctx(|| {
            format!(
                "fanotify_init({:#x}, {:#x}) for file id {}",
                ffy.faflags, ffy.evflags, e.id
            )
        })?;
        for m in &ffy.mark {
            let (path, kind) = match m.r#type {
                MARK_INODE => {
                    let ie =
                        m.ie.as_ref()
                            .ok_or_else(|| bad("an inode mark without its inode".into()))?;
                    let path = ie.f_handle.path.as_deref().ok_or_else(|| {
                        bad(format!("the mark on inode {} has no path", ie.i_ino))
                    })?;
                    let md = std::fs::symlink_metadata(path).map_err(|err| Error::FileChanged {
                        path: path.into(),
                        what: format!("the file a fanotify mark was on cannot be found ({err})"),
                    })?;
                    if md.ino() != ie.i_ino || md.dev() != user_dev(m.s_dev) {
                        return Err(Error::FileChanged {
                            path: path.into(),
                            what: "the path of a fanotify mark names another file".into(),
                        });
                    }
                    (path, FAN_MARK_DONT_FOLLOW)
                }
                MARK_MOUNT => {
                    let me =
                        m.me.as_ref()
                            .ok_or_else(|| bad("a mount mark without its mount".into()))?;
                    let path = me.path.as_deref().ok_or_else(|| {
                        bad(format!("the mark on mount {} has no path", me.mnt_id))
                    })?;
                    (path, FAN_MARK_MOUNT)
                }
                t => return Err(bad(format!("mark type {t} is unknown"))),
            };
            let add = |flags: u32, mask: u32| {
                sys::fanotify_mark(
                    &fd,
                    FAN_MARK_ADD | kind | flags,
                    mask as u64,
                    Path::new(path),
                )
                .ctx(|| format!("fanotify_mark({path}, {flags:#x}, {mask:#x})"))
            };
            let evictable = m.mflags & FAN_MARK_EVICTABLE;
            if m.mask != 0 {
                add(evictable, m.mask)?;
            }
            if m.ignored_mask != 0 {
                let how = if m.mflags & FAN_MARK_IGNORE != 0 {
                    FAN_MARK_IGNORE
                } else {
                    FAN_MARK_IGNORED_MASK
                };
                add(
                    evictable | how | (m.mflags & FAN_MARK_IGNORED_SURV_MODIFY),
                    m.ignored_mask,
                )?;
            }
        }
        Ok(fd)
    }
}

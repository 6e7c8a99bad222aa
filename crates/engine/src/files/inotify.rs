//! inotify instances: an `inotify_file_entry` with one `inotify_wd_entry
//! {wd, i_ino, s_dev, mask, ignored_mask, f_handle}` per watch, from the
//! `inotify wd:` lines of the fd's fdinfo.
//!
//! At dump each watched inode is opened by its file handle
//! (open_by_handle_at on a mount of its filesystem) and its path read back
//! from /proc/self/fd; the path goes into the handle entry's `path` (as
//! CRIU's irmap does), and must still name that inode: a watch on a
//! deleted file, or on a filesystem without file handles, is refused.
//!
//! At restore the watches are added again in increasing wd order, each
//! after INOTIFY_IOC_SETNEXTWD with its wd, so that every watch keeps its
//! watch descriptor; a path that now names another inode is refused.
//! Events queued but not read at dump are lost, as with CRIU.

use std::collections::HashSet;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crust_image::pb;
use crust_sys::eventfds as sys;
use crust_sys::procfs;

use super::evfd::proc_err;
use super::{fd_type, DumpCtx, FileKind, OpenCtx, OpenFd};
use crate::error::{Context, Error, Result};

/// CRIU keeps at least this many u64 words of handle (fh_entry_sizes).
const FH_MIN_WORDS: usize = 16;

/// inotify instances.
pub struct Inotify;

/// A kernel `s_dev` (major << 20 | minor) as a userspace dev_t.
pub(super) fn user_dev(s_dev: u32) -> u64 {
    libc::makedev(s_dev >> 20, s_dev & 0xfffff)
}

/// The path of the inode a handle names, on the device `s_dev`, or why
/// there is none.
pub(super) fn resolve(
    s_dev: u32,
    ino: u64,
    ty: i32,
    handle: &[u8],
) -> std::result::Result<String, String> {
    let mounts = procfs::read_mountinfo(std::process::id() as i32).map_err(|e| e.to_string())?;
    let (major, minor) = (s_dev >> 20, s_dev & 0xfffff);
    let mut candidates: Vec<_> = mounts
        .iter()
        .filter(|m| m.major == major && m.minor == minor)
        .collect();
    if candidates.is_empty() {
        return Err(format!(
            "its filesystem ({major}:{minor}) is not mounted here"
        ));
    }
    candidates.sort_by_key(|m| m.root != "/");
    let mut why = String::from("it cannot be opened by its handle");
    for m in candidates {
        let Ok(mnt) = std::fs::File::open(&m.mount_point) else {
            continue;
        };
        let file = match sys::open_by_handle(&mnt, ty, handle) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ESTALE) => return Err("it was deleted".into()),
            Err(e) => {
                why = format!("it cannot be opened by its handle ({e})");
                continue;
            }
        };
        let link = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .map_err(|e| e.to_string())?
            .to_string_lossy()
            .into_owned();
        if link.ends_with(" (deleted)") {
            return Err("it was deleted".into());
        }
        match std::fs::symlink_metadata(&link) {
            Ok(md) if md.ino() == ino && md.dev() == user_dev(s_dev) => return Ok(link),
            _ => why = format!("its path {link} is not reachable here"),
        }
    }
    Err(why)
}

pub(super) fn handle_words(handle: &[u8]) -> Vec<u64> {
    let mut words: Vec<u64> = handle
        .chunks(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(b)
        })
        .collect();
    if words.len() < FH_MIN_WORDS {
        words.resize(FH_MIN_WORDS, 0);
    }
    words
}

impl FileKind for Inotify {
    fn claims(&self, f: &OpenFd, _: &DumpCtx) -> bool {
        f.link == "anon_inode:inotify"
    }

    fn dump(&self, f: &OpenFd, id: u32, _: &mut DumpCtx) -> Result<pb::FileEntry> {
        let watches = f.info.inotify_wds().map_err(|e| proc_err(f, e))?;
        let mut wds = Vec::with_capacity(watches.len());
        for w in watches {
            let refuse = |why: String| Error::Unsupported {
                pid: f.pid,
                what: format!(
                    "{}: inotify watch {} on inode {} of device {}:{}, because {why}",
                    f.describe(),
                    w.wd,
                    w.ino,
                    w.sdev >> 20,
                    w.sdev & 0xfffff
                ),
            };
            let (Some(ty), Some(handle)) = (w.fhandle_type, w.f_handle.as_ref()) else {
                return Err(refuse("its filesystem has no file handles".into()));
            };
            let path = resolve(w.sdev, w.ino, ty, handle).map_err(refuse)?;
            wds.push(pb::InotifyWdEntry {
                id,
                i_ino: w.ino,
                mask: w.mask,
                ignored_mask: w.ignored_mask,
                s_dev: w.sdev,
                wd: w.wd as u32,
                f_handle: pb::FhEntry {
                    bytes: handle.len() as u32,
                    r#type: ty as u32,
                    handle: handle_words(handle),
                    path: Some(path),
                    mnt_id: None,
                },
            });
        }
        Ok(pb::FileEntry {
            r#type: fd_type::INOTIFY,
            id,
            ify: Some(pb::InotifyFileEntry {
                id,
                flags: f.info.flags & !(libc::O_CLOEXEC as u32),
                fown: Default::default(),
                wd: wds,
            }),
            ..Default::default()
        })
    }

    fn restores(&self, t: i32) -> bool {
        t == fd_type::INOTIFY
    }

    fn open(&self, e: &pb::FileEntry, _: &mut OpenCtx) -> Result<OwnedFd> {
        let bad = |what: String| Error::BadImage {
            file: "files.img".into(),
            what: format!("inotify file id {}: {what}", e.id),
        };
        let ify = e
            .ify
            .as_ref()
            .ok_or_else(|| bad("an INOTIFY file without its ify entry".into()))?;
        let flags = (ify.flags & libc::O_NONBLOCK as u32) as i32 | libc::IN_CLOEXEC;
        let fd = sys::inotify_init(flags).ctx(|| format!("inotify_init for file id {}", e.id))?;
        let mut wds: Vec<&pb::InotifyWdEntry> = ify.wd.iter().collect();
        wds.sort_by_key(|w| w.wd);
        let mut seen = HashSet::new();
        for w in wds {
            if w.wd == 0 || w.wd > i32::MAX as u32 || !seen.insert(w.wd) {
                return Err(bad(format!(
                    "watch descriptor {} is invalid or listed twice",
                    w.wd
                )));
            }
            let path = w
                .f_handle
                .path
                .as_deref()
                .ok_or_else(|| bad(format!("watch {} has no path", w.wd)))?;
            let md = std::fs::symlink_metadata(path).map_err(|err| Error::FileChanged {
                path: path.into(),
                what: format!(
                    "the file inotify watch {} watched cannot be found ({err})",
                    w.wd
                ),
            })?;
            if md.ino() != w.i_ino || md.dev() != user_dev(w.s_dev) {
                return Err(Error::FileChanged {
                    path: path.into(),
                    what: format!("the path of inotify watch {} names another file", w.wd),
                });
            }
            let wd = w.wd as i32;
            let next = sys::inotify_set_next_wd(&fd, wd);
            let got = sys::inotify_add_watch(&fd, Path::new(path), w.mask | libc::IN_DONT_FOLLOW)
                .ctx(|| format!("inotify_add_watch({path}, {:#x})", w.mask))?;
            if got != wd {
                return Err(match next {
                    Err(err) => Error::Kernel(format!(
                        "INOTIFY_IOC_SETNEXTWD ({err}), to give the inotify watch on {path} its wd {wd} (got {got})"
                    )),
                    Ok(()) => Error::Sys {
                        what: format!("the inotify watch on {path} got wd {got}, not {wd}"),
                        err: std::io::Error::from_raw_os_error(libc::EEXIST),
                    },
                });
            }
        }
        Ok(fd)
    }
}

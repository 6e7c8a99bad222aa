//! A task's fs state: cwd, root and umask (fs-PID.img).

use crust_image::pb;
use crust_sys::procfs::Status;

use crate::error::{Context, Error, Result};
use crate::files::FileTable;

/// Dump cwd and root (as directory entries of files.img) and umask.
pub fn dump(pid: i32, status: &Status, files: &mut FileTable) -> Result<pb::FsEntry> {
    let link = |what: &str| -> Result<String> {
        Ok(std::fs::read_link(format!("/proc/{pid}/{what}"))
            .ctx(|| format!("reading /proc/{pid}/{what}"))?
            .to_string_lossy()
            .into_owned())
    };
    let cwd = link("cwd")?;
    let root = link("root")?;
    let dir_flags = (libc::O_RDONLY | libc::O_DIRECTORY) as u32;
    for (what, p) in [("working directory", &cwd), ("root", &root)] {
        if p.ends_with(" (deleted)") {
            return Err(Error::Unsupported {
                pid,
                what: format!("a deleted {what} {p} (not supported yet)"),
            });
        }
    }
    Ok(pb::FsEntry {
        cwd_id: files.add_path(pid, &cwd, dir_flags, 0)?,
        root_id: files.add_path(pid, &root, dir_flags, 0)?,
        umask: Some(status.umask.unwrap_or(0o022)),
    })
}

/// In the restored child: chdir to cwd, then chroot to root (if not "/"),
/// then set the umask.
pub fn apply(cwd: &str, root: &str, umask: Option<u32>) -> Result<()> {
    nix::unistd::chdir(cwd).ctx(|| format!("chdir to {cwd}"))?;
    if root != "/" {
        nix::unistd::chroot(root).ctx(|| format!("chroot to {root}"))?;
    }
    if let Some(m) = umask {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(m as libc::mode_t));
    }
    Ok(())
}

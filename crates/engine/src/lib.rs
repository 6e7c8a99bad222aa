//! crust-engine: checkpoint and restore of Linux processes, as a library.
//!
//! [`dump`] freezes a task, writes its state to a folder of CRIU-format
//! images and lets it go (kills it by default); [`restore`] brings it back
//! from the images with its pid, memory, files and registers. One module per
//! kind of state holds both directions.

pub mod aio;
pub mod creds;
mod dump;
pub mod error;
pub mod files;
pub mod fs;
pub mod images;
pub mod mm;
mod movers;
pub mod pending;
pub mod remote;
mod restore;
pub mod sessions;
pub mod shmem;
pub mod signal;
pub mod task;
pub mod timers;
pub mod tree;

use std::path::PathBuf;
use std::time::Instant;

use crust_image::{names, pb};
use crust_sys::procfs;
use crust_sys::ptrace;

use error::Context;
pub use error::{Error, Result};
pub use files::DEFAULT_GHOST_LIMIT;
use images::ImageDir;
use remote::Remote;

/// CRIU's image version (CRIU_IMAGES_V1_1).
pub(crate) const IMG_VERSION: u32 = 2;

/// What to dump and how.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// The task to dump.
    pub pid: i32,
    /// Where the images go (created if missing).
    pub images_dir: PathBuf,
    /// Let the task run on after the dump.
    pub leave_running: bool,
    /// Leave the task stopped after the dump.
    pub leave_stopped: bool,
    /// The task is a shell job: its terminal is the shell's.
    pub shell_job: bool,
    /// The largest deleted-but-open file dumped (as a ghost file), bytes;
    /// [`DEFAULT_GHOST_LIMIT`] is CRIU's default.
    pub ghost_limit: u64,
    /// Dump the file locks and leases the tasks hold (CRIU's
    /// `--file-locks`); without it a task holding one is refused.
    pub file_locks: bool,
}

/// Figures of a finished dump.
#[derive(Debug, Clone, Default)]
pub struct DumpStats {
    /// Time to seize and stop the task, microseconds.
    pub freezing_us: u64,
    /// Time the task was frozen, microseconds.
    pub frozen_us: u64,
    /// Time spent copying pages, microseconds.
    pub memdump_us: u64,
    /// Pages looked at.
    pub pages_scanned: u64,
    /// Pages written.
    pub pages_written: u64,
}

pub(crate) fn us(since: Instant) -> u64 {
    since.elapsed().as_micros() as u64
}

/// Refuse to run without the privileges crust needs: CAP_SYS_ADMIN and
/// CAP_SYS_PTRACE (root, or a user given them); returns who runs it.
fn check_privileges() -> Result<creds::Caller> {
    let status = procfs::read_status(std::process::id() as i32)?;
    let caller = creds::Caller::of(&status)?;
    for (bit, name) in [(21, "CAP_SYS_ADMIN"), (19, "CAP_SYS_PTRACE")] {
        if status.cap_eff & (1u64 << bit) == 0 {
            return Err(Error::Privilege(format!(
                "{name}, which this process lacks: run it as root (sudo)"
            )));
        }
    }
    Ok(caller)
}

/// Checkpoint the task `opts.pid` into `opts.images_dir`. On failure the
/// task runs on unchanged and the files this dump wrote are removed.
pub fn dump(opts: &DumpOptions) -> Result<DumpStats> {
    let caller = check_privileges()?;
    let pid = opts.pid;
    tree::check_target(pid)?;
    prepare_images_dir(&opts.images_dir)?;
    let dir = ImageDir::new(&opts.images_dir);
    let res = dump::dump_into(opts, &dir, &caller);
    if res.is_err() {
        dir.discard();
    }
    res
}

/// Create the images dir if needed, check it is a writable directory, and
/// remove an old inventory and manifest so that a new, partial dump never
/// looks whole.
fn prepare_images_dir(path: &std::path::Path) -> Result<()> {
    let shown = path.display();
    if path.exists() && !path.is_dir() {
        return Err(Error::Sys {
            what: format!("using {shown} as the images dir"),
            err: std::io::Error::from_raw_os_error(libc::ENOTDIR),
        });
    }
    std::fs::create_dir_all(path).ctx(|| format!("creating the images dir {shown}"))?;
    nix::unistd::access(path, nix::unistd::AccessFlags::W_OK)
        .ctx(|| format!("writing into the images dir {shown}"))?;
    for name in [names::INVENTORY, crust_image::manifest::MANIFEST] {
        let old = path.join(name);
        if old.exists() {
            std::fs::remove_file(&old).ctx(|| format!("removing the old {}", old.display()))?;
        }
    }
    Ok(())
}

/// What to restore and how.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The images.
    pub images_dir: PathBuf,
    /// The task was dumped as a shell job: give it crust's terminal.
    pub shell_job: bool,
    /// Restore the tree inside a new pid namespace (with its dumped pids
    /// there), under a small init that reaps orphans.
    pub new_pid_ns: bool,
    /// Refuse images without a crust manifest (by default they are
    /// restored unverified, with a warning: CRIU writes none).
    pub strict_images: bool,
    /// Open and create the paths the images name with crust's own
    /// privileges (as CRIU does) even when someone other than a root
    /// caller could have written the images; by default such images have
    /// their paths opened as the restored task that holds them could.
    pub trust_image_paths: bool,
}

/// A restored tree, as crust sees it.
#[derive(Debug, Clone, Copy)]
pub struct Restored {
    /// The root process's pid (in crust's pid namespace).
    pub root: i32,
    /// crust's child, to wait for: the root, or with `new_pid_ns` the init
    /// of the new namespace, whose exit status is the root's.
    pub child: i32,
}

/// Restore the tree in `opts.images_dir`. The tree runs when this returns.
/// The images are checked against their manifest first, before any is
/// read; page images piece by piece (1 MiB), each piece before any of its
/// bytes goes into a process.
pub fn restore(opts: &RestoreOptions) -> Result<Restored> {
    let caller = check_privileges()?;
    let page_sums = images::verify_for_restore(&opts.images_dir, opts.strict_images)?;
    let confine = match caller {
        _ if opts.trust_image_paths => None,
        creds::Caller::Root => images::written_by_others(&opts.images_dir)?,
        creds::Caller::User { uid, .. } => Some(format!("crust runs as uid {uid}, not root")),
    };
    restore::restore(opts, confine, page_sums)
}

/// Wait for a restored task (crust's child) to end; returns its exit code,
/// or 128 + the signal that killed it, as a shell reports it.
pub fn wait_for(pid: i32) -> Result<i32> {
    use nix::sys::wait::{waitpid, WaitStatus};
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), None).ctx(|| format!("waiting for {pid}"))? {
            WaitStatus::Exited(_, code) => return Ok(code),
            WaitStatus::Signaled(_, sig, _) => return Ok(128 + sig as i32),
            _ => continue,
        }
    }
}

/// Check that this kernel and these privileges have what crust needs;
/// returns what was verified, or the first missing piece.
pub fn check() -> Result<Vec<String>> {
    let caller = check_privileges()?;
    let mut ok = vec![match caller {
        creds::Caller::Root => "root with CAP_SYS_ADMIN and CAP_SYS_PTRACE".to_string(),
        creds::Caller::User { uid, .. } => format!(
            "uid {uid} with CAP_SYS_ADMIN and CAP_SYS_PTRACE: it may dump and restore only its own tasks"
        ),
    }];
    let me = std::process::id() as i32;
    let maps = procfs::read_maps(me)?;
    for (name, path) in [
        ("[vvar]", procfs::VmaPath::Vvar),
        ("[vdso]", procfs::VmaPath::Vdso),
    ] {
        if !maps.iter().any(|v| v.path == path) {
            return Err(Error::Kernel(format!("a {name} mapping")));
        }
    }
    ok.push("vdso layout: [vvar], [vdso] mapped".into());
    let pidfd = crust_sys::pidfd::pidfd_open(me).ctx(|| "pidfd_open".into())?;
    crust_sys::pidfd::pidfd_getfd(&pidfd, pidfd_raw(&pidfd))
        .map_err(|e| Error::Kernel(format!("pidfd_getfd ({e})")))?;
    ok.push("pidfd_open, pidfd_getfd".into());
    crust_sys::probe::pagemap_scan()
        .map_err(|e| Error::Kernel(format!("the PAGEMAP_SCAN ioctl ({e})")))?;
    ok.push("PAGEMAP_SCAN".into());
    crust_sys::probe::userfaultfd().map_err(|e| Error::Kernel(format!("userfaultfd ({e})")))?;
    ok.push("userfaultfd".into());
    if !std::path::Path::new("/proc/self/map_files").exists() {
        return Err(Error::Kernel(
            "CONFIG_CHECKPOINT_RESTORE (/proc/PID/map_files)".into(),
        ));
    }
    ok.push("CONFIG_CHECKPOINT_RESTORE".into());
    // A child with a chosen pid, driven with remote syscalls.
    let pid = free_pid()?;
    let plan = tree::ForkPlan {
        entries: vec![pb::PstreeEntry {
            pid: pid as u32,
            ppid: 0,
            pgid: pid as u32,
            sid: pid as u32,
            threads: vec![pid as u32],
        }],
        zombies: Default::default(),
        new_pid_ns: false,
        lineage: Default::default(),
    };
    let setup = tree::Setup {
        before_children: &|_| Ok(()),
        last: &|_, _| Ok(()),
    };
    let child = tree::fork_tree(&plan, &setup)
        .map_err(|e| Error::Kernel(format!("clone3 with set_tid ({e})")))?;
    tree::seize_restored(pid)?;
    ok.push(format!("clone3 with set_tid (made pid {pid}), ptrace"));
    let regs = ptrace::get_regs(pid).ctx(|| "PTRACE_GETREGS".into())?;
    let mut r = Remote::new(pid, regs)?;
    let got = r.call("getpid", libc::SYS_getpid, [0; 6])?;
    if got != pid as u64 {
        return Err(Error::Kernel(format!(
            "remote syscalls (getpid gave {got}, not {pid})"
        )));
    }
    ok.push("remote syscalls at a vdso syscall instruction".into());
    r.map_scratch(None)?;
    const PR_SET_MM: u64 = 35;
    const PR_SET_MM_MAP_SIZE: u64 = 15;
    r.call(
        "prctl(PR_SET_MM, PR_SET_MM_MAP_SIZE)",
        libc::SYS_prctl,
        [PR_SET_MM, PR_SET_MM_MAP_SIZE, r.scratch(), 0, 0, 0],
    )
    .map_err(|e| Error::Kernel(format!("PR_SET_MM_MAP ({e})")))?;
    ok.push("PR_SET_MM_MAP".into());
    ptrace::get_rseq_config(pid)
        .map_err(|e| Error::Kernel(format!("PTRACE_GET_RSEQ_CONFIGURATION ({e})")))?;
    ok.push("PTRACE_GET_RSEQ_CONFIGURATION".into());
    drop(child);
    Ok(ok)
}

fn pidfd_raw(fd: &std::os::fd::OwnedFd) -> i32 {
    use std::os::fd::AsRawFd;
    fd.as_raw_fd()
}

/// A pid number nobody uses, well above the last one handed out.
fn free_pid() -> Result<i32> {
    let last: i32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .ctx(|| "reading /proc/sys/kernel/ns_last_pid".into())?
        .trim()
        .parse()
        .unwrap_or(300);
    let max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ctx(|| "reading /proc/sys/kernel/pid_max".into())?
        .trim()
        .parse()
        .unwrap_or(32768);
    (0..max)
        .map(|i| 300 + (last - 300 + 1000 + i).rem_euclid(max - 300))
        .find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        .ok_or_else(|| Error::Kernel("a free pid".into()))
}

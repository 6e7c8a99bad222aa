//! crust-engine: checkpoint and restore of Linux processes, as a library.
//!
//! [`dump`] freezes a task, writes its state to a folder of CRIU-format
//! images and lets it go (kills it by default); [`restore`] brings it back
//! from the images with its pid, memory, files and registers. One module per
//! kind of state holds both directions.

pub mod error;
pub mod files;
pub mod fs;
pub mod images;
pub mod mm;
pub mod remote;
pub mod signal;
pub mod task;
pub mod tree;

use std::path::PathBuf;
use std::time::Instant;

use crust_image::{names, pb, ImageKind};
use crust_sys::mmap::PageFile;
use crust_sys::procfs;
use crust_sys::ptrace;

use error::Context;
pub use error::{Error, Result};
use files::{FdOptions, FileTable};
use images::ImageDir;
use remote::Remote;
use tree::{Frozen, Release};

/// CRIU's image version (CRIU_IMAGES_V1_1).
const IMG_VERSION: u32 = 2;

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

fn us(since: Instant) -> u64 {
    since.elapsed().as_micros() as u64
}

/// Refuse to run without the privileges crust needs.
fn check_privileges() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::Privilege(
            "root (CAP_SYS_ADMIN and CAP_SYS_PTRACE); run it with sudo".into(),
        ));
    }
    let status = procfs::read_status(std::process::id() as i32)?;
    for (bit, name) in [(21, "CAP_SYS_ADMIN"), (19, "CAP_SYS_PTRACE")] {
        if status.cap_eff & (1u64 << bit) == 0 {
            return Err(Error::Privilege(format!(
                "{name}, which this process lacks"
            )));
        }
    }
    Ok(())
}

/// Checkpoint the task `opts.pid` into `opts.images_dir`. On failure the
/// task runs on unchanged and the files this dump wrote are removed.
pub fn dump(opts: &DumpOptions) -> Result<DumpStats> {
    check_privileges()?;
    let pid = opts.pid;
    tree::check_target(pid)?;
    tree::check_single(pid)?;
    prepare_images_dir(&opts.images_dir)?;
    let dir = ImageDir::new(&opts.images_dir);
    let res = dump_into(opts, &dir);
    if res.is_err() {
        dir.discard();
    }
    res
}

/// Create the images dir if needed, check it is a writable directory, and
/// remove an old inventory so that a new, partial dump never looks whole.
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
    let inventory = path.join(names::INVENTORY);
    if inventory.exists() {
        std::fs::remove_file(&inventory)
            .ctx(|| format!("removing the old {}", inventory.display()))?;
    }
    Ok(())
}

fn dump_into(opts: &DumpOptions, dir: &ImageDir) -> Result<DumpStats> {
    let pid = opts.pid;
    let pages_id = 1u32;
    let pages_name = names::pages(pages_id);
    let pages_path = dir.create(&pages_name);
    // Allocate the page image before the freeze, so the frozen window only
    // copies.
    let estimate = mm::estimate_page_bytes(pid)?;
    let slack = 8 << 20;
    let mut pages = PageFile::create(&pages_path, estimate + slack)
        .ctx(|| format!("allocating {}", pages_path.display()))?;

    let bufs = mm::PageBuffers::new();
    let t0 = Instant::now();
    let frozen = Frozen::seize(pid)?;
    let freezing_us = us(t0);
    let t_frozen = Instant::now();
    // Re-check under the freeze: the task may have cloned meanwhile.
    tree::check_single(pid)?;
    let stat = procfs::read_stat(pid)?;
    let status = procfs::read_status(pid)?;
    if stat.session != pid && !opts.shell_job {
        return Err(Error::Unsupported {
            pid,
            what: format!(
                "a task whose session leader (sid {}) is outside the dumped tree without --shell-job (-j)",
                stat.session
            ),
        });
    }
    let fd_opts = FdOptions {
        shell_job: opts.shell_job,
    };
    let thread = task::read_thread(pid)?;

    let mut r = Remote::new(pid, thread.regs)?;
    ptrace::set_sigmask(pid, u64::MAX).ctx(|| format!("blocking signals of {pid}"))?;
    let asked = (|| -> Result<_> {
        r.map_scratch(None)?;
        let facts = task::ask(&r)?;
        let sigactions = signal::dump(&r)?;
        Ok((facts, sigactions))
    })();
    let cleanup = r.unmap_scratch();
    ptrace::set_sigmask(pid, thread.sigmask)
        .ctx(|| format!("restoring the signal mask of {pid}"))?;
    ptrace::set_regs(pid, &thread.regs).ctx(|| format!("restoring the registers of {pid}"))?;
    let (facts, sigactions) = asked?;
    cleanup?;

    let mut files = FileTable::new();
    let fs_entry = fs::dump(pid, &status, &mut files)?;
    let fdinfos = files::dump_fds(pid, &mut files, &fd_opts)?;
    let mut mm_dump = mm::collect(pid, &stat, facts.brk, &mut files)?;
    mm_dump.entry.dumpable = Some(facts.dumpable);
    let ids = pb::TaskKobjIdsEntry {
        vm_id: 1,
        files_id: 1,
        fs_id: 1,
        sighand_id: 1,
        ..Default::default()
    };
    let core = task::core_entry(pid, &stat, &status, &thread, &facts, sigactions, ids)?;

    // Pages: straight from the task into the page image.
    let t_mem = Instant::now();
    let nr_pages = mm_dump.nr_pages();
    let need = nr_pages * mm::PAGE;
    if need > pages.len() {
        drop(pages);
        pages = PageFile::create(&pages_path, need)
            .ctx(|| format!("allocating {}", pages_path.display()))?;
    }
    mm_dump.read_pages(pid, &pages, &pages_path, bufs)?;
    pages
        .finish(need)
        .ctx(|| format!("writing {}", pages_path.display()))?;
    let memdump_us = us(t_mem);

    let upid = pid as u32;
    dir.write(
        names::PSTREE,
        ImageKind::Pstree,
        &[tree::pstree_entry(&stat)],
    )?;
    dir.write(&names::core(upid), ImageKind::Core, &[core])?;
    dir.write(&names::ids(upid), ImageKind::Ids, &[ids])?;
    dir.write(&names::mm(upid), ImageKind::Mm, &[mm_dump.entry.clone()])?;
    {
        let path = dir.create(&names::pagemap(upid as u64));
        let io = |e| crust_image::ImageError::io(path.display().to_string(), e);
        let f = std::fs::File::create(&path).map_err(io)?;
        let mut w = crust_image::ImageWriter::new(std::io::BufWriter::new(f), ImageKind::Pagemap)
            .map_err(io)?;
        w.write_entry(&pb::PagemapHead { pages_id }).map_err(io)?;
        for e in mm_dump.pagemap_entries() {
            w.write_entry(&e).map_err(io)?;
        }
        let f = w
            .finish()
            .map_err(io)?
            .into_inner()
            .map_err(|e| io(e.into_error()))?;
        f.sync_all().map_err(io)?;
    }
    dir.write(names::FILES, ImageKind::Files, files.entries())?;
    dir.write(&names::fdinfo(1), ImageKind::Fdinfo, &fdinfos)?;
    dir.write(&names::fs(upid), ImageKind::Fs, &[fs_entry])?;
    let frozen_us = us(t_frozen);
    let stats = DumpStats {
        freezing_us,
        frozen_us,
        memdump_us,
        pages_scanned: mm_dump
            .entry
            .vmas
            .iter()
            .map(|v| (v.end - v.start) / mm::PAGE)
            .sum(),
        pages_written: nr_pages,
    };
    dir.write(
        names::STATS_DUMP,
        ImageKind::StatsDump,
        &[pb::StatsEntry {
            dump: Some(pb::DumpStatsEntry {
                freezing_time: stats.freezing_us as u32,
                frozen_time: stats.frozen_us as u32,
                memdump_time: stats.memdump_us as u32,
                memwrite_time: stats.memdump_us as u32,
                pages_scanned: stats.pages_scanned,
                pages_skipped_parent: 0,
                pages_written: stats.pages_written,
                ..Default::default()
            }),
            restore: None,
        }],
    )?;
    // The inventory goes last: without it, a folder is not an image set.
    dir.write(
        names::INVENTORY,
        ImageKind::Inventory,
        &[pb::InventoryEntry {
            img_version: IMG_VERSION,
            fdinfo_per_id: Some(true),
            root_ids: Some(ids),
            ns_per_id: Some(true),
            ..Default::default()
        }],
    )?;
    dir.sync()?;
    let how = if opts.leave_stopped {
        Release::Stop
    } else if opts.leave_running {
        Release::Resume
    } else {
        Release::Kill
    };
    frozen.release(how)?;
    Ok(DumpStats {
        frozen_us: us(t_frozen),
        ..stats
    })
}

/// What to restore and how.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The images.
    pub images_dir: PathBuf,
    /// The task was dumped as a shell job: give it crust's terminal.
    pub shell_job: bool,
}

/// Everything a restore reads from the images, checked before any process
/// is created.
struct Plan {
    pid: i32,
    sid: i32,
    pgid: i32,
    core: pb::CoreEntry,
    core_name: String,
    mm: pb::MmEntry,
    pagemap: Vec<pb::PagemapEntry>,
    pages: PageFile,
    pages_name: String,
    files: std::collections::HashMap<u32, pb::FileEntry>,
    fdinfos: Vec<pb::FdinfoEntry>,
    fdinfo_name: String,
    fs: pb::FsEntry,
}

fn bad(file: &str, what: impl Into<String>) -> Error {
    Error::BadImage {
        file: file.to_string(),
        what: what.into(),
    }
}

fn load(dir: &ImageDir) -> Result<Plan> {
    let inv: pb::InventoryEntry = dir.read_one(names::INVENTORY, ImageKind::Inventory)?;
    if inv.img_version != IMG_VERSION {
        return Err(bad(
            names::INVENTORY,
            format!(
                "image version {} (crust reads {IMG_VERSION})",
                inv.img_version
            ),
        ));
    }
    let tree: Vec<pb::PstreeEntry> = dir.read(names::PSTREE, ImageKind::Pstree)?;
    let [root] = tree.as_slice() else {
        return Err(bad(
            names::PSTREE,
            format!(
                "holds {} processes; crust restores a single process so far",
                tree.len()
            ),
        ));
    };
    if root.threads.len() != 1 || root.threads[0] != root.pid {
        return Err(bad(
            names::PSTREE,
            "the process has several threads; crust restores single-threaded processes so far",
        ));
    }
    if root.pid == 0 || root.pid > i32::MAX as u32 {
        return Err(bad(names::PSTREE, format!("invalid pid {}", root.pid)));
    }
    let pid = root.pid;
    let core_name = names::core(pid);
    let mut cores: Vec<pb::CoreEntry> = dir.read(&core_name, ImageKind::Core)?;
    if cores.len() != 1 {
        return Err(bad(
            &core_name,
            format!("holds {} entries, expected 1", cores.len()),
        ));
    }
    let core = cores.remove(0);
    task::parts(&core, &core_name)?;
    let ids: pb::TaskKobjIdsEntry = dir.read_one(&names::ids(pid), ImageKind::Ids)?;
    let mm_name = names::mm(pid);
    let mm: pb::MmEntry = dir.read_one(&mm_name, ImageKind::Mm)?;
    let pagemap_name = names::pagemap(pid as u64);
    let (head, pagemap) = crust_image::read_pagemap(&dir.file(&pagemap_name))?;
    let pages_name = names::pages(head.pages_id);
    let pages_path = dir.create(&pages_name);
    let pages = PageFile::open(&pages_path)
        .map_err(|e| crust_image::ImageError::io(pages_path.display().to_string(), e))?;
    mm::check_pagemap(&mm, &pagemap, pages.len(), &pagemap_name, &pages_name)?;
    let file_list: Vec<pb::FileEntry> = dir.read(names::FILES, ImageKind::Files)?;
    let files = file_list.into_iter().map(|f| (f.id, f)).collect();
    let fdinfo_name = names::fdinfo(ids.files_id);
    let fdinfos = dir.read(&fdinfo_name, ImageKind::Fdinfo)?;
    let fs = dir.read_one(&names::fs(pid), ImageKind::Fs)?;
    Ok(Plan {
        pid: pid as i32,
        sid: root.sid as i32,
        pgid: root.pgid as i32,
        core,
        core_name,
        mm,
        pagemap,
        pages,
        pages_name,
        files,
        fdinfos,
        fdinfo_name,
        fs,
    })
}

fn reg_path<'a>(plan: &'a Plan, id: u32, what: &str) -> Result<&'a pb::RegFileEntry> {
    plan.files
        .get(&id)
        .and_then(|f| f.reg.as_ref())
        .ok_or_else(|| {
            bad(
                names::FILES,
                format!("the {what} (file id {id}) is missing"),
            )
        })
}

/// Restore the task in `opts.images_dir`; returns its pid. The task runs
/// when this returns; it is crust's child.
pub fn restore(opts: &RestoreOptions) -> Result<i32> {
    check_privileges()?;
    let t0 = Instant::now();
    let dir = ImageDir::new(&opts.images_dir);
    let plan = load(&dir)?;
    let parts = task::parts(&plan.core, &plan.core_name)?;
    task::check_rlimits(parts.tc)?;
    let reg_index: mm::FileIndex = plan
        .files
        .values()
        .filter_map(|f| f.reg.clone().map(|r| (f.id, r)))
        .collect();
    for v in &plan.mm.vmas {
        if v.status & (mm::VMA_FILE_PRIVATE | mm::VMA_FILE_SHARED) != 0 {
            let r = reg_path(&plan, v.shmid as u32, "mapped file")?;
            files::check_unchanged(r)?;
        }
    }
    let exe = reg_path(&plan, plan.mm.exe_file_id, "exe file")?;
    files::check_unchanged(exe)?;
    let cwd = reg_path(&plan, plan.fs.cwd_id, "working directory")?
        .name
        .clone();
    let root = reg_path(&plan, plan.fs.root_id, "root directory")?
        .name
        .clone();
    let fd_opts = FdOptions {
        shell_job: opts.shell_job,
    };
    let prepared = files::prepare(&plan.files, &plan.fdinfos, &plan.fdinfo_name, &fd_opts)?;
    let pid = plan.pid;
    let own_session = plan.sid == pid;
    if !own_session && !opts.shell_job {
        return Err(Error::Restore {
            pid,
            what: format!(
                "its session leader {} is not in the images; restore with --shell-job (-j)",
                plan.sid
            ),
        });
    }
    let own_group = plan.pgid == pid;
    let umask = plan.fs.umask;
    let tc = parts.tc.clone();
    let th = parts.th.clone();
    let t_fork = Instant::now();
    let child = tree::fork_task(pid, |chan| {
        if own_session {
            nix::unistd::setsid().ctx(|| "setsid".into())?;
        } else if own_group {
            nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0))
                .ctx(|| "setpgid".into())?;
        }
        prepared.install(chan)?;
        fs::apply(&cwd, &root, umask)?;
        task::apply_rlimits(&tc)?;
        task::apply_sched(&th)?;
        Ok(())
    })?;
    let forking_us = us(t_fork);
    drop(prepared);
    let cpid = child.pid();
    let regs = ptrace::get_regs(cpid).ctx(|| format!("registers of {cpid}"))?;
    let mut r = Remote::new(cpid, regs)?;
    ptrace::set_sigmask(cpid, u64::MAX).ctx(|| format!("blocking signals of {cpid}"))?;
    task::unregister_rseq(&r)?;
    mm::clear_and_move_vdso(&mut r, &plan.mm, &names::mm(pid as u32))?;
    r.map_scratch(Some(mm::scratch_gap(&plan.mm)))?;
    mm::map_and_fill(
        &r,
        &plan.mm,
        &reg_index,
        &plan.pagemap,
        &plan.pages,
        &plan.pages_name,
    )?;
    mm::set_mm_fields(&r, &plan.mm, &reg_index)?;
    signal::restore(&r, &parts.tc.sigactions, &plan.core_name)?;
    task::restore_late(&r, &parts)?;
    task::restore_dumpable(&r, plan.mm.dumpable)?;
    r.unmap_scratch()?;
    task::restore_regs(cpid, &parts, &plan.core_name)?;
    let pages_restored: u64 = plan.pagemap.iter().map(|p| p.nr_pages as u64).sum();
    dir.write(
        names::STATS_RESTORE,
        ImageKind::StatsRestore,
        &[pb::StatsEntry {
            dump: None,
            restore: Some(pb::RestoreStatsEntry {
                pages_compared: 0,
                pages_skipped_cow: 0,
                forking_time: forking_us as u32,
                restore_time: us(t0) as u32,
                pages_restored: Some(pages_restored),
            }),
        }],
    )?;
    let stop = if parts.tc.task_state == task::TASK_STOPPED {
        libc::SIGSTOP
    } else {
        0
    };
    ptrace::detach(cpid, stop).ctx(|| format!("letting {cpid} go"))?;
    child.handed_over();
    Ok(pid)
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
    check_privileges()?;
    let mut ok = vec!["root with CAP_SYS_ADMIN and CAP_SYS_PTRACE".to_string()];
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
    let child = tree::fork_task(pid, |_| Ok(()))
        .map_err(|e| Error::Kernel(format!("clone3 with set_tid ({e})")))?;
    ok.push(format!("clone3 with set_tid (made pid {pid}), ptrace"));
    let regs = ptrace::get_regs(child.pid()).ctx(|| "PTRACE_GETREGS".into())?;
    let mut r = Remote::new(child.pid(), regs)?;
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
    ptrace::get_rseq_config(child.pid())
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

//! Restore orchestration: read and check every image first, open the
//! shared files, fork the tree, then turn each process into its dumped self
//! through the state modules, and let the whole tree go at once.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use crust_image::{names, pb, ImageKind};
use crust_sys::mmap::PageFile;
use crust_sys::ptrace::{self, WaitEvent};

use crate::error::{Context, Error, Result};
use crate::files::{FdOptions, OpenCtx};
use crate::images::ImageDir;
use crate::remote::Remote;
use crate::sessions;
use crate::tree::{self, ForkPlan};
use crate::{creds, files, fs, mm, movers, signal, task, us, RestoreOptions, IMG_VERSION};

/// One live process to restore, every image of it read and checked.
struct ProcPlan {
    entry: pb::PstreeEntry,
    /// Core of each thread, the main thread first: (tid, core, file name).
    cores: Vec<(i32, pb::CoreEntry, String)>,
    mm: pb::MmEntry,
    mm_name: String,
    pagemap: Vec<pb::PagemapEntry>,
    pages: PageFile,
    pages_name: String,
    fdinfos: Vec<pb::FdinfoEntry>,
    cwd: String,
    root: String,
    /// What it does itself late: file locks, pidfds of the tree.
    late: files::LateFds,
}

/// A whole tree to restore.
struct Plan {
    entries: Vec<pb::PstreeEntry>,
    procs: HashMap<u32, ProcPlan>,
    zombies: HashMap<u32, u32>,
    files: HashMap<u32, pb::FileEntry>,
    fdinfo_names: Vec<(String, Vec<pb::FdinfoEntry>)>,
    creds: creds::Restorer,
}

fn bad(file: &str, what: impl Into<String>) -> Error {
    Error::BadImage {
        file: file.to_string(),
        what: what.into(),
    }
}

fn reg<'a>(
    files: &'a HashMap<u32, pb::FileEntry>,
    id: u32,
    what: &str,
) -> Result<&'a pb::RegFileEntry> {
    files.get(&id).and_then(|f| f.reg.as_ref()).ok_or_else(|| {
        bad(
            names::FILES,
            format!("the {what} (file id {id}) is missing"),
        )
    })
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
    let entries: Vec<pb::PstreeEntry> = dir.read(names::PSTREE, ImageKind::Pstree)?;
    if entries.is_empty() {
        return Err(bad(names::PSTREE, "holds no process"));
    }
    let mut seen = HashSet::new();
    for (i, e) in entries.iter().enumerate() {
        if e.pid == 0 || e.pid > i32::MAX as u32 {
            return Err(bad(names::PSTREE, format!("invalid pid {}", e.pid)));
        }
        if e.pgid > i32::MAX as u32 || e.sid > i32::MAX as u32 || e.ppid > i32::MAX as u32 {
            return Err(bad(
                names::PSTREE,
                format!("invalid group, session or parent of pid {}", e.pid),
            ));
        }
        if !seen.insert(e.pid) {
            return Err(bad(names::PSTREE, format!("pid {} is listed twice", e.pid)));
        }
        if i > 0 && !entries[..i].iter().any(|p| p.pid == e.ppid) {
            return Err(bad(
                names::PSTREE,
                format!(
                    "the parent {} of pid {} is not listed before it",
                    e.ppid, e.pid
                ),
            ));
        }
        for &t in &e.threads {
            if t == 0 || t > i32::MAX as u32 || (t != e.pid && !seen.insert(t)) {
                return Err(bad(
                    names::PSTREE,
                    format!("invalid or repeated thread id {t}"),
                ));
            }
        }
    }
    let files: HashMap<u32, pb::FileEntry> = dir
        .read::<pb::FileEntry>(names::FILES, ImageKind::Files)?
        .into_iter()
        .map(|f| (f.id, f))
        .collect();
    let creds = creds::Restorer::load(dir)?;
    let own_limits = task::own_hard_limits()?;
    // Files many processes map (their program, its libraries) are looked
    // at once.
    let mut unchanged: HashSet<u32> = HashSet::new();
    let mut procs = HashMap::new();
    let mut zombies = HashMap::new();
    let mut fdinfo_names = Vec::new();
    for e in &entries {
        let core_name = names::core(e.pid);
        let mut cores: Vec<pb::CoreEntry> = dir.read(&core_name, ImageKind::Core)?;
        if cores.len() != 1 {
            return Err(bad(
                &core_name,
                format!("holds {} entries, expected 1", cores.len()),
            ));
        }
        let main = cores.remove(0);
        if main
            .tc
            .as_ref()
            .is_some_and(|t| t.task_state == task::TASK_DEAD)
        {
            zombies.insert(e.pid, main.tc.as_ref().map(|t| t.exit_code).unwrap_or(0));
            continue;
        }
        if e.threads.first() != Some(&e.pid) {
            return Err(bad(
                names::PSTREE,
                format!("pid {}: its first thread must be itself", e.pid),
            ));
        }
        let parts = task::parts(&main, &core_name)?;
        crate::pending::check(&main, &core_name)?;
        crate::timers::check(&main, &core_name)?;
        let tc = parts
            .tc
            .ok_or_else(|| bad(&core_name, "the main thread's core has no tc"))?;
        task::check_rlimits(tc, &own_limits)?;
        let mut thread_cores = vec![(e.pid as i32, main, core_name)];
        for &t in e.threads.iter().skip(1) {
            let name = names::core(t);
            let mut c: Vec<pb::CoreEntry> = dir.read(&name, ImageKind::Core)?;
            if c.len() != 1 {
                return Err(bad(&name, format!("holds {} entries, expected 1", c.len())));
            }
            task::parts(&c[0], &name)?;
            crate::pending::check(&c[0], &name)?;
            thread_cores.push((t as i32, c.remove(0), name));
        }
        creds.check(e.pid, &thread_cores)?;
        let ids: pb::TaskKobjIdsEntry = dir.read_one(&names::ids(e.pid), ImageKind::Ids)?;
        let mm_name = names::mm(e.pid);
        let mm: pb::MmEntry = dir.read_one(&mm_name, ImageKind::Mm)?;
        let pagemap_name = names::pagemap(e.pid as u64);
        let (head, pagemap) = crust_image::read_pagemap(&dir.file(&pagemap_name))?;
        let pages_name = names::pages(head.pages_id);
        let pages_path = dir.file(&pages_name);
        let pages = PageFile::open(&pages_path)
            .map_err(|e| crust_image::ImageError::io(pages_path.display().to_string(), e))?;
        mm::check_pagemap(&mm, &pagemap, pages.len(), &pagemap_name, &pages_name)?;
        for id in mm::mapped_file_ids(&mm) {
            let r = reg(&files, id, "mapped file")?;
            // A ghost file is recreated from the images; its path must not
            // exist.
            if r.crust_ghost_id.is_none() && unchanged.insert(id) {
                files::check_unchanged(r)?;
            }
        }
        let exe = reg(&files, mm.exe_file_id, "exe file")?;
        if unchanged.insert(mm.exe_file_id) {
            files::check_unchanged(exe)?;
        }
        let fdinfo_name = names::fdinfo(ids.files_id);
        let fdinfos: Vec<pb::FdinfoEntry> = dir.read(&fdinfo_name, ImageKind::Fdinfo)?;
        fdinfo_names.push((fdinfo_name, fdinfos.clone()));
        let fs: pb::FsEntry = dir.read_one(&names::fs(e.pid), ImageKind::Fs)?;
        let cwd = reg(&files, fs.cwd_id, "working directory")?.name.clone();
        let root = reg(&files, fs.root_id, "root directory")?.name.clone();
        procs.insert(
            e.pid,
            ProcPlan {
                entry: e.clone(),
                cores: thread_cores,
                mm,
                mm_name,
                pagemap,
                pages,
                pages_name,
                fdinfos,
                cwd,
                root,
                late: Default::default(),
            },
        );
        let _ = fs.umask;
    }
    let tables = procs
        .iter()
        .map(|(&pid, p)| (pid, p.fdinfos.as_slice()))
        .collect();
    let mut late = files::plan_late(dir, &files, &tables, &tree_ids(&entries))?;
    for (pid, p) in procs.iter_mut() {
        p.late = late.remove(pid).unwrap_or_default();
    }
    Ok(Plan {
        entries,
        procs,
        zombies,
        files,
        fdinfo_names,
        creds,
    })
}

/// Restore the tree in `opts.images_dir`; returns the root's pid. The tree
/// runs when this returns; its root is crust's child. With `confine` (why
/// the images are not trusted), paths are opened as the tasks could.
/// `page_sums` are the manifest's sums of the page images, none checked.
pub(crate) fn restore(
    opts: &RestoreOptions,
    confine: Option<String>,
    mut page_sums: crate::images::PageSums,
) -> Result<crate::Restored> {
    let t0 = Instant::now();
    let dir = ImageDir::new(&opts.images_dir);
    let plan = load(&dir)?;
    let pids: HashSet<u32> = plan.entries.iter().map(|e| e.pid).collect();
    let zombie_pids: HashSet<u32> = plan.zombies.keys().copied().collect();
    let lineage = sessions::plan(&plan.entries, &zombie_pids, opts.shell_job)
        .map_err(sessions::bad_layout)?;
    let groups: HashSet<u32> = pids
        .iter()
        .copied()
        .chain(lineage.helpers.iter().map(|h| h.pid))
        .collect();
    let mut shmem = crate::shmem::Restorer::load(
        &dir,
        plan.procs.values().flat_map(|p| {
            p.mm.vmas
                .iter()
                .filter(|v| v.status & mm::VMA_ANON_SHARED != 0)
        }),
    )?;
    let fd_opts = FdOptions {
        shell_job: opts.shell_job,
        ghost_limit: files::DEFAULT_GHOST_LIMIT,
        file_locks: false,
    };
    // Untrusted images: paths are opened as the first process of the tree
    // that holds them.
    let mut paths = match confine {
        None => crate::creds::PathIdentities::default(),
        Some(why) => {
            tracing::info!("image paths are opened as the restored tasks could: {why}");
            crate::creds::PathIdentities::confined(why)?
        }
    };
    for e in &plan.entries {
        let Some(p) = plan.procs.get(&e.pid) else {
            continue;
        };
        paths.add_task(e.pid, &p.cores[0].1);
        for id in p
            .fdinfos
            .iter()
            .map(|f| f.id)
            .chain(mm::mapped_file_ids(&p.mm))
        {
            paths.add_holder(id, e.pid);
        }
    }
    let mut octx = OpenCtx {
        opts: fd_opts,
        dir: &dir,
        pipes: Default::default(),
        ghosts: Default::default(),
        ttys: Default::default(),
        memfds: Default::default(),
        tree: tree_ids(&plan.entries),
        paths,
    };
    octx.pipes.set_reg_entries(plan.files.values());
    let open = files::open_all(&plan.files, &plan.fdinfo_names, &mut octx)?;
    octx.pipes.finish()?;
    // Mappings of a memfd that an fd holds too open crust's copy of it.
    for (shmid, path) in octx.memfds.created() {
        shmem.provide(shmid, path);
    }
    let mapped_ghosts = files::recreate_mapped_ghosts(
        &plan.files,
        plan.procs.values().flat_map(|p| mm::mapped_file_ids(&p.mm)),
        &mut octx,
    )?;
    let files_index: mm::FileIndex = plan
        .files
        .values()
        .filter_map(|f| f.reg.clone().map(|r| (f.id, r)))
        .collect();
    let umasks: HashMap<u32, Option<u32>> = plan
        .procs
        .keys()
        .map(|&pid| {
            let fs: Option<pb::FsEntry> = dir.read_one(&names::fs(pid), ImageKind::Fs).ok();
            (pid, fs.and_then(|f| f.umask))
        })
        .collect();
    let fork_plan = ForkPlan {
        entries: plan.entries.clone(),
        zombies: plan.zombies.clone(),
        new_pid_ns: opts.new_pid_ns,
        lineage: sessions::Lineage {
            controlling_tty: octx.ttys.controlling(),
            ..lineage
        },
    };
    let t_fork = Instant::now();
    // Private memory a parent shares with its children copy-on-write is
    // premapped by the parent before it forks them.
    let cow = mm::cow_plan(fork_plan.entries.iter().filter_map(|e| {
        let p = plan.procs.get(&e.pid)?;
        Some(mm::CowProc {
            pid: e.pid,
            parent: fork_plan.fork_parent(e),
            mm: &p.mm,
            pagemap: &p.pagemap,
            pages: &p.pages,
        })
    }));
    // Each process's page image is checked by the mover that reads it,
    // piece by piece, and what is read before (premapped memory) now; the
    // others (shared memory) now, whole.
    let mut fill_sums = page_sums.defer_all(plan.procs.iter().map(|(&pid, p)| {
        let premapped = cow.get(&pid).map_or(&[][..], |c| c.as_slice());
        let early = mm::read_before_fill(&p.mm, &p.pagemap, premapped);
        (pid, p.pages_name.as_str(), p.pages.len(), early)
    }))?;
    page_sums.check_rest()?;
    let before_children = |e: &pb::PstreeEntry| -> Result<()> {
        let p = &plan.procs[&e.pid];
        let none = Vec::new();
        mm::premap_own(
            cow.get(&e.pid).unwrap_or(&none),
            &p.pagemap,
            &p.pages,
            &p.pages_name,
        )
    };
    let mapped_files = mm::MappedFiles::open(
        plan.procs
            .iter()
            .filter(|(_, p)| p.root == "/")
            .map(|(&pid, p)| (pid, &p.mm)),
        &files_index,
        &octx.paths,
    )?;
    let last = |e: &pb::PstreeEntry, keep: &mut [&mut std::os::fd::OwnedFd]| -> Result<()> {
        let p = &plan.procs[&e.pid];
        // The files it maps go right after its report and hold fds.
        let mut mine = mapped_files.dup_for(e.pid)?;
        let mut keep: Vec<&mut std::os::fd::OwnedFd> = keep
            .iter_mut()
            .map(|k| &mut **k)
            .chain(mine.iter_mut())
            .collect();
        open.install(&p.fdinfos, &mut keep)?;
        // They stay open in the task: crust closes them there.
        for f in mine {
            let _ = std::os::fd::IntoRawFd::into_raw_fd(f);
        }
        fs::apply(&p.cwd, &p.root, umasks[&e.pid])?;
        let main = task::parts(&p.cores[0].1, &p.cores[0].2)?;
        if let Some(tc) = main.tc {
            task::apply_rlimits(tc)?;
        }
        task::apply_sched(main.th)?;
        Ok(())
    };
    tracing::debug!(ms = us(t0) / 1000, "images loaded and files opened");
    let setup = tree::Setup {
        before_children: &before_children,
        last: &last,
    };
    let mut restored = tree::fork_tree(&fork_plan, &setup)?;
    let forking_us = us(t_fork);
    tracing::debug!(ms = forking_us / 1000, "tree forked");
    let t_seize = Instant::now();
    drop(open);
    let mapped_files = mapped_files.numbers();
    for r in &restored.ready {
        tree::seize_restored(r.outer)?;
        ptrace::set_sigmask(r.outer, u64::MAX)
            .ctx(|| format!("blocking signals of {}", r.outer))?;
    }
    // Every group exists now (helpers included): join them, then let the
    // helpers go.
    for r in &restored.ready {
        let e = &plan.procs[&(r.pid as u32)].entry;
        if e.pgid != e.pid && e.sid != e.pid && groups.contains(&e.pgid) {
            let regs = ptrace::get_regs(r.outer).ctx(|| format!("registers of {}", r.outer))?;
            Remote::new(r.outer, regs)?.call(
                "setpgid",
                libc::SYS_setpgid,
                [0, e.pgid as u64, 0, 0, 0, 0],
            )?;
        }
    }
    let mut reaped = HashSet::new();
    restored.release_helpers(&mut |parent, helpers| {
        let regs = ptrace::get_regs(parent).ctx(|| format!("registers of {parent}"))?;
        sessions::reap_in(&Remote::new(parent, regs)?, helpers)?;
        reaped.insert(parent);
        Ok(())
    })?;
    for (sid, pgrp) in octx.ttys.foregrounds() {
        let leader = restored.outer(sid as i32).unwrap_or(sid as i32);
        files::tty::set_foreground_in(leader, pgrp)?;
    }
    // Only now, as /dev/tty cannot be opened on a locked pty.
    octx.ttys.finish()?;
    tracing::debug!(ms = us(t_seize) / 1000, "tree seized, groups joined");
    let t_transform = Instant::now();
    // Each process is mapped by the tracer (this thread), which then goes
    // on with the next one while movers write its pages; once they are
    // written, the tracer finishes it.
    let mut all_tids = Vec::new();
    let own_actions = signal::own_actions();
    std::thread::scope(|scope| -> Result<()> {
        let movers = movers::Movers::start(scope, movers::default_count());
        let mut begun = Vec::new();
        for r in &restored.ready {
            let p = &plan.procs[&(r.pid as u32)];
            let drain = reaped.contains(&r.outer);
            let list = mapped_files.get(&(r.pid as u32));
            let prefds = mm::map_fds(list.map_or(&[][..], |l| l), r.hold_fd);
            let (half, fill) = begin(p, r, drain, &mut shmem, &files_index, prefds)?;
            let fill = fill.checked_against(fill_sums.remove(&(r.pid as u32)));
            let pending = movers.submit(move || fill.run());
            begun.push((r, p, half, pending));
        }
        tracing::debug!(ms = us(t_transform) / 1000, "every process mapped");
        let mut waited = 0;
        for (r, p, half, pending) in begun {
            let t_wait = Instant::now();
            pending.wait()?;
            waited += us(t_wait);
            let tids = finish(
                p,
                r,
                half,
                &files_index,
                opts.new_pid_ns,
                &plan.creds,
                &own_actions,
            )?;
            all_tids.push((
                r.outer,
                tids,
                p.cores[0].1.tc.as_ref().map(|t| t.task_state),
            ));
        }
        movers.finish();
        tracing::debug!(waited_ms = waited / 1000, "pages written");
        Ok(())
    })?;
    tracing::debug!(ms = us(t_transform) / 1000, "every process transformed");
    // Every process has mapped its ghost files: unlink them again.
    drop(mapped_ghosts);
    let mut octx_ttys = std::mem::take(&mut octx.ttys);
    drop(octx);
    let pages_restored: u64 = plan
        .procs
        .values()
        .flat_map(|p| p.pagemap.iter().map(|e| e.nr_pages as u64))
        .sum();
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
    if opts.shell_job {
        let root = &plan.entries[0];
        if let Some(pgrp) = octx_ttys.shell_foreground(&dir, root.pgid)? {
            files::tty::give_shell_terminal(pgrp)?;
        }
    }
    // Let the whole tree go together. ptrace lets go of one thread at a
    // time: should crust die in the middle, the watchdog kills the tree.
    let pidfds = all_tids
        .iter()
        .map(|(pid, _, _)| *pid)
        .chain([restored.child()])
        .map(|pid| crust_sys::pidfd::pidfd_open(pid).ctx(|| format!("a pidfd of {pid}")))
        .collect::<Result<Vec<_>>>()?;
    let watchdog = crust_sys::watchdog::spawn(&pidfds).ctx(|| "starting the watchdog".into())?;
    for (pid, tids, state) in &all_tids {
        if *state == Some(task::TASK_STOPPED) {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::SIGSTOP)
                .ctx(|| format!("stopping {pid}"))?;
        }
        for &t in tids {
            ptrace::detach(t, 0).ctx(|| format!("letting {t} go"))?;
        }
    }
    watchdog
        .disarm()
        .ctx(|| "telling the watchdog the tree is let go".into())?;
    let out = crate::Restored {
        root: restored
            .outer(plan.entries[0].pid as i32)
            .unwrap_or(restored.child()),
        child: restored.child(),
    };
    restored.handed_over();
    Ok(out)
}

/// Every pid and tid of the tree `entries`.
fn tree_ids(entries: &[pb::PstreeEntry]) -> HashSet<u32> {
    entries
        .iter()
        .flat_map(|e| e.threads.iter().copied().chain([e.pid]))
        .collect()
}

/// `struct clone_args` size (clone3), up to and including `cgroup`.
const CLONE_ARGS_SIZE: usize = 88;
/// Where in the scratch area the clone3 arguments go.
const CLONE_ARGS_AT: usize = 32 * 1024;

/// A process [`begin`] started: its remote, which VMAs receive pages, and
/// where it has its mapped files.
struct Begun {
    r: Remote,
    filled: Vec<bool>,
    prefds: mm::MapFds,
}

/// Begin turning one seized, waiting process into its dumped self: its
/// memory is mapped, the pages are left to the returned [`mm::Fill`].
fn begin<'a>(
    p: &'a ProcPlan,
    ready: &tree::Ready,
    drain_sigchld: bool,
    shmem: &mut crate::shmem::Restorer,
    files_index: &mm::FileIndex,
    prefds: mm::MapFds,
) -> Result<(Begun, mm::Fill<'a>)> {
    let pid = ready.outer;
    let regs = ptrace::get_regs(pid).ctx(|| format!("registers of {pid}"))?;
    let current = crust_sys::procfs::read_maps(pid)?;
    let mut r = Remote::with_maps(pid, regs, &current)?;
    task::unregister_rseq(&r)?;
    // The scratch area first, so that the clearing runs in batches.
    r.map_scratch(Some(mm::scratch_gap(&p.mm, &current)))?;
    mm::clear_and_move_vdso(&mut r, &p.mm, &p.mm_name, &ready.premapped, &current)?;
    if drain_sigchld {
        sessions::drain_sigchld(&r)?;
    }
    let (filled, fill) = mm::map_vmas(
        &r,
        ready.pid,
        &p.mm,
        files_index,
        &p.pagemap,
        &p.pages,
        &p.pages_name,
        shmem,
        &ready.premapped,
        &prefds,
    )?;
    Ok((Begun { r, filled, prefds }, fill))
}

/// Finish a process [`begin`] started, once its pages are written: returns
/// its thread ids, main thread first.
fn finish(
    p: &ProcPlan,
    ready: &tree::Ready,
    half: Begun,
    files_index: &mm::FileIndex,
    new_pid_ns: bool,
    creds: &creds::Restorer,
    own_actions: &[Option<[u64; 4]>],
) -> Result<Vec<i32>> {
    let pid = ready.outer;
    let Begun {
        mut r,
        filled,
        prefds,
    } = half;
    let (filled, prefds) = (&filled[..], &prefds);
    mm::protect(&r, &p.mm, filled)?;
    mm::set_mm_fields(&r, &p.mm, files_index, prefds)?;
    let main = task::parts(&p.cores[0].1, &p.cores[0].2)?;
    let tc = main.tc.expect("checked at load");
    signal::restore(&r, &tc.sigactions, own_actions, &p.cores[0].2)?;
    // The other threads, each with its own tid, created once the main
    // thread has its name (which they inherit).
    let main_comm = task::comm_of(&main);
    task::set_comm(&r, main_comm)?;
    let mut tids = vec![pid];
    for (tid, core, name) in p.cores.iter().skip(1) {
        let clear_tid = task::parts(core, name)?.ti.clear_tid_addr;
        let mut flags = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM) as u64;
        if clear_tid != 0 {
            flags |= libc::CLONE_CHILD_CLEARTID as u64;
        }
        let set_tid_addr = r.scratch() + (CLONE_ARGS_AT + CLONE_ARGS_SIZE) as u64;
        let args: Vec<u8> = [flags, 0, clear_tid, 0, 0, 0, 0, 0, set_tid_addr, 1, 0]
            .iter()
            .chain(std::iter::once(&(*tid as u64)))
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        let a = r.put(CLONE_ARGS_AT, &args)?;
        let got = r.call(
            &format!("clone3 of thread {tid}"),
            libc::SYS_clone3,
            [a, CLONE_ARGS_SIZE as u64, 0, 0, 0, 0],
        )?;
        if got != *tid as u64 {
            return Err(Error::Restore {
                pid,
                what: format!("thread {tid} was created as {got}"),
            });
        }
        let outer = if new_pid_ns {
            outer_tid(pid, *tid)?
        } else {
            *tid
        };
        wait_new_thread(outer)?;
        tids.push(outer);
    }
    for (i, (_, core, name)) in p.cores.iter().enumerate() {
        let tid = &tids[i];
        let parts = task::parts(core, name)?;
        let treg = ptrace::get_regs(*tid).ctx(|| format!("registers of {tid}"))?;
        let mut sib = r.sibling(*tid, treg);
        if i > 0 {
            ptrace::set_sigmask(*tid, u64::MAX).ctx(|| format!("blocking signals of {tid}"))?;
            task::set_thread_sched(*tid, parts.th)?;
        }
        let res = task::restore_late(&sib, &parts, i > 0, main_comm);
        sib.forget_scratch();
        res?;
    }
    // Pending signals and timers, every signal still blocked; credentials
    // and seccomp last.
    crate::pending::restore(&r, &p.cores, &tids)?;
    crate::timers::restore(&r, pid, tc.timers.as_ref())?;
    // crust's fds: the report and hold pipes and the mapped files after
    // them (closed before the file locks are taken again: closing a file
    // drops the task's POSIX locks on it).
    let last_fd = ready.hold_fd as u64 + prefds.len() as u64;
    if ready.hold_fd == ready.report_fd + 1 {
        r.call(
            "close_range",
            libc::SYS_close_range,
            [ready.report_fd as u64, last_fd, 0, 0, 0, 0],
        )?;
    } else {
        for fd in [ready.report_fd as u64, ready.hold_fd as u64] {
            r.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
        }
        for &fd in prefds.values() {
            r.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
        }
    }
    files::restore_late(&r, &p.late)?;
    creds.apply(&r, &tids, &p.cores, p.mm.thp_disabled)?;
    task::restore_dumpable(&r, p.mm.dumpable)?;
    r.unmap_scratch()?;
    for (i, (_, core, name)) in p.cores.iter().enumerate() {
        let parts = task::parts(core, name)?;
        task::restore_regs(tids[i], &parts, name)?;
    }
    Ok(tids)
}

/// crust's view of thread `inner` (its id in its own pid namespace) of
/// process `pid` (crust's view).
fn outer_tid(pid: i32, inner: i32) -> Result<i32> {
    for t in crust_sys::procfs::list_tids(pid).ctx(|| format!("listing the threads of {pid}"))? {
        if let Ok(st) = crust_sys::procfs::read_task_status(pid, t) {
            if st.ns_pid.last() == Some(&inner) {
                return Ok(t);
            }
        }
    }
    Err(Error::Restore {
        pid,
        what: format!("its new thread {inner} cannot be found from outside its pid namespace"),
    })
}

/// Wait for a thread crust just created with clone3 to stop.
fn wait_new_thread(tid: i32) -> Result<()> {
    match ptrace::wait(tid).ctx(|| format!("waiting for new thread {tid}"))? {
        WaitEvent::Stopped { .. } => Ok(()),
        other => Err(Error::Restore {
            pid: tid,
            what: format!("new thread died ({other:?})"),
        }),
    }
}

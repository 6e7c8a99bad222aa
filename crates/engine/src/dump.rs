//! Dump orchestration: freeze the tree, collect every process and thread
//! through the state modules, write the images, let the tree go.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use crust_image::{names, pb, ImageKind};
use crust_sys::mmap::PageFile;
use crust_sys::procfs;

use crate::error::{Context, Result};
use crate::files::{DumpCtx, FdOptions, FileTable};
use crate::images::ImageDir;
use crate::remote::Remote;
use crate::tree::{FrozenTree, Release};
use crate::{creds, fs, mm, signal, task, us, DumpOptions, DumpStats, IMG_VERSION};

/// A page image prepared before the freeze.
struct PagesOut {
    id: u32,
    path: PathBuf,
    file: PageFile,
}

/// From this many threads on, the /proc files of a process's other
/// threads are read by a second thread while the first reads their
/// registers, and then by both (a 200-thread process: 8.4-10.5 ms of
/// status, timer slack, affinity and I/O priority beside 3.6-4.2 ms of
/// registers, measured here).
const SIBLINGS_BESIDE: usize = 16;

/// What crust reads about another thread of a frozen process without
/// driving it.
struct SiblingFiles {
    status: procfs::Status,
    own: creds::ThreadFacts,
}

/// Read the [`SiblingFiles`] of `tids`, threads of `pid`, taking each next
/// one from `next` (which other readers share): each read with its index.
fn read_sibling_files(
    pid: i32,
    tids: &[i32],
    next: &AtomicUsize,
) -> Result<Vec<(usize, SiblingFiles)>> {
    let mut out = Vec::new();
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(&tid) = tids.get(i) else {
            return Ok(out);
        };
        out.push((
            i,
            SiblingFiles {
                status: procfs::read_task_status(pid, tid)?,
                own: creds::read_thread_facts(tid)?,
            },
        ));
    }
}

/// Dump the tree of `opts.pid` into `dir`.
pub(crate) fn dump_into(
    opts: &DumpOptions,
    dir: &ImageDir,
    caller: &creds::Caller,
) -> Result<DumpStats> {
    let root = opts.pid;
    // Allocate each process's page image before the freeze, so the frozen
    // window only copies.
    let t_alloc = Instant::now();
    let mut outs: HashMap<i32, PagesOut> = HashMap::new();
    let before = crate::tree::collect(root)?;
    // Page image ids past those allocated here: for processes forked during
    // the freeze and for shared memory.
    let mut next_pages_id = before.len() as u32 + 1;
    // Allocating is zeroing tmpfs pages: spread over the CPUs.
    let todo: Vec<(u32, i32, PathBuf)> = before
        .iter()
        .enumerate()
        .filter(|(_, (st, _))| st.state != 'Z')
        .map(|(i, (st, _))| {
            (
                i as u32 + 1,
                st.pid,
                dir.create(&names::pages(i as u32 + 1)),
            )
        })
        .collect();
    let per_thread = todo.len().div_ceil(crate::movers::default_count()).max(1);
    let allocated = std::thread::scope(|scope| {
        let workers: Vec<_> = todo
            .chunks(per_thread)
            .map(|chunk| {
                scope.spawn(move || -> Result<Vec<(i32, PagesOut, u64)>> {
                    chunk
                        .iter()
                        .map(|(id, pid, path)| {
                            let (id, pid, path) = (*id, *pid, path.clone());
                            // Room for what the task may add before the freeze
                            // (more is allocated in the freeze if needed).
                            let estimate = mm::estimate_page_bytes(pid).unwrap_or(0) + (64 << 10);
                            let file = PageFile::create(&path, estimate)
                                .ctx(|| format!("allocating {}", path.display()))?;
                            Ok((pid, PagesOut { id, path, file }, estimate))
                        })
                        .collect()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("page image allocation panicked"))
            .collect::<Result<Vec<_>>>()
    })?;
    let mut largest = 0;
    for (pid, out, estimate) in allocated.into_iter().flatten() {
        largest = largest.max(estimate);
        outs.insert(pid, out);
    }
    // Two movers, each with its buffers: one reads a process while the
    // other writes the one before (within one process of a single window,
    // reading and writing cannot overlap). A dump of one process needs one
    // set (faulting in the other cost 2 ms before the freeze); a process
    // forked during the freeze gets a set when its pages move.
    let nr_movers = crate::movers::default_count().min(2);
    let bufs = (0..nr_movers.min(todo.len().max(1)))
        .map(|_| mm::PageBuffers::new(largest))
        .collect::<Result<Vec<_>>>()?;

    tracing::debug!(ms = us(t_alloc) / 1000, "page images allocated");
    let t0 = Instant::now();
    let frozen = FrozenTree::seize(root)?;
    let freezing_us = us(t0);
    tracing::debug!(ms = freezing_us / 1000, "tree frozen");
    let t_frozen = Instant::now();

    let layout: Vec<pb::PstreeEntry> = frozen
        .procs
        .iter()
        .enumerate()
        .map(|(i, (st, tids))| crate::tree::pstree_entry(st, i == 0, tids))
        .chain(
            frozen
                .zombies
                .iter()
                .map(|z| crate::tree::pstree_entry(z, false, &[z.pid])),
        )
        .collect();
    let zombie_pids: HashSet<u32> = frozen.zombies.iter().map(|z| z.pid as u32).collect();
    crate::sessions::check_dump(&layout, &zombie_pids, opts.shell_job)?;

    let fd_opts = FdOptions {
        shell_job: opts.shell_job,
        ghost_limit: opts.ghost_limit,
        file_locks: opts.file_locks,
    };
    let mut files = FileTable::new();
    let mut ctx = DumpCtx::new(fd_opts, dir);
    ctx.scan_terminals(&frozen.procs.iter().map(|(st, _)| st).collect::<Vec<_>>())?;
    let mut shmem = crate::shmem::Dumper::default();
    let mut seccomp = crate::creds::SeccompDumper::default();
    let mut pstree = Vec::new();
    let mut root_ids = None;
    let mut pages_scanned = 0;
    let mut pages_written = 0;
    let bufs = std::sync::Mutex::new(bufs);
    let memdump_us = AtomicU64::new(0);
    let mut gadgets = crate::remote::GadgetCache::default();
    std::thread::scope(|scope| -> Result<()> {
        let movers = crate::movers::Movers::start(scope, nr_movers);
        let mut pending = Vec::new();
        for (idx, (stat, tids)) in frozen.procs.iter().enumerate() {
            let pid = stat.pid;
            let id = idx as u32 + 1;
            let status = procfs::read_status(pid)?;
            caller.check_dump(pid, tids, &status)?;
            // The registers of every thread (ptrace, this thread) while
            // the /proc files of the others are read beside, then by both.
            let next = AtomicUsize::new(0);
            let (threads, siblings) = std::thread::scope(|s| {
                let others = || read_sibling_files(pid, &tids[1..], &next);
                let beside = (tids.len() >= SIBLINGS_BESIDE).then(|| s.spawn(others));
                let threads = tids
                    .iter()
                    .map(|&t| task::read_thread(t))
                    .collect::<Result<Vec<_>>>();
                let mine = others();
                let theirs =
                    beside.map(|h| h.join().expect("reading /proc of the threads panicked"));
                let mut files = mine?;
                files.extend(theirs.transpose()?.into_iter().flatten());
                files.sort_unstable_by_key(|(i, _)| *i);
                Ok::<_, crate::Error>((threads?, files))
            })?;
            // Each thread's own status, the main thread's as the process's.
            let (statuses, owns): (Vec<_>, Vec<_>) =
                std::iter::once((status.clone(), creds::read_thread_facts(pid)?))
                    .chain(siblings.into_iter().map(|(_, f)| (f.status, f.own)))
                    .unzip();

            // What only the task can tell: asked in each thread, with a scratch
            // area mapped by the main thread. Each thread is parked on a signal
            // frame of its own state until its registers and mask are put back
            // (see remote.rs), so a crust killed meanwhile leaves it whole.
            creds::suspend_seccomp_for_dump(tids, &statuses)?;
            // The mappings of a process of many threads are read beside
            // while they are asked (a scratch area seen then is left out).
            let smaps_beside = (tids.len() >= SIBLINGS_BESIDE)
                .then(|| scope.spawn(move || procfs::read_smaps(pid)));
            let mut scratch_at = None;
            let mut r = Remote::for_dump(pid, pid, &threads[0], &mut gadgets)?;
            let asked = (|| -> Result<_> {
                scratch_at = Some(r.map_scratch(None)?);
                let mut facts = vec![task::ask(&r)?];
                let process = creds::ask(&r)?;
                // The other threads all parked at once, each asked in turn
                // while the others run their calls.
                let others: Vec<(i32, &task::ThreadState)> =
                    tids.iter().copied().zip(&threads).skip(1).collect();
                let mut sibs = r.dump_siblings(&others)?;
                let asked = task::ask_threads(&sibs, facts[0].brk, facts[0].dumpable);
                sibs.iter_mut().for_each(Remote::forget_scratch);
                let ended = Remote::finish_each(&mut sibs);
                facts.extend(asked?);
                ended?;
                let sigactions =
                    signal::dump(&r, signal::worth_asking(status.sig_cgt, status.sig_ign))?;
                let timers = crate::timers::dump(&r, pid, tids)?;
                Ok((facts, process, sigactions, timers))
            })();
            let cleanup = r.unmap_scratch();
            let end = r.finish();
            let (facts, process, sigactions, timers) = asked?;
            cleanup?;
            end?;

            let fs_entry = fs::dump(pid, &status, &mut files)?;
            let fdinfos = crate::files::dump_fds(pid, &mut files, &mut ctx)?;
            let mut vmas = match smaps_beside {
                Some(h) => h.join().expect("reading smaps panicked")?,
                None => procfs::read_smaps(pid)?,
            };
            vmas.retain(|v| {
                scratch_at != Some(v.start) || v.end - v.start != crate::remote::SCRATCH_LEN as u64
            });
            let mut mm_dump = mm::collect(pid, vmas, stat, facts[0].brk, &mut files, &mut ctx)?;
            shmem.add(pid, &mm_dump.shmem_mappings());
            mm_dump.entry.dumpable = Some(facts[0].dumpable);
            mm_dump.entry.thp_disabled = Some(process.thp_disabled);
            let ids = pb::TaskKobjIdsEntry {
                vm_id: id,
                files_id: id,
                fs_id: id,
                sighand_id: id,
                ..Default::default()
            };
            if idx == 0 {
                root_ids = Some(ids);
            }
            let upid = pid as u32;
            let mut leader = Some(task::LeaderParts {
                sigactions,
                ids,
                stat,
            });
            let mut cores = Vec::with_capacity(tids.len());
            for (i, ((&tid, th), own)) in tids.iter().zip(&threads).zip(owns).enumerate() {
                let tstatus = &statuses[i];
                let mut core = task::core_entry(pid, tid, tstatus, th, &facts[i], leader.take())?;
                if let Some(tc) = core.tc.as_mut() {
                    tc.timers = Some(timers.clone());
                }
                crate::pending::dump(&mut core, pid, tid, tstatus)?;
                creds::fill(&mut core, tid, tstatus, &process, own, &mut seccomp)?;
                cores.push((names::core(tid as u32), core));
            }
            // Written by a mover (200 threads: 3.6 ms of encoding and
            // writing) while this thread goes on.
            pending.push(movers.submit(move || {
                cores.iter().try_for_each(|(name, core)| {
                    dir.write(name, ImageKind::Core, std::slice::from_ref(core))
                })
            }));

            // Pages: straight from the task, through crust's buffers, into the
            // page image, on a mover thread while this one goes on with the
            // next process.
            let need = mm_dump.nr_pages() * mm::PAGE;
            let out = match outs.remove(&pid) {
                Some(out) => out,
                // Forked while the tree was being frozen: its page image is
                // allocated now.
                None => {
                    let id = next_pages_id;
                    next_pages_id += 1;
                    let path = dir.create(&names::pages(id));
                    let file = PageFile::create(&path, need)
                        .ctx(|| format!("allocating {}", path.display()))?;
                    PagesOut { id, path, file }
                }
            };
            // Grown since the estimate: the rest allocated now.
            let mut file = out.file;
            file.grow(need)
                .ctx(|| format!("allocating {}", out.path.display()))?;
            pages_written += mm_dump.nr_pages();
            pages_scanned += mm_dump
                .entry
                .vmas
                .iter()
                .map(|v| (v.end - v.start) / mm::PAGE)
                .sum::<u64>();

            dir.write(&names::ids(upid), ImageKind::Ids, &[ids])?;
            dir.write(
                &names::mm(upid),
                ImageKind::Mm,
                std::slice::from_ref(&mm_dump.entry),
            )?;
            dir.write_pagemap(
                &names::pagemap(upid as u64),
                out.id,
                &mm_dump.pagemap_entries(),
            )?;
            let (bufs, memdump_us) = (&bufs, &memdump_us);
            pending.push(movers.submit(move || {
                let t_mem = Instant::now();
                let spare = bufs.lock().expect("page buffers").pop();
                let mut mine = match spare {
                    Some(b) => b,
                    None => mm::PageBuffers::new(largest)?,
                };
                let read = mm_dump.read_pages(pid, &file, &out.path, &mut mine);
                bufs.lock().expect("page buffers").push(mine);
                let sum = read?;
                file.finish(need)
                    .ctx(|| format!("writing {}", out.path.display()))?;
                // Without a sum of every byte, commit reads the file back.
                if let Some(sum) = sum.filter(|s| s.size == need) {
                    dir.record_sum(&out.path, sum);
                }
                memdump_us.fetch_add(us(t_mem), Ordering::Relaxed);
                Ok(())
            }));
            dir.write(&names::fdinfo(id), ImageKind::Fdinfo, &fdinfos)?;
            dir.write(&names::fs(upid), ImageKind::Fs, &[fs_entry])?;
            pstree.push(crate::tree::pstree_entry(stat, idx == 0, tids));
        }
        tracing::debug!(ms = us(t_frozen) / 1000, "every process asked");
        for p in pending {
            p.wait()?;
        }
        movers.finish();
        tracing::debug!(ms = us(t_frozen) / 1000, "every page written");
        Ok(())
    })?;
    let memdump_us = memdump_us.into_inner();
    // Shared anonymous memory, once per object, while the tree is frozen.
    for &(ino, pid, fd) in ctx.memfds.sources() {
        shmem.add_fd(ino, pid, fd);
    }
    pages_written += shmem.dump_all(dir, next_pages_id)?;
    for z in &frozen.zombies {
        pstree.push(crate::tree::pstree_entry(z, false, &[z.pid]));
        dir.write(
            &names::core(z.pid as u32),
            ImageKind::Core,
            &[task::zombie_core(z)],
        )?;
    }
    // Page images of processes that vanished before the freeze.
    for (_, out) in outs {
        drop(out.file);
        let _ = std::fs::remove_file(&out.path);
    }
    // FIFOs' path entries, for CRIU's restore (crust's finds them inside
    // the FIFO entries).
    let mut file_entries = files.entries().to_vec();
    file_entries.extend(ctx.pipes.fifo_reg_entries().iter().cloned());
    ctx.finish()?;
    seccomp.write(dir)?;
    dir.write(names::PSTREE, ImageKind::Pstree, &pstree)?;
    dir.write(names::FILES, ImageKind::Files, &file_entries)?;
    let frozen_us = us(t_frozen);
    let stats = DumpStats {
        freezing_us,
        frozen_us,
        memdump_us,
        pages_scanned,
        pages_written,
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
    let how = if opts.leave_stopped {
        Release::Stop
    } else if opts.leave_running {
        Release::Resume
    } else {
        Release::Kill
    };
    tracing::debug!(ms = us(t_frozen) / 1000, "images written");
    // A tree left running goes on once its state is in the images (in the
    // page cache): should making them durable fail, the dump fails with the
    // tree running, as a failed dump must leave it. A tree to be killed or
    // left stopped waits for the commit, so that a failure leaves it as it
    // was.
    // The inventory and the manifest go last: without them, a folder is
    // not an image set.
    let commit = || {
        dir.commit(&pb::InventoryEntry {
            img_version: IMG_VERSION,
            fdinfo_per_id: Some(true),
            root_ids,
            ns_per_id: Some(true),
            ..Default::default()
        })
    };
    let frozen_us = if how == Release::Resume {
        frozen.release(how)?;
        let frozen_us = us(t_frozen);
        commit()?;
        frozen_us
    } else {
        commit()?;
        frozen.release(how)?;
        us(t_frozen)
    };
    Ok(DumpStats { frozen_us, ..stats })
}

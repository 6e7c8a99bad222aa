//! The process tree: finding and freezing the tasks to dump (seize until
//! stable), letting them go (resume, stop or kill), and at restore creating
//! each process with its dumped pid.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;

use crust_image::pb;
use crust_sys::clone::{exit_now, fork_with, fork_with_pid, kill_self};
use crust_sys::procfs;
use crust_sys::ptrace::{self, WaitEvent};

use crate::error::{Context, Error, Result};
use crate::sessions::{Helper, Lineage};

/// `PTRACE_EVENT_STOP`.
const PTRACE_EVENT_STOP: i32 = 128;

/// Refuse pids crust must not dump: absent ones and crust's own ancestors.
pub fn check_target(pid: i32) -> Result<()> {
    if pid <= 0 || !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        return Err(Error::NoSuchProcess(pid));
    }
    let stat = procfs::read_stat(pid).map_err(|e| {
        if e.is_gone() {
            Error::NoSuchProcess(pid)
        } else {
            e.into()
        }
    })?;
    if stat.pid != pid {
        // /proc/PID of a thread that is not a group leader.
        return Err(Error::Unsupported {
            pid,
            what: format!(
                "thread {pid} of process {} alone (dump pid {} instead)",
                stat.pid, stat.pid
            ),
        });
    }
    let mut p = std::process::id() as i32;
    while p > 0 {
        if p == pid {
            return Err(Error::OwnAncestor(pid));
        }
        p = match procfs::read_stat(p) {
            Ok(s) => s.ppid,
            Err(_) => break,
        };
    }
    Ok(())
}

/// Threads past which a process's children are found by the ppid field of
/// every process in /proc rather than by one children file per thread.
const CHILDREN_FILES_MAX: usize = 64;

/// The processes of the tree rooted at `root`, parents before children
/// (each one's children by pid), each with its stat and its threads (none
/// for a process gone meanwhile or a zombie). Children are read
/// from /proc/PID/task/TID/children, so the cost follows the tree, not the
/// machine (with 3000 other processes, reading every /proc/*/stat made the
/// freeze of the 100-process bench tree take 160 ms instead of 16); from
/// the ppid field of /proc/*/stat, read once, for a process of many
/// threads or when the kernel lacks those files (CONFIG_PROC_CHILDREN).
pub fn collect(root: i32) -> Result<Vec<(procfs::Stat, Vec<i32>)>> {
    let Ok(first) = procfs::read_stat(root) else {
        return Err(Error::NoSuchProcess(root));
    };
    let mut everyone: Option<Vec<procfs::Stat>> = None;
    let mut found = vec![first];
    let mut out = Vec::new();
    let mut i = 0;
    while i < found.len() {
        let parent = found[i].pid;
        // Gone meanwhile (or a zombie whose threads are gone): no children.
        let tids = procfs::list_tids(parent).unwrap_or_default();
        let mut kids = children_of(parent, &tids, &mut everyone)?;
        kids.retain(|s| s.pid != root);
        found.extend(kids);
        out.push(tids);
        i += 1;
    }
    Ok(found.into_iter().zip(out).collect())
}

/// The stat of each child of process `pid`, whose threads are `tids`, by
/// pid. `everyone` is the stat of every process, read the first time it is
/// needed.
fn children_of(
    pid: i32,
    tids: &[i32],
    everyone: &mut Option<Vec<procfs::Stat>>,
) -> Result<Vec<procfs::Stat>> {
    if procfs::children_files_exist() && tids.len() <= CHILDREN_FILES_MAX {
        let mut pids: Vec<i32> = tids
            .iter()
            .filter_map(|&t| procfs::read_children(pid, t).ok())
            .flatten()
            .collect();
        pids.sort_unstable();
        pids.dedup();
        // A child reaped meanwhile, its pid maybe taken again, is left out.
        return Ok(pids
            .into_iter()
            .filter_map(|c| procfs::read_stat(c).ok())
            .filter(|s| s.ppid == pid)
            .collect());
    }
    let all = match everyone {
        Some(all) => all,
        None => {
            let mut all = Vec::new();
            for p in procfs::list_pids().ctx(|| "listing /proc".into())? {
                if let Ok(s) = procfs::read_stat(p) {
                    all.push(s);
                }
            }
            everyone.insert(all)
        }
    };
    Ok(all.iter().filter(|s| s.ppid == pid).cloned().collect())
}

/// How a frozen task is let go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Resume it as if nothing happened.
    Resume,
    /// Leave it stopped (SIGSTOP).
    Stop,
    /// Kill it (the dump is complete).
    Kill,
}

/// A frozen tree: every thread of every live process seized and stopped,
/// found again and again until no new task appears. Dropping it without
/// [`FrozenTree::release`] resumes every task untouched.
pub struct FrozenTree {
    /// Live processes, parents before children, with their threads.
    pub procs: Vec<(procfs::Stat, Vec<i32>)>,
    /// Zombies (pid, stat).
    pub zombies: Vec<procfs::Stat>,
    seized: Vec<i32>,
    released: bool,
}

/// How often crust looks for new tasks before it gives up on a tree that
/// keeps changing.
const SEIZE_ROUNDS: usize = 64;

impl FrozenTree {
    /// Seize the whole tree rooted at `root`.
    pub fn seize(root: i32) -> Result<FrozenTree> {
        let mut t = FrozenTree {
            procs: Vec::new(),
            zombies: Vec::new(),
            seized: Vec::new(),
            released: false,
        };
        for _ in 0..SEIZE_ROUNDS {
            let stats = collect(root)?;
            let mut new = false;
            let mut procs = Vec::new();
            let mut zombies = Vec::new();
            // A process without threads is gone meanwhile: the next round
            // sees.
            for (st, mut tids) in stats {
                if st.state == 'Z' || st.state == 'X' {
                    zombies.push(st);
                    continue;
                }
                // The main thread first, whatever the numbers (tids wrap
                // around pid_max: a thread may have a smaller one).
                if let Some(i) = tids.iter().position(|&t| t == st.pid) {
                    tids[..=i].rotate_right(1);
                }
                let mut live = Vec::new();
                for tid in tids {
                    if t.seized.contains(&tid) {
                        live.push(tid);
                        continue;
                    }
                    match seize_one(tid) {
                        Ok(()) => {
                            t.seized.push(tid);
                            live.push(tid);
                            new = true;
                        }
                        Err(Error::NoSuchProcess(_)) => new = true,
                        Err(e) => return Err(e),
                    }
                }
                if !live.is_empty() {
                    procs.push((st, live));
                }
            }
            t.procs = procs;
            t.zombies = zombies;
            if !new {
                if t.procs.first().map(|p| p.0.pid) != Some(root) {
                    return Err(Error::NoSuchProcess(root));
                }
                // The stats were read while tasks still ran: read them again.
                for p in &mut t.procs {
                    p.0 = procfs::read_stat(p.0.pid)?;
                }
                return Ok(t);
            }
        }
        Err(Error::Unsupported {
            pid: root,
            what: format!("a tree that kept changing through {SEIZE_ROUNDS} rounds of seizing"),
        })
    }

    /// Let every task go.
    pub fn release(mut self, how: Release) -> Result<()> {
        self.released = true;
        let kill = |pid: i32, sig| {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
                .ctx(|| format!("signalling {pid}"))
        };
        match how {
            Release::Resume => {}
            Release::Stop => {
                for (st, _) in &self.procs {
                    kill(st.pid, nix::sys::signal::SIGSTOP)?;
                }
            }
            Release::Kill => {
                for (st, _) in &self.procs {
                    kill(st.pid, nix::sys::signal::SIGKILL)?;
                }
                // Threads before their leader: a group leader's death is
                // reported only once its other threads are reaped.
                let leaders: HashSet<i32> = self.procs.iter().map(|(st, _)| st.pid).collect();
                let (mains, others): (Vec<i32>, Vec<i32>) =
                    self.seized.iter().partition(|t| leaders.contains(t));
                for tid in others.into_iter().chain(mains) {
                    let _ = ptrace::wait(tid);
                }
                return Ok(());
            }
        }
        for &tid in &self.seized {
            ptrace::detach(tid, 0).ctx(|| format!("letting {tid} go"))?;
        }
        Ok(())
    }
}

impl Drop for FrozenTree {
    fn drop(&mut self) {
        if !self.released {
            for &tid in &self.seized {
                let _ = ptrace::detach(tid, 0);
            }
        }
    }
}

/// Whether thread `tid` is gone or a zombie.
fn exited(tid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{tid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_none_or(|c| c == 'Z' || c == 'X'),
        Err(_) => true,
    }
}

/// The tracer of thread `tid` (0: none, or unknown).
fn tracer_of(tid: i32) -> i32 {
    procfs::read_status(tid).map_or(0, |s| s.tracer_pid)
}

/// PTRACE_SEIZE and PTRACE_INTERRUPT one thread, and wait until it stops.
/// Signals that arrive meanwhile are delivered, not lost.
fn seize_one(tid: i32) -> Result<()> {
    ptrace::seize(tid, libc::PTRACE_O_TRACESYSGOOD).map_err(|e| match e.raw_os_error() {
        Some(libc::ESRCH) => Error::NoSuchProcess(tid),
        // A task that exited just now is refused with EPERM too: gone, not
        // a permission problem.
        Some(libc::EPERM) if exited(tid) => Error::NoSuchProcess(tid),
        Some(libc::EPERM) if tracer_of(tid) != 0 => {
            let tracer = tracer_of(tid);
            Error::AlreadyTraced {
                pid: tid,
                tracer,
                comm: std::fs::read_to_string(format!("/proc/{tracer}/comm"))
                    .map(|c| c.trim().to_string())
                    .unwrap_or_else(|_| "gone".into()),
            }
        }
        Some(libc::EPERM) => Error::Privilege(format!(
            "permission to ptrace {tid} (CAP_SYS_PTRACE; is it traced already, by another dump?)"
        )),
        _ => Error::Sys {
            what: format!("PTRACE_SEIZE of {tid}"),
            err: e,
        },
    })?;
    ptrace::interrupt(tid).ctx(|| format!("PTRACE_INTERRUPT of {tid}"))?;
    loop {
        match ptrace::wait(tid).ctx(|| format!("waiting for {tid} to stop"))? {
            WaitEvent::Stopped { event, .. } if event == PTRACE_EVENT_STOP => return Ok(()),
            WaitEvent::Stopped { sig, .. } => {
                ptrace::resume(tid, sig).ctx(|| format!("delivering signal {sig} to {tid}"))?
            }
            WaitEvent::Exited(_) | WaitEvent::Signaled(_) => return Err(Error::NoSuchProcess(tid)),
        }
    }
}

/// Seize a restored process that is waiting for crust (it blocks in a read
/// of its hold pipe): PTRACE_O_EXITKILL, so that it dies if crust dies, and
/// PTRACE_O_TRACECLONE for the threads crust will create in it.
pub fn seize_restored(pid: i32) -> Result<()> {
    ptrace::seize(
        pid,
        libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_EXITKILL | libc::PTRACE_O_TRACECLONE,
    )
    .ctx(|| format!("PTRACE_SEIZE of restored {pid}"))?;
    ptrace::interrupt(pid).ctx(|| format!("PTRACE_INTERRUPT of restored {pid}"))?;
    loop {
        match ptrace::wait(pid).ctx(|| format!("waiting for restored {pid}"))? {
            WaitEvent::Stopped { event, .. } if event == PTRACE_EVENT_STOP => return Ok(()),
            WaitEvent::Stopped { .. } => {
                ptrace::resume(pid, 0).ctx(|| format!("resuming {pid}"))?
            }
            other => {
                return Err(Error::Restore {
                    pid,
                    what: format!("died while being seized ({other:?})"),
                })
            }
        }
    }
}

/// The pstree entry of a task (the root gets ppid 0, as crit expects).
pub fn pstree_entry(stat: &procfs::Stat, root: bool, threads: &[i32]) -> pb::PstreeEntry {
    pb::PstreeEntry {
        pid: stat.pid as u32,
        ppid: if root { 0 } else { stat.ppid as u32 },
        pgid: stat.pgrp as u32,
        sid: stat.session as u32,
        threads: threads.iter().map(|&t| t as u32).collect(),
    }
}

/// One process of a tree to restore, as its parent creates it.
pub struct ForkPlan {
    /// The pstree entries, parents before children.
    pub entries: Vec<pb::PstreeEntry>,
    /// Exit status (as wait reports it) of each zombie, by pid.
    pub zombies: HashMap<u32, u32>,
    /// Restore inside a new pid namespace, under an init of crust's.
    pub new_pid_ns: bool,
    /// Helpers for sessions and groups whose leaders exited, and who forks
    /// whom (by default each process's parent).
    pub lineage: Lineage,
}

impl ForkPlan {
    /// The pid that forks `e` (0: crust or the namespace's init).
    pub fn fork_parent(&self, e: &pb::PstreeEntry) -> u32 {
        match self.lineage.fork_parent.get(&e.pid) {
            Some(&p) => p,
            None if e.pid == self.entries[0].pid => 0,
            None => e.ppid,
        }
    }

    /// The helper that crust (or the namespace's init) forks, if the root
    /// is forked by one.
    fn top_helper(&self) -> Option<&Helper> {
        self.lineage.helpers.iter().find(|h| h.parent == 0)
    }

    /// Whether `pid` is a helper.
    fn is_helper(&self, pid: u32) -> bool {
        self.lineage.helpers.iter().any(|h| h.pid == pid)
    }
}

/// A restored process waiting for crust.
#[derive(Debug, Clone)]
pub struct Ready {
    /// Its pid in the images (and in its own pid namespace).
    pub pid: i32,
    /// Its pid as crust sees it (the same unless --new-pid-ns).
    pub outer: i32,
    /// Its fd of the report pipe, to close.
    pub report_fd: i32,
    /// Its fd of the hold pipe, to close.
    pub hold_fd: i32,
    /// The private memory it premapped (inherited or its own), filled:
    /// kept as it is at restore.
    pub premapped: Vec<(u64, u64)>,
}

/// A restored tree whose processes wait for crust. Dropping it kills them
/// all: a restore is all or nothing.
pub struct RestoredTree {
    /// crust's child: the root, or the init of the new pid namespace.
    child: i32,
    pids: Vec<i32>,
    /// Every live process, once it is ready.
    pub ready: Vec<Ready>,
    /// Helpers, once they are ready: (pid in the images, pid as crust sees it).
    helpers: Vec<(i32, i32)>,
    /// The root's pid as crust sees it, when crust's child is a helper.
    root_under_helper: Option<i32>,
    /// crust's own subreaper flag to put back, if crust adopts the root.
    own_subreaper: Option<bool>,
    hold: Option<OwnedFd>,
    /// Write end of the namespace init's handover pipe, and the read end of
    /// its acknowledgement.
    handover: Option<(std::fs::File, std::fs::File)>,
    live: bool,
}

impl RestoredTree {
    /// crust's own child (the root, or the namespace's init), as crust sees
    /// it: the process to wait for.
    pub fn child(&self) -> i32 {
        self.child
    }

    /// Pid translation: images' pid to crust's view.
    pub fn outer(&self, pid: i32) -> Option<i32> {
        self.ready.iter().find(|r| r.pid == pid).map(|r| r.outer)
    }

    /// Kill the helpers (every process has joined its group) and have them
    /// reaped: by crust, by the namespace's init later, or by `reap` in the
    /// restored process that adopted them (its pid as crust sees it, and
    /// the helpers' pids in its namespace). Their orphans are adopted by
    /// their parents in the images meanwhile.
    pub fn release_helpers(
        &mut self,
        reap: &mut dyn FnMut(i32, &[i32]) -> Result<()>,
    ) -> Result<()> {
        if self.helpers.is_empty() {
            return Ok(());
        }
        for &(_, outer) in &self.helpers {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(outer),
                nix::sys::signal::SIGKILL,
            );
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let me = std::process::id() as i32;
        let mut by_parent: Vec<(i32, Vec<i32>)> = Vec::new();
        for &(inner, outer) in &self.helpers {
            let st = loop {
                let st = procfs::read_stat(outer)?;
                if st.state == 'Z' {
                    break st;
                }
                if std::time::Instant::now() > deadline {
                    return Err(Error::Restore {
                        pid: inner,
                        what: "a session or group helper did not die".into(),
                    });
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            };
            if st.ppid == me {
                nix::sys::wait::waitpid(
                    nix::unistd::Pid::from_raw(outer),
                    Some(nix::sys::wait::WaitPidFlag::__WALL),
                )
                .ctx(|| format!("reaping helper {outer}"))?;
            } else if st.ppid != self.child || self.handover.is_none() {
                match by_parent.iter_mut().find(|(p, _)| *p == st.ppid) {
                    Some((_, v)) => v.push(inner),
                    None => by_parent.push((st.ppid, vec![inner])),
                }
            }
            // else: the namespace's init reaps it once it has the tree.
        }
        for (parent, helpers) in &by_parent {
            reap(*parent, helpers)?;
        }
        let gone: Vec<i32> = self.helpers.iter().map(|h| h.1).collect();
        self.pids.retain(|p| !gone.contains(p));
        self.helpers.clear();
        if let Some(root) = self.root_under_helper.take() {
            self.child = root;
            self.pids.retain(|&p| p != root);
        }
        if let Some(was) = self.own_subreaper.take() {
            nix::sys::prctl::set_child_subreaper(was).ctx(|| "PR_SET_CHILD_SUBREAPER".into())?;
        }
        Ok(())
    }

    /// The processes now belong to themselves: do not kill them on drop.
    pub fn handed_over(mut self) {
        self.live = false;
        self.hold.take();
        if let Some((mut h, mut ack)) = self.handover.take() {
            // The namespace's init may now outlive crust: wait until it has
            // cleared its parent-death signal, or crust's exit would kill it.
            let _ = h.write_all(b"g");
            let mut b = [0u8; 1];
            let _ = ack.read(&mut b);
        }
    }
}

impl Drop for RestoredTree {
    fn drop(&mut self) {
        if self.live {
            // Threads crust created are traced by it: once killed, they stay
            // zombies until crust reaps them, and their leader's death is
            // not reported before. Listed before the kill, reaped after it.
            let threads: Vec<i32> = self
                .ready
                .iter()
                .flat_map(|r| {
                    procfs::list_tids(r.outer)
                        .unwrap_or_default()
                        .into_iter()
                        .filter(move |&t| t != r.outer)
                })
                .collect();
            for &p in &self.pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::SIGKILL,
                );
            }
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child),
                nix::sys::signal::SIGKILL,
            );
            for t in threads {
                let _ = ptrace::wait(t);
            }
            let _ = nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(self.child),
                Some(nix::sys::wait::WaitPidFlag::__WALL),
            );
        }
    }
}

/// Size of a report record: pid, and either (report fd, hold fd) when
/// ready, ([`HELPER_READY`], 0) from a helper, or (-1, message length)
/// followed by the message.
const RECORD: usize = 12;

/// The second field of a helper's report record.
const HELPER_READY: i32 = -2;

/// The second field of a record that lists a process's premapped ranges:
/// the third is their number, and (start, end) pairs follow.
const PREMAPPED: i32 = -3;

/// At most this many premapped ranges are reported (the record stays
/// under PIPE_BUF, so it is written whole).
pub const MAX_PREMAPPED: usize = 250;

/// What each restored process does in crust's code, in itself, before it
/// is seized.
pub struct Setup<'a> {
    /// Before it forks its children: the memory they inherit
    /// copy-on-write (see crust_sys::premap).
    pub before_children: &'a dyn Fn(&pb::PstreeEntry) -> Result<()>,
    /// After: its session's files, cwd, limits, scheduling.
    pub last: &'a dyn Fn(&pb::PstreeEntry, &mut [&mut OwnedFd]) -> Result<()>,
}

/// How long a restore waits, in all, for zombies that hold the pids it
/// needs to be reaped: a tree that its dump killed leaves its orphans'
/// zombies to whoever adopts them (init here reaps them seconds later).
const ZOMBIE_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Check that pid `p` is free, waiting while a zombie holds it until
/// [`ZOMBIE_GRACE`] after `since`.
fn check_pid_free(p: i32, since: std::time::Instant) -> Result<()> {
    loop {
        let stat = match procfs::read_stat(p) {
            Ok(stat) => stat,
            Err(_) if !std::path::Path::new(&format!("/proc/{p}")).exists() => return Ok(()),
            Err(_) => return Err(Error::PidTaken(p)),
        };
        if stat.state != 'Z' {
            return Err(Error::PidTaken(p));
        }
        if since.elapsed() >= ZOMBIE_GRACE {
            return Err(Error::PidHeldByZombie {
                pid: p,
                parent: stat.ppid,
                waited_ms: since.elapsed().as_millis() as u64,
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Fork the whole tree: crust forks the root with clone3 set_tid, and each
/// restored process forks its own children the same way, after `setup`
/// (session, fds, cwd, rlimits ...) in itself. Zombies exit at once with
/// their status. Every live process then reports ready and waits in a read
/// until crust seizes it.
pub fn fork_tree(plan: &ForkPlan, setup: &Setup) -> Result<RestoredTree> {
    let root = &plan.entries[0];
    let wanted = plan
        .entries
        .iter()
        .flat_map(|e| e.threads.iter().chain(std::iter::once(&e.pid)))
        .chain(plan.lineage.helpers.iter().map(|h| &h.pid));
    let since = std::time::Instant::now();
    for &p in wanted.filter(|_| !plan.new_pid_ns) {
        check_pid_free(p as i32, since)?;
    }
    let (mut report_rd, report_wr) = pipe()?;
    let (hold_rd, hold_wr) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ctx(|| "pipe2".into())?;
    let parent = std::process::id() as i32;
    let mut tree = RestoredTree {
        child: 0,
        pids: plan.entries.iter().map(|e| e.pid as i32).collect(),
        ready: Vec::new(),
        helpers: Vec::new(),
        root_under_helper: None,
        own_subreaper: None,
        hold: Some(hold_wr),
        handover: None,
        live: true,
    };
    let chans = (report_wr, hold_rd);
    let forked = if plan.new_pid_ns {
        let (hand_rd, hand_wr) = pipe()?;
        let (ack_rd, ack_wr) = pipe()?;
        tree.handover = Some((std::fs::File::from(hand_wr), ack_rd));
        fork_with(libc::CLONE_NEWPID as u64, None, || {
            become_init(plan, setup, chans, (hand_rd, std::fs::File::from(ack_wr)))
        })
    } else if let Some(h) = plan.top_helper() {
        // The root is adopted by crust when its helper dies.
        let was = nix::sys::prctl::get_child_subreaper().ctx(|| "PR_GET_CHILD_SUBREAPER".into())?;
        nix::sys::prctl::set_child_subreaper(true).ctx(|| "PR_SET_CHILD_SUBREAPER".into())?;
        tree.own_subreaper = Some(was);
        tree.root_under_helper = Some(root.pid as i32);
        fork_with_pid(h.pid as i32, || become_helper(plan, h, setup, chans))
    } else {
        fork_with_pid(root.pid as i32, || {
            become_process(plan, root, setup, chans, parent)
        })
    };
    let first = plan.top_helper().map_or(root.pid, |h| h.pid);
    match forked {
        Ok(p) => tree.child = p,
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            tree.live = false;
            if let Some(was) = tree.own_subreaper.take() {
                let _ = nix::sys::prctl::set_child_subreaper(was);
            }
            return Err(Error::PidTaken(first as i32));
        }
        Err(e) => {
            tree.live = false;
            if let Some(was) = tree.own_subreaper.take() {
                let _ = nix::sys::prctl::set_child_subreaper(was);
            }
            return Err(Error::Sys {
                what: format!("clone3 for pid {first}"),
                err: e,
            });
        }
    }
    if !plan.new_pid_ns {
        tree.pids
            .extend(plan.lineage.helpers.iter().map(|h| h.pid as i32));
        tree.pids.retain(|&p| p != tree.child);
    }
    let live = plan
        .entries
        .iter()
        .filter(|e| !plan.zombies.contains_key(&e.pid))
        .count()
        + plan.lineage.helpers.len();
    // The parent's copies of the channel ends went with the closure; only
    // the restored processes hold the report pipe's write end now.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut premapped: HashMap<i32, Vec<(u64, u64)>> = HashMap::new();
    while tree.ready.len() + tree.helpers.len() < live {
        wait_readable(&report_rd, tree.child, deadline, root.pid as i32)?;
        let mut rec = [0u8; RECORD];
        match read_full(&mut report_rd, &mut rec) {
            Ok(true) => {}
            Ok(false) => {
                return Err(Error::Restore {
                    pid: root.pid as i32,
                    what: "the restored tree died while it was being created".into(),
                })
            }
            Err(e) => return Err(e),
        }
        let w = |i: usize| i32::from_ne_bytes(rec[i * 4..i * 4 + 4].try_into().unwrap());
        let (pid, a, b) = (w(0), w(1), w(2));
        if a == -1 {
            let mut msg = vec![0u8; b.clamp(0, 4000) as usize];
            let _ = read_full(&mut report_rd, &mut msg);
            return Err(Error::Restore {
                pid,
                what: String::from_utf8_lossy(&msg).into_owned(),
            });
        }
        if a == HELPER_READY {
            tree.helpers.push((pid, pid));
            continue;
        }
        if a == PREMAPPED {
            let mut raw = vec![0u8; b.clamp(0, MAX_PREMAPPED as i32) as usize * 16];
            read_full(&mut report_rd, &mut raw)?;
            let ranges = raw
                .chunks_exact(16)
                .map(|c| {
                    let w = |i: usize| u64::from_ne_bytes(c[i..i + 8].try_into().unwrap());
                    (w(0), w(8))
                })
                .collect();
            premapped.insert(pid, ranges);
            continue;
        }
        tree.ready.push(Ready {
            pid,
            outer: pid,
            report_fd: a,
            hold_fd: b,
            premapped: premapped.remove(&pid).unwrap_or_default(),
        });
    }
    if plan.new_pid_ns {
        let map = ns_pids(tree.child)?;
        for r in &mut tree.ready {
            r.outer = *map.get(&r.pid).ok_or_else(|| Error::Restore {
                pid: r.pid,
                what: "cannot be found from outside its pid namespace".into(),
            })?;
        }
        for h in &mut tree.helpers {
            h.1 = *map.get(&h.0).ok_or_else(|| Error::Restore {
                pid: h.0,
                what: "a helper cannot be found from outside its pid namespace".into(),
            })?;
        }
        tree.pids = tree
            .ready
            .iter()
            .map(|r| r.outer)
            .chain(tree.helpers.iter().map(|h| h.1))
            .collect();
    }
    Ok(tree)
}

/// Wait until the report pipe has data, failing if crust's child died or
/// the deadline passed.
fn wait_readable(
    rd: &std::fs::File,
    child: i32,
    deadline: std::time::Instant,
    root: i32,
) -> Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    loop {
        let mut fds = [PollFd::new(rd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(100u16)) {
            Ok(n) if n > 0 => return Ok(()),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                return Err(Error::Sys {
                    what: "waiting for the restored tree".into(),
                    err: e.into(),
                })
            }
        }
        if let Ok(Some(ev)) = ptrace::try_wait(child) {
            return Err(Error::Restore {
                pid: root,
                what: format!("the restored tree died while it was being created ({ev:?})"),
            });
        }
        if std::time::Instant::now() > deadline {
            return Err(Error::Restore {
                pid: root,
                what: "the restored tree did not get ready within 60 s".into(),
            });
        }
    }
}

/// Every task in the pid namespace of `init` (as crust sees it): its pid
/// inside the namespace, mapped to crust's view.
pub fn ns_pids(init: i32) -> Result<HashMap<i32, i32>> {
    let ns = std::fs::read_link(format!("/proc/{init}/ns/pid"))
        .ctx(|| format!("reading /proc/{init}/ns/pid"))?;
    let mut map = HashMap::new();
    for p in procfs::list_pids().ctx(|| "listing /proc".into())? {
        if std::fs::read_link(format!("/proc/{p}/ns/pid"))
            .ok()
            .as_ref()
            != Some(&ns)
        {
            continue;
        }
        for t in procfs::list_tids(p).unwrap_or_default() {
            if let Ok(st) = procfs::read_task_status(p, t) {
                if let Some(&inner) = st.ns_pid.last() {
                    map.insert(inner, t);
                }
            }
        }
    }
    Ok(map)
}

/// Runs in a forked copy of crust that is the init of a new pid namespace:
/// mounts a /proc of that namespace, forks the tree's root, closes
/// everything crust's, and reaps orphans until the root is gone; exits
/// with the root's status.
fn become_init(
    plan: &ForkPlan,
    setup: &Setup,
    chans: (OwnedFd, OwnedFd),
    handover: (std::fs::File, std::fs::File),
) -> i32 {
    let (mut handover, mut ack) = handover;
    use nix::mount::{mount, MsFlags};
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::SIGKILL);
    let root = &plan.entries[0];
    let mut report = std::fs::File::from(chans.0.try_clone().expect("dup of the report pipe"));
    let fail = |report: &mut std::fs::File, msg: String| -> i32 {
        let mut rec = Vec::new();
        rec.extend((root.pid as i32).to_ne_bytes());
        rec.extend((-1i32).to_ne_bytes());
        rec.extend((msg.len() as i32).to_ne_bytes());
        rec.extend(msg.as_bytes());
        let _ = report.write_all(&rec);
        2
    };
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS) {
        return fail(
            &mut report,
            format!("unshare(CLONE_NEWNS) for the new pid namespace: {e}"),
        );
    }
    let none: Option<&str> = None;
    let _ = mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none);
    if let Err(e) = mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        none,
    ) {
        return fail(
            &mut report,
            format!("mounting /proc in the new pid namespace: {e}"),
        );
    }
    let forked = match plan.top_helper() {
        Some(h) => fork_with_pid(h.pid as i32, || become_helper(plan, h, setup, chans)),
        None => fork_with_pid(root.pid as i32, || {
            become_process(plan, root, setup, chans, 1)
        }),
    };
    let rootpid = root.pid as i32;
    match forked {
        Ok(_) => {}
        Err(e) => {
            return fail(
                &mut report,
                format!("clone3 with set_tid {}: {e}", root.pid),
            )
        }
    }
    drop(report);
    // Hold nothing of crust's.
    use std::os::fd::AsRawFd;
    let keep = [handover.as_raw_fd(), ack.as_raw_fd()];
    for fd in procfs::list_fds(1).unwrap_or_default() {
        if !keep.contains(&fd) {
            let _ = nix::unistd::close(fd);
        }
    }
    // Die with crust until the tree is handed over, then outlive it.
    let mut b = [0u8; 1];
    match handover.read(&mut b) {
        Ok(1) => {
            let _ = nix::sys::prctl::set_pdeathsig(None);
            let _ = ack.write_all(b"a");
        }
        _ => return 1,
    }
    drop(handover);
    drop(ack);
    let mut code = 0;
    loop {
        match nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::__WALL)) {
            Ok(nix::sys::wait::WaitStatus::Exited(p, c)) if p.as_raw() == rootpid => code = c,
            Ok(nix::sys::wait::WaitStatus::Signaled(p, s, _)) if p.as_raw() == rootpid => {
                code = 128 + s as i32
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return code,
        }
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> Result<bool> {
    let mut done = 0;
    while done < buf.len() {
        match f.read(&mut buf[done..]) {
            Ok(0) => return Ok(false),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::Sys {
                    what: "reading reports of the restored tree".into(),
                    err: e,
                })
            }
        }
    }
    Ok(true)
}

/// Fork what `me` (a process of the tree or a helper) forks: its helpers
/// first, then the processes and zombies whose forking parent it is, each
/// with the report and hold channels.
fn fork_children(
    plan: &ForkPlan,
    me: u32,
    setup: &Setup,
    report: &OwnedFd,
    hold: &OwnedFd,
) -> Result<()> {
    let chans = || -> Result<(OwnedFd, OwnedFd)> {
        Ok((
            report.try_clone().ctx(|| "dup".into())?,
            hold.try_clone().ctx(|| "dup".into())?,
        ))
    };
    let taken = |cpid: i32| {
        move |e: std::io::Error| {
            if e.raw_os_error() == Some(libc::EEXIST) {
                Error::PidTaken(cpid)
            } else {
                Error::Sys {
                    what: format!("clone3 with set_tid {cpid}"),
                    err: e,
                }
            }
        }
    };
    for h in plan.lineage.helpers.iter().filter(|h| h.parent == me) {
        let c = chans()?;
        fork_with_pid(h.pid as i32, || become_helper(plan, h, setup, c))
            .map_err(taken(h.pid as i32))?;
    }
    for child in plan
        .entries
        .iter()
        .filter(|e| plan.fork_parent(e) == me && e.pid != me)
    {
        let cpid = child.pid as i32;
        match plan.zombies.get(&child.pid) {
            Some(&status) => fork_with_pid(cpid, || become_zombie(child, status)),
            None => {
                let c = chans()?;
                fork_with_pid(cpid, || become_process(plan, child, setup, c, me as i32))
            }
        }
        .map_err(taken(cpid))?;
    }
    Ok(())
}

/// Send a report record: ready (`Ok` with the two fields) or failed. A
/// record is at most 4012 bytes, under PIPE_BUF, so it is written whole.
fn send_record(report: &OwnedFd, pid: i32, res: std::result::Result<(i32, i32), String>) {
    let mut rec = Vec::with_capacity(RECORD);
    rec.extend(pid.to_ne_bytes());
    match res {
        Ok((a, b)) => {
            rec.extend(a.to_ne_bytes());
            rec.extend(b.to_ne_bytes());
        }
        Err(msg) => {
            let msg = &msg.as_bytes()[..msg.len().min(4000)];
            rec.extend((-1i32).to_ne_bytes());
            rec.extend((msg.len() as i32).to_ne_bytes());
            rec.extend(msg);
        }
    }
    write_record(report, &rec);
}

/// Write a whole record in place: crust may seize the caller as soon as it
/// has it, so nothing may happen after the write.
fn write_record(report: &OwnedFd, rec: &[u8]) {
    let mut done = 0;
    while done < rec.len() {
        match nix::unistd::write(report, &rec[done..]) {
            Ok(n) => done += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// Send the premapped ranges of `pid` (at most [`MAX_PREMAPPED`]), before
/// its ready record.
fn send_premapped(report: &OwnedFd, pid: i32, ranges: &[(u64, u64)]) {
    let ranges = &ranges[..ranges.len().min(MAX_PREMAPPED)];
    let mut rec = Vec::with_capacity(RECORD + ranges.len() * 16);
    rec.extend(pid.to_ne_bytes());
    rec.extend(PREMAPPED.to_ne_bytes());
    rec.extend((ranges.len() as i32).to_ne_bytes());
    for &(s, e) in ranges {
        rec.extend(s.to_ne_bytes());
        rec.extend(e.to_ne_bytes());
    }
    write_record(report, &rec);
}

/// Block in a read of the hold pipe: crust seizes (or kills) the caller
/// meanwhile; EOF means crust died.
fn hold_until_seized(hold: OwnedFd) -> i32 {
    let mut f = std::fs::File::from(hold);
    let mut b = [0u8; 1];
    loop {
        match f.read(&mut b) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            _ => return 3,
        }
    }
}

/// Runs in a forked copy of crust that becomes the process `me`.
fn become_process(
    plan: &ForkPlan,
    me: &pb::PstreeEntry,
    setup: &Setup,
    chans: (OwnedFd, OwnedFd),
    parent: i32,
) -> i32 {
    let (mut report, mut hold) = chans;
    let pid = me.pid as i32;
    let res = (|| -> Result<()> {
        // A helper's child outlives it: it is adopted when the helper dies.
        if !plan.is_helper(parent as u32) {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::SIGKILL)
                .ctx(|| "PR_SET_PDEATHSIG".into())?;
        }
        if nix::unistd::getppid().as_raw() != parent {
            exit_now(1);
        }
        if me.sid == me.pid {
            nix::unistd::setsid().ctx(|| "setsid".into())?;
            if let Some(&tty) = plan.lineage.controlling_tty.get(&me.pid) {
                crust_sys::tty::set_controlling_raw(tty)
                    .ctx(|| "TIOCSCTTY of the restored terminal".into())?;
            }
        } else if me.pgid == me.pid {
            nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0))
                .ctx(|| "setpgid".into())?;
        }
        if plan.lineage.adopts(me.pid) {
            nix::sys::prctl::set_child_subreaper(true).ctx(|| "PR_SET_CHILD_SUBREAPER".into())?;
        }
        (setup.before_children)(me)?;
        fork_children(plan, me.pid, setup, &report, &hold)?;
        // Children first: they need crust's open files, which setup closes
        // here (all but this process's own).
        (setup.last)(me, &mut [&mut report, &mut hold])?;
        Ok(())
    })();
    use std::os::fd::AsRawFd;
    match res {
        Ok(()) => {
            let premapped = crust_sys::premap::premapped();
            if !premapped.is_empty() {
                send_premapped(&report, pid, &premapped);
            }
            send_record(&report, pid, Ok((report.as_raw_fd(), hold.as_raw_fd())))
        }
        Err(e) => {
            send_record(&report, pid, Err(e.to_string()));
            return 2;
        }
    }
    // The report fd stays open: crust closes both in the restored task.
    let _report = report;
    hold_until_seized(hold)
}

/// Runs in a forked copy of crust that becomes helper `me`: it creates its
/// session or group, forks what it must, reports, and waits to be killed.
fn become_helper(plan: &ForkPlan, me: &Helper, setup: &Setup, chans: (OwnedFd, OwnedFd)) -> i32 {
    let (report, hold) = chans;
    let pid = me.pid as i32;
    let res = (|| -> Result<()> {
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::SIGKILL)
            .ctx(|| "PR_SET_PDEATHSIG".into())?;
        if me.session {
            nix::unistd::setsid().ctx(|| format!("setsid in the helper for session {pid}"))?;
        } else {
            nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0))
                .ctx(|| format!("setpgid in the helper for group {pid}"))?;
        }
        fork_children(plan, me.pid, setup, &report, &hold)
    })();
    match res {
        Ok(()) => send_record(&report, pid, Ok((HELPER_READY, 0))),
        Err(e) => {
            send_record(&report, pid, Err(e.to_string()));
            return 2;
        }
    }
    drop(report);
    hold_until_seized(hold)
}

/// Runs in a forked copy of crust that becomes a zombie with `status`.
fn become_zombie(me: &pb::PstreeEntry, status: u32) -> i32 {
    if me.sid == me.pid {
        let _ = nix::unistd::setsid();
    } else if me.pgid == me.pid {
        let _ = nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0));
    } else {
        let _ = nix::unistd::setpgid(
            nix::unistd::Pid::from_raw(0),
            nix::unistd::Pid::from_raw(me.pgid as i32),
        );
    }
    let sig = (status & 0x7f) as i32;
    if sig != 0 {
        let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
        let _ = crust_sys::clone::set_default_action(sig);
        let _ = nix::sys::signal::sigprocmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&nix::sys::signal::SigSet::empty()),
            None,
        );
        let _ = kill_self(sig);
    }
    ((status >> 8) & 0xff) as i32
}

/// A close-on-exec pipe: (read end as a File, write end).
fn pipe() -> Result<(std::fs::File, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ctx(|| "pipe2".into())?;
    Ok((std::fs::File::from(r), w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    /// A python3 process with `threads` idle threads and one more that
    /// forks a child and stays: collect finds that child, by the forking
    /// thread's children file (few threads) or by the ppid scan (many).
    fn finds_child_forked_by_a_thread(threads: usize) {
        let script = "import os, sys, threading, time\n\
            for _ in range(int(sys.argv[1])):\n\
            \x20   threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n\
            def fork():\n\
            \x20   p = os.fork()\n\
            \x20   if p == 0:\n\
            \x20       time.sleep(60)\n\
            \x20       os._exit(0)\n\
            \x20   print(p, flush=True)\n\
            \x20   time.sleep(60)\n\
            threading.Thread(target=fork, daemon=True).start()\n\
            time.sleep(60)\n";
        let mut parent = std::process::Command::new("python3")
            .args(["-c", script, &threads.to_string()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufReader::new(parent.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("child pid");
        let child: i32 = line.trim().parse().expect("a pid");
        let found = collect(parent.id() as i32);
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), nix::sys::signal::SIGKILL);
        let _ = parent.kill();
        let _ = parent.wait();
        let pids: Vec<i32> = found.expect("collect").iter().map(|(s, _)| s.pid).collect();
        assert_eq!(pids, vec![parent.id() as i32, child]);
    }

    #[test]
    fn collect_reads_the_children_file_of_each_thread() {
        finds_child_forked_by_a_thread(2);
    }

    #[test]
    fn collect_scans_proc_for_a_process_of_many_threads() {
        finds_child_forked_by_a_thread(CHILDREN_FILES_MAX + 6);
    }
}

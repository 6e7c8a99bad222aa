//! Credentials, seccomp, prctl state and CPU/I/O scheduling, per thread.
//!
//! Dump reads uids, gids, groups, capability sets and no_new_privs from
//! /proc/PID/task/TID/status, securebits, timer slack, the child subreaper
//! flag and THP disabling with remote prctl calls, seccomp filters with
//! ptrace (PTRACE_SECCOMP_GET_FILTER and its metadata, each filter stored
//! once in seccomp.img, as CRIU does), CPU affinity and I/O priority by
//! tid. Restore checks first, before any process exists, that the restoring
//! crust can grant all of it, and puts it back last in each thread: prctl
//! bits, then seccomp (with seccomp suspended for crust's own remaining
//! remote syscalls by PTRACE_O_SUSPEND_SECCOMP), then the credentials.

use std::collections::HashMap;

use crust_image::{names, pb, ImageKind};
use crust_sys::creds::{self as sc, CAP_NAMES, PTRACE_O_SUSPEND_SECCOMP, SOCK_FILTER_SIZE};
use crust_sys::procfs::{self, Status};
use crust_sys::ptrace;

use crate::error::{Context, Error, Result};
use crate::images::ImageDir;
use crate::remote::Remote;

const PR_SET_PDEATHSIG: u64 = 1;
const PR_SET_SECCOMP: u64 = 22;
const PR_CAPBSET_DROP: u64 = 24;
const PR_SET_SECUREBITS: u64 = 28;
const PR_SET_TIMERSLACK: u64 = 29;
const PR_SET_CHILD_SUBREAPER: u64 = 36;
const PR_GET_CHILD_SUBREAPER: u64 = 37;
const PR_SET_NO_NEW_PRIVS: u64 = 38;
const PR_SET_THP_DISABLE: u64 = 41;
const PR_GET_THP_DISABLE: u64 = 42;
const PR_CAP_AMBIENT: u64 = 47;
const PR_CAP_AMBIENT_RAISE: u64 = 2;
const PR_CAP_AMBIENT_CLEAR_ALL: u64 = 4;
/// `SECBIT_NO_SETUID_FIXUP`: keep every capability across the uid switch.
const SECBIT_NO_SETUID_FIXUP: u64 = 1 << 2;
/// Every securebit and its lock (SECURE_ALL_BITS | SECURE_ALL_LOCKS).
const SECBITS_KNOWN: u32 = 0xff;
const CAP_SETPCAP: u32 = 8;
const CAP_SYS_RESOURCE: u32 = 24;
const SECCOMP_MODE_STRICT: u32 = 1;
const SECCOMP_MODE_FILTER: u32 = 2;
const SECCOMP_SET_MODE_FILTER: u64 = 1;
const SECCOMP_FILTER_FLAG_TSYNC: u64 = 1;
/// The filter flags an image may carry: LOG and SPEC_ALLOW.
const FILTER_FLAGS_KNOWN: u32 = 2 | 4;
/// Where a filter's instructions go in the scratch area.
const FILTER_AT: usize = 4096;

/// Who runs crust. Root may dump and restore any task; any other user
/// (given CAP_SYS_ADMIN and CAP_SYS_PTRACE, say as ambient capabilities)
/// only tasks whose user and group ids are all the caller's own: crust does
/// not carry a task across a privilege line its caller could not cross.
#[derive(Debug, Clone)]
pub enum Caller {
    /// uid 0.
    Root,
    /// Another user.
    User {
        /// Its uid (real, effective and saved alike).
        uid: u32,
        /// Its gid and supplementary groups.
        gids: Vec<u32>,
    },
}

impl Caller {
    /// The caller of this crust, from its own status `me`
    /// (/proc/self/status). A set-user-ID or set-group-ID crust (ids that
    /// differ) is refused.
    pub fn of(me: &Status) -> Result<Caller> {
        if me.uid[..3].iter().any(|&u| u != me.uid[0])
            || me.gid[..3].iter().any(|&g| g != me.gid[0])
        {
            return Err(Error::Privilege(format!(
                "its real, effective and saved ids to be alike (uids {:?}, gids {:?}): \
                 crust is not meant to be installed set-user-ID or set-group-ID",
                &me.uid[..3],
                &me.gid[..3]
            )));
        }
        if me.uid[1] == 0 {
            return Ok(Caller::Root);
        }
        let mut gids = me.groups.clone();
        gids.push(me.gid[0]);
        Ok(Caller::User {
            uid: me.uid[0],
            gids,
        })
    }

    /// Check that the caller may `action` ("dump", "restore") thread `tid`
    /// of process `pid`, whose (real, effective, saved, fs) uids are `uids`,
    /// gids `gids` and supplementary groups `groups`.
    pub fn check(
        &self,
        action: &'static str,
        pid: i32,
        tid: i32,
        uids: [u32; 4],
        gids: [u32; 4],
        groups: &[u32],
    ) -> Result<()> {
        let Caller::User {
            uid,
            gids: own_gids,
        } = self
        else {
            return Ok(());
        };
        let names = ["uid", "euid", "suid", "fsuid"];
        let foreign_uid = names.iter().zip(uids).find(|(_, u)| u != uid);
        let gid_names = ["gid", "egid", "sgid", "fsgid"];
        let foreign_gid = gid_names
            .iter()
            .zip(gids)
            .chain(groups.iter().map(|&g| (&"supplementary group", g)))
            .find(|(_, g)| !own_gids.contains(g));
        let what = match (foreign_uid, foreign_gid) {
            (Some((name, v)), _) => {
                format!("thread {tid} has {name} {v}, not the caller's uid {uid}")
            }
            (None, Some((name, v))) => format!(
                "thread {tid} has {name} {v}, which is not one of the caller's groups {own_gids:?}"
            ),
            (None, None) => return Ok(()),
        };
        Err(Error::ForeignCreds { action, pid, what })
    }

    /// At dump: check every thread `tids` of process `pid` (main thread's
    /// status `status`) against the caller.
    pub fn check_dump(&self, pid: i32, tids: &[i32], status: &Status) -> Result<()> {
        if matches!(self, Caller::Root) {
            return Ok(());
        }
        for &tid in tids {
            let st;
            let s = if tid == pid {
                status
            } else {
                st = procfs::read_status(tid)?;
                &st
            };
            self.check("dump", pid, tid, s.uid, s.gid, &s.groups)?;
        }
        Ok(())
    }
}

/// What only the process itself tells, asked in its main thread with
/// remote prctl calls.
pub struct Facts {
    /// PR_GET_CHILD_SUBREAPER (process-wide).
    pub child_subreaper: bool,
    /// PR_GET_THP_DISABLE (per address space).
    pub thp_disabled: bool,
}

/// Ask a frozen process's main thread (the scratch area mapped) for its
/// prctl state.
pub fn ask(r: &Remote) -> Result<Facts> {
    let s = r.scratch();
    r.call(
        "prctl(PR_GET_CHILD_SUBREAPER)",
        libc::SYS_prctl,
        [PR_GET_CHILD_SUBREAPER, s, 0, 0, 0, 0],
    )?;
    let mut v = [0u8; 4];
    r.get(0, &mut v)?;
    let thp = r.call(
        "prctl(PR_GET_THP_DISABLE)",
        libc::SYS_prctl,
        [PR_GET_THP_DISABLE, 0, 0, 0, 0, 0],
    )?;
    Ok(Facts {
        child_subreaper: u32::from_ne_bytes(v) != 0,
        thp_disabled: thp != 0,
    })
}

/// A thread's own scheduling state, which any thread of crust can read
/// (from /proc and syscalls naming the thread) without driving it.
pub struct ThreadFacts {
    /// The timer slack, from /proc/TID/timerslack_ns.
    pub timer_slack: u64,
    /// sched_getaffinity.
    pub cpu_affinity: Vec<u64>,
    /// ioprio_get.
    pub ioprio: u32,
}

/// Read the [`ThreadFacts`] of thread `tid`.
pub fn read_thread_facts(tid: i32) -> Result<ThreadFacts> {
    Ok(ThreadFacts {
        timer_slack: procfs::read_timer_slack(tid)?,
        cpu_affinity: sc::get_affinity(tid).ctx(|| format!("sched_getaffinity of thread {tid}"))?,
        ioprio: sc::get_ioprio(tid).ctx(|| format!("ioprio_get of thread {tid}"))?,
    })
}

/// Let crust's remote syscalls through the seccomp filters (or strict mode)
/// of every thread of a process that has them (`tids` with their
/// `statuses`): PTRACE_O_SUSPEND_SECCOMP on top of the options `tree`
/// seized it with. Dumping such a task without it would have its own
/// filters answer (or kill it for) crust's syscalls.
pub fn suspend_seccomp_for_dump(tids: &[i32], statuses: &[procfs::Status]) -> Result<()> {
    for (&tid, st) in tids.iter().zip(statuses) {
        if st.seccomp.unwrap_or(0) != 0 {
            suspend(tid, libc::PTRACE_O_TRACESYSGOOD)?;
        }
    }
    Ok(())
}

fn suspend(tid: i32, options: i32) -> Result<()> {
    ptrace::set_options(tid, options | PTRACE_O_SUSPEND_SECCOMP).map_err(|e| {
        if e.raw_os_error() == Some(libc::EPERM) {
            Error::Privilege(format!(
                "PTRACE_O_SUSPEND_SECCOMP for thread {tid}, which is under seccomp \
                 (CAP_SYS_ADMIN, and crust itself must not run under seccomp)"
            ))
        } else {
            Error::Sys {
                what: format!("PTRACE_O_SUSPEND_SECCOMP of {tid}"),
                err: e,
            }
        }
    })
}

fn split(v: u64) -> Vec<u32> {
    vec![v as u32, (v >> 32) as u32]
}

fn join(words: &[u32]) -> u64 {
    words.first().copied().unwrap_or(0) as u64 | (words.get(1).copied().unwrap_or(0) as u64) << 32
}

/// The credentials of a thread as CRIU stores them, from its own
/// /proc/PID/task/TID/status and its securebits.
pub fn creds_entry(status: &Status, secbits: u32) -> pb::CredsEntry {
    pb::CredsEntry {
        uid: status.uid[0],
        euid: status.uid[1],
        suid: status.uid[2],
        fsuid: status.uid[3],
        gid: status.gid[0],
        egid: status.gid[1],
        sgid: status.gid[2],
        fsgid: status.gid[3],
        cap_inh: split(status.cap_inh),
        cap_prm: split(status.cap_prm),
        cap_eff: split(status.cap_eff),
        cap_bnd: split(status.cap_bnd),
        cap_amb: split(status.cap_amb.unwrap_or(0)),
        no_new_privs: status.no_new_privs.map(u32::from),
        secbits,
        groups: status.groups.clone(),
        ..Default::default()
    }
}

/// Every seccomp filter of the dumped tree, each stored once: a filter is
/// the same as another when its program, flags and predecessor are (which
/// is what threads and children that inherited it have).
#[derive(Default)]
pub struct SeccompDumper {
    filters: Vec<pb::SeccompFilter>,
    index: HashMap<(Vec<u8>, u32, Option<u32>), u32>,
}

impl SeccompDumper {
    /// Read the filters of stopped thread `tid` (`count` of them, as
    /// /proc says), oldest first; returns the index of its newest one.
    fn add_thread(&mut self, tid: i32, count: Option<u32>) -> Result<u32> {
        let mut prev = None;
        let mut n = 0u64;
        let no_access = |e: std::io::Error| {
            if e.raw_os_error() == Some(libc::EACCES) {
                Error::Privilege(format!(
                    "access to the seccomp filters of thread {tid} (CAP_SYS_ADMIN, and crust itself must not run under seccomp)"
                ))
            } else {
                Error::Sys {
                    what: format!("PTRACE_SECCOMP_GET_FILTER of thread {tid}"),
                    err: e,
                }
            }
        };
        while let Some(prog) = sc::seccomp_filter(tid, n).map_err(no_access)? {
            let flags = sc::seccomp_flags(tid, n)
                .ctx(|| format!("PTRACE_GET_SECCOMP_METADATA of thread {tid}"))?
                as u32;
            let key = (prog, flags, prev);
            let id = match self.index.get(&key) {
                Some(&id) => id,
                None => {
                    let id = self.filters.len() as u32;
                    self.filters.push(pb::SeccompFilter {
                        filter: key.0.clone(),
                        prev,
                        flags: Some(flags),
                    });
                    self.index.insert(key, id);
                    id
                }
            };
            prev = Some(id);
            n += 1;
        }
        if count.is_some_and(|c| c as u64 != n) {
            return Err(Error::Unsupported {
                pid: tid,
                what: format!(
                    "seccomp filters that ptrace shows only in part ({n} of {})",
                    count.unwrap_or(0)
                ),
            });
        }
        prev.ok_or_else(|| Error::Kernel(format!("the seccomp filters of thread {tid}")))
    }

    /// Write seccomp.img, if any thread had filters.
    pub fn write(&self, dir: &ImageDir) -> Result<()> {
        if self.filters.is_empty() {
            return Ok(());
        }
        dir.write(
            names::SECCOMP,
            ImageKind::Seccomp,
            &[pb::SeccompEntry {
                seccomp_filters: self.filters.clone(),
            }],
        )
    }
}

/// Complete the core entry of stopped thread `tid` with its credentials
/// (from `status`, its own), seccomp state, its timer slack, CPU affinity
/// and I/O priority (`own`), and (main thread) the child subreaper flag of
/// the `process`.
pub fn fill(
    core: &mut pb::CoreEntry,
    tid: i32,
    status: &Status,
    process: &Facts,
    own: ThreadFacts,
    seccomp: &mut SeccompDumper,
) -> Result<()> {
    if let Some(tc) = core.tc.as_mut() {
        tc.child_subreaper = Some(process.child_subreaper);
    }
    let th = core
        .thread_core
        .as_mut()
        .expect("core_entry always has a thread_core");
    let mode = status.seccomp.unwrap_or(0);
    th.seccomp_mode = Some(mode as i32);
    if mode == SECCOMP_MODE_FILTER {
        th.seccomp_filter = Some(seccomp.add_thread(tid, status.seccomp_filters)?);
    }
    th.crust_cpu_affinity = own.cpu_affinity;
    th.crust_ioprio = Some(own.ioprio);
    th.crust_timer_slack = Some(own.timer_slack);
    Ok(())
}

// ---------------------------------------------------------------------------
// Restore.

fn cap_list(mask: u64) -> String {
    (0..64)
        .filter(|b| mask >> b & 1 == 1)
        .map(|b| {
            CAP_NAMES
                .get(b)
                .map(|n| n.to_string())
                .unwrap_or_else(|| format!("capability {b}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the restoring crust itself holds, against which images are checked.
struct Own {
    prm: u64,
    inh: u64,
    bnd: u64,
    eff: u64,
    last_cap: u32,
    oom_score_adj: i32,
    cpus: Vec<u64>,
    in_seccomp: bool,
    caller: Caller,
}

/// Credentials, seccomp filters and scheduling state to restore: loaded and
/// checked against what this crust can grant before any process exists.
pub struct Restorer {
    filters: Vec<pb::SeccompFilter>,
    own: Own,
}

impl Restorer {
    /// Read seccomp.img (if there is one) and what crust itself holds.
    pub fn load(dir: &ImageDir) -> Result<Restorer> {
        let filters = if dir.file(names::SECCOMP).exists() {
            let e: pb::SeccompEntry = dir.read_one(names::SECCOMP, ImageKind::Seccomp)?;
            e.seccomp_filters
        } else {
            Vec::new()
        };
        let bad = |what: String| Error::BadImage {
            file: names::SECCOMP.to_string(),
            what,
        };
        for (i, f) in filters.iter().enumerate() {
            let insns = f.filter.len() / SOCK_FILTER_SIZE;
            if f.filter.len() % SOCK_FILTER_SIZE != 0 || insns == 0 || insns > sc::BPF_MAXINSNS {
                return Err(bad(format!(
                    "filter {i} is {} bytes, not 1 to {} BPF instructions",
                    f.filter.len(),
                    sc::BPF_MAXINSNS
                )));
            }
            if f.prev.is_some_and(|p| p as usize >= i) {
                return Err(bad(format!(
                    "filter {i} follows filter {}, which is not stored before it",
                    f.prev.unwrap_or(0)
                )));
            }
            if f.flags.unwrap_or(0) & !FILTER_FLAGS_KNOWN != 0 {
                return Err(bad(format!(
                    "filter {i} has unknown flags {:#x}",
                    f.flags.unwrap_or(0)
                )));
            }
        }
        let me = procfs::read_status(std::process::id() as i32)?;
        let oom = std::fs::read_to_string("/proc/self/oom_score_adj")
            .ctx(|| "reading /proc/self/oom_score_adj".into())?;
        Ok(Restorer {
            filters,
            own: Own {
                prm: me.cap_prm,
                inh: me.cap_inh,
                bnd: me.cap_bnd,
                eff: me.cap_eff,
                last_cap: sc::cap_last_cap().ctx(|| "reading cap_last_cap".into())?,
                oom_score_adj: oom.trim().parse().unwrap_or(0),
                cpus: sc::get_affinity(0).ctx(|| "crust's own CPU affinity".into())?,
                in_seccomp: me.seccomp.unwrap_or(0) != 0,
                caller: Caller::of(&me)?,
            },
        })
    }

    /// Check that crust can restore the credentials, seccomp state,
    /// affinity and oom_score_adj of process `pid`, whose thread cores are
    /// `cores` (main thread first, with their file names).
    pub fn check(&self, pid: u32, cores: &[(i32, pb::CoreEntry, String)]) -> Result<()> {
        let own = &self.own;
        let refuse = |what: String| Error::Creds {
            pid: pid as i32,
            what,
        };
        if let Some(adj) = cores[0].1.tc.as_ref().and_then(|t| t.oom_score_adj) {
            if !(-1000..=1000).contains(&adj) {
                return Err(Error::BadImage {
                    file: cores[0].2.clone(),
                    what: format!("oom_score_adj {adj} is outside -1000..1000"),
                });
            }
            if adj < own.oom_score_adj && own.eff >> CAP_SYS_RESOURCE & 1 == 0 {
                return Err(refuse(format!(
                    "oom_score_adj {adj} is below crust's own {} and lowering it needs CAP_SYS_RESOURCE",
                    own.oom_score_adj
                )));
            }
        }
        for (tid, core, file) in cores {
            let bad = |what: String| Error::BadImage {
                file: file.clone(),
                what,
            };
            let Some(th) = core.thread_core.as_ref() else {
                continue;
            };
            if !th.crust_cpu_affinity.is_empty() {
                let mask = &th.crust_cpu_affinity;
                let usable = mask
                    .iter()
                    .enumerate()
                    .all(|(i, w)| w & !own.cpus.get(i).copied().unwrap_or(0) == 0);
                if !usable {
                    return Err(refuse(format!(
                        "thread {tid}: its CPU affinity {} names CPUs crust cannot use here ({})",
                        cpu_list(mask),
                        cpu_list(&own.cpus)
                    )));
                }
            }
            match th.seccomp_mode.unwrap_or(0) as u32 {
                0 => {}
                m @ (SECCOMP_MODE_STRICT | SECCOMP_MODE_FILTER) => {
                    if own.in_seccomp {
                        return Err(Error::Privilege(format!(
                            "to run outside seccomp to restore the seccomp mode of thread {tid} (PTRACE_O_SUSPEND_SECCOMP)"
                        )));
                    }
                    if m == SECCOMP_MODE_FILTER {
                        match th.seccomp_filter {
                            Some(f) if (f as usize) < self.filters.len() => {}
                            Some(f) => {
                                return Err(bad(format!(
                                    "thread {tid}: seccomp filter {f} is not in {} ({} filters)",
                                    names::SECCOMP,
                                    self.filters.len()
                                )))
                            }
                            None => {
                                return Err(bad(format!(
                                    "thread {tid}: seccomp filter mode without a filter"
                                )))
                            }
                        }
                    }
                }
                m => return Err(bad(format!("thread {tid}: unknown seccomp mode {m}"))),
            }
            let Some(c) = th.creds.as_ref() else {
                continue;
            };
            let ids = [
                ("uid", c.uid),
                ("euid", c.euid),
                ("suid", c.suid),
                ("fsuid", c.fsuid),
                ("gid", c.gid),
                ("egid", c.egid),
                ("sgid", c.sgid),
                ("fsgid", c.fsgid),
            ];
            let groups = c.groups.iter().map(|&g| ("group", g));
            for (name, v) in ids.into_iter().chain(groups) {
                if v == u32::MAX {
                    return Err(bad(format!(
                        "thread {tid}: {name} {v} (-1) is not a valid id"
                    )));
                }
            }
            own.caller.check(
                "restore",
                pid as i32,
                *tid,
                [c.uid, c.euid, c.suid, c.fsuid],
                [c.gid, c.egid, c.sgid, c.fsgid],
                &c.groups,
            )?;
            if c.secbits & !SECBITS_KNOWN != 0 {
                return Err(bad(format!(
                    "thread {tid}: unknown securebits {:#x}",
                    c.secbits
                )));
            }
            let (eff, prm, inh, bnd, amb) = (
                join(&c.cap_eff),
                join(&c.cap_prm),
                join(&c.cap_inh),
                join(&c.cap_bnd),
                join(&c.cap_amb),
            );
            let beyond = !(u64::MAX >> (63 - own.last_cap.min(63)));
            for (set, v) in [
                ("effective", eff),
                ("permitted", prm),
                ("inheritable", inh),
                ("bounding", bnd),
                ("ambient", amb),
            ] {
                if v & beyond != 0 {
                    return Err(refuse(format!(
                        "thread {tid}: its {set} capabilities hold {}, which this kernel does not have (its last is {})",
                        cap_list(v & beyond),
                        own.last_cap
                    )));
                }
            }
            if eff & !prm != 0 {
                return Err(bad(format!(
                    "thread {tid}: effective capabilities {} are not permitted",
                    cap_list(eff & !prm)
                )));
            }
            if amb & !(prm & inh) != 0 {
                return Err(bad(format!(
                    "thread {tid}: ambient capabilities {} are not both permitted and inheritable",
                    cap_list(amb & !(prm & inh))
                )));
            }
            if prm & !own.prm != 0 {
                return Err(refuse(format!(
                    "thread {tid}: permitted capabilities {} are not crust's own to grant",
                    cap_list(prm & !own.prm)
                )));
            }
            if bnd & !own.bnd != 0 {
                return Err(refuse(format!(
                    "thread {tid}: its bounding set holds {}, outside crust's own bounding set",
                    cap_list(bnd & !own.bnd)
                )));
            }
            if inh & !(own.inh | own.bnd) != 0 {
                return Err(refuse(format!(
                    "thread {tid}: inheritable capabilities {} are outside crust's bounding set",
                    cap_list(inh & !(own.inh | own.bnd))
                )));
            }
            let needed = [
                (6, "CAP_SETGID"),
                (7, "CAP_SETUID"),
                (CAP_SETPCAP, "CAP_SETPCAP"),
            ];
            for (bit, name) in needed {
                if own.eff >> bit & 1 == 0 {
                    return Err(Error::Privilege(format!(
                        "{name} to restore the credentials of thread {tid}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Put back, in a restored process whose threads are `tids` (crust's
    /// view, main thread first, matching `cores`), everything of this
    /// module: the child subreaper flag, THP disabling, oom_score_adj,
    /// affinity, I/O priority and timer slack; then each thread's seccomp
    /// filters (the longest chain every thread shares installed once with
    /// TSYNC, so that it stays shared) or strict mode; then its credentials.
    /// The scratch area must be mapped. From here on, seccomp does not act
    /// on crust's remote syscalls (PTRACE_O_SUSPEND_SECCOMP) until the tree
    /// is let go.
    pub fn apply(
        &self,
        r: &Remote,
        tids: &[i32],
        cores: &[(i32, pb::CoreEntry, String)],
        thp_disabled: Option<bool>,
    ) -> Result<()> {
        let pid = r.pid();
        if let Some(tc) = cores[0].1.tc.as_ref() {
            if let Some(sub) = tc.child_subreaper {
                r.call(
                    "prctl(PR_SET_CHILD_SUBREAPER)",
                    libc::SYS_prctl,
                    [PR_SET_CHILD_SUBREAPER, sub as u64, 0, 0, 0, 0],
                )?;
            }
            if let Some(adj) = tc.oom_score_adj {
                std::fs::write(format!("/proc/{pid}/oom_score_adj"), adj.to_string())
                    .ctx(|| format!("setting oom_score_adj {adj} of {pid}"))?;
            }
        }
        if let Some(thp) = thp_disabled {
            r.call(
                "prctl(PR_SET_THP_DISABLE)",
                libc::SYS_prctl,
                [PR_SET_THP_DISABLE, thp as u64, 0, 0, 0, 0],
            )?;
        }
        let ths: Vec<&pb::ThreadCoreEntry> = cores
            .iter()
            .map(|c| c.1.thread_core.as_ref().expect("checked at load"))
            .collect();
        let chains: Vec<Vec<u32>> = ths.iter().map(|th| self.chain(th)).collect();
        if ths.iter().any(|th| th.seccomp_mode.unwrap_or(0) != 0) {
            for &t in tids {
                // The options tree::seize_restored seized it with.
                suspend(
                    t,
                    libc::PTRACE_O_TRACESYSGOOD
                        | libc::PTRACE_O_EXITKILL
                        | libc::PTRACE_O_TRACECLONE,
                )?;
            }
        }
        let shared = chains.iter().skip(1).fold(chains[0].len(), |n, c| {
            n.min(c.iter().zip(&chains[0]).take_while(|(a, b)| a == b).count())
        });
        let sync = if tids.len() > 1 {
            SECCOMP_FILTER_FLAG_TSYNC
        } else {
            0
        };
        let start = Inherited::of(pid)?;
        for &f in &chains[0][..shared] {
            self.install(r, f, sync)?;
        }
        for (i, &tid) in tids.iter().enumerate() {
            let th = ths[i];
            if !th.crust_cpu_affinity.is_empty() && th.crust_cpu_affinity != start.cpus {
                sc::set_affinity(tid, &th.crust_cpu_affinity)
                    .ctx(|| format!("sched_setaffinity of {tid}"))?;
            }
            // 0 (no class) too, unless the thread already has it.
            if let Some(prio) = th.crust_ioprio.filter(|&p| p != start.ioprio) {
                sc::set_ioprio(tid, prio).ctx(|| format!("ioprio_set of {tid}"))?;
            }
            let slack = th
                .crust_timer_slack
                .filter(|&s| s != 0 && s != start.timer_slack);
            let filters = &chains[i][shared..];
            let strict = th.seccomp_mode == Some(SECCOMP_MODE_STRICT as i32);
            let creds = th.creds.as_ref().filter(|c| !start.has_creds(c));
            if slack.is_none() && filters.is_empty() && !strict && creds.is_none() {
                continue;
            }
            let regs = ptrace::get_regs(tid).ctx(|| format!("registers of {tid}"))?;
            let mut sib = r.sibling(tid, regs);
            let res = (|| -> Result<()> {
                if let Some(slack) = slack {
                    sib.call(
                        "prctl(PR_SET_TIMERSLACK)",
                        libc::SYS_prctl,
                        [PR_SET_TIMERSLACK, slack, 0, 0, 0, 0],
                    )?;
                }
                for &f in filters {
                    self.install(&sib, f, 0)?;
                }
                if strict {
                    sib.call(
                        "prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT)",
                        libc::SYS_prctl,
                        [PR_SET_SECCOMP, SECCOMP_MODE_STRICT as u64, 0, 0, 0, 0],
                    )?;
                }
                if let Some(c) = creds {
                    restore_creds(&sib, c, self.own.last_cap)?;
                    // A change of credentials clears the parent-death signal.
                    if let Some(sig) = th.pdeath_sig.filter(|&s| s != 0) {
                        sib.call(
                            "prctl(PR_SET_PDEATHSIG)",
                            libc::SYS_prctl,
                            [PR_SET_PDEATHSIG, sig as u64, 0, 0, 0, 0],
                        )?;
                    }
                }
                Ok(())
            })();
            sib.forget_scratch();
            res?;
        }
        Ok(())
    }

    /// A thread's seccomp filters, oldest first.
    fn chain(&self, th: &pb::ThreadCoreEntry) -> Vec<u32> {
        let mut out = Vec::new();
        if th.seccomp_mode == Some(SECCOMP_MODE_FILTER as i32) {
            let mut next = th.seccomp_filter;
            while let Some(f) = next {
                out.push(f);
                next = self.filters[f as usize].prev;
            }
        }
        out.reverse();
        out
    }

    /// Install filter `f` in the thread `r` drives.
    fn install(&self, r: &Remote, f: u32, extra_flags: u64) -> Result<()> {
        let filt = &self.filters[f as usize];
        let prog = r.put(FILTER_AT, &filt.filter)?;
        let mut fprog = Vec::with_capacity(16);
        fprog.extend(((filt.filter.len() / SOCK_FILTER_SIZE) as u16).to_ne_bytes());
        fprog.extend([0u8; 6]);
        fprog.extend(prog.to_ne_bytes());
        let a = r.put(0, &fprog)?;
        let flags = filt.flags.unwrap_or(0) as u64 | extra_flags;
        let got = r.call(
            &format!("seccomp(SECCOMP_SET_MODE_FILTER) of filter {f}"),
            libc::SYS_seccomp,
            [SECCOMP_SET_MODE_FILTER, flags, a, 0, 0, 0],
        )?;
        if got != 0 {
            return Err(Error::Restore {
                pid: r.pid(),
                what: format!("thread {got} refused to share seccomp filter {f} (TSYNC)"),
            });
        }
        Ok(())
    }
}

fn cpu_list(mask: &[u64]) -> String {
    let cpus: Vec<String> = mask
        .iter()
        .enumerate()
        .flat_map(|(i, w)| {
            (0..64)
                .filter(move |b| w >> b & 1 == 1)
                .map(move |b| i * 64 + b)
        })
        .map(|c| c.to_string())
        .collect();
    if cpus.is_empty() {
        "none".into()
    } else {
        cpus.join(",")
    }
}

/// What every thread of a restored process holds before
/// [`Restorer::apply`] changes anything: its main thread's credentials,
/// timer slack, CPU affinity and I/O priority. The other threads were
/// cloned from the main thread since it was forked (they share its
/// credentials and copied the rest), so one read serves them all.
struct Inherited {
    creds: pb::CredsEntry,
    timer_slack: u64,
    cpus: Vec<u64>,
    ioprio: u32,
}

impl Inherited {
    /// Read them from the main thread `pid`.
    fn of(pid: i32) -> Result<Inherited> {
        let st = procfs::read_task_status(pid, pid)?;
        // The process inherited crust's own securebits.
        Ok(Inherited {
            creds: creds_entry(&st, sc::own_securebits()),
            timer_slack: procfs::read_timer_slack(pid)?,
            cpus: sc::get_affinity(pid).ctx(|| format!("sched_getaffinity of {pid}"))?,
            ioprio: sc::get_ioprio(pid).ctx(|| format!("ioprio_get of {pid}"))?,
        })
    }

    /// Whether credentials `c` are these, so that nothing needs changing.
    fn has_creds(&self, c: &pb::CredsEntry) -> bool {
        let mine = &self.creds;
        mine.secbits == c.secbits
            && mine.uid == c.uid
            && mine.euid == c.euid
            && mine.suid == c.suid
            && mine.fsuid == c.fsuid
            && mine.gid == c.gid
            && mine.egid == c.egid
            && mine.sgid == c.sgid
            && mine.fsgid == c.fsgid
            && mine.groups == c.groups
            && join(&mine.cap_eff) == join(&c.cap_eff)
            && join(&mine.cap_prm) == join(&c.cap_prm)
            && join(&mine.cap_inh) == join(&c.cap_inh)
            && join(&mine.cap_bnd) == join(&c.cap_bnd)
            && join(&mine.cap_amb) == join(&c.cap_amb)
            && mine.no_new_privs.unwrap_or(0) == c.no_new_privs.unwrap_or(0)
    }
}

/// Set the credentials of the thread `r` drives, in an order the kernel
/// accepts: groups; every capability kept across the uid switch
/// (SECBIT_NO_SETUID_FIXUP); gids and uids; the capability sets with
/// CAP_SETPCAP kept; the bounding set dropped; ambient caps raised; the
/// final securebits; the final capability sets; no_new_privs.
fn restore_creds(r: &Remote, c: &pb::CredsEntry, last_cap: u32) -> Result<()> {
    let prctl = |what: &str, args: [u64; 6]| r.call(what, libc::SYS_prctl, args);
    let groups: Vec<u8> = c.groups.iter().flat_map(|g| g.to_ne_bytes()).collect();
    let a = if groups.is_empty() {
        0
    } else {
        r.put(0, &groups)?
    };
    r.call(
        "setgroups",
        libc::SYS_setgroups,
        [c.groups.len() as u64, a, 0, 0, 0, 0],
    )?;
    prctl(
        "prctl(PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP)",
        [PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP, 0, 0, 0, 0],
    )?;
    let id = |v: u32| v as u64;
    r.call(
        "setresgid",
        libc::SYS_setresgid,
        [id(c.gid), id(c.egid), id(c.sgid), 0, 0, 0],
    )?;
    r.call(
        "setresuid",
        libc::SYS_setresuid,
        [id(c.uid), id(c.euid), id(c.suid), 0, 0, 0],
    )?;
    r.call("setfsgid", libc::SYS_setfsgid, [id(c.fsgid), 0, 0, 0, 0, 0])?;
    r.call("setfsuid", libc::SYS_setfsuid, [id(c.fsuid), 0, 0, 0, 0, 0])?;
    let (eff, prm, inh, bnd, amb) = (
        join(&c.cap_eff),
        join(&c.cap_prm),
        join(&c.cap_inh),
        join(&c.cap_bnd),
        join(&c.cap_amb),
    );
    let setpcap = 1u64 << CAP_SETPCAP;
    capset(r, eff | setpcap, prm | setpcap, inh)?;
    for cap in 0..=last_cap.min(63) {
        if bnd >> cap & 1 == 0 {
            prctl(
                "prctl(PR_CAPBSET_DROP)",
                [PR_CAPBSET_DROP, cap as u64, 0, 0, 0, 0],
            )?;
        }
    }
    prctl(
        "prctl(PR_CAP_AMBIENT_CLEAR_ALL)",
        [PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0, 0],
    )?;
    for cap in 0..64u64 {
        if amb >> cap & 1 == 1 {
            prctl(
                "prctl(PR_CAP_AMBIENT_RAISE)",
                [PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0, 0],
            )?;
        }
    }
    prctl(
        "prctl(PR_SET_SECUREBITS)",
        [PR_SET_SECUREBITS, c.secbits as u64, 0, 0, 0, 0],
    )?;
    capset(r, eff, prm, inh)?;
    if c.no_new_privs.unwrap_or(0) != 0 {
        prctl(
            "prctl(PR_SET_NO_NEW_PRIVS)",
            [PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, 0],
        )?;
    }
    Ok(())
}

/// capset(2) of the calling thread, version 3 (64-bit sets).
fn capset(r: &Remote, eff: u64, prm: u64, inh: u64) -> Result<()> {
    let mut hdr = Vec::with_capacity(8);
    hdr.extend(sc::CAPABILITY_VERSION_3.to_ne_bytes());
    hdr.extend(0i32.to_ne_bytes());
    // struct __user_cap_data_struct[2]: {effective, permitted, inheritable}
    // for the low words, then for the high words.
    let mut data = Vec::with_capacity(24);
    for v in [eff, prm, inh] {
        data.extend((v as u32).to_ne_bytes());
    }
    for v in [eff, prm, inh] {
        data.extend(((v >> 32) as u32).to_ne_bytes());
    }
    let hdr = r.put(0, &hdr)?;
    let d = r.put(16, &data)?;
    r.call("capset", libc::SYS_capset, [hdr, d, 0, 0, 0, 0])?;
    Ok(())
}

/// With whose filesystem identity a restore opens and creates the paths
/// its images name. When the images are not trusted (someone other than a
/// root caller could have written them), each file is opened as the first
/// process of the tree (in tree order, parents first) that holds it by an
/// fd or a mapping: with that task's fs uid, fs gid, groups and effective
/// capabilities, so that an image cannot make crust open or create what
/// the restored task itself could not. Processes whose identity is crust's
/// own, and files no process names, are opened as crust. Empty (the
/// default): trusted images, every path opened as crust.
#[derive(Default)]
pub struct PathIdentities {
    confined: Option<Confinement>,
    by_pid: HashMap<u32, sc::FsIdentity>,
    by_file: HashMap<u32, u32>,
}

/// Why paths are confined, and what crust itself has.
struct Confinement {
    /// crust's own identity (groups sorted).
    own: sc::FsIdentity,
    /// crust's permitted capabilities.
    permitted: u64,
    /// Why the images are not trusted.
    why: String,
}

/// The calling thread acting as a restored task (see [`PathIdentities`]).
pub struct AsTask {
    _acting: sc::ActingAs,
    pid: u32,
    fsuid: u32,
    fsgid: u32,
    why: String,
}

impl AsTask {
    /// A note for errors: whose identity the path was opened with, and why.
    pub fn note(me: &Option<AsTask>) -> String {
        match me {
            None => String::new(),
            Some(a) => format!(
                " (opened as restored pid {} could, with fsuid {} and fsgid {}, as the images \
                 are not trusted: {}; --trust-image-paths opens image paths as crust)",
                a.pid, a.fsuid, a.fsgid, a.why
            ),
        }
    }
}

impl PathIdentities {
    /// Paths confined to the restored tasks' identities, because `why`.
    pub fn confined(why: String) -> Result<Self> {
        let mut own = sc::own_fs_identity().ctx(|| "crust's own fs identity".into())?;
        own.groups.sort_unstable();
        let permitted = procfs::read_status(std::process::id() as i32)?.cap_prm;
        Ok(PathIdentities {
            confined: Some(Confinement {
                own,
                permitted,
                why,
            }),
            ..Default::default()
        })
    }

    /// Record the identity of process `pid` from its main thread's `core`
    /// (none in the image: opened as crust).
    pub fn add_task(&mut self, pid: u32, core: &pb::CoreEntry) {
        let Some(Confinement { own, permitted, .. }) = &self.confined else {
            return;
        };
        let Some(c) = core.thread_core.as_ref().and_then(|t| t.creds.as_ref()) else {
            return;
        };
        let mut groups = c.groups.clone();
        groups.sort_unstable();
        let id = sc::FsIdentity {
            fsuid: c.fsuid,
            fsgid: c.fsgid,
            groups,
            cap_eff: join(&c.cap_eff) & permitted,
        };
        if id != *own {
            self.by_pid.insert(pid, id);
        }
    }

    /// Record that `pid` holds file `file_id` (by an fd or a mapping); the
    /// first holder recorded opens it.
    pub fn add_holder(&mut self, file_id: u32, pid: u32) {
        self.by_file.entry(file_id).or_insert(pid);
    }

    /// Act, on the calling thread, as the process that opens file
    /// `file_id`; `None` when that is crust itself.
    pub fn act_for_file(&self, file_id: u32) -> Result<Option<AsTask>> {
        match self.by_file.get(&file_id) {
            Some(&pid) => self.act_for_pid(pid),
            None => Ok(None),
        }
    }

    /// Act, on the calling thread, as restored process `pid`; `None` when
    /// its identity is crust's own.
    pub fn act_for_pid(&self, pid: u32) -> Result<Option<AsTask>> {
        let Some(id) = self.by_pid.get(&pid) else {
            return Ok(None);
        };
        let acting = sc::act_as(id).ctx(|| {
            format!(
                "taking the fs identity of restored pid {pid} (fsuid {}, fsgid {}) to open its paths",
                id.fsuid, id.fsgid
            )
        })?;
        Ok(Some(AsTask {
            _acting: acting,
            pid,
            fsuid: id.fsuid,
            fsgid: id.fsgid,
            why: self
                .confined
                .as_ref()
                .map_or_else(String::new, |c| c.why.clone()),
        }))
    }
}

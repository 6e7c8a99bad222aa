//! Sessions and process groups. A process inherits its session from the
//! process that forks it and can only join groups of its own session, so a
//! session or group whose leader exited before the dump is recreated at
//! restore by a helper task, as in CRIU: the helper takes the leader's pid,
//! creates the session or group, forks the members that must inherit it,
//! and is killed and reaped before the tree runs; its orphans are adopted
//! by the process that forked it (made a child subreaper meanwhile), which
//! is their parent in the images.

use std::collections::{HashMap, HashSet};

use crust_image::pb;

use crate::error::{Error, Result};
use crate::remote::Remote;

/// A task that exists only while a tree is restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Helper {
    /// The pid of the session or group it stands for.
    pub pid: u32,
    /// The process that forks it: a pid of the tree, another helper, or 0
    /// for crust itself (the init of a new pid namespace).
    pub parent: u32,
    /// Whether it creates a session (and its group), or only a group.
    pub session: bool,
}

/// Who creates whom: the helpers a tree needs and, for every process of
/// the tree, the pid that forks it (its parent, or a helper; 0 for crust).
#[derive(Debug, Default, Clone)]
pub struct Lineage {
    /// Helpers, each after the one that forks it.
    pub helpers: Vec<Helper>,
    /// The forking pid of each process of the tree.
    pub fork_parent: HashMap<u32, u32>,
    /// Session leaders that make a terminal their controlling terminal
    /// right after setsid, with crust's fd of that terminal.
    pub controlling_tty: HashMap<u32, std::os::fd::RawFd>,
}

impl Lineage {
    /// Whether `pid` forks a helper that creates a session: it must adopt
    /// that helper's orphans.
    pub fn adopts(&self, pid: u32) -> bool {
        self.helpers.iter().any(|h| h.session && h.parent == pid)
    }
}

/// Work out the helpers of a tree (`entries`, root first, parents before
/// children; `zombies` cannot fork). With `shell_job`, the root's session
/// and group are the shell's: the restoring crust's stand in for them.
/// Layouts helpers cannot recreate are refused with the reason.
pub fn plan(
    entries: &[pb::PstreeEntry],
    zombies: &HashSet<u32>,
    shell_job: bool,
) -> std::result::Result<Lineage, String> {
    let Some(root) = entries.first() else {
        return Ok(Lineage::default());
    };
    let pids: HashSet<u32> = entries.iter().map(|e| e.pid).collect();
    let by_pid: HashMap<u32, &pb::PstreeEntry> = entries.iter().map(|e| (e.pid, e)).collect();
    let shell = |id: u32, of_root: u32| shell_job && id == of_root;
    let mut out = Lineage {
        controlling_tty: HashMap::new(),
        helpers: Vec::new(),
        fork_parent: entries
            .iter()
            .map(|e| (e.pid, if e.pid == root.pid { 0 } else { e.ppid }))
            .collect(),
    };
    let mut seen = HashSet::new();
    for e in entries {
        let s = e.sid;
        if pids.contains(&s) || shell(s, root.sid) || !seen.insert(s) {
            continue;
        }
        // The members that cannot inherit the session from their parent.
        let firsts: Vec<&pb::PstreeEntry> = entries
            .iter()
            .filter(|m| {
                m.sid == s && (m.pid == root.pid || by_pid.get(&m.ppid).is_none_or(|p| p.sid != s))
            })
            .collect();
        let parent = out.fork_parent[&firsts[0].pid];
        if let Some(other) = firsts.iter().find(|m| out.fork_parent[&m.pid] != parent) {
            return Err(format!(
                "session {s}, whose leader exited, has members with different parents ({} of {} and {} of {parent}); recreating it is not supported",
                other.pid, out.fork_parent[&other.pid], firsts[0].pid
            ));
        }
        out.helpers.push(Helper {
            pid: s,
            parent,
            session: true,
        });
        for m in firsts {
            out.fork_parent.insert(m.pid, s);
        }
    }
    let sessions: HashSet<u32> = out.helpers.iter().map(|h| h.pid).collect();
    let mut seen = HashSet::new();
    for e in entries {
        let g = e.pgid;
        if pids.contains(&g) || sessions.contains(&g) || shell(g, root.pgid) || !seen.insert(g) {
            continue;
        }
        // Forked by a live process of the group's session, or by the
        // session's helper.
        let parent = entries
            .iter()
            .find(|p| p.sid == e.sid && !zombies.contains(&p.pid))
            .map(|p| p.pid)
            .or_else(|| sessions.get(&e.sid).copied())
            .ok_or_else(|| {
                format!(
                    "group {g}, whose leader exited, is in session {} where no process can recreate it; not supported",
                    e.sid
                )
            })?;
        out.helpers.push(Helper {
            pid: g,
            parent,
            session: false,
        });
    }
    Ok(out)
}

/// Refuse at dump a tree whose sessions and groups crust cannot restore:
/// a leader outside the tree that is still alive (unless it is the shell's
/// with `shell_job`), or a layout helpers cannot recreate. A leader that
/// exited left its pid taken by the session or group, so no other task
/// has it.
pub fn check_dump(
    entries: &[pb::PstreeEntry],
    zombies: &HashSet<u32>,
    shell_job: bool,
) -> Result<()> {
    let Some(root) = entries.first() else {
        return Ok(());
    };
    let pids: HashSet<u32> = entries.iter().map(|e| e.pid).collect();
    let alive = |p: u32| std::path::Path::new(&format!("/proc/{p}")).exists();
    for e in entries {
        let shell = shell_job && (e.sid == root.sid || e.pgid == root.pgid);
        if shell {
            continue;
        }
        if !pids.contains(&e.sid) && alive(e.sid) {
            return Err(Error::Unsupported {
                pid: e.pid as i32,
                what: format!(
                    "a task whose session leader (sid {}) is outside the dumped tree without --shell-job (-j)",
                    e.sid
                ),
            });
        }
        if !pids.contains(&e.pgid) && alive(e.pgid) {
            return Err(Error::Unsupported {
                pid: e.pid as i32,
                what: format!(
                    "a task whose process group leader ({}) is outside the dumped tree without --shell-job (-j)",
                    e.pgid
                ),
            });
        }
    }
    plan(entries, zombies, shell_job).map_err(|what| Error::Unsupported {
        pid: root.pid as i32,
        what,
    })?;
    Ok(())
}

/// `PR_SET_CHILD_SUBREAPER`.
const PR_SET_CHILD_SUBREAPER: u64 = 36;

/// In a seized restored process whose helper children are dead: reap
/// `helpers` (pids in its own namespace) and stop being a subreaper.
pub fn reap_in(r: &Remote, helpers: &[i32]) -> Result<()> {
    for &h in helpers {
        r.call(
            "wait4 for a helper",
            libc::SYS_wait4,
            [h as u64, 0, libc::__WALL as u64, 0, 0, 0],
        )?;
    }
    r.call(
        "prctl(PR_SET_CHILD_SUBREAPER, 0)",
        libc::SYS_prctl,
        [PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0, 0],
    )?;
    Ok(())
}

/// In a restored process (scratch area mapped) that reaped helpers: take
/// the SIGCHLDs their deaths and adopted zombies queued, which the dumped
/// process never had pending.
pub fn drain_sigchld(r: &Remote) -> Result<()> {
    let set: u64 = 1 << (libc::SIGCHLD - 1);
    let mut buf = [0u8; 24];
    buf[..8].copy_from_slice(&set.to_ne_bytes());
    let at = r.put(0, &buf)?;
    loop {
        let got = r.raw(
            "rt_sigtimedwait for SIGCHLD",
            libc::SYS_rt_sigtimedwait,
            [at, 0, at + 8, 8, 0, 0],
        )?;
        if got != libc::SIGCHLD as i64 {
            return Ok(());
        }
    }
}

/// A tree's pstree layout that [`plan`] refuses, as a restore error naming
/// the pstree image.
pub fn bad_layout(what: String) -> Error {
    Error::BadImage {
        file: crust_image::names::PSTREE.into(),
        what,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(pid: u32, ppid: u32, pgid: u32, sid: u32) -> pb::PstreeEntry {
        pb::PstreeEntry {
            pid,
            ppid,
            pgid,
            sid,
            threads: vec![pid],
        }
    }

    #[test]
    fn no_helpers_for_a_plain_tree() {
        let t = [e(10, 0, 10, 10), e(11, 10, 10, 10), e(12, 11, 12, 10)];
        let l = plan(&t, &HashSet::new(), false).unwrap();
        assert!(l.helpers.is_empty());
        assert_eq!(l.fork_parent[&12], 11);
        assert_eq!(l.fork_parent[&10], 0);
    }

    #[test]
    fn session_of_an_exited_leader() {
        // 10 root; 20 led a session and exited; 21 adopted by 10, 22 its child.
        let t = [e(10, 0, 10, 10), e(21, 10, 20, 20), e(22, 21, 20, 20)];
        let l = plan(&t, &HashSet::new(), false).unwrap();
        assert_eq!(
            l.helpers,
            vec![Helper {
                pid: 20,
                parent: 10,
                session: true
            }]
        );
        assert_eq!(l.fork_parent[&21], 20);
        assert_eq!(l.fork_parent[&22], 21);
        assert!(l.adopts(10));
    }

    #[test]
    fn daemon_root_and_dead_group() {
        // The root's session leader exited; 31 is in group 40 whose leader
        // exited too.
        let t = [e(30, 0, 29, 29), e(31, 30, 40, 29)];
        let l = plan(&t, &HashSet::new(), false).unwrap();
        assert_eq!(l.helpers.len(), 2);
        assert_eq!(l.helpers[0].parent, 0);
        assert_eq!(l.fork_parent[&30], 29);
        assert_eq!(
            l.helpers[1],
            Helper {
                pid: 40,
                parent: 30,
                session: false
            }
        );
        // With -j the root's session is the shell's.
        let l = plan(&t, &HashSet::new(), true).unwrap();
        assert_eq!(l.helpers.len(), 1);
    }

    #[test]
    fn members_with_different_parents_are_refused() {
        let t = [
            e(10, 0, 10, 10),
            e(11, 10, 11, 10),
            e(21, 10, 20, 20),
            e(22, 11, 20, 20),
        ];
        let err = plan(&t, &HashSet::new(), false).unwrap_err();
        assert!(err.contains("session 20"), "{err}");
    }

    #[test]
    fn group_in_a_session_of_zombies_only() {
        let t = [e(10, 0, 10, 10), e(11, 10, 50, 10)];
        let z: HashSet<u32> = [10, 11].into();
        assert!(plan(&t, &z, false).is_err());
    }
}

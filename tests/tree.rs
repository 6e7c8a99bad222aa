//! Process trees and multi-threaded processes: dumped whole, restored whole
//! (same pids, parents, groups, sessions, zombies, threads), and restores
//! that fail part-way leave nothing behind.

use crust_tests::*;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

// ------------------------------------------------------------- /proc views

/// (state, ppid, pgid, sid, starttime) from /proc/PID/stat.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Stat {
    state: char,
    ppid: i32,
    pgid: i32,
    sid: i32,
    start: u64,
}

fn stat(pid: i32) -> Option<Stat> {
    let t = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = t.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] = field 3 (state); starttime is field 22.
    Some(Stat {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        pgid: f.get(2)?.parse().ok()?,
        sid: f.get(3)?.parse().ok()?,
        start: f.get(19)?.parse().ok()?,
    })
}

/// The stat without the state (which changes as a process runs).
fn no_state(m: &BTreeMap<i32, Stat>) -> BTreeMap<i32, (i32, i32, i32, u64)> {
    m.iter()
        .map(|(p, s)| (*p, (s.ppid, s.pgid, s.sid, s.start)))
        .collect()
}

/// Every process's stat, by pid.
fn all_stats() -> BTreeMap<i32, Stat> {
    let mut m = BTreeMap::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) {
            if let Some(st) = stat(pid) {
                m.insert(pid, st);
            }
        }
    }
    m
}

/// `root` and all its descendants (zombies included), from the ppid links.
fn live_tree(root: i32) -> BTreeMap<i32, Stat> {
    let all = all_stats();
    let mut out = BTreeMap::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        if let Some(st) = all.get(&p) {
            out.insert(p, *st);
            todo.extend(all.iter().filter(|(_, s)| s.ppid == p).map(|(c, _)| *c));
        }
    }
    out
}

fn task_tids(pid: i32) -> BTreeSet<i32> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Is `pid` this test process's descendant (child, grandchild, reparented
/// orphan...)?
fn ours(pid: i32, all: &BTreeMap<i32, Stat>) -> bool {
    let me = std::process::id() as i32;
    let mut p = pid;
    for _ in 0..200 {
        match all.get(&p) {
            Some(st) if st.ppid == me => return true,
            Some(st) if st.ppid > 1 => p = st.ppid,
            _ => return false,
        }
    }
    false
}

/// Kills and reaps every descendant of this test process on drop, so that a
/// failing test leaves no part of a tree behind.
struct KillDescendants;

impl Drop for KillDescendants {
    fn drop(&mut self) {
        let t0 = Instant::now();
        loop {
            let all = all_stats();
            let mine: Vec<i32> = all.keys().copied().filter(|&p| ours(p, &all)).collect();
            if mine.is_empty() || t0.elapsed() > Duration::from_secs(5) {
                break;
            }
            for p in mine {
                unsafe {
                    libc::kill(p, libc::SIGKILL);
                    let mut st = 0;
                    libc::waitpid(p, &mut st, libc::WNOHANG | libc::__WALL);
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

// ------------------------------------------------------------ the images

#[derive(Clone, Debug)]
struct Entry {
    pid: i32,
    ppid: i32,
    pgid: i32,
    sid: i32,
    threads: Vec<i32>,
}

fn parse_pstree(json: &[u8], what: &str) -> Vec<Entry> {
    let v: serde_json::Value = serde_json::from_slice(json)
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", String::from_utf8_lossy(json)));
    let num = |e: &serde_json::Value, k: &str| e[k].as_i64().unwrap_or(0) as i32;
    v["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no entries: {v}"))
        .iter()
        .map(|e| Entry {
            pid: num(e, "pid"),
            ppid: num(e, "ppid"),
            pgid: num(e, "pgid"),
            sid: num(e, "sid"),
            threads: e["threads"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|t| t.as_i64())
                        .map(|t| t as i32)
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect()
}

/// The dumped tree, from `crust show DIR/pstree.img`.
fn pstree(dir: &Path) -> Vec<Entry> {
    let img = dir.join("pstree.img");
    let o = Command::new(crust_bin())
        .args(["show", s(&img)])
        .output()
        .expect("crust show");
    assert!(
        o.status.success(),
        "crust show {} failed: {}",
        img.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    parse_pstree(&o.stdout, "crust show pstree.img")
}

/// Every pid and tid of the dumped tree.
fn all_ids(tree: &[Entry]) -> BTreeSet<i32> {
    tree.iter()
        .flat_map(|e| std::iter::once(e.pid).chain(e.threads.iter().copied()))
        .collect()
}

/// The image's tree must be the live tree we saw before the dump.
fn assert_pstree_matches(tree: &[Entry], before: &BTreeMap<i32, Stat>, root: i32) {
    let pids: BTreeSet<i32> = tree.iter().map(|e| e.pid).collect();
    let live: BTreeSet<i32> = before.keys().copied().collect();
    assert_eq!(pids, live, "pstree.img's pids are not the live tree's");
    assert_eq!(
        tree[0].pid, root,
        "pstree.img's first entry is not the root"
    );
    for e in tree {
        let st = before[&e.pid];
        if e.pid != root {
            assert_eq!(e.ppid, st.ppid, "ppid of {} in pstree.img", e.pid);
        }
        assert_eq!(e.pgid, st.pgid, "pgid of {} in pstree.img", e.pid);
        assert_eq!(e.sid, st.sid, "sid of {} in pstree.img", e.pid);
    }
}

/// Wait until every pid and tid of the dumped tree is free (reaping the
/// zombies that were reparented to us).
fn wait_tree_free(tree: &[Entry]) {
    for id in all_ids(tree) {
        wait_pid_free(id, Duration::from_secs(10));
    }
}

fn assert_tree_gone(tree: &[Entry], what: &str) {
    let t0 = Instant::now();
    loop {
        let left: Vec<i32> = all_ids(tree)
            .into_iter()
            .filter(|&p| {
                unsafe {
                    let mut st = 0;
                    libc::waitpid(p, &mut st, libc::WNOHANG | libc::__WALL);
                }
                Path::new(&format!("/proc/{p}")).exists()
            })
            .collect();
        if left.is_empty() {
            return;
        }
        if t0.elapsed() > Duration::from_secs(3) {
            let desc: Vec<String> = left
                .iter()
                .map(|&p| format!("{p}: {:?}", stat(p)))
                .collect();
            panic!("{what}: pids of the tree still exist: {desc:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// After a restore: every process is back with its ppid, pgid, sid; the
/// zombies are zombies; the live ones run on their own with the dumped
/// threads.
fn assert_restored_like(tree: &[Entry], before: &BTreeMap<i32, Stat>, root: i32) {
    for e in tree {
        let was = before[&e.pid];
        if was.state == 'Z' {
            let now = stat(e.pid).unwrap_or_else(|| panic!("zombie {} not restored", e.pid));
            assert_eq!(now.state, 'Z', "pid {} was a zombie, now {:?}", e.pid, now);
        } else {
            wait_restored(e.pid, Duration::from_secs(10));
            let tids = task_tids(e.pid);
            let want: BTreeSet<i32> = e.threads.iter().copied().collect();
            if !want.is_empty() {
                assert_eq!(tids, want, "threads of restored pid {}", e.pid);
            }
        }
        let now = stat(e.pid).unwrap_or_else(|| panic!("pid {} not restored", e.pid));
        if e.pid != root {
            assert_eq!(now.ppid, was.ppid, "ppid of restored {}", e.pid);
        }
        assert_eq!(now.pgid, was.pgid, "pgid of restored {}", e.pid);
        assert_eq!(now.sid, was.sid, "sid of restored {}", e.pid);
    }
}

// ------------------------------------------------------------- the flow

/// Dump the tree of `w` (default: kill), check the images against the live
/// tree, wait for all its pids to be free, decode with crit, restore
/// detached, check the tree is back as it was, SIGTERM the root and assert
/// PASS. Returns the dumped tree.
fn tree_dump_restore_check(w: &mut Workload, expect_processes: usize) -> Vec<Entry> {
    tree_dump_restore_check_with(w, expect_processes, || {})
}

/// [`tree_dump_restore_check`], calling `restored` while the restored tree
/// runs, before it is told to finish.
fn tree_dump_restore_check_with(
    w: &mut Workload,
    expect_processes: usize,
    restored: impl FnOnce(),
) -> Vec<Entry> {
    let before = live_tree(w.pid);
    assert_eq!(
        before.len(),
        expect_processes,
        "the live tree of wl-{} has {} processes, expected {expect_processes}: {before:?}",
        w.name,
        before.len()
    );
    let dir = w.images_dir("img");
    let t0 = Instant::now();
    dump(w, &dir, &[]).ok();
    eprintln!("dump of {} processes took {:?}", before.len(), t0.elapsed());
    let tree = pstree(&dir);
    assert_pstree_matches(&tree, &before, w.pid);
    w.reap_original();
    wait_tree_free(&tree);
    assert_images_decode_fast(&dir);
    let pidfile = w.scratch.join("restore.pid");
    let t0 = Instant::now();
    restore(w, &dir, &["-d", "--pidfile", s(&pidfile)]).ok();
    eprintln!("restore took {:?}", t0.elapsed());
    w.mark_restored();
    assert_restored_like(&tree, &before, w.pid);
    restored();
    w.terminate_and_check();
    assert_tree_gone(&tree, "after the restored tree finished");
    tree
}

/// The 16 MiB private anonymous VMA of wl-cow in `pid`.
fn cow_buffer(pid: i32) -> (u64, u64) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    maps.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (range, perms) = (f.next()?, f.next()?);
            let inode = f.nth(2)?;
            let (a, b) = range.split_once('-')?;
            let (a, b) = (
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            );
            (b - a == 16 << 20 && perms == "rw-p" && inode == "0").then_some((a, b))
        })
        .next()
        .unwrap_or_else(|| panic!("no 16 MiB buffer in the maps of {pid}:\n{maps}"))
}

/// Pages of [start, end) present in both `a` and `b` at the same physical
/// page (shared copy-on-write), from /proc/PID/pagemap.
fn pages_shared(a: i32, b: i32, (start, end): (u64, u64)) -> usize {
    use std::os::unix::fs::FileExt;
    let read = |pid: i32| -> Vec<u64> {
        let f = std::fs::File::open(format!("/proc/{pid}/pagemap")).expect("pagemap");
        let n = ((end - start) / 4096) as usize;
        let mut raw = vec![0u8; n * 8];
        f.read_exact_at(&mut raw, start / 4096 * 8)
            .expect("read pagemap");
        raw.chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap()))
            .collect()
    };
    let (pa, pb) = (read(a), read(b));
    let pfn = |e: u64| (e >> 63 == 1).then_some(e & ((1 << 55) - 1));
    pa.iter()
        .zip(&pb)
        .filter(|(x, y)| pfn(**x).is_some() && pfn(**x) == pfn(**y))
        .count()
}

// ----------------------------------------------------------------- tests

/// 1 + 4 + 12 + 36 = 53 processes, three levels below the root.
const TREE_ARGS: [&str; 2] = ["3", "4,3,3"];
const TREE_N: usize = 53;
/// 1 + 3 + 6 = 10 processes, for the error cases.
const SMALL_ARGS: [&str; 2] = ["2", "3,2"];
const SMALL_N: usize = 10;

#[test]
fn tree_passes_without_dump() {
    let _k = KillDescendants;
    let mut w = Workload::start("tree", &TREE_ARGS);
    assert_eq!(live_tree(w.pid).len(), TREE_N);
    std::thread::sleep(Duration::from_millis(200));
    w.terminate_and_check();
}

#[test]
fn tree() {
    let _k = KillDescendants;
    let mut w = Workload::start("tree", &TREE_ARGS);
    let before = live_tree(w.pid);
    // The tree has the groups and the session it promised.
    let sids: BTreeSet<i32> = before.values().map(|s| s.sid).collect();
    let pgids: BTreeSet<i32> = before.values().map(|s| s.pgid).collect();
    assert_eq!(sids.len(), 2, "sessions in the tree: {sids:?}");
    assert!(pgids.len() >= 5, "groups in the tree: {pgids:?}");
    let tree = tree_dump_restore_check(&mut w, TREE_N);
    assert!(tree.iter().any(|e| e.sid == e.pid && e.pid != w.pid));
}

#[test]
fn zombies() {
    let _k = KillDescendants;
    let mut w = Workload::start("zombie", &[]);
    let before = live_tree(w.pid);
    let z = before.values().filter(|s| s.state == 'Z').count();
    assert_eq!(z, 4, "zombies in the tree: {before:?}");
    tree_dump_restore_check(&mut w, 6);
}

fn threads(n: usize) {
    let _k = KillDescendants;
    let n_s = n.to_string();
    let mut w = Workload::start("threads", &[&n_s]);
    assert_eq!(task_tids(w.pid).len(), n + 1);
    let tree = tree_dump_restore_check(&mut w, 1);
    assert_eq!(tree[0].threads.len(), n + 1, "threads in pstree.img");
}

#[test]
fn threads_passes_without_dump() {
    let _k = KillDescendants;
    let mut w = Workload::start("threads", &["16"]);
    std::thread::sleep(Duration::from_millis(200));
    w.terminate_and_check();
}

#[test]
fn threads_16() {
    threads(16);
}

#[test]
fn threads_200() {
    threads(200);
}

#[test]
fn cow() {
    let _k = KillDescendants;
    let mut w = Workload::start("cow", &[]);
    let pids: Vec<i32> = live_tree(w.pid).into_keys().collect();
    let (parent, child) = (w.pid, *pids.iter().find(|&&p| p != w.pid).unwrap());
    let buf = cow_buffer(parent);
    let before = pages_shared(parent, child, buf);
    // 16 MiB, less the child's own 64 KiB.
    assert!(before >= 4000, "only {before} pages shared before the dump");
    tree_dump_restore_check_with(&mut w, 2, || {
        let after = pages_shared(parent, child, cow_buffer(child));
        assert_eq!(
            after, before,
            "pages shared copy-on-write by parent and child: {before} before the dump, {after} after the restore"
        );
    });
    eprintln!("--- wl-cow log ---\n{}", w.log_text());
}

#[test]
fn cow_passes_without_dump() {
    let _k = KillDescendants;
    let mut w = Workload::start("cow", &[]);
    w.terminate_and_check();
}

#[test]
fn zombies_pass_without_dump() {
    let _k = KillDescendants;
    let mut w = Workload::start("zombie", &[]);
    w.terminate_and_check();
}

#[test]
fn tree_leave_running() {
    let _k = KillDescendants;
    let mut w = Workload::start("tree", &TREE_ARGS);
    let before = live_tree(w.pid);
    let dir = w.images_dir("img");
    dump(&w, &dir, &["-R"]).ok();
    let after = live_tree(w.pid);
    assert_eq!(
        no_state(&before),
        no_state(&after),
        "the tree changed with --leave-running (pids, ids or start times)"
    );
    for &p in before.keys() {
        wait_restored(p, Duration::from_secs(5));
    }
    assert_pstree_matches(&pstree(&dir), &before, w.pid);
    w.terminate_and_check();
}

#[test]
fn tree_leave_stopped() {
    let _k = KillDescendants;
    let mut w = Workload::start("tree", &TREE_ARGS);
    let before = live_tree(w.pid);
    let dir = w.images_dir("img");
    dump(&w, &dir, &["--leave-stopped"]).ok();
    let after = live_tree(w.pid);
    let keys_before: Vec<i32> = before.keys().copied().collect();
    let keys_after: Vec<i32> = after.keys().copied().collect();
    assert_eq!(
        keys_before, keys_after,
        "the tree changed with --leave-stopped"
    );
    let not_stopped: Vec<(i32, char)> = after
        .iter()
        .filter(|(_, s)| s.state != 'T')
        .map(|(p, s)| (*p, s.state))
        .collect();
    assert!(
        not_stopped.is_empty(),
        "processes not stopped (state T) after --leave-stopped: {not_stopped:?}"
    );
    let traced: Vec<i32> = after
        .keys()
        .copied()
        .filter(|&p| tracer_pid(p) != Some(0))
        .collect();
    assert!(traced.is_empty(), "processes left traced: {traced:?}");
    for &p in after.keys() {
        unsafe { libc::kill(p, libc::SIGCONT) };
    }
    for &p in after.keys() {
        wait_restored(p, Duration::from_secs(5));
    }
    w.terminate_and_check();
}

/// Restore while the dumped tree still runs: every pid is taken. A clear
/// error naming a pid; the originals untouched; nothing new left behind.
#[test]
fn restore_while_original_runs() {
    let _k = KillDescendants;
    let mut w = Workload::start("tree", &SMALL_ARGS);
    let dir = w.images_dir("img");
    dump(&w, &dir, &["-R"]).ok();
    let before = live_tree(w.pid);
    assert_eq!(before.len(), SMALL_N);
    let r = restore(&w, &dir, &["-d"]).fails();
    let named: Vec<i32> = before
        .keys()
        .copied()
        .filter(|p| r.stderr.contains(&p.to_string()))
        .collect();
    assert!(
        !named.is_empty(),
        "the error names none of the tree's pids {:?}:\n{}",
        before.keys().collect::<Vec<_>>(),
        r.describe()
    );
    std::thread::sleep(Duration::from_millis(300));
    let all = all_stats();
    let mine: BTreeMap<i32, Stat> = all
        .iter()
        .filter(|(p, _)| ours(**p, &all))
        .map(|(p, s)| (*p, *s))
        .collect();
    assert_eq!(
        no_state(&mine),
        no_state(&before),
        "after the failed restore our descendants are not exactly the original tree"
    );
    w.terminate_and_check();
}

/// Run a restore that is expected to fail while a thread watches which of
/// the tree's pids appear meanwhile: tells whether it failed before making
/// any process or in the middle of the tree.
fn restore_watching(w: &Workload, dir: &Path, tree: &[Entry]) -> (CrustRun, BTreeSet<i32>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let ids: Vec<i32> = tree.iter().map(|e| e.pid).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let watcher = std::thread::spawn(move || {
        let mut seen = BTreeSet::new();
        while !stop2.load(Ordering::SeqCst) {
            for &p in &ids {
                if Path::new(&format!("/proc/{p}")).exists() {
                    seen.insert(p);
                }
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        seen
    });
    let r = restore(w, dir, &["-d"]);
    stop.store(true, Ordering::SeqCst);
    let seen = watcher.join().unwrap();
    eprintln!(
        "during the failed restore {} of the tree's {} pids appeared: {seen:?}",
        seen.len(),
        tree.len()
    );
    (r, seen)
}

/// Make a process with the given pid (clone3 with set_tid) that pauses
/// until killed. Returns its pid.
fn take_pid(pid: i32) -> i32 {
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }
    let tid: libc::pid_t = pid;
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: &tid as *const libc::pid_t as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if r == 0 {
        // The child of a multi-threaded process: only raw syscalls here.
        loop {
            unsafe { libc::syscall(libc::SYS_pause) };
        }
    }
    assert!(
        r > 0,
        "clone3(set_tid={pid}): {}",
        std::io::Error::last_os_error()
    );
    assert_eq!(r as i32, pid);
    r as i32
}

/// A pid of the tree (not the root: the last process the restore would
/// make) is taken by another process: restore exits 1 naming it, none of
/// the tree's other pids exists afterwards, the squatter is untouched; once
/// the pid is free again the same images restore fine.
#[test]
fn restore_child_pid_taken() {
    let _k = KillDescendants;
    let mut w = Workload::start("tree", &SMALL_ARGS);
    let dir = w.images_dir("img");
    dump(&w, &dir, &[]).ok();
    let tree = pstree(&dir);
    assert_eq!(tree.len(), SMALL_N);
    w.reap_original();
    wait_tree_free(&tree);
    let victim = tree.last().unwrap().pid;
    assert_ne!(victim, w.pid);
    let squatter = take_pid(victim);
    let sq_start = stat(squatter).unwrap().start;
    let (r, _) = restore_watching(&w, &dir, &tree);
    let r = r.fails();
    assert!(
        r.stderr.contains(&victim.to_string()),
        "the error does not name the taken pid {victim}:\n{}",
        r.describe()
    );
    eprintln!(
        "--- restore.log ---\n{}",
        fs::read_to_string(w.scratch.join("restore.log")).unwrap_or_default()
    );
    let others: Vec<Entry> = tree.iter().filter(|e| e.pid != victim).cloned().collect();
    assert_tree_gone(&others, "after a restore failed on a taken pid");
    assert_eq!(
        stat(squatter).map(|s| s.start),
        Some(sq_start),
        "the process holding pid {victim} was touched"
    );
    unsafe { libc::kill(squatter, libc::SIGKILL) };
    wait_pid_free(squatter, Duration::from_secs(5));
    // The images are still good.
    restore(&w, &dir, &["-d"]).ok();
    w.mark_restored();
    for e in &tree {
        wait_restored(e.pid, Duration::from_secs(10));
    }
    w.terminate_and_check();
    assert_tree_gone(&tree, "after the restored tree finished");
}

/// The mm image of one non-root process (the last one made) is truncated:
/// restore exits 1 naming it, and none of the tree's pids exists afterwards.
#[test]
fn restore_child_mm_truncated_leaves_nothing() {
    let _k = KillDescendants;
    let mut w = Workload::start("tree", &SMALL_ARGS);
    let dir = w.images_dir("img");
    dump(&w, &dir, &[]).ok();
    let tree = pstree(&dir);
    w.reap_original();
    wait_tree_free(&tree);
    let victim = tree.last().unwrap().pid;
    let mm = dir.join(format!("mm-{victim}.img"));
    assert!(mm.is_file(), "no {}", mm.display());
    corrupt(&mm, Corruption::Half);
    let (r, _) = restore_watching(&w, &dir, &tree);
    let r = r.fails();
    assert!(
        r.stderr.contains(&format!("mm-{victim}")) || r.stderr.contains(&victim.to_string()),
        "the error names neither mm-{victim}.img nor pid {victim}:\n{}",
        r.describe()
    );
    assert_tree_gone(&tree, "after a restore failed on a truncated mm image");
    eprintln!(
        "--- restore.log ---\n{}",
        fs::read_to_string(w.scratch.join("restore.log")).unwrap_or_default()
    );
}

/// The file behind the last leaf's private file mapping is gone (every
/// image is fine). Restore exits 1 naming the file or the pid, and none of
/// the tree's pids exists afterwards. (crust checks files before it makes
/// any process: for a failure in the middle see
/// `restore_pid_taken_during_restore`.)
#[test]
fn restore_child_mapped_file_gone() {
    let _k = KillDescendants;
    let mut w = Workload::start("tree", &[SMALL_ARGS[0], SMALL_ARGS[1], "map"]);
    let dir = w.images_dir("img");
    dump(&w, &dir, &[]).ok();
    let tree = pstree(&dir);
    w.reap_original();
    wait_tree_free(&tree);
    let (victim, file) = fs::read_dir(w.scratch.path())
        .unwrap()
        .flatten()
        .find_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let pid: i32 = n.strip_prefix("tree-map-")?.parse().ok()?;
            Some((pid, e.path()))
        })
        .expect("no tree-map-PID file");
    assert!(tree.iter().any(|e| e.pid == victim) && victim != w.pid);
    fs::remove_file(&file).unwrap();
    let (r, seen) = restore_watching(&w, &dir, &tree);
    let r = r.fails();
    let name = file.file_name().unwrap().to_str().unwrap();
    assert!(
        r.stderr.contains(name) || r.stderr.contains(&victim.to_string()),
        "the error names neither {name} nor pid {victim}:\n{}",
        r.describe()
    );
    assert_tree_gone(&tree, "after a restore failed on a missing mapped file");
    eprintln!("processes made before the failure: {seen:?}");
}

/// A pid of the tree is taken after crust began to rebuild it: crust is
/// stopped (SIGSTOP) as soon as the root exists, the last process's pid is
/// taken, crust continued. It must fail naming the pid and kill everything
/// it made. (If crust had already made the last process when it was
/// stopped, the race is lost: the restore then simply has to succeed.)
#[test]
fn restore_pid_taken_during_restore() {
    let _k = KillDescendants;
    let mut w = Workload::start("tree", &TREE_ARGS);
    let dir = w.images_dir("img");
    dump(&w, &dir, &[]).ok();
    let tree = pstree(&dir);
    w.reap_original();
    wait_tree_free(&tree);
    let victim = tree.last().unwrap().pid;
    let out = w.scratch.join("restore.out");
    let mut child = crust_spawn(&["restore", "-D", s(&dir), "-d"], &out);
    let crust_pid = child.id() as i32;
    let root_proc = format!("/proc/{}", w.pid);
    let t0 = Instant::now();
    while !Path::new(&root_proc).exists() {
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "crust restore ended ({st}) before the root appeared:\n{}",
                fs::read_to_string(&out).unwrap_or_default()
            );
        }
        assert!(t0.elapsed() < CRUST_TIMEOUT, "the root never appeared");
        std::hint::spin_loop();
    }
    unsafe { libc::kill(crust_pid, libc::SIGSTOP) };
    let made: Vec<i32> = tree
        .iter()
        .map(|e| e.pid)
        .filter(|p| Path::new(&format!("/proc/{p}")).exists())
        .collect();
    eprintln!(
        "crust stopped with {} of {} processes made",
        made.len(),
        tree.len()
    );
    if made.contains(&victim) {
        eprintln!("race lost: pid {victim} was made already; the restore must just succeed");
        unsafe { libc::kill(crust_pid, libc::SIGCONT) };
        let st = wait_child(&mut child, CRUST_TIMEOUT);
        assert!(
            st.success(),
            "crust restore failed ({st}):\n{}",
            fs::read_to_string(&out).unwrap_or_default()
        );
        w.mark_restored();
        for e in &tree {
            wait_restored(e.pid, Duration::from_secs(10));
        }
        w.terminate_and_check();
        return;
    }
    let squatter = take_pid(victim);
    let sq_start = stat(squatter).unwrap().start;
    unsafe { libc::kill(crust_pid, libc::SIGCONT) };
    let st = wait_child(&mut child, CRUST_TIMEOUT);
    let text = fs::read_to_string(&out).unwrap_or_default();
    eprintln!("crust restore -> {st}\n{text}");
    assert_eq!(st.code(), Some(1), "crust restore did not exit 1:\n{text}");
    assert!(
        text.contains(&victim.to_string()),
        "the error does not name the taken pid {victim}:\n{text}"
    );
    let others: Vec<Entry> = tree.iter().filter(|e| e.pid != victim).cloned().collect();
    assert_tree_gone(&others, "after a restore failed on a pid taken meanwhile");
    assert_eq!(
        stat(squatter).map(|s| s.start),
        Some(sq_start),
        "the process holding pid {victim} was touched"
    );
    unsafe { libc::kill(squatter, libc::SIGKILL) };
    wait_pid_free(squatter, Duration::from_secs(5));
}

/// crit decodes every image of a tree with zombies and of a threaded
/// process, and its pstree.img says what `crust show` says.
#[test]
fn crit_decodes_tree_images() {
    let _k = KillDescendants;
    let Some(crit) = crit_bin() else {
        eprintln!("note: crit not installed");
        return;
    };
    for (name, args) in [
        ("tree", &SMALL_ARGS[..]),
        ("zombie", &[][..]),
        ("threads", &["16"][..]),
    ] {
        let mut w = Workload::start(name, args);
        let dir = w.images_dir("img");
        dump(&w, &dir, &["-R"]).ok();
        assert_images_decode_fast(&dir);
        let o = Command::new(&crit)
            .args(["show", s(&dir.join("pstree.img"))])
            .output()
            .expect("crit");
        assert!(o.status.success());
        let by_crit = parse_pstree(&o.stdout, "crit show pstree.img");
        let by_crust = pstree(&dir);
        // And the crit binary itself on a sample: the images without a pid
        // and those of the first and last process and of the last thread.
        let mut keep: BTreeSet<String> = BTreeSet::new();
        let first = &by_crust[0];
        let last = by_crust.last().unwrap();
        for id in [
            first.pid,
            last.pid,
            *first.threads.last().unwrap_or(&first.pid),
        ] {
            keep.insert(format!("-{id}.img"));
        }
        let sample = w.scratch.subdir("sample");
        for e in fs::read_dir(&dir).unwrap().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let numbered = n
                .strip_suffix(".img")
                .and_then(|b| b.rsplit_once('-'))
                .is_some_and(|(_, id)| id.parse::<u64>().is_ok());
            if !numbered || keep.iter().any(|k| n.ends_with(k.as_str())) {
                fs::copy(e.path(), sample.join(&n)).unwrap();
            }
        }
        assert_images_decode(&sample);
        let fmt = |v: &[Entry]| format!("{v:?}");
        assert_eq!(
            fmt(&by_crit),
            fmt(&by_crust),
            "crit and crust disagree on {name}'s pstree.img"
        );
        for e in &by_crust {
            for img in [
                format!("core-{}.img", e.pid),
                format!("mm-{}.img", e.pid),
                format!("pagemap-{}.img", e.pid),
            ] {
                // A zombie has a core image but no memory.
                if stat(e.pid).map(|s| s.state) == Some('Z') && !img.starts_with("core-") {
                    continue;
                }
                assert!(dir.join(&img).is_file(), "{name}: no {img}");
            }
        }
        w.terminate_and_check();
    }
}

/// One flipped bit in a page image, where each kind of check catches it:
/// in memory that parent and child share copy-on-write (premapped by the
/// processes while the tree is forked, so checked before the fork), and
/// in a process's own memory (checked by the mover that reads it, piece by
/// piece, before the piece goes into the process). Each restore exits 1
/// naming the page image and `checksum mismatch`, and leaves no pid of the
/// tree; put right, the images restore and the workload passes.
#[test]
fn damaged_page_images_leave_nothing() {
    let _k = KillDescendants;
    let mut w = Workload::start("cow", &[]);
    let dir = w.images_dir("img");
    dump(&w, &dir, &[]).ok();
    let tree = pstree(&dir);
    w.reap_original();
    wait_tree_free(&tree);
    let log = w.scratch.join("restore.log");
    let root_pages = page_image_of(&dir, tree[0].pid);
    let good = fs::read(&root_pages).unwrap();
    let mut bad = good.clone();
    bad[good.len() / 2 + 99] ^= 0x04;
    fs::write(&root_pages, &bad).unwrap();
    let (r, _) = restore_watching(&w, &dir, &tree);
    r.fails().stderr_names(&["pages-", "checksum mismatch"]);
    assert_tree_gone(&tree, "after a restore refused a damaged shared page");
    let text = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !text.contains("tree forked"),
        "premapped memory is checked before the fork:\n{text}"
    );
    fs::write(&root_pages, &good).unwrap();

    // The child's own 64 KiB at 1 MiB into the buffer is not shared: its
    // piece is checked by a mover, after the fork.
    let child = tree[1].pid;
    let child_pages = page_image_of(&dir, child);
    let good_child = fs::read(&child_pages).unwrap();
    let own = own_page_offset(&dir, child);
    let mut bad = good_child.clone();
    bad[own as usize + 7] ^= 0x80;
    fs::write(&child_pages, &bad).unwrap();
    let (r, _) = restore_watching(&w, &dir, &tree);
    r.fails().stderr_names(&["pages-", "checksum mismatch"]);
    assert_tree_gone(
        &tree,
        "after a restore refused a damaged page of the child's own",
    );
    fs::write(&child_pages, &good_child).unwrap();

    restore(&w, &dir, &["-d"]).ok();
    w.mark_restored();
    w.terminate_and_check();
}

/// The page image of `pid`, from its pagemap's head.
fn page_image_of(dir: &Path, pid: i32) -> PathBuf {
    let (head, _) = crust_image::read_pagemap(&dir.join(format!("pagemap-{pid}.img"))).unwrap();
    dir.join(format!("pages-{}.img", head.pages_id))
}

/// Offset in the page image of `pid` (wl-cow's child) of the first page
/// of its own 64 KiB: the pagemap entry covering it is found by the
/// largest private anonymous VMA (the 16 MiB buffer), 1 MiB in.
fn own_page_offset(dir: &Path, pid: i32) -> u64 {
    let mm: crust_image::pb::MmEntry = crust_image::read_single(
        &dir.join(format!("mm-{pid}.img")),
        crust_image::ImageKind::Mm,
    )
    .unwrap();
    let buf = mm
        .vmas
        .iter()
        .max_by_key(|v| v.end - v.start)
        .expect("a VMA");
    let addr = buf.start + (1 << 20);
    let (_, pagemap) = crust_image::read_pagemap(&dir.join(format!("pagemap-{pid}.img"))).unwrap();
    let mut off = 0u64;
    for p in &pagemap {
        let len = p.nr_pages as u64 * 4096;
        if (p.vaddr..p.vaddr + len).contains(&addr) {
            return off + addr - p.vaddr;
        }
        off += len;
    }
    panic!("no page of pid {pid} at {addr:#x}")
}

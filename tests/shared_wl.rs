//! Shared memory, memfd and deleted-file mappings, pipes at capacity,
//! FIFOs, restoring into a new pid namespace, and dumping a tree that keeps
//! forking.

use crust_tests::*;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

// ------------------------------------------------------------ processes

/// ppid of every process, by pid.
fn all_ppids() -> BTreeMap<i32, i32> {
    let mut m = BTreeMap::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(t) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some(ppid) = t
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .and_then(|x| x.parse().ok())
        {
            m.insert(pid, ppid);
        }
    }
    m
}

/// `root` and its descendants (zombies included).
fn live_tree(root: i32) -> BTreeSet<i32> {
    let all = all_ppids();
    let mut out = BTreeSet::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        if all.contains_key(&p) && out.insert(p) {
            todo.extend(all.iter().filter(|(_, pp)| **pp == p).map(|(c, _)| *c));
        }
    }
    out
}

/// Kills and reaps every descendant of this test process on drop, so that
/// a failing test leaves no part of a tree behind.
struct KillDescendants;

impl Drop for KillDescendants {
    fn drop(&mut self) {
        let me = std::process::id() as i32;
        let t0 = Instant::now();
        loop {
            let mine: Vec<i32> = live_tree(me).into_iter().filter(|&p| p != me).collect();
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

/// Kill and reap every descendant of this test process (up to 5 s).
fn reap_all_descendants() {
    drop(KillDescendants);
    let t0 = Instant::now();
    loop {
        let mut st = 0;
        let r = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG | libc::__WALL) };
        if r < 0 {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "descendants left: {:?}",
            live_tree(std::process::id() as i32)
        );
        if r == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The one-letter state and the TracerPid of `pid`.
fn state_and_tracer(pid: i32) -> (Option<char>, Option<i32>) {
    (pid_state(pid), tracer_pid(pid))
}

// ------------------------------------------------------------ images

/// (pid, ppid, threads) of every entry of DIR/pstree.img, from `crust show`.
fn pstree(dir: &Path) -> Vec<(i32, i32, Vec<i32>)> {
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
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("pstree JSON");
    let num = |e: &serde_json::Value, k: &str| e[k].as_i64().unwrap_or(0) as i32;
    v["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("no entries in pstree.img: {v}"))
        .iter()
        .map(|e| {
            let threads = e["threads"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|t| t.as_i64())
                        .map(|t| t as i32)
                        .collect()
                })
                .unwrap_or_default();
            (num(e, "pid"), num(e, "ppid"), threads)
        })
        .collect()
}

fn tree_ids(tree: &[(i32, i32, Vec<i32>)]) -> BTreeSet<i32> {
    tree.iter()
        .flat_map(|(p, _, t)| std::iter::once(*p).chain(t.iter().copied()))
        .collect()
}

// ------------------------------------------------------------ the flow

/// Dump `w`'s tree (killing it) into `dir` with `extra` options; the image
/// must hold exactly the live tree; wait until all its pids are free,
/// decode the images, restore detached, wait until every process runs on
/// its own, SIGTERM the root and assert PASS.
fn family_dump_restore_check(w: &mut Workload, dir: &Path, extra: &[&str], n: usize) {
    let before = live_tree(w.pid);
    assert_eq!(before.len(), n, "live tree of wl-{}: {before:?}", w.name);
    dump(w, dir, extra).ok();
    let tree = pstree(dir);
    let pids: BTreeSet<i32> = tree.iter().map(|e| e.0).collect();
    assert_eq!(pids, before, "pstree.img's pids are not the live tree's");
    w.reap_original();
    for id in tree_ids(&tree) {
        wait_pid_free(id, Duration::from_secs(10));
    }
    assert_images_decode_fast(dir);
    restore_family(w, dir, &pids);
}

/// Restore detached from `dir` and check the processes `pids` come back,
/// then SIGTERM the root and assert PASS.
fn restore_family(w: &mut Workload, dir: &Path, pids: &BTreeSet<i32>) {
    let pidfile = w.scratch.join("restore.pid");
    restore(w, dir, &["-d", "--pidfile", s(&pidfile)]).ok();
    w.mark_restored();
    for &p in pids {
        if pid_state(p) != Some('Z') {
            wait_restored(p, Duration::from_secs(10));
        }
    }
    w.terminate_and_check();
}

/// A workload whose first argument is a `data` dir inside its scratch dir.
fn start_with_data(name: &str, more: &[&str]) -> (Workload, PathBuf) {
    let scratch = Scratch::new(name);
    let data = scratch.subdir("data");
    let mut args = vec![s(&data)];
    args.extend_from_slice(more);
    let w = Workload::start_in(scratch, name, &args);
    (w, data)
}

fn maps_of(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default()
}

/// The refused dump left the task as it was: running on its own, nothing
/// in the images dir.
fn assert_refused_cleanly(w: &Workload, img: &Path) {
    assert!(w.is_alive(), "the refused dump killed the task");
    wait_restored(w.pid, Duration::from_secs(5));
    assert!(
        !img.join("inventory.img").exists(),
        "the refused dump left an inventory.img"
    );
}

// ------------------------------------------------------ 1. shared anon memory

#[test]
fn shmem_passes_without_dump() {
    let _k = KillDescendants;
    let mut w = Workload::start("shmem", &[]);
    assert_eq!(live_tree(w.pid).len(), 3);
    w.terminate_and_check();
}

#[test]
fn shmem() {
    let _k = KillDescendants;
    let mut w = Workload::start("shmem", &[]);
    let dir = w.images_dir("img");
    family_dump_restore_check(&mut w, &dir, &[], 3);
}

// ------------------------------------------------------------- 2. memfd

#[test]
fn memfd_passes_without_dump() {
    let _k = KillDescendants;
    let mut w = Workload::start("memfd", &[]);
    w.terminate_and_check();
}

#[test]
fn memfd_mapping() {
    let _k = KillDescendants;
    let mut w = Workload::start("memfd", &[]);
    assert!(maps_of(w.pid).contains("/memfd:crust-wl (deleted)"));
    let dir = w.images_dir("img");
    family_dump_restore_check(&mut w, &dir, &[], 2);
}

/// Processes that hold memfd fds too: the mapped memfd's fd, and a memfd
/// nobody maps (sealed, two descriptions with their own offsets and
/// flags); after restore the fd and the mapping are still one memfd, and
/// crit decodes memfd.img.
#[test]
fn memfd_fds() {
    let _k = KillDescendants;
    let mut w = Workload::start("memfd", &["hold"]);
    let dir = w.images_dir("img");
    family_dump_restore_check(&mut w, &dir, &[], 2);
    assert!(dir.join("memfd.img").exists(), "no memfd.img");
}

// ----------------------------------------------- 3. deleted file mappings

#[test]
fn deleted_map_passes_without_dump() {
    let (mut w, _) = start_with_data("deleted-map", &[]);
    w.terminate_and_check();
}

#[test]
fn deleted_map() {
    let (mut w, data) = start_with_data("deleted-map", &[]);
    let path = data.join("mapped.dat");
    let img = w.images_dir("img");
    dump(&w, &img, &[]).ok();
    w.reap_original();
    assert_images_decode_fast(&img);
    restore(&w, &img, &["-d"]).ok();
    w.mark_restored();
    wait_restored(w.pid, Duration::from_secs(10));
    assert!(!path.exists(), "{} exists after restore", path.display());
    let maps = maps_of(w.pid);
    let want = format!("{} (deleted)", path.display());
    let n = maps.lines().filter(|l| l.ends_with(&want)).count();
    assert_eq!(n, 3, "mappings of {want} after restore:\n{maps}");
    w.terminate_and_check();
}

/// 2 MiB deleted and mapped: refused by default naming --ghost-limit (the
/// task runs on), accepted with --ghost-limit 8M.
#[test]
fn deleted_map_large_needs_ghost_limit() {
    let (mut w, _) = start_with_data("deleted-map", &["2048"]);
    let img = w.images_dir("img");
    dump(&w, &img, &[]).fails().stderr_names(&["ghost-limit"]);
    assert_refused_cleanly(&w, &img);
    let img2 = w.images_dir("img2");
    dump(&w, &img2, &["--ghost-limit", "8M"]).ok();
    w.reap_original();
    restore(&w, &img2, &["-d"]).ok();
    w.mark_restored();
    wait_restored(w.pid, Duration::from_secs(10));
    w.terminate_and_check();
}

#[test]
fn deleted_map_large_refused_task_passes() {
    let (mut w, _) = start_with_data("deleted-map", &["2048"]);
    let img = w.images_dir("img");
    dump(&w, &img, &[]).fails().stderr_names(&["ghost-limit"]);
    assert_refused_cleanly(&w, &img);
    w.terminate_and_check();
}

// ------------------------------------------------------ 4. pipes at capacity

#[test]
fn pipe_full_passes_without_dump() {
    let _k = KillDescendants;
    let mut w = Workload::start("pipe-full", &[]);
    w.terminate_and_check();
}

#[test]
fn pipe_full() {
    let _k = KillDescendants;
    let mut w = Workload::start("pipe-full", &[]);
    let dir = w.images_dir("img");
    family_dump_restore_check(&mut w, &dir, &[], 2);
}

/// A dump with --leave-running must not consume a byte of the pipes: the
/// workload then passes (reading exactly its data) without a restore.
#[test]
fn pipe_full_leave_running_consumes_nothing() {
    let _k = KillDescendants;
    let mut w = Workload::start("pipe-full", &[]);
    let tree = live_tree(w.pid);
    let dir = w.images_dir("img");
    dump(&w, &dir, &["-R"]).ok();
    for &p in &tree {
        wait_restored(p, Duration::from_secs(5));
    }
    let pipes = dir.join("pipes-data.img");
    if pipes.exists() {
        let len = fs::metadata(&pipes).unwrap().len();
        assert!(
            len >= (1 << 20) + 3,
            "pipes-data.img holds only {len} bytes"
        );
    }
    w.terminate_and_check();
}

// --------------------------------------------------------------- 5. FIFO

#[test]
fn fifo_passes_without_dump() {
    let (mut w, _) = start_with_data("fifo", &[]);
    w.terminate_and_check();
}

#[test]
fn fifo() {
    let (mut w, data) = start_with_data("fifo", &[]);
    let img = w.images_dir("img");
    dump(&w, &img, &[]).ok();
    w.reap_original();
    assert_images_decode_fast(&img);
    assert!(
        data.join("fifo").exists(),
        "the fifo is gone after the dump"
    );
    restore(&w, &img, &["-d"]).ok();
    w.mark_restored();
    wait_restored(w.pid, Duration::from_secs(10));
    w.terminate_and_check();
}

// ------------------------------------------------------ 6. --new-pid-ns

/// NSpid of /proc/PID/status, as numbers.
fn nspid(pid: i32) -> Vec<i32> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|v| {
            v.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn remove_child_outs(dir: &Path) {
    for e in fs::read_dir(dir).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("CHILD-OUT-") {
            fs::remove_file(e.path()).unwrap();
        }
    }
}

#[test]
fn new_pid_ns_while_original_runs() {
    let _k = KillDescendants;
    let scratch = Scratch::new("tree");
    let bin = workload_bin("tree");
    let mut w = Workload::start_with(scratch, "tree", |pidfile, outfile| {
        let mut c = Command::new(&bin);
        c.arg(pidfile)
            .arg(outfile)
            .args(["2", "3"])
            .env("WL_TREE_ANY_ROOT_PARENT", "1");
        c
    });
    let before = live_tree(w.pid);
    assert_eq!(before.len(), 13, "live tree: {before:?}");
    let dir = w.images_dir("img");
    dump(&w, &dir, &["-R"]).ok();
    for &p in &before {
        wait_restored(p, Duration::from_secs(5));
    }

    // A plain restore collides with the running original.
    restore(&w, &dir, &["-d"])
        .fails()
        .stderr_names(&["--new-pid-ns"]);
    assert_eq!(
        live_tree(w.pid),
        before,
        "the failed restore touched the tree"
    );

    let pidfile = w.scratch.join("restore-ns.pid");
    restore(&w, &dir, &["--new-pid-ns", "-d", "--pidfile", s(&pidfile)]).ok();
    let outer: i32 = fs::read_to_string(&pidfile)
        .expect("restore --pidfile")
        .trim()
        .parse()
        .expect("pid in --pidfile");
    assert_ne!(outer, w.pid, "--pidfile names the original's pid");
    wait_restored(outer, Duration::from_secs(10));
    assert_eq!(
        nspid(outer),
        vec![outer, w.pid],
        "NSpid of the restored root (outer pid {outer})"
    );
    let restored = live_tree(outer);
    assert_eq!(
        restored.len(),
        13,
        "the restored tree (under outer pid {outer}): {restored:?}"
    );
    for &p in &restored {
        wait_restored(p, Duration::from_secs(10));
    }
    for &p in &before {
        assert!(pid_alive(p), "original pid {p} is gone after the restore");
    }

    // The original finishes first, then its files are removed...
    w.terminate_and_check();
    let out = w.outfile.clone();
    fs::remove_file(&out).unwrap();
    remove_child_outs(w.scratch.path());

    // ... and the restored tree writes the same files.
    assert_eq!(unsafe { libc::kill(outer, libc::SIGTERM) }, 0);
    let t0 = Instant::now();
    let text = loop {
        if let Ok(t) = fs::read_to_string(&out) {
            break t;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "the restored tree wrote no outfile; root state {:?}; log:\n{}",
            pid_state(outer),
            w.log_text()
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(text, "PASS\n", "restored tree; log:\n{}", w.log_text());
    for &p in &restored {
        wait_pid_free(p, Duration::from_secs(10));
    }
}

// ------------------------------------------------- 7. a tree that forks

#[test]
fn forker_passes_without_dump() {
    let _k = KillDescendants;
    let mut w = Workload::start("forker", &[]);
    std::thread::sleep(Duration::from_millis(300));
    w.terminate_and_check();
}

/// Five dumps with -R in a row of a root forking a child every ms: each
/// either succeeds with a consistent tree or refuses naming the changing
/// tree; never is the root left traced or stopped. The last consistent
/// image then restores and passes.
#[test]
fn forker_leave_running_5_times() {
    let _k = KillDescendants;
    let mut w = Workload::start("forker", &[]);
    let mut good: Option<(PathBuf, BTreeSet<i32>)> = None;
    let mut outcomes = Vec::new();
    // Refusals that do not say the tree was changing: reported at the end,
    // after the root's state and the rest were checked.
    let mut bad_refusals = Vec::new();
    for i in 0..5 {
        let dir = w.images_dir(&format!("img-{i}"));
        let t0 = Instant::now();
        let r = dump(&w, &dir, &["-R"]);
        let took = t0.elapsed();
        if r.status.success() {
            let tree = pstree(&dir);
            assert_eq!(tree[0].0, w.pid, "pstree.img's root");
            for (pid, ppid, _) in &tree[1..] {
                assert_eq!(
                    *ppid, w.pid,
                    "pid {pid} of pstree.img is not the root's child"
                );
            }
            outcomes.push(format!("ok ({} processes, {took:?})", tree.len()));
            good = Some((dir, tree.iter().map(|e| e.0).collect()));
        } else {
            let r = r.fails();
            if !r.stderr.to_lowercase().contains("chang") {
                bad_refusals.push(format!("dump {i}: {}", r.describe()));
            }
            outcomes.push(format!("refused ({took:?}): {}", r.stderr.trim()));
        }
        // Either way the root runs on, untraced, not stopped.
        let t1 = Instant::now();
        loop {
            let (st, tr) = state_and_tracer(w.pid);
            if tr == Some(0) && matches!(st, Some('S' | 'R' | 'D')) {
                break;
            }
            assert!(
                t1.elapsed() < Duration::from_secs(2),
                "after dump {i} the root is in state {st:?} with tracer {tr:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    eprintln!("the 5 dumps: {outcomes:?}");
    let Some((dir, pids)) = good else {
        // All refused: legitimate, but the task must still pass.
        w.terminate_and_check();
        assert_no_bad_refusals(&bad_refusals);
        return;
    };
    w.kill_and_reap();
    // Its children forked after the last dump were reparented to us; their
    // session and group ids (the root's pid) keep that pid taken.
    reap_all_descendants();
    for &p in &pids {
        wait_pid_free(p, Duration::from_secs(10));
    }
    assert_images_decode_fast(&dir);
    // Its children exit at once (and are reaped by it): only the root is
    // waited for.
    let root = BTreeSet::from([w.pid]);
    restore_family(&mut w, &dir, &root);
    assert_no_bad_refusals(&bad_refusals);
}

fn assert_no_bad_refusals(bad: &[String]) {
    assert!(
        bad.is_empty(),
        "dumps refused without naming the tree as changing:\n{}",
        bad.join("\n")
    );
}

//! wl-tree DEPTH WIDTH: a process tree.
//!
//! The root forks WIDTH children, each of them WIDTH children, and so on,
//! DEPTH levels deep. WIDTH is one number or a comma list, one per level
//! (`3 4,3,3` makes 1 + 4 + 12 + 36 = 53 processes).
//!
//! Every process keeps a 64 KiB heap pattern seeded by its own pid, the
//! root's 64 KiB pattern (inherited through fork, so COW-shared), and
//! remembers getpid/getppid/getpgrp/getsid. Sessions and groups: the first
//! level-1 child makes a new session (setsid), so its subtree lives in a
//! session whose leader is not the root; the second level-1 child makes its
//! own group (setpgid(0,0)), and so does every level-2 child with index 1
//! (inside the new session too, a group of a session led by another). Everyone else stays in its parent's group.
//!
//! With a third argument `map`, the last leaf (the last process forked)
//! also maps a 64 KiB file `tree-map-<pid>` (in OUTFILE's dir) privately
//! and read-only, and checks its content after restore.
//!
//! Each child writes `tree-ready-<pid>` (in OUTFILE's dir) once it is set
//! up; the root, once all are there, knows every descendant's pid and says
//! ready. On SIGTERM the root sends SIGTERM to every descendant; each
//! verifies pid/ppid/pgid/sid and both patterns at once, then reaps its own
//! children (their exit codes carry PASS 0 / FAIL 1 upwards), writes
//! `CHILD-OUT-<pid>` and exits with 0 only if it and its whole subtree
//! passed. The root writes PASS only if every descendant passed.
//!
//! With `WL_TREE_ANY_ROOT_PARENT` in its environment at start, the root does
//! not check its own parent (for a restore into a new pid namespace, where
//! the root's parent is the namespace's init).

use std::path::{Path, PathBuf};
use workloads::{check_pattern, die, fill_pattern, raw_getpid, terminated, Checker};

const PATTERN: usize = 64 * 1024;
const ROOT_SEED: u64 = 0x7ee0_0000_0000_0001;

struct Ids {
    pid: i32,
    ppid: i32,
    pgid: i32,
    sid: i32,
}

fn ids() -> Ids {
    unsafe {
        Ids {
            pid: raw_getpid(),
            ppid: libc::getppid(),
            pgid: libc::getpgrp(),
            sid: libc::getsid(0),
        }
    }
}

struct Node {
    dir: PathBuf,
    widths: Vec<usize>,
    root_pat: Vec<u64>,
    /// `map`: the last leaf maps a file (see the module doc).
    map_file: bool,
}

const MAP_LEN: usize = 64 * 1024;

/// The last leaf's private, read-only mapping of `tree-map-<pid>`.
fn map_leaf_file(dir: &Path, pid: i32) -> *const u8 {
    let path = dir.join(format!("tree-map-{pid}"));
    let data = alloc_pattern(map_seed(pid));
    let bytes: Vec<u8> = data.iter().flat_map(|w| w.to_ne_bytes()).collect();
    if std::fs::write(&path, bytes).is_err() {
        die("write map file");
    }
    let f = std::fs::File::open(&path).unwrap_or_else(|_| die("open map file"));
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MAP_LEN,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        die("mmap map file");
    }
    p as *const u8
}

fn map_seed(pid: i32) -> u64 {
    0x3a9f_0000_0000_0000 ^ pid as u64
}

fn seed_of(pid: i32) -> u64 {
    0x5eed_0000_0000_0000 ^ pid as u64
}

fn alloc_pattern(seed: u64) -> Vec<u64> {
    let mut v = vec![0u64; PATTERN / 8];
    unsafe { fill_pattern(v.as_mut_ptr() as *mut u8, PATTERN, seed) };
    v
}

/// Fork the children of a node at `level` (0 = root); returns their pids.
fn fork_children(node: &Node, level: usize, in_new_session: bool, last_path: bool) -> Vec<i32> {
    let mut kids = Vec::new();
    if level >= node.widths.len() {
        return kids;
    }
    for idx in 0..node.widths[level] {
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            die(&format!("fork: {}", std::io::Error::last_os_error()));
        }
        if pid == 0 {
            let last = last_path && idx + 1 == node.widths[level];
            child_main(node, level + 1, idx, in_new_session, last);
        }
        kids.push(pid);
    }
    kids
}

fn child_main(
    node: &Node,
    level: usize,
    idx: usize,
    parent_in_new_session: bool,
    last_path: bool,
) -> ! {
    let mut in_new_session = parent_in_new_session;
    unsafe {
        if level == 1 && idx == 0 {
            if libc::setsid() < 0 {
                die(&format!("setsid: {}", std::io::Error::last_os_error()));
            }
            in_new_session = true;
        } else if (level == 1 || level == 2) && idx == 1 && libc::setpgid(0, 0) < 0 {
            die(&format!("setpgid: {}", std::io::Error::last_os_error()));
        }
    }
    let me = ids();
    let own = alloc_pattern(seed_of(me.pid));
    let kids = fork_children(node, level, in_new_session, last_path);
    let mapped =
        (node.map_file && last_path && kids.is_empty()).then(|| map_leaf_file(&node.dir, me.pid));
    let ready = node.dir.join(format!("tree-ready-{}", me.pid));
    let text = format!(
        "{} {} {} {} level {level} idx {idx}\n",
        me.pid, me.ppid, me.pgid, me.sid
    );
    if std::fs::write(&ready, text).is_err() {
        die("write ready file");
    }
    while !terminated() {
        workloads::sleep_ms(10);
    }
    // Check at once, while the parent is surely still there.
    let now = ids();
    let mut c = Checker::new();
    c.eq("getpid()", me.pid, now.pid);
    c.eq("getppid()", me.ppid, now.ppid);
    c.eq("getpgrp()", me.pgid, now.pgid);
    c.eq("getsid(0)", me.sid, now.sid);
    if level == 1 && idx == 0 {
        c.eq("session leader (sid == pid)", now.pid, now.sid);
    }
    if let Err(off) = unsafe { check_pattern(own.as_ptr() as *const u8, PATTERN, seed_of(me.pid)) }
    {
        c.fail(format!("own pattern differs at offset {off}"));
    }
    if let Err(off) =
        unsafe { check_pattern(node.root_pat.as_ptr() as *const u8, PATTERN, ROOT_SEED) }
    {
        c.fail(format!("inherited root pattern differs at offset {off}"));
    }
    if let Some(m) = mapped {
        if let Err(off) = unsafe { check_pattern(m, MAP_LEN, map_seed(me.pid)) } {
            c.fail(format!("file mapping differs at offset {off}"));
        }
    }
    reap_children(&kids, &mut c);
    let text = match c.into_result() {
        Ok(()) => "PASS\n".to_string(),
        Err(e) => format!("FAIL (pid {}): {e}\n", me.pid),
    };
    let out = node.dir.join(format!("CHILD-OUT-{}", me.pid));
    let _ = std::fs::write(out, &text);
    let code = if text == "PASS\n" { 0 } else { 1 };
    unsafe { libc::_exit(code) }
}

/// waitpid every kid (up to 10 s in all); a kid that exited non-zero, was
/// killed, or did not end is a failure.
fn reap_children(kids: &[i32], c: &mut Checker) {
    let t0 = std::time::Instant::now();
    let mut left: Vec<i32> = kids.to_vec();
    while !left.is_empty() {
        left.retain(|&k| {
            let mut st = 0;
            let r = unsafe { libc::waitpid(k, &mut st, libc::WNOHANG) };
            if r == k {
                if !(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0) {
                    c.fail(format!("child {k} ended with status {st:#x}"));
                }
                false
            } else if r < 0 {
                c.fail(format!("waitpid({k}): {}", std::io::Error::last_os_error()));
                false
            } else {
                true
            }
        });
        if t0.elapsed() > std::time::Duration::from_secs(10) {
            c.fail(format!("children {left:?} did not end within 10 s"));
            break;
        }
        workloads::sleep_ms(2);
    }
}

fn parse_widths(depth: usize, w: &str) -> Vec<usize> {
    let v: Vec<usize> = w
        .split(',')
        .map(|x| x.trim().parse().unwrap_or_else(|_| die("bad WIDTH")))
        .collect();
    if v.len() == 1 {
        vec![v[0]; depth]
    } else if v.len() == depth {
        v
    } else {
        die("WIDTH must be one number or DEPTH numbers")
    }
}

fn read_ready(dir: &Path) -> Vec<(i32, String)> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let n = e.file_name();
            let n = n.to_string_lossy();
            if let Some(p) = n.strip_prefix("tree-ready-") {
                if let (Ok(pid), Ok(t)) = (p.parse::<i32>(), std::fs::read_to_string(e.path())) {
                    v.push((pid, t));
                }
            }
        }
    }
    v.sort();
    v
}

fn main() {
    let p = workloads::init();
    let any_root_parent = std::env::var_os("WL_TREE_ANY_ROOT_PARENT").is_some();
    if p.args.len() != 2 && !(p.args.len() == 3 && p.args[2] == "map") {
        die("usage: wl-tree PIDFILE OUTFILE DEPTH WIDTH[,WIDTH...] [map]");
    }
    let depth: usize = p.args[0].parse().unwrap_or_else(|_| die("bad DEPTH"));
    let widths = parse_widths(depth, &p.args[1]);
    let mut total = 0usize;
    let mut level_n = 1usize;
    for w in &widths {
        level_n *= w;
        total += level_n;
    }
    let dir = Path::new(&p.outfile)
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let node = Node {
        dir: dir.clone(),
        widths,
        root_pat: alloc_pattern(ROOT_SEED),
        map_file: p.args.len() == 3,
    };
    let me = ids();
    let own = alloc_pattern(seed_of(me.pid));
    let kids = fork_children(&node, 0, false, true);
    let t0 = std::time::Instant::now();
    let descendants = loop {
        let r = read_ready(&dir);
        // Files are written whole but not atomically: wait for a newline.
        if r.len() == total && r.iter().all(|(_, t)| t.ends_with('\n')) {
            break r;
        }
        if t0.elapsed() > std::time::Duration::from_secs(8) {
            die(&format!("only {} of {total} descendants ready", r.len()));
        }
        workloads::sleep_ms(5);
    };
    for (_, t) in &descendants {
        eprint!("descendant: {t}");
    }
    let pids: Vec<i32> = descendants.iter().map(|(p, _)| *p).collect();
    p.ready();
    while !terminated() {
        workloads::sleep_ms(10);
    }
    let mut c = Checker::new();
    let now = ids();
    if !any_root_parent {
        c.eq("root getppid()", me.ppid, now.ppid);
    }
    for &d in &pids {
        if unsafe { libc::kill(d, libc::SIGTERM) } != 0 {
            c.fail(format!(
                "kill({d}, SIGTERM): {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    if let Err(off) = unsafe { check_pattern(own.as_ptr() as *const u8, PATTERN, seed_of(me.pid)) }
    {
        c.fail(format!("root's own pattern differs at offset {off}"));
    }
    if let Err(off) =
        unsafe { check_pattern(node.root_pat.as_ptr() as *const u8, PATTERN, ROOT_SEED) }
    {
        c.fail(format!("root pattern differs at offset {off}"));
    }
    reap_children(&kids, &mut c);
    for &d in &pids {
        match std::fs::read_to_string(dir.join(format!("CHILD-OUT-{d}"))) {
            Ok(t) if t == "PASS\n" => {}
            Ok(t) => c.fail(t.trim().to_string()),
            Err(e) => c.fail(format!("no CHILD-OUT-{d}: {e}")),
        }
    }
    p.finish(c.into_result());
}

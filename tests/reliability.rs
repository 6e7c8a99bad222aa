//! Reliability: crust killed at any moment of a dump leaves the tree whole
//! and running; killed during a restore, it leaves nothing behind; two
//! dumps at once; a failed restore with threads does not hang; a soak of
//! dump/restore cycles with crust's memory flat. See docs/reliability.md.
//!
//! Counts are small by default; `CRUST_RELIABILITY_FULL=1` runs the full
//! ones (100 kills each, 200 soak cycles).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crust_tests::*;

/// `default` normally, `full` with CRUST_RELIABILITY_FULL=1.
fn count(default: usize, full: usize) -> usize {
    if std::env::var_os("CRUST_RELIABILITY_FULL").is_some_and(|v| v == "1") {
        full
    } else {
        default
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A pseudo-random sequence seeded from the clock (printed, to replay).
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("CRUST_RELIABILITY_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("random seed {seed} (CRUST_RELIABILITY_SEED to replay)");
        Rng(seed)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 = workloads::mix64(self.0);
        self.0 % n.max(1)
    }
}

// ------------------------------------------------------------ the workload

/// wl-soak running in its scratch dir: three processes, three threads each.
struct Soak {
    w: Workload,
    dir: PathBuf,
    pids: Vec<i32>,
}

impl Soak {
    fn start() -> Soak {
        let scratch = Scratch::new("soak");
        let dir = scratch.subdir("state");
        let w = Workload::start_in(scratch, "wl-soak", &[s(&dir)]);
        let pids = fs::read_to_string(dir.join("pids"))
            .expect("wl-soak pids")
            .split_whitespace()
            .map(|p| p.parse().expect("pid"))
            .collect();
        let soak = Soak { w, dir, pids };
        // Every thread running (and done mapping its stacks and arenas).
        soak.assert_whole_and_running("at start");
        soak
    }

    /// Modification times of the three record files (written while the
    /// processes run and their memory is intact).
    fn progress(&self) -> Vec<std::time::SystemTime> {
        (0..3)
            .map(|i| {
                fs::metadata(self.dir.join(format!("rec-{i}")))
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH)
            })
            .collect()
    }

    /// Dump the tree (which is gone after), wait until its pids are free
    /// and keep its record files as the dump saw them; returns the images.
    fn dumped(&mut self) -> PathBuf {
        let dir = self.w.images_dir("img");
        dump(&self.w, &dir, &[]).ok();
        self.w.reap_original();
        self.wait_free();
        self.save_files();
        dir
    }

    /// Restore `dir` once more (the record files put back first), check
    /// the tree whole and running, then end it and check its verdict.
    fn restore_and_finish(&mut self, dir: &Path) {
        self.reset_files();
        restore(&self.w, dir, &["-d"]).ok();
        self.w.mark_restored();
        self.assert_whole_and_running("after the next restore");
        self.w.terminate_and_check();
        self.wait_free();
    }

    /// Keep a copy of the record files as a dump saw them: a restore wants
    /// its files as they were (crust checks their sizes).
    fn save_files(&self) {
        for i in 0..3 {
            let f = self.dir.join(format!("rec-{i}"));
            let saved = f.with_extension("dumped");
            fs::copy(&f, &saved).expect("copy record file");
            let mtime = fs::metadata(&f).and_then(|m| m.modified()).expect("mtime");
            fs::File::options()
                .write(true)
                .open(&saved)
                .and_then(|h| h.set_modified(mtime))
                .expect("set mtime");
        }
    }

    /// Put back the record files [`Soak::save_files`] kept (same inodes,
    /// contents and modification times as at the dump), and forget what a
    /// tree killed before found.
    fn reset_files(&self) {
        for i in 0..3 {
            let _ = fs::remove_file(self.dir.join(format!("fail-{i}")));
            let f = self.dir.join(format!("rec-{i}"));
            let saved = f.with_extension("dumped");
            fs::copy(&saved, &f).expect("reset record file");
            let mtime = fs::metadata(&saved)
                .and_then(|m| m.modified())
                .expect("mtime");
            fs::File::options()
                .write(true)
                .open(&f)
                .and_then(|h| h.set_modified(mtime))
                .expect("set mtime");
        }
    }

    /// SIGKILL every process of the tree and wait until its pids are free.
    fn kill_tree(&mut self) {
        for &p in &self.pids {
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        self.wait_free();
    }

    /// Wait until every pid of the tree is free (reaping what is ours).
    fn wait_free(&mut self) {
        for &p in &self.pids {
            wait_pid_free(p, Duration::from_secs(10));
        }
    }

    fn failures(&self) -> Vec<String> {
        (0..3)
            .filter_map(|i| fs::read_to_string(self.dir.join(format!("fail-{i}"))).ok())
            .collect()
    }

    /// Every process alive, no thread traced or stopped, no failure
    /// recorded, and every process making progress again.
    fn assert_whole_and_running(&self, when: &str) {
        for &pid in &self.pids {
            assert!(pid_alive(pid), "{when}: pid {pid} of the tree is gone");
            for tid in threads(pid) {
                let status = fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
                    .unwrap_or_default();
                let field = |name: &str| {
                    status
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(|v| v.trim().to_string())
                        .unwrap_or_default()
                };
                let deadline = Instant::now() + Duration::from_secs(5);
                // The kernel detaches a dead tracer's tracees as it reaps it.
                while field("TracerPid:") != "0" && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let status = fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
                    .unwrap_or_default();
                let state = status
                    .lines()
                    .find_map(|l| l.strip_prefix("State:"))
                    .unwrap_or("")
                    .trim()
                    .to_string();
                let tracer = status
                    .lines()
                    .find_map(|l| l.strip_prefix("TracerPid:"))
                    .unwrap_or("")
                    .trim()
                    .to_string();
                assert!(
                    tracer == "0" || tracer.is_empty(),
                    "{when}: thread {tid} of pid {pid} still traced by {tracer}"
                );
                assert!(
                    !state.starts_with('t') && !state.starts_with('T'),
                    "{when}: thread {tid} of pid {pid} is stopped ({state})"
                );
            }
        }
        let before = self.progress();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let f = self.failures();
            assert!(
                f.is_empty(),
                "{when}: the workload found a difference: {f:?}"
            );
            let now = self.progress();
            if now.iter().zip(&before).all(|(n, b)| n != b) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{when}: the workload makes no progress (record files {before:?} -> {now:?})"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Soak {
    /// A failing test leaves no process of the tree behind: those still
    /// running this workload (its dir on their command line) are killed.
    fn drop(&mut self) {
        for &p in &self.pids {
            let cmdline = fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(s(&self.dir)) {
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
    }
}

fn threads(pid: i32) -> Vec<i32> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A process's mappings (the lines of /proc/PID/maps) and a hash of the
/// bytes of its executable ones.
struct MapsSnapshot {
    lines: Vec<String>,
    code_hash: u64,
}

/// Crust's scratch mapping, as /proc/PID/maps shows it.
fn is_scratch(line: &str) -> bool {
    let mut f = line.split_whitespace();
    let range = f.next().unwrap_or("");
    let perms = f.next().unwrap_or("");
    let (a, b) = range.split_once('-').unwrap_or(("0", "0"));
    let len = u64::from_str_radix(b, 16).unwrap_or(0) - u64::from_str_radix(a, 16).unwrap_or(0);
    perms == "rw-s" && len == 64 * 1024 && line.contains("/dev/zero (deleted)")
}

fn snapshot(pid: i32) -> MapsSnapshot {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let lines: Vec<String> = maps.lines().map(str::to_string).collect();
    let mem = fs::File::open(format!("/proc/{pid}/mem")).expect("mem");
    let mut code_hash = 0u64;
    for l in &lines {
        let mut f = l.split_whitespace();
        let range = f.next().unwrap();
        let perms = f.next().unwrap();
        if !perms.starts_with("r-x") || l.contains("[vsyscall]") {
            continue;
        }
        let (a, b) = range.split_once('-').unwrap();
        let (a, b) = (
            u64::from_str_radix(a, 16).unwrap(),
            u64::from_str_radix(b, 16).unwrap(),
        );
        let mut buf = vec![0u8; (b - a) as usize];
        use std::os::unix::fs::FileExt;
        if mem.read_exact_at(&mut buf, a).is_ok() {
            for w in buf.chunks(8) {
                let mut x = [0u8; 8];
                x[..w.len()].copy_from_slice(w);
                code_hash = workloads::mix64(code_hash ^ u64::from_ne_bytes(x));
            }
        }
    }
    MapsSnapshot { lines, code_hash }
}

/// The same code bytes, and the same mappings but for `leftover_ok` scratch
/// mappings of a killed crust.
fn assert_same_process(pid: i32, before: &MapsSnapshot, after: &MapsSnapshot, leftover_ok: bool) {
    assert_eq!(
        before.code_hash, after.code_hash,
        "pid {pid}: the bytes of its code changed"
    );
    let strip = |v: &[String]| -> Vec<String> {
        v.iter()
            .filter(|l| !(leftover_ok && is_scratch(l)))
            .cloned()
            .collect()
    };
    // The stack and heap may grow or shrink on their own: compare the rest.
    let stable = |v: Vec<String>| -> Vec<String> {
        v.into_iter()
            .filter(|l| !l.contains("[stack]") && !l.contains("[heap]"))
            .collect()
    };
    assert_eq!(
        stable(strip(&before.lines)),
        stable(strip(&after.lines)),
        "pid {pid}: its mappings changed"
    );
}

fn count_scratch(pid: i32) -> usize {
    fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .lines()
        .filter(|l| is_scratch(l))
        .count()
}

// ------------------------------------------------ crust under our ptrace

/// How a traced crust run ended.
#[derive(Debug)]
enum TracedEnd {
    /// Killed right after the n-th watched syscall (its name).
    Killed(&'static str),
    /// Finished on its own (wait status), with this many watched syscalls.
    Finished { status: i32, calls: usize },
}

/// What to do to a crust run traced by [`crust_traced`].
#[derive(Default)]
struct Plan<'a> {
    /// SIGKILL crust right after its n-th watched syscall returned
    /// (1-based).
    kill_after: Option<usize>,
    /// Make crust's n-th ptrace call with this request (1-based) fail with
    /// EIO, without running it.
    fail_ptrace: Option<(u64, usize)>,
    /// SIGKILL crust right after its n-th ptrace call with this request
    /// returned (1-based).
    kill_after_ptrace: Option<(u64, usize)>,
    /// Run this while crust is stopped right after its n-th watched
    /// syscall.
    pause_after: Option<(usize, &'a mut dyn FnMut())>,
}

/// The syscalls by which crust changes a task: ptrace and
/// process_vm_writev. Returns the name of a watched syscall.
fn watched(nr: i64) -> Option<&'static str> {
    match nr {
        libc::SYS_ptrace => Some("ptrace"),
        libc::SYS_process_vm_writev => Some("process_vm_writev"),
        _ => None,
    }
}

/// Run crust with `args` traced by this thread (PTRACE_TRACEME, syscall
/// stops), doing what `plan` says. A crust still running after 60 s is
/// killed and the test fails.
fn crust_traced(args: &[&str], log: &Path, mut plan: Plan) -> TracedEnd {
    let f = fs::File::create(log).expect("crust log");
    let mut cmd = Command::new(crust_bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f);
    unsafe {
        cmd.pre_exec(|| {
            if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Reaped with waitpid below (the tracer's wait).
    let pid = cmd.spawn().expect("spawn crust").id() as i32;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                if t0.elapsed() > Duration::from_secs(60) {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            false
        })
    };
    let wait = || {
        let mut st = 0;
        let r = unsafe { libc::waitpid(pid, &mut st, libc::__WALL) };
        assert_eq!(r, pid, "waitpid crust: {}", std::io::Error::last_os_error());
        st
    };
    let end = (|| {
        // The exec stop.
        let st = wait();
        assert!(libc::WIFSTOPPED(st), "crust did not stop at exec: {st:#x}");
        unsafe {
            libc::ptrace(
                libc::PTRACE_SETOPTIONS,
                pid,
                0,
                libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_EXITKILL,
            )
        };
        let mut calls = 0usize;
        let mut failing = 0usize;
        let mut requests = 0usize;
        let mut in_syscall: Option<(Option<&'static str>, bool, u64)> = None;
        let mut sig = 0;
        loop {
            unsafe { libc::ptrace(libc::PTRACE_SYSCALL, pid, 0, sig) };
            sig = 0;
            let st = wait();
            if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) {
                return TracedEnd::Finished { status: st, calls };
            }
            let stop = libc::WSTOPSIG(st);
            if stop != libc::SIGTRAP | 0x80 {
                if stop != libc::SIGTRAP && (st >> 16) == 0 {
                    sig = stop;
                }
                continue;
            }
            let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
            unsafe { libc::ptrace(libc::PTRACE_GETREGS, pid, 0, &mut regs) };
            match in_syscall.take() {
                None => {
                    let name = watched(regs.orig_rax as i64);
                    let mut fail = false;
                    if let Some((req, nth)) = plan.fail_ptrace {
                        if name == Some("ptrace") && regs.rdi == req {
                            failing += 1;
                            if failing == nth {
                                regs.orig_rax = u64::MAX;
                                unsafe { libc::ptrace(libc::PTRACE_SETREGS, pid, 0, &regs) };
                                fail = true;
                            }
                        }
                    }
                    in_syscall = Some((name, fail, regs.rdi));
                }
                Some((name, fail, request)) => {
                    if fail {
                        regs.rax = (-libc::EIO) as u64;
                        unsafe { libc::ptrace(libc::PTRACE_SETREGS, pid, 0, &regs) };
                    }
                    let Some(name) = name else { continue };
                    calls += 1;
                    if let Some((n, f)) = plan.pause_after.as_mut() {
                        if *n == calls {
                            f();
                        }
                    }
                    let kill_now = match plan.kill_after_ptrace {
                        Some((req, nth)) if name == "ptrace" && request == req => {
                            requests += 1;
                            requests == nth
                        }
                        _ => false,
                    };
                    if kill_now || Some(calls) == plan.kill_after {
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                        loop {
                            let st = wait();
                            if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) {
                                return TracedEnd::Killed(name);
                            }
                        }
                    }
                }
            }
        }
    })();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(
        !watchdog.join().unwrap(),
        "crust {args:?} hung (killed after 60 s): {}",
        fs::read_to_string(log).unwrap_or_default()
    );
    end
}

// ------------------------------------------------------------------- dump

/// crust killed right after each of its ptrace and process_vm_writev calls
/// of a --leave-running dump, in turn (a sample by default, every one in
/// full mode): every time, the tree comes out whole, untraced and running,
/// with the same code and mappings (but for a scratch mapping left by a
/// killed crust).
#[test]
fn dump_killed_after_each_ptrace_call() {
    let mut soak = Soak::start();
    let before: BTreeMap<i32, MapsSnapshot> = soak.pids.iter().map(|&p| (p, snapshot(p))).collect();
    let dir = soak.w.images_dir("img");
    let log = soak.w.scratch.join("crust.log");
    let pid = soak.pids[0].to_string();
    let args = ["dump", "-t", &pid, "-D", s(&dir), "--leave-running"];
    let total = match crust_traced(&args, &log, Plan::default()) {
        TracedEnd::Finished { status: 0, calls } => calls,
        other => panic!(
            "a traced dump failed: {other:?}: {}",
            fs::read_to_string(&log).unwrap_or_default()
        ),
    };
    soak.assert_whole_and_running("after a traced dump");
    let points = count(40, total);
    eprintln!("{total} watched calls in a dump; killing after {points} of them");
    let mut by_call: BTreeMap<&str, usize> = BTreeMap::new();
    for k in 0..points {
        // Spread evenly over the whole dump.
        let n = 1 + k * total / points;
        let end = crust_traced(
            &args,
            &log,
            Plan {
                kill_after: Some(n),
                ..Plan::default()
            },
        );
        match end {
            TracedEnd::Killed(name) => *by_call.entry(name).or_default() += 1,
            TracedEnd::Finished { .. } => {}
        }
        soak.assert_whole_and_running(&format!("crust killed after call {n}/{total} ({end:?})"));
    }
    eprintln!("kills by call: {by_call:?}");
    for (&p, b) in &before {
        assert_same_process(p, b, &snapshot(p), true);
    }
    let leftovers: usize = soak.pids.iter().map(|&p| count_scratch(p)).sum();
    eprintln!("scratch mappings left by killed crusts: {leftovers}");
    soak.w.terminate_and_check();
}

/// crust killed (SIGKILL) at random moments of --leave-running dumps: the
/// tree always comes out whole and running, its code and mappings the same
/// but for scratch mappings a killed crust leaves.
#[test]
fn dump_killed_at_random_moments() {
    let mut soak = Soak::start();
    let before: BTreeMap<i32, MapsSnapshot> = soak.pids.iter().map(|&p| (p, snapshot(p))).collect();
    let dir = soak.w.images_dir("img");
    let pid = soak.pids[0].to_string();
    let args = ["dump", "-t", &pid, "-D", s(&dir), "--leave-running"];
    // The shortest of three whole dumps.
    let mut span = u64::MAX;
    for _ in 0..3 {
        let t0 = Instant::now();
        crust(&args).ok();
        span = span.min(t0.elapsed().as_micros() as u64);
    }
    let n = count(100, 100);
    let mut rng = Rng::new();
    let mut finished = 0;
    for i in 0..n {
        let delay = rng.below(span);
        let mut child = Command::new(crust_bin())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn crust");
        std::thread::sleep(Duration::from_micros(delay));
        let _ = child.kill();
        if child.wait().expect("wait crust").success() {
            finished += 1;
        }
        soak.assert_whole_and_running(&format!("kill {i} after {delay} µs"));
    }
    for (&p, b) in &before {
        assert_same_process(p, b, &snapshot(p), true);
    }
    let leftovers: usize = soak.pids.iter().map(|&p| count_scratch(p)).sum();
    eprintln!(
        "{n} kills within {span} µs: {} during the dump, {finished} after it ended; \
         scratch mappings left: {leftovers}",
        n - finished
    );
    soak.w.terminate_and_check();
    soak.wait_free();
}

/// crust killed at random moments of a restore: afterwards either the whole
/// tree runs (the restore had ended) or none of its processes is left,
/// stopped or running; but for a kill in the last step, while crust
/// detaches the tree's threads one by one, which leaves those already
/// detached running (counted, see docs/reliability.md).
#[test]
fn restore_killed_at_random_moments() {
    let mut soak = Soak::start();
    let dir = soak.dumped();
    let args = ["restore", "-D", s(&dir), "-d"];
    // The shortest of three whole restores.
    let mut span = u64::MAX;
    for _ in 0..3 {
        soak.reset_files();
        let t0 = Instant::now();
        crust(&args).ok();
        span = span.min(t0.elapsed().as_micros() as u64);
        soak.assert_whole_and_running("after a restore");
        soak.kill_tree();
    }
    let n = count(100, 100);
    let mut rng = Rng::new();
    let (mut whole, mut nothing) = (0, 0);
    for i in 0..n {
        let delay = rng.below(span);
        soak.reset_files();
        let mut child = Command::new(crust_bin())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn crust");
        std::thread::sleep(Duration::from_micros(delay));
        let _ = child.kill();
        let st = child.wait().expect("wait crust");
        // A task crust's death killed may take a moment to die.
        std::thread::sleep(Duration::from_millis(50));
        let alive: Vec<i32> = soak
            .pids
            .iter()
            .copied()
            .filter(|&p| pid_alive(p))
            .collect();
        if alive.len() == soak.pids.len() && st.success() {
            soak.assert_whole_and_running(&format!("restore {i} that ended"));
            whole += 1;
            soak.kill_tree();
            continue;
        }
        if alive.len() == soak.pids.len() {
            // Killed after the tree was let go, before crust exited?
            let deadline = Instant::now() + Duration::from_secs(2);
            while soak.pids.iter().all(|&p| pid_alive(p)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if soak.pids.iter().all(|&p| pid_alive(p)) {
                soak.assert_whole_and_running(&format!("restore {i} killed after it let go"));
                whole += 1;
                soak.kill_tree();
                continue;
            }
        }
        // The rest must die within 3 s (EXITKILL, parent-death signals).
        let deadline = Instant::now() + Duration::from_secs(3);
        let survivors = loop {
            for &p in &soak.pids {
                reap_if_ours(p);
            }
            let left: Vec<i32> = soak
                .pids
                .iter()
                .copied()
                .filter(|&p| Path::new(&format!("/proc/{p}")).exists())
                .collect();
            if left.is_empty() || Instant::now() > deadline {
                break left;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if survivors.is_empty() {
            nothing += 1;
            continue;
        }
        panic!(
            "restore {i} killed after {delay} µs left part of the tree behind: {survivors:?} of {:?}",
            soak.pids
        );
    }
    eprintln!("{n} kills within {span} µs: {nothing} left nothing, {whole} a whole running tree");
    soak.reset_files();
    crust(&args).ok();
    soak.w.mark_restored();
    soak.assert_whole_and_running("after the last restore");
    soak.w.terminate_and_check();
    soak.wait_free();
}

fn reap_if_ours(pid: i32) {
    let mut st = 0;
    unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG | libc::__WALL) };
}

/// crust killed right after the first, a middle and the last of the
/// PTRACE_DETACH calls that let the restored tree go, thread by thread: the
/// watchdog kills the processes already let go, so no process of the tree
/// is left; a restore that ends leaves the whole tree running.
#[test]
fn restore_killed_while_letting_the_tree_go() {
    let mut soak = Soak::start();
    let tids: usize = soak.pids.iter().map(|&p| threads(p).len()).sum();
    let dir = soak.dumped();
    let log = soak.w.scratch.join("crust.log");
    let args = ["restore", "-D", s(&dir), "-d"];
    let detaches = libc::PTRACE_DETACH as u64;
    for nth in [1, tids / 2, tids] {
        soak.reset_files();
        let end = crust_traced(
            &args,
            &log,
            Plan {
                kill_after_ptrace: Some((detaches, nth)),
                ..Plan::default()
            },
        );
        assert!(
            matches!(end, TracedEnd::Killed("ptrace")),
            "crust was not killed after PTRACE_DETACH {nth} of {tids}: {end:?}: {}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        for &p in &soak.pids {
            reap_if_ours(p);
            assert_pid_free(p);
        }
    }
    soak.restore_and_finish(&dir);
}

/// A restore that fails after the restored processes have their threads
/// (PTRACE_SETREGSET made to fail): crust reports it and exits, no process
/// is left, and the next restore works.
#[test]
fn restore_failing_after_threads_exist_leaves_nothing() {
    let mut soak = Soak::start();
    let dir = soak.dumped();
    let log = soak.w.scratch.join("crust.log");
    let args = ["restore", "-D", s(&dir), "-d"];
    const PTRACE_SETREGSET: u64 = 0x4205;
    // The XSTATE of the root's main thread, of the second process's second
    // thread, of the last thread.
    for nth in [1, 5, 9] {
        soak.reset_files();
        let end = crust_traced(
            &args,
            &log,
            Plan {
                fail_ptrace: Some((PTRACE_SETREGSET, nth)),
                ..Plan::default()
            },
        );
        let text = fs::read_to_string(&log).unwrap_or_default();
        match end {
            TracedEnd::Finished { status, .. } => assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 1,
                "crust ended with {status:#x}: {text}"
            ),
            other => panic!("{other:?}"),
        }
        assert!(
            text.contains("XSTATE"),
            "the error does not say what failed: {text}"
        );
        for &p in &soak.pids {
            assert_pid_free(p);
        }
    }
    soak.restore_and_finish(&dir);
}

/// A dump that fails, at several moments (a ptrace call made to fail), or
/// succeeds: the tree's mappings are exactly what they were, no scratch
/// mapping left.
#[test]
fn scratch_mapping_gone_after_dumps_that_end() {
    let soak = Soak::start();
    let before: BTreeMap<i32, MapsSnapshot> = soak.pids.iter().map(|&p| (p, snapshot(p))).collect();
    let dir = soak.w.images_dir("img");
    let pid = soak.pids[0].to_string();
    let args = ["dump", "-t", &pid, "-D", s(&dir), "--leave-running"];
    crust(&args).ok();
    for (&p, b) in &before {
        assert_same_process(p, b, &snapshot(p), false);
    }
    soak.assert_whole_and_running("after a dump");
    let log = soak.w.scratch.join("crust.log");
    const PTRACE_SYSCALL: u64 = 24;
    const PTRACE_PEEKSIGINFO: u64 = 0x4209;
    // The first, second, fifth and eleventh remote syscalls (mmap of the
    // scratch mapping, then calls with it mapped), and the first peek at
    // pending signals (after the scratch mapping is gone).
    for (req, nth) in [
        (PTRACE_SYSCALL, 1),
        (PTRACE_SYSCALL, 3),
        (PTRACE_SYSCALL, 9),
        (PTRACE_SYSCALL, 21),
        (PTRACE_PEEKSIGINFO, 1),
    ] {
        let end = crust_traced(
            &args,
            &log,
            Plan {
                fail_ptrace: Some((req, nth)),
                ..Plan::default()
            },
        );
        let text = fs::read_to_string(&log).unwrap_or_default();
        match end {
            TracedEnd::Finished { status, .. } => assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 1,
                "dump with ptrace request {req:#x} #{nth} failing ended with {status:#x}: {text}"
            ),
            other => panic!("{other:?}"),
        }
        assert!(
            text.contains("Input/output error"),
            "the error is not reported: {text}"
        );
        for (&p, b) in &before {
            assert_same_process(p, b, &snapshot(p), false);
        }
        soak.assert_whole_and_running(&format!("after a dump failing at request {req:#x} #{nth}"));
    }
    let mut soak = soak;
    soak.w.terminate_and_check();
    soak.wait_free();
}

/// A second dump of a tree a first dump holds frozen fails at once, naming
/// the first dump's pid, and leaves it be: the first one succeeds, the tree
/// is whole. Two dumps started at the same moment: each succeeds or fails
/// that way, the tree is whole.
#[test]
fn concurrent_dumps_of_the_same_tree() {
    let mut soak = Soak::start();
    let dir_a = soak.w.images_dir("img-a");
    let dir_b = soak.w.images_dir("img-b");
    let pid = soak.pids[0].to_string();
    let args_a = ["dump", "-t", &pid, "-D", s(&dir_a), "--leave-running"];
    let args_b = ["dump", "-t", &pid, "-D", s(&dir_b), "--leave-running"];
    let log = soak.w.scratch.join("crust-a.log");
    let mut second = None;
    let p0 = soak.pids[0];
    let mut run_second = || {
        let tracer = tracer_pid(p0).expect("a tracer");
        second = Some((tracer, crust(&args_b)));
    };
    let end = crust_traced(
        &args_a,
        &log,
        Plan {
            pause_after: Some((100, &mut run_second)),
            ..Plan::default()
        },
    );
    let text = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        matches!(end, TracedEnd::Finished { status: 0, .. }),
        "the first dump failed: {end:?}: {text}"
    );
    let (tracer, b) = second.expect("the second dump ran");
    b.fails()
        .stderr_names(&[&format!("already traced by pid {tracer}")]);
    assert!(
        dir_a.join("inventory.img").is_file(),
        "the first dump wrote no images"
    );
    assert!(
        !dir_b.join("inventory.img").exists(),
        "the second dump wrote an image set"
    );
    soak.assert_whole_and_running("after two dumps");
    for round in 0..5 {
        let spawn = |args: &[&str]| {
            Command::new(crust_bin())
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn crust")
        };
        let (a, b) = (spawn(&args_a), spawn(&args_b));
        let mut ok = 0;
        for c in [a, b] {
            let o = c.wait_with_output().expect("wait crust");
            let err = String::from_utf8_lossy(&o.stderr);
            if o.status.success() {
                ok += 1;
            } else {
                assert!(
                    o.status.code() == Some(1) && err.contains("already traced by pid"),
                    "round {round}: a concurrent dump failed otherwise: {} {err}",
                    o.status
                );
            }
        }
        eprintln!("round {round}: {ok} of 2 concurrent dumps succeeded");
        soak.assert_whole_and_running(&format!("after concurrent dumps, round {round}"));
    }
    soak.w.terminate_and_check();
    soak.wait_free();
}

/// Peak RSS in KiB of a crust run under /usr/bin/time.
fn crust_peak_rss(args: &[&str], scratch: &Scratch) -> u64 {
    let out = scratch.join("time.txt");
    let o = Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o", s(&out)])
        .arg(crust_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run /usr/bin/time crust");
    assert!(
        o.status.success(),
        "crust {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    fs::read_to_string(&out)
        .expect("time output")
        .trim()
        .lines()
        .last()
        .and_then(|l| l.parse().ok())
        .expect("peak RSS")
}

fn median(v: &[u64]) -> u64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v[v.len() / 2]
}

/// Dump (killing the tree) and restore the same three-process, nine-thread
/// tree with a pipe full of data and open files, cycle after cycle; after
/// every restore the tree is whole and running (its own continuous checks
/// of memory, registers, pipe and file offsets pass), and crust's peak RSS
/// does not grow.
#[test]
fn soak_dump_restore_cycles() {
    let mut soak = Soak::start();
    let cycles = count(50, 200);
    let pid = soak.pids[0].to_string();
    let (mut dump_rss, mut restore_rss) = (Vec::new(), Vec::new());
    let t0 = Instant::now();
    for c in 0..cycles {
        let dir = soak.w.images_dir("img");
        dump_rss.push(crust_peak_rss(
            &["dump", "-t", &pid, "-D", s(&dir)],
            &soak.w.scratch,
        ));
        if c == 0 {
            soak.w.reap_original();
        }
        soak.wait_free();
        restore_rss.push(crust_peak_rss(
            &["restore", "-D", s(&dir), "-d"],
            &soak.w.scratch,
        ));
        soak.assert_whole_and_running(&format!("cycle {c}"));
    }
    soak.w.mark_restored();
    let k = (cycles / 4).max(1);
    eprintln!(
        "{cycles} cycles in {:.1} s; crust peak RSS (KiB): dump first {:?} last {:?}, \
         restore first {:?} last {:?}",
        t0.elapsed().as_secs_f64(),
        &dump_rss[..k],
        &dump_rss[cycles - k..],
        &restore_rss[..k],
        &restore_rss[cycles - k..]
    );
    for (what, v) in [("dump", &dump_rss), ("restore", &restore_rss)] {
        let (first, last) = (median(&v[..k]), median(&v[cycles - k..]));
        assert!(
            last <= first + first / 10 + 1024,
            "crust's {what} peak RSS grew: median {first} KiB over the first {k} cycles, \
             {last} KiB over the last {k}"
        );
    }
    soak.w.terminate_and_check();
    soak.wait_free();
}

/// Dumps (-R) of a root that forks children exec'ing /bin/true and creates
/// and joins threads all the time: each either succeeds with every task of
/// its pstree image having its core image, or refuses with a message; the
/// root runs on untraced either way. Then a dump that kills it, and its
/// restore, pass the root's own checks.
#[test]
fn dump_racing_fork_clone_exec_exit() {
    let mut w = Workload::start("wl-churn", &[]);
    std::thread::sleep(Duration::from_millis(100));
    let mut outcomes = Vec::new();
    for i in 0..8 {
        let dir = w.images_dir(&format!("img-{i}"));
        let r = dump(&w, &dir, &["-R"]);
        if r.status.success() {
            let cores = assert_whole_image(&dir);
            outcomes.push(format!("caught {cores} threads"));
        } else {
            let r = r.fails();
            outcomes.push(format!("refused: {}", r.stderr.trim()));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !(tracer_pid(w.pid) == Some(0) && matches!(pid_state(w.pid), Some('S' | 'R' | 'D'))) {
            assert!(
                Instant::now() < deadline,
                "dump {i}: the root is left {:?}, traced by {:?}",
                pid_state(w.pid),
                tracer_pid(w.pid)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    eprintln!("dumps racing the tree's changes: {outcomes:#?}");
    let dir = (0..5)
        .find_map(|i| {
            let dir = w.images_dir(&format!("final-{i}"));
            dump(&w, &dir, &[]).status.success().then_some(dir)
        })
        .expect("no dump out of five succeeded");
    assert_whole_image(&dir);
    let pids = tree_pids(&dir);
    w.reap_original();
    for p in pids {
        wait_pid_free(p, Duration::from_secs(10));
    }
    restore(&w, &dir, &["-d"]).ok();
    w.mark_restored();
    w.terminate_and_check();
}

/// Every thread of DIR/pstree.img has its core image; returns how many.
fn assert_whole_image(dir: &Path) -> usize {
    let o = Command::new(crust_bin())
        .args(["show", s(&dir.join("pstree.img"))])
        .output()
        .expect("crust show");
    assert!(o.status.success(), "crust show pstree.img failed");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("pstree JSON");
    let entries = v["entries"].as_array().expect("entries");
    let mut n = 0;
    for e in entries {
        for t in e["threads"].as_array().expect("threads") {
            let core = dir.join(format!("core-{}.img", t.as_u64().expect("tid")));
            assert!(
                core.is_file(),
                "{} is missing from a dump that succeeded",
                core.display()
            );
            n += 1;
        }
    }
    n
}

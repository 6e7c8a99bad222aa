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
        Soak { w, dir, pids }
    }

    /// Sizes of the three record files (they grow while the processes run
    /// and their memory is intact).
    fn progress(&self) -> Vec<u64> {
        (0..3)
            .map(|i| {
                fs::metadata(self.dir.join(format!("rec-{i}")))
                    .map(|m| m.len())
                    .unwrap_or(0)
            })
            .collect()
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
            assert!(f.is_empty(), "{when}: the workload found a difference: {f:?}");
            let now = self.progress();
            if now.iter().zip(&before).all(|(n, b)| n > b) {
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
    /// Finished on its own, with this many watched syscalls.
    Finished { status: i32, calls: usize },
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

/// Run crust with `args` traced by this thread, and SIGKILL it right after
/// its `kill_after`-th watched syscall returned (1-based; `None`: never).
fn crust_traced(args: &[&str], log: &Path, kill_after: Option<usize>) -> TracedEnd {
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
    let child = cmd.spawn().expect("spawn crust");
    let pid = child.id() as i32;
    let wait = || {
        let mut st = 0;
        let r = unsafe { libc::waitpid(pid, &mut st, libc::__WALL) };
        assert_eq!(r, pid, "waitpid crust: {}", std::io::Error::last_os_error());
        st
    };
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
    let mut in_syscall: Option<Option<&'static str>> = None;
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
        match in_syscall.take() {
            None => {
                let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
                unsafe { libc::ptrace(libc::PTRACE_GETREGS, pid, 0, &mut regs) };
                in_syscall = Some(watched(regs.orig_rax as i64));
            }
            Some(Some(name)) => {
                calls += 1;
                if Some(calls) == kill_after {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    loop {
                        let st = wait();
                        if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) {
                            return TracedEnd::Killed(name);
                        }
                    }
                }
            }
            Some(None) => {}
        }
    }
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
    let before: BTreeMap<i32, MapsSnapshot> =
        soak.pids.iter().map(|&p| (p, snapshot(p))).collect();
    let dir = soak.w.images_dir("img");
    let log = soak.w.scratch.join("crust.log");
    let pid = soak.pids[0].to_string();
    let args = ["dump", "-t", &pid, "-D", s(&dir), "--leave-running"];
    let total = match crust_traced(&args, &log, None) {
        TracedEnd::Finished { status: 0, calls } => calls,
        other => panic!("a traced dump failed: {other:?}: {}", fs::read_to_string(&log).unwrap_or_default()),
    };
    soak.assert_whole_and_running("after a traced dump");
    let points = count(40, total);
    eprintln!("{total} watched calls in a dump; killing after {points} of them");
    let mut by_call: BTreeMap<&str, usize> = BTreeMap::new();
    for k in 0..points {
        // Spread evenly over the whole dump.
        let n = 1 + k * total / points;
        let end = crust_traced(&args, &log, Some(n));
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

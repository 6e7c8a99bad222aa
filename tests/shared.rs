//! Shared memory, deleted mapped files, python threads and --new-pid-ns,
//! on python3 programs (tests/py/*.py): real programs crust did not write,
//! each checking its own state after restore.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crust_tests::{become_subreaper, crust, pid_alive, tree_pids, wait_pid_free, Scratch};

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("py").join(name)
}

/// A python3 program of tests/py in its scratch dir: it writes `pid` when
/// ready and `out` (PASS/FAIL) once `stop` exists.
struct Py {
    scratch: Scratch,
    child: std::process::Child,
    pid: i32,
}

impl Py {
    fn start(tag: &str, name: &str, args: &[&str]) -> Py {
        become_subreaper();
        let scratch = Scratch::new(tag);
        let mut c = Command::new("/usr/bin/python3");
        c.arg(script(name))
            .arg(scratch.path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(scratch.join("log")).expect("log"));
        let child = c.spawn().expect("spawn python3");
        let t0 = Instant::now();
        let pidfile = scratch.join("pid");
        let pid = loop {
            if let Some(p) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                break p;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "{name} not ready: {}",
                std::fs::read_to_string(scratch.join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Py {
            scratch,
            child,
            pid,
        }
    }

    fn images(&self) -> PathBuf {
        self.scratch.subdir("img")
    }

    /// Dump (killing the tree), reap it, wait for every pid of it.
    fn dump_and_reap(&mut self, extra: &[&str]) -> PathBuf {
        let dir = self.images();
        let pid = self.pid.to_string();
        let mut args = vec!["dump", "-t", &pid, "-D", s(&dir)];
        args.extend_from_slice(extra);
        crust(&args).ok();
        let _ = self.child.wait();
        for p in tree_pids(&dir) {
            wait_pid_free(p, Duration::from_secs(10));
        }
        dir
    }

    /// Create `stop` and wait for `out` to say PASS (an empty `out` is
    /// one the workload created and has not written yet).
    fn check(&self) {
        std::fs::write(self.scratch.join("stop"), b"").expect("stop");
        let t0 = Instant::now();
        loop {
            let out = std::fs::read_to_string(self.scratch.join("out"));
            if let Some(t) = out.ok().filter(|t| !t.trim().is_empty()) {
                assert_eq!(
                    t.trim(),
                    "PASS",
                    "log: {}",
                    std::fs::read_to_string(self.scratch.join("log")).unwrap_or_default()
                );
                return;
            }
            assert!(t0.elapsed() < Duration::from_secs(15), "no outcome");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn round_trip(tag: &str, name: &str, args: &[&str]) {
    let mut py = Py::start(tag, name, args);
    let dir = py.dump_and_reap(&[]);
    crust(&["restore", "-D", s(&dir), "-d"]).ok();
    py.check();
    wait_pid_free(py.pid, Duration::from_secs(10));
}

#[test]
fn shared_anonymous_memory_across_fork() {
    round_trip("shm", "shm.py", &[]);
}

#[test]
fn shared_memfd_mapping_across_fork() {
    round_trip("memfd", "memfd_map.py", &[]);
}

#[test]
fn mapping_of_a_deleted_file() {
    round_trip("delmap", "deleted_map.py", &[]);
}

#[test]
fn python_threads() {
    round_trip("pythreads", "threads.py", &["16"]);
}

#[test]
fn new_pid_ns_while_the_original_runs() {
    let py = Py::start("pidns", "threads.py", &["4"]);
    let dir = py.images();
    let pid = py.pid.to_string();
    crust(&["dump", "-t", &pid, "-D", s(&dir), "-R"]).ok();
    crust(&["restore", "-D", s(&dir), "-d"])
        .fails()
        .stderr_names(&["in use", "--new-pid-ns"]);
    let pidfile = py.scratch.join("restored.pid");
    crust(&[
        "restore",
        "-D",
        s(&dir),
        "-d",
        "--new-pid-ns",
        "--pidfile",
        s(&pidfile),
    ])
    .ok();
    let outer: i32 = std::fs::read_to_string(&pidfile)
        .expect("pidfile")
        .trim()
        .parse()
        .expect("pid");
    assert_ne!(outer, py.pid);
    let status = std::fs::read_to_string(format!("/proc/{outer}/status")).expect("status");
    let nspid = status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .expect("NSpid");
    assert_eq!(
        nspid.split_whitespace().skip(1).collect::<Vec<_>>(),
        vec![outer.to_string(), pid.clone()],
        "{nspid}"
    );
    // Both stop and report: the original and the copy share the outfile.
    py.check();
    let t0 = Instant::now();
    while pid_alive(outer) || pid_alive(py.pid) {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "a copy did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sessions_and_groups_whose_leaders_exited() {
    round_trip("sessions", "sessions.py", &[]);
}

#[test]
fn daemon_whose_session_leader_exited() {
    round_trip("daemon", "daemon.py", &[]);
}

/// The same kinds of state on the Rust workloads (workloads/src/bin).
#[path = "shared_wl.rs"]
mod wl;

//! Harness for integration tests: start workloads, run crust on them, check
//! what comes back.
//!
//! Tests run as root, one process per test (cargo-nextest), in parallel. The
//! binaries (`crust`, `wl-*`) must have been built: `cargo build --workspace`.
//!
//! The test process makes itself a child subreaper, so a restored workload
//! whose restoring crust exited is reparented to it and can be reaped.

use std::fs;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use workloads::files;
pub use workloads::{PIPE_FDS, SOCKET_FDS};

/// How long crust may run before a test gives up on it.
pub const CRUST_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- binaries

fn find_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test>-<hash>: the binaries are in target/<profile>/.
    for dir in exe.ancestors().skip(1) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "binary `{name}` not found next to {} or its parents: run `cargo build --workspace` first",
        exe.display()
    );
}

/// The crust binary (or `$CRUST_BIN`).
pub fn crust_bin() -> PathBuf {
    match std::env::var_os("CRUST_BIN") {
        Some(p) => PathBuf::from(p),
        None => find_bin("crust"),
    }
}

/// A workload binary: `name` is `counter` or `wl-counter`.
pub fn workload_bin(name: &str) -> PathBuf {
    let name = if name.starts_with("wl-") {
        name.to_string()
    } else {
        format!("wl-{name}")
    };
    find_bin(&name)
}

// ----------------------------------------------------------------- scratch

/// A temp dir for one test under /tmp; removed on drop unless the test is
/// failing (panicking), in which case it is kept and its path printed.
pub struct Scratch {
    path: PathBuf,
    keep: bool,
}

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let test = std::thread::current()
            .name()
            .filter(|n| *n != "main")
            .map(|n| n.replace("::", "-"))
            .unwrap_or_else(|| "test".into());
        let path = PathBuf::from(format!(
            "/tmp/crust-{test}-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Scratch { path, keep: false }
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// `self.path()/name`.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
    /// Create (empty) and return the subdirectory `name`.
    pub fn subdir(&self, name: &str) -> PathBuf {
        let p = self.join(name);
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        p
    }
    /// Keep the dir even if the test passes.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.keep || std::thread::panicking() {
            eprintln!("scratch dir kept: {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

// --------------------------------------------------------------- processes

/// Make this process a child subreaper (idempotent).
pub fn become_subreaper() {
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(
        r,
        0,
        "PR_SET_CHILD_SUBREAPER: {}",
        std::io::Error::last_os_error()
    );
}

/// Does a process (not a zombie) with this pid exist?
pub fn pid_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => proc_state(&s) != Some('Z') && proc_state(&s) != Some('X'),
        Err(_) => false,
    }
}

fn proc_state(stat: &str) -> Option<char> {
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// The one-letter state from /proc/PID/stat, if the pid exists.
pub fn pid_state(pid: i32) -> Option<char> {
    proc_state(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// TracerPid from /proc/PID/status.
pub fn tracer_pid(pid: i32) -> Option<i32> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// waitpid(pid, WNOHANG): Some(status) once it was reaped here, None if it
/// is still running; Err(ECHILD) if it is not our child.
fn try_reap(pid: i32) -> Result<Option<i32>, i32> {
    let mut status = 0;
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG | libc::__WALL) };
    if r == pid {
        Ok(Some(status))
    } else if r == 0 {
        Ok(None)
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// Wait until nothing holds the pid any more: reap it if it is our (possibly
/// reparented) zombie, and wait for /proc/PID to vanish. Panics after
/// `timeout`.
pub fn wait_pid_free(pid: i32, timeout: Duration) {
    let t0 = Instant::now();
    loop {
        let _ = try_reap(pid);
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        if t0.elapsed() > timeout {
            panic!(
                "pid {pid} still exists after {timeout:?}: state {:?}, {}",
                pid_state(pid),
                fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Assert no process with this pid exists (reaping a zombie of ours first;
/// allows 3 s for a failing restore's leftovers to die).
pub fn assert_pid_free(pid: i32) {
    wait_pid_free(pid, Duration::from_secs(3));
}

/// Wait until a restored pid runs on its own: it exists, is not a zombie, has
/// no tracer and is not stopped.
pub fn wait_restored(pid: i32, timeout: Duration) {
    let t0 = Instant::now();
    loop {
        let st = pid_state(pid);
        if matches!(st, Some('S' | 'R' | 'D')) && tracer_pid(pid) == Some(0) {
            return;
        }
        if st.is_none() || st == Some('Z') {
            panic!("restored pid {pid} is gone (state {st:?})");
        }
        if t0.elapsed() > timeout {
            panic!(
                "restored pid {pid} not running on its own after {timeout:?}: state {st:?}, tracer {:?}",
                tracer_pid(pid)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn describe_status(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exit {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("status {status:#x}")
    }
}

/// A running workload: `wl-NAME PIDFILE OUTFILE args...` in its own scratch
/// dir, stdin /dev/null, stdout+stderr to a log file.
pub struct Workload {
    pub name: String,
    pub pid: i32,
    pub pidfile: PathBuf,
    pub outfile: PathBuf,
    pub log: PathBuf,
    /// True once this pid was reaped by us (never signal it again then: the
    /// number may belong to someone else's process).
    reaped: bool,
    /// The process we spawned, when it is not the workload itself (e.g.
    /// `script` running the workload under a pty): the workload is its
    /// descendant, reaped by its own parent.
    launcher: Option<std::process::Child>,
    /// Declared last: dropped (and removed unless failing) after the process
    /// was killed.
    pub scratch: Scratch,
}

impl Workload {
    /// Start `wl-NAME` with `args` in a new scratch dir and wait until it is
    /// ready.
    pub fn start(name: &str, args: &[&str]) -> Workload {
        Workload::start_in(Scratch::new(name), name, args)
    }

    /// Start in a given scratch dir (for workloads whose args point into it).
    pub fn start_in(scratch: Scratch, name: &str, args: &[&str]) -> Workload {
        let bin = workload_bin(name);
        let args_dbg = format!("{args:?}");
        Workload::spawn(scratch, name, &args_dbg, true, |pidfile, outfile| {
            let mut c = Command::new(&bin);
            c.arg(pidfile).arg(outfile).args(args);
            c
        })
    }

    /// Start a workload with a command of the caller's making: `make` gets
    /// PIDFILE and OUTFILE and returns the command (program, args, env,
    /// pre_exec...); stdin is /dev/null and stdout+stderr go to the log.
    /// The command may be a launcher (like `script`) of the process that
    /// writes PIDFILE: the pid tracked is the one in PIDFILE.
    pub fn start_with(
        scratch: Scratch,
        name: &str,
        make: impl FnOnce(&Path, &Path) -> Command,
    ) -> Workload {
        Workload::spawn(scratch, name, "(custom command)", false, make)
    }

    fn spawn(
        scratch: Scratch,
        name: &str,
        args_dbg: &str,
        direct: bool,
        make: impl FnOnce(&Path, &Path) -> Command,
    ) -> Workload {
        become_subreaper();
        let name = name.strip_prefix("wl-").unwrap_or(name).to_string();
        let pidfile = scratch.join(&format!("{name}.pid"));
        let outfile = scratch.join(&format!("{name}.out"));
        let log = scratch.join(&format!("{name}.log"));
        let logf = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open workload log");
        let mut cmd = make(&pidfile, &outfile);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn wl-{name}: {e}"));
        let spawned = child.id() as i32;
        let mut w = Workload {
            name,
            pid: spawned,
            pidfile,
            outfile,
            log,
            reaped: false,
            launcher: None,
            scratch,
        };
        let t0 = Instant::now();
        loop {
            if let Ok(s) = fs::read_to_string(&w.pidfile) {
                let got: i32 = s
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("bad pidfile {s:?}"));
                if direct {
                    assert_eq!(
                        got, spawned,
                        "wl-{} wrote pid {got}, spawned as {spawned}",
                        w.name
                    );
                }
                w.pid = got;
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                w.reaped = true;
                panic!(
                    "wl-{} {args_dbg} died before ready ({}); log:\n{}",
                    w.name,
                    describe_status(status.into_raw()),
                    w.log_text()
                );
            }
            if t0.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                w.reaped = true;
                panic!("wl-{} not ready after 10 s; log:\n{}", w.name, w.log_text());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if w.pid == spawned {
            drop(child); // we reap with waitpid ourselves
        } else {
            w.launcher = Some(child);
        }
        eprintln!(
            "started wl-{} {args_dbg}: pid {}{}, dir {}",
            w.name,
            w.pid,
            if w.pid == spawned {
                String::new()
            } else {
                format!(" (launched by pid {spawned})")
            },
            w.scratch.path().display()
        );
        w
    }

    /// Is the workload a descendant of a launcher rather than our child?
    pub fn launched(&self) -> bool {
        self.launcher.is_some()
    }

    /// SIGKILL the workload and reap it (or wait until its pid is free).
    pub fn kill_and_reap(&mut self) {
        assert!(
            !self.reaped,
            "kill_and_reap: pid {} was reaped already",
            self.pid
        );
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        wait_pid_free(self.pid, Duration::from_secs(10));
        self.reaped = true;
    }

    /// The workload's stdout+stderr so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|e| format!("<no log: {e}>"))
    }

    /// A fresh image dir `img` (or `img-N`) in the scratch dir.
    pub fn images_dir(&self, name: &str) -> PathBuf {
        self.scratch.subdir(name)
    }

    /// Is the pid a live (non-zombie) process?
    pub fn is_alive(&self) -> bool {
        !self.reaped && pid_alive(self.pid)
    }

    /// After a dump killed it: reap the original child (up to 10 s), then
    /// wait until the pid is free.
    pub fn reap_original(&mut self) {
        assert!(!self.reaped, "reap_original: already reaped");
        if self.launcher.is_some() {
            // Not our child: its parent (or we, as subreaper) reaps it.
            wait_pid_free(self.pid, Duration::from_secs(10));
            eprintln!("original pid {} is gone", self.pid);
            self.reaped = true;
            return;
        }
        let t0 = Instant::now();
        loop {
            match try_reap(self.pid) {
                Ok(Some(status)) => {
                    eprintln!(
                        "original pid {} reaped: {}",
                        self.pid,
                        describe_status(status)
                    );
                    self.reaped = true;
                    break;
                }
                Ok(None) => {}
                Err(e) => panic!("waitpid({}): errno {e}", self.pid),
            }
            if t0.elapsed() > Duration::from_secs(10) {
                panic!(
                    "the dumped original (pid {}) is still alive 10 s after the dump: state {:?}",
                    self.pid,
                    pid_state(self.pid)
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        wait_pid_free(self.pid, Duration::from_secs(10));
    }

    /// The pid now belongs to a restored process: track it again.
    pub fn mark_restored(&mut self) {
        self.reaped = false;
    }

    /// Send SIGTERM, wait up to 15 s for OUTFILE, reap the process (our child
    /// or a reparented orphan; if it is neither, wait for it to vanish) and
    /// assert it wrote PASS and exited 0.
    pub fn terminate_and_check(&mut self) {
        assert!(
            !self.reaped,
            "terminate_and_check: pid {} was reaped already",
            self.pid
        );
        assert!(
            pid_alive(self.pid),
            "wl-{} (pid {}) is not alive to be terminated",
            self.name,
            self.pid
        );
        let r = unsafe { libc::kill(self.pid, libc::SIGTERM) };
        assert_eq!(
            r,
            0,
            "kill({}, SIGTERM): {}",
            self.pid,
            std::io::Error::last_os_error()
        );
        self.check_outcome();
    }

    /// Wait up to 15 s for OUTFILE (the workload was told to finish some
    /// way: SIGTERM, a STOP file...), reap the process and assert it wrote
    /// PASS and exited 0.
    pub fn check_outcome(&mut self) {
        assert!(
            !self.reaped,
            "check_outcome: pid {} was reaped already",
            self.pid
        );
        let t0 = Instant::now();
        let mut status = None;
        let out = loop {
            if let Ok(s) = fs::read_to_string(&self.outfile) {
                break s;
            }
            if let Ok(Some(st)) = try_reap(self.pid) {
                self.reaped = true;
                status = Some(st);
                // It may have written the file just before exiting.
                if let Ok(s) = fs::read_to_string(&self.outfile) {
                    break s;
                }
                panic!(
                    "wl-{} (pid {}) exited without writing {} ({}); log:\n{}",
                    self.name,
                    self.pid,
                    self.outfile.display(),
                    describe_status(st),
                    self.log_text()
                );
            }
            if !self.reaped && !Path::new(&format!("/proc/{}", self.pid)).exists() {
                if let Ok(s) = fs::read_to_string(&self.outfile) {
                    break s;
                }
                self.reaped = true;
                panic!(
                    "wl-{} (pid {}) vanished without writing its outfile; log:\n{}",
                    self.name,
                    self.pid,
                    self.log_text()
                );
            }
            if t0.elapsed() > Duration::from_secs(15) {
                panic!(
                    "wl-{} (pid {}) wrote no outfile within 15 s: state {:?}; log:\n{}",
                    self.name,
                    self.pid,
                    pid_state(self.pid),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        if status.is_none() && !self.reaped {
            let t1 = Instant::now();
            loop {
                match try_reap(self.pid) {
                    Ok(Some(st)) => {
                        status = Some(st);
                        break;
                    }
                    Ok(None) => {}
                    // Not our child (e.g. crust restore without -d waits for
                    // it): wait until it is gone.
                    Err(_) => {
                        if !Path::new(&format!("/proc/{}", self.pid)).exists() {
                            break;
                        }
                    }
                }
                if t1.elapsed() > Duration::from_secs(10) {
                    panic!(
                        "wl-{} (pid {}) did not exit after writing its outfile",
                        self.name, self.pid
                    );
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            self.reaped = true;
        }
        assert_eq!(
            out,
            "PASS\n",
            "wl-{} (pid {}) did not pass; log:\n{}",
            self.name,
            self.pid,
            self.log_text()
        );
        if let Some(st) = status {
            assert!(
                libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
                "wl-{} passed but ended with {}",
                self.name,
                describe_status(st)
            );
        }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        // A restore the test expected to fail may have brought the task
        // back: a process at its pid whose command line names this test's
        // scratch dir is it, and goes too.
        let ours_again = self.reaped
            && fs::read(format!("/proc/{}/cmdline", self.pid)).is_ok_and(|c| {
                let dir = self.scratch.path().as_os_str().as_encoded_bytes();
                c.windows(dir.len()).any(|w| w == dir)
            });
        if ours_again {
            self.reaped = false;
        }
        if !self.reaped && Path::new(&format!("/proc/{}", self.pid)).exists() {
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(5) {
                match try_reap(self.pid) {
                    Ok(Some(_)) => break,
                    Ok(None) => {}
                    Err(_) => {
                        if !Path::new(&format!("/proc/{}", self.pid)).exists() {
                            break;
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if let Some(mut l) = self.launcher.take() {
            // It ends once the workload is gone; give it a moment.
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(3) {
                if let Ok(Some(_)) = l.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = l.kill();
            let _ = l.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- wl-{} log ---\n{}", self.name, self.log_text());
        }
    }
}

// ------------------------------------------------------------------- crust

/// The result of one crust run.
pub struct CrustRun {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CrustRun {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
    pub fn describe(&self) -> String {
        format!(
            "crust {}\n  -> {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.status,
            self.stdout,
            self.stderr
        )
    }
    /// Assert exit 0.
    pub fn ok(self) -> CrustRun {
        assert!(self.status.success(), "crust failed:\n{}", self.describe());
        self
    }
    /// Assert exit 1 (an error, reported, not a crash).
    pub fn fails(self) -> CrustRun {
        assert_eq!(
            self.status.code(),
            Some(1),
            "expected crust to exit 1:\n{}",
            self.describe()
        );
        assert!(
            !self.stderr.trim().is_empty(),
            "crust exited 1 without a message:\n{}",
            self.describe()
        );
        self
    }
    /// Assert stderr contains every one of `needles` (case-insensitive).
    pub fn stderr_names(self, needles: &[&str]) -> CrustRun {
        let low = self.stderr.to_lowercase();
        for n in needles {
            assert!(
                low.contains(&n.to_lowercase()),
                "crust's stderr does not name {n:?}:\n{}",
                self.describe()
            );
        }
        self
    }
}

/// Run crust with `args` (timeout 60 s), capturing stdout/stderr. The command
/// and its output are printed (the test runner shows them for failing tests).
pub fn crust(args: &[&str]) -> CrustRun {
    let o = crust_output(args);
    let run = CrustRun {
        args: args.iter().map(|s| s.to_string()).collect(),
        status: o.status,
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    };
    eprintln!("{}", run.describe());
    run
}

/// Like [`crust`], with the command adjusted by `tweak` before it is
/// spawned (e.g. a `pre_exec` that drops privileges).
pub fn crust_with(args: &[&str], tweak: impl FnOnce(&mut Command)) -> CrustRun {
    crust_bin_with(&crust_bin(), args, tweak)
}

/// Like [`crust_with`], running the crust binary at `bin` (a copy made with
/// [`copy_for_others`], to run it as another user).
pub fn crust_bin_with(bin: &Path, args: &[&str], tweak: impl FnOnce(&mut Command)) -> CrustRun {
    let o = crust_output_with(bin, args, tweak);
    let run = CrustRun {
        args: args.iter().map(|s| s.to_string()).collect(),
        status: o.status,
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    };
    eprintln!("{}", run.describe());
    run
}

/// Like [`crust`], returning the raw `Output`.
pub fn crust_output(args: &[&str]) -> Output {
    crust_output_with(&crust_bin(), args, |_| {})
}

fn crust_output_with(bin: &Path, args: &[&str], tweak: impl FnOnce(&mut Command)) -> Output {
    let mut cmd = Command::new(bin);
    tweak(&mut cmd);
    let mut child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    let pid = child.id() as i32;
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let to = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let te = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait crust") {
            break st;
        }
        if t0.elapsed() > CRUST_TIMEOUT {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let st = child.wait().expect("wait crust");
            let stderr = te.join().unwrap();
            panic!(
                "crust {args:?} timed out after {CRUST_TIMEOUT:?} ({st}); stderr:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: to.join().unwrap(),
        stderr: te.join().unwrap(),
    }
}

/// Spawn crust in the background (e.g. `restore` without -d, which waits for
/// the restored task); stdout/stderr go to `log`.
pub fn crust_spawn(args: &[&str], log: &Path) -> std::process::Child {
    let f = fs::File::create(log).expect("create crust log");
    eprintln!("spawning crust {}", args.join(" "));
    Command::new(crust_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn crust: {e}"))
}

/// Wait for a background child with a timeout; kills it on timeout.
pub fn wait_child(child: &mut std::process::Child, timeout: Duration) -> ExitStatus {
    let t0 = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if t0.elapsed() > timeout {
            let _ = child.kill();
            let st = child.wait().expect("wait");
            panic!(
                "child {} did not exit within {timeout:?} ({st}, signal {:?})",
                child.id(),
                st.signal()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// `crust dump -t PID -D DIR -v4 -o DIR/../dump.log [extra...]`.
pub fn dump(w: &Workload, dir: &Path, extra: &[&str]) -> CrustRun {
    let log = w.scratch.join("dump.log");
    let pid = w.pid.to_string();
    let mut args = vec!["dump", "-t", &pid, "-D", s(dir), "-v4", "-o", s(&log)];
    args.extend_from_slice(extra);
    let r = crust(&args);
    if !r.status.success() {
        eprintln!("--- dump.log ---\n{}", tail(&log, 200));
    }
    r
}

/// `crust restore -D DIR -v4 -o DIR/../restore.log [extra...]`.
pub fn restore(w: &Workload, dir: &Path, extra: &[&str]) -> CrustRun {
    let log = w.scratch.join("restore.log");
    let mut args = vec!["restore", "-D", s(dir), "-v4", "-o", s(&log)];
    args.extend_from_slice(extra);
    let r = crust(&args);
    if !r.status.success() {
        eprintln!("--- restore.log ---\n{}", tail(&log, 200));
    }
    r
}

fn tail(path: &Path, lines: usize) -> String {
    let t = fs::read_to_string(path).unwrap_or_else(|e| format!("<{}: {e}>", path.display()));
    let v: Vec<&str> = t.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Restore `dir` detached (with `extra` options), wait until `w`'s pid
/// runs on its own again, then SIGTERM it and assert PASS.
pub fn restore_and_check(w: &mut Workload, dir: &Path, extra: &[&str]) {
    let mut args = vec!["-d"];
    args.extend_from_slice(extra);
    restore(w, dir, &args).ok();
    w.mark_restored();
    wait_restored(w.pid, Duration::from_secs(10));
    w.terminate_and_check();
}

/// Dump `w` (default: kill), check the original is gone, decode the images
/// with crit, restore detached, check the same pid is back, SIGTERM it and
/// assert PASS.
pub fn dump_restore_check(w: &mut Workload) {
    let dir = w.images_dir("img");
    dump(w, &dir, &[]).ok();
    assert!(
        dir.join("inventory.img").is_file(),
        "dump wrote no inventory.img in {}",
        dir.display()
    );
    w.reap_original();
    assert_images_decode(&dir);
    let pidfile = w.scratch.join("restore.pid");
    restore(w, &dir, &["-d", "--pidfile", s(&pidfile)]).ok();
    w.mark_restored();
    assert!(
        pid_alive(w.pid),
        "pid {} is not alive after restore (state {:?})",
        w.pid,
        pid_state(w.pid)
    );
    wait_restored(w.pid, Duration::from_secs(10));
    if let Ok(p) = fs::read_to_string(&pidfile) {
        assert_eq!(
            p.trim(),
            w.pid.to_string(),
            "restore --pidfile names another pid"
        );
    }
    w.terminate_and_check();
}

/// Where crit is, if installed.
pub fn crit_bin() -> Option<PathBuf> {
    ["/usr/bin/crit", "/usr/local/bin/crit", "/usr/sbin/crit"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// `crit show` every *.img in `dir` except pages-*.img: each must decode and
/// print JSON. Skipped (with a note) if crit is not installed.
pub fn assert_images_decode(dir: &Path) {
    let Some(crit) = crit_bin() else {
        eprintln!("note: crit not installed, image decoding not checked");
        return;
    };
    let mut imgs: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            n.ends_with(".img") && !n.starts_with("pages-")
        })
        .collect();
    imgs.sort();
    assert!(!imgs.is_empty(), "no images in {}", dir.display());
    for img in imgs {
        let o = Command::new(&crit)
            .arg("show")
            .arg(&img)
            .stdin(Stdio::null())
            .output()
            .expect("run crit");
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "crit show {} failed ({}):\n{}\n{}",
            img.display(),
            o.status,
            stdout,
            String::from_utf8_lossy(&o.stderr)
        );
        if let Err(e) = serde_json::from_str::<serde_json::Value>(&stdout) {
            panic!(
                "crit show {} printed no JSON ({e}):\n{stdout}",
                img.display()
            );
        }
    }
}

// ------------------------------------------------------- image corruption

/// How to spoil an image file.
#[derive(Clone, Copy, Debug)]
pub enum Corruption {
    /// Delete it.
    Missing,
    /// Truncate to 0 bytes.
    Empty,
    /// Truncate to half its size.
    Half,
    /// Invert the magic (first 4 bytes).
    FlipMagic,
    /// Invert the top byte of the first entry's u32 length prefix, so it
    /// claims far more than the file holds.
    FlipLength,
}

/// The image file of `dir` whose name starts with `prefix` (`core-`,
/// `mm-`, `pagemap-`, `pages-`, or a full name like `inventory.img`).
pub fn image_file(dir: &Path, prefix: &str) -> PathBuf {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".img"))
        })
        .collect();
    v.sort();
    v.into_iter()
        .next()
        .unwrap_or_else(|| panic!("no {prefix}*.img in {}", dir.display()))
}

/// Remove the checksum manifest of the dump in `dir`, after a test edited
/// its images on purpose: restore then reads them unverified (as a CRIU
/// dump), so the edit reaches the check the test is about instead of
/// being caught by the checksums (tests/integrity.rs tests those).
pub fn forget_manifest(dir: &Path) {
    let _ = fs::remove_file(dir.join("crust-manifest.txt"));
}

/// Apply `how` to `file` (and forget the manifest of its folder).
pub fn corrupt(file: &Path, how: Corruption) {
    if let Some(dir) = file.parent() {
        forget_manifest(dir);
    }
    let name = file.file_name().unwrap().to_str().unwrap();
    match how {
        Corruption::Missing => fs::remove_file(file).unwrap(),
        Corruption::Empty => fs::write(file, b"").unwrap(),
        Corruption::Half => {
            let len = fs::metadata(file).unwrap().len();
            let f = fs::OpenOptions::new().write(true).open(file).unwrap();
            f.set_len(len / 2).unwrap();
        }
        Corruption::FlipMagic | Corruption::FlipLength => {
            let mut d = fs::read(file).unwrap();
            // inventory.img has one magic; the others the common magic too.
            let magic_len = if name == "inventory.img" { 4 } else { 8 };
            let range = match how {
                Corruption::FlipMagic => 0..4,
                _ => magic_len + 3..magic_len + 4,
            };
            assert!(d.len() >= range.end, "{name} too short to corrupt");
            for b in &mut d[range] {
                *b ^= 0xff;
            }
            fs::write(file, d).unwrap();
        }
    }
}

const DECODE_ALL: &str = r#"
import sys, os, json
import pycriu.images
d = sys.argv[1]
bad = []
n = 0
for name in sorted(os.listdir(d)):
    if not name.endswith(".img") or name.startswith("pages-"):
        continue
    n += 1
    try:
        with open(os.path.join(d, name), "rb") as f:
            json.dumps(pycriu.images.load(f, True, False))
    except BaseException as e:
        bad.append("%s: %s: %s" % (name, type(e).__name__, e))
print("decoded %d images" % n)
for b in bad:
    print("FAIL " + b)
sys.exit(1 if bad or n == 0 else 0)
"#;

/// The decoder `crit show` runs, for every image of `dir` in one Python
/// process (a tree's hundreds of images take minutes as one `crit` run
/// each): `pycriu.images.load(f, pretty=True)` and `json.dumps`, exactly as
/// `crit show` does. Falls back to [`assert_images_decode`] without pycriu.
pub fn assert_images_decode_fast(dir: &Path) {
    let py = Path::new("/usr/bin/python3");
    let has_pycriu = py.is_file()
        && Command::new(py)
            .args(["-c", "import pycriu.images"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !has_pycriu {
        assert_images_decode(dir);
        return;
    }
    let o = Command::new(py)
        .args(["-c", DECODE_ALL, dir.to_str().expect("utf-8 path")])
        .output()
        .expect("run python3");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "crit's decoder (pycriu) fails on images of {}:\n{out}\n{}",
        dir.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!("pycriu: {}", out.trim());
}

/// The pids of a dumped tree, from `crust show pstree.img`.
pub fn tree_pids(dir: &Path) -> Vec<i32> {
    let out = Command::new(crust_bin())
        .args(["show", dir.join("pstree.img").to_str().expect("utf-8 path")])
        .output()
        .expect("crust show");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("pstree json");
    v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["pid"].as_i64().expect("pid") as i32)
        .collect()
}

/// A copy of `bin` inside `dir` (which is made enterable by everyone), for
/// running it as another user: the build's target dir may sit in a folder
/// only root can enter (a clone in a mktemp dir is 0700).
pub fn copy_for_others(bin: &Path, dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(dir).expect("stat dir").permissions().mode();
    fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o755)).expect("chmod dir");
    let to = dir.join(bin.file_name().expect("binary name"));
    fs::copy(bin, &to).expect("copy binary");
    fs::set_permissions(&to, fs::Permissions::from_mode(0o755)).expect("chmod binary");
    to
}

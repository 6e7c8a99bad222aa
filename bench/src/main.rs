//! crust-bench: this machine's memory limits, and crust measured against them.
//!
//! ```text
//! cargo run --release -p crust-bench -- [--scenario mem|tree|threads|all]
//!     [--size-mib 1024] [--runs 3]
//!     [--dir /dev/shm/crust-bench] [--limits-only] [--keep]
//!     [--crust PATH] [--target PATH]
//! ```
//!
//! Part 1 (always): the limits. memcpy between two prefaulted buffers, a
//! write into a fresh tmpfs file and into a fallocated one, first touch of
//! fresh anonymous memory (4 KiB pages and THP), and process_vm_readv of a
//! live target's memory into a prefaulted buffer. Each is the best (and
//! median) of `--runs` runs after one warm-up. Part 1 also starts the target
//! once and checks that it verifies its own pattern.
//!
//! Part 2 (unless `--limits-only`): crust. One warm-up run, then `--runs`
//! runs of: start `bench-target` (SIZE MiB anonymous memory filled with a
//! pattern), `crust dump`, reap the killed target, `crust restore -d`,
//! SIGTERM the restored target and check that it exits 0 (pattern intact).
//! Dump and restore are timed wall-clock; crust's peak RSS comes from the
//! rusage that wait4 returns for it; frozen time from `crust show
//! stats-dump.img`.
//!
//! Parts 1 and 2 are scenario `mem`. Scenarios `tree` (100 processes of
//! 8 MiB in one session, with its own floors: the same amount of fresh
//! tmpfs writes, of copies out of memory into fresh tmpfs files with the
//! memory freed after, and of fresh 4 KiB pages, spread over every CPU) and
//! `threads` (one process of 200 threads) are in `scenarios.rs`;
//! `--scenario` picks one or `all` (the default).
//!
//! Output: a table per scenario, then one JSON line (starting with `{"crust_bench"`).
//! Exit status: 0 if every run restored a target that verified its pattern,
//! 1 otherwise (or on any error).

use serde_json::{json, Value};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{exit, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod scenarios;

type Result<T> = std::result::Result<T, String>;

const MIB: usize = 1 << 20;
const GIB: f64 = (1u64 << 30) as f64;
const PAGE: usize = 4096;
const HUGE: usize = 2 << 20;

/// How long one crust command may run before the bench kills it.
const CRUST_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the target may take to fill its memory and say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a target may take to verify its pattern and exit after SIGTERM.
const EXIT_TIMEOUT: Duration = Duration::from_secs(120);

// Targets from the issue, and CRIU 4.2 measured on this kind of machine.
const TARGET_FROZEN_S_PER_GIB: f64 = 0.5;
const TARGET_RESTORE_S_PER_GIB: f64 = 0.5;
const TARGET_RSS_MIB: f64 = 64.0;
const CRIU_DUMP_S_PER_GIB: &str = "0.75";
const CRIU_RESTORE_S_PER_GIB: &str = "1.1-1.35";

// ------------------------------------------------------------------ options

#[derive(Clone, Copy, PartialEq, Debug)]
enum Scenario {
    Mem,
    Tree,
    Threads,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Mem => "mem",
            Scenario::Tree => "tree",
            Scenario::Threads => "threads",
        }
    }
}

struct Opts {
    scenarios: Vec<Scenario>,
    size_mib: usize,
    runs: usize,
    dir: PathBuf,
    limits_only: bool,
    keep: bool,
    crust: Option<PathBuf>,
    target: Option<PathBuf>,
}

const USAGE: &str = "usage: crust-bench [--scenario mem|tree|threads|all (all)] \
[--size-mib N (1024, mem only)] [--runs N (3)] \
[--dir DIR (/dev/shm/crust-bench)] [--limits-only] [--keep] [--crust PATH] [--target PATH]";

fn parse_opts() -> Result<Opts> {
    let mut o = Opts {
        scenarios: vec![Scenario::Mem, Scenario::Tree, Scenario::Threads],
        size_mib: 1024,
        runs: 3,
        dir: PathBuf::from("/dev/shm/crust-bench"),
        limits_only: false,
        keep: false,
        crust: None,
        target: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        // Accept both `--opt value` and `--opt=value`.
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = || -> Result<String> {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        match name.as_str() {
            "--size-mib" => {
                o.size_mib = value()?
                    .parse()
                    .map_err(|_| format!("--size-mib: not a number\n{USAGE}"))?
            }
            "--runs" => {
                o.runs = value()?
                    .parse()
                    .map_err(|_| format!("--runs: not a number\n{USAGE}"))?
            }
            "--scenario" => {
                o.scenarios = match value()?.as_str() {
                    "mem" => vec![Scenario::Mem],
                    "tree" => vec![Scenario::Tree],
                    "threads" => vec![Scenario::Threads],
                    "all" => vec![Scenario::Mem, Scenario::Tree, Scenario::Threads],
                    v => return Err(format!("--scenario: unknown scenario {v}\n{USAGE}")),
                }
            }
            "--dir" => o.dir = value()?.into(),
            "--crust" => o.crust = Some(value()?.into()),
            "--target" => o.target = Some(value()?.into()),
            "--limits-only" => o.limits_only = true,
            "--keep" => o.keep = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                exit(0);
            }
            _ => return Err(format!("unknown argument {a}\n{USAGE}")),
        }
    }
    if o.size_mib == 0 || o.runs == 0 {
        return Err(format!("--size-mib and --runs must be at least 1\n{USAGE}"));
    }
    Ok(o)
}

// ------------------------------------------------------------------ samples

/// Times in seconds of repeated runs of one measurement (warm-up excluded).
#[derive(Clone, Default)]
struct Samples(Vec<f64>);

impl Samples {
    fn push(&mut self, v: f64) {
        self.0.push(v);
    }
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v
    }
    /// Smallest value (the best, for times and sizes).
    fn best(&self) -> Option<f64> {
        self.sorted().first().copied()
    }
    fn median(&self) -> Option<f64> {
        let v = self.sorted();
        match v.len() {
            0 => None,
            n if n % 2 == 1 => Some(v[n / 2]),
            n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        }
    }
    fn json(&self) -> Value {
        json!({"best": self.best(), "median": self.median(), "all": self.0})
    }
}

/// Runs `f` once to warm up, then `runs` times, and returns the timings.
fn repeat(runs: usize, mut f: impl FnMut() -> Result<f64>) -> Result<Samples> {
    f()?;
    let mut s = Samples::default();
    for _ in 0..runs {
        s.push(f()?);
    }
    Ok(s)
}

// ------------------------------------------------------------------- memory

/// An anonymous private mapping, unmapped on drop.
struct Region {
    base: *mut u8,
    map_len: usize,
    ptr: *mut u8,
    len: usize,
}

#[derive(Clone, Copy, PartialEq)]
enum Thp {
    Default,
    Never,
    Huge,
}

impl Region {
    fn new(len: usize, thp: Thp) -> Result<Region> {
        let map_len = if thp == Thp::Huge { len + HUGE } else { len };
        // SAFETY: a fresh anonymous mapping; checked for MAP_FAILED.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(format!("mmap {map_len} bytes: {}", errno()));
        }
        let base = base.cast::<u8>();
        let ptr = if thp == Thp::Huge {
            // SAFETY: the aligned start stays inside the mapping (map_len = len + HUGE).
            unsafe { base.add((HUGE - (base as usize) % HUGE) % HUGE) }
        } else {
            base
        };
        let advice = match thp {
            Thp::Default => None,
            Thp::Never => Some(libc::MADV_NOHUGEPAGE),
            Thp::Huge => Some(libc::MADV_HUGEPAGE),
        };
        if let Some(advice) = advice {
            // SAFETY: advice on our own mapping.
            unsafe { libc::madvise(ptr.cast(), len, advice) };
        }
        Ok(Region {
            base,
            map_len,
            ptr,
            len,
        })
    }

    fn prefaulted(len: usize) -> Result<Region> {
        let mut r = Region::new(len, Thp::Default)?;
        r.slice_mut().fill(0x5a);
        Ok(r)
    }

    fn slice(&self) -> &[u8] {
        // SAFETY: ptr..ptr+len lies in our readable mapping.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    fn slice_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr..ptr+len lies in our writable mapping, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// Writes one byte per 4 KiB page, faulting every page in.
    fn touch(&mut self) {
        let p = self.ptr;
        for off in (0..self.len).step_by(PAGE) {
            // SAFETY: off < len; volatile so the stores are not elided.
            unsafe { std::ptr::write_volatile(p.add(off), 1) };
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what new() mapped.
        unsafe { libc::munmap(self.base.cast(), self.map_len) };
    }
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

// ------------------------------------------------------------------- limits

#[derive(Default)]
struct Limits {
    memcpy: Samples,
    tmpfs_fresh: Samples,
    tmpfs_falloc: Samples,
    touch_4k: Samples,
    touch_thp: Samples,
    vm_readv: Samples,
    vm_readv_tmpfs: Samples,
    target_check: Option<String>,
}

fn measure_limits(o: &Opts, target_bin: &Path) -> Result<Limits> {
    let len = o.size_mib * MIB;
    let mut l = Limits::default();

    {
        let src = Region::prefaulted(len)?;
        let mut dst = Region::prefaulted(len)?;
        l.memcpy = repeat(o.runs, || {
            let t = Instant::now();
            dst.slice_mut().copy_from_slice(src.slice());
            std::hint::black_box(dst.slice());
            Ok(t.elapsed().as_secs_f64())
        })?;

        let file = o.dir.join("tmpfs-write.bin");
        l.tmpfs_fresh = repeat(o.runs, || {
            let _ = fs::remove_file(&file);
            let t = Instant::now();
            write_file(&file, src.slice(), false)?;
            let dt = t.elapsed().as_secs_f64();
            let _ = fs::remove_file(&file);
            Ok(dt)
        })?;
        l.tmpfs_falloc = repeat(o.runs, || {
            let _ = fs::remove_file(&file);
            let f = File::create(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            // SAFETY: fallocate on an fd we own.
            if unsafe { libc::fallocate(fd_of(&f), 0, 0, len as libc::off_t) } != 0 {
                return Err(format!("fallocate {}: {}", file.display(), errno()));
            }
            drop(f);
            let t = Instant::now();
            write_file(&file, src.slice(), true)?;
            let dt = t.elapsed().as_secs_f64();
            let _ = fs::remove_file(&file);
            Ok(dt)
        })?;
    }

    for (thp, out) in [(Thp::Never, &mut l.touch_4k), (Thp::Huge, &mut l.touch_thp)] {
        *out = repeat(o.runs, || {
            let mut r = Region::new(len, thp)?;
            let t = Instant::now();
            r.touch();
            Ok(t.elapsed().as_secs_f64())
        })?;
    }

    // A live target: process_vm_readv of its memory, then its own check.
    let rundir = o.dir.join("limits-target");
    fresh_dir(&rundir)?;
    let target = start_target(target_bin, o.size_mib, &rundir)?;
    let readv = (|| {
        let (addr, tlen) = target.region()?;
        let mut buf = Region::prefaulted(tlen)?;
        let anon = repeat(o.runs, || {
            let t = Instant::now();
            vm_readv(target.pid, addr, buf.slice_mut())?;
            Ok(t.elapsed().as_secs_f64())
        })?;
        drop(buf);
        // The recipe of DESIGN.md: fallocate + MAP_POPULATE the image file
        // before the freeze, so the frozen window only copies.
        let file = rundir.join("pages.img");
        let tmpfs = repeat(o.runs, || {
            let _ = fs::remove_file(&file);
            let mut m = FileMap::populated(&file, tlen)?;
            let t = Instant::now();
            vm_readv(target.pid, addr, m.slice_mut())?;
            let dt = t.elapsed().as_secs_f64();
            drop(m);
            let _ = fs::remove_file(&file);
            Ok(dt)
        })?;
        Ok::<_, String>((anon, tmpfs))
    })();
    let verdict = target.terminate();
    let _ = fs::remove_dir_all(&rundir);
    (l.vm_readv, l.vm_readv_tmpfs) = readv?;
    l.target_check = Some(verdict?);
    Ok(l)
}

/// A shared mapping of a new file, fallocated and populated.
struct FileMap {
    ptr: *mut u8,
    len: usize,
}

impl FileMap {
    fn populated(path: &Path, len: usize) -> Result<FileMap> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        // SAFETY: fallocate on an fd we own.
        if unsafe { libc::fallocate(fd_of(&f), 0, 0, len as libc::off_t) } != 0 {
            return Err(format!("fallocate {}: {}", path.display(), errno()));
        }
        // SAFETY: a shared mapping of our file, checked for MAP_FAILED.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd_of(&f),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap {}: {}", path.display(), errno()));
        }
        Ok(FileMap { ptr: p.cast(), len })
    }

    fn slice_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr..ptr+len is our writable shared mapping.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for FileMap {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what populated() mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn fd_of(f: &File) -> libc::c_int {
    use std::os::fd::AsRawFd;
    f.as_raw_fd()
}

/// Writes `data` to `path` with write(2) in 64 MiB pieces (one big write
/// would be cut at 2 GiB anyway).
fn write_file(path: &Path, data: &[u8], existing: bool) -> Result<()> {
    use std::io::Write;
    let mut f = OpenOptions::new()
        .write(true)
        .create(!existing)
        .truncate(!existing)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    for chunk in data.chunks(64 * MIB) {
        f.write_all(chunk)
            .map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Reads `buf.len()` bytes at `addr` of process `pid` into `buf`.
fn vm_readv(pid: i32, addr: usize, buf: &mut [u8]) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let want = (buf.len() - done).min(1 << 30);
        let local = libc::iovec {
            // SAFETY: done < buf.len().
            iov_base: unsafe { buf.as_mut_ptr().add(done) }.cast(),
            iov_len: want,
        };
        let remote = libc::iovec {
            iov_base: (addr + done) as *mut libc::c_void,
            iov_len: want,
        };
        // SAFETY: one local iovec into our own buffer; the remote side is checked by the kernel.
        let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
        if n <= 0 {
            return Err(format!("process_vm_readv pid {pid}: {}", errno()));
        }
        done += n as usize;
    }
    Ok(())
}

// ------------------------------------------------------------------ targets

/// A running bench-target, our child (or, once restored, reparented to us).
struct Target {
    pid: i32,
    dir: PathBuf,
}

fn fresh_dir(dir: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))
}

fn start_target(bin: &Path, size_mib: usize, dir: &Path) -> Result<Target> {
    let args: Vec<std::ffi::OsString> = vec![
        "--size-mib".into(),
        size_mib.to_string().into(),
        "--pidfile".into(),
        dir.join("target.pid").into(),
        "--info".into(),
        dir.join("target.info").into(),
    ];
    spawn_target(bin, &args, dir)
}

/// Starts `bin ARGS` in `dir`, in a session of its own, output to
/// `dir/target.log`, and waits until it writes its pid to `dir/target.pid`
/// (which ARGS must name).
fn spawn_target(bin: &Path, args: &[std::ffi::OsString], dir: &Path) -> Result<Target> {
    let pidfile = dir.join("target.pid");
    let log_path = dir.join("target.log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(&log_path)
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    // Its own session and group, so that the dump needs no --shell-job and
    // no other process holds its pid as a session or group id; and no fds
    // but 0-2 (a shell or make may leak pipes to us, which crust refuses).
    // SAFETY: setsid and close_range are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("start {}: {e}", bin.display()))?;
    let t = Target {
        pid: child.id() as i32,
        dir: dir.to_path_buf(),
    };
    // We reap it ourselves with waitpid; std's Child never waits on drop.
    drop(child);
    let start = Instant::now();
    loop {
        if let Ok(text) = fs::read_to_string(&pidfile) {
            if text.trim() == t.pid.to_string() {
                return Ok(t);
            }
        }
        if let Some(st) = try_reap(t.pid) {
            return Err(format!(
                "target exited before it was ready ({}): {}",
                describe_status(st),
                tail(&log_path)
            ));
        }
        if start.elapsed() > READY_TIMEOUT {
            t.kill();
            return Err("target not ready in time".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Target {
    fn region(&self) -> Result<(usize, usize)> {
        let p = self.dir.join("target.info");
        let text = fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        let mut it = text.split_whitespace();
        let addr = it
            .next()
            .and_then(|a| usize::from_str_radix(a.trim_start_matches("0x"), 16).ok());
        let len = it.next().and_then(|l| l.parse().ok());
        match (addr, len) {
            (Some(a), Some(l)) => Ok((a, l)),
            _ => Err(format!("{}: bad contents {text:?}", p.display())),
        }
    }

    fn kill(&self) {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        let _ = wait_exit(self.pid, EXIT_TIMEOUT);
    }

    /// SIGTERM, then wait for its verdict: Ok(its PASS line) if it exited 0.
    fn terminate(&self) -> Result<String> {
        // SAFETY: plain kill(2).
        if unsafe { libc::kill(self.pid, libc::SIGTERM) } != 0 {
            return Err(format!("SIGTERM pid {}: {}", self.pid, errno()));
        }
        let log = self.dir.join("target.log");
        match wait_exit(self.pid, EXIT_TIMEOUT) {
            Ok(st) if libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0 => Ok(last_line(&log)),
            Ok(st) => Err(format!(
                "target pid {} {}: {}",
                self.pid,
                describe_status(st),
                tail(&log)
            )),
            Err(e) => {
                // SAFETY: plain kill(2).
                unsafe { libc::kill(self.pid, libc::SIGKILL) };
                let _ = wait_exit(self.pid, EXIT_TIMEOUT);
                Err(format!("target pid {}: {e}", self.pid))
            }
        }
    }
}

fn last_line(path: &Path) -> String {
    fs::read_to_string(path)
        .ok()
        .and_then(|t| t.lines().last().map(str::to_string))
        .unwrap_or_default()
}

/// The last few lines of a log file, for error messages.
fn tail(path: &Path) -> String {
    match fs::read_to_string(path) {
        Ok(t) => {
            let lines: Vec<&str> = t.lines().collect();
            let from = lines.len().saturating_sub(8);
            format!(
                "last lines of {}:\n    {}",
                path.display(),
                lines[from..].join("\n    ")
            )
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

// ------------------------------------------------------------------ reaping

fn try_reap(pid: i32) -> Option<libc::c_int> {
    let mut st = 0;
    // SAFETY: waitpid with a valid out pointer.
    let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
    (r == pid).then_some(st)
}

/// Waits for `pid` (our child or reparented to us) to exit and reaps it.
/// If it is not our child, waits until /proc/PID is gone and returns Err.
fn wait_exit(pid: i32, timeout: Duration) -> Result<libc::c_int> {
    let start = Instant::now();
    loop {
        let mut st = 0;
        // SAFETY: waitpid with a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        if r == pid {
            return Ok(st);
        }
        if r < 0 {
            let e = errno();
            if e.raw_os_error() == Some(libc::ECHILD) {
                wait_gone(pid, timeout)?;
                return Err(format!(
                    "pid {pid} is not a child of the bench: its exit status is unknown"
                ));
            }
            return Err(format!("waitpid {pid}: {e}"));
        }
        if start.elapsed() > timeout {
            return Err(format!("pid {pid} did not exit within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Reaps every exited child (strays reparented to us as subreaper).
fn reap_strays() {
    loop {
        let mut st = 0;
        // SAFETY: waitpid with a valid out pointer.
        if unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) } <= 0 {
            break;
        }
    }
}

/// Waits until no process (not even a zombie) has number `pid`.
fn wait_gone(pid: i32, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    let proc = PathBuf::from(format!("/proc/{pid}"));
    while proc.exists() {
        reap_strays();
        if start.elapsed() > timeout {
            return Err(format!("pid {pid} still exists after {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

fn describe_status(st: libc::c_int) -> String {
    if libc::WIFEXITED(st) {
        format!("exited with status {}", libc::WEXITSTATUS(st))
    } else if libc::WIFSIGNALED(st) {
        format!("killed by signal {}", libc::WTERMSIG(st))
    } else {
        format!("wait status {st:#x}")
    }
}

// -------------------------------------------------------------------- crust

struct CrustRun {
    status: libc::c_int,
    wall: f64,
    maxrss_mib: f64,
}

/// Runs crust with `args`, stdout and stderr to `out`, and returns its exit
/// status, wall-clock time and peak RSS (from wait4's rusage, which counts
/// crust and the children it reaped itself).
fn run_crust(bin: &Path, args: &[&str], out: &Path) -> Result<CrustRun> {
    let f = File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let f2 = f.try_clone().map_err(|e| e.to_string())?;
    // A forked child starts with its parent's peak RSS (the mm's hiwater is
    // copied at fork and folded into the rusage at exec), and ours was
    // raised by the limit buffers: reset it to our current, small RSS.
    fs::write("/proc/self/clear_refs", "5")
        .map_err(|e| format!("reset peak RSS (/proc/self/clear_refs): {e}"))?;
    let t = Instant::now();
    let child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(f)
        .stderr(f2)
        .spawn()
        .map_err(|e| format!("start {}: {e}", bin.display()))?;
    let pid = child.id() as i32;
    drop(child);

    // A watchdog kills crust if it hangs.
    let (tx, rx) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(CRUST_TIMEOUT) {
            // SAFETY: plain kill(2) of our unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return true;
        }
        false
    });
    let mut st = 0;
    // SAFETY: zeroed rusage is a valid out parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = loop {
        // SAFETY: wait4 with valid out pointers.
        let r = unsafe { libc::wait4(pid, &mut st, 0, &mut ru) };
        if r >= 0 || errno().raw_os_error() != Some(libc::EINTR) {
            break r;
        }
    };
    let wall = t.elapsed().as_secs_f64();
    let wait_err = (r < 0).then(errno);
    drop(tx);
    let timed_out = watchdog.join().unwrap_or(false);
    if let Some(e) = wait_err {
        return Err(format!("wait4 crust: {e}"));
    }
    if timed_out {
        return Err(format!(
            "crust {} killed after {CRUST_TIMEOUT:?}",
            args.join(" ")
        ));
    }
    Ok(CrustRun {
        status: st,
        wall,
        maxrss_mib: ru.ru_maxrss as f64 / 1024.0,
    })
}

fn crust_ok(run: &CrustRun) -> bool {
    libc::WIFEXITED(run.status) && libc::WEXITSTATUS(run.status) == 0
}

/// `crust show FILE` as JSON, or None.
fn crust_show(bin: &Path, file: &Path) -> Option<Value> {
    if !file.exists() {
        return None;
    }
    let out = Command::new(bin)
        .arg("show")
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// The first value of field `key` anywhere in `v`, as a number (protobuf
/// JSON may print 64-bit integers as strings).
fn find_num(v: &Value, key: &str) -> Option<f64> {
    match v {
        Value::Object(m) => {
            if let Some(x) = m.get(key) {
                match x {
                    Value::Number(n) => return n.as_f64(),
                    Value::String(s) => return s.parse().ok(),
                    _ => {}
                }
            }
            m.values().find_map(|x| find_num(x, key))
        }
        Value::Array(a) => a.iter().find_map(|x| find_num(x, key)),
        _ => None,
    }
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[derive(Default)]
struct RunResult {
    dump: f64,
    restore: f64,
    dump_rss: f64,
    restore_rss: f64,
    image_bytes: u64,
    /// From stats-dump.img, in seconds.
    frozen: Option<f64>,
    freezing: Option<f64>,
    memdump: Option<f64>,
    memwrite: Option<f64>,
    pages_written: Option<f64>,
    /// From stats-restore.img, in seconds.
    restore_time: Option<f64>,
    same_pid: bool,
    verdict: String,
}

/// One dump + restore cycle in `DIR/NAME`. Ok only if crust succeeded both
/// ways and the restored target, with the dumped pid, verified its pattern.
fn crust_cycle(o: &Opts, crust: &Path, target_bin: &Path, name: &str) -> Result<RunResult> {
    let rundir = o.dir.join(name);
    let img = rundir.join("img");
    fresh_dir(&img)?;
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let mut r = RunResult::default();

    let target = start_target(target_bin, o.size_mib, &rundir)?;
    let pid = target.pid;
    let pid_s = pid.to_string();

    let dump_log = rundir.join("dump.log");
    let dump = run_crust(
        crust,
        &[
            "dump",
            "-t",
            &pid_s,
            "-D",
            &s(&img),
            "-v4",
            "-o",
            &s(&dump_log),
        ],
        &rundir.join("dump.out"),
    );
    let dump = match dump {
        Ok(d) if crust_ok(&d) => d,
        Ok(d) => {
            target.kill();
            return Err(format!(
                "crust dump {}\n  {}\n  {}",
                describe_status(d.status),
                tail(&rundir.join("dump.out")),
                tail(&dump_log)
            ));
        }
        Err(e) => {
            target.kill();
            return Err(e);
        }
    };
    r.dump = dump.wall;
    r.dump_rss = dump.maxrss_mib;

    // The dump kills the target (CRIU's default): reap it, wait for its pid.
    match wait_exit(pid, Duration::from_secs(30)) {
        Ok(st) if libc::WIFSIGNALED(st) => {}
        Ok(st) => return Err(format!("dumped target {}", describe_status(st))),
        Err(e) => {
            target.kill();
            return Err(format!("after the dump: {e}"));
        }
    }
    wait_gone(pid, Duration::from_secs(30))?;

    if let Some(v) = crust_show(crust, &img.join("stats-dump.img")) {
        let us = |k: &str| find_num(&v, k).map(|x| x / 1e6);
        r.frozen = us("frozen_time");
        r.freezing = us("freezing_time");
        r.memdump = us("memdump_time");
        r.memwrite = us("memwrite_time");
        r.pages_written = find_num(&v, "pages_written");
    }
    r.image_bytes = dir_size(&img);

    let restored_pidfile = rundir.join("restored.pid");
    let restore_log = rundir.join("restore.log");
    let restore = run_crust(
        crust,
        &[
            "restore",
            "-D",
            &s(&img),
            "-d",
            "--pidfile",
            &s(&restored_pidfile),
            "-v4",
            "-o",
            &s(&restore_log),
        ],
        &rundir.join("restore.out"),
    )?;
    if !crust_ok(&restore) {
        // A failed restore must leave nothing behind; make sure of it.
        if PathBuf::from(format!("/proc/{pid}")).exists() {
            target.kill();
        }
        return Err(format!(
            "crust restore {}\n  {}\n  {}",
            describe_status(restore.status),
            tail(&rundir.join("restore.out")),
            tail(&restore_log)
        ));
    }
    r.restore = restore.wall;
    r.restore_rss = restore.maxrss_mib;

    let rpid: i32 = fs::read_to_string(&restored_pidfile)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(pid);
    r.same_pid = rpid == pid;
    if let Some(v) = crust_show(crust, &img.join("stats-restore.img")) {
        r.restore_time = find_num(&v, "restore_time").map(|x| x / 1e6);
    }

    let restored = Target {
        pid: rpid,
        dir: rundir.clone(),
    };
    let verdict = restored.terminate();
    reap_strays();
    wait_gone(rpid, Duration::from_secs(30))?;
    match verdict {
        Ok(line) => r.verdict = line,
        Err(e) => return Err(format!("restored target failed its check: {e}")),
    }
    if !r.same_pid {
        return Err(format!("restored pid {rpid} is not the dumped pid {pid}"));
    }
    if !o.keep {
        let _ = fs::remove_dir_all(&rundir);
    }
    Ok(r)
}

// ------------------------------------------------------------------- output

fn thp_mode() -> String {
    fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .ok()
        .and_then(|t| {
            t.split_whitespace()
                .find(|w| w.starts_with('['))
                .map(|w| w.trim_matches(['[', ']']).to_string())
        })
        .unwrap_or_else(|| "n/a".into())
}

fn kernel() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "n/a".into())
}

fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map(|x| format!("{x:.prec$}"))
        .unwrap_or_else(|| "n/a".into())
}

fn print_limits(o: &Opts, l: &Limits) {
    let gib = (o.size_mib * MIB) as f64 / GIB;
    println!();
    println!(
        "== machine limits: {} MiB, best and median of {} run(s) after 1 warm-up ==",
        o.size_mib, o.runs
    );
    println!(
        "{:<46} {:>9} {:>9} {:>9} {:>8}",
        "measurement", "best s", "median s", "s/GiB", "GB/s"
    );
    for (name, s) in [
        ("memcpy, prefaulted -> prefaulted", &l.memcpy),
        ("process_vm_readv target -> prefaulted anon", &l.vm_readv),
        (
            "process_vm_readv target -> populated tmpfs",
            &l.vm_readv_tmpfs,
        ),
        ("tmpfs write, fresh file", &l.tmpfs_fresh),
        ("tmpfs write, fallocated file", &l.tmpfs_falloc),
        ("first touch, fresh anon, 4 KiB pages", &l.touch_4k),
        ("first touch, fresh anon, MADV_HUGEPAGE", &l.touch_thp),
    ] {
        let best = s.best();
        println!(
            "{:<46} {:>9} {:>9} {:>9} {:>8}",
            name,
            fmt_opt(best, 3),
            fmt_opt(s.median(), 3),
            fmt_opt(best.map(|b| b / gib), 3),
            fmt_opt(best.map(|b| (o.size_mib * MIB) as f64 / b / 1e9), 2),
        );
    }
    if let Some(v) = &l.target_check {
        println!("target self-check (no crust): {v}");
    }
}

fn limits_json(o: &Opts, l: &Limits) -> Value {
    let gib = (o.size_mib * MIB) as f64 / GIB;
    let one = |s: &Samples| {
        json!({
            "s": s.json(),
            "s_per_gib": s.best().map(|b| b / gib),
            "gb_per_s": s.best().map(|b| (o.size_mib * MIB) as f64 / b / 1e9),
        })
    };
    json!({
        "memcpy": one(&l.memcpy),
        "process_vm_readv": one(&l.vm_readv),
        "process_vm_readv_tmpfs_populated": one(&l.vm_readv_tmpfs),
        "tmpfs_write_fresh": one(&l.tmpfs_fresh),
        "tmpfs_write_fallocated": one(&l.tmpfs_falloc),
        "first_touch_4k": one(&l.touch_4k),
        "first_touch_thp": one(&l.touch_thp),
        "target_check": l.target_check,
    })
}

struct Row {
    name: &'static str,
    key: &'static str,
    unit: &'static str,
    samples: Samples,
    per_gib: bool,
    target: String,
    criu: &'static str,
    /// Target to compare the best value against, in the row's per-GiB unit.
    limit: Option<f64>,
}

fn crust_rows(results: &[RunResult]) -> Vec<Row> {
    let col = |f: &dyn Fn(&RunResult) -> Option<f64>| {
        let mut s = Samples::default();
        for r in results {
            if let Some(v) = f(r) {
                s.push(v);
            }
        }
        s
    };
    vec![
        Row {
            name: "dump wall-clock",
            key: "dump_s",
            unit: "s",
            samples: col(&|r| Some(r.dump)),
            per_gib: true,
            target: "-".into(),
            criu: CRIU_DUMP_S_PER_GIB,
            limit: None,
        },
        Row {
            name: "frozen time (stats-dump)",
            key: "frozen_s",
            unit: "s",
            samples: col(&|r| r.frozen),
            per_gib: true,
            target: format!("<= {TARGET_FROZEN_S_PER_GIB}"),
            criu: "-",
            limit: Some(TARGET_FROZEN_S_PER_GIB),
        },
        Row {
            name: "  memdump time (stats-dump)",
            key: "memdump_s",
            unit: "s",
            samples: col(&|r| r.memdump),
            per_gib: true,
            target: "-".into(),
            criu: "-",
            limit: None,
        },
        Row {
            name: "  memwrite time (stats-dump)",
            key: "memwrite_s",
            unit: "s",
            samples: col(&|r| r.memwrite),
            per_gib: true,
            target: "-".into(),
            criu: "-",
            limit: None,
        },
        Row {
            name: "restore wall-clock",
            key: "restore_s",
            unit: "s",
            samples: col(&|r| Some(r.restore)),
            per_gib: true,
            target: format!("<= {TARGET_RESTORE_S_PER_GIB}"),
            criu: CRIU_RESTORE_S_PER_GIB,
            limit: Some(TARGET_RESTORE_S_PER_GIB),
        },
        Row {
            name: "crust peak RSS, dump",
            key: "dump_peak_rss_mib",
            unit: "MiB",
            samples: col(&|r| Some(r.dump_rss)),
            per_gib: false,
            target: format!("<= {TARGET_RSS_MIB}"),
            criu: "-",
            limit: Some(TARGET_RSS_MIB),
        },
        Row {
            name: "crust peak RSS, restore",
            key: "restore_peak_rss_mib",
            unit: "MiB",
            samples: col(&|r| Some(r.restore_rss)),
            per_gib: false,
            target: format!("<= {TARGET_RSS_MIB}"),
            criu: "-",
            limit: Some(TARGET_RSS_MIB),
        },
        Row {
            name: "image size",
            key: "image_mib",
            unit: "MiB",
            samples: col(&|r| Some(r.image_bytes as f64 / MIB as f64)),
            per_gib: false,
            target: "-".into(),
            criu: "-",
            limit: None,
        },
    ]
}

fn print_crust(o: &Opts, l: &Limits, results: &[RunResult]) {
    let gib = (o.size_mib * MIB) as f64 / GIB;
    let memcpy = l.memcpy.best().map(|b| b / gib);
    let tmpfs = l.tmpfs_fresh.best().map(|b| b / gib);
    let touch = l.touch_4k.best().map(|b| b / gib);
    println!();
    println!(
        "== crust: {} MiB target, {} run(s) after 1 warm-up (per-GiB figures from the best run) ==",
        o.size_mib,
        results.len()
    );
    println!(
        "{:<34} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>13} {:>10} {:>4}",
        "metric",
        "best",
        "median",
        "per GiB",
        "x memcpy",
        "x tmpfsW",
        "x touch",
        "target",
        "CRIU 4.2",
        ""
    );
    for row in crust_rows(results) {
        let best = row.samples.best();
        let prec = if row.unit == "s" { 3 } else { 1 };
        let per = if row.per_gib {
            best.map(|b| b / gib)
        } else {
            best
        };
        let ratio = |lim: Option<f64>| -> String {
            match (row.per_gib, per, lim) {
                (true, Some(p), Some(l)) if l > 0.0 => format!("{:.2}", p / l),
                _ => "-".into(),
            }
        };
        let verdict = match (row.limit, per) {
            (Some(lim), Some(p)) if p <= lim => "ok",
            (Some(_), Some(_)) => "MISS",
            _ => "",
        };
        let unit_per = if row.per_gib {
            format!("{}/GiB", row.unit)
        } else {
            row.unit.to_string()
        };
        println!(
            "{:<34} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>13} {:>10} {:>4}",
            format!("{} [{}]", row.name, row.unit),
            fmt_opt(best, prec),
            fmt_opt(row.samples.median(), prec),
            if row.per_gib {
                fmt_opt(per, 3)
            } else {
                "-".into()
            },
            ratio(memcpy),
            ratio(tmpfs),
            ratio(touch),
            if row.target == "-" {
                "-".to_string()
            } else {
                format!("{} {}", row.target, unit_per)
            },
            row.criu,
            verdict,
        );
    }
    if let Some(r) = results.first() {
        println!(
            "run 1: pages written: {}, restore_time (stats-restore): {} s, restored target: {}",
            fmt_opt(r.pages_written, 0),
            fmt_opt(r.restore_time, 3),
            r.verdict
        );
    }
    println!(
        "ratios: per-GiB time / this machine's per-GiB time for memcpy, fresh tmpfs write, \
         first touch (4 KiB). CRIU 4.2 column: s/GiB measured on this kind of machine."
    );
}

fn crust_json(o: &Opts, results: &[RunResult]) -> Value {
    let gib = (o.size_mib * MIB) as f64 / GIB;
    let mut m = serde_json::Map::new();
    for row in crust_rows(results) {
        let key = row.key.to_string();
        let mut v = row.samples.json();
        if row.per_gib {
            v["per_gib_best"] = json!(row.samples.best().map(|b| b / gib));
        }
        v["unit"] = json!(row.unit);
        m.insert(key, v);
    }
    Value::Object(m)
}

// --------------------------------------------------------------------- main

/// A binary next to this one (target/<profile>/NAME), or None.
fn sibling(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join(name);
    p.is_file().then_some(p)
}

/// Builds `bench-target` (and `crust`) with cargo, in this binary's profile.
fn cargo_build(with_crust: bool) -> Result<()> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let release = exe
        .parent()
        .and_then(|p| p.file_name())
        .is_some_and(|n| n == "release");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(&manifest)
        .args(["-p", "crust-bench", "--bins"]);
    if with_crust {
        cmd.args(["-p", "crust"]);
    }
    if release {
        cmd.arg("--release");
    }
    eprintln!("crust-bench: building: {cmd:?}");
    let st = cmd.status().map_err(|e| format!("cargo: {e}"))?;
    if !st.success() {
        return Err(format!("cargo build failed: {st}"));
    }
    Ok(())
}

/// The binaries the bench runs.
struct Bins {
    target: PathBuf,
    tree: PathBuf,
    threads: PathBuf,
    crust: Option<PathBuf>,
}

fn find_bins(o: &Opts) -> Result<Bins> {
    let need_crust = !o.limits_only;
    let look = || {
        (
            o.target.clone().or_else(|| sibling("bench-target")),
            sibling("bench-tree-target"),
            sibling("bench-threads-target"),
            o.crust.clone().or_else(|| sibling("crust")),
        )
    };
    let (mut target, mut tree, mut threads, mut crust) = look();
    if target.is_none() || tree.is_none() || threads.is_none() || (need_crust && crust.is_none()) {
        cargo_build(need_crust && crust.is_none())?;
        (target, tree, threads, crust) = look();
    }
    let missing = |name: &str| format!("{name} not found next to crust-bench");
    let bins = Bins {
        target: target.ok_or("bench-target not found next to crust-bench (use --target)")?,
        tree: tree.ok_or_else(|| missing("bench-tree-target"))?,
        threads: threads.ok_or_else(|| missing("bench-threads-target"))?,
        crust: if need_crust { crust } else { None },
    };
    if need_crust && bins.crust.is_none() {
        return Err("crust not found next to crust-bench (use --crust)".into());
    }
    Ok(bins)
}

/// Scenario `mem`: the limits, then dump and restore of one SIZE MiB target.
/// Returns the limits' JSON, the crust results' JSON and the first error.
fn run_mem(o: &Opts, bins: &Bins) -> Result<(Value, Option<Value>, Option<String>)> {
    let target_bin = &bins.target;
    let limits = measure_limits(o, target_bin)?;
    print_limits(o, &limits);

    let mut results = Vec::new();
    let mut error = None;
    if let Some(crust) = &bins.crust {
        println!();
        println!("== scenario mem: crust {} ==", crust.display());
        for i in 0..=o.runs {
            let name = if i == 0 {
                "warmup".to_string()
            } else {
                format!("run-{i}")
            };
            match crust_cycle(o, crust, target_bin, &name) {
                Ok(r) => {
                    println!(
                        "  {name:<7} dump {:.3} s, frozen {} s, restore {:.3} s, RSS {:.1}/{:.1} MiB, image {:.1} MiB: {}",
                        r.dump,
                        fmt_opt(r.frozen, 3),
                        r.restore,
                        r.dump_rss,
                        r.restore_rss,
                        r.image_bytes as f64 / MIB as f64,
                        r.verdict
                    );
                    if i > 0 {
                        results.push(r);
                    }
                }
                Err(e) => {
                    println!("  {name:<7} FAILED: {e}");
                    error = Some(e);
                    break;
                }
            }
        }
        reap_strays();
        if !results.is_empty() {
            print_crust(o, &limits, &results);
        }
    }
    let crust_json = bins.crust.as_ref().map(|_| crust_json(o, &results));
    Ok((limits_json(o, &limits), crust_json, error))
}

fn run() -> Result<bool> {
    let o = parse_opts()?;
    let bins = find_bins(&o)?;
    fs::create_dir_all(&o.dir).map_err(|e| format!("mkdir {}: {e}", o.dir.display()))?;
    // Restored targets are reparented to us when the restoring crust exits.
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(format!("PR_SET_CHILD_SUBREAPER: {}", errno()));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 && !o.limits_only {
        eprintln!("crust-bench: warning: not root; crust needs CAP_SYS_ADMIN and CAP_SYS_PTRACE");
    }
    let names: Vec<&str> = o.scenarios.iter().map(|s| s.name()).collect();
    println!(
        "crust-bench: kernel {}, THP {}, {} CPUs, dir {}, scenario(s) {}",
        kernel(),
        thp_mode(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        o.dir.display(),
        names.join(",")
    );

    let mut errors = serde_json::Map::new();
    let mut limits = Value::Null;
    let mut mem = Value::Null;
    let mut others = serde_json::Map::new();
    for &sc in &o.scenarios {
        let err = match sc {
            Scenario::Mem => {
                println!("mem target: {}", bins.target.display());
                let (l, c, e) = run_mem(&o, &bins)?;
                limits = l;
                mem = c.unwrap_or(Value::Null);
                e
            }
            Scenario::Tree | Scenario::Threads => {
                let Some(crust) = &bins.crust else { continue };
                let bin = if sc == Scenario::Tree {
                    &bins.tree
                } else {
                    &bins.threads
                };
                let (v, e) = scenarios::run_scenario(&o, crust, sc, bin)?;
                others.insert(sc.name().into(), v);
                e
            }
        };
        if let Some(e) = err {
            errors.insert(sc.name().into(), json!(e));
        }
        reap_strays();
    }

    let ok = errors.is_empty();
    let first_error = o
        .scenarios
        .iter()
        .find_map(|s| errors.get(s.name()).cloned());
    let line = json!({
        "crust_bench": {
            "scenarios": names,
            "size_mib": o.size_mib,
            "runs": o.runs,
            "kernel": kernel(),
            "thp": thp_mode(),
            "limits": limits,
            "crust": mem,
            "tree": others.get("tree"),
            "threads": others.get("threads"),
            "targets": {
                "frozen_s_per_gib": TARGET_FROZEN_S_PER_GIB,
                "restore_s_per_gib": TARGET_RESTORE_S_PER_GIB,
                "peak_rss_mib": TARGET_RSS_MIB,
                "criu_4_2_dump_s_per_gib": CRIU_DUMP_S_PER_GIB,
                "criu_4_2_restore_s_per_gib": CRIU_RESTORE_S_PER_GIB,
            },
            "ok": ok,
            "error": first_error,
            "errors": errors,
        }
    });
    println!();
    println!("{line}");
    Ok(ok)
}

fn main() {
    match run() {
        Ok(true) => {}
        Ok(false) => exit(1),
        Err(e) => {
            eprintln!("crust-bench: {e}");
            exit(1);
        }
    }
}

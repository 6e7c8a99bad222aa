//! The process tree that `crust-bench --scenario tree` dumps and restores.
//!
//! `bench-tree-target --procs N --mib-each M --pidfile FILE --dir DIR`
//!
//! The root (started by the bench in its own session) forks N-1 children,
//! which stay in its session and group. Every process, root included, maps
//! M MiB of private anonymous memory and fills it with a pattern that
//! depends on its index and on each word's address. A child says it is
//! ready by creating `DIR/ready-INDEX` (written to a temporary name and
//! renamed); the root waits for all of them, then writes its pid to the
//! pidfile the same way. Everyone sleeps in a nanosleep loop until SIGTERM.
//!
//! On SIGTERM the root forwards SIGTERM to every child, checks its own
//! pattern, waits for all children and exits 0 only if every process
//! (itself included) found its pattern intact; a child exits 0 or 1. Each
//! process prints one `PASS`/`FAIL` line; the root's summary is the last
//! line of the log.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::exit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static TERM: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_sig: libc::c_int) {
    TERM.store(true, Ordering::SeqCst);
}

/// The word at address `addr` of process `idx`: differs between processes
/// and between addresses, so a page of another process, a page at the wrong
/// address or a zero page is caught.
fn pattern(idx: usize, addr: usize) -> u64 {
    let x = (addr as u64) ^ (idx as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    x.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x7472_6565_6265_6e63
}

fn usage(msg: &str) -> ! {
    eprintln!("bench-tree-target: {msg}");
    eprintln!("usage: bench-tree-target --procs N --mib-each M --pidfile FILE --dir DIR");
    exit(2);
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Maps and fills this process's memory; returns it.
fn fill(idx: usize, len: usize) -> &'static mut [u64] {
    // SAFETY: a fresh private anonymous mapping; checked for MAP_FAILED.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        say(&format!(
            "FAIL idx={idx}: mmap {len}: {}",
            std::io::Error::last_os_error()
        ));
        exit(2);
    }
    // SAFETY: our own page-aligned mapping of len bytes, never unmapped.
    let words: &mut [u64] = unsafe { std::slice::from_raw_parts_mut(addr.cast(), len / 8) };
    let base = addr as usize;
    for (i, w) in words.iter_mut().enumerate() {
        *w = pattern(idx, base + i * 8);
    }
    words
}

/// Checks the pattern: None if intact, else a description.
fn check(idx: usize, words: &[u64]) -> Option<String> {
    let base = words.as_ptr() as usize;
    let mut bad = 0usize;
    let mut first = None;
    for (i, w) in words.iter().enumerate() {
        if *w != pattern(idx, base + i * 8) {
            bad += 1;
            first.get_or_insert(i);
        }
    }
    first.map(|i| {
        format!(
            "{bad} of {} words differ; first at {:#x}: {:#018x}, expected {:#018x}",
            words.len(),
            base + i * 8,
            words[i],
            pattern(idx, base + i * 8)
        )
    })
}

fn sleep_until_term() {
    while !TERM.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn main() {
    let mut procs = 100usize;
    let mut mib_each = 8usize;
    let mut pidfile: Option<PathBuf> = None;
    let mut dir: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--procs" => procs = val().parse().unwrap_or_else(|_| usage("bad --procs")),
            "--mib-each" => mib_each = val().parse().unwrap_or_else(|_| usage("bad --mib-each")),
            "--pidfile" => pidfile = Some(val().into()),
            "--dir" => dir = Some(val().into()),
            _ => usage(&format!("unknown argument {a}")),
        }
    }
    let pidfile = pidfile.unwrap_or_else(|| usage("--pidfile is required"));
    let dir = dir.unwrap_or_else(|| usage("--dir is required"));
    if procs == 0 || mib_each == 0 {
        usage("--procs and --mib-each must be at least 1");
    }
    let len = mib_each << 20;

    // Inherited by the children: SIGTERM sets the flag the sleep loop reads.
    // SAFETY: a plain sigaction with a handler that only stores an atomic.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_term as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut()) != 0 {
            say(&format!(
                "FAIL root: sigaction: {}",
                std::io::Error::last_os_error()
            ));
            exit(2);
        }
    }

    let mut children = Vec::with_capacity(procs - 1);
    for idx in 1..procs {
        let _ = std::io::stdout().flush();
        // SAFETY: this process is single-threaded, so the child may go on
        // running ordinary code.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            say(&format!(
                "FAIL root: fork: {}",
                std::io::Error::last_os_error()
            ));
            for &c in &children {
                // SAFETY: plain kill(2) of our own child.
                unsafe { libc::kill(c, libc::SIGKILL) };
            }
            exit(2);
        }
        if pid == 0 {
            let words = fill(idx, len);
            let me = std::process::id();
            if let Err(e) = write_atomically(&dir.join(format!("ready-{idx}")), &format!("{me}\n"))
            {
                say(&format!("FAIL idx={idx} pid={me}: ready file: {e}"));
                // SAFETY: _exit has no preconditions.
                unsafe { libc::_exit(2) };
            }
            sleep_until_term();
            let code = match check(idx, words) {
                None => {
                    say(&format!("PASS idx={idx} pid={me}"));
                    0
                }
                Some(e) => {
                    say(&format!("FAIL idx={idx} pid={me}: {e}"));
                    1
                }
            };
            // SAFETY: _exit has no preconditions.
            unsafe { libc::_exit(code) };
        }
        children.push(pid);
    }

    let words = fill(0, len);
    let start = Instant::now();
    for idx in 1..procs {
        let ready = dir.join(format!("ready-{idx}"));
        while !ready.exists() {
            let mut st = 0;
            // SAFETY: waitpid with a valid out pointer.
            let r = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) };
            if r > 0 || start.elapsed() > Duration::from_secs(120) {
                say(&format!(
                    "FAIL root: child {idx} not ready (waitpid {r}, status {st:#x})"
                ));
                for &c in &children {
                    // SAFETY: plain kill(2) of our own children.
                    unsafe { libc::kill(c, libc::SIGKILL) };
                }
                exit(2);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let me = std::process::id();
    if let Err(e) = write_atomically(&pidfile, &format!("{me}\n")) {
        say(&format!("FAIL root: write {}: {e}", pidfile.display()));
        exit(2);
    }
    say(&format!(
        "ready root pid={me}, {procs} processes x {mib_each} MiB"
    ));

    sleep_until_term();
    for &c in &children {
        // SAFETY: plain kill(2) of our own children.
        unsafe { libc::kill(c, libc::SIGTERM) };
    }
    let mut failed = Vec::new();
    if let Some(e) = check(0, words) {
        say(&format!("FAIL idx=0 pid={me}: {e}"));
        failed.push(format!("root: {e}"));
    }
    for (i, &c) in children.iter().enumerate() {
        let mut st = 0;
        // SAFETY: waitpid with a valid out pointer.
        let r = unsafe { libc::waitpid(c, &mut st, 0) };
        let ok = r == c && libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0;
        if !ok {
            failed.push(format!(
                "child {} pid {c}: waitpid {r}, status {st:#x}",
                i + 1
            ));
        }
    }
    if failed.is_empty() {
        say(&format!(
            "PASS root pid={me}: all {procs} processes verified {mib_each} MiB each"
        ));
        exit(0);
    }
    say(&format!(
        "FAIL root pid={me}: {} of {procs} processes failed: {}",
        failed.len(),
        failed.join("; ")
    ));
    exit(1);
}

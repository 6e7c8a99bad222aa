//! The process that `crust-bench` dumps and restores.
//!
//! `bench-target --size-mib N --pidfile FILE [--info FILE]`
//!
//! Maps N MiB of private anonymous memory, fills it with a pattern, writes
//! `ADDR LEN` to the info file (if asked) and its pid to the pidfile (both
//! written to a temporary name and renamed, so a reader never sees half a
//! file), then sleeps in a loop until SIGTERM. On SIGTERM it checks every
//! byte of the pattern and exits 0 if it is intact, 1 if not (2 on a usage
//! or setup error). It prints one line to stdout when ready and one
//! (`PASS` or `FAIL ...`) when done.
//!
//! It keeps its state small on purpose: one thread, no children, no
//! sockets or pipes; stdio is whatever the bench gave it (regular files and
//! /dev/null).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::exit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static TERM: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_sig: libc::c_int) {
    TERM.store(true, Ordering::SeqCst);
}

/// The value of word `i` of the pattern: every 8-byte word differs, so a
/// page put at the wrong address or a zero page is caught.
fn pattern(i: usize) -> u64 {
    (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x6372_7573_7462_656e
}

fn usage(msg: &str) -> ! {
    eprintln!("bench-target: {msg}");
    eprintln!("usage: bench-target --size-mib N --pidfile FILE [--info FILE]");
    exit(2);
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

fn main() {
    let mut size_mib: Option<usize> = None;
    let mut pidfile: Option<PathBuf> = None;
    let mut info: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--size-mib" => {
                size_mib = Some(val().parse().unwrap_or_else(|_| usage("bad --size-mib")))
            }
            "--pidfile" => pidfile = Some(val().into()),
            "--info" => info = Some(val().into()),
            _ => usage(&format!("unknown argument {a}")),
        }
    }
    let size_mib = size_mib.unwrap_or_else(|| usage("--size-mib is required"));
    let pidfile = pidfile.unwrap_or_else(|| usage("--pidfile is required"));
    if size_mib == 0 {
        usage("--size-mib must be at least 1");
    }
    let len = size_mib << 20;

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
        eprintln!(
            "bench-target: mmap {len} bytes: {}",
            std::io::Error::last_os_error()
        );
        exit(2);
    }
    // SAFETY: the mapping is ours, len bytes, readable and writable, and
    // u64-aligned (page-aligned).
    let words: &mut [u64] = unsafe { std::slice::from_raw_parts_mut(addr.cast(), len / 8) };
    for (i, w) in words.iter_mut().enumerate() {
        *w = pattern(i);
    }

    // SIGTERM sets a flag, which the sleep loop below looks at every 100 ms.
    // SAFETY: a plain sigaction with a handler that only stores an atomic.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_term as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut()) != 0 {
            eprintln!(
                "bench-target: sigaction: {}",
                std::io::Error::last_os_error()
            );
            exit(2);
        }
    }

    let pid = std::process::id();
    if let Some(info) = &info {
        if let Err(e) = write_atomically(info, &format!("{:#x} {len}\n", addr as usize)) {
            eprintln!("bench-target: write {}: {e}", info.display());
            exit(2);
        }
    }
    if let Err(e) = write_atomically(&pidfile, &format!("{pid}\n")) {
        eprintln!("bench-target: write {}: {e}", pidfile.display());
        exit(2);
    }
    println!("ready pid={pid} addr={:#x} len={len}", addr as usize);
    let _ = std::io::stdout().flush();

    while !TERM.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }

    let mut bad = 0usize;
    let mut first_bad: Option<usize> = None;
    for (i, w) in words.iter().enumerate() {
        if *w != pattern(i) {
            bad += 1;
            first_bad.get_or_insert(i);
        }
    }
    match first_bad {
        None => {
            println!("PASS pid={pid} checked {len} bytes");
            let _ = std::io::stdout().flush();
            exit(0);
        }
        Some(i) => {
            println!(
                "FAIL pid={pid} {bad} of {} words differ; first at offset {:#x} (address {:#x}): {:#018x}, expected {:#018x}",
                words.len(),
                i * 8,
                addr as usize + i * 8,
                words[i],
                pattern(i)
            );
            let _ = std::io::stdout().flush();
            exit(1);
        }
    }
}

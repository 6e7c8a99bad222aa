//! The multi-threaded process that `crust-bench --scenario threads` dumps
//! and restores.
//!
//! `bench-threads-target --threads N --pidfile FILE`
//!
//! Runs N threads in all (the main thread and N-1 more). Each extra thread
//! sets a thread_local value derived from its index and its tid, keeps a
//! copy on its stack, and then blocks: even-numbered threads in a condvar
//! wait (a futex), odd-numbered ones in a nanosleep loop. When every thread
//! has started, the main thread writes its pid to the pidfile (temporary
//! name, then rename) and sleeps in a nanosleep loop until SIGTERM.
//!
//! On SIGTERM the main thread wakes every thread; each checks that its
//! thread_local value, its stack copy and its tid are what they were, and
//! the process exits 0 only if all of them did (1 otherwise, 2 on a setup
//! error). It prints one line when ready and one `PASS`/`FAIL` line at the
//! end.

use std::cell::Cell;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::exit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::time::Duration;

static TERM: AtomicBool = AtomicBool::new(false);
static STOP: AtomicBool = AtomicBool::new(false);

thread_local! {
    static VALUE: Cell<u64> = const { Cell::new(0) };
}

extern "C" fn on_term(_sig: libc::c_int) {
    TERM.store(true, Ordering::SeqCst);
}

fn usage(msg: &str) -> ! {
    eprintln!("bench-threads-target: {msg}");
    eprintln!("usage: bench-threads-target --threads N --pidfile FILE");
    exit(2);
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

fn gettid() -> i64 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

fn value(idx: usize, tid: i64) -> u64 {
    ((idx as u64) << 32 ^ tid as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x7468_7265_6164_7321
}

type Gate = Arc<(Mutex<bool>, Condvar)>;

fn worker(idx: usize, gate: Gate, ready: Arc<Barrier>) -> Result<(), String> {
    let tid = gettid();
    let v = value(idx, tid);
    VALUE.with(|c| c.set(v));
    let on_stack = std::hint::black_box(v);
    ready.wait();
    if idx.is_multiple_of(2) {
        let (lock, cv) = &*gate;
        let mut open = lock.lock().map_err(|_| "poisoned lock")?;
        while !*open {
            open = cv.wait(open).map_err(|_| "poisoned lock")?;
        }
    } else {
        while !STOP.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let now_tid = gettid();
    let tls = VALUE.with(Cell::get);
    if tls != v || on_stack != v || now_tid != tid {
        return Err(format!(
            "thread {idx}: tid {tid} -> {now_tid}, thread_local {v:#x} -> {tls:#x}, stack {on_stack:#x}"
        ));
    }
    Ok(())
}

fn main() {
    let mut threads = 200usize;
    let mut pidfile: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--threads" => threads = val().parse().unwrap_or_else(|_| usage("bad --threads")),
            "--pidfile" => pidfile = Some(val().into()),
            _ => usage(&format!("unknown argument {a}")),
        }
    }
    let pidfile = pidfile.unwrap_or_else(|| usage("--pidfile is required"));
    if threads == 0 {
        usage("--threads must be at least 1");
    }

    // SAFETY: a plain sigaction with a handler that only stores an atomic.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_term as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut()) != 0 {
            eprintln!(
                "bench-threads-target: sigaction: {}",
                std::io::Error::last_os_error()
            );
            exit(2);
        }
    }

    let gate: Gate = Arc::new((Mutex::new(false), Condvar::new()));
    let ready = Arc::new(Barrier::new(threads));
    let mut handles = Vec::with_capacity(threads - 1);
    for idx in 1..threads {
        let (g, r) = (gate.clone(), ready.clone());
        let h = std::thread::Builder::new()
            .name(format!("w{idx}"))
            .stack_size(128 << 10)
            .spawn(move || worker(idx, g, r));
        match h {
            Ok(h) => handles.push(h),
            Err(e) => {
                eprintln!("bench-threads-target: spawn thread {idx}: {e}");
                exit(2);
            }
        }
    }
    let main_tid = gettid();
    let main_value = value(0, main_tid);
    VALUE.with(|c| c.set(main_value));
    ready.wait();

    let pid = std::process::id();
    if let Err(e) = write_atomically(&pidfile, &format!("{pid}\n")) {
        eprintln!("bench-threads-target: write {}: {e}", pidfile.display());
        exit(2);
    }
    println!("ready pid={pid} threads={threads}");
    let _ = std::io::stdout().flush();

    while !TERM.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    STOP.store(true, Ordering::SeqCst);
    {
        let (lock, cv) = &*gate;
        match lock.lock() {
            Ok(mut open) => *open = true,
            Err(p) => *p.into_inner() = true,
        }
        cv.notify_all();
    }
    let mut failed = Vec::new();
    if VALUE.with(Cell::get) != main_value || gettid() != main_tid {
        failed.push("main thread: thread_local or tid changed".to_string());
    }
    for (i, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed.push(e),
            Err(_) => failed.push(format!("thread {} panicked", i + 1)),
        }
    }
    if failed.is_empty() {
        println!("PASS pid={pid}: all {threads} threads verified tid and thread_local");
        let _ = std::io::stdout().flush();
        exit(0);
    }
    println!(
        "FAIL pid={pid}: {} of {threads} threads failed: {}",
        failed.len(),
        failed.join("; ")
    );
    let _ = std::io::stdout().flush();
    exit(1);
}

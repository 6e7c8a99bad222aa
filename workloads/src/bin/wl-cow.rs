//! wl-cow: copy-on-write memory shared by a parent and its child.
//!
//! The parent maps 16 MiB of private anonymous memory, fills it with a
//! pattern and then forks, so the pages are COW-shared. Before ready the
//! child rewrites 64 KiB at offset 1 MiB with another pattern (those pages
//! are the child's own; the parent's stay as they were).
//!
//! After SIGTERM (the parent forwards it to the child), in turn:
//!  1. both check their whole buffer is exactly as at ready time;
//!  2. the child writes a third pattern over the first half and says so
//!     (file `cow-child-wrote`); the parent checks its buffer is unchanged;
//!  3. the parent writes a fourth pattern over the second half and says so
//!     (`cow-parent-wrote`); the child checks its second half is still the
//!     original and its first half its own write.
//!
//! The child reports with its exit code (and `CHILD-OUT-<pid>`). The
//! smaps numbers of the buffer (Rss, Shared_*, Private_*) are logged at ready
//! time and after restore, for information only.

use std::path::{Path, PathBuf};
use workloads::{check_pattern, die, fill_pattern, raw_getpid, terminated, Checker};

const LEN: usize = 16 << 20;
const HALF: usize = LEN / 2;
const CHILD_OFF: usize = 1 << 20;
const CHILD_LEN: usize = 64 << 10;
const SEED: u64 = 0xc0c0_0000_0000_0001;
const CHILD_SEED: u64 = 0xc0c0_0000_0000_0002;
const CHILD_WRITE_SEED: u64 = 0xc0c0_0000_0000_0003;
const PARENT_WRITE_SEED: u64 = 0xc0c0_0000_0000_0004;

fn check(c: &mut Checker, who: &str, buf: *mut u8, off: usize, len: usize, seed: u64) {
    if let Err(at) = unsafe { check_pattern(buf.add(off), len, seed) } {
        c.fail(format!(
            "{who}: buffer at offset {} is not pattern {seed:#x}",
            off + at
        ));
    }
}

/// The parent's view at rest: the original pattern everywhere.
fn check_parent_original(c: &mut Checker, buf: *mut u8, who: &str) {
    check(c, who, buf, 0, LEN, SEED);
}

/// The child's view at rest: original, with its own 64 KiB at 1 MiB.
fn check_child_original(c: &mut Checker, buf: *mut u8, who: &str) {
    check(c, who, buf, 0, CHILD_OFF, SEED);
    check(c, who, buf, CHILD_OFF, CHILD_LEN, CHILD_SEED);
    check(
        c,
        who,
        buf,
        CHILD_OFF + CHILD_LEN,
        LEN - CHILD_OFF - CHILD_LEN,
        SEED,
    );
}

fn smaps_of(addr: usize) -> String {
    let s = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let head = format!("{addr:x}-");
    let mut out = String::new();
    let mut inside = false;
    for l in s.lines() {
        let first = l.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            inside = l.starts_with(&head);
            continue;
        }
        if inside && (l.starts_with("Rss") || l.starts_with("Shared_") || l.starts_with("Private_"))
        {
            out.push_str(&l.split_whitespace().collect::<Vec<_>>().join(" "));
            out.push_str("; ");
        }
    }
    out
}

fn wait_file(p: &Path) -> bool {
    let t0 = std::time::Instant::now();
    while !p.exists() {
        if t0.elapsed() > std::time::Duration::from_secs(10) {
            return false;
        }
        workloads::sleep_ms(2);
    }
    true
}

fn child(buf: *mut u8, dir: PathBuf) -> ! {
    let me = raw_getpid();
    unsafe { fill_pattern(buf.add(CHILD_OFF), CHILD_LEN, CHILD_SEED) };
    let mut c0 = Checker::new();
    check_child_original(&mut c0, buf, "child before ready");
    if c0.failed() {
        die(&format!("{:?}", c0.into_result()));
    }
    let _ = std::fs::write(dir.join("cow-child-ready"), b"");
    while !terminated() {
        workloads::sleep_ms(10);
    }
    let mut c = Checker::new();
    eprintln!("child smaps after: {}", smaps_of(buf as usize));
    check_child_original(&mut c, buf, "child after restore");
    unsafe { fill_pattern(buf, HALF, CHILD_WRITE_SEED) };
    let _ = std::fs::write(dir.join("cow-child-wrote"), b"");
    if wait_file(&dir.join("cow-parent-wrote")) {
        check(
            &mut c,
            "child after the parent wrote",
            buf,
            0,
            HALF,
            CHILD_WRITE_SEED,
        );
        check(
            &mut c,
            "child after the parent wrote",
            buf,
            HALF,
            HALF,
            SEED,
        );
    } else {
        c.fail("the parent never wrote");
    }
    let text = match c.into_result() {
        Ok(()) => "PASS\n".to_string(),
        Err(e) => format!("FAIL (child {me}): {e}\n"),
    };
    let _ = std::fs::write(dir.join(format!("CHILD-OUT-{me}")), &text);
    unsafe { libc::_exit(if text == "PASS\n" { 0 } else { 1 }) }
}

fn main() {
    let p = workloads::init();
    let dir = Path::new(&p.outfile)
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let buf = unsafe {
        let b = libc::mmap(
            std::ptr::null_mut(),
            LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if b == libc::MAP_FAILED {
            die("mmap");
        }
        // No THP: keep the sharing at 4 KiB granularity.
        libc::madvise(b, LEN, libc::MADV_NOHUGEPAGE);
        fill_pattern(b as *mut u8, LEN, SEED);
        b as *mut u8
    };
    let kid = unsafe { libc::fork() };
    if kid < 0 {
        die("fork");
    }
    if kid == 0 {
        child(buf, dir);
    }
    if !wait_file(&dir.join("cow-child-ready")) {
        die("child not ready");
    }
    eprintln!("parent smaps at ready: {}", smaps_of(buf as usize));
    p.ready();
    while !terminated() {
        workloads::sleep_ms(10);
    }
    let mut c = Checker::new();
    eprintln!("parent smaps after: {}", smaps_of(buf as usize));
    unsafe { libc::kill(kid, libc::SIGTERM) };
    check_parent_original(&mut c, buf, "parent after restore");
    if wait_file(&dir.join("cow-child-wrote")) {
        check_parent_original(&mut c, buf, "parent after the child wrote");
    } else {
        c.fail("the child never wrote");
    }
    unsafe { fill_pattern(buf.add(HALF), HALF, PARENT_WRITE_SEED) };
    let _ = std::fs::write(dir.join("cow-parent-wrote"), b"");
    check(&mut c, "parent after its write", buf, 0, HALF, SEED);
    check(
        &mut c,
        "parent after its write",
        buf,
        HALF,
        HALF,
        PARENT_WRITE_SEED,
    );
    let mut st = 0;
    let r = unsafe { libc::waitpid(kid, &mut st, 0) };
    if r != kid || !libc::WIFEXITED(st) || libc::WEXITSTATUS(st) != 0 {
        let details = std::fs::read_to_string(dir.join(format!("CHILD-OUT-{kid}")))
            .unwrap_or_else(|e| format!("no CHILD-OUT: {e}"));
        c.fail(format!("child {kid} status {st:#x}: {}", details.trim()));
    }
    p.finish(c.into_result());
}

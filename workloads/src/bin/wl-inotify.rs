//! wl-inotify DIR: an inotify fd (at `INOTIFY_FD`, nonblocking) watching
//! DIR (IN_CREATE|IN_DELETE, wd 1), DIR/a.txt (IN_MODIFY, wd 2) and
//! DIR/b.txt (IN_MODIFY|IN_ONESHOT, wd 4); wd 3 was on DIR/sub and was
//! removed, so the wds have a gap. The queue is drained before ready.
//!
//! After SIGTERM: the fdinfo lists the same watches (wd, inode, mask);
//! nothing is queued; writing a.txt gives IN_MODIFY on wd 2, creating
//! DIR/c gives IN_CREATE "c" on wd 1, writing b.txt gives IN_MODIFY on
//! wd 4; a new watch (on DIR/sub) gets wd 5, the one after the last.

use std::io::Write;
use std::path::{Path, PathBuf};

use workloads::{die, Checker};

/// Where the inotify fd is.
const INOTIFY_FD: i32 = 10;

fn add_watch(path: &Path, mask: u32) -> i32 {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    unsafe { libc::inotify_add_watch(INOTIFY_FD, c.as_ptr(), mask) }
}

/// Every queued event as (wd, mask, name).
fn events() -> Vec<(i32, u32, String)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = unsafe { libc::read(INOTIFY_FD, buf.as_mut_ptr() as *mut _, buf.len()) };
        if n <= 0 {
            return out;
        }
        let mut off = 0usize;
        while off + 16 <= n as usize {
            let wd = i32::from_ne_bytes(buf[off..off + 4].try_into().unwrap());
            let mask = u32::from_ne_bytes(buf[off + 4..off + 8].try_into().unwrap());
            let len = u32::from_ne_bytes(buf[off + 12..off + 16].try_into().unwrap()) as usize;
            let name = &buf[off + 16..off + 16 + len];
            let name = String::from_utf8_lossy(name.split(|&b| b == 0).next().unwrap_or(&[]));
            out.push((wd, mask, name.into_owned()));
            off += 16 + len;
        }
    }
}

/// The watches as fdinfo shows them: (wd, ino, mask) lines, sorted.
fn fdinfo_watches() -> Vec<String> {
    let t = std::fs::read_to_string(format!("/proc/self/fdinfo/{INOTIFY_FD}")).unwrap_or_default();
    let mut v: Vec<String> = t
        .lines()
        .filter(|l| l.starts_with("inotify wd:"))
        .map(|l| {
            l.split_whitespace()
                .filter(|w| w.starts_with("wd:") || w.starts_with("ino:") || w.starts_with("mask:"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    v.sort();
    v
}

fn append(path: &Path) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| die(&format!("{}: {e}", path.display())));
    f.write_all(b"more\n").unwrap();
}

fn main() {
    let p = workloads::init();
    let dir = p
        .args
        .first()
        .unwrap_or_else(|| die("usage: wl-inotify DIR"));
    let dir: PathBuf = std::fs::canonicalize(dir).unwrap_or_else(|e| die(&format!("{dir}: {e}")));
    let (a, b, sub) = (dir.join("a.txt"), dir.join("b.txt"), dir.join("sub"));
    std::fs::write(&a, b"a\n").unwrap();
    std::fs::write(&b, b"b\n").unwrap();
    std::fs::create_dir_all(&sub).unwrap();
    unsafe {
        let fd = libc::inotify_init1(libc::IN_NONBLOCK);
        if fd < 0 || libc::dup2(fd, INOTIFY_FD) != INOTIFY_FD {
            die("inotify_init1");
        }
        libc::close(fd);
    }
    let wds = [
        add_watch(&dir, libc::IN_CREATE | libc::IN_DELETE),
        add_watch(&a, libc::IN_MODIFY),
        add_watch(&sub, libc::IN_ALL_EVENTS),
    ];
    if wds != [1, 2, 3] {
        die(&format!("watch descriptors {wds:?}"));
    }
    unsafe { libc::inotify_rm_watch(INOTIFY_FD, 3) };
    if add_watch(&b, libc::IN_MODIFY | libc::IN_ONESHOT) != 4 {
        die("the watch on b.txt is not wd 4");
    }
    let drained = events();
    if drained.iter().any(|e| e.0 != 3) {
        die(&format!("unexpected events before ready: {drained:?}"));
    }
    let before = fdinfo_watches();
    if before.len() != 3 {
        die(&format!("fdinfo watches: {before:?}"));
    }
    p.ready();
    workloads::wait_for_term();
    let mut c = Checker::new();
    c.eq("inotify watches", before, fdinfo_watches());
    c.eq("events queued", Vec::new(), events());
    append(&a);
    c.eq(
        "event on a.txt",
        vec![(2, libc::IN_MODIFY, String::new())],
        events(),
    );
    std::fs::write(dir.join("c"), b"").unwrap();
    c.eq(
        "event on DIR",
        vec![(1, libc::IN_CREATE, "c".to_string())],
        events(),
    );
    append(&b);
    let got = events();
    c.check(
        got.first() == Some(&(4, libc::IN_MODIFY, String::new())),
        || format!("events on b.txt (one-shot, wd 4): {got:?}"),
    );
    c.eq("next wd", 5, add_watch(&sub, libc::IN_CREATE));
    p.finish(c.into_result());
}

//! wl-fanotify DIR [fs|perm|content]: a fanotify group at fd 15 (FAN_CLASS_NOTIF,
//! FAN_NONBLOCK, events O_RDONLY|O_LARGEFILE) with an inode mark on
//! DIR/a (FAN_MODIFY | FAN_CLOSE_WRITE), a mount mark on DIR's mount
//! (FAN_ACCESS) and an ignored mask on DIR/quiet (FAN_ACCESS, surviving
//! modification). With `fs`, also a filesystem mark (which dump refuses).
//! With `perm`, the group is FAN_CLASS_CONTENT with a FAN_OPEN_PERM mark
//! on DIR/gate, whose opener (outside the tree) waits for an answer; after
//! SIGTERM every permission event queued is answered FAN_ALLOW. With
//! `content`, the group is FAN_CLASS_CONTENT with the marks above only.
//!
//! After SIGTERM: the fdinfo shows the same group flags and marks; writing
//! DIR/a gives this task a FAN_MODIFY event on it; reading DIR/loud gives
//! FAN_ACCESS (the mount mark), reading DIR/quiet gives none.

use std::ffi::CString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use workloads::{die, Checker};

const FAN_FD: i32 = 15;
const FAN_NONBLOCK: u32 = 0x2;
const FAN_MARK_ADD: u32 = 0x1;
const FAN_MARK_MOUNT: u32 = 0x10;
const FAN_MARK_IGNORED_MASK: u32 = 0x20;
const FAN_MARK_IGNORED_SURV_MODIFY: u32 = 0x40;
const FAN_MARK_FILESYSTEM: u32 = 0x100;
const FAN_ACCESS: u64 = 0x1;
const FAN_MODIFY: u64 = 0x2;
const FAN_CLOSE_WRITE: u64 = 0x8;
const FAN_CLASS_CONTENT: u32 = 0x4;
const FAN_OPEN_PERM: u64 = 0x1_0000;
const FAN_ALLOW: u32 = 1;

fn mark(flags: u32, mask: u64, path: &Path) {
    let c = CString::new(path.to_str().unwrap()).unwrap();
    if unsafe { libc::fanotify_mark(FAN_FD, flags, mask, libc::AT_FDCWD, c.as_ptr()) } != 0 {
        die(&format!(
            "fanotify_mark({}, {flags:#x}, {mask:#x}): {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
}

/// The group's fdinfo lines (flags and marks), sorted.
fn fdinfo_lines() -> Vec<String> {
    let t = std::fs::read_to_string(format!("/proc/self/fdinfo/{FAN_FD}")).unwrap_or_default();
    let mut v: Vec<String> = t
        .lines()
        .filter(|l| l.starts_with("fanotify"))
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// The events for this task queued now, waiting up to `ms` for the
/// first: (mask, path of the event's fd). Permission events (anyone's)
/// are answered FAN_ALLOW.
fn my_events(ms: i32) -> Vec<(u64, String)> {
    let me = workloads::raw_getpid();
    let mut out = Vec::new();
    let mut p = libc::pollfd {
        fd: FAN_FD,
        events: libc::POLLIN,
        revents: 0,
    };
    unsafe { libc::poll(&mut p, 1, ms) };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = unsafe { libc::read(FAN_FD, buf.as_mut_ptr() as *mut _, buf.len()) };
        if n <= 0 {
            return out;
        }
        let mut off = 0usize;
        while off + 24 <= n as usize {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
            let mask = u64::from_ne_bytes(buf[off + 8..off + 16].try_into().unwrap());
            let fd = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().unwrap());
            let pid = i32::from_ne_bytes(buf[off + 20..off + 24].try_into().unwrap());
            if fd >= 0 {
                if mask & FAN_OPEN_PERM != 0 {
                    let answer = [fd as u32, FAN_ALLOW];
                    unsafe { libc::write(FAN_FD, answer.as_ptr() as *const _, 8) };
                }
                if pid == me {
                    let path = std::fs::read_link(format!("/proc/self/fd/{fd}"))
                        .map(|p| p.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    out.push((mask, path));
                }
                unsafe { libc::close(fd) };
            }
            if len == 0 {
                break;
            }
            off += len;
        }
    }
}

fn read_file(path: &Path) {
    let mut s = Vec::new();
    let _ = std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut s));
}

fn main() {
    let p = workloads::init();
    let dir = p
        .args
        .first()
        .unwrap_or_else(|| die("usage: wl-fanotify DIR [fs]"));
    let dir: PathBuf = std::fs::canonicalize(dir).unwrap_or_else(|e| die(&format!("{dir}: {e}")));
    let fs_mark = p.args.get(1).map(String::as_str) == Some("fs");
    let perm = p.args.get(1).map(String::as_str) == Some("perm");
    let content = p.args.get(1).map(String::as_str) == Some("content");
    let class = if perm || content {
        FAN_CLASS_CONTENT
    } else {
        0
    };
    let (a, loud, quiet) = (dir.join("a"), dir.join("loud"), dir.join("quiet"));
    for f in [&a, &loud, &quiet] {
        std::fs::write(f, b"x\n").unwrap();
    }
    unsafe {
        let fd = libc::fanotify_init(
            FAN_NONBLOCK | class,
            (libc::O_RDONLY | libc::O_LARGEFILE) as u32,
        );
        if fd < 0 || libc::dup2(fd, FAN_FD) != FAN_FD {
            die(&format!(
                "fanotify_init: {}",
                std::io::Error::last_os_error()
            ));
        }
        libc::close(fd);
    }
    mark(FAN_MARK_ADD, FAN_MODIFY | FAN_CLOSE_WRITE, &a);
    mark(FAN_MARK_ADD | FAN_MARK_MOUNT, FAN_ACCESS, &dir);
    mark(
        FAN_MARK_ADD | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY,
        FAN_ACCESS,
        &quiet,
    );
    if perm {
        let gate = dir.join("gate");
        std::fs::write(&gate, b"x\n").unwrap();
        mark(FAN_MARK_ADD, FAN_OPEN_PERM, &gate);
    }
    if fs_mark {
        mark(FAN_MARK_ADD | FAN_MARK_FILESYSTEM, FAN_CLOSE_WRITE, &dir);
    }
    let _ = my_events(0);
    let before = fdinfo_lines();
    p.ready();
    workloads::wait_for_term();
    let mut c = Checker::new();
    c.eq("fanotify fdinfo", before, fdinfo_lines());
    let _ = my_events(0);
    let a_s = a.to_string_lossy().into_owned();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&a)
        .and_then(|mut f| f.write_all(b"more\n"))
        .unwrap_or_else(|e| c.fail(format!("writing a: {e}")));
    let got = my_events(2000);
    c.check(
        got.iter().any(|(m, p)| m & FAN_MODIFY != 0 && *p == a_s),
        || format!("no FAN_MODIFY on {a_s}: {got:?}"),
    );
    read_file(&quiet);
    read_file(&loud);
    let got = my_events(2000);
    let loud_s = loud.to_string_lossy().into_owned();
    let quiet_s = quiet.to_string_lossy().into_owned();
    c.check(
        got.iter().any(|(m, p)| m & FAN_ACCESS != 0 && *p == loud_s),
        || format!("no FAN_ACCESS on {loud_s} (mount mark): {got:?}"),
    );
    c.check(!got.iter().any(|(_, p)| *p == quiet_s), || {
        format!("an event on {quiet_s}, whose access is ignored: {got:?}")
    });
    p.finish(c.into_result());
}

//! wl-locks DIR [waiter]: file locks of every kind, on files in DIR:
//! fd 10 flock.f with flock LOCK_EX; fd 11 shared.f with flock LOCK_SH;
//! fd 12 posix.f with POSIX locks WRITE 10..19 and READ 100..EOF (and
//! posix.f mapped too: the restore's own opening and closing of a mapped
//! file must not drop the locks); fd 13
//! ofd.f with OFD locks WRITE 0..4 and READ 50..59; fd 14 lease.f (read
//! only) with a read lease; fd 16 lease-w.f (read-write) with a write
//! lease. With `waiter`, a child blocks in flock(LOCK_EX)
//! on flock.f (a task waiting for a lock).
//!
//! After SIGTERM: the fdinfo `lock:` lines of fds 10-14 are what they were;
//! F_GETLEASE on fd 14 says F_RDLCK, on fd 16 F_WRLCK; a child forked now sees every
//! conflict from outside: flock LOCK_NB fails on flock.f, LOCK_SH works on
//! shared.f and LOCK_EX does not, F_GETLK on posix.f and F_OFD_GETLK on
//! ofd.f report the very locks, ranges and types above (the POSIX ones
//! with the parent's pid), and nothing in the gaps. With `waiter`, the
//! child waits for flock.f again, gets it once the parent unlocks it and
//! exits 0.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use workloads::{die, Checker};

const FLOCK_FD: i32 = 10;
const SHARED_FD: i32 = 11;
const POSIX_FD: i32 = 12;
const OFD_FD: i32 = 13;
const LEASE_FD: i32 = 14;
const WLEASE_FD: i32 = 16;
const F_OFD_GETLK: i32 = 36;
const F_OFD_SETLK: i32 = 37;

fn open_at(path: &Path, flags: i32, fd: i32) {
    let c = CString::new(path.to_str().unwrap()).unwrap();
    unsafe {
        let got = libc::open(c.as_ptr(), flags | libc::O_CREAT, 0o644);
        if got < 0 || libc::dup2(got, fd) != fd {
            die(&format!("open {}", path.display()));
        }
        libc::close(got);
    }
}

fn open_new(path: &Path, flags: i32) -> i32 {
    let c = CString::new(path.to_str().unwrap()).unwrap();
    unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) }
}

fn flock_struct(t: i32, start: i64, len: i64) -> libc::flock {
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = t as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = start;
    fl.l_len = len;
    fl
}

fn set_lock(fd: i32, cmd: i32, t: i32, start: i64, len: i64) {
    let fl = flock_struct(t, start, len);
    if unsafe { libc::fcntl(fd, cmd, &fl) } != 0 {
        die(&format!(
            "fcntl({fd}, {cmd}) {t} {start}+{len}: {}",
            std::io::Error::last_os_error()
        ));
    }
}

/// What F_GETLK (or F_OFD_GETLK) says of a lock of type `t` on
/// `start`+`len`: (type, start, len, pid) of the conflicting lock, or
/// (F_UNLCK, ..).
fn get_lock(fd: i32, cmd: i32, t: i32, start: i64, len: i64) -> (i32, i64, i64, i32) {
    let mut fl = flock_struct(t, start, len);
    if unsafe { libc::fcntl(fd, cmd, &mut fl) } != 0 {
        return (-1, 0, 0, workloads::errno());
    }
    if fl.l_type as i32 == libc::F_UNLCK {
        return (libc::F_UNLCK, 0, 0, 0);
    }
    (fl.l_type as i32, fl.l_start, fl.l_len, fl.l_pid)
}

/// The `lock:` lines of fds 10-14, without their per-fd numbers.
fn lock_lines() -> Vec<String> {
    let mut out = Vec::new();
    for fd in FLOCK_FD..=WLEASE_FD {
        let t = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
        for l in t.lines().filter(|l| l.starts_with("lock:")) {
            let words: Vec<&str> = l.split_whitespace().skip(2).collect();
            out.push(format!("fd {fd}: {}", words.join(" ")));
        }
    }
    out.sort();
    out
}

fn flock_nb(path: &Path, op: i32) -> i32 {
    let fd = open_new(path, libc::O_RDONLY);
    if fd < 0 {
        return -2;
    }
    let r = unsafe { libc::flock(fd, op | libc::LOCK_NB) };
    let e = workloads::errno();
    unsafe { libc::close(fd) };
    if r == 0 {
        0
    } else {
        e
    }
}

/// The checks of a child, from outside the parent's locks.
fn check_from_child(dir: &Path, parent: i32) -> ! {
    let mut c = Checker::new();
    let ewb = libc::EWOULDBLOCK;
    c.eq(
        "flock LOCK_EX on flock.f",
        ewb,
        flock_nb(&dir.join("flock.f"), libc::LOCK_EX),
    );
    c.eq(
        "flock LOCK_SH on flock.f",
        ewb,
        flock_nb(&dir.join("flock.f"), libc::LOCK_SH),
    );
    c.eq(
        "flock LOCK_SH on shared.f",
        0,
        flock_nb(&dir.join("shared.f"), libc::LOCK_SH),
    );
    c.eq(
        "flock LOCK_EX on shared.f",
        ewb,
        flock_nb(&dir.join("shared.f"), libc::LOCK_EX),
    );
    let p = open_new(&dir.join("posix.f"), libc::O_RDWR);
    let (w, r, u) = (libc::F_WRLCK, libc::F_RDLCK, libc::F_UNLCK);
    c.eq(
        "F_GETLK write 0..EOF",
        (w, 10, 10, parent),
        get_lock(p, libc::F_GETLK, w, 0, 0),
    );
    c.eq(
        "F_GETLK write 100..EOF",
        (r, 100, 0, parent),
        get_lock(p, libc::F_GETLK, w, 100, 0),
    );
    c.eq(
        "F_GETLK read 10..EOF",
        (w, 10, 10, parent),
        get_lock(p, libc::F_GETLK, r, 10, 0),
    );
    c.eq(
        "F_GETLK read 100..",
        (u, 0, 0, 0),
        get_lock(p, libc::F_GETLK, r, 100, 0),
    );
    c.eq(
        "F_GETLK write 20..99",
        (u, 0, 0, 0),
        get_lock(p, libc::F_GETLK, w, 20, 80),
    );
    c.eq(
        "F_GETLK write 0..9",
        (u, 0, 0, 0),
        get_lock(p, libc::F_GETLK, w, 0, 10),
    );
    let o = open_new(&dir.join("ofd.f"), libc::O_RDWR);
    c.eq(
        "F_OFD_GETLK read 0..9",
        (w, 0, 5, -1),
        get_lock(o, F_OFD_GETLK, r, 0, 10),
    );
    c.eq(
        "F_OFD_GETLK write 50",
        (r, 50, 10, -1),
        get_lock(o, F_OFD_GETLK, w, 50, 1),
    );
    c.eq(
        "F_OFD_GETLK read 50..",
        (u, 0, 0, 0),
        get_lock(o, F_OFD_GETLK, r, 50, 0),
    );
    c.eq(
        "F_OFD_GETLK write 5..49",
        (u, 0, 0, 0),
        get_lock(o, F_OFD_GETLK, w, 5, 45),
    );
    c.eq(
        "F_OFD_GETLK write 60..",
        (u, 0, 0, 0),
        get_lock(o, F_OFD_GETLK, w, 60, 0),
    );
    workloads::child_finish(dir, c)
}

fn check(dir: &Path, c: &mut Checker) {
    c.eq("F_GETLEASE", libc::F_RDLCK, unsafe {
        libc::fcntl(LEASE_FD, libc::F_GETLEASE)
    });
    c.eq("F_GETLEASE (write)", libc::F_WRLCK, unsafe {
        libc::fcntl(WLEASE_FD, libc::F_GETLEASE)
    });
    let parent = workloads::raw_getpid();
    match unsafe { libc::fork() } {
        0 => check_from_child(dir, parent),
        kid if kid > 0 => workloads::reap_child(dir, kid, c),
        _ => c.fail("fork"),
    }
}

/// Whether /proc/locks lists `pid` as waiting for a lock, within `ms`.
fn waiting(pid: i32, ms: u64) -> bool {
    let t0 = std::time::Instant::now();
    let me = format!(" {pid} ");
    while t0.elapsed() < std::time::Duration::from_millis(ms) {
        let text = std::fs::read_to_string("/proc/locks").unwrap_or_default();
        if text.lines().any(|l| l.contains("->") && l.contains(&me)) {
            return true;
        }
        workloads::sleep_ms(5);
    }
    false
}

fn main() {
    let p = workloads::init();
    let dir = p
        .args
        .first()
        .unwrap_or_else(|| die("usage: wl-locks DIR [waiter]"));
    let dir: PathBuf = std::fs::canonicalize(dir).unwrap_or_else(|e| die(&format!("{dir}: {e}")));
    let waiter = p.args.get(1).map(String::as_str) == Some("waiter");
    open_at(&dir.join("flock.f"), libc::O_RDWR, FLOCK_FD);
    open_at(&dir.join("shared.f"), libc::O_RDWR, SHARED_FD);
    open_at(&dir.join("posix.f"), libc::O_RDWR, POSIX_FD);
    open_at(&dir.join("ofd.f"), libc::O_RDWR, OFD_FD);
    std::fs::write(dir.join("lease.f"), b"lease\n").unwrap();
    open_at(&dir.join("lease.f"), libc::O_RDONLY, LEASE_FD);
    open_at(&dir.join("lease-w.f"), libc::O_RDWR, WLEASE_FD);
    unsafe {
        if libc::flock(FLOCK_FD, libc::LOCK_EX) != 0 || libc::flock(SHARED_FD, libc::LOCK_SH) != 0 {
            die("flock");
        }
        if libc::fcntl(LEASE_FD, libc::F_SETLEASE, libc::F_RDLCK) != 0
            || libc::fcntl(WLEASE_FD, libc::F_SETLEASE, libc::F_WRLCK) != 0
        {
            die(&format!("F_SETLEASE: {}", std::io::Error::last_os_error()));
        }
    }
    let mapped = unsafe {
        libc::ftruncate(POSIX_FD, 4096);
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ,
            libc::MAP_SHARED,
            POSIX_FD,
            0,
        )
    };
    if mapped == libc::MAP_FAILED {
        die("mmap of posix.f");
    }
    set_lock(POSIX_FD, libc::F_SETLK, libc::F_WRLCK, 10, 10);
    set_lock(POSIX_FD, libc::F_SETLK, libc::F_RDLCK, 100, 0);
    set_lock(OFD_FD, F_OFD_SETLK, libc::F_WRLCK, 0, 5);
    set_lock(OFD_FD, F_OFD_SETLK, libc::F_RDLCK, 50, 10);
    let mut kid = 0;
    if waiter {
        let path = dir.join("flock.f");
        kid = unsafe { libc::fork() };
        if kid == 0 {
            let fd = open_new(&path, libc::O_RDONLY);
            unsafe {
                libc::flock(fd, libc::LOCK_EX);
                libc::_exit(0)
            }
        }
        if !waiting(kid, 5000) {
            die("the waiter does not wait");
        }
    }
    let mut c = Checker::new();
    check(&dir, &mut c);
    if c.failed() {
        die(&format!(
            "checks fail before the dump: {:?}",
            c.into_result()
        ));
    }
    let before = lock_lines();
    p.ready();
    workloads::wait_for_term();
    let mut c = Checker::new();
    c.eq("fdinfo lock lines", before, lock_lines());
    check(&dir, &mut c);
    if kid > 0 {
        c.check(waiting(kid, 5000), || {
            format!("child {kid} does not wait for flock.f any more")
        });
        unsafe { libc::flock(FLOCK_FD, libc::LOCK_UN) };
        workloads::reap_child(&dir, kid, &mut c);
    }
    p.finish(c.into_result());
}

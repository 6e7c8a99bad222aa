//! wl-files DIR: regular files, a directory, /dev/null and /dev/zero open at
//! chosen fd numbers (see `workloads::files`), with offsets and flags;
//! umask 027 and cwd DIR.
//!
//! After SIGTERM: the same set of fds (0, 1, 2 included), each with the same
//! /proc/self/fd link, F_GETFL, F_GETFD, offset, device and inode; reads and
//! writes still work at the right positions; cwd and umask unchanged.

use std::ffi::CString;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use workloads::files::*;
use workloads::{die, Checker};

#[derive(Debug, PartialEq)]
struct FdState {
    fd: i32,
    link: String,
    flags: i32,
    fd_flags: i32,
    offset: i64,
    dev: u64,
    ino: u64,
    mode: u32,
}

fn fd_states() -> Vec<FdState> {
    let mut fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    fds.sort();
    fds.into_iter()
        .filter_map(|fd| unsafe {
            // The fd read_dir used is closed by now; F_GETFD weeds it out.
            let fd_flags = libc::fcntl(fd, libc::F_GETFD);
            if fd_flags < 0 {
                return None;
            }
            let mut st: libc::stat = std::mem::zeroed();
            libc::fstat(fd, &mut st);
            Some(FdState {
                fd,
                link: std::fs::read_link(format!("/proc/self/fd/{fd}"))
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|e| format!("<{e}>")),
                flags: libc::fcntl(fd, libc::F_GETFL),
                fd_flags,
                offset: libc::lseek(fd, 0, libc::SEEK_CUR),
                dev: st.st_dev,
                ino: st.st_ino,
                mode: st.st_mode,
            })
        })
        .collect()
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
}

/// Open `path` with `flags` and put it at fd `target`.
fn open_at(path: &Path, flags: i32, target: i32, cloexec: bool) {
    unsafe {
        let fd = libc::open(cstr(path).as_ptr(), flags, 0o644);
        if fd < 0 {
            die(&format!(
                "open {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        if fd != target {
            if libc::dup3(fd, target, if cloexec { libc::O_CLOEXEC } else { 0 }) != target {
                die(&format!(
                    "dup3 to {target}: {}",
                    std::io::Error::last_os_error()
                ));
            }
            libc::close(fd);
        }
        libc::fcntl(
            target,
            libc::F_SETFD,
            if cloexec { libc::FD_CLOEXEC } else { 0 },
        );
    }
}

fn read_fd(fd: i32, n: usize) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; n];
    let r = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut _, n) };
    if r < 0 {
        return Err(format!("read fd {fd}: {}", std::io::Error::last_os_error()));
    }
    buf.truncate(r as usize);
    Ok(buf)
}

fn write_fd(fd: i32, data: &[u8]) -> Result<(), String> {
    let r = unsafe { libc::write(fd, data.as_ptr() as *const _, data.len()) };
    if r != data.len() as isize {
        return Err(format!(
            "write fd {fd}: {r} {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

const RO_DATA: &[u8] = b"0123456789abcdefghij";
const RW_DATA: &[u8] = b"rw-data:0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";

fn main() {
    let p = workloads::init();
    let Some(dir) = p.args.first() else {
        die("usage: wl-files PIDFILE OUTFILE DIR")
    };
    let dir: PathBuf = std::fs::canonicalize(dir).unwrap_or_else(|e| die(&format!("{dir}: {e}")));
    let w = |name: &str, data: &[u8]| {
        std::fs::write(dir.join(name), data).unwrap_or_else(|e| die(&format!("{name}: {e}")))
    };
    w(RO_NAME, RO_DATA);
    w(APPEND_NAME, b"start\n");
    w(RW_NAME, RW_DATA);
    w(NONBLOCK_NAME, b"nonblock");
    w(CLOEXEC_NAME, b"cloexec");
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        if rl.rlim_cur <= NONBLOCK_FD as u64 {
            rl.rlim_cur = rl.rlim_max.min(4096);
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
    open_at(&dir.join(RO_NAME), libc::O_RDONLY, RO_FD, false);
    open_at(
        &dir.join(APPEND_NAME),
        libc::O_WRONLY | libc::O_APPEND,
        APPEND_FD,
        false,
    );
    open_at(&dir.join(RW_NAME), libc::O_RDWR, RW_FD, false);
    open_at(
        &dir.join(NONBLOCK_NAME),
        libc::O_RDONLY | libc::O_NONBLOCK,
        NONBLOCK_FD,
        false,
    );
    open_at(
        &dir.join(CLOEXEC_NAME),
        libc::O_RDONLY | libc::O_CLOEXEC,
        CLOEXEC_FD,
        true,
    );
    open_at(&dir, libc::O_RDONLY | libc::O_DIRECTORY, DIR_FD, false);
    open_at(Path::new("/dev/null"), libc::O_WRONLY, DEVNULL_FD, false);
    open_at(Path::new("/dev/zero"), libc::O_RDONLY, DEVZERO_FD, false);
    unsafe {
        libc::lseek(RO_FD, 5, libc::SEEK_SET);
        libc::lseek(RW_FD, 10, libc::SEEK_SET);
    }
    write_fd(APPEND_FD, b"appended-1\n").unwrap_or_else(|e| die(&e));
    unsafe {
        libc::umask(0o027);
        if libc::chdir(cstr(&dir).as_ptr()) != 0 {
            die("chdir");
        }
    }
    let before = fd_states();
    for fd in [
        RO_FD,
        APPEND_FD,
        RW_FD,
        NONBLOCK_FD,
        CLOEXEC_FD,
        DIR_FD,
        DEVNULL_FD,
        DEVZERO_FD,
    ] {
        if !before.iter().any(|s| s.fd == fd) {
            die(&format!("fd {fd} missing at setup"));
        }
    }

    p.ready();
    workloads::wait_for_term();

    let mut c = Checker::new();
    let after = fd_states();
    for b in &before {
        match after.iter().find(|a| a.fd == b.fd) {
            None => c.fail(format!("fd {} ({}) is gone", b.fd, b.link)),
            Some(a) => c.eq(&format!("fd {}", b.fd), b, a),
        }
    }
    for a in &after {
        if !before.iter().any(|b| b.fd == a.fd) {
            c.fail(format!("unexpected new fd {} ({})", a.fd, a.link));
        }
    }
    unsafe {
        let mut m = libc::umask(0o027);
        libc::umask(m);
        m &= 0o777;
        c.eq("umask", 0o027, m);
    }
    match std::env::current_dir() {
        Ok(cwd) => c.eq("cwd", dir.clone(), cwd),
        Err(e) => c.fail(format!("getcwd: {e}")),
    }
    // Functional checks (after the offsets were compared).
    let mut f = |r: Result<(), String>| {
        if let Err(e) = r {
            c.fail(e);
        }
    };
    f((|| {
        let got = read_fd(RO_FD, 5)?;
        if got != b"56789" {
            return Err(format!(
                "read at offset 5 of {RO_NAME} gave {:?}",
                String::from_utf8_lossy(&got)
            ));
        }
        Ok(())
    })());
    f((|| {
        write_fd(APPEND_FD, b"appended-2\n")?;
        let d = std::fs::read(dir.join(APPEND_NAME)).map_err(|e| e.to_string())?;
        if d != b"start\nappended-1\nappended-2\n" {
            return Err(format!(
                "{APPEND_NAME} after append: {:?}",
                String::from_utf8_lossy(&d)
            ));
        }
        Ok(())
    })());
    f((|| {
        let got = read_fd(RW_FD, 4)?;
        if got != RW_DATA[10..14] {
            return Err(format!(
                "read at offset 10 of {RW_NAME} gave {:?}",
                String::from_utf8_lossy(&got)
            ));
        }
        write_fd(RW_FD, b"XY")?;
        let file = std::fs::File::open(dir.join(RW_NAME)).map_err(|e| e.to_string())?;
        let mut two = [0u8; 2];
        file.read_exact_at(&mut two, 14)
            .map_err(|e| e.to_string())?;
        if &two != b"XY" {
            return Err(format!("write at offset 14 of {RW_NAME} landed elsewhere"));
        }
        Ok(())
    })());
    f((|| {
        let got = read_fd(NONBLOCK_FD, 100)?;
        if got != b"nonblock" {
            return Err(format!(
                "{NONBLOCK_NAME} read {:?}",
                String::from_utf8_lossy(&got)
            ));
        }
        let got = read_fd(CLOEXEC_FD, 100)?;
        if got != b"cloexec" {
            return Err(format!(
                "{CLOEXEC_NAME} read {:?}",
                String::from_utf8_lossy(&got)
            ));
        }
        Ok(())
    })());
    f(unsafe {
        let fd = libc::openat(DIR_FD, c"ro.txt".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            Err(format!(
                "openat(dir fd, ro.txt): {}",
                std::io::Error::last_os_error()
            ))
        } else {
            libc::close(fd);
            Ok(())
        }
    });
    f(write_fd(DEVNULL_FD, b"into the void"));
    f((|| {
        let got = read_fd(DEVZERO_FD, 16)?;
        if got != [0u8; 16] {
            return Err("/dev/zero read non-zero".into());
        }
        Ok(())
    })());
    p.finish(c.into_result());
}

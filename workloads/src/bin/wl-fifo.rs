//! wl-fifo DIR: a FIFO with data in it.
//!
//! mkfifo DIR/fifo, opened O_RDWR at RW_FD and O_RDONLY|O_NONBLOCK at RO_FD;
//! LEN bytes of a pattern written through RW_FD.
//!
//! After SIGTERM: both fds are still the FIFO at its path, with their
//! access modes and flags; FIONREAD says LEN; reading through RO_FD gives
//! the LEN bytes, and then EAGAIN (the data is there exactly once); a
//! round trip through the fds still works.

use workloads::{die, errno, Checker};

pub const RW_FD: i32 = 80;
pub const RO_FD: i32 = 81;
const LEN: usize = 100;

fn data() -> Vec<u8> {
    (0..LEN).map(|i| (i * 7 + 3) as u8).collect()
}

fn link_of(fd: i32) -> String {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| format!("<{e}>"))
}

fn main() {
    let p = workloads::init();
    let Some(dir) = p.args.first() else {
        die("usage: wl-fifo PIDFILE OUTFILE DIR")
    };
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|e| die(&format!("{dir}: {e}")));
    let path = dir.join("fifo");
    let cpath = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let d = data();
    unsafe {
        if libc::mkfifo(cpath.as_ptr(), 0o600) != 0 {
            die("mkfifo");
        }
        let rw = libc::open(cpath.as_ptr(), libc::O_RDWR);
        let ro = libc::open(cpath.as_ptr(), libc::O_RDONLY | libc::O_NONBLOCK);
        if rw < 0 || ro < 0 {
            die("open fifo");
        }
        if libc::dup2(rw, RW_FD) != RW_FD || libc::dup2(ro, RO_FD) != RO_FD {
            die("dup2");
        }
        libc::close(rw);
        libc::close(ro);
        if libc::write(RW_FD, d.as_ptr() as *const _, LEN) != LEN as isize {
            die("write fifo");
        }
    }
    let want_link = path.display().to_string();
    p.ready();
    workloads::wait_for_term();

    let mut c = Checker::new();
    unsafe {
        for fd in [RW_FD, RO_FD] {
            c.eq(&format!("fd {fd} link"), want_link.clone(), link_of(fd));
            let mut st: libc::stat = std::mem::zeroed();
            libc::fstat(fd, &mut st);
            c.eq(
                &format!("fd {fd} file type"),
                libc::S_IFIFO,
                st.st_mode & libc::S_IFMT,
            );
        }
        let fl_rw = libc::fcntl(RW_FD, libc::F_GETFL);
        let fl_ro = libc::fcntl(RO_FD, libc::F_GETFL);
        c.eq("RW fd access mode", libc::O_RDWR, fl_rw & libc::O_ACCMODE);
        c.eq("RW fd O_NONBLOCK", 0, fl_rw & libc::O_NONBLOCK);
        c.eq("RO fd access mode", libc::O_RDONLY, fl_ro & libc::O_ACCMODE);
        c.eq(
            "RO fd O_NONBLOCK",
            libc::O_NONBLOCK,
            fl_ro & libc::O_NONBLOCK,
        );
        let mut n = 0i32;
        libc::ioctl(RO_FD, libc::FIONREAD, &mut n);
        c.eq("bytes in the fifo (FIONREAD)", LEN as i32, n);
        let mut buf = vec![0u8; 4 * LEN];
        let r = libc::read(RO_FD, buf.as_mut_ptr() as *mut _, buf.len());
        c.eq("fifo data", &d[..], &buf[..r.max(0) as usize]);
        let r = libc::read(RO_FD, buf.as_mut_ptr() as *mut _, buf.len());
        let e = errno();
        c.check(r < 0 && e == libc::EAGAIN, || {
            format!("read after the data: {r} (errno {e}), expected EAGAIN")
        });
        let r = libc::write(RW_FD, b"xy".as_ptr() as *const _, 2);
        c.eq("write to the fifo", 2, r);
        let r = libc::read(RO_FD, buf.as_mut_ptr() as *mut _, buf.len());
        c.check(r == 2 && &buf[..2] == b"xy", || {
            format!("fifo round trip: read {r}")
        });
    }
    p.finish(c.into_result());
}

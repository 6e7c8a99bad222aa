//! wl-pipe-full: pipes at capacity, their ends held by a parent and a child.
//!
//! Pipe A: F_SETPIPE_SZ 1 MiB, filled completely with a 1 MiB pattern.
//! Pipe B: 3 bytes, O_NONBLOCK on its read end. Then fork: the parent keeps
//! the write ends (A_W, B_W) and dups of the read ends (A_R2, B_R2); the
//! child keeps the read ends (A_R, B_R) and dups of the write ends (A_W2,
//! B_W2).
//!
//! After SIGTERM the parent checks (FIONREAD, F_GETPIPE_SZ, flags) without
//! reading, then forwards SIGTERM; the child checks the same, reads exactly
//! the 1 MiB pattern from A (then A is empty), and from B its 3 bytes and
//! then EAGAIN.

use std::path::Path;
use workloads::{
    child_finish, die, errno, mix64, reap_child, scratch_dir, terminated, touch, wait_file, Checker,
};

const A_R: i32 = 60;
const A_W: i32 = 61;
const B_R: i32 = 62;
const B_W: i32 = 63;
/// The parent's dups of the read ends.
const A_R2: i32 = 70;
const B_R2: i32 = 72;
/// The child's dups of the write ends.
const A_W2: i32 = 71;
const B_W2: i32 = 73;
const CAP: usize = 1 << 20;
const B_DATA: &[u8] = b"abc";

fn pattern() -> Vec<u8> {
    (0..CAP)
        .map(|i| (mix64((i / 8) as u64 ^ 0x7069_7065) >> (8 * (i % 8))) as u8)
        .collect()
}

fn nread(fd: i32) -> i32 {
    let mut n = -1i32;
    unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    n
}

/// What both processes check without consuming anything.
fn check_fds(c: &mut Checker, who: &str, a: (i32, i32), b: (i32, i32)) {
    unsafe {
        for fd in [a.0, a.1] {
            c.eq(
                &format!("{who}: F_GETPIPE_SZ of fd {fd}"),
                CAP as i32,
                libc::fcntl(fd, libc::F_GETPIPE_SZ),
            );
        }
        c.eq(&format!("{who}: bytes in pipe A"), CAP as i32, nread(a.0));
        c.eq(
            &format!("{who}: bytes in pipe B"),
            B_DATA.len() as i32,
            nread(b.0),
        );
        for (fd, mode, nb) in [
            (a.0, libc::O_RDONLY, 0),
            (a.1, libc::O_WRONLY, 0),
            (b.0, libc::O_RDONLY, libc::O_NONBLOCK),
            (b.1, libc::O_WRONLY, 0),
        ] {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            c.eq(
                &format!("{who}: fd {fd} access mode"),
                mode,
                fl & libc::O_ACCMODE,
            );
            c.eq(
                &format!("{who}: fd {fd} O_NONBLOCK"),
                nb,
                fl & libc::O_NONBLOCK,
            );
        }
    }
}

fn child(dir: &Path) -> ! {
    unsafe {
        for (from, to) in [(A_W, A_W2), (B_W, B_W2)] {
            if libc::dup2(from, to) != to {
                die("dup2");
            }
            libc::close(from);
        }
    }
    touch(dir, "pipe-full-child-ready");
    while !terminated() {
        workloads::sleep_ms(10);
    }
    let mut c = Checker::new();
    check_fds(&mut c, "child", (A_R, A_W2), (B_R, B_W2));
    let want = pattern();
    let mut got = vec![0u8; CAP];
    let mut n = 0;
    while n < CAP {
        let r = unsafe { libc::read(A_R, got[n..].as_mut_ptr() as *mut _, CAP - n) };
        if r < 0 && errno() == libc::EINTR {
            continue;
        }
        if r <= 0 {
            c.fail(format!(
                "read pipe A after {n} bytes: {r} (errno {})",
                errno()
            ));
            break;
        }
        n += r as usize;
    }
    if let Some(i) = got[..n].iter().zip(&want).position(|(x, y)| x != y) {
        c.fail(format!("pipe A data differs from the pattern at {i}"));
    }
    c.eq("bytes left in pipe A after 1 MiB", 0, nread(A_R));
    let mut buf = [0u8; 16];
    let r = unsafe { libc::read(B_R, buf.as_mut_ptr() as *mut _, buf.len()) };
    c.eq("pipe B data", B_DATA, &buf[..r.max(0) as usize]);
    let r = unsafe { libc::read(B_R, buf.as_mut_ptr() as *mut _, buf.len()) };
    let e = errno();
    c.check(r < 0 && e == libc::EAGAIN, || {
        format!("read of the empty nonblocking pipe B: {r} (errno {e}), expected EAGAIN")
    });
    child_finish(dir, c)
}

fn main() {
    let p = workloads::init();
    let dir = scratch_dir(&p);
    let data = pattern();
    unsafe {
        for (r, w) in [(A_R, A_W), (B_R, B_W)] {
            let mut fds = [0i32; 2];
            if libc::pipe(fds.as_mut_ptr()) != 0 {
                die("pipe");
            }
            if libc::dup2(fds[0], r) != r || libc::dup2(fds[1], w) != w {
                die("dup2");
            }
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        if libc::fcntl(A_W, libc::F_SETPIPE_SZ, CAP as libc::c_int) != CAP as libc::c_int {
            die(&format!(
                "F_SETPIPE_SZ: {}",
                std::io::Error::last_os_error()
            ));
        }
        // Fill A without blocking, to learn it is full at exactly 1 MiB.
        libc::fcntl(A_W, libc::F_SETFL, libc::O_NONBLOCK);
        let mut n = 0;
        while n < CAP {
            let r = libc::write(A_W, data[n..].as_ptr() as *const _, CAP - n);
            if r <= 0 {
                die(&format!("pipe A took only {n} bytes (errno {})", errno()));
            }
            n += r as usize;
        }
        let r = libc::write(A_W, b"!".as_ptr() as *const _, 1);
        if r != -1 || errno() != libc::EAGAIN {
            die("pipe A is not full at 1 MiB");
        }
        libc::fcntl(A_W, libc::F_SETFL, 0);
        if libc::write(B_W, B_DATA.as_ptr() as *const _, B_DATA.len()) != B_DATA.len() as isize {
            die("write pipe B");
        }
        libc::fcntl(B_R, libc::F_SETFL, libc::O_NONBLOCK);
    }
    let kid = unsafe { libc::fork() };
    if kid < 0 {
        die("fork");
    }
    if kid == 0 {
        child(&dir);
    }
    unsafe {
        for (from, to) in [(A_R, A_R2), (B_R, B_R2)] {
            if libc::dup2(from, to) != to {
                die("dup2");
            }
            libc::close(from);
        }
    }
    if !wait_file(&dir.join("pipe-full-child-ready"), 10_000) {
        die("child not ready");
    }
    p.ready();
    while !terminated() {
        workloads::sleep_ms(10);
    }
    let mut c = Checker::new();
    check_fds(&mut c, "parent", (A_R2, A_W), (B_R2, B_W));
    unsafe { libc::kill(kid, libc::SIGTERM) };
    reap_child(&dir, kid, &mut c);
    p.finish(c.into_result());
}

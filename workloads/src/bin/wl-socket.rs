//! wl-socket: holds a unix stream socketpair (at `workloads::SOCKET_FDS`)
//! with data queued. Sockets are not supported by the first milestone: a
//! dump must refuse, naming the socket and its fd, and leave this task
//! running. After SIGTERM: the data is still queued and the pair still works.

use workloads::{die, Checker, SOCKET_FDS};

const DATA: &[u8] = b"data queued in the socket";

fn main() {
    let p = workloads::init();
    unsafe {
        let mut fds = [0i32; 2];
        if libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) != 0 {
            die("socketpair");
        }
        for (fd, target) in fds.into_iter().zip(SOCKET_FDS) {
            if libc::dup2(fd, target) != target {
                die("dup2");
            }
            libc::close(fd);
        }
        if libc::write(SOCKET_FDS[0], DATA.as_ptr() as *const _, DATA.len()) != DATA.len() as isize
        {
            die("write socket");
        }
    }
    p.ready();
    workloads::wait_for_term();
    let mut c = Checker::new();
    unsafe {
        let mut buf = [0u8; 64];
        let r = libc::recv(
            SOCKET_FDS[1],
            buf.as_mut_ptr() as *mut _,
            buf.len(),
            libc::MSG_DONTWAIT,
        );
        c.eq("socket data", DATA, &buf[..r.max(0) as usize]);
        let r = libc::write(SOCKET_FDS[1], b"y".as_ptr() as *const _, 1);
        c.eq("write to socket", 1, r);
        let r = libc::recv(
            SOCKET_FDS[0],
            buf.as_mut_ptr() as *mut _,
            1,
            libc::MSG_DONTWAIT,
        );
        c.check(r == 1 && buf[0] == b'y', || {
            "socket round trip failed".into()
        });
    }
    p.finish(c.into_result());
}

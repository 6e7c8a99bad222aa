//! wl-pipe: holds a pipe (both ends, at `workloads::PIPE_FDS`) with data in
//! it. Pipes are not supported by the first milestone: a dump must refuse,
//! naming the pipe and its fd, and leave this task running. After SIGTERM:
//! the data is still in the pipe and both ends still work.

use workloads::{die, Checker, PIPE_FDS};

const DATA: &[u8] = b"data waiting in the pipe";

fn main() {
    let p = workloads::init();
    unsafe {
        let mut fds = [0i32; 2];
        if libc::pipe(fds.as_mut_ptr()) != 0 {
            die("pipe");
        }
        for (fd, target) in fds.into_iter().zip(PIPE_FDS) {
            if libc::dup2(fd, target) != target {
                die("dup2");
            }
            libc::close(fd);
        }
        if libc::write(PIPE_FDS[1], DATA.as_ptr() as *const _, DATA.len()) != DATA.len() as isize {
            die("write pipe");
        }
    }
    p.ready();
    workloads::wait_for_term();
    let mut c = Checker::new();
    unsafe {
        let mut n = 0i32;
        libc::ioctl(PIPE_FDS[0], libc::FIONREAD, &mut n);
        c.eq("bytes in pipe", DATA.len() as i32, n);
        let mut buf = [0u8; 64];
        let r = libc::read(PIPE_FDS[0], buf.as_mut_ptr() as *mut _, buf.len());
        c.eq("pipe data", DATA, &buf[..r.max(0) as usize]);
        let r = libc::write(PIPE_FDS[1], b"x".as_ptr() as *const _, 1);
        c.eq("write to pipe", 1, r);
        let r = libc::read(PIPE_FDS[0], buf.as_mut_ptr() as *mut _, 1);
        c.check(r == 1 && buf[0] == b'x', || "pipe round trip failed".into());
    }
    p.finish(c.into_result());
}

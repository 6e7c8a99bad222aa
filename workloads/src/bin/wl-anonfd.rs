//! wl-anonfd KIND: holds one anon-inode fd crust refuses to dump, at
//! `ANON_FD`: KIND is `io_uring` or `userfaultfd`. A dump must
//! refuse, naming it and its fd, and leave this task running; after
//! SIGTERM the fd is still there, the same kind.

use workloads::{die, Checker};

/// Where the fd is.
const ANON_FD: i32 = 30;

fn main() {
    let p = workloads::init();
    let kind = p.args.first().cloned().unwrap_or_default();
    let fd = unsafe {
        match kind.as_str() {
            "io_uring" => {
                let mut params = [0u8; 120];
                libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) as i32
            }
            "userfaultfd" => libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) as i32,
            k => die(&format!("unknown kind {k:?}")),
        }
    };
    if fd < 0 || unsafe { libc::dup2(fd, ANON_FD) } != ANON_FD {
        die(&format!("{kind}: {}", std::io::Error::last_os_error()));
    }
    unsafe { libc::close(fd) };
    let link = |fd: i32| std::fs::read_link(format!("/proc/self/fd/{fd}")).ok();
    let before = link(ANON_FD);
    p.ready();
    workloads::wait_for_term();
    let mut c = Checker::new();
    c.eq("the anon fd", before, link(ANON_FD));
    p.finish(c.into_result());
}

//! wl-epoll-dup [reuse|fork]: an epoll (fd 31) watching an eventfd registered as
//! fd 30 (EPOLLIN, data 30), after which the eventfd was dup'ed to fd 32
//! and fd 30 closed: the registration lives on under fd 30, a number the
//! task no longer has. With `reuse`, fd 30 is then /dev/null: the dump
//! must refuse, naming the epoll and fd 30. With `fork`, a child shares
//! the epoll and the eventfd (so both processes can add the watch at
//! restore); after SIGTERM (forwarded by the parent) it checks the watch
//! list, then the parent checks as below.
//!
//! After SIGTERM: the epoll's fdinfo still lists fd 30; the eventfd is not
//! ready; written through fd 32, the epoll reports data 30.

use workloads::{child_finish, die, reap_child, scratch_dir, Checker};

const REG_FD: i32 = 30;
const EP_FD: i32 = 31;
const EFD: i32 = 32;

fn tfds() -> Vec<String> {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{EP_FD}"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("tfd:"))
        .map(|l| l.split_whitespace().take(6).collect::<Vec<_>>().join(" "))
        .collect()
}

fn ready() -> Vec<u64> {
    let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 4];
    let n = unsafe { libc::epoll_wait(EP_FD, evs.as_mut_ptr(), 4, 0) };
    evs[..n.max(0) as usize].iter().map(|e| e.u64).collect()
}

fn main() {
    let p = workloads::init();
    let reuse = p.args.first().is_some_and(|a| a == "reuse");
    let fork = p.args.first().is_some_and(|a| a == "fork");
    unsafe {
        let e = libc::eventfd(0, libc::EFD_NONBLOCK);
        let ep = libc::epoll_create1(0);
        if e < 0 || ep < 0 || libc::dup2(e, REG_FD) != REG_FD || libc::dup2(ep, EP_FD) != EP_FD {
            die("eventfd/epoll");
        }
        libc::close(e);
        libc::close(ep);
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: REG_FD as u64,
        };
        if libc::epoll_ctl(EP_FD, libc::EPOLL_CTL_ADD, REG_FD, &mut ev) != 0
            || libc::dup2(REG_FD, EFD) != EFD
        {
            die("epoll_ctl/dup2");
        }
        libc::close(REG_FD);
        if reuse {
            let n = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
            if n < 0 || libc::dup2(n, REG_FD) != REG_FD {
                die("/dev/null at fd 30");
            }
            libc::close(n);
        }
    }
    let before = tfds();
    let dir = scratch_dir(&p);
    let kid = if fork {
        let k = unsafe { libc::fork() };
        if k < 0 {
            die("fork");
        }
        if k == 0 {
            workloads::wait_for_term();
            let mut c = Checker::new();
            c.eq("child: epoll watches", before, tfds());
            child_finish(&dir, c);
        }
        Some(k)
    } else {
        None
    };
    p.ready();
    workloads::wait_for_term();
    let mut c = Checker::new();
    if let Some(k) = kid {
        unsafe { libc::kill(k, libc::SIGTERM) };
        reap_child(&dir, k, &mut c);
    }
    c.eq("epoll watches", before, tfds());
    c.eq("ready before write", Vec::<u64>::new(), ready());
    let one = 1u64;
    unsafe { libc::write(EFD, &one as *const u64 as *const _, 8) };
    c.eq("ready after write", vec![REG_FD as u64], ready());
    p.finish(c.into_result());
}

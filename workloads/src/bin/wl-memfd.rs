//! wl-memfd [hold]: a memfd mapped MAP_SHARED by a parent and its child.
//!
//! memfd_create("crust-wl"), 2 MiB, filled with a pattern, mapped
//! MAP_SHARED read-write; then the memfd fd is closed (with `hold` it is
//! kept at fd HOLD_FD instead: crust refuses a memfd fd for now), then fork.
//!
//! After SIGTERM (the parent forwards it): both check the pattern and that
//! /proc/self/maps names "/memfd:crust-wl (deleted)" with rw-s; then the
//! child writes a marker that the parent must see (`memfd-child-wrote`),
//! and the parent one the child must see (`memfd-parent-wrote`). With
//! `hold` the fd must still be the same memfd.

use std::path::Path;
use workloads::{
    check_maps_line, check_pattern, child_finish, die, fill_pattern, reap_child, scratch_dir,
    terminated, touch, wait_file, Checker,
};

const LEN: usize = 2 << 20;
const SEED: u64 = 0x6d65_6d66_6400_0001;
const CHILD_OFF: usize = 100 << 10;
const CHILD_MARK: u64 = 0x6368_696c_6421_2121;
const PARENT_OFF: usize = (1 << 20) + 8;
const PARENT_MARK: u64 = 0x7061_7265_6e74_2121;
pub const HOLD_FD: i32 = 33;
const PATH: &str = "/memfd:crust-wl (deleted)";

fn check_state(c: &mut Checker, who: &str, m: *mut u8, hold: bool) {
    if let Err(off) = unsafe { check_pattern(m, LEN, SEED) } {
        c.fail(format!("{who}: memfd mapping differs at offset {off}"));
    }
    check_maps_line(c, who, m as usize, LEN, "rw-s", PATH);
    if hold {
        let link = std::fs::read_link(format!("/proc/self/fd/{HOLD_FD}"))
            .map(|p| p.display().to_string())
            .unwrap_or_else(|e| format!("<{e}>"));
        c.eq(&format!("{who}: fd {HOLD_FD}"), PATH.to_string(), link);
    }
}

fn read_u64(m: *mut u8, off: usize) -> u64 {
    unsafe { (m.add(off) as *const u64).read_volatile() }
}

fn write_u64(m: *mut u8, off: usize, v: u64) {
    unsafe { (m.add(off) as *mut u64).write_volatile(v) }
}

fn child(m: *mut u8, dir: &Path, hold: bool) -> ! {
    touch(dir, "memfd-child-ready");
    while !terminated() {
        workloads::sleep_ms(10);
    }
    let mut c = Checker::new();
    check_state(&mut c, "child after restore", m, hold);
    touch(dir, "memfd-child-checked");
    if wait_file(&dir.join("memfd-parent-checked"), 10_000) {
        write_u64(m, CHILD_OFF, CHILD_MARK);
        touch(dir, "memfd-child-wrote");
        if wait_file(&dir.join("memfd-parent-wrote"), 10_000) {
            c.eq(
                "child: the parent's marker",
                PARENT_MARK,
                read_u64(m, PARENT_OFF),
            );
        } else {
            c.fail("the parent never wrote its marker");
        }
    } else {
        c.fail("the parent never checked");
    }
    child_finish(dir, c)
}

fn main() {
    let p = workloads::init();
    let hold = match p.args.first().map(String::as_str) {
        None => false,
        Some("hold") => true,
        Some(_) => die("usage: wl-memfd PIDFILE OUTFILE [hold]"),
    };
    let dir = scratch_dir(&p);
    let m = unsafe {
        let fd = libc::memfd_create(c"crust-wl".as_ptr(), 0);
        if fd < 0 {
            die("memfd_create");
        }
        if libc::ftruncate(fd, LEN as libc::off_t) != 0 {
            die("ftruncate");
        }
        let m = libc::mmap(
            std::ptr::null_mut(),
            LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        );
        if m == libc::MAP_FAILED {
            die("mmap memfd");
        }
        fill_pattern(m as *mut u8, LEN, SEED);
        if hold && libc::dup2(fd, HOLD_FD) != HOLD_FD {
            die("dup2");
        }
        libc::close(fd);
        m as *mut u8
    };
    let kid = unsafe { libc::fork() };
    if kid < 0 {
        die("fork");
    }
    if kid == 0 {
        child(m, &dir, hold);
    }
    if !wait_file(&dir.join("memfd-child-ready"), 10_000) {
        die("child not ready");
    }
    let mut c0 = Checker::new();
    check_state(&mut c0, "parent before ready", m, hold);
    if c0.failed() {
        die(&format!("{:?}", c0.into_result()));
    }
    p.ready();
    while !terminated() {
        workloads::sleep_ms(10);
    }
    let mut c = Checker::new();
    unsafe { libc::kill(kid, libc::SIGTERM) };
    check_state(&mut c, "parent after restore", m, hold);
    touch(&dir, "memfd-parent-checked");
    if wait_file(&dir.join("memfd-child-wrote"), 10_000) {
        c.eq(
            "parent: the child's marker",
            CHILD_MARK,
            read_u64(m, CHILD_OFF),
        );
        write_u64(m, PARENT_OFF, PARENT_MARK);
        touch(&dir, "memfd-parent-wrote");
    } else {
        c.fail("the child never wrote its marker");
    }
    reap_child(&dir, kid, &mut c);
    p.finish(c.into_result());
}

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
//! `hold` the fd must still be the same memfd: a pwrite through it is seen
//! in the mapping. `hold` also keeps a second memfd that nobody maps,
//! "crust-wl-fd", sealed (F_SEAL_GROW | F_SEAL_SHRINK), with data at fd
//! HOLD_FD + 1 (offset FD_POS) and a read-only reopening of it at HOLD_FD +
//! 2 (offset 0): after restore both hold the data and their offsets, flags
//! and seals, and are one memfd.

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
const FD_LEN: usize = 10_000;
const FD_MARK: u64 = 0x6664_2d77_7269_7465;
const FD_MARK_OFF: usize = (1 << 20) + 4096;
const FD_POS: i64 = 1234;
const FD_SEALS: i32 = libc::F_SEAL_GROW | libc::F_SEAL_SHRINK;
const FD_PATH: &str = "/memfd:crust-wl-fd (deleted)";

fn fd_data() -> Vec<u8> {
    (0..FD_LEN).map(|i| (i * 7 % 251) as u8).collect()
}

/// The fd-only memfd, at HOLD_FD + 1 and (read-only) HOLD_FD + 2.
fn make_fd_memfd() {
    unsafe {
        let fd = libc::memfd_create(c"crust-wl-fd".as_ptr(), libc::MFD_ALLOW_SEALING);
        let data = fd_data();
        if fd < 0 || libc::write(fd, data.as_ptr().cast(), FD_LEN) != FD_LEN as isize {
            die("memfd for fds");
        }
        if libc::fcntl(fd, libc::F_ADD_SEALS, FD_SEALS) != 0 {
            die("F_ADD_SEALS");
        }
        libc::lseek(fd, FD_POS, libc::SEEK_SET);
        if libc::dup2(fd, HOLD_FD + 1) != HOLD_FD + 1 {
            die("dup2 memfd");
        }
        libc::close(fd);
        let path = std::ffi::CString::new(format!("/proc/self/fd/{}", HOLD_FD + 1)).unwrap();
        let ro = libc::open(path.as_ptr(), libc::O_RDONLY);
        if ro < 0 || libc::dup2(ro, HOLD_FD + 2) != HOLD_FD + 2 {
            die("read-only reopening of the memfd");
        }
        libc::close(ro);
    }
}

fn check_fd_memfd(c: &mut Checker, who: &str) {
    let (rw, ro) = (HOLD_FD + 1, HOLD_FD + 2);
    for fd in [rw, ro] {
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .map(|p| p.display().to_string())
            .unwrap_or_else(|e| format!("<{e}>"));
        c.eq(&format!("{who}: fd {fd}"), FD_PATH.to_string(), link);
        let mut buf = vec![0u8; FD_LEN];
        let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), FD_LEN, 0) };
        c.eq(
            &format!("{who}: bytes read from fd {fd}"),
            FD_LEN as isize,
            n,
        );
        c.check(buf == fd_data(), || format!("{who}: data of fd {fd}"));
    }
    let at = |fd| unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) };
    c.eq(&format!("{who}: offset of fd {rw}"), FD_POS, at(rw));
    c.eq(&format!("{who}: offset of fd {ro}"), 0, at(ro));
    let acc = |fd| unsafe { libc::fcntl(fd, libc::F_GETFL) } & libc::O_ACCMODE;
    c.eq(
        &format!("{who}: access mode of fd {rw}"),
        libc::O_RDWR,
        acc(rw),
    );
    c.eq(
        &format!("{who}: access mode of fd {ro}"),
        libc::O_RDONLY,
        acc(ro),
    );
    let seals = unsafe { libc::fcntl(rw, libc::F_GET_SEALS) };
    c.eq(&format!("{who}: seals"), FD_SEALS, seals);
    let ino = |fd| {
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        unsafe { libc::fstat(fd, &mut st) };
        st.st_ino
    };
    c.eq(
        &format!("{who}: fds {rw} and {ro} are one memfd"),
        ino(rw),
        ino(ro),
    );
}

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
        check_fd_memfd(c, who);
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
        if hold {
            make_fd_memfd();
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
        if hold {
            // The fd and the mapping are one memfd still (the child has
            // checked the pattern by now).
            let mark = FD_MARK.to_ne_bytes();
            let n = unsafe { libc::pwrite(HOLD_FD, mark.as_ptr().cast(), 8, FD_MARK_OFF as i64) };
            c.eq("parent: pwrite through the held fd", 8, n);
            c.eq(
                "parent: that write, in the mapping",
                FD_MARK,
                read_u64(m, FD_MARK_OFF),
            );
        }
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

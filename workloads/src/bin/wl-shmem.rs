//! wl-shmem: anonymous shared memory (MAP_SHARED|MAP_ANONYMOUS) shared by a
//! parent and two children.
//!
//! Before forking, the parent maps region A (4 MiB, read-write) and region B
//! (64 KiB, filled, then mprotect(PROT_READ)), each with its own pattern.
//! Every process (parent = 0, children 1 and 2) checks its
//! /proc/self/maps lines of the regions ("rw-s"/"r--s", "/dev/zero
//! (deleted)") before ready.
//!
//! After SIGTERM (the parent forwards it to the children): every process
//! checks both patterns and its maps lines, then says so
//! (`shmem-checked-N`); once all three checked, child 1 writes a marker into
//! A and says so (`shmem-marker`); the parent and child 2 then see it.
//! Children report through `CHILD-OUT-<pid>` and their exit code.

use std::path::Path;
use workloads::{
    check_maps_line, check_pattern, child_finish, die, fill_pattern, reap_child, scratch_dir,
    terminated, touch, wait_file, Checker,
};

const A_LEN: usize = 4 << 20;
const B_LEN: usize = 64 << 10;
const A_SEED: u64 = 0x5348_4d45_4d00_000a;
const B_SEED: u64 = 0x5348_4d45_4d00_000b;
const MARK_OFF: usize = 3 << 20;
const MARK: u64 = 0x6d61_726b_6572_2131;
const PATH: &str = "/dev/zero (deleted)";

struct Regions {
    a: *mut u8,
    b: *mut u8,
}

fn check_maps(c: &mut Checker, who: &str, r: &Regions) {
    check_maps_line(
        c,
        &format!("{who}: region A"),
        r.a as usize,
        A_LEN,
        "rw-s",
        PATH,
    );
    check_maps_line(
        c,
        &format!("{who}: region B"),
        r.b as usize,
        B_LEN,
        "r--s",
        PATH,
    );
}

fn check_content(c: &mut Checker, who: &str, r: &Regions) {
    if let Err(off) = unsafe { check_pattern(r.a, A_LEN, A_SEED) } {
        c.fail(format!("{who}: region A differs at offset {off}"));
    }
    if let Err(off) = unsafe { check_pattern(r.b, B_LEN, B_SEED) } {
        c.fail(format!("{who}: region B differs at offset {off}"));
    }
}

/// Step 1 after SIGTERM for every process; then the marker dance.
fn after_term(c: &mut Checker, idx: usize, r: &Regions, dir: &Path) {
    let who = format!("process {idx}");
    check_content(c, &format!("{who} after restore"), r);
    check_maps(c, &format!("{who} after restore"), r);
    touch(dir, &format!("shmem-checked-{idx}"));
    if idx == 1 {
        for i in [0, 2] {
            if !wait_file(&dir.join(format!("shmem-checked-{i}")), 10_000) {
                c.fail(format!("process {i} never checked"));
                return;
            }
        }
        unsafe { (r.a.add(MARK_OFF) as *mut u64).write_volatile(MARK) };
        touch(dir, "shmem-marker");
    } else if wait_file(&dir.join("shmem-marker"), 10_000) {
        let got = unsafe { (r.a.add(MARK_OFF) as *const u64).read_volatile() };
        c.eq(&format!("{who}: marker written by child 1"), MARK, got);
    } else {
        c.fail(format!("{who}: child 1 never wrote its marker"));
    }
}

fn child(idx: usize, r: &Regions, dir: &Path) -> ! {
    let mut c0 = Checker::new();
    check_content(&mut c0, "child before ready", r);
    check_maps(&mut c0, "child before ready", r);
    if c0.failed() {
        die(&format!("{:?}", c0.into_result()));
    }
    touch(dir, &format!("shmem-ready-{idx}"));
    while !terminated() {
        workloads::sleep_ms(10);
    }
    let mut c = Checker::new();
    after_term(&mut c, idx, r, dir);
    child_finish(dir, c)
}

fn map(len: usize) -> *mut u8 {
    let m = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if m == libc::MAP_FAILED {
        die("mmap MAP_SHARED|MAP_ANONYMOUS");
    }
    m as *mut u8
}

fn main() {
    let p = workloads::init();
    let dir = scratch_dir(&p);
    let r = Regions {
        a: map(A_LEN),
        b: map(B_LEN),
    };
    unsafe {
        fill_pattern(r.a, A_LEN, A_SEED);
        fill_pattern(r.b, B_LEN, B_SEED);
        if libc::mprotect(r.b as *mut _, B_LEN, libc::PROT_READ) != 0 {
            die("mprotect(PROT_READ)");
        }
    }
    let mut kids = Vec::new();
    for idx in 1..=2 {
        let k = unsafe { libc::fork() };
        if k < 0 {
            die("fork");
        }
        if k == 0 {
            child(idx, &r, &dir);
        }
        kids.push(k);
    }
    for idx in 1..=2 {
        if !wait_file(&dir.join(format!("shmem-ready-{idx}")), 10_000) {
            die(&format!("child {idx} not ready"));
        }
    }
    let mut c0 = Checker::new();
    check_maps(&mut c0, "parent before ready", &r);
    if c0.failed() {
        die(&format!("{:?}", c0.into_result()));
    }
    p.ready();
    while !terminated() {
        workloads::sleep_ms(10);
    }
    let mut c = Checker::new();
    for &k in &kids {
        if unsafe { libc::kill(k, libc::SIGTERM) } != 0 {
            c.fail(format!(
                "kill({k}, SIGTERM): {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    after_term(&mut c, 0, &r, &dir);
    for &k in &kids {
        reap_child(&dir, k, &mut c);
    }
    p.finish(c.into_result());
}

//! wl-creds: a task as uid 1000 with uncommon credentials in two threads.
//!
//! Started as root, it sets supplementary groups 27, 1000, 4242, then (with
//! PR_SET_KEEPCAPS) real/effective/saved gids 1000/1001/1002 and uids
//! 1000/1001/1002, fsuid 1002 and fsgid 1000; capabilities: permitted
//! CHOWN, KILL, NET_BIND_SERVICE, effective NET_BIND_SERVICE, inheritable
//! KILL, NET_BIND_SERVICE, ambient NET_BIND_SERVICE; MKNOD and SYS_BOOT
//! dropped from the bounding set; securebits NOROOT | NOROOT_LOCKED |
//! NO_SETUID_FIXUP; no_new_privs. A second thread then changes only its own
//! credentials with raw syscalls: fsuid 1001 and capabilities without KILL.
//!
//! Each thread records its Uid/Gid/Groups/Cap*/NoNewPrivs lines of
//! /proc/thread-self/status and its securebits, and after SIGTERM compares
//! them with what it has then. PASS if every thread's are unchanged.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use workloads::{die, errno, terminated, Checker};

const CAP_CHOWN: u32 = 0;
const CAP_KILL: u32 = 5;
const CAP_SETPCAP: u32 = 8;
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_SYS_BOOT: u32 = 22;
const CAP_MKNOD: u32 = 27;
const SECBITS: u64 = 0b111;

fn bits(caps: &[u32]) -> u32 {
    caps.iter().fold(0, |m, c| m | 1 << c)
}

/// capset(2) of the calling thread only (raw syscall).
fn capset(eff: &[u32], prm: &[u32], inh: &[u32]) {
    let hdr = [0x2008_0522u32, 0];
    let data = [bits(eff), bits(prm), bits(inh), 0, 0, 0];
    let r = unsafe { libc::syscall(libc::SYS_capset, hdr.as_ptr(), data.as_ptr()) };
    if r != 0 {
        die(&format!("capset: errno {}", errno()));
    }
}

fn sys(what: &str, r: libc::c_long) {
    if r < 0 {
        die(&format!("{what}: errno {}", errno()));
    }
}

/// The credential lines of the calling thread, and its securebits.
fn snapshot() -> String {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
    let mut out: Vec<String> = status
        .lines()
        .filter(|l| {
            ["Uid:", "Gid:", "Groups:", "Cap", "NoNewPrivs:"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .map(String::from)
        .collect();
    let sb = unsafe { libc::prctl(libc::PR_GET_SECUREBITS, 0, 0, 0, 0) };
    out.push(format!("securebits: {sb:#x}"));
    out.join("\n")
}

fn main() {
    let p = workloads::init();
    unsafe {
        let groups = [27u32, 1000, 4242];
        sys(
            "setgroups",
            libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()),
        );
        sys(
            "PR_SET_KEEPCAPS",
            libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) as libc::c_long,
        );
        sys(
            "setresgid",
            libc::syscall(libc::SYS_setresgid, 1000, 1001, 1002),
        );
        sys(
            "setresuid",
            libc::syscall(libc::SYS_setresuid, 1000, 1001, 1002),
        );
        libc::syscall(libc::SYS_setfsuid, 1002);
        libc::syscall(libc::SYS_setfsgid, 1000);
    }
    let nbs = CAP_NET_BIND_SERVICE;
    capset(
        &[nbs, CAP_SETPCAP],
        &[nbs, CAP_CHOWN, CAP_KILL, CAP_SETPCAP],
        &[nbs, CAP_KILL],
    );
    unsafe {
        sys(
            "PR_CAP_AMBIENT_RAISE",
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                nbs as libc::c_ulong,
                0,
                0,
            ) as libc::c_long,
        );
        for cap in [CAP_MKNOD, CAP_SYS_BOOT] {
            sys(
                "PR_CAPBSET_DROP",
                libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) as libc::c_long,
            );
        }
        sys(
            "PR_SET_SECUREBITS",
            libc::prctl(libc::PR_SET_SECUREBITS, SECBITS, 0, 0, 0) as libc::c_long,
        );
    }
    capset(&[nbs], &[nbs, CAP_CHOWN, CAP_KILL], &[nbs, CAP_KILL]);
    unsafe {
        sys(
            "PR_SET_NO_NEW_PRIVS",
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) as libc::c_long,
        );
    }
    let main_before = snapshot();
    if !main_before.contains("Uid:\t1000\t1001\t1002\t1002")
        || !main_before.contains("CapAmb:\t0000000000000400")
    {
        die(&format!("credentials not as set up:\n{main_before}"));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stop2 = stop.clone();
    let worker = std::thread::spawn(move || {
        unsafe { libc::syscall(libc::SYS_setfsuid, 1001) };
        capset(&[], &[nbs, CAP_CHOWN], &[nbs]);
        let before = snapshot();
        tx.send(before.clone()).unwrap();
        while !stop2.load(Ordering::SeqCst) {
            workloads::sleep_ms(10);
        }
        let after = snapshot();
        match workloads::diff_lines(&before, &after) {
            None => Ok(()),
            Some(d) => Err(format!("worker thread credentials changed:{d}")),
        }
    });
    let worker_before = rx.recv().unwrap();
    if worker_before == main_before {
        die("the worker thread's credentials did not change");
    }
    p.ready();
    while !terminated() {
        workloads::sleep_ms(10);
    }
    let mut c = Checker::new();
    if let Some(d) = workloads::diff_lines(&main_before, &snapshot()) {
        c.fail(format!("main thread credentials changed:{d}"));
    }
    stop.store(true, Ordering::SeqCst);
    match worker.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => c.fail(e),
        Err(_) => c.fail("worker thread panicked"),
    }
    p.finish(c.into_result());
}

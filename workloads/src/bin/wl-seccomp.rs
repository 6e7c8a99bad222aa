//! wl-seccomp [strict]: stacked seccomp BPF filters in two threads, and
//! optionally a third thread in strict mode.
//!
//! With no_new_privs, the main thread installs filter F1 (getppid fails
//! with errno 33, uname with 34), starts thread A, which adds its own F3
//! (times fails with 36), then adds F2 with SECCOMP_FILTER_FLAG_LOG (uname
//! fails with 35). So the main thread has F1+F2 and A has F1+F3, F1
//! shared. With `strict`, a thread S started first enters
//! SECCOMP_MODE_STRICT and answers each byte read from one pipe with the
//! byte plus one on another, forever.
//!
//! After SIGTERM, each filter thread checks that its filters still act
//! (the errnos above, and times/uname allowed where no filter of it
//! forbids them) and that /proc/thread-self/status shows mode 2 with two
//! filters; S must still be in mode 1 and still answer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use workloads::{die, errno, terminated, Checker};

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const FLAG_LOG: libc::c_ulong = 2;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// A filter failing each of `rules` (syscall, errno), allowing the rest.
fn install(rules: &[(i64, u32)], flags: libc::c_ulong) {
    let mut prog = vec![
        insn(0x20, 0, 0, 4), // ld arch
        insn(0x15, 1, 0, AUDIT_ARCH_X86_64),
        insn(0x06, 0, 0, RET_ALLOW),
        insn(0x20, 0, 0, 0), // ld nr
    ];
    for &(nr, e) in rules {
        prog.push(insn(0x15, 0, 1, nr as u32));
        prog.push(insn(0x06, 0, 0, RET_ERRNO | e));
    }
    prog.push(insn(0x06, 0, 0, RET_ALLOW));
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    let r = unsafe { libc::syscall(libc::SYS_seccomp, 1, flags, &fprog) };
    if r != 0 {
        die(&format!("seccomp(SET_MODE_FILTER): errno {}", errno()));
    }
}

/// errno of syscall `nr` (0 if it succeeded).
fn errno_of(nr: i64) -> i32 {
    let mut buf = [0u8; 512];
    let r = unsafe { libc::syscall(nr, buf.as_mut_ptr()) };
    if r == -1 {
        errno()
    } else {
        0
    }
}

/// Check the calling thread's filters against `expect` (syscall, errno).
fn check_thread(who: &str, expect: &[(i64, i32)], c: &mut Checker) {
    for &(nr, e) in expect {
        c.eq(&format!("{who}: errno of syscall {nr}"), e, errno_of(nr));
    }
    let st = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
    let line = |k: &str| {
        st.lines()
            .find(|l| l.starts_with(k))
            .map(|l| l[k.len()..].trim().to_string())
    };
    c.eq(
        &format!("{who}: Seccomp"),
        Some("2".into()),
        line("Seccomp:"),
    );
    c.eq(
        &format!("{who}: Seccomp_filters"),
        Some("2".into()),
        line("Seccomp_filters:"),
    );
}

fn main() {
    let p = workloads::init();
    let strict = p.args.iter().any(|a| a == "strict");
    let mut strict_io = None;
    if strict {
        let mut a = [0i32; 2];
        let mut b = [0i32; 2];
        unsafe {
            if libc::pipe(a.as_mut_ptr()) != 0 || libc::pipe(b.as_mut_ptr()) != 0 {
                die("pipe");
            }
        }
        let (rd, wr) = (a[0], b[1]);
        let (tx, rx) = std::sync::mpsc::channel::<i32>();
        std::thread::spawn(move || {
            tx.send(unsafe { libc::syscall(libc::SYS_gettid) } as i32)
                .unwrap();
            unsafe {
                if libc::prctl(libc::PR_SET_SECCOMP, 1, 0, 0, 0) != 0 {
                    libc::syscall(libc::SYS_exit_group, 3);
                }
                let mut byte = 0u8;
                loop {
                    let n = libc::syscall(libc::SYS_read, rd, &mut byte as *mut u8, 1);
                    if n == 1 {
                        byte = byte.wrapping_add(1);
                        libc::syscall(libc::SYS_write, wr, &byte as *const u8, 1);
                    }
                }
            }
        });
        let tid = rx.recv().unwrap();
        strict_io = Some((tid, a[1], b[0]));
        workloads::sleep_ms(20);
    }
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            die("PR_SET_NO_NEW_PRIVS");
        }
    }
    install(&[(libc::SYS_getppid, 33), (libc::SYS_uname, 34)], 0);
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let stop2 = stop.clone();
    let a_expect = [
        (libc::SYS_getppid, 33),
        (libc::SYS_uname, 34),
        (libc::SYS_times, 36),
    ];
    let thread_a = std::thread::spawn(move || {
        install(&[(libc::SYS_times, 36)], 0);
        tx.send(()).unwrap();
        while !stop2.load(Ordering::SeqCst) {
            workloads::sleep_ms(10);
        }
        let mut c = Checker::new();
        check_thread("thread A", &a_expect, &mut c);
        c.into_result()
    });
    rx.recv().unwrap();
    install(&[(libc::SYS_uname, 35)], FLAG_LOG);
    let main_expect = [
        (libc::SYS_getppid, 33),
        (libc::SYS_uname, 35),
        (libc::SYS_times, 0),
    ];
    let mut sanity = Checker::new();
    check_thread("main before", &main_expect, &mut sanity);
    if let Err(e) = sanity.into_result() {
        die(&e);
    }
    p.ready();
    while !terminated() {
        workloads::sleep_ms(10);
    }
    let mut c = Checker::new();
    check_thread("main", &main_expect, &mut c);
    stop.store(true, Ordering::SeqCst);
    match thread_a.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => c.fail(e),
        Err(_) => c.fail("thread A panicked"),
    }
    if let Some((tid, to_s, from_s)) = strict_io {
        let st =
            std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap_or_default();
        c.check(st.lines().any(|l| l == "Seccomp:\t1"), || {
            format!("strict thread {tid} is not in strict mode any more")
        });
        let byte = 41u8;
        unsafe { libc::write(to_s, &byte as *const u8 as *const libc::c_void, 1) };
        let mut pfd = libc::pollfd {
            fd: from_s,
            events: libc::POLLIN,
            revents: 0,
        };
        let ready = unsafe { libc::poll(&mut pfd, 1, 5000) };
        let mut got = 0u8;
        if ready == 1 {
            unsafe { libc::read(from_s, &mut got as *mut u8 as *mut libc::c_void, 1) };
        }
        c.eq("strict thread's answer", 42, got);
    }
    p.finish(c.into_result());
}

//! wl-signals: pending signals, blocked, survive a dump and restore and are
//! then delivered exactly once, with their siginfo.
//!
//! Every watched signal is blocked in both threads, then queued:
//! - SIGUSR1 with kill(): process-wide, si_code SI_USER;
//! - SIGRTMIN+1 with sigqueue() three times, values 101, 102, 103:
//!   process-wide, SI_QUEUE, three entries;
//! - SIGUSR2 with tgkill() to the second thread: its own queue, SI_TKILL;
//! - SIGRTMIN+5 with rt_tgsigqueueinfo() to the second thread, value 200.
//!
//! After SIGTERM nothing must have been delivered yet and each must still
//! be pending. The main thread unblocks SIGUSR1 and SIGRTMIN+1 and must get
//! SIGUSR1 once and the three SIGRTMIN+1 in order, with pid, uid and
//! values; then the second thread unblocks its two and must get each once
//! on itself. Nothing else may arrive.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use workloads::{raw_getpid, sigrec, sleep_ms, wait_for_term, Checker};

static T2_TID: AtomicI32 = AtomicI32::new(0);
static T2_GO: AtomicBool = AtomicBool::new(false);
static T2_DONE: AtomicBool = AtomicBool::new(false);

const SI_USER: i32 = 0;
const SI_QUEUE: i32 = -1;
const SI_TKILL: i32 = -6;

fn queue_to_thread(pid: i32, tid: i32, sig: i32, value: u64) {
    let mut info = [0u8; 128];
    let uid = unsafe { libc::getuid() };
    info[0..4].copy_from_slice(&sig.to_ne_bytes());
    info[8..12].copy_from_slice(&SI_QUEUE.to_ne_bytes());
    info[16..20].copy_from_slice(&pid.to_ne_bytes());
    info[20..24].copy_from_slice(&uid.to_ne_bytes());
    info[24..32].copy_from_slice(&value.to_ne_bytes());
    let r = unsafe { libc::syscall(libc::SYS_rt_tgsigqueueinfo, pid, tid, sig, info.as_ptr()) };
    if r != 0 {
        workloads::die(&format!(
            "rt_tgsigqueueinfo: {}",
            std::io::Error::last_os_error()
        ));
    }
}

fn main() {
    let p = workloads::init();
    let rt1 = libc::SIGRTMIN() + 1;
    let rt5 = libc::SIGRTMIN() + 5;
    let watched = [libc::SIGUSR1, libc::SIGUSR2, rt1, rt5];
    for s in watched {
        sigrec::watch(s);
    }
    sigrec::mask(libc::SIG_BLOCK, &watched);
    let pid = raw_getpid();
    let uid = unsafe { libc::getuid() } as i32;
    let t2 = std::thread::spawn(move || {
        T2_TID.store(sigrec::gettid(), Ordering::SeqCst);
        while !T2_GO.load(Ordering::SeqCst) {
            sleep_ms(5);
        }
        sigrec::mask(libc::SIG_UNBLOCK, &[libc::SIGUSR2, rt5]);
        sleep_ms(20);
        T2_DONE.store(true, Ordering::SeqCst);
    });
    while T2_TID.load(Ordering::SeqCst) == 0 {
        sleep_ms(1);
    }
    let tid2 = T2_TID.load(Ordering::SeqCst);
    unsafe {
        libc::kill(pid, libc::SIGUSR1);
        for v in [101usize, 102, 103] {
            let sv = libc::sigval {
                sival_ptr: v as *mut libc::c_void,
            };
            if libc::sigqueue(pid, rt1, sv) != 0 {
                workloads::die("sigqueue");
            }
        }
        libc::syscall(libc::SYS_tgkill, pid, tid2, libc::SIGUSR2);
    }
    queue_to_thread(pid, tid2, rt5, 200);
    eprintln!(
        "queued: ShdPnd {} SigPnd(main) {}",
        sigrec::status_field("ShdPnd"),
        sigrec::status_field("SigPnd")
    );
    p.ready();
    wait_for_term();

    let mut c = Checker::new();
    c.eq("deliveries before unblocking", vec![], sigrec::all());
    for s in [libc::SIGUSR1, rt1] {
        c.check(sigrec::is_pending(s), || {
            format!("signal {s} is not pending in the main thread")
        });
    }
    sigrec::mask(libc::SIG_UNBLOCK, &[libc::SIGUSR1, rt1]);
    sleep_ms(20);
    let rec = |sig, code, a, b, value, tid| sigrec::Rec {
        sig,
        code,
        a,
        b,
        value,
        tid,
        ns: 0,
    };
    // Handlers of different signals nest in an order of the kernel's
    // making: compare each signal's own deliveries, in order.
    let strip = |v: Vec<sigrec::Rec>| -> Vec<sigrec::Rec> {
        let mut v: Vec<sigrec::Rec> = v.into_iter().map(|r| sigrec::Rec { ns: 0, ..r }).collect();
        v.sort_by_key(|r| r.sig);
        v
    };
    let mut want = vec![rec(libc::SIGUSR1, SI_USER, pid, uid, 0, pid)];
    for v in [101, 102, 103] {
        want.push(rec(rt1, SI_QUEUE, pid, uid, v, pid));
    }
    // SI_USER carries no value: ignore what the union holds there.
    let got: Vec<sigrec::Rec> = strip(sigrec::all())
        .into_iter()
        .map(|r| {
            if r.code == SI_USER {
                sigrec::Rec { value: 0, ..r }
            } else {
                r
            }
        })
        .collect();
    c.eq("main thread deliveries", want.clone(), got);
    T2_GO.store(true, Ordering::SeqCst);
    while !T2_DONE.load(Ordering::SeqCst) {
        sleep_ms(2);
    }
    t2.join().unwrap();
    sleep_ms(50);
    want.push(rec(libc::SIGUSR2, SI_TKILL, pid, uid, 0, tid2));
    want.push(rec(rt5, SI_QUEUE, pid, uid, 200, tid2));
    want.sort_by_key(|r| r.sig);
    let got: Vec<sigrec::Rec> = strip(sigrec::all())
        .into_iter()
        .map(|r| {
            if r.code == SI_USER || r.code == SI_TKILL {
                sigrec::Rec { value: 0, ..r }
            } else {
                r
            }
        })
        .collect();
    c.eq("all deliveries", want, got);
    p.finish(c.into_result());
}

//! wl-prctl: prctl state, CPU affinity and I/O priority, per thread.
//!
//! The process: child subreaper, THP disabled, not dumpable,
//! oom_score_adj 345. The main thread: name "prctl-main", timer slack
//! 123456 ns, parent-death signal SIGWINCH, I/O priority best-effort 5,
//! affinity the first CPU it may use. A second thread: name "prctl-thr",
//! timer slack 654321 ns, parent-death signal SIGURG, I/O priority idle,
//! affinity the last CPU it may use.
//!
//! After SIGTERM each thread checks its own values and the main thread the
//! process-wide ones. PASS if all are as set.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use workloads::{die, errno, terminated, Checker};

const IOPRIO_WHO_PROCESS: i32 = 1;

fn prctl(op: i32, a: libc::c_ulong) -> i32 {
    unsafe { libc::prctl(op, a, 0, 0, 0) }
}

fn set(what: &str, r: i64) {
    if r < 0 {
        die(&format!("{what}: errno {}", errno()));
    }
}

fn affinity() -> Vec<usize> {
    unsafe {
        let mut s: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, std::mem::size_of_val(&s), &mut s);
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &s))
            .collect()
    }
}

fn set_affinity(cpu: usize) {
    unsafe {
        let mut s: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut s);
        set(
            "sched_setaffinity",
            libc::sched_setaffinity(0, std::mem::size_of_val(&s), &s) as i64,
        );
    }
}

fn name() -> String {
    let mut buf = [0u8; 16];
    prctl(libc::PR_GET_NAME, buf.as_mut_ptr() as libc::c_ulong);
    let n = buf.iter().position(|&b| b == 0).unwrap_or(16);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn pdeath() -> i32 {
    let mut sig = 0i32;
    prctl(
        libc::PR_GET_PDEATHSIG,
        &mut sig as *mut i32 as libc::c_ulong,
    );
    sig
}

fn ioprio() -> i64 {
    unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0) }
}

/// What one thread sets: name, slack, pdeath signal, ioprio, CPU.
struct Thread {
    name: &'static str,
    slack: u64,
    pdeath: i32,
    ioprio: i64,
    cpu: usize,
}

impl Thread {
    fn apply(&self) {
        let cname = std::ffi::CString::new(self.name).unwrap();
        set(
            "PR_SET_NAME",
            prctl(libc::PR_SET_NAME, cname.as_ptr() as libc::c_ulong) as i64,
        );
        set(
            "PR_SET_TIMERSLACK",
            prctl(libc::PR_SET_TIMERSLACK, self.slack as libc::c_ulong) as i64,
        );
        set(
            "PR_SET_PDEATHSIG",
            prctl(libc::PR_SET_PDEATHSIG, self.pdeath as libc::c_ulong) as i64,
        );
        set("ioprio_set", unsafe {
            libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, self.ioprio)
        });
        set_affinity(self.cpu);
    }

    fn check(&self, c: &mut Checker) {
        let who = self.name;
        c.eq(&format!("{who}: name"), self.name.to_string(), name());
        c.eq(
            &format!("{who}: timer slack"),
            self.slack as i32,
            prctl(libc::PR_GET_TIMERSLACK, 0),
        );
        c.eq(&format!("{who}: pdeath signal"), self.pdeath, pdeath());
        c.eq(&format!("{who}: ioprio"), self.ioprio, ioprio());
        c.eq(&format!("{who}: affinity"), vec![self.cpu], affinity());
    }
}

fn main() {
    let p = workloads::init();
    let cpus = affinity();
    let main_t = Thread {
        name: "prctl-main",
        slack: 123_456,
        pdeath: libc::SIGWINCH,
        ioprio: 2 << 13 | 5,
        cpu: cpus[0],
    };
    let other = Thread {
        name: "prctl-thr",
        slack: 654_321,
        pdeath: libc::SIGURG,
        ioprio: 3 << 13,
        cpu: *cpus.last().unwrap(),
    };
    set(
        "PR_SET_CHILD_SUBREAPER",
        prctl(libc::PR_SET_CHILD_SUBREAPER, 1) as i64,
    );
    set(
        "PR_SET_THP_DISABLE",
        prctl(libc::PR_SET_THP_DISABLE, 1) as i64,
    );
    if std::fs::write("/proc/self/oom_score_adj", "345").is_err() {
        die("oom_score_adj");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let stop2 = stop.clone();
    let worker = std::thread::spawn(move || {
        other.apply();
        tx.send(()).unwrap();
        while !stop2.load(Ordering::SeqCst) {
            workloads::sleep_ms(10);
        }
        let mut c = Checker::new();
        other.check(&mut c);
        c.into_result()
    });
    rx.recv().unwrap();
    main_t.apply();
    set("PR_SET_DUMPABLE", prctl(libc::PR_SET_DUMPABLE, 0) as i64);
    p.ready();
    while !terminated() {
        workloads::sleep_ms(10);
    }
    let mut c = Checker::new();
    main_t.check(&mut c);
    let mut sub = 0i32;
    prctl(
        libc::PR_GET_CHILD_SUBREAPER,
        &mut sub as *mut i32 as libc::c_ulong,
    );
    c.eq("child subreaper", 1, sub);
    c.eq("THP disabled", 1, prctl(libc::PR_GET_THP_DISABLE, 0));
    c.eq("dumpable", 0, prctl(libc::PR_GET_DUMPABLE, 0));
    c.eq(
        "oom_score_adj",
        "345".to_string(),
        std::fs::read_to_string("/proc/self/oom_score_adj")
            .unwrap_or_default()
            .trim()
            .to_string(),
    );
    stop.store(true, Ordering::SeqCst);
    match worker.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => c.fail(e),
        Err(_) => c.fail("worker panicked"),
    }
    p.finish(c.into_result());
}

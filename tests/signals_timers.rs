//! Pending signals, interval timers and POSIX timers: dumped with their
//! full state, restored, and checked by the workloads themselves.

use crust_image::{pb, ImageKind};
use crust_tests::*;
use std::path::Path;
use std::time::Duration;

/// Dump (killing the original), check the images decode, wait `gap`,
/// restore detached and return; the caller checks the outcome.
fn dump_wait_restore(w: &mut Workload, gap: Duration) {
    let dir = w.images_dir("img");
    dump(w, &dir, &[]).ok();
    w.reap_original();
    assert_images_decode_fast(&dir);
    std::thread::sleep(gap);
    restore(w, &dir, &["-d"]).ok();
    w.mark_restored();
    wait_restored(w.pid, Duration::from_secs(10));
}

/// The main thread's core of a dumped process.
fn main_core(dir: &Path, pid: i32) -> (std::path::PathBuf, pb::CoreEntry) {
    let path = dir.join(format!("core-{pid}.img"));
    let mut cores: Vec<pb::CoreEntry> =
        crust_image::read_entries(&path, ImageKind::Core).expect("read core image");
    (path, cores.remove(0))
}

#[test]
fn pending_signals() {
    let mut w = Workload::start("wl-signals", &[]);
    dump_restore_check(&mut w);
}

#[test]
fn pending_signals_in_the_image() {
    let mut w = Workload::start("wl-signals", &[]);
    let dir = w.images_dir("img");
    dump(&w, &dir, &["--leave-running"]).ok();
    let (_, core) = main_core(&dir, w.pid);
    let shared = core.tc.unwrap().signals_s.expect("a shared queue");
    let signos: Vec<i32> = shared
        .signals
        .iter()
        .map(|i| i32::from_ne_bytes(i.siginfo[0..4].try_into().unwrap()))
        .collect();
    let rt1 = libc::SIGRTMIN() + 1;
    assert_eq!(signos, vec![libc::SIGUSR1, rt1, rt1, rt1], "shared queue");
    // The original still has them all pending.
    w.terminate_and_check();
}

/// --leave-running dumps leave every signal pending in the original: two
/// of them, then a dump that kills it, and the restored task still gets
/// each signal once.
#[test]
fn pending_signals_leave_running() {
    let mut w = Workload::start("wl-signals", &[]);
    for n in ["img-1", "img-2"] {
        let dir = w.images_dir(n);
        dump(&w, &dir, &["--leave-running"]).ok();
        assert!(w.is_alive(), "the original is gone after --leave-running");
    }
    dump_wait_restore(&mut w, Duration::ZERO);
    w.terminate_and_check();
}

/// A siginfo of the wrong size is refused by name before anything is
/// created.
#[test]
fn malformed_siginfo() {
    let mut w = Workload::start("wl-signals", &[]);
    let dir = w.images_dir("img");
    dump(&w, &dir, &[]).ok();
    w.reap_original();
    let (path, mut core) = main_core(&dir, w.pid);
    let q = core.tc.as_mut().unwrap().signals_s.as_mut().unwrap();
    q.signals[1].siginfo.truncate(100);
    crust_image::write_entries(&path, ImageKind::Core, &[core]).unwrap();
    forget_manifest(path.parent().unwrap());
    let name = path.file_name().unwrap().to_str().unwrap().to_string();
    restore(&w, &dir, &[])
        .fails()
        .stderr_names(&[&name, "siginfo", "100 bytes"]);
    assert_pid_free(w.pid);
}

/// ITIMER_REAL fires its remaining time after the restore (the 1.5 s the
/// task spent dumped do not count), then every second; ITIMER_VIRTUAL and
/// ITIMER_PROF keep their values and intervals.
#[test]
fn itimers() {
    let mut w = Workload::start("wl-itimer", &[]);
    dump_wait_restore(&mut w, Duration::from_millis(1500));
    std::thread::sleep(Duration::from_millis(4500));
    w.terminate_and_check();
}

/// The itimers as CRIU stores them; a --leave-running dump leaves them
/// running in the original.
#[test]
fn itimers_in_the_image() {
    let mut w = Workload::start("wl-itimer", &[]);
    let dir = w.images_dir("img");
    dump(&w, &dir, &["--leave-running"]).ok();
    assert_images_decode_fast(&dir);
    let (_, core) = main_core(&dir, w.pid);
    let t = core.tc.unwrap().timers.expect("timers");
    assert_eq!((t.real.isec, t.real.iusec), (1, 0), "real interval");
    let left = t.real.vsec * 1_000_000 + t.real.vusec;
    assert!(left > 0 && left <= 3_000_000, "real value {left} us");
    assert_eq!((t.virt.isec, t.virt.iusec), (10, 0), "virt interval");
    assert_eq!((t.prof.isec, t.prof.iusec), (20, 0), "prof interval");
    assert!(t.posix.is_empty());
    std::thread::sleep(Duration::from_millis(3500));
    w.terminate_and_check();
}

/// POSIX timers on every kind of clock and notification come back with
/// their ids and fire as before.
#[test]
fn posix_timers() {
    let mut w = Workload::start("wl-ptimers", &[]);
    dump_wait_restore(&mut w, Duration::from_secs(1));
    std::thread::sleep(Duration::from_secs(3));
    w.terminate_and_check();
}

/// The POSIX timers as CRIU stores them, ids with their hole; the original
/// of a --leave-running dump keeps them.
#[test]
fn posix_timers_in_the_image() {
    let mut w = Workload::start("wl-ptimers", &[]);
    let dir = w.images_dir("img");
    dump(&w, &dir, &["--leave-running"]).ok();
    assert_images_decode_fast(&dir);
    let (_, core) = main_core(&dir, w.pid);
    let t = core.tc.unwrap().timers.expect("timers");
    let mut ids: Vec<u32> = t.posix.iter().map(|p| p.it_id).collect();
    ids.sort();
    assert_eq!(ids.len(), 7, "timers {:?}", t.posix);
    assert!(
        ids.windows(2).any(|w| w[1] > w[0] + 1),
        "no hole in the ids {ids:?}"
    );
    let b = t
        .posix
        .iter()
        .find(|p| p.sival_ptr == 0xB22)
        .expect("timer B");
    assert_eq!(
        b.it_sigev_notify as i32,
        libc::SIGEV_SIGNAL | libc::SIGEV_THREAD_ID
    );
    let tid = b.notify_thread_id.expect("B's thread");
    assert!(tid != w.pid && tid > 0, "B notifies {tid}");
    assert_eq!((b.isec, b.insec), (0, 250_000_000));
    let d = t
        .posix
        .iter()
        .find(|p| p.sival_ptr == 0xD44)
        .expect("timer D");
    // The kernel keeps CLOCK_PROCESS_CPUTIME_ID as the process CPU clock of
    // "this process" (pid 0, CPUCLOCK_SCHED): -6.
    assert_eq!(d.clock_id as i32, -6);
    assert_eq!((d.isec, d.insec), (10, 0));
    std::thread::sleep(Duration::from_secs(3));
    w.terminate_and_check();
}

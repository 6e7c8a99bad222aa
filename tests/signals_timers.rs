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
    let name = path.file_name().unwrap().to_str().unwrap().to_string();
    restore(&w, &dir, &[])
        .fails()
        .stderr_names(&[&name, "siginfo", "100 bytes"]);
    assert_pid_free(w.pid);
}

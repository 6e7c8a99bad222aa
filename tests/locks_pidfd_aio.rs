//! File locks (flock, POSIX, OFD, leases) with --file-locks, pidfds, AIO
//! contexts and fanotify groups: round trips where each workload checks its
//! own state after restore, and refusals that name what they refuse and
//! leave the task running.

use crust_image::{pb, read_entries, write_entries, ImageKind};
use crust_tests::*;
use std::path::Path;
use std::time::Duration;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Dump with `extra` (killing the task), wait until the tree's pids are
/// free, decode the images with crit, restore detached, wait until the
/// task runs again.
fn dump_and_restore(w: &mut Workload, img: &Path, extra: &[&str]) {
    dump(w, img, extra).ok();
    w.reap_original();
    for pid in tree_pids(img) {
        wait_pid_free(pid, Duration::from_secs(10));
    }
    assert_images_decode(img);
    restore(w, img, &["-d"]).ok();
    w.mark_restored();
    wait_restored(w.pid, Duration::from_secs(10));
}

/// A dump with `extra` must fail naming every one of `names`, write no
/// inventory and leave the task running.
fn refused(w: &mut Workload, extra: &[&str], names: &[&str]) {
    let dir = w.images_dir("img");
    dump(w, &dir, extra).fails().stderr_names(names);
    assert!(
        !dir.join("inventory.img").exists(),
        "refused dump left an inventory.img"
    );
    assert!(w.is_alive(), "refused dump killed the task");
    wait_restored(w.pid, Duration::from_secs(5));
    w.terminate_and_check();
}

fn start_locks(args: &[&str]) -> Workload {
    let scratch = Scratch::new("locks");
    let dir = scratch.subdir("files");
    let mut all = vec![s(&dir).to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    Workload::start_in(scratch, "locks", &all)
}

#[test]
fn locks_pass_without_dump() {
    let mut w = start_locks(&[]);
    w.terminate_and_check();
}

#[test]
fn locks_round_trip() {
    let mut w = start_locks(&[]);
    let img = w.images_dir("img");
    dump_and_restore(&mut w, &img, &["--file-locks"]);
    let shown = crust(&["show", s(&img.join("file-locks.img"))]).ok().stdout;
    assert!(
        shown.contains("FILE_LOCKS") && shown.matches("\"flag\"").count() == 8,
        "file-locks.img should hold 8 locks:\n{shown}"
    );
    w.terminate_and_check();
}

#[test]
fn locks_refused_without_file_locks() {
    let mut w = start_locks(&[]);
    refused(&mut w, &[], &["--file-locks", "fd 10", "FLOCK"]);
}

/// A child of the tree blocked in flock waits again after restore.
#[test]
fn lock_waiter_round_trip() {
    let mut w = start_locks(&["waiter"]);
    let img = w.images_dir("img");
    dump_and_restore(&mut w, &img, &["--file-locks"]);
    w.terminate_and_check();
}

#[test]
fn lock_on_a_missing_fd_is_a_bad_image() {
    let mut w = start_locks(&[]);
    let img = w.images_dir("img");
    dump(&w, &img, &["--file-locks"]).ok();
    w.reap_original();
    let path = img.join("file-locks.img");
    let mut locks: Vec<pb::FileLockEntry> = read_entries(&path, ImageKind::FileLocks).unwrap();
    locks[0].fd = 99;
    write_entries(&path, ImageKind::FileLocks, &locks).unwrap();
    forget_manifest(path.parent().unwrap());
    restore(&w, &img, &["-d"])
        .fails()
        .stderr_names(&["file-locks.img", "fd 99"]);
    assert_pid_free(w.pid);
}

#[test]
fn pidfd_pass_without_dump() {
    let mut w = Workload::start("pidfd", &[]);
    w.terminate_and_check();
}

#[test]
fn pidfd_round_trip() {
    let mut w = Workload::start("pidfd", &[]);
    let img = w.images_dir("img");
    dump_and_restore(&mut w, &img, &[]);
    let files = crust(&["show", s(&img.join("files.img"))]).ok().stdout;
    assert_eq!(
        files.matches("\"nspid\"").count(),
        5,
        "files.img should hold 5 pidfds (the dup shares one):\n{files}"
    );
    w.terminate_and_check();
}

fn start_aio(args: &[&str]) -> Workload {
    let scratch = Scratch::new("aio");
    let dir = scratch.subdir("files");
    let mut all = vec![s(&dir).to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    Workload::start_in(scratch, "aio", &all)
}

#[test]
fn aio_pass_without_dump() {
    let mut w = start_aio(&[]);
    w.terminate_and_check();
}

#[test]
fn aio_round_trip() {
    let mut w = start_aio(&[]);
    let img = w.images_dir("img");
    dump_and_restore(&mut w, &img, &[]);
    let mm = crust(&["show", s(&image_file(&img, "mm-"))]).ok().stdout;
    assert_eq!(
        mm.matches("\"ring_len\"").count(),
        2,
        "mm image should hold 2 AIO rings:\n{mm}"
    );
    w.terminate_and_check();
}

#[test]
fn aio_with_unreaped_events_refused() {
    let mut w = start_aio(&["pending"]);
    refused(&mut w, &[], &["AIO context", "not reaped"]);
}

fn start_fanotify(args: &[&str]) -> Workload {
    let scratch = Scratch::new("fanotify");
    let dir = scratch.subdir("watched");
    let mut all = vec![s(&dir).to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    Workload::start_in(scratch, "fanotify", &all)
}

#[test]
fn fanotify_pass_without_dump() {
    let mut w = start_fanotify(&[]);
    w.terminate_and_check();
}

#[test]
fn fanotify_round_trip() {
    let mut w = start_fanotify(&[]);
    let img = w.images_dir("img");
    dump_and_restore(&mut w, &img, &[]);
    let files = crust(&["show", s(&img.join("files.img"))]).ok().stdout;
    assert_eq!(
        files.matches("\"mflags\"").count(),
        3,
        "files.img should hold 3 fanotify marks:\n{files}"
    );
    w.terminate_and_check();
}

#[test]
fn fanotify_filesystem_mark_refused() {
    let mut w = start_fanotify(&["fs"]);
    refused(&mut w, &[], &["fd 15", "fanotify", "FAN_MARK_FILESYSTEM"]);
}

/// A permission mark with an event queued, whose opener (outside the
/// tree) waits for the answer: refused, the opener gets its answer once
/// the task runs on.
#[test]
fn fanotify_queued_permission_event_refused() {
    let mut w = start_fanotify(&["perm"]);
    let gate = w.scratch.join("watched/gate");
    let mut opener = std::process::Command::new("cat")
        .arg(&gate)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn cat");
    std::thread::sleep(Duration::from_millis(300));
    refused(&mut w, &[], &["fd 15", "fanotify", "permission events"]);
    let status = wait_child(&mut opener, Duration::from_secs(10));
    assert!(status.success(), "cat of the gate: {status}");
}

#[test]
fn fanotify_permission_mark_refused() {
    let mut w = start_fanotify(&["perm"]);
    refused(&mut w, &[], &["fd 15", "fanotify", "permission events"]);
}

#[test]
fn fanotify_content_class_round_trip() {
    let mut w = start_fanotify(&["content"]);
    let img = w.images_dir("img");
    dump_and_restore(&mut w, &img, &[]);
    w.terminate_and_check();
}

/// A pidfd of a process outside the tree that is gone at restore time:
/// the restore fails, naming it, and creates nothing.
#[test]
fn pidfd_of_a_vanished_outsider_refused_at_restore() {
    let mut outsider = std::process::Command::new("sleep")
        .arg("100")
        .spawn()
        .expect("spawn sleep");
    let opid = outsider.id().to_string();
    let mut w = Workload::start("pidfd", &[&opid]);
    let img = w.images_dir("img");
    dump(&w, &img, &[]).ok();
    w.reap_original();
    outsider.kill().unwrap();
    outsider.wait().unwrap();
    restore(&w, &img, &["-d"])
        .fails()
        .stderr_names(&[&opid, "pidfd", "outside the tree"]);
    assert_pid_free(w.pid);
}

#[test]
fn pidfd_entry_with_an_invalid_pid_is_a_bad_image() {
    let mut w = Workload::start("pidfd", &[]);
    let img = w.images_dir("img");
    dump(&w, &img, &[]).ok();
    w.reap_original();
    let path = img.join("files.img");
    let mut files: Vec<pb::FileEntry> = read_entries(&path, ImageKind::Files).unwrap();
    let p = files
        .iter_mut()
        .find_map(|f| f.pidfd.as_mut())
        .expect("a pidfd entry");
    p.nspid = -7;
    write_entries(&path, ImageKind::Files, &files).unwrap();
    forget_manifest(path.parent().unwrap());
    restore(&w, &img, &["-d"])
        .fails()
        .stderr_names(&["files.img", "pidfd", "-7"]);
    assert_pid_free(w.pid);
}

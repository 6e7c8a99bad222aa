//! Event fds: eventfd, signalfd, timerfd, epoll (nested, EPOLLET,
//! EPOLLONESHOT, EPOLLEXCLUSIVE, a target registered under a closed fd
//! number) and inotify round trips; other anon-inode fds refused by name;
//! a bad epoll entry refused by the restore, naming its image.

use crust_image::{pb, read_entries, write_entries, ImageKind};
use crust_tests::*;
use std::path::Path;
use std::time::Duration;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn sigusr1(pid: i32) {
    assert_eq!(
        unsafe { libc::kill(pid, libc::SIGUSR1) },
        0,
        "kill -USR1 {pid}"
    );
}

/// Dump (killing it), wait until the tree's pids are free, decode the
/// images, restore detached, wait until the task runs again.
fn dump_and_restore(w: &mut Workload, img: &Path) {
    dump(w, img, &[]).ok();
    w.reap_original();
    for pid in tree_pids(img) {
        wait_pid_free(pid, Duration::from_secs(10));
    }
    assert_images_decode(img);
    restore(w, img, &["-d"]).ok();
    w.mark_restored();
    wait_restored(w.pid, Duration::from_secs(10));
}

fn crit_show(file: &Path) -> String {
    let r = crust(&["show", s(file)]).ok();
    r.stdout
}

#[test]
fn eventfds_pass_without_dump() {
    let mut w = Workload::start("eventfds", &[]);
    sigusr1(w.pid);
    w.terminate_and_check();
}

#[test]
fn eventfds_round_trip() {
    let mut w = Workload::start("eventfds", &[]);
    let img = w.images_dir("img");
    dump_and_restore(&mut w, &img);
    let files = crit_show(&img.join("files.img"));
    for kind in ["EVENTFD", "EVENTPOLL", "SIGNALFD", "TIMERFD"] {
        assert!(
            files.contains(kind),
            "files.img has no {kind} entry:\n{files}"
        );
    }
    sigusr1(w.pid);
    w.terminate_and_check();
}

#[test]
fn epoll_target_under_closed_fd_round_trip() {
    let mut w = Workload::start("epoll-dup", &[]);
    let img = w.images_dir("img");
    dump_and_restore(&mut w, &img);
    w.terminate_and_check();
}

#[test]
fn epoll_shared_across_fork_round_trip() {
    let mut w = Workload::start("epoll-dup", &["fork"]);
    let img = w.images_dir("img");
    dump_and_restore(&mut w, &img);
    w.terminate_and_check();
}

#[test]
fn epoll_target_under_reused_fd_refused() {
    let mut w = Workload::start("epoll-dup", &["reuse"]);
    let dir = w.images_dir("img");
    dump(&w, &dir, &[])
        .fails()
        .stderr_names(&["fd 31", "epoll", "registered as fd 30"]);
    assert!(w.is_alive(), "refused dump killed the task");
    wait_restored(w.pid, Duration::from_secs(5));
    w.terminate_and_check();
}

fn start_inotify() -> Workload {
    let scratch = Scratch::new("inotify");
    let dir = scratch.subdir("watched");
    Workload::start_in(scratch, "inotify", &[s(&dir)])
}

#[test]
fn inotify_pass_without_dump() {
    let mut w = start_inotify();
    w.terminate_and_check();
}

#[test]
fn inotify_round_trip() {
    let mut w = start_inotify();
    let img = w.images_dir("img");
    dump_and_restore(&mut w, &img);
    let files = crit_show(&img.join("files.img"));
    assert!(
        files.contains("a.txt"),
        "files.img lacks the watched path:\n{files}"
    );
    w.terminate_and_check();
}

fn anon_refused(kind: &str, names: &[&str]) {
    let mut w = Workload::start("anonfd", &[kind]);
    let dir = w.images_dir("img");
    let mut want = vec!["fd 30"];
    want.extend_from_slice(names);
    dump(&w, &dir, &[]).fails().stderr_names(&want);
    assert!(
        !dir.join("inventory.img").exists(),
        "refused dump left an inventory.img"
    );
    assert!(w.is_alive(), "refused dump killed the task");
    wait_restored(w.pid, Duration::from_secs(5));
    w.terminate_and_check();
}

#[test]
fn io_uring_refused() {
    anon_refused("io_uring", &["io_uring"]);
}

#[test]
fn userfaultfd_refused() {
    anon_refused("userfaultfd", &["userfaultfd"]);
}

#[test]
fn epoll_entry_naming_a_missing_fd_is_a_bad_image() {
    let mut w = Workload::start("eventfds", &[]);
    let img = w.images_dir("img");
    dump(&w, &img, &[]).ok();
    w.reap_original();
    let path = img.join("files.img");
    let mut files: Vec<pb::FileEntry> = read_entries(&path, ImageKind::Files).unwrap();
    let ep = files
        .iter_mut()
        .find_map(|f| f.epfd.as_mut().filter(|e| !e.tfd.is_empty()))
        .expect("an epoll entry with watches");
    ep.tfd[0].tfd = 999;
    ep.tfd[0].crust_target_id = Some(9999);
    write_entries(&path, ImageKind::Files, &files).unwrap();
    forget_manifest(path.parent().unwrap());
    restore(&w, &img, &["-d"])
        .fails()
        .stderr_names(&["fdinfo-", ".img", "epoll", "fd 999"]);
    assert_pid_free(w.pid);
}

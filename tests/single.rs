//! First milestone: single-threaded processes, dumped and restored; and every
//! bad input refused cleanly.

use crust_tests::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// wl-files with its DIR inside the scratch dir.
fn start_files() -> (Workload, PathBuf) {
    let scratch = Scratch::new("files");
    let dir = scratch.subdir("data");
    let w = Workload::start_in(scratch, "files", &[s(&dir)]);
    (w, dir)
}

fn start_all() -> Vec<Workload> {
    let mut v = vec![
        Workload::start("counter", &[]),
        Workload::start("memory", &["64"]),
        start_files().0,
        Workload::start("regs", &[]),
    ];
    for kind in ["nanosleep", "poll", "select", "futex", "pause"] {
        v.push(Workload::start("sleeper", &[kind]));
    }
    v.push(Workload::start("pipe", &[]));
    v.push(Workload::start("socket", &[]));
    v
}

/// The harness's self-check: every workload passes when nothing is done to it.
#[test]
fn workloads_pass_without_dump() {
    let mut all = start_all();
    std::thread::sleep(Duration::from_millis(300));
    for w in &mut all {
        w.terminate_and_check();
    }
}

// ------------------------------------------------------ dump, restore, check

#[test]
fn counter() {
    dump_restore_check(&mut Workload::start("counter", &[]));
}

#[test]
fn memory() {
    dump_restore_check(&mut Workload::start("memory", &["64"]));
}

#[test]
fn memory_256m() {
    dump_restore_check(&mut Workload::start("memory", &["256"]));
}

#[test]
fn files() {
    dump_restore_check(&mut start_files().0);
}

#[test]
fn regs() {
    dump_restore_check(&mut Workload::start("regs", &[]));
}

#[test]
fn sleeper_nanosleep() {
    dump_restore_check(&mut Workload::start("sleeper", &["nanosleep"]));
}

#[test]
fn sleeper_poll() {
    dump_restore_check(&mut Workload::start("sleeper", &["poll"]));
}

#[test]
fn sleeper_select() {
    dump_restore_check(&mut Workload::start("sleeper", &["select"]));
}

#[test]
fn sleeper_futex() {
    dump_restore_check(&mut Workload::start("sleeper", &["futex"]));
}

#[test]
fn sleeper_pause() {
    dump_restore_check(&mut Workload::start("sleeper", &["pause"]));
}

// ------------------------------------------------------------ dump options

#[test]
fn dump_leave_running() {
    let mut w = Workload::start("counter", &[]);
    let dir = w.images_dir("img");
    dump(&w, &dir, &["-R"]).ok();
    assert!(w.is_alive(), "workload died with --leave-running");
    wait_restored(w.pid, Duration::from_secs(5));
    assert_images_decode(&dir);
    w.terminate_and_check();
}

#[test]
fn dump_leave_stopped() {
    let mut w = Workload::start("counter", &[]);
    let dir = w.images_dir("img");
    dump(&w, &dir, &["--leave-stopped"]).ok();
    assert!(w.is_alive(), "workload died with --leave-stopped");
    assert_eq!(tracer_pid(w.pid), Some(0), "crust left the task traced");
    assert_eq!(
        pid_state(w.pid),
        Some('T'),
        "task not stopped with --leave-stopped"
    );
    assert_images_decode(&dir);
    unsafe { libc::kill(w.pid, libc::SIGCONT) };
    wait_restored(w.pid, Duration::from_secs(5));
    w.terminate_and_check();
}

#[test]
fn restore_attached_waits_for_exit() {
    let mut w = Workload::start("counter", &[]);
    let dir = w.images_dir("img");
    dump(&w, &dir, &[]).ok();
    w.reap_original();
    let pidfile = w.scratch.join("restore.pid");
    let log = w.scratch.join("restore.log");
    let out = w.scratch.join("restore.out");
    let mut child = crust_spawn(
        &[
            "restore",
            "-D",
            s(&dir),
            "--pidfile",
            s(&pidfile),
            "-v4",
            "-o",
            s(&log),
        ],
        &out,
    );
    let t0 = Instant::now();
    while !pidfile.exists() {
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "crust restore exited ({st}) before writing its pidfile:\n{}\n{}",
                fs::read_to_string(&out).unwrap_or_default(),
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            t0.elapsed() < CRUST_TIMEOUT,
            "crust restore wrote no pidfile"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        fs::read_to_string(&pidfile).unwrap().trim(),
        w.pid.to_string()
    );
    w.mark_restored();
    wait_restored(w.pid, Duration::from_secs(10));
    w.terminate_and_check();
    let st = wait_child(&mut child, Duration::from_secs(20));
    assert!(
        st.success(),
        "crust restore (attached) ended with {st}, expected the workload's exit 0:\n{}",
        fs::read_to_string(&out).unwrap_or_default()
    );
}

// ------------------------------------------------------------ bad dumps

fn free_pid() -> i32 {
    let max: i32 = fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (2..max)
        .rev()
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .unwrap()
}

#[test]
fn dump_nonexistent_pid() {
    let scratch = Scratch::new("nopid");
    let dir = scratch.subdir("img");
    let pid = free_pid().to_string();
    crust(&["dump", "-t", &pid, "-D", s(&dir)])
        .fails()
        .stderr_names(&[&pid]);
    assert!(
        !dir.join("inventory.img").exists(),
        "failed dump left an inventory.img"
    );
}

#[test]
fn dump_init_refused() {
    let scratch = Scratch::new("init");
    let dir = scratch.subdir("img");
    crust(&["dump", "-t", "1", "-D", s(&dir), "-R"]).fails();
    assert!(
        !dir.join("inventory.img").exists(),
        "failed dump left an inventory.img"
    );
    assert_eq!(tracer_pid(1), Some(0));
}

#[test]
fn dump_own_ancestor_refused() {
    let scratch = Scratch::new("self");
    let dir = scratch.subdir("img");
    let me = std::process::id().to_string();
    crust(&["dump", "-t", &me, "-D", s(&dir), "-R"]).fails();
    assert!(
        !dir.join("inventory.img").exists(),
        "failed dump left an inventory.img"
    );
    assert_eq!(tracer_pid(std::process::id() as i32), Some(0));
}

fn unsupported_refused(name: &str, what: &str, fds: [i32; 2]) {
    let mut w = Workload::start(name, &[]);
    let dir = w.images_dir("img");
    let r = dump(&w, &dir, &[]).fails().stderr_names(&[what]);
    assert!(
        fds.iter().any(|fd| r.stderr.contains(&fd.to_string())),
        "crust's stderr names neither fd {} nor {}:\n{}",
        fds[0],
        fds[1],
        r.describe()
    );
    assert!(
        !dir.join("inventory.img").exists(),
        "refused dump left an inventory.img"
    );
    assert!(w.is_alive(), "refused dump killed the task");
    wait_restored(w.pid, Duration::from_secs(5));
    w.terminate_and_check();
}

#[test]
fn pipe_with_data() {
    let mut w = Workload::start("pipe", &[]);
    dump_restore_check(&mut w);
}

#[test]
fn dump_socket_refused() {
    unsupported_refused("socket", "socket", SOCKET_FDS);
}

// ------------------------------------------------------------ bad restores

#[test]
fn restore_empty_dir() {
    let scratch = Scratch::new("empty");
    let dir = scratch.subdir("img");
    crust(&["restore", "-D", s(&dir), "-d"])
        .fails()
        .stderr_names(&["inventory.img"]);
}

#[test]
fn restore_nonexistent_dir() {
    let scratch = Scratch::new("nodir");
    let dir = scratch.join("no-such-dir");
    crust(&["restore", "-D", s(&dir), "-d"])
        .fails()
        .stderr_names(&["no-such-dir"]);
}

/// Dump a counter, spoil one image, restore: exit 1 naming the file, and
/// nothing left running with the pid.
fn restore_corrupted(prefix: &str, how: Corruption) {
    let mut w = Workload::start("counter", &[]);
    let dir = w.images_dir("img");
    dump(&w, &dir, &[]).ok();
    w.reap_original();
    let file = image_file(&dir, prefix);
    let name = file.file_name().unwrap().to_str().unwrap().to_string();
    corrupt(&file, how);
    eprintln!("corrupted {name}: {how:?}");
    restore(&w, &dir, &["-d"]).fails().stderr_names(&[&name]);
    assert_pid_free(w.pid);
}

macro_rules! corruption_tests {
    ($($test:ident: $prefix:literal, $how:ident;)*) => {
        $(
            #[test]
            fn $test() {
                restore_corrupted($prefix, Corruption::$how);
            }
        )*
    };
}

corruption_tests! {
    restore_inventory_missing: "inventory.img", Missing;
    restore_inventory_empty: "inventory.img", Empty;
    restore_inventory_half: "inventory.img", Half;
    restore_inventory_flip_magic: "inventory.img", FlipMagic;
    restore_inventory_flip_length: "inventory.img", FlipLength;
    restore_core_missing: "core-", Missing;
    restore_core_empty: "core-", Empty;
    restore_core_half: "core-", Half;
    restore_core_flip_magic: "core-", FlipMagic;
    restore_core_flip_length: "core-", FlipLength;
    restore_mm_missing: "mm-", Missing;
    restore_mm_empty: "mm-", Empty;
    restore_mm_half: "mm-", Half;
    restore_mm_flip_magic: "mm-", FlipMagic;
    restore_mm_flip_length: "mm-", FlipLength;
    restore_pagemap_missing: "pagemap-", Missing;
    restore_pagemap_empty: "pagemap-", Empty;
    restore_pagemap_half: "pagemap-", Half;
    restore_pagemap_flip_magic: "pagemap-", FlipMagic;
    restore_pagemap_flip_length: "pagemap-", FlipLength;
    restore_pages_missing: "pages-", Missing;
    restore_pages_empty: "pages-", Empty;
    restore_pages_half: "pages-", Half;
}

#[test]
fn restore_pid_taken() {
    let mut w = Workload::start("counter", &[]);
    let dir = w.images_dir("img");
    dump(&w, &dir, &["-R"]).ok();
    assert!(w.is_alive());
    let pid = w.pid.to_string();
    restore(&w, &dir, &["-d"]).fails().stderr_names(&[&pid]);
    assert!(w.is_alive(), "failed restore hurt the running original");
    wait_restored(w.pid, Duration::from_secs(5));
    w.terminate_and_check();
}

/// The dumped pid is still a zombie of the test (its parent) when the
/// restore starts: the restore waits, and goes on once the test reaps it
/// half a second later.
#[test]
fn restore_waits_for_a_zombie_holding_the_pid() {
    let mut w = Workload::start("counter", &[]);
    let dir = w.images_dir("img");
    dump(&w, &dir, &[]).ok();
    assert_eq!(
        pid_state(w.pid),
        Some('Z'),
        "the killed original is not our zombie"
    );
    let log = w.scratch.join("restore.log");
    let mut r = crust_spawn(&["restore", "-D", dir.to_str().unwrap(), "-d", "-v4"], &log);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        r.try_wait().unwrap().is_none(),
        "restore did not wait for the zombie"
    );
    w.reap_original();
    let st = wait_child(&mut r, Duration::from_secs(10));
    assert!(
        st.success(),
        "restore failed: {}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    w.mark_restored();
    wait_restored(w.pid, Duration::from_secs(10));
    w.terminate_and_check();
}

/// A zombie that is not reaped within the grace time: the restore fails,
/// naming the pid and the zombie's parent, and leaves nothing behind.
#[test]
fn restore_refuses_a_pid_held_by_an_unreaped_zombie() {
    let mut w = Workload::start("counter", &[]);
    let dir = w.images_dir("img");
    dump(&w, &dir, &[]).ok();
    let pid = w.pid.to_string();
    let me = std::process::id().to_string();
    let t0 = Instant::now();
    restore(&w, &dir, &["-d"])
        .fails()
        .stderr_names(&[&pid, "zombie", &me, "--new-pid-ns"]);
    assert!(
        t0.elapsed() >= Duration::from_secs(3),
        "gave up before the grace time"
    );
    assert_eq!(pid_state(w.pid), Some('Z'));
    w.reap_original();
    assert_pid_free(w.pid);
}

fn restore_with_changed_file(change: impl FnOnce(&Path), name: &str) {
    let (mut w, data) = start_files();
    let dir = w.images_dir("img");
    dump(&w, &dir, &[]).ok();
    w.reap_original();
    change(&data.join(name));
    restore(&w, &dir, &["-d"]).fails().stderr_names(&[name]);
    assert_pid_free(w.pid);
}

#[test]
fn restore_file_size_changed() {
    restore_with_changed_file(
        |p| {
            let mut d = fs::read(p).unwrap();
            d.extend_from_slice(b"grown after the dump");
            fs::write(p, d).unwrap();
        },
        files::RW_NAME,
    );
}

#[test]
fn restore_file_removed() {
    restore_with_changed_file(|p| fs::remove_file(p).unwrap(), files::RO_NAME);
}

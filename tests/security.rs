//! Privilege lines: a caller other than root dumps and restores only tasks
//! with its own ids; a restore of images someone other than a root caller
//! could have written opens and creates their paths only as the restored
//! task holding them could (unless --trust-image-paths). The workloads run
//! as users made up for the test (setpriv), and check their own state
//! after a restore.

use crust_tests::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use workloads::files::RW_NAME;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// setpriv's names of the capabilities, by number.
const CAP_NAMES: [&str; 41] = [
    "chown",
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",
];

/// setpriv arguments to run as `uid` (gid `uid`, no supplementary groups).
fn as_user(uid: u32) -> Vec<String> {
    let id = uid.to_string();
    ["--reuid", &id, "--regid", &id, "--clear-groups"]
        .map(String::from)
        .to_vec()
}

/// [`as_user`], keeping every capability of the test's bounding set as
/// ambient capabilities: a user allowed to run crust.
fn as_user_with_caps(uid: u32) -> Vec<String> {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let bnd = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    let mut caps = "+all".to_string();
    for (i, name) in CAP_NAMES.iter().enumerate() {
        if bnd >> i & 1 == 0 {
            caps.push_str(&format!(",-{name}"));
        }
    }
    let mut a = as_user(uid);
    a.extend([
        "--inh-caps".into(),
        caps.clone(),
        "--ambient-caps".into(),
        caps,
    ]);
    a
}

/// Start workload `name` (its args `args`) as `uid`, in a scratch dir all
/// may write, from a copy of its binary others can run.
fn start_as(uid: u32, scratch: Scratch, name: &str, args: &[&str]) -> Workload {
    fs::set_permissions(scratch.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let bin = copy_for_others(&workload_bin(name), scratch.path());
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let w = Workload::start_with(scratch, name, move |pidfile, outfile| {
        let mut c = Command::new("setpriv");
        c.args(as_user(uid))
            .arg(&bin)
            .arg(pidfile)
            .arg(outfile)
            .args(&args);
        c
    });
    // Its log (its stdout and stderr, opened by the harness) is the
    // user's, as if the user had started it.
    for e in fs::read_dir(w.scratch.path()).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::os::unix::fs::chown(&p, Some(uid), Some(uid)).unwrap();
        }
    }
    w
}

/// Workload `name` started as `uid` with a DIR argument (a folder of
/// `uid`'s in its scratch dir), dumped by root (the task is gone after);
/// returns it, its DIR and the images.
fn dumped_as(uid: u32, tag: &str, name: &str) -> (Workload, PathBuf, PathBuf) {
    let scratch = Scratch::new(tag);
    let data = scratch.subdir("data");
    std::os::unix::fs::chown(&data, Some(uid), Some(uid)).unwrap();
    let mut w = start_as(uid, scratch, name, &[s(&data)]);
    let dir = w.images_dir("img");
    dump(&w, &dir, &[]).ok();
    w.reap_original();
    assert_images_decode_fast(&dir);
    (w, data, dir)
}

/// Run crust (a copy in `scratch`) with `args` as `uid` with capabilities.
fn crust_as(uid: u32, crust_copy: &Path, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(as_user_with_caps(uid))
        .arg(crust_copy)
        .args(args)
        .output()
        .expect("run crust under setpriv")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Hand the images in `dir` over to `uid`, as when a user gives root a
/// dump to restore: no longer root's alone, so not trusted.
fn hand_over(dir: &Path, uid: u32) {
    std::os::unix::fs::chown(dir, Some(uid), Some(uid)).unwrap();
    for e in fs::read_dir(dir).unwrap() {
        std::os::unix::fs::chown(e.unwrap().path(), Some(uid), Some(uid)).unwrap();
    }
}

/// An images dir the test's made-up users may write.
fn open_images_dir(w: &Workload) -> PathBuf {
    let d = w.images_dir("img");
    fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
    d
}

/// A user with crust's capabilities but not root: refused to dump a root
/// task (which runs on untouched), refused to restore the root task's
/// images (nothing created); root does both afterwards.
#[test]
fn non_root_caller_refused_another_users_task() {
    const UID: u32 = 4241;
    let mut w = Workload::start("counter", &[]);
    let crust_copy = copy_for_others(&crust_bin(), w.scratch.path());
    let dir = open_images_dir(&w);
    let out = crust_as(
        UID,
        &crust_copy,
        &["dump", "-t", &w.pid.to_string(), "-D", s(&dir)],
    );
    let said = text(&out);
    assert!(!out.status.success(), "dump by uid {UID} passed: {said}");
    for needle in ["refusing to dump", "uid 0", "only root"] {
        assert!(said.contains(needle), "no {needle:?} in: {said}");
    }
    assert!(w.is_alive(), "the task died after a refused dump");
    wait_restored(w.pid, Duration::from_secs(5));
    assert!(
        !dir.join("inventory.img").exists(),
        "a refused dump left an inventory"
    );
    dump(&w, &dir, &[]).ok();
    w.reap_original();
    let out = crust_as(UID, &crust_copy, &["restore", "-D", s(&dir), "-d"]);
    let said = text(&out);
    assert!(!out.status.success(), "restore by uid {UID} passed: {said}");
    for needle in ["refusing to restore", "uid 0", "only root"] {
        assert!(said.contains(needle), "no {needle:?} in: {said}");
    }
    assert_pid_free(w.pid);
    restore_and_check(&mut w, &dir, &[]);
}

/// A user with crust's capabilities dumps and restores its own task
/// (regular files of its own open): the files are opened as that task, and
/// it checks its fds itself.
#[test]
fn non_root_caller_round_trip_of_its_own_task() {
    const UID: u32 = 4242;
    let scratch = Scratch::new("sec-own");
    let data = scratch.subdir("data");
    std::os::unix::fs::chown(&data, Some(UID), Some(UID)).unwrap();
    let mut w = start_as(UID, scratch, "files", &[s(&data)]);
    let crust_copy = copy_for_others(&crust_bin(), w.scratch.path());
    let dir = open_images_dir(&w);
    let out = crust_as(
        UID,
        &crust_copy,
        &["dump", "-t", &w.pid.to_string(), "-D", s(&dir)],
    );
    assert!(out.status.success(), "dump by uid {UID}: {}", text(&out));
    w.reap_original();
    assert_images_decode_fast(&dir);
    let out = crust_as(UID, &crust_copy, &["restore", "-D", s(&dir), "-d"]);
    assert!(out.status.success(), "restore by uid {UID}: {}", text(&out));
    w.mark_restored();
    wait_restored(w.pid, Duration::from_secs(10));
    let uid_line = fs::read_to_string(format!("/proc/{}/status", w.pid))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .map(String::from)
        .unwrap();
    assert_eq!(uid_line, format!("Uid:\t{UID}\t{UID}\t{UID}\t{UID}"));
    w.terminate_and_check();
}

/// A task of another user holds a deleted file; after the dump, its folder
/// becomes root's and the images are handed to that user. Root's restore
/// refuses to recreate the file there (the task could not), naming the path and whose identity it used, creates
/// nothing and leaves no process; with --trust-image-paths it is created
/// as CRIU would, and the task checks the file itself.
#[test]
fn deleted_file_where_the_task_cannot_write_refused() {
    const UID: u32 = 4243;
    let (mut w, data, dir) = dumped_as(UID, "sec-ghost", "ghost");
    hand_over(&dir, UID);
    std::os::unix::fs::chown(&data, Some(0), Some(0)).unwrap();
    fs::set_permissions(&data, fs::Permissions::from_mode(0o755)).unwrap();
    crust(&["restore", "-D", s(&dir), "-d"])
        .fails()
        .stderr_names(&[
            "ghost.dat",
            &format!("as restored pid {}", w.pid),
            &format!("fsuid {UID}"),
            "Permission denied",
            "--trust-image-paths",
        ]);
    assert_pid_free(w.pid);
    assert_eq!(
        fs::read_dir(&data).unwrap().count(),
        0,
        "a refused restore left a file in {}",
        data.display()
    );
    restore(&w, &dir, &["-d", "--trust-image-paths"]).ok();
    w.mark_restored();
    wait_restored(w.pid, Duration::from_secs(10));
    assert!(!data.join("ghost.dat").exists(), "the ghost path is left");
    w.terminate_and_check();
}

/// A task of another user holds its own file open for writing; after the
/// dump the file becomes root's, mode 0600 (its size and mtime unchanged),
/// and the images are handed to that user. Root's restore refuses to open it for the task; once the file is the
/// task's again, the same images restore (paths confined, opened as the
/// task) and the task checks its fds.
#[test]
fn file_the_task_can_no_longer_open_refused() {
    const UID: u32 = 4244;
    let (mut w, data, dir) = dumped_as(UID, "sec-reg", "files");
    hand_over(&dir, UID);
    let rw = data.join(RW_NAME);
    let mode = fs::metadata(&rw).unwrap().permissions().mode();
    std::os::unix::fs::chown(&rw, Some(0), Some(0)).unwrap();
    fs::set_permissions(&rw, fs::Permissions::from_mode(0o600)).unwrap();
    crust(&["restore", "-D", s(&dir), "-d"])
        .fails()
        .stderr_names(&[
            RW_NAME,
            &format!("as restored pid {}", w.pid),
            "Permission denied",
        ]);
    assert_pid_free(w.pid);
    std::os::unix::fs::chown(&rw, Some(UID), Some(UID)).unwrap();
    fs::set_permissions(&rw, fs::Permissions::from_mode(mode)).unwrap();
    restore_and_check(&mut w, &dir, &[]);
}

/// A hostile image: the path of a task's file rewritten to a root-only
/// file (here a copy made for the test, same size and mtime as the
/// original), in a folder anyone may write. Restoring it as root is
/// refused, as the task (another user) could not open it; the file is not
/// touched.
#[test]
fn image_path_rewritten_to_a_root_file_refused() {
    const UID: u32 = 4245;
    let (w, data, dir) = dumped_as(UID, "sec-hostile", "files");
    // A root-only folder with a file just like rw.txt.
    let secret_dir = w.scratch.subdir("root-only");
    fs::set_permissions(&secret_dir, fs::Permissions::from_mode(0o700)).unwrap();
    let secret = secret_dir.join("secret.txt");
    let rw = data.join(RW_NAME);
    fs::copy(&rw, &secret).unwrap();
    let mtime = fs::metadata(&rw).unwrap().modified().unwrap();
    fs::File::options()
        .write(true)
        .open(&secret)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let before = fs::read(&secret).unwrap();
    let files_img = dir.join("files.img");
    let mut files: Vec<crust_image::pb::FileEntry> =
        crust_image::read_entries(&files_img, crust_image::ImageKind::Files).unwrap();
    let mut rewritten = 0;
    for f in &mut files {
        if let Some(r) = f.reg.as_mut() {
            if r.name == s(&rw) {
                r.name = s(&secret).to_string();
                rewritten += 1;
            }
        }
    }
    assert_eq!(rewritten, 1, "rw.txt is not in files.img");
    crust_image::write_entries(&files_img, crust_image::ImageKind::Files, &files).unwrap();
    forget_manifest(&dir);
    // A folder anyone may write: its images are not trusted.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    crust(&["restore", "-D", s(&dir), "-d"])
        .fails()
        .stderr_names(&[
            "secret.txt",
            "Permission denied",
            "as restored pid",
            "writable by its group or others",
        ]);
    assert_pid_free(w.pid);
    assert_eq!(fs::read(&secret).unwrap(), before, "the root file changed");
}

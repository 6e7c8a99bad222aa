//! More single-process cases: shell jobs on a terminal, unprivileged tasks,
//! crust without root, full and unwritable image dirs, programs we did not
//! write, repeated --leave-running dumps.

use crust_tests::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Quote for sh: 'text', with embedded quotes escaped.
fn sh_quote(x: &str) -> String {
    format!("'{}'", x.replace('\'', r"'\''"))
}

/// `script -qfec CMD /dev/null`: CMD runs in `sh -c` in a new session whose
/// controlling terminal is a fresh pty (util-linux script).
fn script_cmd(cmd: &str) -> Command {
    let mut c = Command::new("script");
    c.env("SHELL", "/bin/sh").args(["-qfec", cmd, "/dev/null"]);
    c
}

/// Kills and reaps a background child on drop (a failing test leaves none).
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().unwrap()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

fn wait_file(path: &Path, timeout: Duration, what: impl Fn() -> String) -> String {
    let t0 = Instant::now();
    loop {
        if let Ok(t) = fs::read_to_string(path) {
            if t.ends_with('\n') {
                return t;
            }
        }
        assert!(
            t0.elapsed() < timeout,
            "{} not written within {timeout:?}: {}",
            path.display(),
            what()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The *.img files in `dir`.
fn images_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".img"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// In a pre_exec: mark every fd above 2 close-on-exec (what the test runner
/// leaked is not the program's state).
fn cloexec_above_2() -> std::io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;
    if unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// In a pre_exec: become uid/gid 1000 with the given supplementary groups.
fn drop_to_1000(groups: &'static [libc::gid_t]) -> impl FnMut() -> std::io::Result<()> {
    move || unsafe {
        if libc::setgroups(groups.len(), groups.as_ptr()) != 0
            || libc::setgid(1000) != 0
            || libc::setuid(1000) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

fn assert_untouched_and_passes(w: &mut Workload) {
    assert!(w.is_alive(), "a failed dump killed the task");
    wait_restored(w.pid, Duration::from_secs(5));
    w.terminate_and_check();
}

// ---------------------------------------------------------------- shell job

/// wl-tty under a pty (a job of script's shell, whose session leader is
/// outside the dumped tree).
fn start_tty() -> Workload {
    Workload::start_with(Scratch::new("tty"), "tty", |pidfile, outfile| {
        let cmd = format!(
            "{} {} {}; true",
            sh_quote(s(&workload_bin("tty"))),
            sh_quote(s(pidfile)),
            sh_quote(s(outfile))
        );
        script_cmd(&cmd)
    })
}

#[test]
fn tty_workload_passes_without_dump() {
    let mut w = start_tty();
    assert!(w.launched());
    std::thread::sleep(Duration::from_millis(200));
    w.terminate_and_check();
}

#[test]
fn shell_job() {
    let mut w = start_tty();
    let fd0 = fs::read_link(format!("/proc/{}/fd/0", w.pid)).unwrap();
    assert!(
        fd0.starts_with("/dev/pts"),
        "wl-tty's stdin is {}, not a pty",
        fd0.display()
    );

    // Without -j: refused, naming what is missing; the task runs on.
    let dir = w.images_dir("img");
    let r = dump(&w, &dir, &[]).fails();
    let low = r.stderr.to_lowercase();
    assert!(
        ["shell-job", "terminal", "session"]
            .iter()
            .any(|n| low.contains(n)),
        "the refusal names neither shell-job, terminal nor session:\n{}",
        r.describe()
    );
    assert!(
        !dir.join("inventory.img").exists(),
        "refused dump left an inventory.img"
    );
    assert!(w.is_alive(), "refused dump killed the task");
    wait_restored(w.pid, Duration::from_secs(5));

    // With -j: dumped (and killed).
    let dir = w.images_dir("img-j");
    dump(&w, &dir, &["-j"]).ok();
    w.reap_original();
    assert_images_decode(&dir);

    // Restore -j without a terminal on crust's stdio: refused, nothing left.
    restore(&w, &dir, &["-j", "-d"])
        .fails()
        .stderr_names(&["terminal"]);
    assert_pid_free(w.pid);

    // Restore -j from under a pty: the task gets that terminal.
    let rc = w.scratch.join("restore.rc");
    let done = w.scratch.join("restore.done");
    let rlog = w.scratch.join("restore.log");
    let rpid = w.scratch.join("restore.pid");
    let out = w.scratch.join("restore-script.out");
    let cmd = format!(
        "{} restore -D {} -j -d -v4 -o {} --pidfile {}; echo $? > {}; \
         while [ ! -e {} ]; do sleep 0.1; done",
        sh_quote(s(&crust_bin())),
        sh_quote(s(&dir)),
        sh_quote(s(&rlog)),
        sh_quote(s(&rpid)),
        sh_quote(s(&rc)),
        sh_quote(s(&done)),
    );
    let outf = fs::File::create(&out).unwrap();
    let mut guard = ChildGuard(Some(
        script_cmd(&cmd)
            .stdin(Stdio::null())
            .stdout(outf.try_clone().unwrap())
            .stderr(outf)
            .spawn()
            .expect("spawn script"),
    ));
    let logs = || {
        format!(
            "\n--- script output ---\n{}\n--- restore.log ---\n{}",
            fs::read_to_string(&out).unwrap_or_default(),
            fs::read_to_string(&rlog).unwrap_or_default()
        )
    };
    let code = wait_file(&rc, CRUST_TIMEOUT, logs);
    assert_eq!(
        code.trim(),
        "0",
        "crust restore -j under a pty failed:{}",
        logs()
    );
    w.mark_restored();
    wait_restored(w.pid, Duration::from_secs(10));
    let fd0 = fs::read_link(format!("/proc/{}/fd/0", w.pid)).unwrap();
    assert!(
        fd0.starts_with("/dev/pts"),
        "restored wl-tty's stdin is {}, not a pty",
        fd0.display()
    );
    w.terminate_and_check();
    fs::write(&done, b"").unwrap();
    let st = wait_child(guard.child(), Duration::from_secs(10));
    assert!(st.success(), "script ended with {st}:{}", logs());
    let shown = fs::read_to_string(&out).unwrap_or_default();
    assert!(
        shown.contains("wl-tty: stdout still works"),
        "the restored task's writes did not reach the new terminal:{}",
        logs()
    );
}

// --------------------------------------------------------- unprivileged task

fn status_ids(pid: i32) -> Vec<String> {
    let st = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    st.lines()
        .filter(|l| l.starts_with("Uid:") || l.starts_with("Gid:") || l.starts_with("Groups:"))
        .map(String::from)
        .collect()
}

#[test]
fn unprivileged_task() {
    let scratch = Scratch::new("uid1000");
    fs::set_permissions(scratch.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let bin = copy_for_others(&workload_bin("counter"), scratch.path());
    let mut w = Workload::start_with(scratch, "counter", |pidfile, outfile| {
        let mut c = Command::new(&bin);
        c.arg(pidfile).arg(outfile);
        unsafe { c.pre_exec(drop_to_1000(&[1000, 27])) };
        c
    });
    assert!(!w.launched());
    let before = status_ids(w.pid);
    eprintln!("before: {before:?}");
    assert!(
        before
            .iter()
            .any(|l| l.starts_with("Uid:") && l.contains("1000")),
        "{before:?}"
    );
    let dir = w.images_dir("img");
    dump(&w, &dir, &[]).ok();
    w.reap_original();
    assert_images_decode(&dir);
    restore(&w, &dir, &["-d"]).ok();
    w.mark_restored();
    wait_restored(w.pid, Duration::from_secs(10));
    let after = status_ids(w.pid);
    assert_eq!(before, after, "credentials differ after restore");
    w.terminate_and_check();
}

// ------------------------------------------------------ crust without root

#[test]
fn crust_not_root() {
    let mut w = Workload::start("counter", &[]);
    let dir = w.images_dir("img");
    let pid = w.pid.to_string();
    let bin_dir = w.images_dir("bin");
    let bin = copy_for_others(&crust_bin(), &bin_dir);
    crust_bin_with(&bin, &["dump", "-t", &pid, "-D", s(&dir)], |c| unsafe {
        c.pre_exec(drop_to_1000(&[1000]));
    })
    .fails()
    .stderr_names(&["root"]);
    assert_eq!(tracer_pid(w.pid), Some(0), "crust left the task traced");
    assert!(
        !dir.join("inventory.img").exists(),
        "refused dump left an inventory.img"
    );
    // Restore refuses too (and touches nothing).
    let dir2 = w.images_dir("img2");
    dump(&w, &dir2, &["-R"]).ok();
    crust_bin_with(&bin, &["restore", "-D", s(&dir2), "-d"], |c| unsafe {
        c.pre_exec(drop_to_1000(&[1000]));
    })
    .fails()
    .stderr_names(&["root"]);
    assert_untouched_and_passes(&mut w);
}

// ---------------------------------------------------------------- disk full

/// A mount, lazily unmounted on drop.
struct MountGuard(PathBuf);

impl MountGuard {
    fn mount(args: &[&str], target: &Path) -> MountGuard {
        let st = Command::new("mount")
            .args(args)
            .arg(target)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount {args:?} {}: {st}", target.display());
        MountGuard(target.to_path_buf())
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn dump_disk_full() {
    let mut w = Workload::start("memory", &["64"]);
    let full = w.images_dir("full");
    let _m = MountGuard::mount(&["-t", "tmpfs", "-o", "size=2m", "tmpfs"], &full);
    let dir = full.join("img");
    fs::create_dir(&dir).unwrap();
    dump(&w, &dir, &[]).fails().stderr_names(&["space"]);
    assert!(
        !dir.join("inventory.img").exists(),
        "failed dump left an inventory.img"
    );
    let left = images_in(&dir);
    assert!(left.is_empty(), "failed dump left images: {left:?}");
    assert_untouched_and_passes(&mut w);
}

// -------------------------------------------------------- unwritable dir

#[test]
fn dump_images_dir_is_a_file() {
    let mut w = Workload::start("counter", &[]);
    let file = w.scratch.join("img");
    fs::write(&file, b"not a dir\n").unwrap();
    dump(&w, &file, &[]).fails().stderr_names(&["img"]);
    assert_eq!(fs::read(&file).unwrap(), b"not a dir\n");
    assert_untouched_and_passes(&mut w);
}

#[test]
fn dump_images_dir_read_only() {
    let mut w = Workload::start("counter", &[]);
    let rw = w.images_dir("rw");
    fs::create_dir(rw.join("img")).unwrap();
    let ro = w.images_dir("ro");
    let _m = MountGuard::mount(&["--bind", s(&rw)], &ro);
    let _r = MountGuard::mount(&["-o", "remount,bind,ro"], &ro);
    let dir = ro.join("img");
    // As root, permissions would not stop us: the mount must.
    assert!(fs::write(dir.join("probe"), b"x").is_err());
    dump(&w, &dir, &[]).fails().stderr_names(&["read-only"]);
    let left = images_in(&rw.join("img"));
    assert!(left.is_empty(), "images written through? {left:?}");
    assert_untouched_and_passes(&mut w);
}

// ------------------------------------------------- programs we did not write

const PY_SCRIPT: &str = r#"
import os, sys, time, hashlib
os.setsid()
pidfile, outfile, stop = sys.argv[1:4]
d = {"k%d" % i: [i, i * i, str(i)] for i in range(2000)}
l = list(range(100000))
text = "crust " * 20000
def csum():
    h = hashlib.sha256()
    h.update(repr(sorted(d.items())).encode())
    h.update(repr(l).encode())
    h.update(text.encode())
    return h.hexdigest()
before = csum()
pid = os.getpid()
with open(pidfile + ".tmp", "w") as f:
    f.write("%d\n" % pid)
os.rename(pidfile + ".tmp", pidfile)
n = 0
while not os.path.exists(stop):
    time.sleep(0.05)
    n += 1
fails = []
if csum() != before: fails.append("checksum changed")
if os.getpid() != pid: fails.append("getpid %d, was %d" % (os.getpid(), pid))
if os.getsid(0) != pid: fails.append("getsid %d" % os.getsid(0))
if sum(l) != 4999950000: fails.append("sum of list")
if n < 1: fails.append("loop never slept")
with open(outfile + ".tmp", "w") as f:
    f.write("PASS\n" if not fails else "FAIL: " + "; ".join(fails) + "\n")
os.rename(outfile + ".tmp", outfile)
"#;

fn python3() -> PathBuf {
    // The system one, not a version manager's shim script.
    ["/usr/bin/python3", "/usr/local/bin/python3"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("python3"))
}

#[test]
fn python3_program() {
    let scratch = Scratch::new("python");
    let stop = scratch.join("STOP");
    let stop2 = stop.clone();
    let mut w = Workload::start_with(scratch, "python3", move |pidfile, outfile| {
        let mut c = Command::new(python3());
        c.args(["-c", PY_SCRIPT])
            .arg(pidfile)
            .arg(outfile)
            .arg(&stop2)
            .env("PYTHONDONTWRITEBYTECODE", "1");
        unsafe { c.pre_exec(cloexec_above_2) };
        c
    });
    let fds: Vec<String> = fs::read_dir(format!("/proc/{}/fd", w.pid))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| {
            format!(
                "{} -> {}",
                e.file_name().to_string_lossy(),
                fs::read_link(e.path())
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            )
        })
        .collect();
    eprintln!("python3 fds: {fds:?}");
    let dir = w.images_dir("img");
    dump(&w, &dir, &[]).ok();
    w.reap_original();
    assert_images_decode(&dir);
    restore(&w, &dir, &["-d"]).ok();
    w.mark_restored();
    wait_restored(w.pid, Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(200));
    fs::write(&stop, b"").unwrap();
    w.check_outcome();
}

#[test]
fn shell_loop_with_children() {
    become_subreaper();
    let scratch = Scratch::new("shloop");
    let file = scratch.join("file");
    let mut c = Command::new("sh");
    c.args([
        "-c",
        "i=0; while :; do i=$((i+1)); echo $i > file; sleep 0.1; done",
    ])
    .current_dir(scratch.path())
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    unsafe {
        c.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            cloexec_above_2()
        })
    };
    let mut sh = ChildGuard(Some(c.spawn().expect("spawn sh")));
    let pid = sh.child().id() as i32;
    let count = || -> u64 {
        fs::read_to_string(&file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    };
    let t0 = Instant::now();
    while count() < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "sh loop not running"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The shell and its `sleep` child are one tree: dump it whole (the
    // default kill), then restore it and watch the loop go on.
    let dir = scratch.subdir("img");
    crust(&["dump", "-t", &pid.to_string(), "-D", s(&dir)]).ok();
    assert_images_decode(&dir);
    let c_dump = count();
    let _ = sh.child().wait();
    sh.0.take();
    let tree: Vec<i32> = tree_pids(&dir);
    for &p in &tree {
        wait_pid_free(p, Duration::from_secs(10));
    }
    crust(&["restore", "-D", s(&dir), "-d"]).ok();
    let t0 = Instant::now();
    while count() <= c_dump + 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the restored shell does not count on (at {}, dumped at {c_dump})",
            count()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Kill its whole group (the shell and its sleep) and reap them.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    for &p in &tree {
        wait_pid_free(p, Duration::from_secs(10));
    }
    wait_pid_free(pid, Duration::from_secs(10));
}

// ---------------------------------------------- repeated --leave-running

#[test]
fn leave_running_twice() {
    let mut w = Workload::start("counter", &[]);
    let d1 = w.images_dir("img1");
    let d2 = w.images_dir("img2");
    dump(&w, &d1, &["-R"]).ok();
    assert!(w.is_alive());
    wait_restored(w.pid, Duration::from_secs(5));
    dump(&w, &d2, &["-R"]).ok();
    assert!(w.is_alive());
    wait_restored(w.pid, Duration::from_secs(5));
    assert_images_decode(&d1);
    assert_images_decode(&d2);
    w.kill_and_reap();
    restore(&w, &d2, &["-d"]).ok();
    w.mark_restored();
    wait_restored(w.pid, Duration::from_secs(10));
    w.terminate_and_check();
}

/// A private mapping the kernel refuses (its flags rewritten in the image
/// to MAP_SHARED_VALIDATE with a flag no kernel knows): the restore fails naming that mmap
/// and its range, though it ran in a batch with the process's other
/// mappings, and leaves nothing behind; the images put back restore.
#[test]
fn refused_mapping_in_a_batch_is_named() {
    use crust_image::{names, pb, ImageKind};
    let mut w = Workload::start("counter", &[]);
    let dir = w.images_dir("img");
    dump(&w, &dir, &[]).ok();
    w.reap_original();
    let mm_name = names::mm(w.pid as u32);
    let path = dir.join(&mm_name);
    let orig = fs::read(&path).unwrap();
    let mut mm: Vec<pb::MmEntry> = crust_image::read_entries(&path, ImageKind::Mm).unwrap();
    // The last private anonymous VMA (the stack is one).
    const VMA_ANON_PRIVATE: u32 = 1 << 9;
    let v = mm[0]
        .vmas
        .iter_mut()
        .rev()
        .find(|v| v.status & VMA_ANON_PRIVATE != 0 && v.status & 1 != 0)
        .expect("a private anonymous VMA");
    v.flags = (v.flags & !0xf) | 0x03 | 0x0200_0000;
    let range = format!("mmap of {:#x}-{:#x}", v.start, v.end);
    crust_image::write_entries(&path, ImageKind::Mm, &mm).unwrap();
    forget_manifest(&dir);
    restore(&w, &dir, &["-d"]).fails().stderr_names(&[
        &range,
        &format!("in pid {}", w.pid),
        "os error",
    ]);
    assert_pid_free(w.pid);
    fs::write(&path, orig).unwrap();
    restore_and_check(&mut w, &dir, &[]);
}

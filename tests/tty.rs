//! Terminals: a pty pair with a session on its slave (termios, window
//! size, packet mode, lock, exclusive mode, controlling terminal,
//! foreground group, /dev/tty, job control signals) round trip; python's
//! pty module in a program crust did not write; data queued in a pty is
//! refused at dump, naming it, and the task runs on; with --shell-job, a
//! job that was the foreground of the shell's terminal is the foreground
//! of the restoring crust's terminal.

use crust_tests::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
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
    crust(&["show", s(file)]).ok().stdout
}

#[test]
fn pty_pass_without_dump() {
    let mut w = Workload::start("pty", &[]);
    w.terminate_and_check();
}

#[test]
fn pty_session_round_trip() {
    let mut w = Workload::start("pty", &[]);
    let img = w.images_dir("img");
    dump_and_restore(&mut w, &img);
    let files = crit_show(&img.join("files.img"));
    assert!(
        files.contains("TTY"),
        "files.img has no TTY entry:\n{files}"
    );
    let info = crit_show(&img.join("tty-info.img"));
    for want in ["PTY", "CTTY", "packet_mode", "termios_locked", "winsize"] {
        assert!(info.contains(want), "tty-info.img lacks {want}:\n{info}");
    }
    w.terminate_and_check();
}

/// Copy the image folder `from` to `to`.
fn copy_images(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn bad_tty_images_refused_then_restored() {
    let mut w = Workload::start("pty", &[]);
    let img = w.images_dir("img");
    dump(&w, &img, &[]).ok();
    w.reap_original();
    for pid in tree_pids(&img) {
        wait_pid_free(pid, Duration::from_secs(10));
    }
    for how in [
        Corruption::Missing,
        Corruption::Empty,
        Corruption::Half,
        Corruption::FlipMagic,
        Corruption::FlipLength,
    ] {
        let bad = w.images_dir(&format!("bad-{how:?}"));
        copy_images(&img, &bad);
        corrupt(&bad.join("tty-info.img"), how);
        restore(&w, &bad, &["-d"])
            .fails()
            .stderr_names(&["tty-info"]);
        for pid in tree_pids(&img) {
            assert_pid_free(pid);
        }
    }
    restore(&w, &img, &["-d"]).ok();
    w.mark_restored();
    wait_restored(w.pid, Duration::from_secs(10));
    w.terminate_and_check();
}

/// The pids whose parent is `ppid`.
fn children_of(ppid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        if after.split(' ').nth(1).and_then(|p| p.parse().ok()) == Some(ppid) {
            out.push(pid);
        }
    }
    out
}

#[test]
fn session_on_a_pty_whose_master_is_outside_refused() {
    let mut w = Workload::start("pty", &[]);
    let kids = children_of(w.pid);
    assert_eq!(kids.len(), 1, "wl-pty has children {kids:?}");
    let img = w.images_dir("img");
    let r = crust(&["dump", "-t", &kids[0].to_string(), "-D", s(&img)]).fails();
    let low = r.stderr.to_lowercase();
    assert!(
        low.contains("terminal") && low.contains("master"),
        "the refusal does not name the terminal and its master:\n{}",
        r.describe()
    );
    assert!(w.is_alive(), "refused dump killed the task");
    wait_restored(kids[0], Duration::from_secs(5));
    w.terminate_and_check();
}

#[test]
fn pty_with_queued_data_refused() {
    let mut w = Workload::start("pty", &["queued"]);
    let img = w.images_dir("img");
    let r = dump(&w, &img, &[]).fails();
    let low = r.stderr.to_lowercase();
    assert!(
        low.contains("pty") && low.contains("bytes") && low.contains("queued"),
        "the refusal does not name the queued data of the pty:\n{}",
        r.describe()
    );
    assert!(
        !img.join("inventory.img").exists(),
        "refused dump left an inventory.img"
    );
    assert!(w.is_alive(), "refused dump killed the task");
    wait_restored(w.pid, Duration::from_secs(5));
    w.terminate_and_check();
}

/// python3 holding a pty made by its pty module (pty.fork), with an echo
/// loop in the child, whose controlling terminal is the slave.
const PY_PTY: &str = r#"
import os, pty, select, signal, sys, time
pidfile, outfile = sys.argv[1], sys.argv[2]
os.setsid()
term = []
signal.signal(signal.SIGTERM, lambda *a: term.append(1))
pid, fd = pty.fork()
if pid == 0:
    while True:
        line = sys.stdin.readline()
        if not line:
            os._exit(0)
        sys.stdout.write("py:" + line)
        sys.stdout.flush()

def exchange(word):
    os.write(fd, (word + "\n").encode())
    want = ("py:" + word + "\r\n").encode()
    buf, t = b"", time.time()
    while want not in buf and time.time() - t < 5:
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            buf += os.read(fd, 1024)
    return want in buf, buf

ok, buf = exchange("before")
if not ok:
    open(outfile, "w").write("FAIL: no echo before the dump: %r\n" % buf)
    sys.exit(1)
with open(pidfile + ".tmp", "w") as f:
    f.write("%d\n" % os.getpid())
os.rename(pidfile + ".tmp", pidfile)
while not term:
    time.sleep(0.02)
ok, buf = exchange("after")
sid = os.getsid(pid)
os.kill(pid, signal.SIGKILL)
os.waitpid(pid, 0)
if ok and sid == pid:
    result = "PASS\n"
else:
    result = "FAIL: echo %r, child's session %d (not %d)\n" % (buf, sid, pid)
with open(outfile + ".tmp", "w") as f:
    f.write(result)
os.rename(outfile + ".tmp", outfile)
"#;

/// The real python3 binary (not a pyenv shim script), if there is one.
fn python3() -> Option<String> {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .ok()?;
    let p = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !p.is_empty()).then_some(p)
}

#[test]
fn python_pty_module_round_trip() {
    let Some(py) = python3() else {
        eprintln!("no python3 here: skipped");
        return;
    };
    let scratch = Scratch::new("py-pty");
    let script = scratch.join("pty_echo.py");
    std::fs::write(&script, PY_PTY).unwrap();
    let mut w = Workload::start_with(scratch, "py-pty", |pidfile, outfile| {
        let mut c = Command::new(&py);
        c.arg(&script).arg(pidfile).arg(outfile);
        c
    });
    let img = w.images_dir("img");
    dump_and_restore(&mut w, &img);
    w.terminate_and_check();
}

/// Quote for sh.
fn sh_quote(x: &str) -> String {
    format!("'{}'", x.replace('\'', r"'\''"))
}

/// `script -qfec CMD /dev/null`: CMD in `sh -c`, in a new session on a
/// fresh pty.
fn script_cmd(cmd: &str) -> Command {
    let mut c = Command::new("script");
    c.env("SHELL", "/bin/sh").args(["-qfec", cmd, "/dev/null"]);
    c
}

/// Kills and reaps a background child on drop.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn wait_line(path: &Path, timeout: Duration, what: impl Fn() -> String) -> String {
    let t0 = Instant::now();
    loop {
        if let Ok(t) = std::fs::read_to_string(path) {
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

#[test]
fn shell_job_foreground_round_trip() {
    let mut w = Workload::start_with(Scratch::new("tty-fg"), "tty", |pidfile, outfile| {
        let cmd = format!(
            "{} {} {} foreground; true",
            sh_quote(s(&workload_bin("tty"))),
            sh_quote(s(pidfile)),
            sh_quote(s(outfile))
        );
        script_cmd(&cmd)
    });
    let img = w.images_dir("img");
    dump(&w, &img, &["-j"]).ok();
    w.reap_original();
    wait_pid_free(w.pid, Duration::from_secs(10));
    assert_images_decode(&img);
    let info = crit_show(&img.join("tty-info.img"));
    assert!(
        info.contains("EXT_TTY"),
        "no entry for the shell's terminal:\n{info}"
    );

    let rc = w.scratch.join("restore.rc");
    let done = w.scratch.join("restore.done");
    let rlog = w.scratch.join("restore.log");
    let out = w.scratch.join("restore-script.out");
    let cmd = format!(
        "{} restore -D {} -j -d -v4 -o {}; echo $? > {}; while [ ! -e {} ]; do sleep 0.1; done",
        sh_quote(s(&crust_bin())),
        sh_quote(s(&img)),
        sh_quote(s(&rlog)),
        sh_quote(s(&rc)),
        sh_quote(s(&done)),
    );
    let outf = std::fs::File::create(&out).unwrap();
    let _guard = ChildGuard(
        script_cmd(&cmd)
            .stdin(Stdio::null())
            .stdout(outf.try_clone().unwrap())
            .stderr(outf)
            .spawn()
            .expect("spawn script"),
    );
    let logs = || {
        format!(
            "\n--- script output ---\n{}\n--- restore.log ---\n{}",
            std::fs::read_to_string(&out).unwrap_or_default(),
            std::fs::read_to_string(&rlog).unwrap_or_default()
        )
    };
    let code = wait_line(&rc, Duration::from_secs(30), logs);
    assert_eq!(
        code.trim(),
        "0",
        "crust restore -j under a pty failed:{}",
        logs()
    );
    w.mark_restored();
    wait_restored(w.pid, Duration::from_secs(10));
    w.terminate_and_check();
    std::fs::write(&done, b"").unwrap();
}

//! Terminals: a pty pair with a session on its slave (termios, window
//! size, packet mode, lock, exclusive mode, controlling terminal,
//! foreground group, /dev/tty, job control signals) round trip; python's
//! pty module in a program crust did not write; data queued in a pty is
//! refused at dump, naming it, and the task runs on.

use crust_tests::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

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

//! wl-zombie: unreaped children.
//!
//! The root forks three children that end at once: one exits 0, one exits 7,
//! one kills itself with SIGKILL; and a fourth that lives and has a zombie
//! child of its own (exit 3). Nobody reaps before ready: the root waits
//! until /proc/PID/stat of every zombie shows state Z.
//!
//! After SIGTERM: every zombie is still a zombie with the same parent; the
//! root reaps each with waitpid(pid) and checks its status (exited 0, exited
//! 7, killed by SIGKILL); it forwards SIGTERM to the fourth child, which
//! reaps its own zombie (exited 3) and exits 0 if all was right, and the
//! root checks that exit code (and CHILD-OUT-<pid> for details).

use std::path::Path;
use workloads::{die, raw_getpid, terminated, Checker};

/// State letter and ppid from /proc/PID/stat.
fn stat_of(pid: i32) -> Option<(char, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(')')?.1;
    let mut it = rest.split_whitespace();
    let st = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    Some((st, ppid))
}

fn wait_zombie(pid: i32) {
    let t0 = std::time::Instant::now();
    while stat_of(pid).map(|s| s.0) != Some('Z') {
        if t0.elapsed() > std::time::Duration::from_secs(5) {
            die(&format!("child {pid} did not become a zombie"));
        }
        workloads::sleep_ms(2);
    }
}

fn fork_or_die() -> i32 {
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        die(&format!("fork: {}", std::io::Error::last_os_error()));
    }
    pid
}

fn describe(st: i32) -> String {
    if libc::WIFEXITED(st) {
        format!("exited {}", libc::WEXITSTATUS(st))
    } else if libc::WIFSIGNALED(st) {
        format!("killed by signal {}", libc::WTERMSIG(st))
    } else {
        format!("status {st:#x}")
    }
}

/// Check that `pid` is still our zombie, reap it and compare its status.
fn reap_check(c: &mut Checker, me: i32, pid: i32, want: &str) {
    match stat_of(pid) {
        Some(('Z', pp)) => c.eq(&format!("zombie {pid}'s ppid"), me, pp),
        other => c.fail(format!("child {pid} is not a zombie any more: {other:?}")),
    }
    let mut st = 0;
    let r = unsafe { libc::waitpid(pid, &mut st, 0) };
    if r != pid {
        c.fail(format!(
            "waitpid({pid}) = {r}: {}",
            std::io::Error::last_os_error()
        ));
        return;
    }
    c.eq(&format!("status of {pid}"), want.to_string(), describe(st));
}

fn main() {
    let p = workloads::init();
    let dir = Path::new(&p.outfile)
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let me = raw_getpid();
    let z0 = fork_or_die();
    if z0 == 0 {
        unsafe { libc::_exit(0) };
    }
    let z7 = fork_or_die();
    if z7 == 0 {
        unsafe { libc::_exit(7) };
    }
    let zk = fork_or_die();
    if zk == 0 {
        unsafe {
            libc::raise(libc::SIGKILL);
            libc::_exit(99);
        }
    }
    let mid = fork_or_die();
    if mid == 0 {
        let mid_pid = raw_getpid();
        let gz = fork_or_die();
        if gz == 0 {
            unsafe { libc::_exit(3) };
        }
        wait_zombie(gz);
        let _ = std::fs::write(dir.join("zombie-mid-ready"), format!("{gz}\n"));
        while !terminated() {
            workloads::sleep_ms(10);
        }
        let mut c = Checker::new();
        c.eq("mid child's ppid", me, unsafe { libc::getppid() });
        reap_check(&mut c, mid_pid, gz, "exited 3");
        let text = match c.into_result() {
            Ok(()) => "PASS\n".to_string(),
            Err(e) => format!("FAIL (pid {mid_pid}): {e}\n"),
        };
        let _ = std::fs::write(dir.join(format!("CHILD-OUT-{mid_pid}")), &text);
        unsafe { libc::_exit(if text == "PASS\n" { 0 } else { 1 }) };
    }
    for z in [z0, z7, zk] {
        wait_zombie(z);
    }
    let t0 = std::time::Instant::now();
    while !dir.join("zombie-mid-ready").exists() {
        if t0.elapsed() > std::time::Duration::from_secs(5) {
            die("the middle child is not ready");
        }
        workloads::sleep_ms(2);
    }
    eprintln!("zombies {z0} (0) {z7} (7) {zk} (SIGKILL); mid {mid} with a zombie");
    p.ready();
    while !terminated() {
        workloads::sleep_ms(10);
    }
    let mut c = Checker::new();
    unsafe { libc::kill(mid, libc::SIGTERM) };
    reap_check(&mut c, me, z0, "exited 0");
    reap_check(&mut c, me, z7, "exited 7");
    reap_check(
        &mut c,
        me,
        zk,
        &format!("killed by signal {}", libc::SIGKILL),
    );
    let mut st = 0;
    let r = unsafe { libc::waitpid(mid, &mut st, 0) };
    if r != mid {
        c.fail(format!("waitpid({mid}) = {r}"));
    } else if describe(st) != "exited 0" {
        let details = std::fs::read_to_string(dir.join(format!("CHILD-OUT-{mid}")))
            .unwrap_or_else(|e| format!("no CHILD-OUT: {e}"));
        c.fail(format!(
            "mid child {mid} {}: {}",
            describe(st),
            details.trim()
        ));
    }
    p.finish(c.into_result());
}

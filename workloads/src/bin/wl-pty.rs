//! wl-pty: a pty pair and a session on it. The root P holds the master
//! (fd 30) in packet mode, with a window size, and locks the slave again
//! once its child has it. Child C is a session leader whose controlling
//! terminal is the slave (fds 0-2 and 31, /dev/tty at fd 32), in exclusive
//! mode with its own termios (TOSTOP among them); grandchild G leads
//! another group of C's session, the terminal's foreground group, and
//! grandchild B a third one, in the background.
//!
//! After SIGTERM, P checks the master (packet mode, lock, window size,
//! termios), that the locked slave cannot be opened and, unlocked, is the
//! terminal C has; then C checks the slave (termios, exclusive mode, its
//! session and foreground group, /dev/tty); B checks that job control
//! stops a background group: reading gives it SIGTTIN, writing (TOSTOP)
//! SIGTTOU; then G, in the foreground, gets SIGWINCH when P resizes, reads the line
//! P writes to the master and answers through the pty, while P sees the
//! echo and the answer come out of the master, each packet led by
//! TIOCPKT_DATA.
//!
//! With `queued`, P writes a line to the master that nobody reads before
//! it says ready (a dump must refuse it); after SIGTERM the family just
//! ends, PASS.

use std::sync::atomic::{AtomicU32, Ordering};

use workloads::{child_finish, die, reap_child, scratch_dir, touch, wait_file, Checker};

const MASTER: i32 = 30;
const SLAVE: i32 = 31;
const DEV_TTY: i32 = 32;
/// The status byte of a packet of data (packet mode).
const TIOCPKT_DATA: u8 = 0;

static WINCH: AtomicU32 = AtomicU32::new(0);
static TTIN: AtomicU32 = AtomicU32::new(0);
static TTOU: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_winch(_: i32) {
    WINCH.fetch_add(1, Ordering::SeqCst);
}
extern "C" fn on_ttin(_: i32) {
    TTIN.fetch_add(1, Ordering::SeqCst);
}
extern "C" fn on_ttou(_: i32) {
    TTOU.fetch_add(1, Ordering::SeqCst);
}

fn handle(sig: i32, f: extern "C" fn(i32)) {
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = f as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
            die("sigaction");
        }
    }
}

fn termios(fd: i32) -> libc::termios2 {
    unsafe {
        let mut t: libc::termios2 = std::mem::zeroed();
        if libc::ioctl(fd, libc::TCGETS2, &mut t) != 0 {
            die(&format!("TCGETS2 on fd {fd}"));
        }
        t
    }
}

/// termios2 as comparable text.
fn show(t: &libc::termios2) -> String {
    format!(
        "iflag {:#o} oflag {:#o} cflag {:#o} lflag {:#o} line {} cc {:?} speeds {}/{}",
        t.c_iflag, t.c_oflag, t.c_cflag, t.c_lflag, t.c_line, t.c_cc, t.c_ispeed, t.c_ospeed
    )
}

fn winsize(fd: i32) -> (u16, u16, u16, u16) {
    unsafe {
        let mut w: libc::winsize = std::mem::zeroed();
        libc::ioctl(fd, libc::TIOCGWINSZ, &mut w);
        (w.ws_row, w.ws_col, w.ws_xpixel, w.ws_ypixel)
    }
}

fn set_winsize(fd: i32, w: (u16, u16, u16, u16)) {
    let k = libc::winsize {
        ws_row: w.0,
        ws_col: w.1,
        ws_xpixel: w.2,
        ws_ypixel: w.3,
    };
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &k) } != 0 {
        die("TIOCSWINSZ");
    }
}

fn int_ioctl(fd: i32, req: libc::Ioctl) -> i32 {
    let mut v = -1;
    unsafe { libc::ioctl(fd, req, &mut v) };
    v
}

fn rdev(fd: i32) -> u64 {
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut st);
        st.st_rdev
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Before a child reports: its stderr is the pty, where a background or
/// orphaned group cannot write; the report goes to its file only.
fn finish_child(dir: &std::path::Path, c: Checker) -> ! {
    let null = open_path("/dev/null", libc::O_WRONLY);
    unsafe { libc::dup2(null, 2) };
    child_finish(dir, c)
}

fn slave_path(master: i32) -> String {
    format!("/dev/pts/{}", int_ioctl(master, libc::TIOCGPTN))
}

fn open_path(path: &str, flags: i32) -> i32 {
    let c = std::ffi::CString::new(path).unwrap();
    unsafe { libc::open(c.as_ptr(), flags) }
}

const WINSIZE: (u16, u16, u16, u16) = (33, 101, 808, 660);
const NEW_WINSIZE: (u16, u16, u16, u16) = (40, 120, 960, 800);

/// G: the foreground group's leader.
fn grandchild(dir: &std::path::Path) -> ! {
    handle(libc::SIGWINCH, on_winch);
    touch(dir, "g-ready");
    workloads::wait_for_term();
    let mut c = Checker::new();
    let me = unsafe { libc::getpgrp() };
    c.eq("G: foreground group", me, unsafe { libc::tcgetpgrp(0) });
    c.eq(
        "G: SIGWINCH before the resize",
        0,
        WINCH.load(Ordering::SeqCst),
    );
    touch(dir, "g-waiting");
    let t0 = std::time::Instant::now();
    while WINCH.load(Ordering::SeqCst) == 0 && t0.elapsed().as_secs() < 5 {
        workloads::sleep_ms(2);
    }
    c.eq(
        "G: SIGWINCH after the resize",
        1,
        WINCH.load(Ordering::SeqCst),
    );
    c.eq("G: new window size", NEW_WINSIZE, winsize(0));
    let mut buf = [0u8; 64];
    let n = unsafe { libc::read(0, buf.as_mut_ptr() as *mut _, buf.len()) };
    let line = &buf[..n.max(0) as usize];
    c.eq("G: line read from the terminal", &b"hello\n"[..], line);
    let answer = b"got:hello\n";
    let w = unsafe { libc::write(1, answer.as_ptr() as *const _, answer.len()) };
    c.eq("G: answer written", answer.len() as isize, w);
    finish_child(dir, c)
}

/// B: the leader of a background group (not orphaned: its parent C is in
/// the session, in another group).
fn background(dir: &std::path::Path) -> ! {
    handle(libc::SIGTTIN, on_ttin);
    handle(libc::SIGTTOU, on_ttou);
    touch(dir, "b-ready");
    workloads::wait_for_term();
    let mut c = Checker::new();
    let mut b = [0u8; 8];
    let r = unsafe { libc::read(0, b.as_mut_ptr() as *mut _, 1) };
    let e = errno();
    c.check(r < 0 && e == libc::EINTR, || {
        format!("B: background read gave {r} (errno {e}), not EINTR")
    });
    c.eq(
        "B: SIGTTIN on a background read",
        1,
        TTIN.load(Ordering::SeqCst),
    );
    let r = unsafe { libc::write(1, b"x".as_ptr() as *const _, 1) };
    let e = errno();
    c.check(r < 0 && e == libc::EINTR, || {
        format!("B: background write (TOSTOP) gave {r} (errno {e}), not EINTR")
    });
    c.eq(
        "B: SIGTTOU on a background write",
        1,
        TTOU.load(Ordering::SeqCst),
    );
    finish_child(dir, c)
}

fn fork_leader(role: fn(&std::path::Path) -> !, dir: &std::path::Path) -> i32 {
    let k = unsafe { libc::fork() };
    if k < 0 {
        die("C: fork");
    }
    if k == 0 {
        unsafe { libc::setpgid(0, 0) };
        role(dir);
    }
    unsafe { libc::setpgid(k, k) };
    k
}

/// C: the session leader on the slave.
fn child(dir: &std::path::Path, path: &str, queued: bool) -> ! {
    unsafe {
        if libc::setsid() < 0 {
            die("C: setsid");
        }
        // Not O_NOCTTY: the slave becomes C's controlling terminal.
        let s = open_path(path, libc::O_RDWR);
        if s < 0 {
            die(&format!("C: open {path}"));
        }
        for fd in [0, 1, 2, SLAVE] {
            libc::dup2(s, fd);
        }
        libc::close(s);
        libc::close(MASTER);
        let t = open_path("/dev/tty", libc::O_RDWR);
        if t < 0 || libc::dup2(t, DEV_TTY) != DEV_TTY {
            die("C: open /dev/tty");
        }
        libc::close(t);
        let mut tio = termios(0);
        tio.c_lflag |= libc::TOSTOP;
        tio.c_lflag &= !libc::ECHOCTL;
        tio.c_iflag |= libc::IUTF8;
        tio.c_cc[libc::VINTR] = 0x07;
        tio.c_cc[libc::VMIN] = 3;
        tio.c_cc[libc::VTIME] = 7;
        tio.c_cflag = (tio.c_cflag & !libc::CBAUD) | libc::BOTHER;
        tio.c_ispeed = 12345;
        tio.c_ospeed = 23456;
        if libc::ioctl(0, libc::TCSETS2, &tio) != 0 {
            die("C: TCSETS2");
        }
        if libc::ioctl(0, libc::TIOCEXCL) != 0 {
            die("C: TIOCEXCL");
        }
    }
    let g = fork_leader(grandchild, dir);
    let bg = fork_leader(background, dir);
    // C still leads the foreground group: no SIGTTOU for this.
    if unsafe { libc::tcsetpgrp(0, g) } != 0 {
        die("C: tcsetpgrp");
    }
    let before = show(&termios(0));
    wait_file(&dir.join("g-ready"), 5000);
    wait_file(&dir.join("b-ready"), 5000);
    touch(dir, "c-ready");
    workloads::wait_for_term();

    let mut c = Checker::new();
    if queued {
        for k in [g, bg] {
            unsafe {
                libc::kill(k, libc::SIGKILL);
                libc::waitpid(k, std::ptr::null_mut(), 0);
            }
        }
        finish_child(dir, c);
    }
    let me = unsafe { libc::getpid() };
    c.eq("C: slave termios", before, show(&termios(0)));
    c.eq("C: window size", WINSIZE, winsize(0));
    c.eq(
        "C: exclusive mode (TIOCGEXCL)",
        1,
        int_ioctl(0, libc::TIOCGEXCL),
    );
    c.eq("C: session", me, unsafe { libc::getsid(0) });
    c.eq("C: session of the terminal", me, unsafe {
        libc::tcgetsid(0)
    });
    c.eq("C: foreground group", g, unsafe { libc::tcgetpgrp(0) });
    c.check(unsafe { libc::isatty(DEV_TTY) } == 1, || {
        "C: /dev/tty fd is no terminal".into()
    });
    c.eq(
        "C: device behind the /dev/tty fd",
        rdev(0) as i64,
        int_ioctl(DEV_TTY, libc::TIOCGDEV) as i64,
    );
    c.eq("C: fd 31 is the slave", rdev(0), rdev(SLAVE));
    let t = open_path("/dev/tty", libc::O_RDWR);
    c.check(t >= 0, || format!("C: open /dev/tty: errno {}", errno()));
    c.eq(
        "C: /dev/tty opened now",
        rdev(0) as i64,
        int_ioctl(t, libc::TIOCGDEV) as i64,
    );
    unsafe { libc::close(t) };
    unsafe { libc::kill(bg, libc::SIGTERM) };
    reap_child(dir, bg, &mut c);
    unsafe { libc::kill(g, libc::SIGTERM) };
    reap_child(dir, g, &mut c);
    finish_child(dir, c)
}

/// Read from the master until `want` was seen (or 5 s passed): the data
/// of every packet, each checked to start with TIOCPKT_DATA.
fn read_master(want: &[&str], c: &mut Checker) -> String {
    let mut got = String::new();
    let t0 = std::time::Instant::now();
    while !want.iter().all(|w| got.contains(w)) && t0.elapsed().as_secs() < 5 {
        let mut p = libc::pollfd {
            fd: MASTER,
            events: libc::POLLIN,
            revents: 0,
        };
        if unsafe { libc::poll(&mut p, 1, 100) } <= 0 {
            continue;
        }
        let mut buf = [0u8; 256];
        let n = unsafe { libc::read(MASTER, buf.as_mut_ptr() as *mut _, buf.len()) };
        if n <= 0 {
            c.fail(format!("read from the master: {n} (errno {})", errno()));
            break;
        }
        let pkt = &buf[..n as usize];
        if pkt[0] != TIOCPKT_DATA {
            c.fail(format!("packet from the master starts with {:#x}", pkt[0]));
        }
        got.push_str(&String::from_utf8_lossy(&pkt[1..]));
    }
    got
}

fn main() {
    let p = workloads::init();
    let dir = scratch_dir(&p);
    let queued = p.args.first().is_some_and(|a| a == "queued");
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        if m < 0 || libc::dup2(m, MASTER) != MASTER {
            die("posix_openpt");
        }
        libc::close(m);
        if libc::grantpt(MASTER) != 0 || libc::unlockpt(MASTER) != 0 {
            die("grantpt/unlockpt");
        }
    }
    set_winsize(MASTER, WINSIZE);
    let path = slave_path(MASTER);
    let kid = unsafe { libc::fork() };
    if kid < 0 {
        die("fork");
    }
    if kid == 0 {
        child(&dir, &path, queued);
    }
    if !wait_file(&dir.join("c-ready"), 5000) {
        die("C is not ready");
    }
    unsafe {
        let one: i32 = 1;
        if libc::ioctl(MASTER, libc::TIOCPKT, &one) != 0 {
            die("TIOCPKT");
        }
        if libc::ioctl(MASTER, libc::TIOCSPTLCK, &one) != 0 {
            die("TIOCSPTLCK");
        }
    }
    let master_termios = show(&termios(MASTER));
    if queued {
        unsafe { libc::write(MASTER, b"queued\n".as_ptr() as *const _, 7) };
    }
    p.ready();
    workloads::wait_for_term();

    let mut c = Checker::new();
    if queued {
        unsafe { libc::kill(kid, libc::SIGTERM) };
        reap_child(&dir, kid, &mut c);
        p.finish(c.into_result());
    }
    c.eq(
        "packet mode (TIOCGPKT)",
        1,
        int_ioctl(MASTER, libc::TIOCGPKT),
    );
    c.eq("lock (TIOCGPTLCK)", 1, int_ioctl(MASTER, libc::TIOCGPTLCK));
    c.eq("window size", WINSIZE, winsize(MASTER));
    c.eq("master termios", master_termios, show(&termios(MASTER)));
    let path = slave_path(MASTER);
    let s = open_path(&path, libc::O_RDWR | libc::O_NOCTTY);
    let e = errno();
    c.check(s < 0 && e == libc::EIO, || {
        format!("opening the locked slave {path}: fd {s}, errno {e} (not EIO)")
    });
    let zero: i32 = 0;
    unsafe { libc::ioctl(MASTER, libc::TIOCSPTLCK, &zero) };
    let s = open_path(&path, libc::O_RDWR | libc::O_NOCTTY);
    c.check(s >= 0, || {
        format!("opening the unlocked slave {path}: errno {}", errno())
    });
    let theirs = std::fs::metadata(format!("/proc/{kid}/fd/0"))
        .map(|m| std::os::unix::fs::MetadataExt::rdev(&m))
        .unwrap_or(0);
    c.eq("C's fd 0 is this pty's slave", rdev(s), theirs);
    unsafe { libc::close(s) };

    unsafe { libc::kill(kid, libc::SIGTERM) };
    if !wait_file(&dir.join("g-waiting"), 10000) {
        c.fail("G never got to its checks");
    }
    set_winsize(MASTER, NEW_WINSIZE);
    unsafe { libc::write(MASTER, b"hello\n".as_ptr() as *const _, 6) };
    let out = read_master(&["hello\r\n", "got:hello\r\n"], &mut c);
    c.check(out.contains("hello\r\n"), || {
        format!("no echo of the line: {out:?}")
    });
    c.check(out.contains("got:hello\r\n"), || {
        format!("no answer from G: {out:?}")
    });
    reap_child(&dir, kid, &mut c);
    p.finish(c.into_result());
}

//! Cross-parser tests: live /proc/self files and robustness against
//! truncated and mutated input.

#![allow(clippy::unnecessary_cast)]

use super::*;
use std::panic::{catch_unwind, AssertUnwindSafe};

fn self_pid() -> i32 {
    std::process::id() as i32
}

fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

#[test]
fn procfs_live_self() {
    let pid = self_pid();
    let boxed = Box::new(0u64);
    let heap_addr = &*boxed as *const u64 as u64;

    let smaps = read_smaps(pid).unwrap();
    let v = smaps
        .iter()
        .find(|v| v.contains(heap_addr))
        .expect("heap VMA");
    assert!(v.read && v.write && v.vm_flags.has("rd") && v.vm_flags.has("wr"));
    assert!(smaps.iter().any(|v| v.path == VmaPath::Vdso));
    assert!(smaps.iter().any(|v| v.path == VmaPath::Stack));
    assert!(smaps.iter().all(|v| v.size_kib * 1024 == v.len()));
    let maps = read_maps(pid).unwrap();
    assert!(maps.iter().any(|v| v.contains(heap_addr)));

    let stat = read_stat(pid).unwrap();
    assert_eq!(stat.pid, pid);
    assert!(stat.num_threads >= 1);
    assert_eq!(stat.ppid, nix::unistd::getppid().as_raw());

    let status = read_status(pid).unwrap();
    assert_eq!(status.tgid, pid);
    assert_eq!(status.ppid, stat.ppid);
    assert_eq!(status.uid[0], nix::unistd::getuid().as_raw());
    let tstatus = read_task_status(pid, gettid()).unwrap();
    assert_eq!(tstatus.pid, gettid());

    let limits = read_limits(pid).unwrap();
    assert_eq!(limits.len(), 16);
    let nofile = limits
        .iter()
        .find(|l| l.resource == libc::RLIMIT_NOFILE as u32)
        .unwrap();
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: rl is a valid out-pointer.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) }, 0);
    assert_eq!((nofile.soft, nofile.hard), (rl.rlim_cur, rl.rlim_max));

    let auxv = read_auxv(pid).unwrap();
    // SAFETY: getauxval has no preconditions.
    let pagesz = unsafe { libc::getauxval(libc::AT_PAGESZ) };
    assert!(auxv.contains(&(libc::AT_PAGESZ, pagesz)));

    let mounts = read_mountinfo(pid).unwrap();
    assert!(mounts.iter().any(|m| m.mount_point == "/"));
    let f = std::fs::File::open("/proc/self/stat").unwrap();
    use std::os::fd::AsRawFd;
    let fdi = read_fdinfo(pid, f.as_raw_fd()).unwrap();
    assert_eq!(fdi.flags as i32 & libc::O_ACCMODE, libc::O_RDONLY);
    assert!(mounts
        .iter()
        .any(|m| m.mnt_id == fdi.mnt_id && m.fs_type == "proc"));
    assert!(list_fds(pid).unwrap().contains(&f.as_raw_fd()));

    assert_eq!(read_personality(pid).unwrap(), unsafe {
        // SAFETY: personality(0xffffffff) only queries.
        libc::personality(0xffff_ffff) as u32
    });
    read_timers(pid).unwrap();

    let page = heap_addr & !4095;
    let pm = Pagemap::open(pid).unwrap();
    let anon = pm
        .scan(page, page + 4096, PAGE_IS_PRESENT, PAGE_IS_FILE)
        .unwrap();
    assert_eq!(anon, vec![(page, page + 4096)]);

    assert!(list_tids(pid).unwrap().contains(&gettid()));
    assert!(list_pids().unwrap().contains(&pid));
    drop(boxed);
}

#[test]
fn procfs_live_status_counts_the_anonymous_pages() {
    let anon = || read_status(self_pid()).unwrap().rss_anon_kib.unwrap();
    let before = anon();
    // 8 MiB more of private anonymous memory, every page touched.
    let block = vec![1u8; 8 << 20];
    let after = anon();
    assert!(
        after >= before + 8 * 1024 - 64,
        "RssAnon: {before} kB before, {after} kB after 8 MiB touched"
    );
    assert!(read_status(self_pid()).unwrap().vm_swap_kib.is_some());
    let per_vma: u64 = read_smaps(self_pid())
        .unwrap()
        .iter()
        .map(|v| v.anonymous_kib)
        .sum();
    // The counters are per-CPU caches, folded in now and then: close, not
    // exact.
    assert!(
        per_vma.abs_diff(after) < 4096,
        "smaps: {per_vma} kB, status {after} kB"
    );
    drop(block);
}

#[test]
fn procfs_live_missing_pid_errors_name_path() {
    // pid_max is at most 2^22, so this pid never exists.
    let e = read_stat(i32::MAX).unwrap_err();
    assert!(e.is_gone());
    assert!(
        e.to_string().contains(&format!("/proc/{}/stat", i32::MAX)),
        "{e}"
    );
    assert_eq!(
        e.path(),
        std::path::Path::new(&format!("/proc/{}/stat", i32::MAX))
    );
    let e = list_tids(i32::MAX).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    assert!(e.to_string().contains("/task"), "{e}");
}

#[test]
fn procfs_live_epoll_inotify_timer() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let pid = self_pid();
    // SAFETY: plain fd-creating syscalls; every fd is owned below.
    let (ep, ino, pr, pw) = unsafe {
        let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        let ino = libc::inotify_init1(libc::IN_CLOEXEC);
        let mut p = [0; 2];
        assert_eq!(libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC), 0);
        assert!(ep >= 0 && ino >= 0);
        (
            OwnedFd::from_raw_fd(ep),
            OwnedFd::from_raw_fd(ino),
            OwnedFd::from_raw_fd(p[0]),
            OwnedFd::from_raw_fd(p[1]),
        )
    };
    let mut ev = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLET) as u32,
        u64: 0x1122_3344_5566_7788,
    };
    // SAFETY: valid fds and event pointer.
    let rc =
        unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, pr.as_raw_fd(), &mut ev) };
    assert_eq!(rc, 0);
    let fi = read_fdinfo(pid, ep.as_raw_fd()).unwrap();
    let tfds = fi.epoll_tfds().unwrap();
    assert_eq!(tfds.len(), 1);
    assert_eq!(tfds[0].tfd, pr.as_raw_fd());
    // The kernel always adds EPOLLERR | EPOLLHUP.
    let want = (libc::EPOLLIN | libc::EPOLLET) as u32;
    assert_eq!(tfds[0].events & want, want);
    assert_eq!(tfds[0].data, 0x1122_3344_5566_7788);
    let pipe_fi = read_fdinfo(pid, pr.as_raw_fd()).unwrap();
    assert_eq!(tfds[0].ino, pipe_fi.ino);

    let path = std::ffi::CString::new("/proc/self").unwrap();
    // SAFETY: valid fd and C string.
    let wd = unsafe { libc::inotify_add_watch(ino.as_raw_fd(), path.as_ptr(), libc::IN_OPEN) };
    assert!(wd >= 0);
    let fi = read_fdinfo(pid, ino.as_raw_fd()).unwrap();
    let wds = fi.inotify_wds().unwrap();
    assert_eq!(wds.len(), 1);
    assert_eq!(wds[0].wd, wd);
    assert_eq!(wds[0].mask & libc::IN_OPEN, libc::IN_OPEN);

    let mut timer: libc::timer_t = std::ptr::null_mut();
    // SAFETY: zeroed sigevent is valid; timer is a valid out-pointer.
    let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
    sev.sigev_notify = libc::SIGEV_NONE;
    sev.sigev_value = libc::sigval {
        sival_ptr: 0x5eed as *mut libc::c_void,
    };
    // SAFETY: as above.
    assert_eq!(
        unsafe { libc::timer_create(libc::CLOCK_BOOTTIME, &mut sev, &mut timer) },
        0
    );
    let timers = read_timers(pid).unwrap();
    let t = timers
        .iter()
        .find(|t| t.id as usize == timer as usize)
        .expect("our timer");
    assert_eq!(t.notify, TimerNotify::None);
    assert_eq!(t.clock_id, libc::CLOCK_BOOTTIME);
    assert_eq!(t.notify_pid, pid);
    // SAFETY: timer was created above.
    unsafe { libc::timer_delete(timer) };
    drop(pw);
}

// ---------------------------------------------------------------------------
// Robustness: no parser may panic, whatever the input.

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: &[u8] = b"0123456789abcdefx -:()/\\\n\t[]sp.kB\xff\xc3";

fn mutate(rng: &mut XorShift, sample: &[u8]) -> Vec<u8> {
    let mut v = sample.to_vec();
    for _ in 0..1 + rng.below(4) {
        let pos = rng.below(v.len() + 1);
        let byte = if rng.below(3) == 0 {
            rng.next() as u8
        } else {
            INTERESTING[rng.below(INTERESTING.len())]
        };
        match rng.below(4) {
            0 if pos < v.len() => v[pos] = byte,
            1 => v.insert(pos, byte),
            2 if pos < v.len() => {
                v.remove(pos);
            }
            _ => {
                // Duplicate or drop a run (lines, fields).
                let end = (pos + rng.below(64)).min(v.len());
                let run: Vec<u8> = v[pos..end].to_vec();
                if rng.below(2) == 0 {
                    v.splice(pos..pos, run);
                } else {
                    v.drain(pos..end);
                }
            }
        }
    }
    v
}

fn no_panic(name: &str, input: &[u8], f: &dyn Fn(&[u8])) {
    if catch_unwind(AssertUnwindSafe(|| f(input))).is_err() {
        panic!(
            "{name} panicked on input {:?}",
            String::from_utf8_lossy(input)
        );
    }
}

fn hammer(name: &str, sample: &[u8], seed: u64, f: &dyn Fn(&[u8])) {
    for n in 0..=sample.len() {
        no_panic(name, &sample[..n], f);
    }
    let mut rng = XorShift(seed | 1);
    for _ in 0..3000 {
        let m = mutate(&mut rng, sample);
        no_panic(name, &m, f);
    }
    // A few fully random inputs.
    for _ in 0..200 {
        let len = rng.below(300);
        let m: Vec<u8> = (0..len)
            .map(|_| INTERESTING[rng.below(INTERESTING.len())])
            .collect();
        no_panic(name, &m, f);
    }
}

fn text<T>(f: fn(&str) -> Result<T, ProcError>) -> impl Fn(&[u8]) {
    move |b: &[u8]| {
        let _ = f(&String::from_utf8_lossy(b));
    }
}

/// The first `n` VMA blocks of the smaps sample, plus crafted lines.
fn small_smaps() -> String {
    let full = include_str!("testdata/smaps.txt");
    let mut out = String::new();
    let mut headers = 0;
    for line in full.lines() {
        if !line.split(' ').next().unwrap_or("").ends_with(':') {
            headers += 1;
            if headers > 3 {
                break;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out.push_str("7f0000004000-7f0000005000 r--p 00000000 00:00 0                          [vvar_vclock]\nRss:  4 kB\nVmFlags: rd mr pf io de dd sd \n");
    out.push_str("7f0000001000-7f0000002000 r--s 00001000 fe:00 99                         /tmp/a b (deleted)\nProtectionKey:  0\n");
    out
}

#[test]
fn procfs_robust_smaps_maps() {
    let s = small_smaps();
    assert!(parse_smaps(&s).unwrap().len() >= 5);
    hammer("parse_smaps", s.as_bytes(), 1, &text(parse_smaps));
    let m = include_str!("testdata/maps.txt");
    let m: String = m.lines().take(12).map(|l| format!("{l}\n")).collect();
    hammer("parse_maps", m.as_bytes(), 2, &text(parse_maps));
}

#[test]
fn procfs_robust_stat_status_limits() {
    let stat = "4303 (a) (b c)) R 4299 4299 3129 0 -1 4194304 100 0 0 0 0 0 0 0 20 0 1 0 48548 3133440 408 18446744073709551615 94255682625536 94255682645417 140727029737712 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 94255682661424 94255682663040 94256713572352 140727029746402 140727029746422 140727029746422 140727029747691 0\n";
    hammer("parse_stat", stat.as_bytes(), 3, &text(parse_stat));
    hammer(
        "parse_stat",
        include_bytes!("testdata/stat.txt"),
        4,
        &text(parse_stat),
    );
    hammer(
        "parse_status",
        include_bytes!("testdata/status.txt"),
        5,
        &text(parse_status),
    );
    hammer(
        "parse_limits",
        include_bytes!("testdata/limits.txt"),
        6,
        &text(parse_limits),
    );
}

#[test]
fn procfs_robust_fdinfo_mountinfo_misc() {
    for (i, s) in [
        &include_bytes!("testdata/fdinfo_epoll.txt")[..],
        include_bytes!("testdata/fdinfo_inotify.txt"),
        include_bytes!("testdata/fdinfo_eventfd.txt"),
        include_bytes!("testdata/fdinfo_timerfd.txt"),
    ]
    .into_iter()
    .enumerate()
    {
        hammer("parse_fdinfo", s, 10 + i as u64, &|b| {
            if let Ok(fi) = parse_fdinfo(&String::from_utf8_lossy(b)) {
                let _ = fi.epoll_tfds();
                let _ = fi.inotify_wds();
                let _ = fi.fanotify();
            }
        });
    }
    hammer(
        "parse_epoll_tfd",
        b"tfd:        4 events: 8000001c data:                4  pos:0 ino:24ba sdev:f",
        20,
        &text(parse_epoll_tfd),
    );
    hammer(
        "parse_inotify_wd",
        b"inotify wd:1 ino:3c4a7 sdev:fe00000 mask:300 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:a7c4030000000000",
        21,
        &text(parse_inotify_wd),
    );
    hammer(
        "parse_fanotify_mark",
        b"fanotify ino:994163 sdev:fe00000 mflags:40 mask:0 ignored_mask:1 fhandle-bytes:8 fhandle-type:1 f_handle:63419900b57362bc",
        24,
        &text(parse_fanotify_mark),
    );
    hammer(
        "parse_lock_line",
        b"1: POSIX  ADVISORY  WRITE 11350 fe:00:10027379 10 19",
        25,
        &text(parse_lock_line),
    );
    hammer(
        "parse_mountinfo",
        include_bytes!("testdata/mountinfo.txt"),
        22,
        &text(parse_mountinfo),
    );
    hammer(
        "parse_mountinfo",
        b"36 35 98:0 /mnt\\0401 /mnt/a\\040b\\011c\\134d rw,noatime shared:1 master:2 propagate_from:3 unbindable - fuse.sshfs user@host:/x\\040y rw\n",
        23,
        &text(parse_mountinfo),
    );
    hammer(
        "parse_timers",
        include_bytes!("testdata/timers.txt"),
        24,
        &text(parse_timers),
    );
    hammer(
        "parse_personality",
        b"00400000\n",
        25,
        &text(parse_personality),
    );
    hammer(
        "parse_children",
        b"812 815 9001 ",
        26,
        &text(parse_children),
    );
}

#[test]
fn children_lists_parse_and_refuse_garbage() {
    assert_eq!(
        parse_children("812 815 9001 ").unwrap(),
        vec![812, 815, 9001]
    );
    assert_eq!(parse_children("").unwrap(), Vec::<i32>::new());
    assert!(parse_children("812 x").is_err());
    assert!(parse_children("0").is_err());
    assert!(parse_children("-4").is_err());
}

/// With CONFIG_PROC_CHILDREN, this thread's children file lists the child
/// it spawned; without, reading it fails (and crust scans /proc instead).
#[test]
fn own_children_file_lists_a_child() {
    let mut child = std::process::Command::new("sleep")
        .arg("10")
        .spawn()
        .expect("sleep");
    let me = std::process::id() as i32;
    let tid = nix::unistd::gettid().as_raw();
    let kids = read_children(me, tid);
    child.kill().expect("kill");
    child.wait().expect("wait");
    if children_files_exist() {
        let kids = kids.expect("children file");
        assert!(kids.contains(&(child.id() as i32)), "{kids:?}");
    } else {
        assert!(kids.is_err(), "a children file where none should be");
    }
}

#[test]
fn procfs_robust_binary() {
    hammer(
        "parse_auxv",
        include_bytes!("testdata/auxv.bin"),
        30,
        &|b| {
            let _ = parse_auxv(b);
        },
    );
}

#[test]
fn fanotify_fdinfo() {
    let text = "pos:\t0\nflags:\t04002\nmnt_id:\t17\nino:\t1038\n\
        fanotify flags:102 event-flags:8000\n\
        fanotify sdev:fe00000 mflags:0 mask:2 ignored_mask:0\n\
        fanotify ino:994163 sdev:fe00000 mflags:40 mask:0 ignored_mask:1 fhandle-bytes:8 fhandle-type:1 f_handle:63419900b57362bc\n\
        fanotify mnt_id:1b mflags:0 mask:1 ignored_mask:0\n";
    let info = parse_fdinfo(text).unwrap().fanotify().unwrap();
    assert_eq!((info.flags, info.event_flags), (0x102, 0x8000));
    assert_eq!(info.marks.len(), 3);
    assert_eq!(
        info.marks[0].target,
        FanotifyTarget::Filesystem { sdev: 0xfe00000 }
    );
    assert_eq!(
        info.marks[1].target,
        FanotifyTarget::Inode {
            ino: 0x994163,
            sdev: 0xfe00000,
            fhandle_type: 1,
            f_handle: vec![0x63, 0x41, 0x99, 0x00, 0xb5, 0x73, 0x62, 0xbc],
        }
    );
    assert_eq!(
        (info.marks[1].mflags, info.marks[1].ignored_mask),
        (0x40, 1)
    );
    assert_eq!(info.marks[2].target, FanotifyTarget::Mount { mnt_id: 0x1b });
    for bad in [
        "fanotify ino:zz sdev:0 mflags:0 mask:0 ignored_mask:0 fhandle-type:1 f_handle:00",
        "fanotify mnt_id:1b mask:1 ignored_mask:0",
        "inotify wd:1",
    ] {
        assert!(parse_fanotify_mark(bad).is_err(), "{bad:?}");
    }
}

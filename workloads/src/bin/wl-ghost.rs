//! wl-ghost DIR [KIB]: a deleted file held open (a CRIU "ghost file").
//!
//! Creates DIR/ghost.dat, writes KIB KiB (default 100) of a known pattern,
//! opens it twice (fd A O_RDWR at offset 123, fd B O_RDONLY at 0), then
//! unlinks it.
//!
//! After SIGTERM: both fds are still the deleted DIR/ghost.dat (link ends
//! with " (deleted)", st_nlink == 0, same inode, same size, same access
//! modes and offsets), read the pattern from their offsets, and a write
//! through A is seen through B; nothing is left in DIR.

use std::path::PathBuf;
use workloads::{die, mix64, Checker};

const NAME: &str = "ghost.dat";
const RW_POS: i64 = 123;

fn byte(i: usize) -> u8 {
    (mix64((i / 8) as u64 ^ 0x0067_686f_7374) >> (8 * (i % 8))) as u8
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(byte).collect()
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn fstat(fd: i32) -> Result<libc::stat, String> {
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) != 0 {
            return Err(os_err(&format!("fstat fd {fd}")));
        }
        Ok(st)
    }
}

/// read() until `n` bytes or EOF.
fn read_n(fd: i32, n: usize) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        let r = unsafe { libc::read(fd, buf[got..].as_mut_ptr() as *mut _, n - got) };
        if r < 0 {
            return Err(os_err(&format!("read fd {fd}")));
        }
        if r == 0 {
            break;
        }
        got += r as usize;
    }
    buf.truncate(got);
    Ok(buf)
}

fn link_of(fd: i32) -> String {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| format!("<{e}>"))
}

fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or(if a.len() != b.len() {
            Some(a.len().min(b.len()))
        } else {
            None
        })
}

fn main() {
    let p = workloads::init();
    let Some(dir) = p.args.first() else {
        die("usage: wl-ghost PIDFILE OUTFILE DIR [KIB]")
    };
    let kib: usize = p
        .args
        .get(1)
        .map(|s| s.parse().unwrap_or_else(|_| die("KIB must be a number")))
        .unwrap_or(100);
    let dir: PathBuf = std::fs::canonicalize(dir).unwrap_or_else(|e| die(&format!("{dir}: {e}")));
    let path = dir.join(NAME);
    let size = kib << 10;
    let data = pattern(size);
    std::fs::write(&path, &data).unwrap_or_else(|e| die(&format!("{}: {e}", path.display())));
    let cpath = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let (a, b) = unsafe {
        let a = libc::open(cpath.as_ptr(), libc::O_RDWR);
        let b = libc::open(cpath.as_ptr(), libc::O_RDONLY);
        if a < 0 || b < 0 {
            die(&os_err("open"));
        }
        if libc::lseek(a, RW_POS, libc::SEEK_SET) != RW_POS {
            die(&os_err("lseek"));
        }
        if libc::unlink(cpath.as_ptr()) != 0 {
            die(&os_err("unlink"));
        }
        (a, b)
    };
    let want_link = format!("{} (deleted)", path.display());
    for fd in [a, b] {
        if link_of(fd) != want_link {
            die(&format!("fd {fd} is {}, not {want_link}", link_of(fd)));
        }
    }

    p.ready();
    workloads::wait_for_term();

    let mut c = Checker::new();
    let check = |c: &mut Checker| -> Result<(), String> {
        let (sa, sb) = (fstat(a)?, fstat(b)?);
        for (fd, st) in [(a, &sa), (b, &sb)] {
            c.eq(&format!("fd {fd} link"), want_link.clone(), link_of(fd));
            c.eq(
                &format!("fd {fd} file type"),
                libc::S_IFREG,
                st.st_mode & libc::S_IFMT,
            );
            c.eq(&format!("fd {fd} st_nlink"), 0, st.st_nlink);
            c.eq(&format!("fd {fd} st_size"), size as i64, st.st_size);
        }
        c.check(sa.st_ino == sb.st_ino && sa.st_dev == sb.st_dev, || {
            format!("fds {a} and {b} are different files now")
        });
        unsafe {
            c.eq(
                "fd A access mode",
                libc::O_RDWR,
                libc::fcntl(a, libc::F_GETFL) & libc::O_ACCMODE,
            );
            c.eq(
                "fd B access mode",
                libc::O_RDONLY,
                libc::fcntl(b, libc::F_GETFL) & libc::O_ACCMODE,
            );
            c.eq("fd A offset", RW_POS, libc::lseek(a, 0, libc::SEEK_CUR));
            c.eq("fd B offset", 0, libc::lseek(b, 0, libc::SEEK_CUR));
        }
        let got_b = read_n(b, size + 1)?;
        if let Some(i) = first_diff(&got_b, &data) {
            c.fail(format!(
                "fd B reads {} bytes, differing from the pattern at {i}",
                got_b.len()
            ));
        }
        let got_a = read_n(a, size + 1)?;
        if let Some(i) = first_diff(&got_a, &data[RW_POS as usize..]) {
            c.fail(format!(
                "fd A reads {} bytes from {RW_POS}, differing from the pattern at {}",
                got_a.len(),
                RW_POS as usize + i
            ));
        }
        let msg = b"written through fd A";
        let at = 4000;
        let mut back = vec![0u8; msg.len()];
        unsafe {
            if libc::pwrite(a, msg.as_ptr() as *const _, msg.len(), at) != msg.len() as isize {
                return Err(os_err("pwrite fd A"));
            }
            if libc::pread(b, back.as_mut_ptr() as *mut _, back.len(), at) != back.len() as isize {
                return Err(os_err("pread fd B"));
            }
        }
        c.check(back == msg, || {
            "a write through fd A is not seen through fd B".into()
        });
        let left: Vec<String> = std::fs::read_dir(&dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        c.check(left.is_empty(), || {
            format!("{} holds {left:?}; it should be empty", dir.display())
        });
        Ok(())
    };
    if let Err(e) = check(&mut c) {
        c.fail(e);
    }
    p.finish(c.into_result());
}

//! wl-deleted-map DIR [KIB]: mappings of a file that was unlinked.
//!
//! Creates DIR/mapped.dat with KIB KiB (default 256) of a pattern, maps it
//! MAP_SHARED read-write twice (S1, S2) and MAP_PRIVATE read-write (P),
//! rewrites the first PRIV_LEN bytes of P with another pattern (private
//! pages), closes every fd and unlinks the file.
//!
//! After SIGTERM: each mapping's /proc/self/maps line names
//! "DIR/mapped.dat (deleted)" (rw-s, rw-s, rw-p); S1 and S2 hold the
//! pattern; P its private pages and the pattern after them; DIR/mapped.dat
//! does not exist; a write through S1 is seen through S2.

use workloads::{check_maps_line, die, mix64, Checker};

const NAME: &str = "mapped.dat";
const SEED: u64 = 0x6465_6c6d_6170_0001;
const PRIV_SEED: u64 = 0x6465_6c6d_6170_0002;
const PRIV_LEN: usize = 16 << 10;
const MARK_OFF: usize = 40 << 10;
const MARK: u64 = 0x7368_6172_6564_2121;

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// The pattern word at file offset `off` (not at an address: the file is
/// mapped at several).
fn word(off: usize, seed: u64) -> u64 {
    mix64(off as u64 ^ seed)
}

/// Fill `len` bytes of the mapping `m` from its start.
unsafe fn fill_pattern(m: *mut u8, len: usize, seed: u64) {
    for off in (0..len).step_by(8) {
        (m.add(off) as *mut u64).write_volatile(word(off, seed));
    }
}

fn check_pat(c: &mut Checker, who: &str, m: *mut u8, from: usize, len: usize, seed: u64) {
    for off in (from..from + len).step_by(8) {
        if unsafe { (m.add(off) as *const u64).read_volatile() } != word(off, seed) {
            c.fail(format!("{who}: differs at offset {off}"));
            return;
        }
    }
}

fn main() {
    let p = workloads::init();
    let Some(dir) = p.args.first() else {
        die("usage: wl-deleted-map PIDFILE OUTFILE DIR [KIB]")
    };
    let kib: usize = p
        .args
        .get(1)
        .map(|s| s.parse().unwrap_or_else(|_| die("KIB must be a number")))
        .unwrap_or(256);
    let len = kib << 10;
    if len < 2 * MARK_OFF {
        die("KIB too small");
    }
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|e| die(&format!("{dir}: {e}")));
    let path = dir.join(NAME);
    let cpath = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let (s1, s2, pm) = unsafe {
        let fd = libc::open(
            cpath.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC,
            0o600,
        );
        if fd < 0 {
            die(&os_err("open"));
        }
        if libc::ftruncate(fd, len as libc::off_t) != 0 {
            die(&os_err("ftruncate"));
        }
        let map = |flags| {
            let m = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            );
            if m == libc::MAP_FAILED {
                die(&os_err("mmap"));
            }
            m as *mut u8
        };
        let s1 = map(libc::MAP_SHARED);
        fill_pattern(s1, len, SEED);
        if libc::msync(s1 as *mut _, len, libc::MS_SYNC) != 0 {
            die(&os_err("msync"));
        }
        let s2 = map(libc::MAP_SHARED);
        let pm = map(libc::MAP_PRIVATE);
        fill_pattern(pm, PRIV_LEN, PRIV_SEED);
        libc::close(fd);
        if libc::unlink(cpath.as_ptr()) != 0 {
            die(&os_err("unlink"));
        }
        (s1, s2, pm)
    };
    let want = format!("{} (deleted)", path.display());
    let check_maps = |c: &mut Checker, when: &str| {
        check_maps_line(c, &format!("S1 {when}"), s1 as usize, len, "rw-s", &want);
        check_maps_line(c, &format!("S2 {when}"), s2 as usize, len, "rw-s", &want);
        check_maps_line(c, &format!("P {when}"), pm as usize, len, "rw-p", &want);
    };
    let mut c0 = Checker::new();
    check_maps(&mut c0, "before ready");
    if c0.failed() {
        die(&format!("{:?}", c0.into_result()));
    }

    p.ready();
    workloads::wait_for_term();

    let mut c = Checker::new();
    check_maps(&mut c, "after restore");
    check_pat(&mut c, "S1", s1, 0, len, SEED);
    check_pat(&mut c, "S2", s2, 0, len, SEED);
    check_pat(&mut c, "P (private pages)", pm, 0, PRIV_LEN, PRIV_SEED);
    check_pat(&mut c, "P (file pages)", pm, PRIV_LEN, len - PRIV_LEN, SEED);
    c.check(!path.exists(), || {
        format!("{} exists again", path.display())
    });
    match std::fs::read_dir(&dir) {
        Ok(rd) => {
            let left: Vec<String> = rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            c.check(left.is_empty(), || {
                format!("{} holds {left:?}; it should be empty", dir.display())
            });
        }
        Err(e) => c.fail(format!("{}: {e}", dir.display())),
    }
    unsafe {
        (s1.add(MARK_OFF) as *mut u64).write_volatile(MARK);
        let got = (s2.add(MARK_OFF) as *const u64).read_volatile();
        c.eq("a write through S1, read through S2", MARK, got);
        // The private pages are still private.
        check_pat(
            &mut c,
            "P after the shared write",
            pm,
            0,
            PRIV_LEN,
            PRIV_SEED,
        );
    }
    p.finish(c.into_result());
}

//! wl-memory SIZE_MIB: many kinds of memory mappings.
//!
//! Builds: SIZE MiB of anonymous memory with an address-derived pattern; a
//! region with a PROT_NONE guard at its bottom; a read-only anonymous region
//! with data; a MAP_GROWSDOWN region; a MADV_DONTFORK region; a
//! MADV_HUGEPAGE region; a region with holes (pages never touched); a
//! private file mapping with some pages modified (COW); a MAP_SHARED file
//! mapping; a brk-grown heap. Temp files go next to OUTFILE.
//!
//! After SIGTERM, before allocating anything: /proc/self/maps must be
//! identical to what it was at ready time (read into preallocated buffers
//! with raw syscalls) and brk unchanged. Then: every pattern, holes still
//! zero and not resident, VmFlags of each region unchanged, the file
//! mappings agree with their files, malloc/free and sbrk still work.

use std::collections::HashMap;
use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::ptr;
use workloads::{check_pattern, die, fill_pattern, mix64, Checker};

const PAGE: usize = 4096;
const MAPS_BUF: usize = 1 << 20;

struct Region {
    name: &'static str,
    addr: *mut u8,
    len: usize,
    /// A VmFlags mnemonic this region must carry, if any.
    vmflag: Option<&'static str>,
}

/// Map `len` bytes with one unmapped page below and above it (so the kernel
/// cannot merge it with a neighbour), aligned to `align`.
unsafe fn map_gapped(
    len: usize,
    align: usize,
    prot: i32,
    flags: i32,
    fd: i32,
    off: i64,
) -> *mut u8 {
    let total = len + align + 2 * PAGE;
    let base = libc::mmap(
        ptr::null_mut(),
        total,
        libc::PROT_NONE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
        -1,
        0,
    );
    if base == libc::MAP_FAILED {
        die("mmap reservation");
    }
    let base = base as usize;
    let start = (base + PAGE).next_multiple_of(align.max(PAGE));
    let end = start + len;
    libc::munmap(base as *mut _, start - base);
    libc::munmap(end as *mut _, base + total - end);
    let p = libc::mmap(start as *mut _, len, prot, flags | libc::MAP_FIXED, fd, off);
    if p == libc::MAP_FAILED || p as usize != start {
        die(&format!("mmap fixed: {}", std::io::Error::last_os_error()));
    }
    p as *mut u8
}

unsafe fn anon(len: usize, align: usize) -> *mut u8 {
    map_gapped(
        len,
        align,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        -1,
        0,
    )
}

/// The content of the temp files: an offset-derived pattern.
fn file_pattern(len: usize, seed: u64) -> Vec<u8> {
    (0..len / 8)
        .flat_map(|i| mix64(i as u64 ^ seed).to_le_bytes())
        .collect()
}

fn smaps_vmflags() -> HashMap<usize, String> {
    let text = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut out = HashMap::new();
    let mut cur = None;
    for line in text.lines() {
        if let Some(f) = line.strip_prefix("VmFlags:") {
            if let Some(start) = cur.take() {
                let mut v: Vec<&str> = f.split_whitespace().collect();
                v.sort();
                out.insert(start, v.join(" "));
            }
        } else if let Some(range) = line.split_whitespace().next() {
            if let Some((a, _)) = range.split_once('-') {
                if let Ok(a) = usize::from_str_radix(a, 16) {
                    cur = Some(a);
                }
            }
        }
    }
    out
}

#[inline(never)]
fn pregrow_stack() {
    let mut buf = [0u8; 512 * 1024];
    for i in (0..buf.len()).step_by(PAGE) {
        buf[i] = 1;
    }
    black_box(&mut buf);
}

fn main() {
    let p = workloads::init();
    let size_mib: usize = match p.args.first() {
        Some(s) => s
            .parse()
            .unwrap_or_else(|_| die("SIZE_MIB must be a number")),
        None => 64,
    };
    let dir = std::path::Path::new(&p.outfile)
        .parent()
        .map(|d| d.to_path_buf())
        .unwrap_or_else(|| ".".into());
    let mut regions: Vec<Region> = Vec::new();

    unsafe {
        // Big anonymous region.
        let len = size_mib << 20;
        let big = anon(len, PAGE);
        fill_pattern(big, len, 1);
        regions.push(Region {
            name: "big",
            addr: big,
            len,
            vmflag: None,
        });

        // A region with a PROT_NONE guard below it (like a thread stack).
        let g = anon(16 * PAGE, PAGE);
        if libc::mprotect(g as *mut _, 2 * PAGE, libc::PROT_NONE) != 0 {
            die("mprotect guard");
        }
        fill_pattern(g.add(2 * PAGE), 14 * PAGE, 2);
        regions.push(Region {
            name: "guard",
            addr: g,
            len: 2 * PAGE,
            vmflag: None,
        });
        regions.push(Region {
            name: "above-guard",
            addr: g.add(2 * PAGE),
            len: 14 * PAGE,
            vmflag: None,
        });

        // Read-only anonymous region with data.
        let ro = anon(8 * PAGE, PAGE);
        fill_pattern(ro, 8 * PAGE, 3);
        if libc::mprotect(ro as *mut _, 8 * PAGE, libc::PROT_READ) != 0 {
            die("mprotect ro");
        }
        regions.push(Region {
            name: "read-only",
            addr: ro,
            len: 8 * PAGE,
            vmflag: None,
        });

        // MAP_GROWSDOWN.
        let gd = map_gapped(
            8 * PAGE,
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_GROWSDOWN,
            -1,
            0,
        );
        fill_pattern(gd, 8 * PAGE, 4);
        regions.push(Region {
            name: "growsdown",
            addr: gd,
            len: 8 * PAGE,
            vmflag: Some("gd"),
        });

        // MADV_DONTFORK.
        let df = anon(8 * PAGE, PAGE);
        if libc::madvise(df as *mut _, 8 * PAGE, libc::MADV_DONTFORK) != 0 {
            die("madvise dontfork");
        }
        fill_pattern(df, 8 * PAGE, 5);
        regions.push(Region {
            name: "dontfork",
            addr: df,
            len: 8 * PAGE,
            vmflag: Some("dc"),
        });

        // MADV_HUGEPAGE, 2 MiB aligned.
        let hlen = 4 << 20;
        let hp = anon(hlen, 2 << 20);
        if libc::madvise(hp as *mut _, hlen, libc::MADV_HUGEPAGE) != 0 {
            die("madvise hugepage");
        }
        fill_pattern(hp, hlen, 6);
        regions.push(Region {
            name: "hugepage",
            addr: hp,
            len: hlen,
            vmflag: Some("hg"),
        });

        // Holes: only every 4th page touched.
        let holes = anon(64 * PAGE, PAGE);
        if libc::madvise(holes as *mut _, 64 * PAGE, libc::MADV_NOHUGEPAGE) != 0 {
            die("madvise nohugepage");
        }
        for i in (0..64).step_by(4) {
            fill_pattern(holes.add(i * PAGE), PAGE, 7);
        }
        regions.push(Region {
            name: "holes",
            addr: holes,
            len: 64 * PAGE,
            vmflag: Some("nh"),
        });
    }

    // Private file mapping, some pages modified (COW).
    let flen = 16 * PAGE;
    let priv_path = dir.join("wl-memory-private.dat");
    let priv_content = file_pattern(flen, 0xF11E);
    std::fs::write(&priv_path, &priv_content).unwrap_or_else(|e| die(&format!("{e}")));
    let priv_file = std::fs::File::open(&priv_path).unwrap_or_else(|e| die(&format!("{e}")));
    let cow_pages = [1usize, 5, 9];
    let pm = unsafe {
        use std::os::fd::AsRawFd;
        let pm = map_gapped(
            flen,
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE,
            priv_file.as_raw_fd(),
            0,
        );
        for &i in &cow_pages {
            fill_pattern(pm.add(i * PAGE), PAGE, 8);
        }
        // Fault some clean file pages in too.
        for i in [0usize, 2, 3] {
            black_box(pm.add(i * PAGE).read_volatile());
        }
        pm
    };
    drop(priv_file);
    regions.push(Region {
        name: "private-file",
        addr: pm,
        len: flen,
        vmflag: None,
    });

    // Shared file mapping: writes go to the file.
    let shared_path = dir.join("wl-memory-shared.dat");
    let shared_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&shared_path)
        .unwrap_or_else(|e| die(&format!("{e}")));
    shared_file
        .set_len(flen as u64)
        .unwrap_or_else(|e| die(&format!("{e}")));
    let sm = unsafe {
        use std::os::fd::AsRawFd;
        let sm = map_gapped(
            flen,
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            shared_file.as_raw_fd(),
            0,
        );
        fill_pattern(sm, 8 * PAGE, 9);
        sm
    };
    regions.push(Region {
        name: "shared-file",
        addr: sm,
        len: flen,
        vmflag: None,
    });

    // brk-grown heap.
    let (brk_region, brk_end) = unsafe {
        let b0 = libc::sbrk((16 * PAGE) as libc::intptr_t);
        if b0 as isize == -1 {
            die("sbrk");
        }
        let b0 = b0 as usize;
        let start = b0.next_multiple_of(8) as *mut u8;
        let len = (b0 + 16 * PAGE - start as usize) & !7;
        fill_pattern(start, len, 10);
        ((start, len), libc::sbrk(0) as usize)
    };

    // Everything that needs allocating happens now, before maps are recorded.
    let flags_before = smaps_vmflags();
    for r in &regions {
        if let Some(f) = r.vmflag {
            let have = flags_before
                .get(&(r.addr as usize))
                .cloned()
                .unwrap_or_default();
            if !have.split(' ').any(|x| x == f) {
                die(&format!(
                    "region {} lacks VmFlag {f} at setup: {have}",
                    r.name
                ));
            }
        }
    }
    let mut maps_before = vec![0u8; MAPS_BUF];
    let mut maps_after = vec![0u8; MAPS_BUF];
    let mut mincore_buf = vec![0u8; 64];
    let maps_path = c"/proc/self/maps";
    pregrow_stack();
    let Some(nb) = workloads::read_into(maps_path, &mut maps_before) else {
        die("read /proc/self/maps")
    };

    p.ready();
    workloads::wait_for_term();

    // No allocation until the maps are read again.
    let na = workloads::read_into(maps_path, &mut maps_after);
    let brk_now = unsafe { libc::sbrk(0) as usize };
    let hole_resident = unsafe {
        libc::mincore(
            holes_addr(&regions) as *mut _,
            64 * PAGE,
            mincore_buf.as_mut_ptr(),
        )
    };

    let mut c = Checker::new();
    match na {
        None => c.fail("cannot read /proc/self/maps after"),
        Some(na) => {
            let b = String::from_utf8_lossy(&maps_before[..nb]);
            let a = String::from_utf8_lossy(&maps_after[..na]);
            if let Some(d) = workloads::diff_lines(&b, &a) {
                c.fail(format!("/proc/self/maps differs:{d}"));
            }
        }
    }
    c.eq("brk", brk_end, brk_now);
    if hole_resident != 0 {
        c.fail(format!("mincore: {}", std::io::Error::last_os_error()));
    } else {
        let resident: Vec<usize> = (0..64)
            .filter(|i| i % 4 != 0 && mincore_buf[*i] & 1 != 0)
            .collect();
        c.check(resident.is_empty(), || {
            format!("never-touched pages of the holes region became resident: {resident:?}")
        });
    }

    let seeds: HashMap<&str, u64> = [
        ("big", 1),
        ("above-guard", 2),
        ("read-only", 3),
        ("growsdown", 4),
        ("dontfork", 5),
        ("hugepage", 6),
    ]
    .into_iter()
    .collect();
    for r in &regions {
        if let Some(&seed) = seeds.get(r.name) {
            if let Err(off) = unsafe { check_pattern(r.addr, r.len, seed) } {
                c.fail(format!("region {} differs at offset {off:#x}", r.name));
            }
        }
    }
    let holes = holes_addr(&regions);
    for i in 0..64 {
        let pg = unsafe { holes.add(i * PAGE) };
        if i % 4 == 0 {
            if let Err(off) = unsafe { check_pattern(pg, PAGE, 7) } {
                c.fail(format!("holes page {i} differs at {off:#x}"));
            }
        } else {
            let s = unsafe { std::slice::from_raw_parts(pg, PAGE) };
            c.check(s.iter().all(|&b| b == 0), || {
                format!("hole page {i} is not zero")
            });
        }
    }
    // Private file mapping.
    for i in 0..16 {
        let pg = unsafe { pm.add(i * PAGE) };
        if cow_pages.contains(&i) {
            if let Err(off) = unsafe { check_pattern(pg, PAGE, 8) } {
                c.fail(format!(
                    "private file mapping: COW page {i} differs at {off:#x}"
                ));
            }
        } else {
            let s = unsafe { std::slice::from_raw_parts(pg, PAGE) };
            c.check(s == &priv_content[i * PAGE..(i + 1) * PAGE], || {
                format!("private file mapping: clean page {i} differs from the file")
            });
        }
    }
    match std::fs::read(&priv_path) {
        Ok(d) => c.check(d == priv_content, || {
            "private-mapped file changed on disk".into()
        }),
        Err(e) => c.fail(format!("read {}: {e}", priv_path.display())),
    }
    // Shared file mapping.
    if let Err(off) = unsafe { check_pattern(sm, 8 * PAGE, 9) } {
        c.fail(format!("shared file mapping differs at {off:#x}"));
    }
    let smap = unsafe { std::slice::from_raw_parts_mut(sm, flen) };
    c.check(smap[8 * PAGE..].iter().all(|&b| b == 0), || {
        "shared file mapping: untouched pages not zero".into()
    });
    let mut fbuf = vec![0u8; flen];
    match shared_file.read_exact_at(&mut fbuf, 0) {
        Ok(()) => c.check(fbuf[..] == smap[..], || {
            "shared file mapping and its file disagree".into()
        }),
        Err(e) => c.fail(format!("pread shared file: {e}")),
    }
    smap[12 * PAGE + 7] = 0xA5;
    let mut one = [0u8; 1];
    let _ = shared_file.read_exact_at(&mut one, (12 * PAGE + 7) as u64);
    c.eq("write through shared mapping seen in file", 0xA5, one[0]);
    // brk heap.
    if let Err(off) = unsafe { check_pattern(brk_region.0, brk_region.1, 10) } {
        c.fail(format!("brk heap differs at {off:#x}"));
    }
    // VmFlags.
    let flags_after = smaps_vmflags();
    for r in &regions {
        let a = r.addr as usize;
        c.eq(
            &format!("VmFlags of region {} at {a:#x}", r.name),
            flags_before.get(&a),
            flags_after.get(&a),
        );
    }
    // malloc/free and sbrk still work.
    let mut boxes: Vec<Box<[u64; 32]>> = (0..1000).map(|i| Box::new([i as u64; 32])).collect();
    let big: Vec<u64> = (0..(4 << 20) / 8).collect();
    c.check(
        boxes.iter().enumerate().all(|(i, b)| b[31] == i as u64),
        || "malloc'd boxes corrupt".into(),
    );
    c.check(big[12345] == 12345, || "big malloc corrupt".into());
    boxes.truncate(10);
    drop(big);
    unsafe {
        let old = libc::sbrk(PAGE as libc::intptr_t);
        if old as isize == -1 {
            c.fail(format!("sbrk(+4096): {}", std::io::Error::last_os_error()));
        } else {
            let q = old as *mut u8;
            q.write_volatile(7);
            c.check(q.read_volatile() == 7, || {
                "sbrk'd memory not writable".into()
            });
            c.check(libc::sbrk(-(PAGE as libc::intptr_t)) as isize != -1, || {
                "sbrk(-4096) failed".into()
            });
        }
    }
    let _ = std::fs::remove_file(&priv_path);
    let _ = std::fs::remove_file(&shared_path);
    black_box(&boxes);
    p.finish(c.into_result());
}

fn holes_addr(regions: &[Region]) -> *mut u8 {
    regions
        .iter()
        .find(|r| r.name == "holes")
        .map(|r| r.addr)
        .unwrap_or(ptr::null_mut())
}

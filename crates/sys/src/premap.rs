//! Private memory premapped by a restored process before it forks its
//! children, so that they inherit it copy-on-write as they did before the
//! dump. It runs in the forked copy of crust that becomes the process:
//! crust's own code still runs there, so a range is only premapped where
//! nothing is mapped. The ranges premapped, by this process or inherited
//! from its parent, are kept in a registry that children inherit with the
//! rest of the memory; only those ranges can be written here.

use std::io;
use std::sync::Mutex;

/// Size of a page.
const PAGE: usize = 4096;

/// The premapped ranges [start, end) of this process.
static PREMAPPED: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());

fn registry() -> std::sync::MutexGuard<'static, Vec<(u64, u64)>> {
    PREMAPPED.lock().unwrap_or_else(|e| e.into_inner())
}

/// The premapped ranges, sorted.
pub fn premapped() -> Vec<(u64, u64)> {
    let mut v = registry().clone();
    v.sort_unstable();
    v
}

/// Make [start, end) a premapped range of private anonymous read-write
/// memory: kept if inherited exactly, else mapped if the range is free.
/// False when something else is there.
pub fn premap(start: u64, end: u64) -> io::Result<bool> {
    if !start.is_multiple_of(PAGE as u64) || end <= start || !end.is_multiple_of(PAGE as u64) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "unaligned range",
        ));
    }
    let mut reg = registry();
    if reg.contains(&(start, end)) {
        return Ok(true);
    }
    if reg.iter().any(|&(s, e)| s < end && e > start) {
        return Ok(false);
    }
    // SAFETY: MAP_FIXED_NOREPLACE never replaces a mapping: it fails with
    // EEXIST when anything of this process is in the range.
    let p = unsafe {
        libc::mmap(
            start as *mut libc::c_void,
            (end - start) as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EEXIST) => Ok(false),
            _ => Err(e),
        };
    }
    if p as u64 != start {
        // An old kernel that takes the flag as a hint: not ours to use.
        // SAFETY: unmapping the mapping just made.
        unsafe { libc::munmap(p, (end - start) as usize) };
        return Ok(false);
    }
    reg.push((start, end));
    Ok(true)
}

/// Unmap every premapped range not in `keep` (inherited ones this process
/// does not have).
pub fn release_except(keep: &[(u64, u64)]) -> io::Result<()> {
    let mut reg = registry();
    let mut err = None;
    reg.retain(|r| {
        if keep.contains(r) {
            return true;
        }
        // SAFETY: a premapped range, which crust's own code never uses.
        if unsafe { libc::munmap(r.0 as *mut libc::c_void, (r.1 - r.0) as usize) } != 0 {
            err = Some(io::Error::last_os_error());
        }
        false
    });
    err.map_or(Ok(()), Err)
}

fn inside(start: u64, len: usize) -> bool {
    let end = start + len as u64;
    registry().iter().any(|&(s, e)| s <= start && end <= e)
}

/// Make premapped memory at `addr` hold `data` (page-aligned, whole pages),
/// writing only the pages that differ, so that the others stay shared with
/// the parent. Returns the number of pages written.
pub fn fill(addr: u64, data: &[u8]) -> io::Result<usize> {
    if !addr.is_multiple_of(PAGE as u64)
        || !data.len().is_multiple_of(PAGE)
        || !inside(addr, data.len())
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{addr:#x}+{} is not premapped whole pages", data.len()),
        ));
    }
    let mut written = 0;
    for (i, want) in data.chunks_exact(PAGE).enumerate() {
        let at = (addr as usize + i * PAGE) as *mut u8;
        // SAFETY: `at..at + PAGE` lies in a premapped range (checked above),
        // private read-write memory that only this code touches.
        let have = unsafe { std::slice::from_raw_parts_mut(at, PAGE) };
        if have != want {
            have.copy_from_slice(want);
            written += 1;
        }
    }
    Ok(written)
}

/// Drop the pages of premapped memory [addr, addr + len): they read as
/// zero again, not present.
pub fn drop_pages(addr: u64, len: usize) -> io::Result<()> {
    if !inside(addr, len) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{addr:#x}+{len} is not premapped"),
        ));
    }
    // SAFETY: a premapped range (checked above).
    if unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_DONTNEED) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

//! `/proc/PID/pagemap` asked with the PAGEMAP_SCAN ioctl: which pages of a
//! range of a task's memory are there, as ranges, without reading one entry
//! per page.

use std::io;
use std::os::fd::AsRawFd;

/// `PAGE_IS_FILE`: a file page (or shared anonymous memory).
pub const PAGE_IS_FILE: u64 = 1 << 2;
/// `PAGE_IS_PRESENT`: in memory.
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
/// `PAGE_IS_SWAPPED`: in swap.
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
/// `PAGE_IS_PFNZERO`: the shared zero page (4 KiB or huge).
pub const PAGE_IS_PFNZERO: u64 = 1 << 5;

/// `struct pm_scan_arg` (newer than Debian 12's headers).
#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `struct page_region`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// `PAGEMAP_SCAN` = _IOWR('f', 16, struct pm_scan_arg).
const PAGEMAP_SCAN: u64 =
    (3 << 30) | ((std::mem::size_of::<PmScanArg>() as u64) << 16) | ((b'f' as u64) << 8) | 16;

/// Regions one ioctl fills at most.
const REGIONS: usize = 256;

/// The pages of `[start, end)` in the task whose pagemap `file` is that
/// have at least one of the categories `any_of` and none of `none_of`:
/// ranges `[start, end)` in address order, adjacent ones merged.
pub fn scan(
    file: &std::fs::File,
    start: u64,
    end: u64,
    any_of: u64,
    none_of: u64,
) -> io::Result<Vec<(u64, u64)>> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut regions = [PageRegion::default(); REGIONS];
    let mut at = start;
    while at < end {
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            start: at,
            end,
            vec: regions.as_mut_ptr() as u64,
            vec_len: REGIONS as u64,
            // A category in none_of must read as 1 once inverted.
            category_inverted: none_of,
            category_mask: none_of,
            category_anyof_mask: any_of,
            return_mask: any_of,
            ..Default::default()
        };
        // SAFETY: arg is a valid pm_scan_arg whose vec points at REGIONS
        // writable page_region entries that outlive the call.
        let n = unsafe { libc::ioctl(file.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(io::Error::new(
                e.kind(),
                format!("the PAGEMAP_SCAN ioctl (Linux 6.7 or newer): {e}"),
            ));
        }
        for r in &regions[..n as usize] {
            match out.last_mut() {
                Some(last) if last.1 == r.start => last.1 = r.end,
                _ => out.push((r.start, r.end)),
            }
        }
        if arg.walk_end <= at {
            return Err(io::Error::other(format!(
                "PAGEMAP_SCAN did not move past {at:#x}"
            )));
        }
        at = arg.walk_end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Touched pages of a fresh mapping are found as ranges, untouched and
    /// zero-page ones are not; the file pages of a file mapping only with
    /// PAGE_IS_FILE allowed.
    #[test]
    fn scan_finds_touched_pages_as_ranges() {
        let page = 4096usize;
        // SAFETY: a fresh private anonymous mapping of 16 pages, unmapped
        // at the end; only its own pages are touched.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                16 * page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let p = base.cast::<u8>();
        // SAFETY: offsets within the mapping.
        unsafe {
            for i in [1usize, 2, 3, 7] {
                p.add(i * page).write_volatile(1);
            }
            // A read maps the shared zero page.
            std::ptr::read_volatile(p.add(10 * page));
        }
        let f = std::fs::File::open("/proc/self/pagemap").unwrap();
        let (s, e) = (base as u64, base as u64 + 16 * page as u64);
        let got = scan(&f, s, e, PAGE_IS_PRESENT | PAGE_IS_SWAPPED, PAGE_IS_PFNZERO).unwrap();
        let at = |i: u64| s + i * page as u64;
        assert_eq!(got, vec![(at(1), at(4)), (at(7), at(8))]);
        let with_zero = scan(&f, s, e, PAGE_IS_PRESENT, 0).unwrap();
        assert_eq!(
            with_zero,
            vec![(at(1), at(4)), (at(7), at(8)), (at(10), at(11))]
        );
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(base, 16 * page) };
    }
}

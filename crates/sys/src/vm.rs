//! Moving memory between crust and another process in large batches:
//! process_vm_readv/writev with many iovecs per call, and /proc/PID/mem for
//! mappings the task cannot write itself.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;

use libc::pid_t;

/// At most this many remote iovecs go into one call (the kernel's IOV_MAX).
const IOV_BATCH: usize = 1024;

/// A range of another process's address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteRange {
    /// Start address in the other process.
    pub addr: u64,
    /// Length in bytes.
    pub len: usize,
}

/// Which direction a transfer goes.
#[derive(Clone, Copy)]
enum Direction {
    Read,
    Write,
}

/// Read `ranges` of process `pid`, in order, into `local`, which must be
/// exactly as long as the ranges together.
pub fn read_ranges(pid: pid_t, ranges: &[RemoteRange], local: &mut [u8]) -> io::Result<()> {
    transfer(
        pid,
        ranges,
        local.as_mut_ptr(),
        local.len(),
        Direction::Read,
    )
}

/// Write `local`, in order, into `ranges` of process `pid`.
pub fn write_ranges(pid: pid_t, ranges: &[RemoteRange], local: &[u8]) -> io::Result<()> {
    transfer(
        pid,
        ranges,
        local.as_ptr() as *mut u8,
        local.len(),
        Direction::Write,
    )
}

fn transfer(
    pid: pid_t,
    ranges: &[RemoteRange],
    local: *mut u8,
    local_len: usize,
    dir: Direction,
) -> io::Result<()> {
    let total: usize = ranges.iter().map(|r| r.len).sum();
    if total != local_len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("remote ranges hold {total} bytes, local buffer {local_len}"),
        ));
    }
    let mut done = 0usize; // bytes moved so far
    let mut idx = 0usize; // first range not fully moved
    let mut skip = 0usize; // bytes of ranges[idx] already moved
    while idx < ranges.len() {
        let mut iov = Vec::with_capacity(IOV_BATCH.min(ranges.len() - idx));
        let mut batch = 0usize;
        for (n, r) in ranges[idx..].iter().enumerate().take(IOV_BATCH) {
            let off = if n == 0 { skip } else { 0 };
            iov.push(libc::iovec {
                iov_base: (r.addr as usize + off) as *mut libc::c_void,
                iov_len: r.len - off,
            });
            batch += r.len - off;
        }
        let liov = libc::iovec {
            // SAFETY: done < local_len, within the caller's buffer.
            iov_base: unsafe { local.add(done) }.cast(),
            iov_len: batch,
        };
        // SAFETY: the local iovec lies inside the caller's buffer; remote
        // iovecs are checked by the kernel.
        let r = unsafe {
            match dir {
                Direction::Read => {
                    libc::process_vm_readv(pid, &liov, 1, iov.as_ptr(), iov.len() as u64, 0)
                }
                Direction::Write => {
                    libc::process_vm_writev(pid, &liov, 1, iov.as_ptr(), iov.len() as u64, 0)
                }
            }
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut moved = r as usize;
        if moved == 0 {
            return Err(io::Error::other(format!(
                "no progress moving memory at {:#x} of pid {pid}",
                ranges[idx].addr as usize + skip
            )));
        }
        done += moved;
        while moved > 0 {
            let left = ranges[idx].len - skip;
            if moved >= left {
                moved -= left;
                idx += 1;
                skip = 0;
            } else {
                skip += moved;
                moved = 0;
            }
        }
        while idx < ranges.len() && ranges[idx].len == 0 {
            idx += 1;
        }
    }
    Ok(())
}

/// Read `buf.len()` bytes at `addr` of process `pid` through /proc/PID/mem.
pub fn read_proc_mem(pid: pid_t, addr: u64, buf: &mut [u8]) -> io::Result<()> {
    let f = OpenOptions::new()
        .read(true)
        .open(format!("/proc/{pid}/mem"))?;
    f.read_exact_at(buf, addr)
}

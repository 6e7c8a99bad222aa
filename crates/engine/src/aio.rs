//! AIO contexts (io_setup): the ring the kernel maps in the task, shown
//! in /proc/PID/maps as `/[aio] (deleted)`. As CRIU, the ring's VMA is
//! marked VMA_AREA_AIORING and described by an `aio_ring_entry {id,
//! nr_req, ring_len}` in the mm image (id: the context id, which is the
//! ring's address; nr_req: an io_setup argument that gives a ring of that
//! length).
//!
//! Only idle contexts are dumped: a ring holding completed events not yet
//! reaped (head != tail) is refused. Requests still in flight (submitted,
//! not completed, such as IOCB_CMD_POLL or O_DIRECT reads not done yet)
//! are not visible from outside the kernel, and are lost; buffered file
//! I/O completes inside io_submit.
//!
//! At restore the context is created again by the task (remote io_setup)
//! and its ring moved to the dumped address with mremap, which the kernel
//! follows: the context keeps its id. The ring starts empty (head = tail =
//! 0), which is what an idle ring means to io_getevents and libaio.

use crust_image::pb;
use crust_sys::vm::{self, RemoteRange};

use crate::error::{Error, Result};
use crate::remote::Remote;

/// `VMA_AREA_AIORING`: the VMA is an AIO ring.
pub const VMA_AREA_AIORING: u32 = 1 << 13;
/// The ring's header: id, nr, head, tail, magic, compat and incompat
/// features, header length (u32 each).
const HEADER: u64 = 32;
/// `struct io_event`.
const EVENT: u64 = 32;
/// `AIO_RING_MAGIC`.
const MAGIC: u32 = 0xa10a_10a1;

/// Whether a VMA of /proc/PID/maps (its path, deleted mark) is an AIO
/// ring.
pub fn is_ring(path: &str, deleted: bool, shared: bool) -> bool {
    path == "/[aio]" && deleted && shared
}

/// The io_setup argument that makes a ring of `len` bytes here: the
/// kernel doubles it, adds 2 and rounds the ring up to pages.
fn nr_req_for(len: u64) -> u32 {
    (len.saturating_sub(HEADER + 2 * EVENT) / (2 * EVENT)).max(1) as u32
}

/// Check the ring at `start`..`end` of frozen task `pid` is idle, and
/// describe it.
pub fn dump(pid: i32, start: u64, end: u64) -> Result<pb::AioRingEntry> {
    let mut h = [0u8; HEADER as usize];
    vm::read_ranges(
        pid,
        &[RemoteRange {
            addr: start,
            len: h.len(),
        }],
        &mut h,
    )
    .map_err(|err| Error::Sys {
        what: format!("reading the AIO ring at {start:#x} of pid {pid}"),
        err,
    })?;
    let word = |i: usize| u32::from_ne_bytes(h[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
    let (nr, head, tail, magic) = (word(1), word(2), word(3), word(4));
    let refuse = |what: String| Error::Unsupported {
        pid,
        what: format!("the AIO context {start:#x} (ring {start:#x}-{end:#x}): {what}"),
    };
    if magic != MAGIC {
        return Err(refuse(format!(
            "its ring has magic {magic:#x}, not {MAGIC:#x}"
        )));
    }
    if head != tail {
        let pending = (tail + nr - head) % nr.max(1);
        return Err(refuse(format!(
            "{pending} completed events not reaped yet (head {head}, tail {tail}), not supported"
        )));
    }
    Ok(pb::AioRingEntry {
        id: start,
        nr_req: nr_req_for(end - start),
        ring_len: (end - start) as u32,
    })
}

/// Create the AIO contexts of `aios` again in the task and move each ring
/// to its dumped address (which must be free). The scratch area must be
/// mapped.
pub fn restore(r: &Remote, aios: &[pb::AioRingEntry]) -> Result<()> {
    for a in aios {
        let what = format!("io_setup({}) for the AIO context {:#x}", a.nr_req, a.id);
        let at = r.put(0, &0u64.to_ne_bytes())?;
        r.call(&what, libc::SYS_io_setup, [a.nr_req as u64, at, 0, 0, 0, 0])?;
        let mut ctx = [0u8; 8];
        r.get(0, &mut ctx)?;
        let ring = u64::from_ne_bytes(ctx);
        let mut nr = [0u8; 4];
        vm::read_ranges(
            r.pid(),
            &[RemoteRange {
                addr: ring + 4,
                len: 4,
            }],
            &mut nr,
        )
        .map_err(|err| Error::Sys {
            what: format!("reading the new AIO ring of pid {}", r.pid()),
            err,
        })?;
        let len = (HEADER + u32::from_ne_bytes(nr) as u64 * EVENT).next_multiple_of(4096);
        if len != a.ring_len as u64 {
            return Err(Error::Restore {
                pid: r.pid(),
                what: format!(
                    "{what} made a ring of {len} bytes, not {} (another number of CPUs?)",
                    a.ring_len
                ),
            });
        }
        if ring != a.id {
            let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
            let got = r.call(
                &format!("mremap of the AIO ring to {:#x}", a.id),
                libc::SYS_mremap,
                [ring, len, len, flags, a.id, 0],
            )?;
            if got != a.id {
                return Err(Error::Restore {
                    pid: r.pid(),
                    what: format!("the AIO ring landed at {got:#x}, not {:#x}", a.id),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ring length the kernel makes for io_setup(n) with `cpus` CPUs.
    fn kernel_ring_len(n: u64, cpus: u64) -> u64 {
        let events = n.max(cpus * 4) * 2 + 2;
        let pages = (HEADER + events * EVENT).div_ceil(4096);
        let nr = (pages * 4096 - HEADER) / EVENT;
        (HEADER + nr * EVENT).next_multiple_of(4096)
    }

    #[test]
    fn nr_req_gives_the_same_ring() {
        for n in [1u64, 16, 62, 63, 127, 128, 1000, 65536] {
            let len = kernel_ring_len(n, 2);
            assert_eq!(
                kernel_ring_len(nr_req_for(len) as u64, 2),
                len,
                "io_setup({n})"
            );
        }
    }
}

//! Remote syscalls with a scratch mapping: how crust asks a stopped task for
//! what only the task itself can see or change. The syscalls run at a
//! `syscall` instruction of the task's vdso; arguments and results travel
//! through a scratch mapping that crust maps in the task and unmaps again.

use crust_sys::procfs::{self, VmaPath};
use crust_sys::ptrace::Regs;
use crust_sys::remote::{find_syscall_insn, RemoteSyscaller};
use crust_sys::vm::{self, RemoteRange};

use crate::error::{Context, Error, Result};

/// Size of the scratch mapping.
pub const SCRATCH_LEN: usize = 64 * 1024;

/// A stopped, traced task that crust drives with remote syscalls.
pub struct Remote {
    pid: i32,
    sc: RemoteSyscaller,
    scratch: Option<u64>,
}

impl Remote {
    /// Prepare remote syscalls in `pid`, whose registers are `regs`, at a
    /// `syscall` instruction of its current [vdso].
    pub fn new(pid: i32, regs: Regs) -> Result<Self> {
        let ip = vdso_syscall_ip(pid)?;
        Ok(Remote {
            pid,
            sc: RemoteSyscaller::new(pid, ip, regs),
            scratch: None,
        })
    }

    /// Remote syscalls in another thread `tid` of the same process (same
    /// vdso, same scratch area), whose registers are `regs`.
    pub fn sibling(&self, tid: i32, regs: Regs) -> Remote {
        Remote {
            pid: tid,
            sc: RemoteSyscaller::new(tid, self.sc.ip(), regs),
            scratch: self.scratch,
        }
    }

    /// Forget the scratch area without unmapping it (a sibling's view).
    pub fn forget_scratch(&mut self) {
        self.scratch = None;
    }

    /// The task.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The range `[old, old + len)` moved to `new`: if the syscall
    /// instruction crust executes at was in it, follow it.
    pub fn moved(&mut self, old: u64, len: u64, new: u64) {
        let ip = self.sc.ip();
        if (old..old + len).contains(&ip) {
            self.sc.set_ip(ip - old + new);
        }
    }

    /// Run syscall `nr`; `what` names it in errors.
    pub fn call(&self, what: &str, nr: i64, args: [u64; 6]) -> Result<u64> {
        self.sc
            .call(nr, args)
            .ctx(|| format!("remote {what} in pid {}", self.pid))
    }

    /// Run syscall `nr` and return its raw result (negative errno).
    pub fn raw(&self, what: &str, nr: i64, args: [u64; 6]) -> Result<i64> {
        self.sc
            .raw(nr, args)
            .ctx(|| format!("remote {what} in pid {}", self.pid))
    }

    /// Map the scratch area: at `fixed` exactly (which must be free), or
    /// wherever the kernel likes. Shared anonymous memory never merges with
    /// the task's own private mappings.
    pub fn map_scratch(&mut self, fixed: Option<u64>) -> Result<u64> {
        let (addr, flags) = match fixed {
            Some(a) => (a, libc::MAP_FIXED_NOREPLACE),
            None => (0, 0),
        };
        let got = self.call(
            "mmap of the scratch area",
            libc::SYS_mmap,
            [
                addr,
                SCRATCH_LEN as u64,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                (libc::MAP_SHARED | libc::MAP_ANONYMOUS | flags) as u64,
                u64::MAX,
                0,
            ],
        )?;
        if fixed.is_some_and(|a| a != got) {
            return Err(Error::Restore {
                pid: self.pid,
                what: format!("scratch area landed at {got:#x}, not {addr:#x}"),
            });
        }
        self.scratch = Some(got);
        Ok(got)
    }

    /// Unmap the scratch area.
    pub fn unmap_scratch(&mut self) -> Result<()> {
        if let Some(addr) = self.scratch.take() {
            self.call(
                "munmap of the scratch area",
                libc::SYS_munmap,
                [addr, SCRATCH_LEN as u64, 0, 0, 0, 0],
            )?;
        }
        Ok(())
    }

    /// Address of the scratch area (which must be mapped).
    pub fn scratch(&self) -> u64 {
        self.scratch.expect("scratch area is mapped")
    }

    /// Copy `data` into the scratch area at `offset`; returns its remote
    /// address.
    pub fn put(&self, offset: usize, data: &[u8]) -> Result<u64> {
        assert!(offset + data.len() <= SCRATCH_LEN, "scratch overflow");
        let addr = self.scratch() + offset as u64;
        vm::write_ranges(
            self.pid,
            &[RemoteRange {
                addr,
                len: data.len(),
            }],
            data,
        )
        .ctx(|| format!("writing the scratch area of pid {}", self.pid))?;
        Ok(addr)
    }

    /// Read `buf.len()` bytes of the scratch area at `offset`.
    pub fn get(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        assert!(offset + buf.len() <= SCRATCH_LEN, "scratch overflow");
        vm::read_ranges(
            self.pid,
            &[RemoteRange {
                addr: self.scratch() + offset as u64,
                len: buf.len(),
            }],
            buf,
        )
        .ctx(|| format!("reading the scratch area of pid {}", self.pid))
    }

    /// Put a NUL-terminated path into the scratch area at `offset`.
    pub fn put_path(&self, offset: usize, path: &str) -> Result<u64> {
        let mut bytes = path.as_bytes().to_vec();
        bytes.push(0);
        if offset + bytes.len() > SCRATCH_LEN {
            return Err(Error::Restore {
                pid: self.pid,
                what: format!("path too long: {path}"),
            });
        }
        self.put(offset, &bytes)
    }
}

/// Address of a `syscall` instruction in the [vdso] of `pid`.
fn vdso_syscall_ip(pid: i32) -> Result<u64> {
    let maps = procfs::read_maps(pid)?;
    let vdso = maps
        .iter()
        .find(|v| v.path == VmaPath::Vdso)
        .ok_or_else(|| Error::Kernel(format!("a [vdso] in pid {pid}")))?;
    find_syscall_insn(pid, vdso.start, vdso.end)
        .ctx(|| format!("looking for a syscall instruction in the vdso of pid {pid}"))
}

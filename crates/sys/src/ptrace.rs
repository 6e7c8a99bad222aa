//! ptrace: seize, interrupt, wait, registers (general, XSTATE), signal mask,
//! pending signals, rseq configuration and TLS entries of a traced thread.

use std::io;

use libc::{c_long, c_void, pid_t};

/// `PTRACE_GET_RSEQ_CONFIGURATION` (not in Debian 12's headers).
const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
/// `PTRACE_GETSIGMASK`.
const PTRACE_GETSIGMASK: libc::c_uint = 0x420a;
/// `PTRACE_SETSIGMASK`.
const PTRACE_SETSIGMASK: libc::c_uint = 0x420b;
/// `PTRACE_GET_THREAD_AREA` (x86).
const PTRACE_GET_THREAD_AREA: libc::c_uint = 25;
/// `PTRACE_SET_THREAD_AREA` (x86).
const PTRACE_SET_THREAD_AREA: libc::c_uint = 26;
/// `PTRACE_PEEKSIGINFO`.
const PTRACE_PEEKSIGINFO: libc::c_uint = 0x4209;
/// `PTRACE_PEEKSIGINFO_SHARED`: peek the process-wide queue.
const PTRACE_PEEKSIGINFO_SHARED: u32 = 1;
/// Size of a `siginfo_t`.
pub const SIGINFO_SIZE: usize = 128;
/// ELF note type of the x86 extended state regset.
const NT_X86_XSTATE: usize = 0x202;
/// Largest XSTATE area crust accepts (AMX tiles make it ~11 KiB).
pub const XSTATE_MAX: usize = 16384;

/// General-purpose registers of an x86_64 thread, as ptrace shows them.
pub type Regs = libc::user_regs_struct;

/// The rseq registration of a thread, from `PTRACE_GET_RSEQ_CONFIGURATION`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RseqConfig {
    /// Address of the registered `struct rseq`, 0 when none.
    pub rseq_abi_pointer: u64,
    /// Registered size.
    pub rseq_abi_size: u32,
    /// Abort signature.
    pub signature: u32,
    /// Registration flags.
    pub flags: u32,
    /// Padding.
    pub pad: u32,
}

/// A TLS descriptor as `PTRACE_GET_THREAD_AREA` shows it (`struct user_desc`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserDesc {
    /// GDT entry number.
    pub entry_number: u32,
    /// Segment base.
    pub base_addr: u32,
    /// Segment limit.
    pub limit: u32,
    /// Packed flag bits (seg_32bit, contents, read_exec_only, limit_in_pages,
    /// seg_not_present, useable, lm).
    pub flags: u32,
}

fn check(ret: c_long) -> io::Result<c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn ptrace_raw(req: libc::c_uint, tid: pid_t, addr: usize, data: usize) -> io::Result<c_long> {
    // SAFETY: every caller passes addr/data that are valid for `req`.
    check(unsafe { libc::ptrace(req, tid, addr as *mut c_void, data as *mut c_void) })
}

/// `PTRACE_SEIZE` with the given `PTRACE_O_*` options.
pub fn seize(tid: pid_t, options: i32) -> io::Result<()> {
    ptrace_raw(libc::PTRACE_SEIZE, tid, 0, options as usize).map(drop)
}

/// `PTRACE_INTERRUPT`: stop a seized thread.
pub fn interrupt(tid: pid_t) -> io::Result<()> {
    ptrace_raw(libc::PTRACE_INTERRUPT, tid, 0, 0).map(drop)
}

/// `PTRACE_SETOPTIONS`.
pub fn set_options(tid: pid_t, options: i32) -> io::Result<()> {
    ptrace_raw(libc::PTRACE_SETOPTIONS, tid, 0, options as usize).map(drop)
}

/// `PTRACE_DETACH`, delivering `sig` (0 for none).
pub fn detach(tid: pid_t, sig: i32) -> io::Result<()> {
    ptrace_raw(libc::PTRACE_DETACH, tid, 0, sig as usize).map(drop)
}

/// `PTRACE_SINGLESTEP`: resume for one instruction.
pub fn single_step(tid: pid_t, sig: i32) -> io::Result<()> {
    ptrace_raw(libc::PTRACE_SINGLESTEP, tid, 0, sig as usize).map(drop)
}

/// `PTRACE_SYSCALL`: resume until the next syscall entry or exit.
pub fn resume_to_syscall(tid: pid_t) -> io::Result<()> {
    ptrace_raw(libc::PTRACE_SYSCALL, tid, 0, 0).map(drop)
}

/// `PTRACE_CONT`.
pub fn resume(tid: pid_t, sig: i32) -> io::Result<()> {
    ptrace_raw(libc::PTRACE_CONT, tid, 0, sig as usize).map(drop)
}

/// How a waited-for thread changed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitEvent {
    /// Exited with this code.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
    /// Stopped; `status >> 8` as the kernel reports it (signal | event << 8).
    Stopped {
        /// The stop signal (with 0x80 for syscall stops under TRACESYSGOOD).
        sig: i32,
        /// The `PTRACE_EVENT_*` number, 0 when none.
        event: i32,
    },
}

/// waitpid(tid, __WALL) retried on EINTR.
pub fn wait(tid: pid_t) -> io::Result<WaitEvent> {
    wait_flags(tid, libc::__WALL).map(|e| e.expect("blocking wait returned nothing"))
}

/// waitpid(tid, __WALL | WNOHANG): `None` when nothing changed.
pub fn try_wait(tid: pid_t) -> io::Result<Option<WaitEvent>> {
    wait_flags(tid, libc::__WALL | libc::WNOHANG)
}

fn wait_flags(tid: pid_t, flags: i32) -> io::Result<Option<WaitEvent>> {
    loop {
        let mut status = 0;
        // SAFETY: status is a valid out pointer.
        let r = unsafe { libc::waitpid(tid, &mut status, flags) };
        if r == -1 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Ok(None);
        }
        let ev = if libc::WIFEXITED(status) {
            WaitEvent::Exited(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            WaitEvent::Signaled(libc::WTERMSIG(status))
        } else {
            WaitEvent::Stopped {
                sig: (status >> 8) & 0xff,
                event: (status >> 16) & 0xff,
            }
        };
        return Ok(Some(ev));
    }
}

/// `PTRACE_GETREGS`.
pub fn get_regs(tid: pid_t) -> io::Result<Regs> {
    // SAFETY: user_regs_struct is plain old data.
    let mut regs: Regs = unsafe { std::mem::zeroed() };
    ptrace_raw(
        libc::PTRACE_GETREGS,
        tid,
        0,
        &mut regs as *mut Regs as usize,
    )?;
    Ok(regs)
}

/// `PTRACE_SETREGS`.
pub fn set_regs(tid: pid_t, regs: &Regs) -> io::Result<()> {
    ptrace_raw(libc::PTRACE_SETREGS, tid, 0, regs as *const Regs as usize).map(drop)
}

/// The thread's XSTATE area (standard, non-compacted XSAVE layout) via
/// `PTRACE_GETREGSET NT_X86_XSTATE`.
pub fn get_xstate(tid: pid_t) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; XSTATE_MAX];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    ptrace_raw(
        libc::PTRACE_GETREGSET,
        tid,
        NT_X86_XSTATE,
        &mut iov as *mut libc::iovec as usize,
    )?;
    buf.truncate(iov.iov_len);
    Ok(buf)
}

/// `PTRACE_SETREGSET NT_X86_XSTATE`.
pub fn set_xstate(tid: pid_t, xstate: &[u8]) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: xstate.as_ptr() as *mut c_void,
        iov_len: xstate.len(),
    };
    ptrace_raw(
        libc::PTRACE_SETREGSET,
        tid,
        NT_X86_XSTATE,
        &mut iov as *mut libc::iovec as usize,
    )
    .map(drop)
}

/// The blocked-signal mask (`PTRACE_GETSIGMASK`), bit N-1 for signal N.
pub fn get_sigmask(tid: pid_t) -> io::Result<u64> {
    let mut mask = 0u64;
    ptrace_raw(PTRACE_GETSIGMASK, tid, 8, &mut mask as *mut u64 as usize)?;
    Ok(mask)
}

/// `PTRACE_SETSIGMASK`.
pub fn set_sigmask(tid: pid_t, mask: u64) -> io::Result<()> {
    ptrace_raw(PTRACE_SETSIGMASK, tid, 8, &mask as *const u64 as usize).map(drop)
}

/// A raw `siginfo_t`.
pub type RawSiginfo = [u8; SIGINFO_SIZE];

/// `struct ptrace_peeksiginfo_args`.
#[repr(C)]
struct PeekSiginfoArgs {
    off: u64,
    flags: u32,
    nr: i32,
}

/// Every signal pending for thread `tid` in queue order, as raw `siginfo_t`
/// bytes: its own queue, or with `shared` its process's (`PTRACE_PEEKSIGINFO`
/// with `PTRACE_PEEKSIGINFO_SHARED`). Peeking leaves them queued.
pub fn peek_siginfo(tid: pid_t, shared: bool) -> io::Result<Vec<RawSiginfo>> {
    const BATCH: usize = 32;
    let mut out = Vec::new();
    let mut buf = vec![[0u8; SIGINFO_SIZE]; BATCH];
    loop {
        let args = PeekSiginfoArgs {
            off: out.len() as u64,
            flags: if shared { PTRACE_PEEKSIGINFO_SHARED } else { 0 },
            nr: BATCH as i32,
        };
        let n = ptrace_raw(
            PTRACE_PEEKSIGINFO,
            tid,
            &args as *const PeekSiginfoArgs as usize,
            buf.as_mut_ptr() as usize,
        )? as usize;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n.min(BATCH)]);
    }
}

/// `PTRACE_GET_RSEQ_CONFIGURATION`.
pub fn get_rseq_config(tid: pid_t) -> io::Result<RseqConfig> {
    let mut conf = RseqConfig::default();
    ptrace_raw(
        PTRACE_GET_RSEQ_CONFIGURATION,
        tid,
        std::mem::size_of::<RseqConfig>(),
        &mut conf as *mut RseqConfig as usize,
    )?;
    Ok(conf)
}

/// `PTRACE_GET_THREAD_AREA` for GDT entry `idx`.
pub fn get_thread_area(tid: pid_t, idx: u32) -> io::Result<UserDesc> {
    let mut desc = UserDesc::default();
    ptrace_raw(
        PTRACE_GET_THREAD_AREA,
        tid,
        idx as usize,
        &mut desc as *mut UserDesc as usize,
    )?;
    Ok(desc)
}

/// `PTRACE_SET_THREAD_AREA` for GDT entry `idx`.
pub fn set_thread_area(tid: pid_t, idx: u32, desc: &UserDesc) -> io::Result<()> {
    ptrace_raw(
        PTRACE_SET_THREAD_AREA,
        tid,
        idx as usize,
        desc as *const UserDesc as usize,
    )
    .map(drop)
}

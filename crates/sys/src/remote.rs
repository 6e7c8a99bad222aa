//! Remote syscalls: make a stopped, traced thread execute one syscall at a
//! `syscall` instruction that already exists in its own memory (its vdso),
//! with crust's arguments, and read the result. No code is ever written into
//! the task.

use std::io;

use libc::pid_t;

use crate::ptrace::{self, Regs, WaitEvent};
use crate::vm::{self, RemoteRange};

/// Stop signal of a syscall stop under PTRACE_O_TRACESYSGOOD.
const SYSCALL_STOP: i32 = libc::SIGTRAP | 0x80;

/// Find a `syscall` instruction (0f 05) in `[start, end)` of process `pid`.
pub fn find_syscall_insn(pid: pid_t, start: u64, end: u64) -> io::Result<u64> {
    let len = (end - start) as usize;
    let mut code = vec![0u8; len];
    vm::read_ranges(pid, &[RemoteRange { addr: start, len }], &mut code)?;
    code.windows(2)
        .position(|w| w == [0x0f, 0x05])
        .map(|off| start + off as u64)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no syscall instruction in {start:#x}-{end:#x} of pid {pid}"),
            )
        })
}

/// Runs syscalls inside a stopped, traced thread (which must be traced with
/// PTRACE_O_TRACESYSGOOD). Every call starts from `base` registers with rip
/// at the syscall instruction; the caller restores the thread's own
/// registers when it is done.
pub struct RemoteSyscaller {
    tid: pid_t,
    ip: u64,
    base: Regs,
}

impl RemoteSyscaller {
    /// A syscaller for thread `tid`, executing at `syscall_ip`.
    pub fn new(tid: pid_t, syscall_ip: u64, base: Regs) -> Self {
        RemoteSyscaller {
            tid,
            ip: syscall_ip,
            base,
        }
    }

    /// The `syscall` instruction this syscaller executes at.
    pub fn ip(&self) -> u64 {
        self.ip
    }

    /// The thread this syscaller drives.
    pub fn tid(&self) -> pid_t {
        self.tid
    }

    /// Execute at another `syscall` instruction from now on (after the vdso
    /// moved).
    pub fn set_ip(&mut self, syscall_ip: u64) {
        self.ip = syscall_ip;
    }

    /// Run syscall `nr` with `args`; returns the raw result (a negative
    /// errno on failure).
    pub fn raw(&self, nr: i64, args: [u64; 6]) -> io::Result<i64> {
        let mut regs = self.base;
        regs.rip = self.ip;
        regs.rax = nr as u64;
        regs.orig_rax = u64::MAX;
        regs.rdi = args[0];
        regs.rsi = args[1];
        regs.rdx = args[2];
        regs.r10 = args[3];
        regs.r8 = args[4];
        regs.r9 = args[5];
        ptrace::set_regs(self.tid, &regs)?;
        // Single-step over the syscall instruction: one stop, after the
        // syscall returned, instead of an entry and an exit stop.
        self.step_over()?;
        let after = ptrace::get_regs(self.tid)?;
        Ok(after.rax as i64)
    }

    /// Run syscall `nr`, turning a negative result into an io::Error.
    pub fn call(&self, nr: i64, args: [u64; 6]) -> io::Result<u64> {
        let r = self.raw(nr, args)?;
        if (-4095..0).contains(&r) {
            return Err(io::Error::from_raw_os_error(-r as i32));
        }
        Ok(r as u64)
    }

    fn step_over(&self) -> io::Result<()> {
        ptrace::single_step(self.tid, 0)?;
        loop {
            match ptrace::wait(self.tid)? {
                WaitEvent::Stopped { sig, event: 0 }
                    if sig == libc::SIGTRAP || sig == SYSCALL_STOP =>
                {
                    return Ok(())
                }
                WaitEvent::Stopped { .. } => {
                    // A stop that is not ours (a ptrace event such as the
                    // clone of a new thread, a group stop, or a signal crust
                    // could not block such as SIGSTOP): swallow it and go
                    // on; the caller blocked every other signal.
                    ptrace::single_step(self.tid, 0)?;
                }
                WaitEvent::Exited(code) => {
                    return Err(io::Error::other(format!(
                        "task {} exited with {code} during a remote syscall",
                        self.tid
                    )))
                }
                WaitEvent::Signaled(sig) => {
                    return Err(io::Error::other(format!(
                        "task {} was killed by signal {sig} during a remote syscall",
                        self.tid
                    )))
                }
            }
        }
    }
}

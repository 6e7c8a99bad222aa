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
        let regs = call_regs(self.base, self.ip, nr, args);
        ptrace::set_regs(self.tid, &regs)?;
        // Single-step over the syscall instruction: one stop, after the
        // syscall returned, instead of an entry and an exit stop.
        self.step_over()?;
        let after = ptrace::get_regs(self.tid)?;
        Ok(after.rax as i64)
    }

    /// Run syscall `nr`, turning a negative result into an io::Error.
    pub fn call(&self, nr: i64, args: [u64; 6]) -> io::Result<u64> {
        errno_result(self.raw(nr, args)?)
    }

    fn step_over(&self) -> io::Result<()> {
        ptrace::single_step(self.tid, 0)?;
        self.wait_trap(|tid| ptrace::single_step(tid, 0))
    }

    /// Wait until the thread, resumed by the caller, stops with SIGTRAP (a
    /// finished step, an int3 or a syscall stop); `again` resumes it past
    /// any other stop.
    fn wait_trap(&self, again: impl Fn(pid_t) -> io::Result<()>) -> io::Result<()> {
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
                    again(self.tid)?;
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

/// x86-64 code that runs a table of syscalls in the task, `rbx` pointing
/// at its first entry ([`BATCH_ENTRY`] bytes: the number, six arguments,
/// the result written back). It stops at a number of [`BATCH_END`] or
/// after the first call that fails (-4095..-1), with `int3`:
///
/// ```text
/// 0:  mov rax,[rbx]      cmp rax,-1      je 53
/// 9:  mov rdi,[rbx+8]    mov rsi,[rbx+16]  mov rdx,[rbx+24]
///     mov r10,[rbx+32]   mov r8,[rbx+40]   mov r9,[rbx+48]
/// 33: syscall            mov [rbx+56],rax
/// 39: cmp rax,-4095      jae 53          add rbx,64     jmp 0
/// 53: int3
/// ```
pub const BATCH_CODE: [u8; 54] = [
    0x48, 0x8b, 0x03, // mov rax, [rbx]
    0x48, 0x83, 0xf8, 0xff, // cmp rax, -1
    0x74, 0x2c, // je done
    0x48, 0x8b, 0x7b, 0x08, // mov rdi, [rbx+8]
    0x48, 0x8b, 0x73, 0x10, // mov rsi, [rbx+16]
    0x48, 0x8b, 0x53, 0x18, // mov rdx, [rbx+24]
    0x4c, 0x8b, 0x53, 0x20, // mov r10, [rbx+32]
    0x4c, 0x8b, 0x43, 0x28, // mov r8, [rbx+40]
    0x4c, 0x8b, 0x4b, 0x30, // mov r9, [rbx+48]
    0x0f, 0x05, // syscall
    0x48, 0x89, 0x43, 0x38, // mov [rbx+56], rax
    0x48, 0x3d, 0x01, 0xf0, 0xff, 0xff, // cmp rax, -4095
    0x73, 0x06, // jae done
    0x48, 0x83, 0xc3, 0x40, // add rbx, 64
    0xeb, 0xcb, // jmp 0
    0xcc, // done: int3
];
/// Bytes of one entry of a [`BATCH_CODE`] table.
pub const BATCH_ENTRY: usize = 64;
/// The number that ends a [`BATCH_CODE`] table.
pub const BATCH_END: u64 = u64::MAX;

impl RemoteSyscaller {
    /// Run the syscall table at `table` in the task with [`BATCH_CODE`] at
    /// `code` (both written there by the caller), with one resume of the
    /// thread; the results are in the table. Every signal but SIGKILL must
    /// be blocked in the thread, as for [`RemoteSyscaller::raw`].
    pub fn run_batch(&self, code: u64, table: u64) -> io::Result<()> {
        let mut regs = call_regs(self.base, code, 0, [0; 6]);
        regs.rbx = table;
        ptrace::set_regs(self.tid, &regs)?;
        ptrace::resume(self.tid, 0)?;
        self.wait_trap(|tid| ptrace::resume(tid, 0))
    }
}

/// Resume `tid` to its next syscall entry or exit stop.
fn syscall_step(tid: pid_t) -> io::Result<()> {
    ptrace::resume_to_syscall(tid)
}

/// `syscall; ret`: where a guarded remote syscall executes.
const SYSCALL_RET: &[u8] = &[0x0f, 0x05, 0xc3];
/// `mov $15, %rax; syscall` (glibc's and musl's `__restore_rt`).
const RESTORER_LONG: &[u8] = &[0x48, 0xc7, 0xc0, 0x0f, 0, 0, 0, 0x0f, 0x05];
/// `mov $15, %eax; syscall` (Go's runtime and others).
const RESTORER_SHORT: &[u8] = &[0xb8, 0x0f, 0, 0, 0, 0x0f, 0x05];
/// At most this many bytes of code are read to look for gadgets.
pub const GADGET_SCAN_MAX: usize = 64 << 20;
/// Code is read this much at a time to look for gadgets: glibc 2.36 has
/// its restorer 90 KiB and its first `syscall; ret` 390 KiB into its text,
/// so 1 MiB pieces read twice what was needed.
const GADGET_PIECE: usize = 256 << 10;

/// Two instruction sequences found in a task's own code that make remote
/// syscalls survive crust's death: `syscall; ret` to execute at, and a
/// signal restorer (`rt_sigreturn`) for the `ret` to land in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gadgets {
    /// Address of `syscall; ret`.
    pub syscall_ret: u64,
    /// Address of `mov $15, %rax/%eax; syscall`.
    pub restorer: u64,
}

/// Look for [`Gadgets`] in the code ranges `[start, end)` of process `pid`,
/// in order, a piece at a time, until both are found (at most
/// [`GADGET_SCAN_MAX`] bytes are read; pieces that cannot be read are
/// skipped); `None` when either sequence is missing. A restorer of the long
/// form is preferred, as glibc and musl have it.
pub fn find_gadgets(pid: pid_t, ranges: &[(u64, u64)]) -> Option<Gadgets> {
    use memchr::memmem;
    const STEP: usize = GADGET_PIECE;
    // A sequence may straddle two pieces: each piece overlaps the next by
    // one byte less than the longest.
    const OVERLAP: usize = RESTORER_LONG.len() - 1;
    let mut buf = vec![0u8; STEP];
    let mut budget = GADGET_SCAN_MAX;
    let (mut syscall_ret, mut long, mut short) = (None, None, None);
    for &(start, end) in ranges {
        let mut at = start;
        while at < end && budget > 0 {
            let len = ((end - at) as usize).min(STEP).min(budget);
            budget -= len;
            let piece = &mut buf[..len];
            if vm::read_ranges(pid, &[RemoteRange { addr: at, len }], piece).is_ok() {
                let found = |pat: &[u8]| memmem::find(piece, pat).map(|i| at + i as u64);
                syscall_ret = syscall_ret.or_else(|| found(SYSCALL_RET));
                long = long.or_else(|| found(RESTORER_LONG));
                // Only wanted without a long one: not looked for after it.
                if long.is_none() {
                    short = short.or_else(|| found(RESTORER_SHORT));
                }
            }
            if let (Some(syscall_ret), Some(restorer)) = (syscall_ret, long) {
                return Some(Gadgets {
                    syscall_ret,
                    restorer,
                });
            }
            if at + len as u64 >= end || len <= OVERLAP {
                break;
            }
            at += (len - OVERLAP) as u64;
        }
    }
    syscall_ret
        .zip(long.or(short))
        .map(|(syscall_ret, restorer)| Gadgets {
            syscall_ret,
            restorer,
        })
}

/// Whether `g` are gadgets in process `pid`: the bytes at both addresses
/// are the sequences (a few bytes read, where [`find_gadgets`] reads code
/// until it finds them).
pub fn gadgets_at(pid: pid_t, g: &Gadgets) -> bool {
    let mut bytes = [0u8; SYSCALL_RET.len() + RESTORER_LONG.len()];
    let (sc, rest) = bytes.split_at_mut(SYSCALL_RET.len());
    let read = |addr: u64, buf: &mut [u8]| {
        vm::read_ranges(
            pid,
            &[RemoteRange {
                addr,
                len: buf.len(),
            }],
            buf,
        )
        .is_ok()
    };
    if !read(g.syscall_ret, sc) || sc != SYSCALL_RET {
        return false;
    }
    let short = &mut rest[..RESTORER_SHORT.len()];
    if read(g.restorer, short) && short == RESTORER_SHORT {
        return true;
    }
    read(g.restorer, rest) && rest == RESTORER_LONG
}

/// `FP_XSTATE_MAGIC1`, in the software-reserved bytes of an XSAVE area.
const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
/// `FP_XSTATE_MAGIC2`, right after the XSAVE area in a signal frame.
const FP_XSTATE_MAGIC2: u32 = 0x4650_5845;
/// Offset of `struct _fpx_sw_bytes` in the XSAVE area.
const SW_BYTES_AT: usize = 464;
/// `UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS`.
const UC_FLAGS: u64 = 0x1 | 0x2 | 0x4;
/// An `ss_flags` that sigaltstack refuses (neither 0, SS_ONSTACK nor
/// SS_DISABLE): rt_sigreturn's restore of the alternate stack fails with
/// EINVAL, which the kernel ignores, so the task's own stays as it is.
const SS_FLAGS_INVALID: u32 = 0x7f;
/// `pretcode` + `struct ucontext` + `struct siginfo` of x86_64.
const FRAME_HEAD: usize = 8 + 312 + 128;
/// Offset of `uc_mcontext` in the frame.
const MCONTEXT_AT: usize = 8 + 40;
/// Offset of `uc_sigmask` in the frame.
const SIGMASK_AT: usize = 8 + 296;
/// Bytes below the stack pointer that the x86_64 ABI lets a function use
/// without moving it (the red zone).
pub const RED_ZONE: u64 = 128;
/// `__NR_restart_syscall`.
const NR_RESTART_SYSCALL: u64 = 219;

/// The kernel's restart errors, as a stopped thread's rax shows them.
const ERESTARTSYS: i64 = -512;
const ERESTARTNOINTR: i64 = -513;
const ERESTARTNOHAND: i64 = -514;
const ERESTART_RESTARTBLOCK: i64 = -516;

/// The registers a thread stopped at `regs` resumes with when no signal
/// handler runs: a syscall it was interrupted in is restarted (rip back on
/// the `syscall` instruction, rax = the syscall again, or restart_syscall
/// for -ERESTART_RESTARTBLOCK), since rt_sigreturn clears orig_rax and the
/// kernel would not restart it itself.
pub fn restarted(regs: &Regs) -> Regs {
    let mut r = *regs;
    if (r.orig_rax as i64) >= 0 {
        match r.rax as i64 {
            ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
                r.rax = r.orig_rax;
                r.rip -= 2;
            }
            ERESTART_RESTARTBLOCK => {
                r.rax = NR_RESTART_SYSCALL;
                r.rip -= 2;
            }
            _ => {}
        }
    }
    r.orig_rax = u64::MAX;
    r
}

/// Smallest XSAVE area: the legacy FXSAVE region and the XSAVE header.
const XSAVE_MIN: usize = 512 + 64;
/// Offset of XSTATE_BV (which components the area holds) in the header.
const XSTATE_BV_AT: usize = 512;

/// How much of the XSAVE area `xstate` (standard format) holds state: up to
/// the end of the last component its XSTATE_BV names (offsets from CPUID
/// leaf 0xD). PTRACE_GETREGSET sizes the area for every feature of the CPU,
/// dynamic ones (AMX tiles) included, but rt_sigreturn refuses an area
/// larger than the task's own. `None` when the area is too short.
fn xstate_used(xstate: &[u8]) -> Option<usize> {
    if xstate.len() < XSAVE_MIN {
        return None;
    }
    let bv = u64::from_ne_bytes(xstate[XSTATE_BV_AT..XSTATE_BV_AT + 8].try_into().ok()?);
    let mut used = XSAVE_MIN;
    for i in 2..64u32 {
        if bv >> i & 1 == 1 {
            let (off, size) = crate::task::xsave_component(i).unwrap_or((0, 0));
            used = used.max(off + size);
        }
    }
    (used <= xstate.len()).then_some(used)
}

/// The software-reserved bytes (`struct _fpx_sw_bytes`) rt_sigreturn wants
/// in the XSAVE area of a signal frame before it restores more than the
/// legacy x87/SSE state (PTRACE_GETREGSET leaves them zero): the size used,
/// and as the features to restore exactly those the area holds (the others
/// are reset to their initial state, as they were).
fn sw_bytes(xstate: &[u8], used: usize) -> [u8; 48] {
    let mut sw = [0u8; 48];
    sw[0..4].copy_from_slice(&FP_XSTATE_MAGIC1.to_ne_bytes());
    sw[4..8].copy_from_slice(&(used as u32 + 4).to_ne_bytes());
    sw[8..16].copy_from_slice(&xstate[XSTATE_BV_AT..XSTATE_BV_AT + 8]);
    sw[16..20].copy_from_slice(&(used as u32).to_ne_bytes());
    sw
}

/// A complete x86_64 `rt_sigframe` to be written at `at` (16-byte aligned)
/// in the task, whose rt_sigreturn gives back exactly `regs` (in their
/// [`restarted`] form), the FPU/XSTATE `xstate` (from NT_X86_XSTATE) and the
/// blocked mask `sigmask`; `pretcode` is the restorer a `ret` lands in.
/// `None` when `xstate` is too short to be an XSAVE area.
pub fn build_sigframe(
    at: u64,
    regs: &Regs,
    xstate: &[u8],
    sigmask: u64,
    pretcode: u64,
) -> Option<Vec<u8>> {
    let size = xstate_used(xstate)?;
    let sw = sw_bytes(xstate, size);
    let extended = size + 4;
    let fp_off = ((at as usize + FRAME_HEAD + 63) & !63) - at as usize;
    let mut f = vec![0u8; fp_off + extended];
    let put = |f: &mut [u8], off: usize, v: u64| f[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    put(&mut f, 0, pretcode);
    put(&mut f, 8, UC_FLAGS);
    // uc_link (16) and uc_stack.ss_sp (24) stay 0; ss_flags at 32.
    f[32..36].copy_from_slice(&SS_FLAGS_INVALID.to_ne_bytes());
    let r = restarted(regs);
    let gprs = [
        r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15, r.rdi, r.rsi, r.rbp, r.rbx, r.rdx,
        r.rax, r.rcx, r.rsp, r.rip, r.eflags,
    ];
    for (i, v) in gprs.iter().enumerate() {
        put(&mut f, MCONTEXT_AT + i * 8, *v);
    }
    // cs, gs, fs, ss (u16 each), then err, trapno, oldmask, cr2, fpstate.
    let segs = MCONTEXT_AT + 18 * 8;
    for (i, v) in [r.cs, r.gs, r.fs, r.ss].iter().enumerate() {
        f[segs + i * 2..segs + i * 2 + 2].copy_from_slice(&(*v as u16).to_ne_bytes());
    }
    put(&mut f, segs + 8 + 4 * 8, at + fp_off as u64);
    put(&mut f, SIGMASK_AT, sigmask);
    f[fp_off..fp_off + size].copy_from_slice(&xstate[..size]);
    f[fp_off + SW_BYTES_AT..fp_off + SW_BYTES_AT + sw.len()].copy_from_slice(&sw);
    f[fp_off + size..fp_off + size + 4].copy_from_slice(&FP_XSTATE_MAGIC2.to_ne_bytes());
    Some(f)
}

/// A thread's signal frame, built by [`GuardedSyscaller::plan`] and not
/// written yet.
pub struct Parking {
    tid: pid_t,
    gadgets: Gadgets,
    regs: Regs,
    sigmask: u64,
    frame_at: u64,
    frame: Vec<u8>,
}

/// Remote syscalls that leave the task whole whatever moment crust dies at.
///
/// Before the first call, a signal frame holding the thread's own registers,
/// XSTATE and signal mask is written below its stack pointer's red zone
/// (where the kernel itself would put one), and the thread is parked on it:
/// rip at a signal restorer of its own code. Each call then runs at a
/// `syscall; ret` of its own code with rsp on the frame, so that a thread
/// crust lets go of at any moment (crust killed: the kernel detaches it)
/// finishes the syscall, returns into the restorer, and rt_sigreturn puts
/// back exactly what it had. While crust lives, it stops the thread at the
/// syscall's exit, reads the result, and at [`GuardedSyscaller::finish`]
/// puts everything back itself, including the bytes under the frame.
pub struct GuardedSyscaller {
    tid: pid_t,
    gadgets: Gadgets,
    /// The thread's registers when crust took it.
    own: Regs,
    own_mask: u64,
    /// Where the frame is, and the bytes it covers.
    frame_at: u64,
    under_frame: Vec<u8>,
    /// The thread sits in a signal-delivery stop (where a resume applies the
    /// syscall restart rule to its registers), not at a syscall exit.
    at_signal_stop: std::cell::Cell<bool>,
    /// [`GuardedSyscaller::begin_finish`] resumed it towards its event stop.
    leaving: std::cell::Cell<bool>,
    finished: bool,
}

impl GuardedSyscaller {
    /// The first half of parking thread `tid` (stopped in a
    /// signal-delivery or PTRACE_INTERRUPT stop, traced with
    /// PTRACE_O_TRACESYSGOOD) on a signal frame of its own state: registers
    /// `regs`, XSTATE `xstate`, blocked mask `sigmask`; `stack` is the
    /// writable mapping `[start, end)` around rsp. This builds the frame and
    /// changes nothing; [`GuardedSyscaller::park_all`] writes it and blocks
    /// every signal. Fails with `ErrorKind::Unsupported` when the frame does
    /// not fit there or the XSTATE area lacks its software-reserved bytes.
    pub fn plan(
        tid: pid_t,
        gadgets: Gadgets,
        regs: Regs,
        xstate: &[u8],
        sigmask: u64,
        stack: (u64, u64),
    ) -> io::Result<Parking> {
        let unsupported = |what: String| io::Error::new(io::ErrorKind::Unsupported, what);
        let Some(used) = xstate_used(xstate) else {
            return Err(unsupported(format!(
                "the XSTATE area of thread {tid} ({} bytes) is not one",
                xstate.len()
            )));
        };
        let need = (FRAME_HEAD + 64 + used + 4) as u64;
        let top = regs.rsp.wrapping_sub(RED_ZONE);
        let frame_at = top.wrapping_sub(need) & !63;
        if !(regs.rsp <= stack.1 && frame_at >= stack.0 && frame_at < top) {
            return Err(unsupported(format!(
                "no room for a {need}-byte signal frame below the stack pointer {:#x} of thread {tid}",
                regs.rsp
            )));
        }
        let frame = build_sigframe(frame_at, &regs, xstate, sigmask, gadgets.restorer)
            .expect("checked above");
        Ok(Parking {
            tid,
            gadgets,
            regs,
            sigmask,
            frame_at,
            frame,
        })
    }

    /// The second half of parking, for `plans`, threads of one process:
    /// the bytes under every frame are read with one process_vm_readv and
    /// the frames written with one process_vm_writev, then each thread's
    /// registers and mask are set. (For 199 threads this takes as long as
    /// one call each, 3-3.7 ms: the cost is faulting in the stack pages
    /// the frames land on.) On an error, every thread is left as it was.
    pub fn park_all(plans: Vec<Parking>) -> io::Result<Vec<Self>> {
        let Some(first) = plans.first() else {
            return Ok(Vec::new());
        };
        let pid = first.tid;
        let ranges: Vec<RemoteRange> = plans
            .iter()
            .map(|p| RemoteRange {
                addr: p.frame_at,
                len: p.frame.len(),
            })
            .collect();
        let mut under = vec![0u8; ranges.iter().map(|r| r.len).sum()];
        vm::read_ranges(pid, &ranges, &mut under)?;
        let frames: Vec<u8> = plans.iter().flat_map(|p| p.frame.iter().copied()).collect();
        let put_back = |ranges: &[RemoteRange], bytes: &[u8]| {
            // Best effort on an error path: the bytes are below the stack
            // pointers' red zones, unused by the threads.
            let _ = vm::write_ranges(pid, ranges, bytes);
        };
        if let Err(e) = vm::write_ranges(pid, &ranges, &frames) {
            put_back(&ranges, &under);
            return Err(e);
        }
        let mut parked: Vec<Self> = Vec::with_capacity(plans.len());
        let mut at = 0;
        for (i, p) in plans.into_iter().enumerate() {
            let under_frame = under[at..at + p.frame.len()].to_vec();
            at += p.frame.len();
            match Self::park(p, under_frame) {
                Ok(g) => parked.push(g),
                Err(e) => {
                    // Those parked already are put back whole; the others
                    // only had their frames written.
                    let _ = Self::finish_all(&mut parked.iter_mut().collect::<Vec<_>>());
                    put_back(&ranges[i..], &under[at - ranges[i].len..]);
                    return Err(e);
                }
            }
        }
        Ok(parked)
    }

    /// Park the thread of `p`, whose frame is written: registers, then mask.
    fn park(p: Parking, under_frame: Vec<u8>) -> io::Result<Self> {
        // Parked: resumed now, the thread would run rt_sigreturn at once.
        let mut parked = p.regs;
        parked.orig_rax = u64::MAX;
        parked.rip = p.gadgets.restorer;
        parked.rsp = p.frame_at + 8;
        ptrace::set_regs(p.tid, &parked)?;
        let g = GuardedSyscaller {
            tid: p.tid,
            gadgets: p.gadgets,
            own: p.regs,
            own_mask: p.sigmask,
            frame_at: p.frame_at,
            under_frame,
            at_signal_stop: std::cell::Cell::new(true),
            leaving: std::cell::Cell::new(false),
            finished: false,
        };
        // Only once parked: a signal mask left blocked by a crust that died
        // is put back by rt_sigreturn.
        if let Err(e) = ptrace::set_sigmask(p.tid, u64::MAX) {
            let _ = ptrace::set_regs(p.tid, &p.regs);
            return Err(e);
        }
        Ok(g)
    }

    /// The thread.
    pub fn tid(&self) -> pid_t {
        self.tid
    }

    /// The thread's own registers, as crust found them.
    pub fn own_regs(&self) -> &Regs {
        &self.own
    }

    /// Run syscall `nr` with `args`; returns the raw result (a negative
    /// errno on failure).
    pub fn raw(&self, nr: i64, args: [u64; 6]) -> io::Result<i64> {
        self.start(nr, args)?;
        self.pass_entry()?;
        self.take_result()
    }

    /// The first step of [`GuardedSyscaller::raw`], split so that many
    /// threads can run a call each at once (see [`raw_in_each`]): set up
    /// syscall `nr` with `args` and let the thread run to its entry.
    pub fn start(&self, nr: i64, args: [u64; 6]) -> io::Result<()> {
        // The thread's own registers but for rsp, on the frame, and the call.
        let mut regs = self.own;
        regs.rsp = self.frame_at;
        let regs = call_regs(regs, self.gadgets.syscall_ret, nr, args);
        ptrace::set_regs(self.tid, &regs)?;
        self.at_signal_stop.set(false);
        syscall_step(self.tid)
    }

    /// The second step: wait for the syscall's entry stop and let it run.
    pub fn pass_entry(&self) -> io::Result<()> {
        self.await_stop(SYSCALL_STOP, 0, syscall_step)?;
        syscall_step(self.tid)
    }

    /// The last step: wait for the syscall's exit stop; its raw result.
    pub fn take_result(&self) -> io::Result<i64> {
        self.pass_exit()?;
        Ok(ptrace::get_regs(self.tid)?.rax as i64)
    }

    /// The last step for a call whose result crust reads from the task's
    /// memory: wait for its exit stop, read no registers.
    pub fn pass_exit(&self) -> io::Result<()> {
        self.await_stop(SYSCALL_STOP, 0, syscall_step)
    }

    /// Run syscall `nr`, turning a negative result into an io::Error.
    pub fn call(&self, nr: i64, args: [u64; 6]) -> io::Result<u64> {
        errno_result(self.raw(nr, args)?)
    }

    /// The first step of [`GuardedSyscaller::finish`], so that many threads
    /// can take it at once: from the syscall exit stop into a
    /// PTRACE_EVENT_STOP, on the way back to user mode, before the thread
    /// runs any instruction; its signals still blocked, so that none is
    /// dequeued meanwhile. Does nothing when the thread is where finish
    /// starts already.
    pub fn begin_finish(&self) -> io::Result<()> {
        if self.finished || self.at_signal_stop.get() || self.leaving.get() {
            return Ok(());
        }
        ptrace::interrupt(self.tid)?;
        ptrace::resume(self.tid, 0)?;
        self.leaving.set(true);
        Ok(())
    }

    /// Put back the thread's own signal mask and registers (in a
    /// signal-delivery stop again, so that an interrupted syscall restarts as
    /// it would have), then the bytes under the frame. Idempotent.
    pub fn finish(&mut self) -> io::Result<()> {
        Self::finish_all(&mut [self])
    }

    /// [`GuardedSyscaller::finish`] for `threads` of one process: each one's
    /// mask and registers, then the bytes under all their frames with one
    /// process_vm_writev. Every thread is tried; the first error is
    /// returned, and a thread that failed stays unfinished.
    pub fn finish_all(threads: &mut [&mut GuardedSyscaller]) -> io::Result<()> {
        let mut first = Ok(());
        let mut done = Vec::with_capacity(threads.len());
        for (i, t) in threads.iter_mut().enumerate() {
            if t.finished {
                continue;
            }
            match t.put_back_registers() {
                Ok(()) => done.push(i),
                Err(e) => first = first.and(Err(e)),
            }
        }
        let Some(&one) = done.first() else {
            return first;
        };
        let ranges: Vec<RemoteRange> = done
            .iter()
            .map(|&i| RemoteRange {
                addr: threads[i].frame_at,
                len: threads[i].under_frame.len(),
            })
            .collect();
        let bytes: Vec<u8> = done
            .iter()
            .flat_map(|&i| threads[i].under_frame.iter().copied())
            .collect();
        vm::write_ranges(threads[one].tid, &ranges, &bytes)?;
        for &i in &done {
            threads[i].finished = true;
        }
        first
    }

    /// The thread's own mask and registers, in a signal-delivery stop.
    fn put_back_registers(&mut self) -> io::Result<()> {
        if !self.at_signal_stop.get() {
            self.begin_finish()?;
            self.await_stop(libc::SIGTRAP, libc::PTRACE_EVENT_STOP, |t| {
                ptrace::resume(t, 0)
            })?;
            self.at_signal_stop.set(true);
            self.leaving.set(false);
        }
        ptrace::set_sigmask(self.tid, self.own_mask)?;
        ptrace::set_regs(self.tid, &self.own)
    }

    /// Wait (the thread already resumed) for a stop with `sig` and
    /// `event`; other stops (a group stop, a ptrace event) are resumed with
    /// `go`.
    fn await_stop(
        &self,
        sig: i32,
        event: i32,
        go: impl Fn(pid_t) -> io::Result<()>,
    ) -> io::Result<()> {
        loop {
            match ptrace::wait(self.tid)? {
                WaitEvent::Stopped { sig: s, event: e } if s == sig && e == event => return Ok(()),
                WaitEvent::Stopped { .. } => go(self.tid)?,
                WaitEvent::Exited(code) => {
                    return Err(io::Error::other(format!(
                        "task {} exited with {code} during a remote syscall",
                        self.tid
                    )))
                }
                WaitEvent::Signaled(s) => {
                    return Err(io::Error::other(format!(
                        "task {} was killed by signal {s} during a remote syscall",
                        self.tid
                    )))
                }
            }
        }
    }
}

/// Run one syscall in each of `threads` at once: `calls[i]` (number and
/// arguments) in `threads[i]`. Every thread is resumed before crust waits
/// for any, so that they run theirs while crust drives the others. The raw
/// results, in order; on an error, the threads not yet done stay mid-call
/// (their [`GuardedSyscaller::finish`] still puts them back).
pub fn raw_in_each(
    threads: &[&GuardedSyscaller],
    calls: &[(i64, [u64; 6])],
) -> io::Result<Vec<i64>> {
    enter_each(threads, calls)?;
    threads.iter().map(|t| t.take_result()).collect()
}

/// [`raw_in_each`] for calls that leave their results in the task's
/// memory: no registers are read back (for 199 threads, 199 fewer ptrace
/// calls, about 0.5 ms, per call). A failed call shows only as memory
/// it did not write.
pub fn run_in_each(threads: &[&GuardedSyscaller], calls: &[(i64, [u64; 6])]) -> io::Result<()> {
    enter_each(threads, calls)?;
    threads.iter().try_for_each(|t| t.pass_exit())
}

/// The first two steps of [`raw_in_each`]: every thread started, then
/// every one let past its syscall's entry.
fn enter_each(threads: &[&GuardedSyscaller], calls: &[(i64, [u64; 6])]) -> io::Result<()> {
    assert_eq!(threads.len(), calls.len(), "one call per thread");
    for (t, &(nr, args)) in threads.iter().zip(calls) {
        t.start(nr, args)?;
    }
    threads.iter().try_for_each(|t| t.pass_entry())
}

/// `regs` set to run syscall `nr` with `args` at the `syscall` instruction
/// at `ip` (orig_rax -1: no syscall restart applies to them).
fn call_regs(mut regs: Regs, ip: u64, nr: i64, args: [u64; 6]) -> Regs {
    regs.rip = ip;
    regs.rax = nr as u64;
    regs.orig_rax = u64::MAX;
    regs.rdi = args[0];
    regs.rsi = args[1];
    regs.rdx = args[2];
    regs.r10 = args[3];
    regs.r8 = args[4];
    regs.r9 = args[5];
    regs
}

/// A raw syscall result as an io::Result: -4095..-1 is an errno.
pub fn errno_result(r: i64) -> io::Result<u64> {
    if (-4095..0).contains(&r) {
        return Err(io::Error::from_raw_os_error(-r as i32));
    }
    Ok(r as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gadgets are found a piece at a time, also across two pieces, and
    /// checked where they were found; the long restorer wins.
    #[test]
    fn gadgets_found_across_pieces_and_checked() {
        let pid = std::process::id() as pid_t;
        let mut code = vec![0x90u8; 3 << 20];
        // A short restorer early, `syscall; ret` straddling the first
        // piece, a long restorer in the third.
        code[100..100 + RESTORER_SHORT.len()].copy_from_slice(RESTORER_SHORT);
        let sc = GADGET_PIECE - 1;
        code[sc..sc + SYSCALL_RET.len()].copy_from_slice(SYSCALL_RET);
        let long = 2 * GADGET_PIECE + 5;
        code[long..long + RESTORER_LONG.len()].copy_from_slice(RESTORER_LONG);
        let base = code.as_ptr() as u64;
        let range = [(base, base + code.len() as u64)];
        let g = find_gadgets(pid, &range).expect("both found");
        assert_eq!(g.syscall_ret, base + sc as u64);
        assert_eq!(g.restorer, base + long as u64);
        assert!(gadgets_at(pid, &g));
        let short = Gadgets {
            restorer: base + 100,
            ..g
        };
        assert!(gadgets_at(pid, &short));
        let wrong = Gadgets {
            restorer: base + 99,
            ..g
        };
        assert!(!gadgets_at(pid, &wrong));
        // Without the long one, the short one does.
        code[long] = 0x90;
        assert_eq!(
            find_gadgets(pid, &range).map(|g| g.restorer),
            Some(base + 100)
        );
        code[sc] = 0x90;
        assert_eq!(find_gadgets(pid, &range), None);
    }
}

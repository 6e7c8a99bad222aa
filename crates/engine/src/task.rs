//! Per-task and per-thread state: registers, FPU/XSTATE, TLS, signal mask,
//! rseq, clear_child_tid, robust list, sigaltstack, rlimits, personality,
//! comm and plain credentials. Dump reads them from outside (ptrace, /proc)
//! and with remote syscalls where only the task can see them; restore puts
//! them back, registers last.

use crust_image::pb;
use crust_sys::procfs::{self, Rlimit, Stat, Status};
use crust_sys::ptrace::{self, Regs, UserDesc};
use crust_sys::task::{get_nice, get_sched, robust_list, set_nice, set_sched, xsave_component};

use crate::error::{Context, Error, Result};
use crate::remote::{Call, Remote};

/// `TASK_ALIVE` in task_core_entry.task_state.
pub const TASK_ALIVE: u32 = 1;
/// `TASK_STOPPED`.
pub const TASK_STOPPED: u32 = 3;
/// First GDT entry for TLS on x86_64.
const GDT_ENTRY_TLS_MIN: u32 = 12;
/// Number of TLS GDT entries.
const GDT_TLS_ENTRIES: u32 = 3;
/// CRIU's `core_entry.mtype` for x86_64.
const MARCH_X86_64: i32 = 1;
/// `user_x86_regs_entry.mode` NATIVE.
const REGS_NATIVE: i32 = 1;
/// Size of the legacy FXSAVE area plus the XSAVE header.
const XSAVE_HEADER_END: usize = 576;

const PR_GET_PDEATHSIG: u64 = 2;
const PR_SET_PDEATHSIG: u64 = 1;
const PR_GET_TID_ADDRESS: u64 = 40;
const PR_SET_NAME: u64 = 15;
const PR_GET_DUMPABLE: u64 = 3;
const PR_SET_DUMPABLE: u64 = 4;

/// Everything of one thread that crust reads while it is frozen.
pub struct ThreadState {
    /// General-purpose registers.
    pub regs: Regs,
    /// XSTATE area (standard layout).
    pub xstate: Vec<u8>,
    /// Blocked signals.
    pub sigmask: u64,
    /// rseq registration.
    pub rseq: ptrace::RseqConfig,
    /// TLS descriptors.
    pub tls: Vec<UserDesc>,
}

/// Read a frozen thread's registers, FPU, mask, rseq and TLS.
pub fn read_thread(tid: i32) -> Result<ThreadState> {
    let what = |w: &str| format!("{w} of thread {tid}");
    let regs = ptrace::get_regs(tid).ctx(|| what("reading the registers"))?;
    let xstate = ptrace::get_xstate(tid).ctx(|| what("reading the XSTATE"))?;
    let sigmask = ptrace::get_sigmask(tid).ctx(|| what("reading the signal mask"))?;
    let rseq = ptrace::get_rseq_config(tid).ctx(|| what("reading the rseq configuration"))?;
    let tls = (0..GDT_TLS_ENTRIES)
        .map(|i| ptrace::get_thread_area(tid, GDT_ENTRY_TLS_MIN + i))
        .collect::<std::io::Result<Vec<_>>>()
        .ctx(|| what("reading the TLS entries"))?;
    Ok(ThreadState {
        regs,
        xstate,
        sigmask,
        rseq,
        tls,
    })
}

fn gpregs_to_pb(r: &Regs) -> pb::UserX86RegsEntry {
    pb::UserX86RegsEntry {
        r15: r.r15,
        r14: r.r14,
        r13: r.r13,
        r12: r.r12,
        bp: r.rbp,
        bx: r.rbx,
        r11: r.r11,
        r10: r.r10,
        r9: r.r9,
        r8: r.r8,
        ax: r.rax,
        cx: r.rcx,
        dx: r.rdx,
        si: r.rsi,
        di: r.rdi,
        orig_ax: r.orig_rax,
        ip: r.rip,
        cs: r.cs,
        flags: r.eflags,
        sp: r.rsp,
        ss: r.ss,
        fs_base: r.fs_base,
        gs_base: r.gs_base,
        ds: r.ds,
        es: r.es,
        fs: r.fs,
        gs: r.gs,
        mode: Some(REGS_NATIVE),
    }
}

fn pb_to_gpregs(p: &pb::UserX86RegsEntry, into: &mut Regs) {
    into.r15 = p.r15;
    into.r14 = p.r14;
    into.r13 = p.r13;
    into.r12 = p.r12;
    into.rbp = p.bp;
    into.rbx = p.bx;
    into.r11 = p.r11;
    into.r10 = p.r10;
    into.r9 = p.r9;
    into.r8 = p.r8;
    into.rax = p.ax;
    into.rcx = p.cx;
    into.rdx = p.dx;
    into.rsi = p.si;
    into.rdi = p.di;
    into.orig_rax = p.orig_ax;
    into.rip = p.ip;
    into.cs = p.cs;
    into.eflags = p.flags;
    into.rsp = p.sp;
    into.ss = p.ss;
    into.fs_base = p.fs_base;
    into.gs_base = p.gs_base;
    into.ds = p.ds;
    into.es = p.es;
    into.fs = p.fs;
    into.gs = p.gs;
}

fn u16_at(b: &[u8], off: usize) -> u32 {
    u16::from_le_bytes([b[off], b[off + 1]]) as u32
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}
fn words32(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4).map(|c| u32_at(c, 0)).collect()
}
fn words64(b: &[u8]) -> Vec<u64> {
    b.chunks_exact(8).map(|c| u64_at(c, 0)).collect()
}

/// XSAVE components crust records beyond the legacy area, with the field
/// each goes to.
#[derive(Clone, Copy)]
enum Comp {
    Ymmh = 2,
    Bndreg = 3,
    Bndcsr = 4,
    Opmask = 5,
    ZmmUpper = 6,
    Hi16Zmm = 7,
    Pkru = 9,
}

const COMPS: [Comp; 7] = [
    Comp::Ymmh,
    Comp::Bndreg,
    Comp::Bndcsr,
    Comp::Opmask,
    Comp::ZmmUpper,
    Comp::Hi16Zmm,
    Comp::Pkru,
];

fn comp_range(c: Comp, len: usize) -> Option<std::ops::Range<usize>> {
    let (off, size) = xsave_component(c as u32)?;
    (off + size <= len).then_some(off..off + size)
}

/// Split an XSTATE area into CRIU's fpregs fields.
fn xstate_to_pb(x: &[u8]) -> Result<pb::UserX86FpregsEntry> {
    if x.len() < XSAVE_HEADER_END {
        return Err(Error::Kernel(format!(
            "an XSTATE area of at least {XSAVE_HEADER_END} bytes (got {})",
            x.len()
        )));
    }
    let mut xsave = pb::UserX86XsaveEntry {
        xstate_bv: u64_at(x, 512),
        ..Default::default()
    };
    for c in COMPS {
        let Some(r) = comp_range(c, x.len()) else {
            continue;
        };
        let b = &x[r];
        match c {
            Comp::Ymmh => xsave.ymmh_space = words32(b),
            Comp::Bndreg => xsave.bndreg_state = words64(b),
            Comp::Bndcsr => xsave.bndcsr_state = words64(b),
            Comp::Opmask => xsave.opmask_reg = words64(b),
            Comp::ZmmUpper => xsave.zmm_upper = words64(b),
            Comp::Hi16Zmm => xsave.hi16_zmm = words64(b),
            Comp::Pkru => xsave.pkru = words32(b),
        }
    }
    Ok(pb::UserX86FpregsEntry {
        cwd: u16_at(x, 0),
        swd: u16_at(x, 2),
        twd: u16_at(x, 4),
        fop: u16_at(x, 6),
        rip: u64_at(x, 8),
        rdp: u64_at(x, 16),
        mxcsr: u32_at(x, 24),
        mxcsr_mask: u32_at(x, 28),
        st_space: words32(&x[32..160]),
        xmm_space: words32(&x[160..416]),
        padding: words32(&x[416..512]),
        xsave: Some(xsave),
    })
}

fn put32(x: &mut [u8], off: usize, words: &[u32]) {
    for (i, w) in words.iter().enumerate() {
        if off + i * 4 + 4 <= x.len() {
            x[off + i * 4..off + i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
    }
}
fn put64(x: &mut [u8], off: usize, words: &[u64]) {
    for (i, w) in words.iter().enumerate() {
        if off + i * 8 + 8 <= x.len() {
            x[off + i * 8..off + i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
    }
}

/// Write CRIU's fpregs fields into `x`, an XSTATE area of this CPU's layout
/// (taken from the restored thread), leaving the kernel's software bytes.
fn pb_to_xstate(fp: &pb::UserX86FpregsEntry, x: &mut [u8], file: &str) -> Result<()> {
    let bad = |what: &str| Error::BadImage {
        file: file.to_string(),
        what: format!("fpregs: {what}"),
    };
    if fp.st_space.len() != 32 || fp.xmm_space.len() != 64 {
        return Err(bad("st_space must hold 32 words and xmm_space 64"));
    }
    x[0..2].copy_from_slice(&(fp.cwd as u16).to_le_bytes());
    x[2..4].copy_from_slice(&(fp.swd as u16).to_le_bytes());
    x[4..6].copy_from_slice(&(fp.twd as u16).to_le_bytes());
    x[6..8].copy_from_slice(&(fp.fop as u16).to_le_bytes());
    put64(x, 8, &[fp.rip, fp.rdp]);
    put32(x, 24, &[fp.mxcsr, fp.mxcsr_mask]);
    put32(x, 32, &fp.st_space);
    put32(x, 160, &fp.xmm_space);
    let Some(xs) = &fp.xsave else {
        return Ok(());
    };
    put64(x, 512, &[xs.xstate_bv, 0]);
    for c in COMPS {
        let Some(r) = comp_range(c, x.len()) else {
            continue;
        };
        let size = r.len();
        let (n32, n64): (&[u32], &[u64]) = match c {
            Comp::Ymmh => (&xs.ymmh_space, &[]),
            Comp::Bndreg => (&[], &xs.bndreg_state),
            Comp::Bndcsr => (&[], &xs.bndcsr_state),
            Comp::Opmask => (&[], &xs.opmask_reg),
            Comp::ZmmUpper => (&[], &xs.zmm_upper),
            Comp::Hi16Zmm => (&[], &xs.hi16_zmm),
            Comp::Pkru => (&xs.pkru, &[]),
        };
        if n32.len() * 4 > size || n64.len() * 8 > size {
            return Err(bad("an XSAVE component is larger than this CPU's"));
        }
        put32(x, r.start, n32);
        put64(x, r.start, n64);
    }
    Ok(())
}

fn tls_to_pb(d: &UserDesc) -> pb::UserDescT {
    let bit = |n: u32| d.flags & (1 << n) != 0;
    pb::UserDescT {
        entry_number: d.entry_number,
        base_addr: d.base_addr,
        limit: d.limit,
        seg_32bit: bit(0),
        contents_h: bit(2),
        contents_l: bit(1),
        read_exec_only: bit(3),
        limit_in_pages: bit(4),
        seg_not_present: bit(5),
        usable: bit(6),
    }
}

fn pb_to_tls(p: &pb::UserDescT) -> UserDesc {
    let flags = (p.seg_32bit as u32)
        | (p.contents_l as u32) << 1
        | (p.contents_h as u32) << 2
        | (p.read_exec_only as u32) << 3
        | (p.limit_in_pages as u32) << 4
        | (p.seg_not_present as u32) << 5
        | (p.usable as u32) << 6;
    UserDesc {
        entry_number: p.entry_number,
        base_addr: p.base_addr,
        limit: p.limit,
        flags,
    }
}

fn rlimits_to_pb(limits: &[Rlimit]) -> pb::TaskRlimitsEntry {
    let mut sorted = limits.to_vec();
    sorted.sort_by_key(|l| l.resource);
    pb::TaskRlimitsEntry {
        rlimits: sorted
            .iter()
            .map(|l| pb::RlimitEntry {
                cur: l.soft,
                max: l.hard,
            })
            .collect(),
    }
}

/// What only the task itself can tell, asked with remote syscalls.
pub struct RemoteFacts {
    /// clear_child_tid address.
    pub clear_tid: u64,
    /// Parent-death signal.
    pub pdeath_sig: u32,
    /// Current brk.
    pub brk: u64,
    /// Dumpable flag.
    pub dumpable: i32,
    /// Secure bits.
    pub secbits: u32,
    /// Alternate signal stack.
    pub sas: pb::ThreadSasEntry,
}

const PR_GET_SECUREBITS: u64 = 27;

/// Ask a frozen task (with the scratch area mapped) for its own facts.
pub fn ask(r: &Remote) -> Result<RemoteFacts> {
    let brk = r.call("brk(0)", libc::SYS_brk, [0; 6])?;
    let dumpable = r.call(
        "prctl(PR_GET_DUMPABLE)",
        libc::SYS_prctl,
        [PR_GET_DUMPABLE, 0, 0, 0, 0, 0],
    )?;
    ask_thread(r, brk, dumpable as i32)
}

/// [`ask`] in another thread of a process whose main thread told `brk`
/// and `dumpable` (which belong to the whole process).
pub fn ask_thread(r: &Remote, brk: u64, dumpable: i32) -> Result<RemoteFacts> {
    let s = r.scratch();
    r.call(
        "prctl(PR_GET_TID_ADDRESS)",
        libc::SYS_prctl,
        [PR_GET_TID_ADDRESS, s, 0, 0, 0, 0],
    )?;
    r.call(
        "prctl(PR_GET_PDEATHSIG)",
        libc::SYS_prctl,
        [PR_GET_PDEATHSIG, s + 8, 0, 0, 0, 0],
    )?;
    r.call(
        "sigaltstack",
        libc::SYS_sigaltstack,
        [0, s + 16, 0, 0, 0, 0],
    )?;
    let mut buf = [0u8; 40];
    r.get(0, &mut buf)?;
    let secbits = r.call(
        "prctl(PR_GET_SECUREBITS)",
        libc::SYS_prctl,
        [PR_GET_SECUREBITS, 0, 0, 0, 0, 0],
    )?;
    Ok(facts_from(&buf, brk, dumpable, secbits))
}

/// [`ask_thread`] in each of `sibs`, other threads of one process (sharing
/// its scratch area), with their calls run at once: each thread's results
/// go to its own slot of the scratch area.
pub fn ask_threads(sibs: &[Remote], brk: u64, dumpable: i32) -> Result<Vec<RemoteFacts>> {
    const SLOT: usize = 64;
    let mut out = Vec::with_capacity(sibs.len());
    for group in sibs.chunks(crate::remote::SCRATCH_LEN / SLOT) {
        let Some(first) = group.first() else {
            break;
        };
        let slot = |i: usize| first.scratch() + (i * SLOT) as u64;
        let each = |f: &dyn Fn(u64) -> (i64, [u64; 6])| -> Vec<(i64, [u64; 6])> {
            (0..group.len()).map(|i| f(slot(i))).collect()
        };
        let prctl = libc::SYS_prctl;
        // The three calls that answer in memory find it all ones: a slot
        // still so after them is a call that failed.
        let mut buf = vec![UNTOLD; group.len() * SLOT];
        first.put(0, &buf)?;
        Remote::run_in_each(
            group,
            "prctl(PR_GET_TID_ADDRESS)",
            &each(&|s| (prctl, [PR_GET_TID_ADDRESS, s, 0, 0, 0, 0])),
        )?;
        Remote::run_in_each(
            group,
            "prctl(PR_GET_PDEATHSIG)",
            &each(&|s| (prctl, [PR_GET_PDEATHSIG, s + 8, 0, 0, 0, 0])),
        )?;
        Remote::run_in_each(
            group,
            "sigaltstack",
            &each(&|s| (libc::SYS_sigaltstack, [0, s + 16, 0, 0, 0, 0])),
        )?;
        let secbits = Remote::call_in_each(
            group,
            "prctl(PR_GET_SECUREBITS)",
            &each(&|_| (prctl, [PR_GET_SECUREBITS, 0, 0, 0, 0, 0])),
        )?;
        first.get(0, &mut buf)?;
        for ((b, secbits), r) in buf.chunks(SLOT).zip(secbits).zip(group) {
            out.push(if untold(b) {
                // Asked again alone, for the error (or, for a thread whose
                // clear_child_tid is all ones, the answer).
                ask_thread(r, brk, dumpable)?
            } else {
                facts_from(b, brk, dumpable, secbits)
            });
        }
    }
    Ok(out)
}

/// What a slot of [`ask_threads`] holds before the calls.
const UNTOLD: u8 = 0xff;

/// Whether a slot of [`ask_threads`] lacks an answer: clear_child_tid,
/// the pdeath signal or ss_flags still all ones. (No signal is all ones,
/// nor is any `ss_flags`; a clear_child_tid could be.)
fn untold(b: &[u8]) -> bool {
    u64_at(b, 0) == u64::MAX || u32_at(b, 8) == u32::MAX || u32_at(b, 24) == u32::MAX
}

/// The facts of a thread from the 40 bytes its calls left in the scratch
/// area (clear_child_tid, pdeath signal, stack_t) and its securebits.
fn facts_from(buf: &[u8], brk: u64, dumpable: i32, secbits: u64) -> RemoteFacts {
    // stack_t: ss_sp (8), ss_flags (4 + 4 padding), ss_size (8).
    RemoteFacts {
        clear_tid: u64_at(buf, 0),
        pdeath_sig: u32_at(buf, 8),
        brk,
        dumpable,
        secbits: secbits as u32,
        sas: pb::ThreadSasEntry {
            ss_sp: u64_at(buf, 16),
            ss_flags: u32_at(buf, 24),
            ss_size: u64_at(buf, 32),
        },
    }
}

/// What only a process's main thread carries into its core image.
pub struct LeaderParts<'a> {
    /// Every sigaction.
    pub sigactions: Vec<pb::SaEntry>,
    /// The process's object ids.
    pub ids: pb::TaskKobjIdsEntry,
    /// The process's /proc/PID/stat.
    pub stat: &'a Stat,
}

/// Build the core image entry of thread `tid` of process `pid`; `status`
/// is the thread's own (/proc/PID/task/TID/status). The main thread also
/// carries the process-wide part (`leader`).
pub fn core_entry(
    pid: i32,
    tid: i32,
    status: &Status,
    thread: &ThreadState,
    facts: &RemoteFacts,
    leader: Option<LeaderParts>,
) -> Result<pb::CoreEntry> {
    let (rla, rla_len) = robust_list(tid).ctx(|| format!("get_robust_list of {tid}"))?;
    let (policy, prio) = get_sched(tid).ctx(|| format!("scheduling policy of {tid}"))?;
    let nice = get_nice(tid).ctx(|| format!("nice value of {tid}"))?;
    let (tc, ids) = match leader {
        Some(l) => {
            let limits = procfs::read_limits(pid)?;
            let personality = procfs::read_personality(pid)?;
            let oom = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
                .ctx(|| format!("reading /proc/{pid}/oom_score_adj"))?;
            let task_state = if l.stat.state == 'T' {
                TASK_STOPPED
            } else {
                TASK_ALIVE
            };
            let tc = pb::TaskCoreEntry {
                task_state,
                exit_code: 0,
                personality,
                flags: l.stat.flags,
                blk_sigset: thread.sigmask,
                comm: status.name.clone(),
                rlimits: Some(rlimits_to_pb(&limits)),
                sigactions: l.sigactions,
                oom_score_adj: oom.trim().parse().ok(),
                ..Default::default()
            };
            (Some(tc), Some(l.ids))
        }
        None => (None, None),
    };
    Ok(pb::CoreEntry {
        mtype: MARCH_X86_64,
        thread_info: Some(pb::ThreadInfoX86 {
            clear_tid_addr: facts.clear_tid,
            gpregs: gpregs_to_pb(&thread.regs),
            fpregs: xstate_to_pb(&thread.xstate)?,
            tls: thread.tls.iter().map(tls_to_pb).collect(),
        }),
        tc,
        ids,
        thread_core: Some(pb::ThreadCoreEntry {
            futex_rla: rla,
            futex_rla_len: rla_len as u32,
            sched_nice: Some(nice),
            sched_policy: Some(policy as u32),
            sched_prio: Some(prio as u32),
            blk_sigset: Some(thread.sigmask),
            sas: Some(facts.sas),
            pdeath_sig: Some(facts.pdeath_sig),
            creds: Some(crate::creds::creds_entry(status, facts.secbits)),
            comm: Some(status.name.clone()),
            rseq_entry: Some(pb::RseqEntry {
                rseq_abi_pointer: thread.rseq.rseq_abi_pointer,
                rseq_abi_size: thread.rseq.rseq_abi_size,
                signature: thread.rseq.signature,
                rseq_cs_pointer: None,
            }),
            ..Default::default()
        }),
    })
}

/// `TASK_DEAD`: a zombie.
pub const TASK_DEAD: u32 = 2;

/// The core image entry of a zombie: its exit status as wait reports it.
pub fn zombie_core(stat: &Stat) -> pb::CoreEntry {
    pb::CoreEntry {
        mtype: MARCH_X86_64,
        tc: Some(pb::TaskCoreEntry {
            task_state: TASK_DEAD,
            exit_code: stat.exit_code as u32,
            comm: stat.comm.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------
// Restore.

/// The parts of a core image restore needs, checked.
pub struct CoreParts<'a> {
    /// x86 thread info.
    pub ti: &'a pb::ThreadInfoX86,
    /// Task core (the main thread's core only).
    pub tc: Option<&'a pb::TaskCoreEntry>,
    /// Thread core.
    pub th: &'a pb::ThreadCoreEntry,
}

/// Check that a core image has what crust restores.
pub fn parts<'a>(core: &'a pb::CoreEntry, file: &str) -> Result<CoreParts<'a>> {
    let missing = |what: &str| Error::BadImage {
        file: file.to_string(),
        what: format!("has no {what}"),
    };
    if core.mtype != MARCH_X86_64 {
        return Err(Error::BadImage {
            file: file.to_string(),
            what: format!(
                "is for architecture {} (crust restores x86_64 only)",
                core.mtype
            ),
        });
    }
    Ok(CoreParts {
        ti: core
            .thread_info
            .as_ref()
            .ok_or_else(|| missing("thread_info"))?,
        tc: core.tc.as_ref(),
        th: core
            .thread_core
            .as_ref()
            .ok_or_else(|| missing("thread_core"))?,
    })
}

/// Unregister the rseq area the restored child inherited from crust.
pub fn unregister_rseq(r: &Remote) -> Result<()> {
    let pid = r.pid();
    let conf = ptrace::get_rseq_config(pid).ctx(|| format!("rseq configuration of {pid}"))?;
    if conf.rseq_abi_pointer != 0 {
        r.call(
            "rseq unregister",
            libc::SYS_rseq,
            [
                conf.rseq_abi_pointer,
                conf.rseq_abi_size as u64,
                1, // RSEQ_FLAG_UNREGISTER
                conf.signature as u64,
                0,
                0,
            ],
        )?;
    }
    Ok(())
}

/// The name (comm) a restored thread must have, at most 15 bytes.
pub fn comm_of<'a>(p: &'a CoreParts) -> &'a str {
    let comm =
        p.th.comm
            .as_deref()
            .or(p.tc.map(|t| t.comm.as_str()))
            .unwrap_or("");
    let mut end = comm.len().min(15);
    while !comm.is_char_boundary(end) {
        end -= 1;
    }
    &comm[..end]
}

/// Give the thread behind `r` the name `comm` (PR_SET_NAME); threads
/// created after inherit it.
pub fn set_comm(r: &Remote, comm: &str) -> Result<()> {
    let mut name = comm.as_bytes().to_vec();
    name.push(0);
    let a = r.put(0, &name)?;
    r.call(
        "prctl(PR_SET_NAME)",
        libc::SYS_prctl,
        [PR_SET_NAME, a, 0, 0, 0, 0],
    )?;
    Ok(())
}

/// Restore what only the task can set itself: clear_child_tid, robust list,
/// sigaltstack, rseq, personality, comm and parent-death signal
/// (credentials come later, from `creds`). The scratch area must be mapped.
/// A thread crust just created (`new_thread`) starts without an alternate
/// stack or parent-death signal, and with its clear_child_tid given at
/// clone, so those are only set when needed; `comm_now` is the name it
/// already has.
pub fn restore_late(r: &Remote, p: &CoreParts, new_thread: bool, comm_now: &str) -> Result<()> {
    let call = |what: &str, nr: i64, args: [u64; 6]| Call {
        what: what.to_string(),
        nr,
        args,
    };
    let mut calls = Vec::new();
    if !new_thread {
        calls.push(call(
            "set_tid_address",
            libc::SYS_set_tid_address,
            [p.ti.clear_tid_addr, 0, 0, 0, 0, 0],
        ));
    }
    calls.push(call(
        "set_robust_list",
        libc::SYS_set_robust_list,
        [p.th.futex_rla, p.th.futex_rla_len as u64, 0, 0, 0, 0],
    ));
    let sas =
        p.th.sas
            .as_ref()
            .filter(|s| !new_thread || s.ss_flags & libc::SS_DISABLE as u32 == 0);
    if let Some(sas) = sas {
        let mut st = Vec::with_capacity(24);
        st.extend(sas.ss_sp.to_ne_bytes());
        st.extend((sas.ss_flags & !(libc::SS_ONSTACK as u32)).to_ne_bytes());
        st.extend(0u32.to_ne_bytes());
        st.extend(sas.ss_size.to_ne_bytes());
        let a = r.put(0, &st)?;
        calls.push(call(
            "sigaltstack",
            libc::SYS_sigaltstack,
            [a, 0, 0, 0, 0, 0],
        ));
    }
    if let Some(rs) = &p.th.rseq_entry {
        if rs.rseq_abi_pointer != 0 {
            calls.push(call(
                "rseq register",
                libc::SYS_rseq,
                [
                    rs.rseq_abi_pointer,
                    rs.rseq_abi_size as u64,
                    0,
                    rs.signature as u64,
                    0,
                    0,
                ],
            ));
        }
    }
    if let Some(tc) = p.tc {
        calls.push(call(
            "personality",
            libc::SYS_personality,
            [tc.personality as u64, 0, 0, 0, 0, 0],
        ));
    }
    let comm = comm_of(p);
    if comm != comm_now {
        let mut name = comm.as_bytes().to_vec();
        name.push(0);
        // After the sigaltstack struct.
        let a = r.put(64, &name)?;
        calls.push(call(
            "prctl(PR_SET_NAME)",
            libc::SYS_prctl,
            [PR_SET_NAME, a, 0, 0, 0, 0],
        ));
    }
    let pdeath = p.th.pdeath_sig.unwrap_or(0);
    if !new_thread || pdeath != 0 {
        calls.push(call(
            "prctl(PR_SET_PDEATHSIG)",
            libc::SYS_prctl,
            [PR_SET_PDEATHSIG, pdeath as u64, 0, 0, 0, 0],
        ));
    }
    r.batch(&calls).map(drop)
}

/// Set the dumpable flag as dumped (after credentials, which reset it).
pub fn restore_dumpable(r: &Remote, dumpable: Option<i32>) -> Result<()> {
    if let Some(d) = dumpable {
        r.call(
            "prctl(PR_SET_DUMPABLE)",
            libc::SYS_prctl,
            [PR_SET_DUMPABLE, d as u64, 0, 0, 0, 0],
        )?;
    }
    Ok(())
}

/// The kernel's restart rule for a task dumped inside an interrupted
/// syscall, applied by hand since no kernel restart state survives.
fn apply_restart(regs: &mut Regs) {
    const ERESTARTSYS: i64 = -512;
    const ERESTARTNOINTR: i64 = -513;
    const ERESTARTNOHAND: i64 = -514;
    const ERESTART_RESTARTBLOCK: i64 = -516;
    if (regs.orig_rax as i64) < 0 {
        return;
    }
    match regs.rax as i64 {
        ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
            regs.rax = regs.orig_rax;
            regs.rip -= 2;
        }
        ERESTART_RESTARTBLOCK => regs.rax = (-libc::EINTR) as u64,
        _ => {}
    }
}

/// Put the registers, XSTATE, TLS and signal mask back: the last step
/// before the task is let go.
pub fn restore_regs(pid: i32, p: &CoreParts, file: &str) -> Result<()> {
    let what = |w: &str| format!("setting the {w} of {pid}");
    let mut regs = ptrace::get_regs(pid).ctx(|| what("registers"))?;
    pb_to_gpregs(&p.ti.gpregs, &mut regs);
    apply_restart(&mut regs);
    let mut xstate = ptrace::get_xstate(pid).ctx(|| what("XSTATE"))?;
    pb_to_xstate(&p.ti.fpregs, &mut xstate, file)?;
    ptrace::set_xstate(pid, &xstate).ctx(|| what("XSTATE"))?;
    for d in &p.ti.tls {
        ptrace::set_thread_area(pid, d.entry_number, &pb_to_tls(d)).ctx(|| what("TLS entries"))?;
    }
    let mask = p.th.blk_sigset.or(p.tc.map(|t| t.blk_sigset)).unwrap_or(0);
    ptrace::set_sigmask(pid, mask).ctx(|| what("signal mask"))?;
    ptrace::set_regs(pid, &regs).ctx(|| what("registers"))?;
    Ok(())
}

/// Rlimits the restoring crust cannot grant, named: restore refuses them
/// rather than change them silently (raising a hard limit needs
/// CAP_SYS_RESOURCE, which this machine does not give root).
pub fn check_rlimits(tc: &pb::TaskCoreEntry, own: &OwnLimits) -> Result<()> {
    let Some(rl) = &tc.rlimits else {
        return Ok(());
    };
    for (res, l) in rl.rlimits.iter().enumerate() {
        // A limit crust does not know is refused; the others are in `own`.
        resource_of(res as u32)?;
        let hard = own[res];
        if l.max > hard {
            return Err(Error::Rlimit(format!(
                "{}: its hard limit {} is above crust's own {} and raising it needs CAP_SYS_RESOURCE",
                rlimit_name(res as u32),
                l.max,
                hard
            )));
        }
        if l.cur > l.max {
            return Err(Error::Rlimit(format!(
                "{}: soft limit {} above hard limit {}",
                rlimit_name(res as u32),
                l.cur,
                l.max
            )));
        }
    }
    Ok(())
}

/// Number of resource limits (RLIM_NLIMITS on Linux).
const RLIMITS: u32 = 16;

/// crust's own hard limit of every resource [`resource_of`] knows, in
/// resource order.
pub type OwnLimits = [u64; RLIMITS as usize];

/// crust's own hard limits: what a restored task may have at most.
pub fn own_hard_limits() -> Result<OwnLimits> {
    let mut own = [0; RLIMITS as usize];
    for (res, hard) in own.iter_mut().enumerate() {
        *hard = nix::sys::resource::getrlimit(resource_of(res as u32)?)
            .map(|(_, h)| h)
            .ctx(|| format!("getrlimit({res})"))?;
    }
    Ok(own)
}

fn resource_of(n: u32) -> Result<nix::sys::resource::Resource> {
    use nix::sys::resource::Resource::*;
    Ok(match n {
        0 => RLIMIT_CPU,
        1 => RLIMIT_FSIZE,
        2 => RLIMIT_DATA,
        3 => RLIMIT_STACK,
        4 => RLIMIT_CORE,
        5 => RLIMIT_RSS,
        6 => RLIMIT_NPROC,
        7 => RLIMIT_NOFILE,
        8 => RLIMIT_MEMLOCK,
        9 => RLIMIT_AS,
        10 => RLIMIT_LOCKS,
        11 => RLIMIT_SIGPENDING,
        12 => RLIMIT_MSGQUEUE,
        13 => RLIMIT_NICE,
        14 => RLIMIT_RTPRIO,
        15 => RLIMIT_RTTIME,
        _ => return Err(Error::Rlimit(format!("unknown rlimit {n}"))),
    })
}

fn rlimit_name(n: u32) -> &'static str {
    [
        "RLIMIT_CPU",
        "RLIMIT_FSIZE",
        "RLIMIT_DATA",
        "RLIMIT_STACK",
        "RLIMIT_CORE",
        "RLIMIT_RSS",
        "RLIMIT_NPROC",
        "RLIMIT_NOFILE",
        "RLIMIT_MEMLOCK",
        "RLIMIT_AS",
        "RLIMIT_LOCKS",
        "RLIMIT_SIGPENDING",
        "RLIMIT_MSGQUEUE",
        "RLIMIT_NICE",
        "RLIMIT_RTPRIO",
        "RLIMIT_RTTIME",
    ]
    .get(n as usize)
    .copied()
    .unwrap_or("unknown rlimit")
}

/// Set the rlimits in the restored child itself (before it stops): only
/// lowering, which needs no privilege. Runs in the forked child.
pub fn apply_rlimits(tc: &pb::TaskCoreEntry) -> Result<()> {
    let Some(rl) = &tc.rlimits else {
        return Ok(());
    };
    for (res, l) in rl.rlimits.iter().enumerate() {
        nix::sys::resource::setrlimit(resource_of(res as u32)?, l.cur, l.max)
            .ctx(|| format!("setrlimit({})", rlimit_name(res as u32)))?;
    }
    Ok(())
}

/// Set the scheduling policy, priority and nice value in the restored child
/// itself (before it stops). Runs in the forked child.
pub fn apply_sched(th: &pb::ThreadCoreEntry) -> Result<()> {
    if let Some(policy) = th.sched_policy {
        let prio = th.sched_prio.unwrap_or(0) as i32;
        set_sched(0, policy as i32, prio)
            .ctx(|| format!("sched_setscheduler({policy}, {prio})"))?;
    }
    if let Some(nice) = th.sched_nice {
        set_nice(0, nice).ctx(|| format!("setpriority({nice})"))?;
    }
    Ok(())
}

/// Set the scheduling policy, priority and nice value of a restored thread
/// from crust.
pub fn set_thread_sched(tid: i32, th: &pb::ThreadCoreEntry) -> Result<()> {
    if let Some(policy) = th.sched_policy {
        let prio = th.sched_prio.unwrap_or(0) as i32;
        set_sched(tid, policy as i32, prio).ctx(|| format!("sched_setscheduler of {tid}"))?;
    }
    if let Some(nice) = th.sched_nice {
        set_nice(tid, nice).ctx(|| format!("setpriority of {tid}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slot the calls did not write is told apart from any answer.
    #[test]
    fn untold_slots_are_the_unwritten_ones() {
        assert!(untold(&[UNTOLD; 64]));
        // clear_child_tid 0, no pdeath signal, no alternate stack.
        let mut answered = [UNTOLD; 64];
        answered[0..8].copy_from_slice(&0u64.to_ne_bytes());
        answered[8..12].copy_from_slice(&0u32.to_ne_bytes());
        answered[16..40].fill(0);
        answered[24..28].copy_from_slice(&(libc::SS_DISABLE as u32).to_ne_bytes());
        assert!(!untold(&answered));
        let f = facts_from(&answered, 0, 1, 0);
        assert_eq!((f.clear_tid, f.pdeath_sig, f.sas.ss_flags), (0, 0, 2));
        // Each call that failed leaves its part all ones.
        for (at, len) in [(0, 8), (8, 4), (24, 4)] {
            let mut one = answered;
            one[at..at + len].fill(UNTOLD);
            assert!(untold(&one), "part at {at}");
        }
    }
}

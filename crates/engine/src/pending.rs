//! Pending signals: each thread's own queue and its process's shared queue,
//! every entry with its full siginfo (real-time signals queued several
//! times stay several entries). Dump peeks them with PTRACE_PEEKSIGINFO,
//! which leaves them queued, so a `--leave-running` task still has them.
//! Restore queues them again from inside the restored task itself
//! (rt_sigqueueinfo for the shared queue, rt_tgsigqueueinfo in each thread
//! for its own): the kernel lets a task queue any siginfo to itself, even
//! one with a kernel or kill() si_code, which it refuses from other tasks.
//! This runs while every signal is still blocked, before the dumped masks
//! are set, so each is delivered exactly once after the tree resumes.

use crust_image::pb;
use crust_sys::procfs::Status;
use crust_sys::ptrace::{self, SIGINFO_SIZE};

use crate::error::{Context, Error, Result};
use crate::remote::Remote;

/// Number of signals (1..=64).
const NSIG: i32 = 64;

/// `si_signo` of a raw siginfo.
fn signo(info: &[u8]) -> i32 {
    i32::from_ne_bytes(info[0..4].try_into().expect("4 bytes"))
}

/// The queue as CRIU stores it, `None` when empty. SIGKILL and SIGSTOP are
/// left out: a pending SIGKILL belongs to a dying task, and a stop is the
/// task state the core records.
fn queue_of(raw: Vec<ptrace::RawSiginfo>) -> Option<pb::SignalQueueEntry> {
    let signals: Vec<pb::SiginfoEntry> = raw
        .into_iter()
        .filter(|i| !matches!(signo(i), libc::SIGKILL | libc::SIGSTOP))
        .map(|i| pb::SiginfoEntry {
            siginfo: i.to_vec(),
        })
        .collect();
    (!signals.is_empty()).then_some(pb::SignalQueueEntry { signals })
}

/// Record the pending signals of frozen thread `tid` of process `pid` in
/// its core entry: its own queue, and the process-wide queue when the core
/// is the main thread's (it has a `tc`). `status` is the thread's, read
/// frozen: a thread's own queue that its pending set shows empty is not
/// peeked (a signal is in the set while any of it is queued), which spares
/// a ptrace call per thread.
pub fn dump(core: &mut pb::CoreEntry, pid: i32, tid: i32, status: &Status) -> Result<()> {
    if let Some(tc) = core.tc.as_mut() {
        let shared = ptrace::peek_siginfo(pid, true)
            .ctx(|| format!("PTRACE_PEEKSIGINFO of the shared queue of {pid}"))?;
        tc.signals_s = queue_of(shared);
    }
    if let Some(th) = core.thread_core.as_mut() {
        if status.sig_pnd != 0 {
            let own = ptrace::peek_siginfo(tid, false)
                .ctx(|| format!("PTRACE_PEEKSIGINFO of thread {tid}"))?;
            th.signals_p = queue_of(own);
        }
    }
    Ok(())
}

fn check_queue(q: Option<&pb::SignalQueueEntry>, which: &str, file: &str) -> Result<()> {
    for (i, s) in q.iter().flat_map(|q| q.signals.iter()).enumerate() {
        let bad = |what: String| Error::BadImage {
            file: file.to_string(),
            what: format!("{which} pending signal {i}: {what}"),
        };
        if s.siginfo.len() != SIGINFO_SIZE {
            return Err(bad(format!(
                "its siginfo has {} bytes, a siginfo_t has {SIGINFO_SIZE}",
                s.siginfo.len()
            )));
        }
        let sig = signo(&s.siginfo);
        if !(1..=NSIG).contains(&sig) || sig == libc::SIGKILL || sig == libc::SIGSTOP {
            return Err(bad(format!("signal number {sig} cannot be queued")));
        }
    }
    Ok(())
}

/// Check the pending signals of a core image (`file`): every siginfo is a
/// whole `siginfo_t` of a signal that can be queued.
pub fn check(core: &pb::CoreEntry, file: &str) -> Result<()> {
    check_queue(
        core.tc.as_ref().and_then(|t| t.signals_s.as_ref()),
        "shared",
        file,
    )?;
    check_queue(
        core.thread_core.as_ref().and_then(|t| t.signals_p.as_ref()),
        "per-thread",
        file,
    )
}

fn queue_all(
    r: &Remote,
    q: Option<&pb::SignalQueueEntry>,
    what: &str,
    call: impl Fn(u64, u64) -> (i64, [u64; 6]),
) -> Result<()> {
    for s in q.iter().flat_map(|q| q.signals.iter()) {
        let sig = signo(&s.siginfo) as u64;
        let addr = r.put(0, &s.siginfo)?;
        let (nr, args) = call(sig, addr);
        r.call(&format!("{what}({sig})"), nr, args)?;
    }
    Ok(())
}

/// Queue the pending signals of a restored process again, each thread's
/// from inside that thread. `r` drives the main thread (scratch area
/// mapped, every signal blocked); `cores` are the dumped cores with the
/// dumped (in-namespace) tids, main thread first, and `outer` the same
/// threads as crust sees them. The images were checked at load.
pub fn restore(r: &Remote, cores: &[(i32, pb::CoreEntry, String)], outer: &[i32]) -> Result<()> {
    let Some((pid, main, _)) = cores.first() else {
        return Ok(());
    };
    let pid = *pid as u64;
    queue_all(
        r,
        main.tc.as_ref().and_then(|t| t.signals_s.as_ref()),
        "rt_sigqueueinfo",
        |sig, a| (libc::SYS_rt_sigqueueinfo, [pid, sig, a, 0, 0, 0]),
    )?;
    for ((tid, core, _), &out) in cores.iter().zip(outer) {
        let Some(q) = core.thread_core.as_ref().and_then(|t| t.signals_p.as_ref()) else {
            continue;
        };
        let regs = ptrace::get_regs(out).ctx(|| format!("registers of {out}"))?;
        let mut sib = r.sibling(out, regs);
        let tid = *tid as u64;
        let res = queue_all(&sib, Some(q), "rt_tgsigqueueinfo", |sig, a| {
            (libc::SYS_rt_tgsigqueueinfo, [pid, tid, sig, a, 0, 0])
        });
        sib.forget_scratch();
        res?;
    }
    Ok(())
}

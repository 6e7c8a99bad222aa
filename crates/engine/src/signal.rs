//! Signal handlers: every sigaction, read and set with remote rt_sigaction
//! (the kernel shows handlers only to the task itself).

use crust_image::pb;

use crate::error::{Error, Result};
use crate::remote::Remote;

/// Number of signals (1..=64).
const NSIG: u64 = 64;
/// Size of the kernel's `struct sigaction` on x86_64.
const KSIGACTION: usize = 32;

fn settable(sig: u64) -> bool {
    sig != libc::SIGKILL as u64 && sig != libc::SIGSTOP as u64
}

/// Signals whose action is worth asking the task for, from its
/// `/proc/PID/status`: those caught or ignored, and SIGCHLD (whose
/// SA_NOCLDWAIT/SA_NOCLDSTOP flags act even at SIG_DFL). Every other one is
/// at SIG_DFL, where flags, mask and restorer have no effect; they are
/// written as zero. One remote syscall less per default signal: 62 of them
/// in a process that installed two handlers.
pub fn worth_asking(sig_cgt: u64, sig_ign: u64) -> u64 {
    sig_cgt | sig_ign | 1 << (libc::SIGCHLD - 1)
}

/// Read the sigactions of a frozen task (scratch area mapped): one entry
/// per signal 1..=64, SIGKILL and SIGSTOP included as CRIU writes them;
/// signals outside `ask` (a mask, bit `sig - 1`, see [`worth_asking`]) are
/// SIG_DFL with nothing else.
pub fn dump(r: &Remote, ask: u64) -> Result<Vec<pb::SaEntry>> {
    let mut out = Vec::with_capacity(NSIG as usize);
    for sig in 1..=NSIG {
        let mut k = [0u8; KSIGACTION];
        if settable(sig) && ask & (1 << (sig - 1)) != 0 {
            let s = r.scratch();
            r.call("rt_sigaction", libc::SYS_rt_sigaction, [sig, 0, s, 8, 0, 0])?;
            r.get(0, &mut k)?;
        }
        let w = |i: usize| u64::from_le_bytes(k[i * 8..i * 8 + 8].try_into().unwrap());
        out.push(pb::SaEntry {
            sigaction: w(0),
            flags: w(1),
            restorer: w(2),
            mask: w(3),
            compat_sigaction: None,
            mask_extended: None,
        });
    }
    Ok(out)
}

/// crust's own action for every signal 1..=64, as rt_sigaction shows it
/// (None where it cannot be read): what the tasks crust forks inherit.
pub fn own_actions() -> Vec<Option<[u64; 4]>> {
    (1..=NSIG)
        .map(|sig| crust_sys::clone::own_sigaction(sig as i32).ok())
        .collect()
}

/// Set every sigaction of a restored task (scratch area mapped). The task
/// was forked from crust, so it has crust's actions, `own` (from
/// [`own_actions`]): only those that differ are set.
pub fn restore(
    r: &Remote,
    actions: &[pb::SaEntry],
    own: &[Option<[u64; 4]>],
    file: &str,
) -> Result<()> {
    if actions.len() > NSIG as usize {
        return Err(Error::BadImage {
            file: file.to_string(),
            what: format!("{} sigactions, at most {NSIG} signals exist", actions.len()),
        });
    }
    // Every struct k_sigaction that differs from crust's own (which the
    // task inherited) goes into the scratch area, one after the other;
    // then one batch sets them all.
    let mut structs = Vec::new();
    let mut calls = Vec::new();
    for (i, a) in actions.iter().enumerate() {
        let sig = i as u64 + 1;
        if !settable(sig) {
            continue;
        }
        let want = [a.sigaction, a.flags, a.restorer, a.mask];
        if own.get(i).copied().flatten() == Some(want) {
            continue;
        }
        let at = r.scratch() + structs.len() as u64;
        structs.extend(want.iter().flat_map(|v| v.to_le_bytes()));
        calls.push(crate::remote::Call {
            what: format!("rt_sigaction({sig})"),
            nr: libc::SYS_rt_sigaction,
            args: [sig, at, 0, 8, 0, 0],
        });
    }
    if calls.is_empty() {
        return Ok(());
    }
    r.put(0, &structs)?;
    r.batch(&calls).map(drop)
}

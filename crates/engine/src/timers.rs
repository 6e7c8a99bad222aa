//! Interval timers (setitimer: ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF)
//! and POSIX timers (timer_create on any clock, SIGEV_SIGNAL, SIGEV_NONE,
//! SIGEV_THREAD and SIGEV_THREAD_ID), kept in the main thread's core as
//! CRIU does (`task_core_entry.timers`).
//!
//! Dump lists the POSIX timers from /proc/PID/timers (id, signal, sigev
//! value, notification, clock) and asks the task itself for what only it
//! can see: getitimer, timer_gettime and timer_getoverrun, all without side
//! effects, so a `--leave-running` task keeps its timers as they were.
//!
//! Restore creates the timers again with their ids (prctl
//! PR_TIMER_CREATE_RESTORE_IDS makes timer_create take the id it is given;
//! on kernels without it, timers are created in id order until the id
//! matches and the extra ones deleted, as CRIU does) and arms every timer
//! with its remaining time, late, just before the tree resumes. Like CRIU,
//! the time between dump and restore does not count: a timer fires its
//! remaining time after the restore. An armed POSIX timer found expired at
//! dump (its signal still pending) is armed with its interval. The overrun
//! count cannot be set and starts again from 0.

use crust_image::pb;
use crust_sys::procfs;

use crate::error::{Error, Result};
use crate::remote::Remote;

/// `PR_TIMER_CREATE_RESTORE_IDS` (Linux 6.13; not in Debian 12's headers).
const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
/// `PR_TIMER_CREATE_RESTORE_IDS_OFF`.
const RESTORE_IDS_OFF: u64 = 0;
/// `PR_TIMER_CREATE_RESTORE_IDS_ON`.
const RESTORE_IDS_ON: u64 = 1;
/// Size of a `struct sigevent`.
const SIGEVENT_SIZE: usize = 64;
/// Where in the scratch area the created timer id goes.
const ID_AT: usize = 256;
/// ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF.
const ITIMERS: [u64; 3] = [0, 1, 2];

fn i64_at(b: &[u8], i: usize) -> u64 {
    i64::from_ne_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes")) as u64
}

fn words(v: [u64; 4]) -> Vec<u8> {
    v.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

/// Read the itimers and POSIX timers of frozen process `pid` (scratch area
/// mapped, signals blocked). `tids` are its threads: a SIGEV_THREAD_ID
/// timer must notify one of them.
pub fn dump(r: &Remote, pid: i32, tids: &[i32]) -> Result<pb::TaskTimersEntry> {
    let s = r.scratch();
    let mut it = Vec::with_capacity(3);
    for which in ITIMERS {
        r.call("getitimer", libc::SYS_getitimer, [which, s, 0, 0, 0, 0])?;
        let mut b = [0u8; 32];
        r.get(0, &mut b)?;
        // struct itimerval: it_interval, then it_value.
        it.push(pb::ItimerEntry {
            isec: i64_at(&b, 0),
            iusec: i64_at(&b, 1),
            vsec: i64_at(&b, 2),
            vusec: i64_at(&b, 3),
        });
    }
    let mut posix = Vec::new();
    for t in procfs::read_timers(pid)? {
        let unsupported = |what: String| Error::Unsupported { pid, what };
        let notify = t.sigev_notify().ok_or_else(|| {
            unsupported(format!(
                "POSIX timer {} with notification {:?}",
                t.id, t.notify
            ))
        })?;
        if t.notify_thread && !tids.contains(&t.notify_pid) {
            return Err(unsupported(format!(
                "POSIX timer {} notifying thread {}, which is not one of the process's",
                t.id, t.notify_pid
            )));
        }
        let id = t.id as u64;
        r.call(
            &format!("timer_gettime({id})"),
            libc::SYS_timer_gettime,
            [id, s, 0, 0, 0, 0],
        )?;
        let mut b = [0u8; 32];
        r.get(0, &mut b)?;
        let overrun = r.call(
            &format!("timer_getoverrun({id})"),
            libc::SYS_timer_getoverrun,
            [id, 0, 0, 0, 0, 0],
        )?;
        // struct itimerspec: it_interval, then it_value.
        posix.push(pb::PosixTimerEntry {
            it_id: t.id as u32,
            clock_id: t.clock_id as u32,
            si_signo: t.signo as u32,
            it_sigev_notify: notify as u32,
            sival_ptr: t.sigev_value,
            overrun: overrun as u32,
            isec: i64_at(&b, 0),
            insec: i64_at(&b, 1),
            vsec: i64_at(&b, 2),
            vnsec: i64_at(&b, 3),
            notify_thread_id: t.notify_thread.then_some(t.notify_pid),
        });
    }
    let mut it = it.into_iter();
    Ok(pb::TaskTimersEntry {
        real: it.next().expect("three itimers"),
        virt: it.next().expect("three itimers"),
        prof: it.next().expect("three itimers"),
        posix,
    })
}

/// Check the timers of a core image (`file`): valid times, known
/// notification kinds, distinct ids.
pub fn check(core: &pb::CoreEntry, file: &str) -> Result<()> {
    let Some(t) = core.tc.as_ref().and_then(|tc| tc.timers.as_ref()) else {
        return Ok(());
    };
    let bad = |what: String| Error::BadImage {
        file: file.to_string(),
        what,
    };
    for (name, e) in [("real", &t.real), ("virt", &t.virt), ("prof", &t.prof)] {
        if e.isec > i64::MAX as u64
            || e.vsec > i64::MAX as u64
            || e.iusec >= 1_000_000
            || e.vusec >= 1_000_000
        {
            return Err(bad(format!("invalid {name} itimer {e:?}")));
        }
    }
    let mut ids = std::collections::HashSet::new();
    for p in &t.posix {
        let what = |w: &str| bad(format!("POSIX timer {}: {w}", p.it_id));
        if p.it_id > i32::MAX as u32 || !ids.insert(p.it_id) {
            return Err(what("invalid or repeated id"));
        }
        if p.isec > i64::MAX as u64
            || p.vsec > i64::MAX as u64
            || p.insec >= 1_000_000_000
            || p.vnsec >= 1_000_000_000
        {
            return Err(what("invalid time"));
        }
        let notify = p.it_sigev_notify as i32;
        let base = notify & !libc::SIGEV_THREAD_ID;
        if ![libc::SIGEV_SIGNAL, libc::SIGEV_NONE, libc::SIGEV_THREAD].contains(&base) {
            return Err(what(&format!("unknown notification {notify}")));
        }
        if base != libc::SIGEV_NONE && !(1..=64).contains(&p.si_signo) {
            return Err(what(&format!("invalid signal {}", p.si_signo)));
        }
        if notify & libc::SIGEV_THREAD_ID != 0 && p.notify_thread_id.is_none_or(|t| t <= 0) {
            return Err(what("SIGEV_THREAD_ID without a thread"));
        }
    }
    Ok(())
}

/// Create one timer (its sigevent in the scratch area at 0); returns the
/// id the kernel gave it.
fn create(r: &Remote, p: &pb::PosixTimerEntry) -> Result<u32> {
    let mut ev = [0u8; SIGEVENT_SIZE];
    ev[0..8].copy_from_slice(&p.sival_ptr.to_ne_bytes());
    ev[8..12].copy_from_slice(&(p.si_signo as i32).to_ne_bytes());
    ev[12..16].copy_from_slice(&(p.it_sigev_notify as i32).to_ne_bytes());
    ev[16..20].copy_from_slice(&p.notify_thread_id.unwrap_or(0).to_ne_bytes());
    let ev_addr = r.put(0, &ev)?;
    let id_addr = r.put(ID_AT, &p.it_id.to_ne_bytes())?;
    r.call(
        &format!("timer_create of timer {}", p.it_id),
        libc::SYS_timer_create,
        [p.clock_id as i32 as i64 as u64, ev_addr, id_addr, 0, 0, 0],
    )?;
    let mut got = [0u8; 4];
    r.get(ID_AT, &mut got)?;
    Ok(u32::from_ne_bytes(got))
}

/// Create every POSIX timer of a restored process with its dumped id.
fn create_all(r: &Remote, pid: i32, posix: &[&pb::PosixTimerEntry]) -> Result<()> {
    let mismatch = |want: u32, got: u32| Error::Restore {
        pid,
        what: format!("POSIX timer {want} was created as timer {got}"),
    };
    let on = r.raw(
        "prctl(PR_TIMER_CREATE_RESTORE_IDS)",
        libc::SYS_prctl,
        [PR_TIMER_CREATE_RESTORE_IDS, RESTORE_IDS_ON, 0, 0, 0, 0],
    )?;
    if on == 0 {
        let created = posix.iter().try_for_each(|p| match create(r, p)? {
            got if got == p.it_id => Ok(()),
            got => Err(mismatch(p.it_id, got)),
        });
        r.call(
            "prctl(PR_TIMER_CREATE_RESTORE_IDS, OFF)",
            libc::SYS_prctl,
            [PR_TIMER_CREATE_RESTORE_IDS, RESTORE_IDS_OFF, 0, 0, 0, 0],
        )?;
        return created;
    }
    // An older kernel gives the next free id: create timers in id order
    // until each id comes up, and delete the fillers.
    let mut fillers = Vec::new();
    for p in posix {
        loop {
            let got = create(r, p)?;
            if got == p.it_id {
                break;
            }
            if got > p.it_id || fillers.len() > 1 << 16 {
                return Err(mismatch(p.it_id, got));
            }
            fillers.push(got);
        }
    }
    for id in fillers {
        r.call(
            "timer_delete",
            libc::SYS_timer_delete,
            [id as u64, 0, 0, 0, 0, 0],
        )?;
    }
    Ok(())
}

/// Create and arm the timers of a restored process (scratch area mapped,
/// every signal blocked); the image was checked at load.
pub fn restore(r: &Remote, pid: i32, t: Option<&pb::TaskTimersEntry>) -> Result<()> {
    let Some(t) = t else {
        return Ok(());
    };
    let mut posix: Vec<&pb::PosixTimerEntry> = t.posix.iter().collect();
    posix.sort_by_key(|p| p.it_id);
    if !posix.is_empty() {
        create_all(r, pid, &posix)?;
    }
    for p in &posix {
        let (vsec, vnsec) = if p.vsec == 0 && p.vnsec == 0 {
            (p.isec, p.insec)
        } else {
            (p.vsec, p.vnsec)
        };
        if vsec == 0 && vnsec == 0 {
            continue;
        }
        let a = r.put(0, &words([p.isec, p.insec, vsec, vnsec]))?;
        r.call(
            &format!("timer_settime({})", p.it_id),
            libc::SYS_timer_settime,
            [p.it_id as u64, 0, a, 0, 0, 0],
        )?;
    }
    for (which, e) in ITIMERS.iter().zip([&t.real, &t.virt, &t.prof]) {
        if e.vsec == 0 && e.vusec == 0 {
            continue;
        }
        let a = r.put(0, &words([e.isec, e.iusec, e.vsec, e.vusec]))?;
        r.call(
            &format!("setitimer({which})"),
            libc::SYS_setitimer,
            [*which, a, 0, 0, 0, 0],
        )?;
    }
    Ok(())
}

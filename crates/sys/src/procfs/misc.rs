//! `/proc/PID/personality`, `/proc/PID/timers`,
//! `/proc/TID/timerslack_ns` and `/proc/PID/task/TID/children`.

use super::{dec_i32, dec_u64, hex_u32, hex_u64, ProcError, ProcFile};

/// Parses `/proc/TID/timerslack_ns`: one decimal number of nanoseconds.
pub fn parse_timer_slack(text: &str) -> Result<u64, ProcError> {
    let v = text.trim();
    dec_u64(v)
        .ok_or_else(|| ProcError::at(ProcFile::TimerSlack, 1, format!("bad decimal value {v:?}")))
}

/// Parses `/proc/PID/task/TID/children`: pids separated by spaces.
pub fn parse_children(text: &str) -> Result<Vec<i32>, ProcError> {
    text.split_ascii_whitespace()
        .map(|w| {
            dec_i32(w)
                .filter(|&p| p > 0)
                .ok_or_else(|| ProcError::at(ProcFile::Children, 1, format!("bad pid {w:?}")))
        })
        .collect()
}

/// Parses `/proc/PID/personality`: one hex number (e.g. `00000000`).
pub fn parse_personality(text: &str) -> Result<u32, ProcError> {
    let v = text.trim();
    hex_u32(v)
        .ok_or_else(|| ProcError::at(ProcFile::Personality, 1, format!("bad hex value {v:?}")))
}

/// How a POSIX timer notifies (`notify:` of `/proc/PID/timers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimerNotify {
    /// `signal`: SIGEV_SIGNAL.
    Signal,
    /// `none`: SIGEV_NONE.
    None,
    /// `thread`: SIGEV_THREAD (glibc implements it with a helper thread and
    /// SIGEV_THREAD_ID, so the kernel rarely shows it).
    Thread,
    /// Anything else, as printed.
    Other(String),
}

/// One POSIX timer from `/proc/PID/timers`. Its armed state (value and
/// interval) is not in this file: take it with timer_gettime in the task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PosixTimer {
    /// `ID:` the timer id (what timer_create returned).
    pub id: i32,
    /// `signal:` the signal number.
    pub signo: i32,
    /// `signal:` the sigev_value (sival_ptr) as a number.
    pub sigev_value: u64,
    /// `notify:` the notification kind.
    pub notify: TimerNotify,
    /// `notify:` `tid` (SIGEV_THREAD_ID, the signal goes to thread
    /// `notify_pid`) rather than `pid`.
    pub notify_thread: bool,
    /// `notify:` the pid or tid notified.
    pub notify_pid: i32,
    /// `ClockID:` the clock (CLOCK_*).
    pub clock_id: i32,
}

impl PosixTimer {
    /// The `sigev_notify` value to recreate the timer with (SIGEV_* plus
    /// SIGEV_THREAD_ID when it targets a thread); `None` for an unknown kind.
    pub fn sigev_notify(&self) -> Option<i32> {
        let base = match self.notify {
            TimerNotify::Signal => libc::SIGEV_SIGNAL,
            TimerNotify::None => libc::SIGEV_NONE,
            TimerNotify::Thread => libc::SIGEV_THREAD,
            TimerNotify::Other(_) => return None,
        };
        Some(if self.notify_thread {
            base | libc::SIGEV_THREAD_ID
        } else {
            base
        })
    }
}

#[derive(Default)]
struct PartialTimer {
    id: i32,
    line: usize,
    signal: Option<(i32, u64)>,
    notify: Option<(TimerNotify, bool, i32)>,
    clock_id: Option<i32>,
}

impl PartialTimer {
    fn finish(self) -> Result<PosixTimer, ProcError> {
        let missing = |k: &str| {
            ProcError::at(
                ProcFile::Timers,
                self.line,
                format!("timer {}: {k:?} missing", self.id),
            )
        };
        let (signo, sigev_value) = self.signal.ok_or_else(|| missing("signal"))?;
        let (notify, notify_thread, notify_pid) =
            self.notify.clone().ok_or_else(|| missing("notify"))?;
        Ok(PosixTimer {
            id: self.id,
            signo,
            sigev_value,
            notify,
            notify_thread,
            notify_pid,
            clock_id: self.clock_id.ok_or_else(|| missing("ClockID"))?,
        })
    }
}

/// Parses `/proc/PID/timers`: blocks of `ID:`, `signal: N/HEX`,
/// `notify: KIND/pid.N` (or `/tid.N`) and `ClockID:` lines.
pub fn parse_timers(text: &str) -> Result<Vec<PosixTimer>, ProcError> {
    let file = ProcFile::Timers;
    let mut out = Vec::new();
    let mut cur: Option<PartialTimer> = None;
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        if line.is_empty() {
            continue;
        }
        let err = |what: String| ProcError::at(file, lineno, what);
        let Some((key, v)) = line.split_once(':') else {
            return Err(err(format!("no ':' in {line:?}")));
        };
        let v = v.trim();
        if key == "ID" {
            if let Some(t) = cur.take() {
                out.push(t.finish()?);
            }
            let id = dec_i32(v).ok_or_else(|| err(format!("ID: bad value {v:?}")))?;
            cur = Some(PartialTimer {
                id,
                line: lineno,
                ..Default::default()
            });
            continue;
        }
        let Some(t) = cur.as_mut() else {
            return Err(err(format!("{key:?} before any \"ID:\" line")));
        };
        let bad = || err(format!("{key}: bad value {v:?}"));
        match key {
            "signal" => {
                let (s, p) = v.split_once('/').ok_or_else(bad)?;
                let p = p.strip_prefix("0x").unwrap_or(p);
                t.signal = Some((dec_i32(s).ok_or_else(bad)?, hex_u64(p).ok_or_else(bad)?));
            }
            "notify" => {
                let (kind, target) = v.split_once('/').ok_or_else(bad)?;
                let (who, pid) = target.split_once('.').ok_or_else(bad)?;
                let thread = match who {
                    "tid" => true,
                    "pid" => false,
                    _ => return Err(bad()),
                };
                let kind = match kind {
                    "signal" => TimerNotify::Signal,
                    "none" => TimerNotify::None,
                    "thread" => TimerNotify::Thread,
                    k => TimerNotify::Other(k.to_string()),
                };
                t.notify = Some((kind, thread, dec_i32(pid).ok_or_else(bad)?));
            }
            "ClockID" => t.clock_id = Some(dec_i32(v).ok_or_else(bad)?),
            _ => {}
        }
    }
    if let Some(t) = cur.take() {
        out.push(t.finish()?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn procfs_personality() {
        assert_eq!(parse_personality("00000000\n").unwrap(), 0);
        assert_eq!(parse_personality("00400000\n").unwrap(), 0x0040_0000);
        assert!(parse_personality("").is_err());
        assert!(parse_personality("0x1").is_err());
        assert!(parse_personality("123456789").is_err());
    }

    #[test]
    fn procfs_timers_sample() {
        let t = parse_timers(include_str!("testdata/timers.txt")).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].id, 2);
        assert_eq!(t[0].notify, TimerNotify::None);
        assert_eq!(t[0].clock_id, 7);
        assert_eq!(t[0].sigev_notify(), Some(libc::SIGEV_NONE));
        assert_eq!(t[1].signo, libc::SIGUSR2);
        assert_eq!(t[1].sigev_value, 0xdeadbeef);
        assert!(t[1].notify_thread);
        assert_eq!(
            t[1].sigev_notify(),
            Some(libc::SIGEV_SIGNAL | libc::SIGEV_THREAD_ID)
        );
        assert_eq!(t[2].signo, libc::SIGALRM);
        assert_eq!(t[2].clock_id, libc::CLOCK_MONOTONIC);
        assert!(!t[2].notify_thread);
        assert_eq!(t[2].notify_pid, t[1].notify_pid);
        assert_eq!(parse_timers("").unwrap(), vec![]);
    }

    #[test]
    fn procfs_timers_errors() {
        let e = parse_timers("ID: 1\nsignal: 14/0\nClockID: 0\n").unwrap_err();
        assert!(e.to_string().contains("notify"), "{e}");
        assert_eq!(e.line, Some(1));
        let e = parse_timers("signal: 14/0\n").unwrap_err();
        assert!(e.to_string().contains("before any"), "{e}");
        let e = parse_timers("ID: 1\nnotify: signal/xid.3\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(parse_timers("ID: 1\nsignal: 14\n").is_err());
        assert!(parse_timers("ID: x\n").is_err());
    }
}

//! File locks as the kernel prints them, in `/proc/locks` and in the
//! `lock:` lines of `/proc/PID/fdinfo/FD`:
//! `1: POSIX  ADVISORY  WRITE 1234 fe:00:5678 10 19`, with `->` after the
//! number for a task blocked waiting for the lock above it.

use super::{ProcError, ProcFile};

/// What kind of lock a line describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockKind {
    /// A POSIX record lock (fcntl F_SETLK, lockf): owned by a process.
    Posix,
    /// A BSD lock (flock): owned by an open file description.
    Flock,
    /// An open file description lock (fcntl F_OFD_SETLK).
    Ofd,
    /// A lease (fcntl F_SETLEASE).
    Lease,
    /// Anything else the kernel prints (DELEG, ...), by its name.
    Other,
}

/// One lock line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockLine {
    /// The kind.
    pub kind: LockKind,
    /// The kind's name as printed (`POSIX`, `FLOCK`, `OFDLCK`, `LEASE`...).
    pub kind_name: String,
    /// The second column: `ADVISORY`, or for a lease `ACTIVE`,
    /// `BREAKING` or `BREAKER`.
    pub state: String,
    /// A write (exclusive) lock; otherwise a read (shared) one.
    pub write: bool,
    /// The pid printed (-1 for OFD locks).
    pub pid: i32,
    /// The locked inode's device, major and minor.
    pub dev: (u32, u32),
    /// The locked inode.
    pub ino: u64,
    /// The first byte locked.
    pub start: u64,
    /// The last byte locked, `None` for "to the end of the file" (EOF).
    pub end: Option<u64>,
    /// A task waiting for the lock (a `->` line), not a lock held.
    pub waiter: bool,
}

impl LockLine {
    /// The line as the kernel printed it, for messages.
    pub fn describe(&self) -> String {
        let end = self.end.map_or("EOF".to_string(), |e| e.to_string());
        format!(
            "{} {} {} lock of pid {} on inode {} of device {}:{}, bytes {}..{}",
            self.kind_name,
            self.state,
            if self.write { "WRITE" } else { "READ" },
            self.pid,
            self.ino,
            self.dev.0,
            self.dev.1,
            self.start,
            end
        )
    }
}

/// Parses one lock line: the value of a fdinfo `lock:` line or a line of
/// /proc/locks (`N: [->] KIND STATE TYPE PID MAJ:MIN:INO START END`).
pub fn parse_lock_line(line: &str) -> Result<LockLine, ProcError> {
    let err = |what: String| ProcError::whole(ProcFile::Locks, format!("{what} in {line:?}"));
    let mut words = line.split_whitespace().peekable();
    let id = words.next().ok_or_else(|| err("empty line".into()))?;
    if !id.ends_with(':') || id[..id.len() - 1].parse::<u64>().is_err() {
        return Err(err(format!("bad lock number {id:?}")));
    }
    let waiter = words.peek() == Some(&"->");
    if waiter {
        words.next();
    }
    let mut next = |what: &str| words.next().ok_or_else(|| err(format!("no {what}")));
    let kind_name = next("kind")?.to_string();
    let kind = match kind_name.as_str() {
        "POSIX" => LockKind::Posix,
        "FLOCK" => LockKind::Flock,
        "OFDLCK" => LockKind::Ofd,
        "LEASE" => LockKind::Lease,
        _ => LockKind::Other,
    };
    let state = next("state")?.to_string();
    let write = match next("type")? {
        "WRITE" => true,
        "READ" => false,
        t => return Err(err(format!("lock type {t:?}"))),
    };
    let pid_s = next("pid")?;
    let pid: i32 = pid_s
        .parse()
        .map_err(|_| err(format!("bad pid {pid_s:?}")))?;
    let inode = next("inode")?;
    let parts: Vec<&str> = inode.split(':').collect();
    let (dev, ino) = match parts.as_slice() {
        [maj, min, ino] => {
            let maj = u32::from_str_radix(maj, 16).ok();
            let min = u32::from_str_radix(min, 16).ok();
            match (maj, min, ino.parse::<u64>().ok()) {
                (Some(a), Some(b), Some(i)) => ((a, b), i),
                _ => return Err(err(format!("bad inode {inode:?}"))),
            }
        }
        _ => return Err(err(format!("bad inode {inode:?}"))),
    };
    let start_s = next("start")?;
    let start: u64 = start_s
        .parse()
        .map_err(|_| err(format!("bad start {start_s:?}")))?;
    let end = match next("end")? {
        "EOF" => None,
        e => Some(e.parse().map_err(|_| err(format!("bad end {e:?}")))?),
    };
    if end.is_some_and(|e| e < start) {
        return Err(err("end before start".into()));
    }
    Ok(LockLine {
        kind,
        kind_name,
        state,
        write,
        pid,
        dev,
        ino,
        start,
        end,
        waiter,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_lines() {
        let l = parse_lock_line("1: POSIX  ADVISORY  WRITE 11350 fe:00:10027379 10 19").unwrap();
        assert_eq!(
            (l.kind, l.write, l.pid, l.dev, l.ino, l.start, l.end, l.waiter),
            (
                LockKind::Posix,
                true,
                11350,
                (0xfe, 0),
                10027379,
                10,
                Some(19),
                false
            )
        );
        let l = parse_lock_line("2: OFDLCK ADVISORY  READ -1 00:1f:12 0 EOF").unwrap();
        assert_eq!(
            (l.kind, l.write, l.pid, l.end),
            (LockKind::Ofd, false, -1, None)
        );
        let l = parse_lock_line("1: LEASE  BREAKING  READ 7 08:01:3 0 EOF").unwrap();
        assert_eq!((l.kind, l.state.as_str()), (LockKind::Lease, "BREAKING"));
        let l = parse_lock_line("3: -> FLOCK  ADVISORY  WRITE 9 08:01:3 0 EOF").unwrap();
        assert!(l.waiter && l.kind == LockKind::Flock);
        assert_eq!(
            parse_lock_line("1: DELEG  ACTIVE    READ 9 08:01:3 0 EOF")
                .unwrap()
                .kind,
            LockKind::Other
        );
        for bad in [
            "",
            "x: POSIX ADVISORY WRITE 1 08:01:3 0 EOF",
            "1: POSIX ADVISORY UNLCK 1 08:01:3 0 EOF",
            "1: POSIX ADVISORY WRITE 1 08:01 0 EOF",
            "1: POSIX ADVISORY WRITE 1 08:01:3 9 2",
            "1: POSIX ADVISORY WRITE 1 08:01:3 0",
        ] {
            assert!(parse_lock_line(bad).is_err(), "{bad:?}");
        }
    }
}

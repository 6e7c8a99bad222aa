//! `/proc/PID/fdinfo/FD`.

use super::{dec_i32, dec_u64, hex_u32, hex_u64, oct_u32, ProcError, ProcFile};

/// `/proc/PID/fdinfo/FD`: the common header plus every other line kept raw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdInfo {
    /// `pos:` file offset.
    pub pos: u64,
    /// `flags:` the open file's flags (O_*; octal in the file).
    pub flags: u32,
    /// `mnt_id:` id of the mount the file is on.
    pub mnt_id: u64,
    /// `ino:` inode number (since Linux 5.14).
    pub ino: Option<u64>,
    /// Every other line, in order, split at its first `:` into a key and a
    /// value with surrounding whitespace trimmed: `("eventfd-count", "5")`,
    /// `("tfd", "3 events: 19 data: ...")`, `("inotify wd", "1 ino:...")`,
    /// `("sigmask", "0000000000004200")`, `("settime flags", "00")`, ...
    pub extra: Vec<(String, String)>,
}

impl FdInfo {
    /// The value of the first extra line with `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.extra
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every extra value with `key`, in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.extra
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The state of an eventfd (`eventfd-count:` in hex,
    /// `eventfd-semaphore:` since Linux 6.6).
    pub fn eventfd(&self) -> Result<EventfdInfo, ProcError> {
        let v = self.need("eventfd-count")?;
        let count = hex_u64(v).ok_or_else(|| bad_value("eventfd-count", v))?;
        let semaphore = match self.get("eventfd-semaphore") {
            None => None,
            Some("0") => Some(false),
            Some("1") => Some(true),
            Some(v) => return Err(bad_value("eventfd-semaphore", v)),
        };
        Ok(EventfdInfo { count, semaphore })
    }

    /// The signals of a signalfd (`sigmask:`, hex, bit N-1 for signal N).
    pub fn signalfd_mask(&self) -> Result<u64, ProcError> {
        let v = self.need("sigmask")?;
        hex_u64(v).ok_or_else(|| bad_value("sigmask", v))
    }

    /// The state of a timerfd.
    pub fn timerfd(&self) -> Result<TimerfdInfo, ProcError> {
        let v = self.need("clockid")?;
        let clockid = dec_i32(v).ok_or_else(|| bad_value("clockid", v))?;
        let v = self.need("ticks")?;
        let ticks = dec_u64(v).ok_or_else(|| bad_value("ticks", v))?;
        let v = self.need("settime flags")?;
        let settime_flags = oct_u32(v).ok_or_else(|| bad_value("settime flags", v))?;
        let pair = |k: &str| -> Result<(u64, u64), ProcError> {
            let v = self.need(k)?;
            v.strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .and_then(|r| r.split_once(','))
                .and_then(|(a, b)| Some((dec_u64(a.trim())?, dec_u64(b.trim())?)))
                .ok_or_else(|| bad_value(k, v))
        };
        Ok(TimerfdInfo {
            clockid,
            ticks,
            settime_flags,
            value: pair("it_value")?,
            interval: pair("it_interval")?,
        })
    }

    fn need(&self, key: &str) -> Result<&str, ProcError> {
        self.get(key)
            .ok_or_else(|| ProcError::whole(ProcFile::FdInfo, format!("key {key:?} missing")))
    }

    /// The epoll targets (`tfd:` lines) of an epoll fd.
    pub fn epoll_tfds(&self) -> Result<Vec<EpollTfd>, ProcError> {
        self.get_all("tfd")
            .map(|v| parse_epoll_tfd(&format!("tfd: {v}")))
            .collect()
    }

    /// The group of a fanotify fd: `fanotify flags:` and its marks.
    pub fn fanotify(&self) -> Result<FanotifyInfo, ProcError> {
        let err = |what: String| ProcError::whole(ProcFile::FdInfo, format!("fanotify: {what}"));
        let head = self.need("fanotify flags")?;
        let items = kv_items(head);
        let flags = items
            .first()
            .and_then(|&(k, v)| if v.is_empty() { hex_u32(k) } else { None })
            .ok_or_else(|| err(format!("bad flags in {head:?}")))?;
        let event_flags = lookup(&items, "event-flags")
            .and_then(hex_u32)
            .ok_or_else(|| err(format!("bad event-flags in {head:?}")))?;
        let mut marks = Vec::new();
        for (k, v) in &self.extra {
            if let Some(first) = k.strip_prefix("fanotify ") {
                if first != "flags" {
                    marks.push(parse_fanotify_mark(&format!("fanotify {first}:{v}"))?);
                }
            }
        }
        Ok(FanotifyInfo {
            flags,
            event_flags,
            marks,
        })
    }

    /// The watches (`inotify wd:` lines) of an inotify fd.
    pub fn inotify_wds(&self) -> Result<Vec<InotifyWd>, ProcError> {
        self.get_all("inotify wd")
            .map(|v| parse_inotify_wd(&format!("inotify wd:{v}")))
            .collect()
    }
}

fn bad_value(key: &str, v: &str) -> ProcError {
    ProcError::whole(ProcFile::FdInfo, format!("{key}: bad value {v:?}"))
}

/// The state of an eventfd, from its fdinfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventfdInfo {
    /// The counter.
    pub count: u64,
    /// EFD_SEMAPHORE, if the kernel says (since Linux 6.6).
    pub semaphore: Option<bool>,
}

/// The state of a timerfd, from its fdinfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerfdInfo {
    /// The clock (CLOCK_MONOTONIC ...).
    pub clockid: i32,
    /// Expirations not yet read.
    pub ticks: u64,
    /// The flags of the last timerfd_settime (TFD_TIMER_ABSTIME ...).
    pub settime_flags: u32,
    /// Time left to the next expiry, (seconds, nanoseconds); zero when
    /// disarmed, or expired and not yet read or moved forward.
    pub value: (u64, u64),
    /// The period, (seconds, nanoseconds).
    pub interval: (u64, u64),
}

/// Parses `/proc/PID/fdinfo/FD`. `pos`, `flags` and `mnt_id` are required.
pub fn parse_fdinfo(text: &str) -> Result<FdInfo, ProcError> {
    let file = ProcFile::FdInfo;
    let (mut pos, mut flags, mut mnt_id, mut ino) = (None, None, None, None);
    let mut extra = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        if line.is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(ProcError::at(file, lineno, format!("no ':' in {line:?}")));
        };
        let v = value.trim();
        let bad = || ProcError::at(file, lineno, format!("{key}: bad value {v:?}"));
        let dup = |seen: bool| {
            if seen {
                Err(ProcError::at(file, lineno, format!("{key}: duplicate")))
            } else {
                Ok(())
            }
        };
        match key {
            "pos" => {
                dup(pos.is_some())?;
                pos = Some(dec_u64(v).ok_or_else(bad)?)
            }
            "flags" => {
                dup(flags.is_some())?;
                flags = Some(oct_u32(v).ok_or_else(bad)?)
            }
            "mnt_id" => {
                dup(mnt_id.is_some())?;
                mnt_id = Some(dec_u64(v).ok_or_else(bad)?)
            }
            "ino" => {
                dup(ino.is_some())?;
                ino = Some(dec_u64(v).ok_or_else(bad)?)
            }
            _ => extra.push((key.trim().to_string(), v.to_string())),
        }
    }
    let missing = |k: &str| ProcError::whole(file, format!("key {k:?} missing"));
    Ok(FdInfo {
        pos: pos.ok_or_else(|| missing("pos"))?,
        flags: flags.ok_or_else(|| missing("flags"))?,
        mnt_id: mnt_id.ok_or_else(|| missing("mnt_id"))?,
        ino,
        extra,
    })
}

/// One `tfd:` line of an epoll fd's fdinfo: a watched target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpollTfd {
    /// The target fd number (in the owner of the epoll fd at EPOLL_CTL_ADD).
    pub tfd: i32,
    /// The event mask (EPOLLIN, EPOLLET, ...).
    pub events: u32,
    /// The user data word.
    pub data: u64,
    /// The target file's position (since Linux 3.19 with ino/sdev).
    pub pos: Option<u64>,
    /// The target file's inode number.
    pub ino: Option<u64>,
    /// The target file's device (kernel s_dev encoding).
    pub sdev: Option<u32>,
}

/// Splits the `key:value` / `key: value` items of an fdinfo line.
fn kv_items(s: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut toks = s.split_ascii_whitespace();
    while let Some(t) = toks.next() {
        if let Some(k) = t.strip_suffix(':') {
            out.push((k, toks.next().unwrap_or("")));
        } else if let Some((k, v)) = t.split_once(':') {
            out.push((k, v));
        } else {
            out.push((t, ""));
        }
    }
    out
}

fn lookup<'a>(items: &[(&'a str, &'a str)], key: &str) -> Option<&'a str> {
    items.iter().find(|(k, _)| *k == key).map(|&(_, v)| v)
}

/// Parses one epoll `tfd:` line, e.g.
/// `tfd:        3 events:       19 data:                3  pos:0 ino:249c sdev:f`
/// (events, data, ino and sdev are hex).
pub fn parse_epoll_tfd(line: &str) -> Result<EpollTfd, ProcError> {
    let err = |what: String| ProcError::whole(ProcFile::FdInfo, format!("epoll tfd line: {what}"));
    let items = kv_items(line);
    let field = |k: &str| lookup(&items, k).ok_or_else(|| err(format!("{k} missing in {line:?}")));
    let bad = |k: &str, v: &str| err(format!("{k}: bad value {v:?}"));
    let opt = |k: &str, f: fn(&str) -> Option<u64>| -> Result<Option<u64>, ProcError> {
        match lookup(&items, k) {
            None => Ok(None),
            Some(v) => f(v).map(Some).ok_or_else(|| bad(k, v)),
        }
    };
    if items.first().map(|&(k, _)| k) != Some("tfd") {
        return Err(err(format!("does not start with \"tfd:\": {line:?}")));
    }
    let tfd_s = field("tfd")?;
    let ev_s = field("events")?;
    let data_s = field("data")?;
    Ok(EpollTfd {
        tfd: dec_i32(tfd_s).ok_or_else(|| bad("tfd", tfd_s))?,
        events: hex_u32(ev_s).ok_or_else(|| bad("events", ev_s))?,
        data: hex_u64(data_s).ok_or_else(|| bad("data", data_s))?,
        pos: opt("pos", |v| {
            dec_u64(v).or_else(|| super::dec_i64(v).map(|n| n as u64))
        })?,
        ino: opt("ino", hex_u64)?,
        sdev: opt("sdev", hex_u64)?
            .map(|d| u32::try_from(d).map_err(|_| bad("sdev", "out of range")))
            .transpose()?,
    })
}

/// A fanotify group, from its fdinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanotifyInfo {
    /// The fanotify_init flags (FAN_CLASS_*, FAN_REPORT_*, ...).
    pub flags: u32,
    /// The fanotify_init event_f_flags (O_RDONLY, O_LARGEFILE, ...).
    pub event_flags: u32,
    /// Its marks.
    pub marks: Vec<FanotifyMark>,
}

/// What a fanotify mark is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FanotifyTarget {
    /// An inode, with its file handle.
    Inode {
        /// The inode number.
        ino: u64,
        /// Its device (kernel s_dev encoding).
        sdev: u32,
        /// The file handle type.
        fhandle_type: i32,
        /// The file handle bytes.
        f_handle: Vec<u8>,
    },
    /// A mount, by mount id.
    Mount {
        /// The mount id (as in mountinfo).
        mnt_id: u32,
    },
    /// A whole filesystem (FAN_MARK_FILESYSTEM).
    Filesystem {
        /// Its device (kernel s_dev encoding).
        sdev: u32,
    },
}

/// One mark line of a fanotify fd's fdinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanotifyMark {
    /// What the mark is on.
    pub target: FanotifyTarget,
    /// The mark's flags (FAN_MARK_IGNORED_SURV_MODIFY, FAN_MARK_EVICTABLE, ...).
    pub mflags: u32,
    /// The event mask.
    pub mask: u32,
    /// The ignored mask.
    pub ignored_mask: u32,
}

/// Parses one fanotify mark line: `fanotify ino:4f969 sdev:800013 mflags:0
/// mask:3b ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:...`,
/// `fanotify mnt_id:3e mflags:0 mask:3b ignored_mask:0` or `fanotify
/// sdev:800013 mflags:0 mask:3b ignored_mask:0` (every number is hex).
pub fn parse_fanotify_mark(line: &str) -> Result<FanotifyMark, ProcError> {
    let err = |what: String| ProcError::whole(ProcFile::FdInfo, format!("fanotify mark: {what}"));
    let items = kv_items(line);
    if items.first().map(|&(k, _)| k) != Some("fanotify") {
        return Err(err(format!("does not start with \"fanotify\": {line:?}")));
    }
    let hex32 = |k: &str| -> Result<u32, ProcError> {
        let v = lookup(&items, k).ok_or_else(|| err(format!("{k} missing in {line:?}")))?;
        hex_u32(v).ok_or_else(|| err(format!("{k}: bad value {v:?}")))
    };
    let target = if let Some(ino) = lookup(&items, "ino") {
        let ino = hex_u64(ino).ok_or_else(|| err(format!("ino: bad value {ino:?}")))?;
        let h =
            lookup(&items, "f_handle").ok_or_else(|| err(format!("no f_handle in {line:?}")))?;
        let f_handle = hex_bytes(h).ok_or_else(|| err(format!("f_handle: bad value {h:?}")))?;
        FanotifyTarget::Inode {
            ino,
            sdev: hex32("sdev")?,
            fhandle_type: hex32("fhandle-type")? as i32,
            f_handle,
        }
    } else if lookup(&items, "mnt_id").is_some() {
        FanotifyTarget::Mount {
            mnt_id: hex32("mnt_id")?,
        }
    } else {
        FanotifyTarget::Filesystem {
            sdev: hex32("sdev")?,
        }
    };
    Ok(FanotifyMark {
        target,
        mflags: hex32("mflags")?,
        mask: hex32("mask")?,
        ignored_mask: hex32("ignored_mask")?,
    })
}

/// One `inotify wd:` line of an inotify fd's fdinfo: a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InotifyWd {
    /// The watch descriptor.
    pub wd: i32,
    /// The watched inode number.
    pub ino: u64,
    /// The watched inode's device (kernel s_dev encoding).
    pub sdev: u32,
    /// The event mask (IN_*).
    pub mask: u32,
    /// The ignored mask (always 0 for inotify).
    pub ignored_mask: u32,
    /// The file handle type (for open_by_handle_at), if printed.
    pub fhandle_type: Option<i32>,
    /// The file handle bytes, if printed.
    pub f_handle: Option<Vec<u8>>,
}

fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    b.chunks_exact(2)
        .map(|p| {
            let hi = (p[0] as char).to_digit(16)?;
            let lo = (p[1] as char).to_digit(16)?;
            Some((hi * 16 + lo) as u8)
        })
        .collect()
}

/// Parses one `inotify wd:` line, e.g. `inotify wd:1 ino:3c4a7 sdev:fe00000
/// mask:300 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:a7c4...`
/// (every number is hex).
pub fn parse_inotify_wd(line: &str) -> Result<InotifyWd, ProcError> {
    let err = |what: String| ProcError::whole(ProcFile::FdInfo, format!("inotify wd line: {what}"));
    let items = kv_items(line);
    if items.first().map(|&(k, _)| k) != Some("inotify") {
        return Err(err(format!("does not start with \"inotify\": {line:?}")));
    }
    let field = |k: &str| lookup(&items, k).ok_or_else(|| err(format!("{k} missing in {line:?}")));
    let bad = |k: &str, v: &str| err(format!("{k}: bad value {v:?}"));
    let hex32 = |k: &str| -> Result<u32, ProcError> {
        let v = field(k)?;
        hex_u32(v).ok_or_else(|| bad(k, v))
    };
    let wd = i32::try_from(hex32("wd")?).map_err(|_| bad("wd", "out of range"))?;
    let ino_s = field("ino")?;
    let ino = hex_u64(ino_s).ok_or_else(|| bad("ino", ino_s))?;
    let (fhandle_type, f_handle) = match lookup(&items, "f_handle") {
        None => (None, None),
        Some(h) => {
            let bytes = hex_bytes(h).ok_or_else(|| bad("f_handle", h))?;
            if let Some(n) = lookup(&items, "fhandle-bytes") {
                if hex_u64(n) != Some(bytes.len() as u64) {
                    return Err(bad("fhandle-bytes", n));
                }
            }
            let t = field("fhandle-type")?;
            let t = hex_u32(t)
                .and_then(|x| i32::try_from(x).ok())
                .ok_or_else(|| bad("fhandle-type", t))?;
            (Some(t), Some(bytes))
        }
    };
    Ok(InotifyWd {
        wd,
        ino,
        sdev: hex32("sdev")?,
        mask: hex32("mask")?,
        ignored_mask: match lookup(&items, "ignored_mask") {
            None => 0,
            Some(v) => hex_u32(v).ok_or_else(|| bad("ignored_mask", v))?,
        },
        fhandle_type,
        f_handle,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn procfs_fdinfo_samples() {
        let p = parse_fdinfo(include_str!("testdata/fdinfo_pipe.txt")).unwrap();
        assert_eq!(p.flags, 0o2000000);
        assert_eq!(p.flags as i32 & libc::O_CLOEXEC, libc::O_CLOEXEC);
        assert!(p.ino.is_some() && p.extra.is_empty());

        let ev = parse_fdinfo(include_str!("testdata/fdinfo_eventfd.txt")).unwrap();
        assert_eq!(ev.get("eventfd-count"), Some("5"));
        assert_eq!(ev.get("eventfd-semaphore"), Some("0"));
        assert_eq!(ev.flags as i32 & libc::O_NONBLOCK, libc::O_NONBLOCK);

        let sfd = parse_fdinfo(include_str!("testdata/fdinfo_signalfd.txt")).unwrap();
        assert_eq!(sfd.get("sigmask"), Some("0000000000004200"));

        let e = ev.eventfd().unwrap();
        assert_eq!((e.count, e.semaphore), (5, Some(false)));
        let big = parse_fdinfo("pos:\t0\nflags:\t02\nmnt_id:\t1\neventfd-count:  1234\n").unwrap();
        assert_eq!(big.eventfd().unwrap().count, 0x1234);
        assert_eq!(big.eventfd().unwrap().semaphore, None);
        assert_eq!(sfd.signalfd_mask().unwrap(), 0x4200);
        let tfd = parse_fdinfo(include_str!("testdata/fdinfo_timerfd.txt")).unwrap();
        assert_eq!(tfd.get("clockid"), Some("1"));
        assert_eq!(tfd.get("settime flags"), Some("00"));
        assert_eq!(tfd.get("it_interval"), Some("(1, 0)"));
        let t = tfd.timerfd().unwrap();
        assert_eq!(
            (t.clockid, t.ticks, t.settime_flags, t.value, t.interval),
            (1, 0, 0, (99, 998922769), (1, 0))
        );
        assert!(sfd.timerfd().is_err());
        assert!(tfd.eventfd().is_err());
        let bad = parse_fdinfo("pos:\t0\nflags:\t02\nmnt_id:\t1\nclockid: 1\nticks: 0\nsettime flags: 09\nit_value: (1, 0)\nit_interval: (0 0)\n").unwrap();
        assert!(bad.timerfd().is_err());

        let ep = parse_fdinfo(include_str!("testdata/fdinfo_epoll.txt")).unwrap();
        let t = ep.epoll_tfds().unwrap();
        assert_eq!(t.len(), 2);
        let t4 = t.iter().find(|t| t.tfd == 4).unwrap();
        assert_eq!(t4.events, 0x8000001c);
        assert_eq!(t4.data, 4);
        assert_eq!(t4.pos, Some(0));
        assert_eq!(t4.sdev, Some(0xf));
        assert!(t4.ino.is_some());
        assert!(ep.inotify_wds().unwrap().is_empty());

        let ino = parse_fdinfo(include_str!("testdata/fdinfo_inotify.txt")).unwrap();
        let w = ino.inotify_wds().unwrap();
        assert_eq!(w.len(), 2);
        let w1 = w.iter().find(|w| w.wd == 1).unwrap();
        assert_eq!(w1.ino, 0x3c4a7);
        assert_eq!(w1.sdev, 0xfe00000);
        assert_eq!(w1.mask, 0x300);
        assert_eq!(w1.fhandle_type, Some(1));
        assert_eq!(
            w1.f_handle.as_deref(),
            Some(&[0xa7, 0xc4, 0x03, 0, 0, 0, 0, 0][..])
        );
    }

    #[test]
    fn procfs_fdinfo_errors() {
        assert!(parse_fdinfo("").is_err());
        let e = parse_fdinfo("pos:\t0\nflags:\t09\nmnt_id:\t1\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(parse_fdinfo("pos:\t0\nflags:\t0\n").is_err());
        assert!(parse_fdinfo("pos:\t0\npos:\t0\nflags:\t0\nmnt_id:\t1\n").is_err());
        let old = parse_fdinfo("pos:\t0\nflags:\t02\nmnt_id:\t9\n").unwrap();
        assert_eq!(old.ino, None);
        // Old-kernel tfd line without pos/ino/sdev.
        let t = parse_epoll_tfd("tfd:        5 events:       19 data:         ffffffff").unwrap();
        assert_eq!(
            (t.tfd, t.events, t.data, t.pos),
            (5, 0x19, 0xffffffff, None)
        );
        assert!(parse_epoll_tfd("tfd: x events: 1 data: 1").is_err());
        assert!(parse_epoll_tfd("events: 1 data: 1").is_err());
        let w = parse_inotify_wd("inotify wd:a ino:1 sdev:2 mask:3 ignored_mask:0").unwrap();
        assert_eq!((w.wd, w.f_handle), (10, None));
        assert!(parse_inotify_wd(
            "inotify wd:1 ino:1 sdev:2 mask:3 fhandle-bytes:2 fhandle-type:1 f_handle:abc"
        )
        .is_err());
        assert!(parse_inotify_wd(
            "inotify wd:1 ino:1 sdev:2 mask:3 fhandle-bytes:3 fhandle-type:1 f_handle:abcd"
        )
        .is_err());
        assert!(parse_inotify_wd("inotify ino:1 sdev:2 mask:3").is_err());
    }
}

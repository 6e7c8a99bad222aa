//! Parsers for /proc files: pure functions over text, plus thin readers.
//!
//! Every `parse_*` function is pure: it takes the file's text (or bytes),
//! makes no system call, never panics on any input, and reports malformed
//! input as a [`ProcError`] that names the kind of file, the line (for text
//! files) and what is wrong.
//!
//! Every `read_*` function reads one /proc file with `std::fs` and hands it to
//! its parser; its [`ReadError`] names the path it read.
//!
//! Text is taken as `&str`: the readers convert the bytes they read with
//! `String::from_utf8_lossy`, so a path or a command name that is not UTF-8
//! comes out with U+FFFD in it.

mod auxv;
mod fdinfo;
mod limits;
mod locks;
mod maps;
mod misc;
mod mountinfo;
mod pagemap;
mod stat;
mod status;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;

pub use auxv::parse_auxv;
pub use fdinfo::{
    parse_epoll_tfd, parse_fanotify_mark, parse_fdinfo, parse_inotify_wd, EpollTfd, EventfdInfo,
    FanotifyInfo, FanotifyMark, FanotifyTarget, FdInfo, InotifyWd, TimerfdInfo,
};
pub use limits::{parse_limits, resource_of_row, Rlimit, RLIM_INFINITY};
pub use locks::{parse_lock_line, LockKind, LockLine};
pub use maps::{parse_maps, parse_smaps, VmFlags, Vma, VmaPath};
pub use misc::{
    parse_children, parse_personality, parse_timer_slack, parse_timers, PosixTimer, TimerNotify,
};
pub use mountinfo::{parse_mountinfo, unescape_octal, MountInfo, OptionalField};
pub use pagemap::{PAGE_IS_FILE, PAGE_IS_PFNZERO, PAGE_IS_PRESENT, PAGE_IS_SWAPPED};
pub use stat::{parse_stat, Stat};
pub use status::{parse_status, Status};

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// The kind of /proc file a [`ProcError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProcFile {
    /// `/proc/PID/smaps`.
    Smaps,
    /// `/proc/PID/maps`.
    Maps,
    /// `/proc/PID/stat`.
    Stat,
    /// `/proc/PID/status`.
    Status,
    /// `/proc/PID/limits`.
    Limits,
    /// `/proc/PID/fdinfo/FD`.
    FdInfo,
    /// `/proc/PID/auxv`.
    Auxv,
    /// `/proc/PID/mountinfo`.
    MountInfo,
    /// `/proc/PID/pagemap`.
    Pagemap,
    /// `/proc/PID/personality`.
    Personality,
    /// `/proc/PID/timers`.
    Timers,
    /// `/proc/TID/timerslack_ns`.
    TimerSlack,
    /// `/proc/PID/task/TID/children`.
    Children,
    /// `/proc/locks` (and the `lock:` lines of fdinfo).
    Locks,
}

impl ProcFile {
    /// The file's name pattern, e.g. `/proc/PID/smaps`.
    pub fn name(self) -> &'static str {
        match self {
            ProcFile::Smaps => "/proc/PID/smaps",
            ProcFile::Maps => "/proc/PID/maps",
            ProcFile::Stat => "/proc/PID/stat",
            ProcFile::Status => "/proc/PID/status",
            ProcFile::Limits => "/proc/PID/limits",
            ProcFile::FdInfo => "/proc/PID/fdinfo/FD",
            ProcFile::Auxv => "/proc/PID/auxv",
            ProcFile::MountInfo => "/proc/PID/mountinfo",
            ProcFile::Pagemap => "/proc/PID/pagemap",
            ProcFile::Personality => "/proc/PID/personality",
            ProcFile::Timers => "/proc/PID/timers",
            ProcFile::TimerSlack => "/proc/TID/timerslack_ns",
            ProcFile::Children => "/proc/PID/task/TID/children",
            ProcFile::Locks => "/proc/locks",
        }
    }
}

impl fmt::Display for ProcFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A /proc file's content did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {what}", match .line { Some(l) => format!(" line {l}"), None => String::new() })]
pub struct ProcError {
    /// Which kind of file.
    pub file: ProcFile,
    /// 1-based line number for text files; `None` for binary files or for
    /// problems with the file as a whole.
    pub line: Option<usize>,
    /// What is wrong.
    pub what: String,
}

impl ProcError {
    /// An error about line `line` (1-based) of a `file`.
    pub fn at(file: ProcFile, line: usize, what: impl Into<String>) -> Self {
        ProcError {
            file,
            line: Some(line),
            what: what.into(),
        }
    }

    /// An error about a `file` as a whole (or a binary file).
    pub fn whole(file: ProcFile, what: impl Into<String>) -> Self {
        ProcError {
            file,
            line: None,
            what: what.into(),
        }
    }
}

/// Reading a /proc file failed: either the read itself or its parse.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file could not be opened or read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The path that was read.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file was read but did not parse.
    #[error("{}: {source}", path.display())]
    Parse {
        /// The path that was read.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: ProcError,
    },
}

impl ReadError {
    /// The path this error is about.
    pub fn path(&self) -> &Path {
        match self {
            ReadError::Io { path, .. } | ReadError::Parse { path, .. } => path,
        }
    }

    /// The OS error number, if this is an I/O error that has one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            ReadError::Io { source, .. } => source.raw_os_error(),
            ReadError::Parse { .. } => None,
        }
    }

    /// True if the file (so, usually, the task) does not exist (ENOENT or
    /// ESRCH): the task has exited or was never there.
    pub fn is_gone(&self) -> bool {
        match self {
            ReadError::Io { source, .. } => {
                source.kind() == io::ErrorKind::NotFound
                    || source.raw_os_error() == Some(libc::ESRCH)
            }
            ReadError::Parse { .. } => false,
        }
    }
}

// ---------------------------------------------------------------------------
// Small parsing helpers shared by the parsers. All are total (no panics).

/// Parses a non-empty string of ASCII decimal digits (None on overflow).
pub(crate) fn dec_u64(s: &str) -> Option<u64> {
    digits_u64(s, 10)
}

/// The value of `s`, a non-empty string of digits of `radix` (10 or 16,
/// either case), in one pass; None for any other byte or on overflow.
fn digits_u64(s: &str, radix: u32) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.bytes().try_fold(0u64, |n, b| {
        let d = (b as char).to_digit(radix)?;
        n.checked_mul(u64::from(radix))?.checked_add(u64::from(d))
    })
}

/// Parses a decimal u32 (digits only).
pub(crate) fn dec_u32(s: &str) -> Option<u32> {
    dec_u64(s).and_then(|v| u32::try_from(v).ok())
}

/// Parses a decimal i64 with an optional leading '-'.
pub(crate) fn dec_i64(s: &str) -> Option<i64> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses a decimal i32 with an optional leading '-'.
pub(crate) fn dec_i32(s: &str) -> Option<i32> {
    dec_i64(s).and_then(|v| i32::try_from(v).ok())
}

/// Parses a non-empty string of ASCII hex digits (no `0x`).
pub(crate) fn hex_u64(s: &str) -> Option<u64> {
    digits_u64(s, 16)
}

/// Parses a hex u32 (no `0x`).
pub(crate) fn hex_u32(s: &str) -> Option<u32> {
    hex_u64(s).and_then(|v| u32::try_from(v).ok())
}

/// Parses a non-empty string of ASCII octal digits.
pub(crate) fn oct_u32(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u32::from_str_radix(s, 8).ok()
}

// ---------------------------------------------------------------------------
// Readers.

fn proc_path(pid: i32, file: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{file}"))
}

fn read_text(path: &Path) -> Result<String, ReadError> {
    let bytes = read_bytes(path)?;
    Ok(match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// What a /proc file is read into at first: most (status, stat, limits)
/// fit, so that reading one takes one read and the read that sees its end.
const FIRST_READ: usize = 4096;

fn read_bytes(path: &Path) -> Result<Vec<u8>, ReadError> {
    // Not std::fs::read: /proc files report a size of 0, so it would
    // stat the file and then read it 32, 32, 64, ... bytes at a time.
    // Nor read_to_end: when its buffer is full it probes with a 32-byte
    // read, which makes the kernel format a record for 32 bytes of it; the
    // maps of a process of 200 threads read in 550 us that way, in 335 us
    // with the buffer doubled at each full read.
    let read = || -> std::io::Result<Vec<u8>> {
        let mut file = std::fs::File::open(path)?;
        let mut buf = vec![0u8; FIRST_READ];
        let mut len = 0;
        loop {
            if len == buf.len() {
                buf.resize(buf.len() * 2, 0);
            }
            match file.read(&mut buf[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(len);
        Ok(buf)
    };
    read().map_err(|source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_at<T>(
    path: PathBuf,
    text: &str,
    parse: impl FnOnce(&str) -> Result<T, ProcError>,
) -> Result<T, ReadError> {
    parse(text).map_err(|source| ReadError::Parse { path, source })
}

fn read_parse<T>(
    path: PathBuf,
    parse: impl FnOnce(&str) -> Result<T, ProcError>,
) -> Result<T, ReadError> {
    let text = read_text(&path)?;
    parse_at(path, &text, parse)
}

/// Reads and parses `/proc/PID/smaps`.
pub fn read_smaps(pid: i32) -> Result<Vec<Vma>, ReadError> {
    read_parse(proc_path(pid, "smaps"), parse_smaps)
}

/// Reads and parses `/proc/PID/maps`.
pub fn read_maps(pid: i32) -> Result<Vec<Vma>, ReadError> {
    read_parse(proc_path(pid, "maps"), parse_maps)
}

/// Reads and parses `/proc/PID/stat`.
pub fn read_stat(pid: i32) -> Result<Stat, ReadError> {
    read_parse(proc_path(pid, "stat"), parse_stat)
}

/// Reads and parses `/proc/PID/status`.
pub fn read_status(pid: i32) -> Result<Status, ReadError> {
    read_parse(proc_path(pid, "status"), parse_status)
}

/// Reads and parses `/proc/PID/task/TID/status` (one thread's view: its own
/// signal mask and pending signals).
pub fn read_task_status(pid: i32, tid: i32) -> Result<Status, ReadError> {
    read_parse(proc_path(pid, &format!("task/{tid}/status")), parse_status)
}

/// Reads and parses `/proc/PID/limits`.
pub fn read_limits(pid: i32) -> Result<Vec<Rlimit>, ReadError> {
    read_parse(proc_path(pid, "limits"), parse_limits)
}

/// Reads and parses `/proc/PID/fdinfo/FD`.
pub fn read_fdinfo(pid: i32, fd: i32) -> Result<FdInfo, ReadError> {
    read_parse(proc_path(pid, &format!("fdinfo/{fd}")), parse_fdinfo)
}

/// Reads and parses `/proc/PID/auxv`.
pub fn read_auxv(pid: i32) -> Result<Vec<(u64, u64)>, ReadError> {
    let path = proc_path(pid, "auxv");
    let bytes = read_bytes(&path)?;
    parse_auxv(&bytes).map_err(|source| ReadError::Parse { path, source })
}

/// Reads and parses `/proc/PID/mountinfo`.
pub fn read_mountinfo(pid: i32) -> Result<Vec<MountInfo>, ReadError> {
    read_parse(proc_path(pid, "mountinfo"), parse_mountinfo)
}

/// Reads and parses `/proc/PID/personality`.
pub fn read_personality(pid: i32) -> Result<u32, ReadError> {
    read_parse(proc_path(pid, "personality"), parse_personality)
}

/// Reads `/proc/PID/task/TID/children`: the children thread `tid` of
/// process `pid` forked (and has not reaped), in the kernel's order. The
/// file exists only with CONFIG_PROC_CHILDREN; see
/// [`children_files_exist`].
pub fn read_children(pid: i32, tid: i32) -> Result<Vec<i32>, ReadError> {
    read_parse(
        proc_path(pid, &format!("task/{tid}/children")),
        parse_children,
    )
}

/// Whether this kernel has `/proc/PID/task/TID/children` files
/// (CONFIG_PROC_CHILDREN), looked at once.
pub fn children_files_exist() -> bool {
    static EXIST: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *EXIST.get_or_init(|| Path::new("/proc/thread-self/children").exists())
}

/// Reads `/proc/TID/timerslack_ns`: the timer slack of thread `tid`, in
/// nanoseconds.
pub fn read_timer_slack(tid: i32) -> Result<u64, ReadError> {
    read_parse(proc_path(tid, "timerslack_ns"), parse_timer_slack)
}

/// Reads and parses `/proc/PID/timers` (the task's POSIX timers).
pub fn read_timers(pid: i32) -> Result<Vec<PosixTimer>, ReadError> {
    read_parse(proc_path(pid, "timers"), parse_timers)
}

/// `/proc/PID/pagemap` of one task, open for any number of scans.
pub struct Pagemap {
    file: std::fs::File,
    path: PathBuf,
}

impl Pagemap {
    /// Open the pagemap of task `pid`.
    pub fn open(pid: i32) -> Result<Self, ReadError> {
        let path = proc_path(pid, "pagemap");
        match std::fs::File::open(&path) {
            Ok(file) => Ok(Pagemap { file, path }),
            Err(source) => Err(ReadError::Io { path, source }),
        }
    }

    /// The pages of `[start, end)` with at least one of the `PAGE_IS_*`
    /// categories `any_of` and none of `none_of`, as address ranges in
    /// order, adjacent ones merged (the PAGEMAP_SCAN ioctl: no entry per
    /// page is read).
    pub fn scan(
        &self,
        start: u64,
        end: u64,
        any_of: u64,
        none_of: u64,
    ) -> Result<Vec<(u64, u64)>, ReadError> {
        pagemap::scan(&self.file, start, end, any_of, none_of).map_err(|source| ReadError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

fn list_numeric_dir(path: &Path) -> io::Result<Vec<i32>> {
    let name_err = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let mut out = Vec::new();
    for entry in std::fs::read_dir(path).map_err(name_err)? {
        let entry = entry.map_err(name_err)?;
        if let Some(n) = entry.file_name().to_str().and_then(dec_i32) {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Lists the thread ids of task `pid` (the numeric entries of
/// `/proc/PID/task`), sorted. Errors name the path.
pub fn list_tids(pid: i32) -> io::Result<Vec<i32>> {
    list_numeric_dir(&proc_path(pid, "task"))
}

/// Lists the open file descriptors of task `pid` (the entries of
/// `/proc/PID/fd`), sorted. Errors name the path.
pub fn list_fds(pid: i32) -> io::Result<Vec<i32>> {
    list_numeric_dir(&proc_path(pid, "fd"))
}

/// Lists every process visible in `/proc` (its numeric entries), sorted.
/// Errors name the path.
pub fn list_pids() -> io::Result<Vec<i32>> {
    list_numeric_dir(Path::new("/proc"))
}

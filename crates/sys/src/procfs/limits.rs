//! `/proc/PID/limits`.

use super::{dec_u64, ProcError, ProcFile};

/// The value `unlimited` stands for (RLIM_INFINITY).
pub const RLIM_INFINITY: u64 = u64::MAX;

/// One row of `/proc/PID/limits`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rlimit {
    /// The resource: an `RLIMIT_*` number (`libc::RLIMIT_NOFILE`, ...).
    pub resource: u32,
    /// Soft limit; [`RLIM_INFINITY`] for `unlimited`.
    pub soft: u64,
    /// Hard limit; [`RLIM_INFINITY`] for `unlimited`.
    pub hard: u64,
}

/// Row names as the kernel prints them (fs/proc/base.c), with their
/// resource numbers. (The casts matter where libc's RLIMIT_* are `c_int`.)
#[allow(clippy::unnecessary_cast)]
const ROWS: &[(&str, u32)] = &[
    ("Max cpu time", libc::RLIMIT_CPU as u32),
    ("Max file size", libc::RLIMIT_FSIZE as u32),
    ("Max data size", libc::RLIMIT_DATA as u32),
    ("Max stack size", libc::RLIMIT_STACK as u32),
    ("Max core file size", libc::RLIMIT_CORE as u32),
    ("Max resident set", libc::RLIMIT_RSS as u32),
    ("Max processes", libc::RLIMIT_NPROC as u32),
    ("Max open files", libc::RLIMIT_NOFILE as u32),
    ("Max locked memory", libc::RLIMIT_MEMLOCK as u32),
    ("Max address space", libc::RLIMIT_AS as u32),
    ("Max file locks", libc::RLIMIT_LOCKS as u32),
    ("Max pending signals", libc::RLIMIT_SIGPENDING as u32),
    ("Max msgqueue size", libc::RLIMIT_MSGQUEUE as u32),
    ("Max nice priority", libc::RLIMIT_NICE as u32),
    ("Max realtime priority", libc::RLIMIT_RTPRIO as u32),
    ("Max realtime timeout", libc::RLIMIT_RTTIME as u32),
];

/// The resource number of a limits row name (`"Max open files"` ->
/// `RLIMIT_NOFILE`).
pub fn resource_of_row(name: &str) -> Option<u32> {
    ROWS.iter().find(|(n, _)| *n == name).map(|&(_, r)| r)
}

fn limit_value(s: &str) -> Option<u64> {
    if s == "unlimited" {
        Some(RLIM_INFINITY)
    } else {
        dec_u64(s)
    }
}

/// Parses `/proc/PID/limits`: the rows in file order. The header line must
/// come first; rows with a name this table does not know (from a newer
/// kernel) are skipped; a known row with bad values is an error.
pub fn parse_limits(text: &str) -> Result<Vec<Rlimit>, ProcError> {
    let file = ProcFile::Limits;
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, l)) if l.starts_with("Limit ") => {}
        Some((_, l)) => {
            return Err(ProcError::at(
                file,
                1,
                format!("expected the \"Limit\" header, got {l:?}"),
            ))
        }
        None => return Err(ProcError::whole(file, "empty file")),
    }
    let mut out: Vec<Rlimit> = Vec::new();
    for (i, line) in lines {
        let lineno = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        // The name column is 25 wide but holds spaces; match known names.
        let Some(&(name, resource)) = ROWS.iter().find(|(n, _)| {
            line.strip_prefix(n)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(' '))
        }) else {
            tracing::debug!(line, "unknown /proc/PID/limits row skipped");
            continue;
        };
        let mut cols = line[name.len()..].split_ascii_whitespace();
        let (soft_s, hard_s) = (cols.next().unwrap_or(""), cols.next().unwrap_or(""));
        let soft = limit_value(soft_s).ok_or_else(|| {
            ProcError::at(file, lineno, format!("{name}: bad soft limit {soft_s:?}"))
        })?;
        let hard = limit_value(hard_s).ok_or_else(|| {
            ProcError::at(file, lineno, format!("{name}: bad hard limit {hard_s:?}"))
        })?;
        // The units column (may be empty) is all that may follow.
        if cols.nth(1).is_some() {
            return Err(ProcError::at(
                file,
                lineno,
                format!("{name}: unexpected columns after the units"),
            ));
        }
        if out.iter().any(|r| r.resource == resource) {
            return Err(ProcError::at(
                file,
                lineno,
                format!("{name}: duplicate row"),
            ));
        }
        out.push(Rlimit {
            resource,
            soft,
            hard,
        });
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unnecessary_cast)]
mod tests {
    use super::*;

    const SAMPLE: &str = include_str!("testdata/limits.txt");

    #[test]
    fn procfs_limits_sample() {
        let l = parse_limits(SAMPLE).unwrap();
        assert_eq!(l.len(), 16);
        let get = |r: u32| l.iter().find(|x| x.resource == r).unwrap().clone();
        assert_eq!(get(libc::RLIMIT_CPU as u32).soft, RLIM_INFINITY);
        assert_eq!(get(libc::RLIMIT_STACK as u32).soft, 8388608);
        assert_eq!(get(libc::RLIMIT_STACK as u32).hard, RLIM_INFINITY);
        assert_eq!(get(libc::RLIMIT_NOFILE as u32).soft, 20000);
        assert_eq!(get(libc::RLIMIT_NICE as u32).hard, 0);
        assert_eq!(get(libc::RLIMIT_RTTIME as u32).hard, RLIM_INFINITY);
        let mut res: Vec<u32> = l.iter().map(|r| r.resource).collect();
        res.sort();
        assert_eq!(res, (0..16).collect::<Vec<u32>>());
        assert_eq!(
            resource_of_row("Max open files"),
            Some(libc::RLIMIT_NOFILE as u32)
        );
    }

    #[test]
    fn procfs_limits_errors_and_unknown_rows() {
        assert!(parse_limits("").is_err());
        assert!(parse_limits("Max cpu time unlimited unlimited seconds\n").is_err());
        let hdr =
            "Limit                     Soft Limit           Hard Limit           Units     \n";
        let l = parse_limits(&format!(
            "{hdr}Max frobs                 1                    2                    frobs\n"
        ))
        .unwrap();
        assert!(l.is_empty());
        let e = parse_limits(&format!(
            "{hdr}Max open files            1k                   2                    files\n"
        ))
        .unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.to_string().contains("soft"), "{e}");
        let e = parse_limits(&format!("{hdr}Max open files            1\n")).unwrap_err();
        assert!(e.to_string().contains("hard"), "{e}");
        let e = parse_limits(&format!(
            "{hdr}Max open files            1 2 files\nMax open files            1 2 files\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("duplicate"), "{e}");
        let e =
            parse_limits(&format!("{hdr}Max open files            1 2 files extra\n")).unwrap_err();
        assert_eq!(e.line, Some(2));
    }
}

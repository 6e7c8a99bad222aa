//! `/proc/PID/stat` (and `/proc/PID/task/TID/stat`).

use super::{dec_i32, dec_i64, dec_u32, dec_u64, ProcError, ProcFile};

/// `/proc/PID/stat`: every field up to `exit_code`, named as in proc(5).
/// Addresses the kernel hides from an unprivileged reader read as 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// (1) Process (or thread) id.
    pub pid: i32,
    /// (2) Command name, without the parentheses (may hold spaces and `)`).
    pub comm: String,
    /// (3) State: R, S, D, Z, T, t, X, I, P, ...
    pub state: char,
    /// (4) Parent pid.
    pub ppid: i32,
    /// (5) Process group id.
    pub pgrp: i32,
    /// (6) Session id.
    pub session: i32,
    /// (7) Controlling terminal device number (0 if none).
    pub tty_nr: i32,
    /// (8) Foreground process group of the controlling terminal (-1 if none).
    pub tpgid: i32,
    /// (9) Kernel flags word (PF_*).
    pub flags: u32,
    /// (10) Minor faults.
    pub minflt: u64,
    /// (11) Minor faults of waited-for children.
    pub cminflt: u64,
    /// (12) Major faults.
    pub majflt: u64,
    /// (13) Major faults of waited-for children.
    pub cmajflt: u64,
    /// (14) User time (clock ticks).
    pub utime: u64,
    /// (15) System time (clock ticks).
    pub stime: u64,
    /// (16) Waited-for children's user time (clock ticks).
    pub cutime: i64,
    /// (17) Waited-for children's system time (clock ticks).
    pub cstime: i64,
    /// (18) Priority as the kernel stores it.
    pub priority: i64,
    /// (19) Nice value.
    pub nice: i64,
    /// (20) Number of threads.
    pub num_threads: i64,
    /// (21) Obsolete, always 0.
    pub itrealvalue: i64,
    /// (22) Start time after boot (clock ticks).
    pub starttime: u64,
    /// (23) Virtual memory size (bytes).
    pub vsize: u64,
    /// (24) Resident set size (pages).
    pub rss: i64,
    /// (25) Soft limit on rss (bytes).
    pub rsslim: u64,
    /// (26) Start of the text segment.
    pub start_code: u64,
    /// (27) End of the text segment.
    pub end_code: u64,
    /// (28) Start (bottom) of the stack.
    pub startstack: u64,
    /// (29) Current stack pointer (0 unless the task is being core-dumped).
    pub kstkesp: u64,
    /// (30) Current instruction pointer (as `kstkesp`).
    pub kstkeip: u64,
    /// (31) Pending signals (obsolete decimal bitmap; use status).
    pub signal: u64,
    /// (32) Blocked signals (obsolete; use status).
    pub blocked: u64,
    /// (33) Ignored signals (obsolete; use status).
    pub sigignore: u64,
    /// (34) Caught signals (obsolete; use status).
    pub sigcatch: u64,
    /// (35) Wait channel (0 or 1 on current kernels).
    pub wchan: u64,
    /// (36) Not maintained (0).
    pub nswap: u64,
    /// (37) Not maintained (0).
    pub cnswap: u64,
    /// (38) Signal sent to the parent when the task dies.
    pub exit_signal: i32,
    /// (39) CPU last run on.
    pub processor: i32,
    /// (40) Real-time priority.
    pub rt_priority: u32,
    /// (41) Scheduling policy (SCHED_*).
    pub policy: u32,
    /// (42) Aggregated block I/O delays (clock ticks).
    pub delayacct_blkio_ticks: u64,
    /// (43) Guest time (clock ticks).
    pub guest_time: u64,
    /// (44) Children's guest time (clock ticks).
    pub cguest_time: i64,
    /// (45) Start of the data segment.
    pub start_data: u64,
    /// (46) End of the data segment.
    pub end_data: u64,
    /// (47) Start of the heap (brk area).
    pub start_brk: u64,
    /// (48) Start of the argument strings.
    pub arg_start: u64,
    /// (49) End of the argument strings.
    pub arg_end: u64,
    /// (50) Start of the environment strings.
    pub env_start: u64,
    /// (51) End of the environment strings.
    pub env_end: u64,
    /// (52) Exit status in waitpid(2) form.
    pub exit_code: i32,
}

/// Parses `/proc/PID/stat`. The command name is whatever lies between the
/// first `(` and the last `)`, so names with spaces and parentheses work.
/// Fields after `exit_code` (from future kernels) are ignored.
pub fn parse_stat(text: &str) -> Result<Stat, ProcError> {
    let err = |what: String| ProcError::at(ProcFile::Stat, 1, what);
    let text = text.strip_suffix('\n').unwrap_or(text);
    let open = text
        .find('(')
        .ok_or_else(|| err("no '(' before the command name".into()))?;
    let close = text
        .rfind(')')
        .filter(|&c| c > open)
        .ok_or_else(|| err("no ')' after the command name".into()))?;
    let pid_s = text[..open].trim_end_matches(' ');
    let pid = dec_i32(pid_s).ok_or_else(|| err(format!("field 1 (pid): bad number {pid_s:?}")))?;
    let comm = text[open + 1..close].to_string();
    let fields: Vec<&str> = text[close + 1..].split_ascii_whitespace().collect();
    // fields[0] is field 3 (state).
    let get = |n: usize, name: &str| -> Result<&str, ProcError> {
        fields
            .get(n - 3)
            .copied()
            .ok_or_else(|| err(format!("field {n} ({name}) missing")))
    };
    macro_rules! num {
        ($n:expr, $name:ident, $f:ident) => {{
            let s = get($n, stringify!($name))?;
            $f(s).ok_or_else(|| {
                err(format!(
                    "field {} ({}): bad number {:?}",
                    $n,
                    stringify!($name),
                    s
                ))
            })?
        }};
    }
    let state_s = get(3, "state")?;
    let mut chars = state_s.chars();
    let state = match (chars.next(), chars.next()) {
        (Some(c), None) => c,
        _ => return Err(err(format!("field 3 (state): bad state {state_s:?}"))),
    };
    Ok(Stat {
        pid,
        comm,
        state,
        ppid: num!(4, ppid, dec_i32),
        pgrp: num!(5, pgrp, dec_i32),
        session: num!(6, session, dec_i32),
        tty_nr: num!(7, tty_nr, dec_i32),
        tpgid: num!(8, tpgid, dec_i32),
        flags: num!(9, flags, dec_u32),
        minflt: num!(10, minflt, dec_u64),
        cminflt: num!(11, cminflt, dec_u64),
        majflt: num!(12, majflt, dec_u64),
        cmajflt: num!(13, cmajflt, dec_u64),
        utime: num!(14, utime, dec_u64),
        stime: num!(15, stime, dec_u64),
        cutime: num!(16, cutime, dec_i64),
        cstime: num!(17, cstime, dec_i64),
        priority: num!(18, priority, dec_i64),
        nice: num!(19, nice, dec_i64),
        num_threads: num!(20, num_threads, dec_i64),
        itrealvalue: num!(21, itrealvalue, dec_i64),
        starttime: num!(22, starttime, dec_u64),
        vsize: num!(23, vsize, dec_u64),
        rss: num!(24, rss, dec_i64),
        rsslim: num!(25, rsslim, dec_u64),
        start_code: num!(26, start_code, dec_u64),
        end_code: num!(27, end_code, dec_u64),
        startstack: num!(28, startstack, dec_u64),
        kstkesp: num!(29, kstkesp, dec_u64),
        kstkeip: num!(30, kstkeip, dec_u64),
        signal: num!(31, signal, dec_u64),
        blocked: num!(32, blocked, dec_u64),
        sigignore: num!(33, sigignore, dec_u64),
        sigcatch: num!(34, sigcatch, dec_u64),
        wchan: num!(35, wchan, dec_u64),
        nswap: num!(36, nswap, dec_u64),
        cnswap: num!(37, cnswap, dec_u64),
        exit_signal: num!(38, exit_signal, dec_i32),
        processor: num!(39, processor, dec_i32),
        rt_priority: num!(40, rt_priority, dec_u32),
        policy: num!(41, policy, dec_u32),
        delayacct_blkio_ticks: num!(42, delayacct_blkio_ticks, dec_u64),
        guest_time: num!(43, guest_time, dec_u64),
        cguest_time: num!(44, cguest_time, dec_i64),
        start_data: num!(45, start_data, dec_u64),
        end_data: num!(46, end_data, dec_u64),
        start_brk: num!(47, start_brk, dec_u64),
        arg_start: num!(48, arg_start, dec_u64),
        arg_end: num!(49, arg_end, dec_u64),
        env_start: num!(50, env_start, dec_u64),
        env_end: num!(51, env_end, dec_u64),
        exit_code: num!(52, exit_code, dec_i32),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const INIT: &str = include_str!("testdata/stat.txt");

    #[test]
    fn procfs_stat_sample() {
        let s = parse_stat(INIT).unwrap();
        assert_eq!(s.pid, 1);
        assert_eq!(s.comm, "process_api");
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 0);
        assert_eq!(s.tty_nr, 0);
        assert_eq!(s.tpgid, -1);
        assert_eq!(s.flags, 4194560);
        assert_eq!(s.priority, 10);
        assert_eq!(s.nice, -10);
        assert_eq!(s.num_threads, 14);
        assert_eq!(s.rsslim, u64::MAX);
        assert_eq!(s.exit_signal, 17);
        assert_eq!(s.exit_code, 0);
    }

    #[test]
    fn procfs_stat_tricky_comm() {
        let line = "4303 (a) (b c)) R 4299 4299 3129 0 -1 4194304 100 0 0 0 0 0 0 0 20 0 1 0 48548 3133440 408 18446744073709551615 94255682625536 94255682645417 140727029737712 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 94255682661424 94255682663040 94256713572352 140727029746402 140727029746422 140727029746422 140727029747691 0\n";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.comm, "a) (b c)");
        assert_eq!(s.pid, 4303);
        assert_eq!(s.state, 'R');
        assert_eq!(s.start_code, 94255682625536);
        assert_eq!(s.end_code, 94255682645417);
        assert_eq!(s.startstack, 140727029737712);
        assert_eq!(s.start_data, 94255682661424);
        assert_eq!(s.end_data, 94255682663040);
        assert_eq!(s.start_brk, 94256713572352);
        assert_eq!(s.arg_start, 140727029746402);
        assert_eq!(s.arg_end, 140727029746422);
        assert_eq!(s.env_start, 140727029746422);
        assert_eq!(s.env_end, 140727029747691);
        let s = parse_stat(&line.replace("(a) (b c))", "()")).unwrap();
        assert_eq!(s.comm, "");
        let s = parse_stat(&line.replace("(a) (b c))", "( x )")).unwrap();
        assert_eq!(s.comm, " x ");
    }

    #[test]
    fn procfs_stat_errors() {
        let e = parse_stat("").unwrap_err();
        assert_eq!(e.file, ProcFile::Stat);
        let e = parse_stat("1 (x) S 0").unwrap_err();
        assert!(e.to_string().contains("field 5 (pgrp) missing"), "{e}");
        let e = parse_stat(&INIT.replace(" 4194560 ", " -4 ")).unwrap_err();
        assert!(e.to_string().contains("field 9 (flags)"), "{e}");
        let e = parse_stat(&INIT.replace(" S ", " SS ")).unwrap_err();
        assert!(e.to_string().contains("state"), "{e}");
        assert!(parse_stat("x (a) S").is_err());
        assert!(parse_stat(") 1 (").is_err());
    }
}

//! `/proc/PID/status` (and `/proc/PID/task/TID/status`).

use super::{dec_u32, dec_u64, hex_u64, oct_u32, ProcError, ProcFile};

/// `/proc/PID/status`. Keys the kernel always prints are plain fields (their
/// absence is an error); keys that depend on the kernel version or config
/// are `Option`s or empty `Vec`s. Unknown keys are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// `Name:` the command name, with the kernel's `\n` and `\\` escapes
    /// undone (prefer [`super::Stat::comm`], which is not escaped).
    pub name: String,
    /// `Umask:` (octal in the file; since Linux 4.7).
    pub umask: Option<u32>,
    /// `State:` the state letter.
    pub state: char,
    /// `Tgid:` thread group id (the process id).
    pub tgid: i32,
    /// `Ngid:` NUMA group id.
    pub ngid: Option<i32>,
    /// `Pid:` thread id.
    pub pid: i32,
    /// `PPid:` parent pid.
    pub ppid: i32,
    /// `TracerPid:` pid of the tracer (0 if none).
    pub tracer_pid: i32,
    /// `Uid:` real, effective, saved, filesystem.
    pub uid: [u32; 4],
    /// `Gid:` real, effective, saved, filesystem.
    pub gid: [u32; 4],
    /// `FDSize:` allocated fd slots.
    pub fd_size: Option<u32>,
    /// `Groups:` supplementary groups.
    pub groups: Vec<u32>,
    /// `NStgid:` tgid in each pid namespace, outermost first.
    pub ns_tgid: Vec<i32>,
    /// `NSpid:` pid in each pid namespace, outermost first.
    pub ns_pid: Vec<i32>,
    /// `NSpgid:` process group id in each pid namespace.
    pub ns_pgid: Vec<i32>,
    /// `NSsid:` session id in each pid namespace.
    pub ns_sid: Vec<i32>,
    /// `Kthread:` 1 for kernel threads (since Linux 6.2).
    pub kthread: Option<bool>,
    /// `VmRSS:` (KiB; absent for zombies and kernel threads).
    pub vm_rss_kib: Option<u64>,
    /// `RssAnon:` resident anonymous memory (KiB; absent as `VmRSS:`).
    pub rss_anon_kib: Option<u64>,
    /// `VmSwap:` swapped-out anonymous memory (KiB; absent as `VmRSS:`).
    pub vm_swap_kib: Option<u64>,
    /// `Threads:` number of threads.
    pub threads: u32,
    /// `SigQ:` queued signals / RLIMIT_SIGPENDING.
    pub sig_q: (u64, u64),
    /// `SigPnd:` signals pending for this thread.
    pub sig_pnd: u64,
    /// `ShdPnd:` signals pending for the whole process.
    pub shd_pnd: u64,
    /// `SigBlk:` blocked signals.
    pub sig_blk: u64,
    /// `SigIgn:` ignored signals.
    pub sig_ign: u64,
    /// `SigCgt:` caught signals.
    pub sig_cgt: u64,
    /// `CapInh:` inheritable capabilities.
    pub cap_inh: u64,
    /// `CapPrm:` permitted capabilities.
    pub cap_prm: u64,
    /// `CapEff:` effective capabilities.
    pub cap_eff: u64,
    /// `CapBnd:` bounding set.
    pub cap_bnd: u64,
    /// `CapAmb:` ambient capabilities (since Linux 4.3).
    pub cap_amb: Option<u64>,
    /// `NoNewPrivs:` (since Linux 4.10).
    pub no_new_privs: Option<bool>,
    /// `Seccomp:` mode, 0 disabled, 1 strict, 2 filter (CONFIG_SECCOMP).
    pub seccomp: Option<u32>,
    /// `Seccomp_filters:` number of attached filters (since Linux 5.9).
    pub seccomp_filters: Option<u32>,
    /// `Speculation_Store_Bypass:` as printed.
    pub speculation_store_bypass: Option<String>,
    /// `SpeculationIndirectBranch:` as printed.
    pub speculation_indirect_branch: Option<String>,
    /// `Cpus_allowed_list:` as printed, e.g. `0-3,8`.
    pub cpus_allowed_list: Option<String>,
    /// `Mems_allowed_list:` as printed.
    pub mems_allowed_list: Option<String>,
    /// `voluntary_ctxt_switches:`.
    pub voluntary_ctxt_switches: Option<u64>,
    /// `nonvoluntary_ctxt_switches:`.
    pub nonvoluntary_ctxt_switches: Option<u64>,
}

fn unescape_name(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('\\') => out.push('\\'),
            Some(o) => {
                out.push('\\');
                out.push(o);
            }
            None => out.push('\\'),
        }
    }
    out
}

fn i32_list(v: &str) -> Option<Vec<i32>> {
    v.split_ascii_whitespace().map(super::dec_i32).collect()
}

fn id4(v: &str) -> Option<[u32; 4]> {
    let ids: Vec<u32> = v
        .split_ascii_whitespace()
        .map(dec_u32)
        .collect::<Option<_>>()?;
    ids.try_into().ok()
}

fn bool01(v: &str) -> Option<bool> {
    match v {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

fn kib(v: &str) -> Option<u64> {
    let mut it = v.split_ascii_whitespace();
    match (it.next().and_then(dec_u64), it.next(), it.next()) {
        (Some(n), Some("kB"), None) => Some(n),
        _ => None,
    }
}

#[derive(Default)]
struct Partial {
    name: Option<String>,
    umask: Option<u32>,
    state: Option<char>,
    tgid: Option<i32>,
    ngid: Option<i32>,
    pid: Option<i32>,
    ppid: Option<i32>,
    tracer_pid: Option<i32>,
    uid: Option<[u32; 4]>,
    gid: Option<[u32; 4]>,
    fd_size: Option<u32>,
    groups: Vec<u32>,
    ns_tgid: Vec<i32>,
    ns_pid: Vec<i32>,
    ns_pgid: Vec<i32>,
    ns_sid: Vec<i32>,
    kthread: Option<bool>,
    vm_rss_kib: Option<u64>,
    rss_anon_kib: Option<u64>,
    vm_swap_kib: Option<u64>,
    threads: Option<u32>,
    sig_q: Option<(u64, u64)>,
    sig_pnd: Option<u64>,
    shd_pnd: Option<u64>,
    sig_blk: Option<u64>,
    sig_ign: Option<u64>,
    sig_cgt: Option<u64>,
    cap_inh: Option<u64>,
    cap_prm: Option<u64>,
    cap_eff: Option<u64>,
    cap_bnd: Option<u64>,
    cap_amb: Option<u64>,
    no_new_privs: Option<bool>,
    seccomp: Option<u32>,
    seccomp_filters: Option<u32>,
    speculation_store_bypass: Option<String>,
    speculation_indirect_branch: Option<String>,
    cpus_allowed_list: Option<String>,
    mems_allowed_list: Option<String>,
    voluntary_ctxt_switches: Option<u64>,
    nonvoluntary_ctxt_switches: Option<u64>,
}

/// Parses `/proc/PID/status`.
pub fn parse_status(text: &str) -> Result<Status, ProcError> {
    let file = ProcFile::Status;
    let mut p = Partial::default();
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        if line.is_empty() {
            continue;
        }
        let Some((key, raw)) = line.split_once(':') else {
            return Err(ProcError::at(file, lineno, format!("no ':' in {line:?}")));
        };
        let v = raw.trim();
        let bad = || ProcError::at(file, lineno, format!("{key}: bad value {v:?}"));
        macro_rules! set {
            ($slot:expr, $val:expr) => {
                $slot = Some($val.ok_or_else(bad)?)
            };
        }
        match key {
            "Name" => {
                // The value starts after one tab; a name may end in spaces.
                let n = raw.strip_prefix('\t').unwrap_or(raw);
                p.name = Some(unescape_name(n));
            }
            "Umask" => set!(p.umask, oct_u32(v)),
            "State" => {
                let mut c = v.chars();
                let st = c.next().filter(|_| matches!(c.next(), None | Some(' ')));
                set!(p.state, st)
            }
            "Tgid" => set!(p.tgid, super::dec_i32(v)),
            "Ngid" => set!(p.ngid, super::dec_i32(v)),
            "Pid" => set!(p.pid, super::dec_i32(v)),
            "PPid" => set!(p.ppid, super::dec_i32(v)),
            "TracerPid" => set!(p.tracer_pid, super::dec_i32(v)),
            "Uid" => set!(p.uid, id4(v)),
            "Gid" => set!(p.gid, id4(v)),
            "FDSize" => set!(p.fd_size, dec_u32(v)),
            "Groups" => {
                p.groups = v
                    .split_ascii_whitespace()
                    .map(dec_u32)
                    .collect::<Option<_>>()
                    .ok_or_else(bad)?
            }
            "NStgid" => p.ns_tgid = i32_list(v).ok_or_else(bad)?,
            "NSpid" => p.ns_pid = i32_list(v).ok_or_else(bad)?,
            "NSpgid" => p.ns_pgid = i32_list(v).ok_or_else(bad)?,
            "NSsid" => p.ns_sid = i32_list(v).ok_or_else(bad)?,
            "Kthread" => set!(p.kthread, bool01(v)),
            "VmRSS" => set!(p.vm_rss_kib, kib(v)),
            "RssAnon" => set!(p.rss_anon_kib, kib(v)),
            "VmSwap" => set!(p.vm_swap_kib, kib(v)),
            "Threads" => set!(p.threads, dec_u32(v)),
            "SigQ" => set!(
                p.sig_q,
                v.split_once('/')
                    .and_then(|(a, b)| Some((dec_u64(a)?, dec_u64(b)?)))
            ),
            "SigPnd" => set!(p.sig_pnd, hex_u64(v)),
            "ShdPnd" => set!(p.shd_pnd, hex_u64(v)),
            "SigBlk" => set!(p.sig_blk, hex_u64(v)),
            "SigIgn" => set!(p.sig_ign, hex_u64(v)),
            "SigCgt" => set!(p.sig_cgt, hex_u64(v)),
            "CapInh" => set!(p.cap_inh, hex_u64(v)),
            "CapPrm" => set!(p.cap_prm, hex_u64(v)),
            "CapEff" => set!(p.cap_eff, hex_u64(v)),
            "CapBnd" => set!(p.cap_bnd, hex_u64(v)),
            "CapAmb" => set!(p.cap_amb, hex_u64(v)),
            "NoNewPrivs" => set!(p.no_new_privs, bool01(v)),
            "Seccomp" => set!(p.seccomp, dec_u32(v)),
            "Seccomp_filters" => set!(p.seccomp_filters, dec_u32(v)),
            "Speculation_Store_Bypass" => p.speculation_store_bypass = Some(v.to_string()),
            "SpeculationIndirectBranch" => p.speculation_indirect_branch = Some(v.to_string()),
            "Cpus_allowed_list" => p.cpus_allowed_list = Some(v.to_string()),
            "Mems_allowed_list" => p.mems_allowed_list = Some(v.to_string()),
            "voluntary_ctxt_switches" => set!(p.voluntary_ctxt_switches, dec_u64(v)),
            "nonvoluntary_ctxt_switches" => set!(p.nonvoluntary_ctxt_switches, dec_u64(v)),
            _ => {}
        }
    }
    let missing = |key: &str| ProcError::whole(file, format!("key {key:?} missing"));
    macro_rules! req {
        ($field:ident, $key:literal) => {
            p.$field.ok_or_else(|| missing($key))?
        };
    }
    Ok(Status {
        name: p.name.clone().ok_or_else(|| missing("Name"))?,
        umask: p.umask,
        state: req!(state, "State"),
        tgid: req!(tgid, "Tgid"),
        ngid: p.ngid,
        pid: req!(pid, "Pid"),
        ppid: req!(ppid, "PPid"),
        tracer_pid: req!(tracer_pid, "TracerPid"),
        uid: req!(uid, "Uid"),
        gid: req!(gid, "Gid"),
        fd_size: p.fd_size,
        kthread: p.kthread,
        vm_rss_kib: p.vm_rss_kib,
        rss_anon_kib: p.rss_anon_kib,
        vm_swap_kib: p.vm_swap_kib,
        threads: req!(threads, "Threads"),
        sig_q: req!(sig_q, "SigQ"),
        sig_pnd: req!(sig_pnd, "SigPnd"),
        shd_pnd: req!(shd_pnd, "ShdPnd"),
        sig_blk: req!(sig_blk, "SigBlk"),
        sig_ign: req!(sig_ign, "SigIgn"),
        sig_cgt: req!(sig_cgt, "SigCgt"),
        cap_inh: req!(cap_inh, "CapInh"),
        cap_prm: req!(cap_prm, "CapPrm"),
        cap_eff: req!(cap_eff, "CapEff"),
        cap_bnd: req!(cap_bnd, "CapBnd"),
        cap_amb: p.cap_amb,
        no_new_privs: p.no_new_privs,
        seccomp: p.seccomp,
        seccomp_filters: p.seccomp_filters,
        speculation_store_bypass: p.speculation_store_bypass,
        speculation_indirect_branch: p.speculation_indirect_branch,
        cpus_allowed_list: p.cpus_allowed_list,
        mems_allowed_list: p.mems_allowed_list,
        voluntary_ctxt_switches: p.voluntary_ctxt_switches,
        nonvoluntary_ctxt_switches: p.nonvoluntary_ctxt_switches,
        groups: p.groups,
        ns_tgid: p.ns_tgid,
        ns_pid: p.ns_pid,
        ns_pgid: p.ns_pgid,
        ns_sid: p.ns_sid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = include_str!("testdata/status.txt");

    #[test]
    fn procfs_status_sample() {
        let s = parse_status(SAMPLE).unwrap();
        assert_eq!(s.name, "cat");
        assert_eq!(s.umask, Some(0o022));
        assert_eq!(s.state, 'R');
        assert_eq!(s.tgid, s.pid);
        assert_eq!(s.uid, [0; 4]);
        assert!(s.groups.is_empty());
        assert_eq!(s.ns_pid, vec![s.pid]);
        assert_eq!(s.threads, 1);
        assert_eq!(s.sig_q.1, 96363);
        assert_eq!(s.cap_prm, 0x1fffeffffff);
        assert_eq!(s.cap_amb, Some(0));
        assert_eq!(s.no_new_privs, Some(false));
        assert_eq!(s.seccomp, Some(0));
        assert_eq!(s.seccomp_filters, Some(0));
        assert_eq!(s.speculation_store_bypass.as_deref(), Some("vulnerable"));
        assert_eq!(
            s.speculation_indirect_branch.as_deref(),
            Some("always enabled")
        );
        assert_eq!(s.cpus_allowed_list.as_deref(), Some("0-1"));
        assert_eq!(s.kthread, Some(false));
    }

    #[test]
    fn procfs_status_optional_and_odd() {
        // An old-kernel-like status: no Umask, CapAmb, NoNewPrivs, Seccomp...
        let old: String = SAMPLE
            .lines()
            .filter(|l| {
                ![
                    "Umask",
                    "CapAmb",
                    "NoNewPrivs",
                    "Seccomp",
                    "Specul",
                    "Kthread",
                    "NS",
                ]
                .iter()
                .any(|k| l.starts_with(k))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let s = parse_status(&old).unwrap();
        assert_eq!(s.umask, None);
        assert_eq!(s.cap_amb, None);
        assert_eq!(s.seccomp, None);
        assert_eq!(s.speculation_store_bypass, None);
        assert!(s.ns_pid.is_empty());

        let odd = SAMPLE
            .replace("Name:\tcat", "Name:\ta b\\\\c\\nd ")
            .replace("Groups:\t ", "Groups:\t4 24 27 ")
            .replace("SigBlk:\t0000000000000000", "SigBlk:\tfffffffe7ffbfeff")
            .replace("Uid:\t0\t0\t0\t0", "Uid:\t1000\t1001\t1002\t1003");
        let s = parse_status(&odd).unwrap();
        assert_eq!(s.name, "a b\\c\nd ");
        assert_eq!(s.groups, vec![4, 24, 27]);
        assert_eq!(s.sig_blk, 0xfffffffe7ffbfeff);
        assert_eq!(s.uid, [1000, 1001, 1002, 1003]);
    }

    #[test]
    fn procfs_status_errors() {
        let e = parse_status("").unwrap_err();
        assert!(e.to_string().contains("Name"), "{e}");
        let e = parse_status(&SAMPLE.replace("Uid:\t0\t0\t0\t0", "Uid:\t0\t0\t0")).unwrap_err();
        assert!(e.to_string().contains("Uid"), "{e}");
        assert_eq!(e.line, Some(9));
        let e = parse_status(&SAMPLE.replace("SigCgt:\t0", "SigCgt:\tx")).unwrap_err();
        assert!(e.to_string().contains("SigCgt"), "{e}");
        let e = parse_status(&SAMPLE.replace("CapEff", "CapXff")).unwrap_err();
        assert!(e.to_string().contains("CapEff"), "{e}");
        assert!(parse_status("garbage line\n").is_err());
    }
}

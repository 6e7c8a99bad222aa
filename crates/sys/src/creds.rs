//! Credentials, seccomp and scheduling state of another thread that crust
//! reads or sets from outside: seccomp filters through ptrace, CPU affinity
//! and I/O priority by tid, and the capability constants of this kernel.

use std::io;

use libc::pid_t;

/// `PTRACE_SECCOMP_GET_FILTER`.
const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
/// `PTRACE_GET_SECCOMP_METADATA`.
const PTRACE_GET_SECCOMP_METADATA: libc::c_uint = 0x420d;
/// `PTRACE_O_SUSPEND_SECCOMP`: seccomp does not act on the tracee's
/// syscalls while crust traces it (needs CAP_SYS_ADMIN).
pub const PTRACE_O_SUSPEND_SECCOMP: i32 = 1 << 21;
/// `BPF_MAXINSNS`.
pub const BPF_MAXINSNS: usize = 4096;
/// Size of one `struct sock_filter`.
pub const SOCK_FILTER_SIZE: usize = 8;
/// `IOPRIO_WHO_PROCESS`.
const IOPRIO_WHO_PROCESS: libc::c_int = 1;

/// The BPF program of seccomp filter `idx` of thread `tid` (0 is the
/// oldest), `None` past the newest. The thread must be stopped under
/// crust's ptrace.
pub fn seccomp_filter(tid: pid_t, idx: u64) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; BPF_MAXINSNS * SOCK_FILTER_SIZE];
    // SAFETY: buf holds BPF_MAXINSNS instructions, the most a filter has.
    let n = unsafe {
        libc::ptrace(
            PTRACE_SECCOMP_GET_FILTER,
            tid,
            idx as *mut libc::c_void,
            buf.as_mut_ptr() as *mut libc::c_void,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOENT) => Ok(None),
            _ => Err(e),
        };
    }
    buf.truncate(n as usize * SOCK_FILTER_SIZE);
    Ok(Some(buf))
}

/// The `SECCOMP_FILTER_FLAG_*` bits the kernel reports for filter `idx` of
/// thread `tid` (`PTRACE_GET_SECCOMP_METADATA`: LOG).
pub fn seccomp_flags(tid: pid_t, idx: u64) -> io::Result<u64> {
    let mut md = [idx, 0u64];
    // SAFETY: md is a struct seccomp_metadata (filter_off, flags).
    let r = unsafe {
        libc::ptrace(
            PTRACE_GET_SECCOMP_METADATA,
            tid,
            std::mem::size_of_val(&md) as *mut libc::c_void,
            md.as_mut_ptr() as *mut libc::c_void,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(md[1])
}

/// The CPU affinity mask of thread `tid`, 64 CPUs per word.
pub fn get_affinity(tid: pid_t) -> io::Result<Vec<u64>> {
    let mut words = vec![0u64; 16];
    loop {
        // SAFETY: the kernel writes at most the given size into words.
        let r = unsafe {
            libc::syscall(
                libc::SYS_sched_getaffinity,
                tid,
                words.len() * 8,
                words.as_mut_ptr(),
            )
        };
        if r >= 0 {
            words.truncate((r as usize).div_ceil(8));
            while words.last() == Some(&0) {
                words.pop();
            }
            return Ok(words);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINVAL) && words.len() < 1024 {
            words.resize(words.len() * 2, 0);
            continue;
        }
        return Err(e);
    }
}

/// Set the CPU affinity mask of thread `tid`.
pub fn set_affinity(tid: pid_t, mask: &[u64]) -> io::Result<()> {
    // SAFETY: the kernel reads mask.len() words.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_setaffinity,
            tid,
            mask.len() * 8,
            mask.as_ptr(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The I/O priority of thread `tid` (`class << 13 | data`, 0 for none).
pub fn get_ioprio(tid: pid_t) -> io::Result<u32> {
    // SAFETY: plain syscall with integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, tid) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as u32)
}

/// Set the I/O priority of thread `tid`.
pub fn set_ioprio(tid: pid_t, prio: u32) -> io::Result<()> {
    // SAFETY: plain syscall with integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, tid, prio) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The highest capability number of this kernel (/proc/sys/kernel/cap_last_cap).
pub fn cap_last_cap() -> io::Result<u32> {
    let t = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")?;
    t.trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "cap_last_cap"))
}

/// The names of the capabilities, by number (CAP_CHOWN is 0).
pub const CAP_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// crust's own securebits (PR_GET_SECUREBITS).
pub fn own_securebits() -> u32 {
    // SAFETY: prctl with integer arguments.
    let r = unsafe { libc::prctl(libc::PR_GET_SECUREBITS, 0, 0, 0, 0) };
    r.max(0) as u32
}

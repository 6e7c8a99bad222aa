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

/// The filesystem identity of a thread: what the kernel checks path
/// lookups, opens and file creation against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsIdentity {
    /// The fs uid (owner of the files it creates).
    pub fsuid: u32,
    /// The fs gid.
    pub fsgid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Effective capabilities (bit n is capability n).
    pub cap_eff: u64,
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `_LINUX_CAPABILITY_VERSION_3`.
pub const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// The calling thread's (effective, permitted, inheritable) capabilities.
fn own_caps() -> io::Result<[u64; 3]> {
    let mut h = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut d = [CapData::default(); 2];
    // SAFETY: a v3 header and the two data structs v3 fills.
    if unsafe { libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let join = |lo: u32, hi: u32| lo as u64 | (hi as u64) << 32;
    Ok([
        join(d[0].effective, d[1].effective),
        join(d[0].permitted, d[1].permitted),
        join(d[0].inheritable, d[1].inheritable),
    ])
}

/// Set the calling thread's capabilities (this thread only: the raw
/// syscall, as glibc does not broadcast capset).
fn set_own_caps([eff, prm, inh]: [u64; 3]) -> io::Result<()> {
    let mut h = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let d = [
        CapData {
            effective: eff as u32,
            permitted: prm as u32,
            inheritable: inh as u32,
        },
        CapData {
            effective: (eff >> 32) as u32,
            permitted: (prm >> 32) as u32,
            inheritable: (inh >> 32) as u32,
        },
    ];
    // SAFETY: a v3 header and the two data structs v3 reads.
    if unsafe { libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The calling thread's supplementary groups.
fn own_groups() -> io::Result<Vec<u32>> {
    // SAFETY: with size 0, getgroups only counts.
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut g = vec![0 as libc::gid_t; n as usize];
    // SAFETY: g has room for n groups.
    let n = unsafe { libc::getgroups(n, g.as_mut_ptr()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    g.truncate(n as usize);
    Ok(g)
}

/// Set the calling thread's fs uid and gid and groups (raw syscalls: this
/// thread only; glibc's setgroups would change every thread). setfsuid
/// reports no error: the result is read back.
fn set_fs_ids(fsuid: u32, fsgid: u32, groups: &[u32]) -> io::Result<()> {
    // SAFETY: setgroups reads groups.len() gids.
    if unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: setfsgid/setfsuid take an id; -1 only reads the current one.
    unsafe {
        libc::syscall(libc::SYS_setfsgid, fsgid);
        libc::syscall(libc::SYS_setfsuid, fsuid);
        let gid = libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32;
        let uid = libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32;
        if gid != fsgid || uid != fsuid {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
    }
    Ok(())
}

/// The calling thread's filesystem identity.
pub fn own_fs_identity() -> io::Result<FsIdentity> {
    // SAFETY: -1 is no valid id: the calls only report the current ones.
    let (fsuid, fsgid) = unsafe {
        (
            libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32,
            libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32,
        )
    };
    Ok(FsIdentity {
        fsuid,
        fsgid,
        groups: own_groups()?,
        cap_eff: own_caps()?[0],
    })
}

/// The calling thread acting with another filesystem identity, until
/// dropped. Only this thread changes; its permitted capabilities stay, so
/// it can go back.
#[must_use = "the identity is given back when this is dropped"]
pub struct ActingAs {
    saved: FsIdentity,
    caps: [u64; 3],
    /// Whether the ids and groups changed (or only the capabilities).
    ids_changed: bool,
}

/// Act with `id`'s filesystem identity on the calling thread (its
/// capabilities cut to those the thread has). Needs CAP_SETUID,
/// CAP_SETGID and the capabilities of `id`.
/// Ids and groups that are the thread's already are left alone, so that
/// only dropping capabilities (which needs none) is done then.
pub fn act_as(id: &FsIdentity) -> io::Result<ActingAs> {
    let saved = own_fs_identity()?;
    let caps = own_caps()?;
    let mut own_groups = saved.groups.clone();
    own_groups.sort_unstable();
    let mut want_groups = id.groups.clone();
    want_groups.sort_unstable();
    let ids_changed =
        saved.fsuid != id.fsuid || saved.fsgid != id.fsgid || own_groups != want_groups;
    let guard = ActingAs {
        saved,
        caps,
        ids_changed,
    };
    if ids_changed {
        set_fs_ids(id.fsuid, id.fsgid, &id.groups)?;
    }
    set_own_caps([id.cap_eff & caps[1], caps[1], caps[2]])?;
    Ok(guard)
}

impl Drop for ActingAs {
    fn drop(&mut self) {
        // Back to the saved identity: capabilities first, as setfsuid and
        // setgroups need CAP_SETUID and CAP_SETGID.
        let back = set_own_caps(self.caps).and_then(|()| {
            if self.ids_changed {
                set_fs_ids(self.saved.fsuid, self.saved.fsgid, &self.saved.groups)
            } else {
                Ok(())
            }
        });
        // setfsuid to 0 raises the fs capabilities again: put back exactly.
        let back = back.and_then(|()| set_own_caps(self.caps));
        if let Err(e) = back {
            // A thread left with another identity must not go on.
            eprintln!("crust: cannot take back its own identity: {e}");
            std::process::abort();
        }
    }
}

/// Whether the calling thread, with its current filesystem identity, may
/// access `path` with `mode` (R_OK, W_OK: faccessat2 with AT_EACCESS).
pub fn may_access(path: &std::path::Path, mode: i32) -> io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a NUL-terminated path.
    let r = unsafe {
        libc::syscall(
            libc::SYS_faccessat2,
            libc::AT_FDCWD,
            c.as_ptr(),
            mode,
            libc::AT_EACCESS,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

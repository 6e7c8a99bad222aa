//! Per-thread state the kernel shows to a tracer without remote syscalls:
//! the robust futex list, and the XSAVE layout of this CPU.

use std::io;

use libc::pid_t;

/// The robust futex list head and length of thread `tid` (get_robust_list).
pub fn robust_list(tid: pid_t) -> io::Result<(u64, u64)> {
    let mut head: u64 = 0;
    let mut len: usize = 0;
    // SAFETY: both out pointers are valid for the kernel to write.
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            tid,
            &mut head as *mut u64,
            &mut len as *mut usize,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((head, len as u64))
}

/// Offset and size of XSAVE state component `component` in the standard
/// (non-compacted) layout that ptrace's NT_X86_XSTATE uses, from CPUID leaf
/// 0xD; `None` when the CPU does not have it.
///
/// Asked once per component and kept: in a VM each CPUID is an exit to the
/// hypervisor, and a dump of 200 threads asked some 3000 of them.
pub fn xsave_component(component: u32) -> Option<(usize, usize)> {
    static LAYOUT: std::sync::OnceLock<[Option<(usize, usize)>; 64]> = std::sync::OnceLock::new();
    let layout = LAYOUT.get_or_init(|| {
        std::array::from_fn(|i| {
            #[allow(unused_unsafe)]
            // SAFETY: cpuid is always available on x86_64.
            let r = unsafe { core::arch::x86_64::__cpuid_count(0xd, i as u32) };
            (r.eax != 0).then_some((r.ebx as usize, r.eax as usize))
        })
    });
    layout.get(component as usize).copied().flatten()
}

/// Scheduling policy (with SCHED_RESET_ON_FORK if set) and static priority
/// of thread `tid`.
pub fn get_sched(tid: pid_t) -> io::Result<(i32, i32)> {
    // SAFETY: plain syscalls; param is a valid out pointer.
    let policy = unsafe { libc::sched_getscheduler(tid) };
    if policy < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut param = libc::sched_param { sched_priority: 0 };
    // SAFETY: as above.
    if unsafe { libc::sched_getparam(tid, &mut param) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((policy, param.sched_priority))
}

/// Set the scheduling policy and priority of thread `tid` (0: the caller).
pub fn set_sched(tid: pid_t, policy: i32, prio: i32) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: prio,
    };
    // SAFETY: plain syscall with a valid param pointer.
    if unsafe { libc::sched_setscheduler(tid, policy, &param) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The nice value of thread `tid` (getpriority).
pub fn get_nice(tid: pid_t) -> io::Result<i32> {
    // SAFETY: plain syscall with integer arguments. The raw syscall
    // answers 20 - nice (1 to 40), so that no value looks like an error.
    let r = unsafe { libc::syscall(libc::SYS_getpriority, libc::PRIO_PROCESS, tid) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(20 - r as i32)
}

/// Set the nice value of thread `tid` (0: the caller).
pub fn set_nice(tid: pid_t, nice: i32) -> io::Result<()> {
    // SAFETY: plain syscall.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `KCMP_FILE`.
const KCMP_FILE: i32 = 0;

/// Whether fd `fd1` of `pid1` and fd `fd2` of `pid2` are the same open file
/// description (kcmp KCMP_FILE).
pub fn kcmp_file(pid1: pid_t, fd1: i32, pid2: pid_t, fd2: i32) -> io::Result<bool> {
    // SAFETY: plain syscall with integer arguments.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid1,
            pid2,
            KCMP_FILE,
            fd1 as libc::c_ulong,
            fd2 as libc::c_ulong,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r == 0)
}

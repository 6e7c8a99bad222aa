//! clone3 with set_tid: create a process with a chosen pid.

use std::io;

use libc::pid_t;

/// `struct clone_args` (Debian 12's headers lack set_tid).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Fork a child whose pid (in crust's pid namespace) is `pid`; the child
/// runs `child` and exits with the code it returns. The caller must be
/// single-threaded (checked): as with fork, only the calling thread is
/// copied. Returns the child's pid in the parent. EEXIST means `pid` is
/// taken.
pub fn fork_with_pid<F: FnOnce() -> i32>(pid: pid_t, child: F) -> io::Result<pid_t> {
    fork_with(0, Some(pid), child)
}

/// Fork a child with extra clone `flags` (such as CLONE_NEWPID) and, when
/// `pid` is given, that pid in the innermost pid namespace; the child runs
/// `child` and exits with the code it returns. Same rules as
/// [`fork_with_pid`].
pub fn fork_with<F: FnOnce() -> i32>(
    flags: u64,
    pid: Option<pid_t>,
    child: F,
) -> io::Result<pid_t> {
    let threads = std::fs::read_dir("/proc/self/task")?.count();
    if threads != 1 {
        return Err(io::Error::other(format!(
            "fork_with_pid needs a single-threaded caller, this process has {threads} threads"
        )));
    }
    let tids = [pid.unwrap_or(0) as u64];
    let args = CloneArgs {
        flags,
        exit_signal: libc::SIGCHLD as u64,
        set_tid: if pid.is_some() {
            tids.as_ptr() as u64
        } else {
            0
        },
        set_tid_size: pid.is_some() as u64,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM behaves as fork: the child gets a copy
    // of the (single-threaded) address space and continues here.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if r == 0 {
        let code = child();
        // SAFETY: leave the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    Ok(r as pid_t)
}

/// Send `sig` to the calling process with the raw syscall (glibc's cached
/// thread id is stale in a clone3 child, so raise() must not be used there).
pub fn kill_self(sig: i32) -> io::Result<()> {
    // SAFETY: plain syscalls.
    let r = unsafe { libc::syscall(libc::SYS_kill, libc::syscall(libc::SYS_getpid), sig) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `_exit(code)` without running any destructor or atexit handler.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and is always safe to call.
    unsafe { libc::_exit(code) }
}

/// Reset the action of signal `sig` to its default (SIG_DFL).
pub fn set_default_action(sig: i32) -> io::Result<()> {
    // SAFETY: sigaction with SIG_DFL installs no handler code.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = libc::SIG_DFL;
    // SAFETY: sa is a valid sigaction; the old action is not requested.
    if unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The calling process's own action for signal `sig` as the kernel keeps
/// it: (handler, flags, restorer, mask), as rt_sigaction shows it.
pub fn own_sigaction(sig: i32) -> io::Result<[u64; 4]> {
    let mut k = [0u64; 4];
    // SAFETY: rt_sigaction writes a kernel sigaction (32 bytes) into k.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            std::ptr::null::<u64>(),
            k.as_mut_ptr(),
            8usize,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(k)
}

//! The process tree: finding and freezing the tasks to dump (seize until
//! stable), letting them go (resume, stop or kill), and at restore creating
//! each process with its dumped pid.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;

use crust_image::pb;
use crust_sys::clone::{exit_now, fork_with_pid, kill_self};
use crust_sys::procfs;
use crust_sys::ptrace::{self, WaitEvent};

use crate::error::{Context, Error, Result};

/// `PTRACE_EVENT_STOP`.
const PTRACE_EVENT_STOP: i32 = 128;

/// Refuse pids crust must not dump: absent ones and crust's own ancestors.
pub fn check_target(pid: i32) -> Result<()> {
    if pid <= 0 || !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        return Err(Error::NoSuchProcess(pid));
    }
    let stat = procfs::read_stat(pid).map_err(|e| {
        if e.is_gone() {
            Error::NoSuchProcess(pid)
        } else {
            e.into()
        }
    })?;
    if stat.pid != pid {
        // /proc/PID of a thread that is not a group leader.
        return Err(Error::Unsupported {
            pid,
            what: format!(
                "thread {pid} of process {} alone (dump pid {} instead)",
                stat.pid, stat.pid
            ),
        });
    }
    let mut p = std::process::id() as i32;
    while p > 0 {
        if p == pid {
            return Err(Error::OwnAncestor(pid));
        }
        p = match procfs::read_stat(p) {
            Ok(s) => s.ppid,
            Err(_) => break,
        };
    }
    Ok(())
}

/// Refuse what a single-process dump cannot hold yet: more threads, children.
pub fn check_single(pid: i32) -> Result<()> {
    let tids = procfs::list_tids(pid).ctx(|| format!("listing the threads of {pid}"))?;
    if let Some(t) = tids.iter().find(|&&t| t != pid) {
        return Err(Error::Unsupported {
            pid,
            what: format!(
                "a second thread (tid {t}): multi-threaded processes are not supported yet"
            ),
        });
    }
    for p in procfs::list_pids().ctx(|| "listing /proc".into())? {
        if let Ok(s) = procfs::read_stat(p) {
            if s.ppid == pid {
                return Err(Error::Unsupported {
                    pid,
                    what: format!("a child process (pid {p}): process trees are not supported yet"),
                });
            }
        }
    }
    Ok(())
}

/// How a frozen task is let go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Resume it as if nothing happened.
    Resume,
    /// Leave it stopped (SIGSTOP).
    Stop,
    /// Kill it (the dump is complete).
    Kill,
}

/// A task seized and stopped by crust. Dropping it without
/// [`Frozen::release`] resumes the task untouched.
pub struct Frozen {
    pid: i32,
    released: bool,
}

impl Frozen {
    /// PTRACE_SEIZE and PTRACE_INTERRUPT `pid`, and wait until it stops.
    /// Signals that arrive meanwhile are delivered, not lost.
    pub fn seize(pid: i32) -> Result<Frozen> {
        ptrace::seize(pid, libc::PTRACE_O_TRACESYSGOOD).map_err(|e| match e.raw_os_error() {
            Some(libc::ESRCH) => Error::NoSuchProcess(pid),
            Some(libc::EPERM) => Error::Privilege(format!(
                "permission to ptrace pid {pid} (CAP_SYS_PTRACE; is it traced already?)"
            )),
            _ => Error::Sys {
                what: format!("PTRACE_SEIZE of {pid}"),
                err: e,
            },
        })?;
        let f = Frozen {
            pid,
            released: false,
        };
        ptrace::interrupt(pid).ctx(|| format!("PTRACE_INTERRUPT of {pid}"))?;
        loop {
            match ptrace::wait(pid).ctx(|| format!("waiting for {pid} to stop"))? {
                WaitEvent::Stopped { event, .. } if event == PTRACE_EVENT_STOP => break,
                WaitEvent::Stopped { sig, .. } => {
                    ptrace::resume(pid, sig).ctx(|| format!("delivering signal {sig} to {pid}"))?
                }
                WaitEvent::Exited(_) | WaitEvent::Signaled(_) => {
                    let mut f = f;
                    f.released = true;
                    return Err(Error::NoSuchProcess(pid));
                }
            }
        }
        Ok(f)
    }

    /// The frozen task.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Let the task go.
    pub fn release(mut self, how: Release) -> Result<()> {
        self.released = true;
        let what = || format!("letting {} go", self.pid);
        match how {
            Release::Resume => ptrace::detach(self.pid, 0).ctx(what),
            Release::Stop => ptrace::detach(self.pid, libc::SIGSTOP).ctx(what),
            Release::Kill => {
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(self.pid),
                    nix::sys::signal::SIGKILL,
                )
                .ctx(|| format!("killing {}", self.pid))?;
                // Reap the tracee's death notification meant for the tracer.
                let _ = ptrace::wait(self.pid);
                Ok(())
            }
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.released {
            let _ = ptrace::detach(self.pid, 0);
        }
    }
}

/// The pstree entry of a single task (the root of its tree: ppid 0, as
/// crit expects).
pub fn pstree_entry(stat: &procfs::Stat) -> pb::PstreeEntry {
    pb::PstreeEntry {
        pid: stat.pid as u32,
        ppid: 0,
        pgid: stat.pgrp as u32,
        sid: stat.session as u32,
        threads: vec![stat.pid as u32],
    }
}

/// A restored process created by crust, stopped and traced (PTRACE_O_EXITKILL:
/// if crust dies, it dies too). Dropping it without [`Child::handed_over`]
/// kills it: a restore is all or nothing.
pub struct Child {
    pid: i32,
    live: bool,
}

impl Child {
    /// Its pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The process now belongs to itself: do not kill it on drop.
    pub fn handed_over(mut self) {
        self.live = false;
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.live {
            let pid = nix::unistd::Pid::from_raw(self.pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::__WALL));
        }
    }
}

/// Fork the process that becomes `pid`: clone3 with set_tid, then in the
/// child `setup` (session, fds, cwd, rlimits ...), which may move the
/// child's error channel it is given; the child then stops under crust's
/// ptrace. A failing setup's message comes back as the error.
pub fn fork_task(pid: i32, setup: impl FnOnce(&mut OwnedFd) -> Result<()>) -> Result<Child> {
    if std::path::Path::new(&format!("/proc/{pid}")).exists() {
        return Err(Error::PidTaken(pid));
    }
    let (mut rd, wr) = pipe()?;
    let parent = std::process::id() as i32;
    let forked = fork_with_pid(pid, move || {
        let mut chan = wr;
        let res = (|| -> Result<()> {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::SIGKILL)
                .ctx(|| "PR_SET_PDEATHSIG".into())?;
            if nix::unistd::getppid().as_raw() != parent {
                exit_now(1);
            }
            setup(&mut chan)?;
            ptrace::traceme().ctx(|| "PTRACE_TRACEME".into())
        })();
        match res {
            Ok(()) => {
                drop(chan);
                let _ = kill_self(libc::SIGSTOP);
                // Not reached: crust turns this process into the dumped one.
                1
            }
            Err(e) => {
                let _ = std::fs::File::from(chan).write_all(e.to_string().as_bytes());
                2
            }
        }
    });
    let child_pid = match forked {
        Ok(p) => p,
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => return Err(Error::PidTaken(pid)),
        Err(e) => {
            return Err(Error::Sys {
                what: format!("clone3 with set_tid {pid}"),
                err: e,
            })
        }
    };
    let child = Child {
        pid: child_pid,
        live: true,
    };
    match ptrace::wait(child_pid).ctx(|| format!("waiting for restored {pid}"))? {
        WaitEvent::Stopped { sig, .. } if sig == libc::SIGSTOP => {}
        other => {
            let mut msg = String::new();
            let _ = rd.read_to_string(&mut msg);
            let mut child = child;
            child.live = false;
            return Err(Error::Restore {
                pid,
                what: if msg.is_empty() {
                    format!("the new process failed to set itself up ({other:?})")
                } else {
                    msg
                },
            });
        }
    }
    ptrace::set_options(
        child_pid,
        libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_EXITKILL,
    )
    .ctx(|| format!("PTRACE_SETOPTIONS of {pid}"))?;
    Ok(child)
}

fn pipe() -> Result<(std::fs::File, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ctx(|| "pipe2".into())?;
    Ok((std::fs::File::from(r), w))
}

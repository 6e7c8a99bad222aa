//! The engine's error type: every failure names what it was about.

use std::io;
use std::path::PathBuf;

use crust_image::ImageError;

/// Why a dump, restore or check failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An image file is missing, unreadable or malformed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The images are well-formed but do not make sense together.
    #[error("{file}: {what}")]
    BadImage {
        /// The image file.
        file: String,
        /// What is wrong.
        what: String,
    },
    /// A /proc file could not be read or parsed.
    #[error(transparent)]
    Proc(#[from] crust_sys::procfs::ReadError),
    /// The process to dump does not exist.
    #[error("no process with pid {0}")]
    NoSuchProcess(i32),
    /// crust was asked to dump itself or one of its ancestors.
    #[error("pid {0} is crust itself or one of its ancestors; crust cannot dump it")]
    OwnAncestor(i32),
    /// The task holds state crust does not support yet; it was left running.
    #[error("pid {pid}: cannot dump {what}; the task was left running unchanged")]
    Unsupported {
        /// The task.
        pid: i32,
        /// The kind of state and where it is (fd number, address).
        what: String,
    },
    /// A pid the restore needs is in use.
    #[error("pid {0} is in use, so the tree cannot be restored with its original pids; `crust restore --new-pid-ns` restores it inside a new pid namespace, with the dumped pids there")]
    PidTaken(i32),
    /// A pid the restore needs is held by a zombie its parent does not reap.
    #[error("pid {pid} is held by a zombie that its parent {parent} has not reaped in {waited_ms} ms (a tree killed by its dump leaves such zombies to whoever adopts its orphans); restore again once it is reaped, or restore with `crust restore --new-pid-ns`, inside a new pid namespace with the dumped pids there")]
    PidHeldByZombie {
        /// The pid.
        pid: i32,
        /// The zombie's parent.
        parent: i32,
        /// How long crust waited for it to go.
        waited_ms: u64,
    },
    /// A file the images refer to is gone or changed since the dump.
    #[error("{path}: {what} since the dump")]
    FileChanged {
        /// The file.
        path: PathBuf,
        /// What changed.
        what: String,
    },
    /// crust lacks a privilege it needs.
    /// A thread of the tree is traced by someone else already.
    #[error("pid {pid} is already traced by pid {tracer} ({comm}): another dump or a debugger holds it; crust left the tree as it was")]
    AlreadyTraced {
        /// The thread crust could not seize.
        pid: i32,
        /// Its tracer.
        tracer: i32,
        /// The tracer's command name.
        comm: String,
    },

    #[error("crust needs {0}")]
    Privilege(String),
    /// A task's ids are not those of the (non-root) user running crust.
    #[error("refusing to {action} pid {pid}: {what}; only root may {action} a task with another user's credentials")]
    ForeignCreds {
        /// "dump" or "restore".
        action: &'static str,
        /// The process.
        pid: i32,
        /// Which id is foreign.
        what: String,
    },
    /// A restored task's credentials (capabilities, ids), affinity or
    /// oom_score_adj are beyond what this crust can grant.
    #[error("cannot restore pid {pid}: {what}")]
    Creds {
        /// The task.
        pid: i32,
        /// What cannot be granted.
        what: String,
    },
    /// A restored rlimit cannot be set by this crust.
    #[error("cannot restore {0}")]
    Rlimit(String),
    /// A system call or kernel interface failed.
    #[error("{what}: {err}")]
    Sys {
        /// What crust was doing.
        what: String,
        /// The kernel's answer.
        err: io::Error,
    },
    /// The kernel lacks a feature crust needs.
    #[error("this kernel lacks {0}")]
    Kernel(String),
    /// --shell-job cannot give the task a terminal.
    #[error("--shell-job: {0}")]
    ShellJob(String),
    /// A restored task failed before it was handed over.
    #[error("restored task {pid}: {what}")]
    Restore {
        /// The task.
        pid: i32,
        /// What went wrong.
        what: String,
    },
    /// A page copy did not run: an earlier step failed, or its thread died.
    #[error("page copy: {0}")]
    Movers(&'static str),
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attach "what crust was doing" to io errors.
pub trait Context<T> {
    /// Wrap an io error with a description of the failed step.
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|err| Error::Sys { what: what(), err })
    }
}

impl<T> Context<T> for nix::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::Sys {
            what: what(),
            err: io::Error::from_raw_os_error(e as i32),
        })
    }
}

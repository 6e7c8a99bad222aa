//! crust-sys: the only crate with `unsafe` and raw kernel calls: ptrace,
//! remote syscalls, process_vm_readv/writev, pidfd_getfd, clone3 set_tid,
//! mapped image files and /proc parsers.

pub mod clone;
pub mod creds;
pub mod eventfds;
pub mod fd;
pub mod mmap;
pub mod pidfd;
pub mod pipe;
pub mod premap;
pub mod probe;
pub mod procfs;
pub mod ptrace;
pub mod remote;
pub mod task;
pub mod tty;
pub mod uffd;
pub mod vm;
pub mod watchdog;

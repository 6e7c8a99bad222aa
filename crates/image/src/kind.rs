//! What each image file is: its magics, its CRIU name and its file name.

use crate::magic;

/// The kinds of image files crust reads and writes.
///
/// Each kind has its own magic ([`ImageKind::magic`]) and, except
/// [`ImageKind::Inventory`] and the raw [`ImageKind::Pages`], a leading
/// common magic ([`ImageKind::common_magic`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageKind {
    /// `inventory.img`: one `inventory_entry`.
    Inventory,
    /// `pstree.img`: one `pstree_entry` per process.
    Pstree,
    /// `core-PID.img`: one `core_entry` per thread (the first one for the leader).
    Core,
    /// `ids-PID.img`: one `task_kobj_ids_entry`.
    Ids,
    /// `mm-PID.img`: one `mm_entry` with its VMAs.
    Mm,
    /// `vmas-PID.img` (legacy): `vma_entry` records.
    Vmas,
    /// `pagemap-ID.img`: a `pagemap_head`, then `pagemap_entry` records.
    Pagemap,
    /// `pagemap-shmem-ID.img`: like [`ImageKind::Pagemap`], for shared anonymous memory.
    ShmemPagemap,
    /// `pages-ID.img`: raw 4 KiB pages, no magic, no entries.
    Pages,
    /// `files.img`: the file table, `file_entry` records.
    Files,
    /// `fdinfo-ID.img`: a task's fd table, `fdinfo_entry` records.
    Fdinfo,
    /// `fs-PID.img`: one `fs_entry` (cwd, root, umask).
    Fs,
    /// `reg-files.img` (legacy): `reg_file_entry` records.
    RegFiles,
    /// `pipes.img` (legacy): `pipe_entry` records.
    Pipes,
    /// `pipes-data.img`: `pipe_data_entry`, each followed by `bytes` raw bytes.
    PipesData,
    /// `fifo.img` (legacy): `fifo_entry` records.
    Fifo,
    /// `fifo-data.img`: like [`ImageKind::PipesData`], for FIFOs.
    FifoData,
    /// `ghost-file-ID.img`: a `ghost_file_entry`, then the contents (raw, or chunked).
    GhostFile,
    /// `tty-info.img`: `tty_info_entry` records.
    TtyInfo,
    /// `tty.img` (legacy): `tty_file_entry` records.
    TtyFiles,
    /// `tty-data.img`: `tty_data_entry` records.
    TtyData,
    /// `stats-dump.img`: one `stats_entry` (service image).
    StatsDump,
    /// `stats-restore.img`: one `stats_entry` (service image).
    StatsRestore,
    /// `creds-PID.img` (legacy): one `creds_entry`.
    Creds,
    /// `sigacts-PID.img` (legacy): `sa_entry` records.
    Sigact,
    /// `itimers-PID.img` (legacy): `itimer_entry` records.
    Itimers,
    /// `posix-timers-PID.img` (legacy): `posix_timer_entry` records.
    PosixTimers,
    /// `rlimit-PID.img` (legacy): `rlimit_entry` records.
    Rlimit,
    /// `memfd.img`: `memfd_inode_entry` records.
    MemfdInode,
    /// `timens-ID.img`: one `timens_entry`.
    Timens,
    /// `eventfd.img` (legacy): `eventfd_file_entry` records.
    EventfdFile,
    /// `eventpoll.img` (legacy): `eventpoll_file_entry` records.
    EventpollFile,
    /// `eventpoll-tfd.img`: `eventpoll_tfd_entry` records.
    EventpollTfd,
    /// `signalfd.img` (legacy): `signalfd_entry` records.
    Signalfd,
    /// `timerfd.img` (legacy): `timerfd_entry` records.
    Timerfd,
    /// `seccomp.img`: one `seccomp_entry` with every filter of the tree.
    Seccomp,
    /// `file-locks.img`: `file_lock_entry` records, every lock of the tree.
    FileLocks,
}

impl ImageKind {
    /// Every kind, in a fixed order.
    pub const ALL: &'static [ImageKind] = &[
        ImageKind::Inventory,
        ImageKind::Pstree,
        ImageKind::Core,
        ImageKind::Ids,
        ImageKind::Mm,
        ImageKind::Vmas,
        ImageKind::Pagemap,
        ImageKind::ShmemPagemap,
        ImageKind::Pages,
        ImageKind::Files,
        ImageKind::Fdinfo,
        ImageKind::Fs,
        ImageKind::RegFiles,
        ImageKind::Pipes,
        ImageKind::PipesData,
        ImageKind::Fifo,
        ImageKind::FifoData,
        ImageKind::GhostFile,
        ImageKind::TtyInfo,
        ImageKind::TtyFiles,
        ImageKind::TtyData,
        ImageKind::StatsDump,
        ImageKind::StatsRestore,
        ImageKind::Creds,
        ImageKind::Sigact,
        ImageKind::Itimers,
        ImageKind::PosixTimers,
        ImageKind::Rlimit,
        ImageKind::MemfdInode,
        ImageKind::Timens,
        ImageKind::EventfdFile,
        ImageKind::EventpollFile,
        ImageKind::EventpollTfd,
        ImageKind::Signalfd,
        ImageKind::Timerfd,
        ImageKind::Seccomp,
        ImageKind::FileLocks,
    ];

    /// The image's own magic (the second `u32`, or the only one for
    /// inventory). [`magic::RAW_IMAGE`] (0) for pages.
    pub fn magic(self) -> u32 {
        use ImageKind::*;
        match self {
            Inventory => magic::INVENTORY,
            Pstree => magic::PSTREE,
            Core => magic::CORE,
            Ids => magic::IDS,
            Mm => magic::MM,
            Vmas => magic::VMAS,
            Pagemap | ShmemPagemap => magic::PAGEMAP,
            Pages => magic::RAW_IMAGE,
            Files => magic::FILES,
            Fdinfo => magic::FDINFO,
            Fs => magic::FS,
            RegFiles => magic::REG_FILES,
            Pipes => magic::PIPES,
            PipesData => magic::PIPES_DATA,
            Fifo => magic::FIFO,
            FifoData => magic::FIFO_DATA,
            GhostFile => magic::GHOST_FILE,
            TtyInfo => magic::TTY_INFO,
            TtyFiles => magic::TTY_FILES,
            TtyData => magic::TTY_DATA,
            StatsDump | StatsRestore => magic::STATS,
            Creds => magic::CREDS,
            Sigact => magic::SIGACT,
            Itimers => magic::ITIMERS,
            PosixTimers => magic::POSIX_TIMERS,
            Rlimit => magic::RLIMIT,
            MemfdInode => magic::MEMFD_INODE,
            Timens => magic::TIMENS,
            EventfdFile => magic::EVENTFD_FILE,
            EventpollFile => magic::EVENTPOLL_FILE,
            EventpollTfd => magic::EVENTPOLL_TFD,
            Signalfd => magic::SIGNALFD,
            Timerfd => magic::TIMERFD,
            Seccomp => magic::SECCOMP,
            FileLocks => magic::FILE_LOCKS,
        }
    }

    /// The leading magic: [`magic::IMG_SERVICE`] for service images (stats),
    /// `None` for inventory and raw pages, [`magic::IMG_COMMON`] otherwise.
    pub fn common_magic(self) -> Option<u32> {
        match self {
            ImageKind::Inventory | ImageKind::Pages => None,
            ImageKind::StatsDump | ImageKind::StatsRestore => Some(magic::IMG_SERVICE),
            _ => Some(magic::IMG_COMMON),
        }
    }

    /// The image's CRIU name, as `crit show` prints it in `"magic"`
    /// (`"CORE"`, `"PIPES_DATA"`, `"STATS"`); `"PAGES"` for raw pages.
    pub fn name(self) -> &'static str {
        if self == ImageKind::Pages {
            return "PAGES";
        }
        magic::name_of(self.magic()).unwrap_or("UNKNOWN")
    }

    /// The kind with this image magic (the second `u32`, or inventory's
    /// only one). Where two kinds share a magic, the first is returned:
    /// PAGEMAP gives [`ImageKind::Pagemap`], STATS gives
    /// [`ImageKind::StatsDump`]. Raw images (magic 0) give `None`.
    pub fn from_magic(magic: u32) -> Option<Self> {
        if magic == magic::RAW_IMAGE {
            return None;
        }
        Self::ALL.iter().copied().find(|k| k.magic() == magic)
    }

    /// The full protobuf name of this image's entries (`"core_entry"`).
    /// For pagemaps, the name of the entries after the head; for ghost
    /// files, the head. `None` for raw pages.
    pub fn message_name(self) -> Option<&'static str> {
        use ImageKind::*;
        Some(match self {
            Inventory => "inventory_entry",
            Pstree => "pstree_entry",
            Core => "core_entry",
            Ids => "task_kobj_ids_entry",
            Mm => "mm_entry",
            Vmas => "vma_entry",
            Pagemap | ShmemPagemap => "pagemap_entry",
            Pages => return None,
            Files => "file_entry",
            Fdinfo => "fdinfo_entry",
            Fs => "fs_entry",
            RegFiles => "reg_file_entry",
            Pipes => "pipe_entry",
            PipesData | FifoData => "pipe_data_entry",
            Fifo => "fifo_entry",
            GhostFile => "ghost_file_entry",
            TtyInfo => "tty_info_entry",
            TtyFiles => "tty_file_entry",
            TtyData => "tty_data_entry",
            StatsDump | StatsRestore => "stats_entry",
            Creds => "creds_entry",
            Sigact => "sa_entry",
            Itimers => "itimer_entry",
            PosixTimers => "posix_timer_entry",
            Rlimit => "rlimit_entry",
            MemfdInode => "memfd_inode_entry",
            Timens => "timens_entry",
            EventfdFile => "eventfd_file_entry",
            EventpollFile => "eventpoll_file_entry",
            EventpollTfd => "eventpoll_tfd_entry",
            Signalfd => "signalfd_entry",
            Timerfd => "timerfd_entry",
            Seccomp => "seccomp_entry",
            FileLocks => "file_lock_entry",
        })
    }

    /// The file name CRIU gives this image; `id` is the pid or object id
    /// for per-task/per-object images and ignored by the others.
    /// Ghost files use hex ids (`ghost-file-1f.img`), as CRIU does.
    pub fn file_name(self, id: u64) -> String {
        use ImageKind::*;
        match self {
            Inventory => names::INVENTORY.to_string(),
            Pstree => names::PSTREE.to_string(),
            Core => format!("core-{id}.img"),
            Ids => format!("ids-{id}.img"),
            Mm => format!("mm-{id}.img"),
            Vmas => format!("vmas-{id}.img"),
            Pagemap => format!("pagemap-{id}.img"),
            ShmemPagemap => format!("pagemap-shmem-{id}.img"),
            Pages => format!("pages-{id}.img"),
            Files => names::FILES.to_string(),
            Fdinfo => format!("fdinfo-{id}.img"),
            Fs => format!("fs-{id}.img"),
            RegFiles => "reg-files.img".to_string(),
            Pipes => "pipes.img".to_string(),
            PipesData => names::PIPES_DATA.to_string(),
            Fifo => "fifo.img".to_string(),
            FifoData => names::FIFO_DATA.to_string(),
            GhostFile => format!("ghost-file-{id:x}.img"),
            TtyInfo => names::TTY_INFO.to_string(),
            TtyFiles => "tty.img".to_string(),
            TtyData => names::TTY_DATA.to_string(),
            StatsDump => names::STATS_DUMP.to_string(),
            StatsRestore => names::STATS_RESTORE.to_string(),
            Creds => format!("creds-{id}.img"),
            Sigact => format!("sigacts-{id}.img"),
            Itimers => format!("itimers-{id}.img"),
            PosixTimers => format!("posix-timers-{id}.img"),
            Rlimit => format!("rlimit-{id}.img"),
            MemfdInode => names::MEMFD.to_string(),
            Timens => format!("timens-{id}.img"),
            EventfdFile => "eventfd.img".to_string(),
            EventpollFile => "eventpoll.img".to_string(),
            EventpollTfd => "eventpoll-tfd.img".to_string(),
            Signalfd => "signalfd.img".to_string(),
            Timerfd => "timerfd.img".to_string(),
            Seccomp => names::SECCOMP.to_string(),
            FileLocks => names::FILE_LOCKS.to_string(),
        }
    }
}

impl std::fmt::Display for ImageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Image file names as CRIU names them.
pub mod names {
    /// `inventory.img`.
    pub const INVENTORY: &str = "inventory.img";
    /// `pstree.img`.
    pub const PSTREE: &str = "pstree.img";
    /// `files.img`.
    pub const FILES: &str = "files.img";
    /// `pipes-data.img`.
    pub const PIPES_DATA: &str = "pipes-data.img";
    /// `fifo-data.img`.
    pub const FIFO_DATA: &str = "fifo-data.img";
    /// `tty-info.img`.
    pub const TTY_INFO: &str = "tty-info.img";
    /// `tty-data.img`.
    pub const TTY_DATA: &str = "tty-data.img";
    /// `memfd.img`.
    pub const MEMFD: &str = "memfd.img";
    /// `stats-dump.img`.
    pub const STATS_DUMP: &str = "stats-dump.img";
    /// `stats-restore.img`.
    pub const STATS_RESTORE: &str = "stats-restore.img";
    /// `seccomp.img`.
    pub const SECCOMP: &str = "seccomp.img";
    /// `file-locks.img`.
    pub const FILE_LOCKS: &str = "file-locks.img";

    /// `core-{pid}.img`.
    pub fn core(pid: u32) -> String {
        format!("core-{pid}.img")
    }
    /// `ids-{pid}.img`.
    pub fn ids(pid: u32) -> String {
        format!("ids-{pid}.img")
    }
    /// `mm-{pid}.img`.
    pub fn mm(pid: u32) -> String {
        format!("mm-{pid}.img")
    }
    /// `pagemap-{id}.img` (CRIU uses the pid).
    pub fn pagemap(id: u64) -> String {
        format!("pagemap-{id}.img")
    }
    /// `pagemap-shmem-{shmid}.img`.
    pub fn shmem_pagemap(shmid: u64) -> String {
        format!("pagemap-shmem-{shmid}.img")
    }
    /// `pages-{id}.img` (the id is `pagemap_head.pages_id`).
    pub fn pages(id: u32) -> String {
        format!("pages-{id}.img")
    }
    /// `fdinfo-{files_id}.img`.
    pub fn fdinfo(files_id: u32) -> String {
        format!("fdinfo-{files_id}.img")
    }
    /// `fs-{pid}.img`.
    pub fn fs(pid: u32) -> String {
        format!("fs-{pid}.img")
    }
    /// `ghost-file-{id:x}.img` (hex, as CRIU).
    pub fn ghost_file(id: u32) -> String {
        format!("ghost-file-{id:x}.img")
    }
    /// `timens-{id}.img`.
    pub fn timens(id: u32) -> String {
        format!("timens-{id}.img")
    }
}

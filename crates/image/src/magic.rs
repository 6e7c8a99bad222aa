//! Magic numbers of CRIU images (criu/include/magic.h).
//!
//! Every image except `inventory.img` and the raw `pages-N.img` starts with
//! [`IMG_COMMON`] (or [`IMG_SERVICE`] for service images such as stats),
//! followed by the image's own magic. `inventory.img` starts with
//! [`INVENTORY`] alone. All are stored as little-endian `u32`.

/// Image format version stored in `inventory_entry.img_version`
/// (CRTOOLS_IMAGES_V1_1: images carry the common magic in their head).
pub const IMAGES_V1_1: u32 = 2;
/// Raw images (pages, tarballs...) carry no magic at all.
pub const RAW_IMAGE: u32 = 0;

/// First magic of every ordinary image (except inventory).
pub const IMG_COMMON: u32 = 0x5456_4319;
/// First magic of service images (stats, irmap-cache).
pub const IMG_SERVICE: u32 = 0x5510_5940;

/// inventory.img.
pub const INVENTORY: u32 = 0x5831_3116;
/// pstree.img.
pub const PSTREE: u32 = 0x5027_3030;
/// fdinfo-ID.img.
pub const FDINFO: u32 = 0x5621_3732;
/// pagemap-ID.img (also pagemap-shmem-ID.img).
pub const PAGEMAP: u32 = 0x5608_4025;
/// core-PID.img.
pub const CORE: u32 = 0x5505_3847;
/// ids-PID.img.
pub const IDS: u32 = 0x5443_2030;
/// vmas-PID.img (legacy).
pub const VMAS: u32 = 0x5412_3737;
/// pipes.img (legacy; pipes now live in files.img).
pub const PIPES: u32 = 0x5651_3555;
/// pipes-data.img.
pub const PIPES_DATA: u32 = 0x5645_3709;
/// fifo.img (legacy).
pub const FIFO: u32 = 0x5836_4939;
/// fifo-data.img.
pub const FIFO_DATA: u32 = 0x5933_3054;
/// sigacts-PID.img (legacy).
pub const SIGACT: u32 = 0x5534_4201;
/// unixsk.img.
pub const UNIXSK: u32 = 0x5437_3943;
/// inetsk.img.
pub const INETSK: u32 = 0x5644_3851;
/// packetsk.img.
pub const PACKETSK: u32 = 0x6045_4618;
/// itimers-PID.img (legacy).
pub const ITIMERS: u32 = 0x5746_4056;
/// posix-timers-PID.img (legacy).
pub const POSIX_TIMERS: u32 = 0x5260_3957;
/// sk-queues.img.
pub const SK_QUEUES: u32 = 0x5626_4026;
/// utsns-ID.img.
pub const UTSNS: u32 = 0x5447_3203;
/// creds-PID.img (legacy).
pub const CREDS: u32 = 0x5402_3547;
/// ipcns-var-ID.img.
pub const IPC_VAR: u32 = 0x5311_5007;
/// ipcns-shm-ID.img.
pub const IPCNS_SHM: u32 = 0x4628_3044;
/// ipcns-msg-ID.img.
pub const IPCNS_MSG: u32 = 0x5545_3737;
/// ipcns-sem-ID.img.
pub const IPCNS_SEM: u32 = 0x5957_3019;
/// reg-files.img (legacy; regular files now live in files.img).
pub const REG_FILES: u32 = 0x5036_3636;
/// ext-files.img.
pub const EXT_FILES: u32 = 0x5925_5641;
/// fs-PID.img.
pub const FS: u32 = 0x5140_3912;
/// mm-PID.img.
pub const MM: u32 = 0x5749_2820;
/// remap-fpath.img.
pub const REMAP_FPATH: u32 = 0x5913_3954;
/// ghost-file-ID.img.
pub const GHOST_FILE: u32 = 0x5258_3605;
/// tcp-stream-ID.img.
pub const TCP_STREAM: u32 = 0x5146_5506;
/// eventfd.img (legacy).
pub const EVENTFD_FILE: u32 = 0x4452_3722;
/// eventpoll.img (legacy).
pub const EVENTPOLL_FILE: u32 = 0x4502_3858;
/// eventpoll-tfd.img.
pub const EVENTPOLL_TFD: u32 = 0x4443_3746;
/// signalfd.img (legacy).
pub const SIGNALFD: u32 = 0x5732_3820;
/// inotify.img.
pub const INOTIFY_FILE: u32 = 0x4842_4431;
/// inotify-wd.img.
pub const INOTIFY_WD: u32 = 0x5456_2009;
/// mountpoints-ID.img.
pub const MNTS: u32 = 0x5556_3928;
/// netdev-ID.img.
pub const NETDEV: u32 = 0x5737_3951;
/// netns-ID.img.
pub const NETNS: u32 = 0x5593_3752;
/// tty.img (legacy; tty files now live in files.img).
pub const TTY_FILES: u32 = 0x5943_3025;
/// tty-info.img.
pub const TTY_INFO: u32 = 0x5945_3036;
/// tty-data.img.
pub const TTY_DATA: u32 = 0x5941_3026;
/// filelocks.img.
pub const FILE_LOCKS: u32 = 0x5432_3616;
/// rlimit-PID.img (legacy).
pub const RLIMIT: u32 = 0x5711_3925;
/// fanotify.img.
pub const FANOTIFY_FILE: u32 = 0x5509_6122;
/// fanotify-mark.img.
pub const FANOTIFY_MARK: u32 = 0x5650_6035;
/// signal-s-PID.img / signal-p-PID.img (legacy).
pub const SIGNAL: u32 = 0x5925_5647;
/// netlinksk.img.
pub const NETLINK_SK: u32 = 0x5800_5614;
/// ns-files.img.
pub const NS_FILES: u32 = 0x6139_4011;
/// tunfile.img.
pub const TUNFILE: u32 = 0x5714_3751;
/// cgroup.img.
pub const CGROUP: u32 = 0x5938_3330;
/// timerfd.img (legacy).
pub const TIMERFD: u32 = 0x5049_3712;
/// cpuinfo.img.
pub const CPUINFO: u32 = 0x6140_4013;
/// userns-ID.img.
pub const USERNS: u32 = 0x5547_4906;
/// seccomp.img.
pub const SECCOMP: u32 = 0x6441_3049;
/// binfmt-misc.img.
pub const BINFMT_MISC: u32 = 0x6734_3323;
/// autofs-ID.img.
pub const AUTOFS: u32 = 0x4935_3943;
/// files.img: the file table (file_entry).
pub const FILES: u32 = 0x5630_3138;
/// memfd.img: memfd inodes.
pub const MEMFD_INODE: u32 = 0x4845_3499;
/// timens-ID.img.
pub const TIMENS: u32 = 0x4311_4433;
/// pidns-ID.img.
pub const PIDNS: u32 = 0x6115_7326;
/// bpfmap-file.img.
pub const BPFMAP_FILE: u32 = 0x5750_6142;
/// bpfmap-data.img.
pub const BPFMAP_DATA: u32 = 0x6432_4033;
/// apparmor.img.
pub const APPARMOR: u32 = 0x5942_3047;
/// stats-dump.img / stats-restore.img (service image).
pub const STATS: u32 = 0x5709_3306;
/// irmap-cache.img (service image).
pub const IRMAP_CACHE: u32 = 0x5700_4059;

/// Every named magic with its CRIU name (as `crit` prints it), for lookups.
pub const ALL: &[(&str, u32)] = &[
    ("INVENTORY", INVENTORY),
    ("PSTREE", PSTREE),
    ("FDINFO", FDINFO),
    ("PAGEMAP", PAGEMAP),
    ("CORE", CORE),
    ("IDS", IDS),
    ("VMAS", VMAS),
    ("PIPES", PIPES),
    ("PIPES_DATA", PIPES_DATA),
    ("FIFO", FIFO),
    ("FIFO_DATA", FIFO_DATA),
    ("SIGACT", SIGACT),
    ("UNIXSK", UNIXSK),
    ("INETSK", INETSK),
    ("PACKETSK", PACKETSK),
    ("ITIMERS", ITIMERS),
    ("POSIX_TIMERS", POSIX_TIMERS),
    ("SK_QUEUES", SK_QUEUES),
    ("UTSNS", UTSNS),
    ("CREDS", CREDS),
    ("IPC_VAR", IPC_VAR),
    ("IPCNS_SHM", IPCNS_SHM),
    ("IPCNS_MSG", IPCNS_MSG),
    ("IPCNS_SEM", IPCNS_SEM),
    ("REG_FILES", REG_FILES),
    ("EXT_FILES", EXT_FILES),
    ("FS", FS),
    ("MM", MM),
    ("REMAP_FPATH", REMAP_FPATH),
    ("GHOST_FILE", GHOST_FILE),
    ("TCP_STREAM", TCP_STREAM),
    ("EVENTFD_FILE", EVENTFD_FILE),
    ("EVENTPOLL_FILE", EVENTPOLL_FILE),
    ("EVENTPOLL_TFD", EVENTPOLL_TFD),
    ("SIGNALFD", SIGNALFD),
    ("INOTIFY_FILE", INOTIFY_FILE),
    ("INOTIFY_WD", INOTIFY_WD),
    ("MNTS", MNTS),
    ("NETDEV", NETDEV),
    ("NETNS", NETNS),
    ("TTY_FILES", TTY_FILES),
    ("TTY_INFO", TTY_INFO),
    ("TTY_DATA", TTY_DATA),
    ("FILE_LOCKS", FILE_LOCKS),
    ("RLIMIT", RLIMIT),
    ("FANOTIFY_FILE", FANOTIFY_FILE),
    ("FANOTIFY_MARK", FANOTIFY_MARK),
    ("SIGNAL", SIGNAL),
    ("NETLINK_SK", NETLINK_SK),
    ("NS_FILES", NS_FILES),
    ("TUNFILE", TUNFILE),
    ("CGROUP", CGROUP),
    ("TIMERFD", TIMERFD),
    ("CPUINFO", CPUINFO),
    ("USERNS", USERNS),
    ("SECCOMP", SECCOMP),
    ("BINFMT_MISC", BINFMT_MISC),
    ("AUTOFS", AUTOFS),
    ("FILES", FILES),
    ("MEMFD_INODE", MEMFD_INODE),
    ("TIMENS", TIMENS),
    ("PIDNS", PIDNS),
    ("BPFMAP_FILE", BPFMAP_FILE),
    ("BPFMAP_DATA", BPFMAP_DATA),
    ("APPARMOR", APPARMOR),
    ("STATS", STATS),
    ("IRMAP_CACHE", IRMAP_CACHE),
];

/// The CRIU name of a magic number (`"CORE"` for [`CORE`]), if known.
pub fn name_of(magic: u32) -> Option<&'static str> {
    ALL.iter().find(|(_, m)| *m == magic).map(|(n, _)| *n)
}

//! Constants that give meaning to image fields (criu/include/image.h,
//! pagemap.h, pid.h): VMA status bits, pagemap entry flags, task states.

/// Page size of `pages-N.img` contents.
pub const PAGE_SIZE: usize = 4096;
/// Length of a task's `comm` (TASK_COMM_LEN).
pub const TASK_COMM_LEN: usize = 16;

/// `vma_entry.status`: the area is dumped and restored (the general case).
pub const VMA_AREA_REGULAR: u32 = 1 << 0;
/// `vma_entry.status`: a stack (mind the guard page).
pub const VMA_AREA_STACK: u32 = 1 << 1;
/// `vma_entry.status`: [vsyscall], never dumped.
pub const VMA_AREA_VSYSCALL: u32 = 1 << 2;
/// `vma_entry.status`: [vdso].
pub const VMA_AREA_VDSO: u32 = 1 << 3;
/// `vma_entry.status`: [heap] (informational).
pub const VMA_AREA_HEAP: u32 = 1 << 5;
/// `vma_entry.status`: private file mapping.
pub const VMA_FILE_PRIVATE: u32 = 1 << 6;
/// `vma_entry.status`: shared file mapping.
pub const VMA_FILE_SHARED: u32 = 1 << 7;
/// `vma_entry.status`: shared anonymous memory.
pub const VMA_ANON_SHARED: u32 = 1 << 8;
/// `vma_entry.status`: private anonymous memory.
pub const VMA_ANON_PRIVATE: u32 = 1 << 9;
/// `vma_entry.status`: SysV IPC shared memory.
pub const VMA_AREA_SYSVIPC: u32 = 1 << 10;
/// `vma_entry.status`: socket mapping (packet rings).
pub const VMA_AREA_SOCKET: u32 = 1 << 11;
/// `vma_entry.status`: [vvar] (and [vvar_vclock]).
pub const VMA_AREA_VVAR: u32 = 1 << 12;
/// `vma_entry.status`: AIO ring.
pub const VMA_AREA_AIORING: u32 = 1 << 13;
/// `vma_entry.status`: memfd-backed mapping.
pub const VMA_AREA_MEMFD: u32 = 1 << 14;
/// `vma_entry.status`: shadow stack.
pub const VMA_AREA_SHSTK: u32 = 1 << 15;
/// `vma_entry.status`: MADV_GUARD_INSTALL range (not a kernel VMA).
pub const VMA_AREA_GUARD: u32 = 1 << 16;
/// `vma_entry.status`: [uprobes].
pub const VMA_AREA_UPROBES: u32 = 1 << 17;
/// `vma_entry.status`: handled by a plugin.
pub const VMA_EXT_PLUGIN: u32 = 1 << 27;
/// `vma_entry.status`: internal to CRIU's restore.
pub const VMA_CLOSE: u32 = 1 << 28;
/// `vma_entry.status`: internal to CRIU's restore.
pub const VMA_NO_PROT_WRITE: u32 = 1 << 29;
/// `vma_entry.status`: internal to CRIU's restore.
pub const VMA_PREMMAPED: u32 = 1 << 30;
/// `vma_entry.status`: unsupported area; must never appear in an image.
pub const VMA_UNSUPP: u32 = 1 << 31;

/// `pagemap_entry.flags`: the pages are in the parent image (pre-dump).
pub const PE_PARENT: u32 = 1 << 0;
/// `pagemap_entry.flags`: the pages are restored lazily.
pub const PE_LAZY: u32 = 1 << 1;
/// `pagemap_entry.flags`: the pages are in this image's pages-N.img.
pub const PE_PRESENT: u32 = 1 << 2;

/// `task_core_entry.task_state`: a live task.
pub const TASK_ALIVE: u32 = 0x1;
/// `task_core_entry.task_state`: a dead task.
pub const TASK_DEAD: u32 = 0x2;
/// `task_core_entry.task_state`: a stopped task.
pub const TASK_STOPPED: u32 = 0x3;
/// `task_core_entry.task_state`: a restore helper.
pub const TASK_HELPER: u32 = 0x4;
/// `task_core_entry.task_state`: a thread.
pub const TASK_THREAD: u32 = 0x5;
/// `task_core_entry.task_state`: a zombie.
pub const TASK_ZOMBIE: u32 = 0x6;

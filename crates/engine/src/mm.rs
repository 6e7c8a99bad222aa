//! Memory: VMAs, their pages, and the mm fields (code/data/brk/stack/arg/env
//! bounds, auxv, exe file). Dump reads the layout from smaps, which pages
//! exist from pagemap, and their contents with process_vm_readv straight
//! into the page image; restore unmaps everything crust's child inherited,
//! moves the vdso into place, maps every VMA at its address, writes the pages
//! with process_vm_writev and sets the mm fields with PR_SET_MM_MAP.

use std::collections::HashMap;
use std::path::Path;

use crust_image::manifest::{FileSum, PIECE};
use crust_image::pb;
use crust_sys::mmap::{PageBuf, PageFile};
use crust_sys::procfs::{self, Stat, Vma, VmaPath};
use crust_sys::uffd::Uffd;
use crust_sys::vm::{self, RemoteRange};

use crate::error::{Context, Error, Result};
use crate::files::{DumpCtx, FileTable};
use crate::remote::{Call, Remote, SCRATCH_LEN};

/// Page size on x86_64.
pub const PAGE: u64 = 4096;

/// `VMA_AREA_REGULAR`: an area crust dumps.
pub const VMA_AREA_REGULAR: u32 = 1 << 0;
/// `VMA_AREA_STACK`.
pub const VMA_AREA_STACK: u32 = 1 << 1;
/// `VMA_AREA_VSYSCALL`.
pub const VMA_AREA_VSYSCALL: u32 = 1 << 2;
/// `VMA_AREA_VDSO`.
pub const VMA_AREA_VDSO: u32 = 1 << 3;
/// `VMA_AREA_HEAP`.
pub const VMA_AREA_HEAP: u32 = 1 << 5;
/// `VMA_FILE_PRIVATE`.
pub const VMA_FILE_PRIVATE: u32 = 1 << 6;
/// `VMA_FILE_SHARED`.
pub const VMA_FILE_SHARED: u32 = 1 << 7;
/// `VMA_ANON_SHARED`.
pub const VMA_ANON_SHARED: u32 = 1 << 8;
/// `VMA_ANON_PRIVATE`.
pub const VMA_ANON_PRIVATE: u32 = 1 << 9;
/// `VMA_AREA_VVAR` (CRIU's mark for [vvar]; crust also uses it for
/// [vvar_vclock]).
pub const VMA_AREA_VVAR: u32 = 1 << 12;

/// `PE_PRESENT` in a pagemap entry: the pages are in pages-N.img.
pub const PE_PRESENT: u32 = 1 << 2;

/// Pages a restore maps and checks at once (8 MiB). A whole number of the
/// manifest's pieces.
const WINDOW: u64 = 8 << 20;
const _: () = assert!(WINDOW.is_multiple_of(PIECE));
/// Pages a dump moves at once (2 MiB): each of the four buffers (two per
/// mover) stays in the CPU's caches while the writer copies it into the
/// page image and sums it. 100 x 8 MiB tree (crust-bench --scenario tree
/// --runs 3, runs interleaved): dump 0.60-0.67 s best with 8 MiB windows,
/// 0.49-0.52 s with 2 MiB in two rounds, 0.70 against 0.63-0.71 s in a
/// later, slower one; crust's peak RSS 40 -> 16 MiB.
const DUMP_WINDOW: u64 = 2 << 20;

/// madvise advice numbers crust records in `vma_entry.madv`, with the smaps
/// VmFlags code that shows each.
const MADVICE: &[(&str, i32)] = &[
    ("dc", libc::MADV_DONTFORK),
    ("hg", libc::MADV_HUGEPAGE),
    ("nh", libc::MADV_NOHUGEPAGE),
    ("dd", libc::MADV_DONTDUMP),
    ("wf", libc::MADV_WIPEONFORK),
    ("mg", libc::MADV_MERGEABLE),
];

/// The buffers pages travel through at dump, allocated and faulted in
/// before the freeze.
pub struct PageBuffers {
    bufs: Vec<PageBuf>,
    /// Bytes of each buffer.
    size: usize,
}

impl PageBuffers {
    /// Number of buffers in flight.
    const COUNT: usize = 2;

    /// Buffers for processes of up to `largest` bytes of pages each: a
    /// window at most, so a small dump does not fault in a large one.
    pub fn new(largest: u64) -> Result<Self> {
        let mut b = PageBuffers {
            bufs: Vec::new(),
            size: largest.clamp(PAGE, DUMP_WINDOW) as usize,
        };
        b.refill()?;
        Ok(b)
    }

    /// Allocate buffers lost on an error path again.
    fn refill(&mut self) -> Result<()> {
        while self.bufs.len() < Self::COUNT {
            self.bufs
                .push(PageBuf::new(self.size).ctx(|| "allocating page buffers".to_string())?);
        }
        Ok(())
    }
}

/// A run of consecutive pages to dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRun {
    /// First page's address.
    pub vaddr: u64,
    /// Number of pages.
    pub nr_pages: u64,
}

/// Which pages of a VMA hold data of the task's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PageRule {
    /// No pages are dumped (shared file mappings, vdso, vvar).
    None,
    /// Anonymous private memory: every present page but the zero page, and
    /// swapped pages.
    Anon,
    /// Private file mapping: only pages that differ from the file (anonymous
    /// copies made by a write), present or swapped.
    Cow,
}

/// The memory of a task as dumped, before its pages are read.
pub struct MmDump {
    /// The mm image entry (VMAs included).
    pub entry: pb::MmEntry,
    /// Pages to dump, in address order.
    pub runs: Vec<PageRun>,
    /// Readable VMAs as (start, end): pages outside them are read through
    /// /proc/PID/mem.
    unreadable: Vec<(u64, u64)>,
}

impl MmDump {
    /// The shared anonymous mappings: (shmem inode, start, end, pgoff).
    pub fn shmem_mappings(&self) -> Vec<(u64, u64, u64, u64)> {
        self.entry
            .vmas
            .iter()
            .filter(|v| v.status & VMA_ANON_SHARED != 0)
            .map(|v| (v.shmid, v.start, v.end, v.pgoff))
            .collect()
    }
}

/// Estimate of the bytes of pages a task's dump will hold: its anonymous
/// pages, resident or swapped, from the counters /proc/PID/status shows
/// (smaps_rollup, which walks every page table to sum the same, took
/// 130 us for a process of 8 MiB); taken before the freeze to size the
/// page image.
pub fn estimate_page_bytes(pid: i32) -> Result<u64> {
    let st = procfs::read_status(pid)?;
    Ok((st.rss_anon_kib.unwrap_or(0) + st.vm_swap_kib.unwrap_or(0)) * 1024)
}

fn prot_of(v: &Vma) -> u32 {
    let mut p = 0;
    if v.read {
        p |= libc::PROT_READ;
    }
    if v.write {
        p |= libc::PROT_WRITE;
    }
    if v.exec {
        p |= libc::PROT_EXEC;
    }
    p as u32
}

fn madv_of(v: &Vma) -> u64 {
    MADVICE
        .iter()
        .filter(|(code, _)| v.vm_flags.has(code))
        .fold(0, |m, (_, adv)| m | (1u64 << adv))
}

/// Classify one VMA: its image entry and which of its pages to dump.
fn classify(
    pid: i32,
    v: &Vma,
    files: &mut FileTable,
    ctx: &mut DumpCtx,
) -> Result<(pb::VmaEntry, PageRule)> {
    let unsupported = |what: &str| Error::Unsupported {
        pid,
        what: format!("{what} at {:#x}-{:#x} (not supported yet)", v.start, v.end),
    };
    if v.vm_flags.has("lo") {
        return Err(unsupported("mlocked memory"));
    }
    let mut e = pb::VmaEntry {
        start: v.start,
        end: v.end,
        pgoff: v.offset,
        shmid: 0,
        prot: prot_of(v),
        flags: if v.shared {
            libc::MAP_SHARED as u32
        } else {
            libc::MAP_PRIVATE as u32
        },
        status: VMA_AREA_REGULAR,
        fd: -1,
        madv: Some(madv_of(v)),
        fdflags: None,
        crust_memfd: None,
    };
    let anon_flags = e.flags | libc::MAP_ANONYMOUS as u32;
    let rule = match &v.path {
        VmaPath::Vdso => {
            e.status |= VMA_AREA_VDSO;
            e.flags = anon_flags;
            PageRule::None
        }
        VmaPath::Vvar | VmaPath::VvarVclock => {
            e.status |= VMA_AREA_VVAR;
            e.flags = anon_flags;
            PageRule::None
        }
        VmaPath::Vsyscall => {
            e.status = VMA_AREA_VSYSCALL;
            e.flags = anon_flags;
            PageRule::None
        }
        VmaPath::File { path, deleted } if *deleted && v.shared && path == "/dev/zero" => {
            // MAP_SHARED | MAP_ANONYMOUS: a shmem object, dumped once by
            // the shmem module however many processes map it.
            e.status |= VMA_ANON_SHARED;
            e.flags |= libc::MAP_ANONYMOUS as u32;
            e.shmid = v.inode;
            PageRule::None
        }
        VmaPath::File { path, deleted } if *deleted && v.shared && path.starts_with("/memfd:") => {
            // A shared memfd mapping: a shmem object like shared anonymous
            // memory, created again as a memfd of the same name.
            e.status |= VMA_ANON_SHARED;
            e.shmid = v.inode;
            e.crust_memfd = Some(path.trim_start_matches("/memfd:").to_string());
            PageRule::None
        }
        VmaPath::File { path, deleted } if crate::aio::is_ring(path, *deleted, v.shared) => {
            e.status |= crate::aio::VMA_AREA_AIORING;
            e.flags |= libc::MAP_ANONYMOUS as u32;
            PageRule::None
        }
        VmaPath::File { path, deleted } => {
            if path.starts_with("/memfd:") {
                return Err(unsupported("private memfd memory"));
            }
            let write = v.vm_flags.has("mw") && v.shared;
            let flags = if write { libc::O_RDWR } else { libc::O_RDONLY } as u32;
            let id = if *deleted {
                // Unlinked after it was mapped: kept as a ghost file.
                files.add_deleted_mapping(pid, v.start, v.end, write, ctx)?
            } else {
                files.add_path(pid, path, flags, 0)?
            };
            e.shmid = id as u64;
            if v.shared {
                e.status |= VMA_FILE_SHARED;
                PageRule::None
            } else {
                e.status |= VMA_FILE_PRIVATE;
                PageRule::Cow
            }
        }
        VmaPath::Anonymous | VmaPath::Heap | VmaPath::Stack => {
            if v.shared {
                return Err(unsupported("shared anonymous memory"));
            }
            e.status |= VMA_ANON_PRIVATE;
            e.flags = anon_flags;
            if v.path == VmaPath::Heap {
                e.status |= VMA_AREA_HEAP;
            }
            if v.path == VmaPath::Stack {
                e.status |= VMA_AREA_STACK;
            }
            if v.vm_flags.has("gd") {
                e.flags |= libc::MAP_GROWSDOWN as u32;
            }
            PageRule::Anon
        }
        VmaPath::Other(name) => {
            if name.starts_with("[anon:") && !v.shared {
                e.status |= VMA_ANON_PRIVATE;
                e.flags = anon_flags;
                PageRule::Anon
            } else {
                return Err(unsupported(&format!("the mapping {name}")));
            }
        }
    };
    Ok((e, rule))
}

impl PageRule {
    /// The PAGEMAP_SCAN categories of the pages this rule keeps: at least
    /// one of the first, none of the second.
    fn scan_categories(self) -> Option<(u64, u64)> {
        let there = procfs::PAGE_IS_PRESENT | procfs::PAGE_IS_SWAPPED;
        match self {
            PageRule::None => None,
            PageRule::Anon => Some((there, procfs::PAGE_IS_PFNZERO)),
            PageRule::Cow => Some((there, procfs::PAGE_IS_FILE)),
        }
    }
}

/// Collect the memory layout and the pages to dump of a frozen task whose
/// mappings, from /proc/PID/smaps, are `vmas`.
pub fn collect(
    pid: i32,
    vmas: Vec<Vma>,
    stat: &Stat,
    brk: u64,
    files: &mut FileTable,
    ctx: &mut DumpCtx,
) -> Result<MmDump> {
    let pagemap = procfs::Pagemap::open(pid)?;
    let mut entries = Vec::with_capacity(vmas.len());
    let mut runs: Vec<PageRun> = Vec::new();
    let mut unreadable = Vec::new();
    let mut aios = Vec::new();
    for v in &vmas {
        let (e, rule) = classify(pid, v, files, ctx)?;
        if e.status & crate::aio::VMA_AREA_AIORING != 0 {
            aios.push(crate::aio::dump(pid, v.start, v.end)?);
        }
        entries.push(e);
        let Some((any_of, none_of)) = rule.scan_categories() else {
            continue;
        };
        if !v.read {
            unreadable.push((v.start, v.end));
        }
        // Ranges within one VMA: runs never cross a VMA's start.
        runs.extend(
            pagemap
                .scan(v.start, v.end, any_of, none_of)?
                .into_iter()
                .map(|(s, e)| PageRun {
                    vaddr: s,
                    nr_pages: (e - s) / PAGE,
                }),
        );
    }
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ctx(|| format!("reading /proc/{pid}/exe"))?;
    let exe_file_id = files.add_path(pid, &exe.to_string_lossy(), libc::O_RDONLY as u32, 0)?;
    let mut auxv: Vec<u64> = procfs::read_auxv(pid)?
        .into_iter()
        .flat_map(|(k, v)| [k, v])
        .collect();
    auxv.extend([0, 0]);
    let entry = pb::MmEntry {
        mm_start_code: stat.start_code,
        mm_end_code: stat.end_code,
        mm_start_data: stat.start_data,
        mm_end_data: stat.end_data,
        mm_start_stack: stat.startstack,
        mm_start_brk: stat.start_brk,
        mm_brk: brk,
        mm_arg_start: stat.arg_start,
        mm_arg_end: stat.arg_end,
        mm_env_start: stat.env_start,
        mm_env_end: stat.env_end,
        exe_file_id,
        mm_saved_auxv: auxv,
        vmas: entries,
        aios,
        ..Default::default()
    };
    Ok(MmDump {
        entry,
        runs,
        unreadable,
    })
}

impl MmDump {
    /// Number of pages to dump.
    pub fn nr_pages(&self) -> u64 {
        self.runs.iter().map(|r| r.nr_pages).sum()
    }

    /// The pagemap entries describing the runs.
    pub fn pagemap_entries(&self) -> Vec<pb::PagemapEntry> {
        self.runs
            .iter()
            .map(|r| pb::PagemapEntry {
                vaddr: r.vaddr,
                nr_pages: r.nr_pages as u32,
                in_parent: None,
                flags: Some(PE_PRESENT),
            })
            .collect()
    }

    /// Copy the pages of the frozen task into `out`, which was sized
    /// (allocated) before the freeze: process_vm_readv into one of two
    /// buffers while a second thread writes the other one to the file, so
    /// both copies overlap. (Measured here: faster than copying straight
    /// into mapped windows of the file, whose page-table setup costs more
    /// than the second copy.)
    pub fn read_pages(
        &self,
        pid: i32,
        out: &PageFile,
        path: &Path,
        bufs: &mut PageBuffers,
    ) -> Result<Option<crust_image::manifest::FileSum>> {
        use std::sync::mpsc::sync_channel;
        let ranges = split_runs(&self.runs, DUMP_WINDOW);
        let (full_tx, full_rx) = sync_channel::<(u64, PageBuf, usize)>(PageBuffers::COUNT);
        let (empty_tx, empty_rx) = sync_channel::<PageBuf>(PageBuffers::COUNT);
        for b in bufs.bufs.drain(..) {
            empty_tx.send(b).expect("channel has room");
        }
        std::thread::scope(|s| {
            let writer = s.spawn(move || -> Result<Option<crust_image::manifest::FileSum>> {
                // The checksum for the manifest, computed as the pages go
                // out, in file order (None if they ever came out of order).
                let mut sum = Some(crust_image::manifest::Checksum::new());
                for (off, buf, len) in full_rx {
                    out.write_at(off, &buf[..len])
                        .ctx(|| format!("writing {}", path.display()))?;
                    sum = sum.filter(|c| c.size() == off).map(|mut c| {
                        c.update(&buf[..len]);
                        c
                    });
                    // The reader may have stopped early; then nobody needs it.
                    let _ = empty_tx.send(buf);
                }
                Ok(sum.map(|c| c.finish()))
            });
            let read = (|| -> Result<()> {
                for (off, chunk) in windows(&ranges, DUMP_WINDOW) {
                    let len: usize = chunk.iter().map(|r| r.len).sum();
                    let Ok(mut buf) = empty_rx.recv() else {
                        break; // the writer failed; its error is reported below
                    };
                    // More than the estimate before the freeze: a window.
                    if buf.len() < len {
                        buf = PageBuf::new(DUMP_WINDOW as usize)
                            .ctx(|| "allocating page buffers".to_string())?;
                    }
                    self.read_chunk(pid, chunk, &mut buf[..len])?;
                    if full_tx.send((off, buf, len)).is_err() {
                        break;
                    }
                }
                Ok(())
            })();
            drop(full_tx);
            let written = writer.join().expect("page writer thread panicked");
            // Take the buffers back for the next process.
            bufs.bufs.extend(empty_rx.try_iter());
            let refilled = bufs.refill();
            read.and(written).and_then(|sum| refilled.map(|()| sum))
        })
    }

    fn read_chunk(&self, pid: i32, chunk: &[RemoteRange], buf: &mut [u8]) -> Result<()> {
        if self.unreadable.is_empty() {
            return vm::read_ranges(pid, chunk, buf)
                .ctx(|| format!("reading the memory of pid {pid}"));
        }
        let mut off = 0;
        for r in chunk {
            let dst = &mut buf[off..off + r.len];
            let hidden = self
                .unreadable
                .iter()
                .any(|&(s, e)| r.addr >= s && r.addr < e);
            if hidden {
                vm::read_proc_mem(pid, r.addr, dst)
            } else {
                vm::read_ranges(pid, std::slice::from_ref(r), dst)
            }
            .ctx(|| format!("reading the memory of pid {pid} at {:#x}", r.addr))?;
            off += r.len;
        }
        Ok(())
    }
}

/// Runs as remote ranges, split so that none crosses a window boundary of
/// the page image.
fn split_runs(runs: &[PageRun], span: u64) -> Vec<RemoteRange> {
    let mut out = Vec::with_capacity(runs.len());
    let mut file_off = 0u64;
    for r in runs {
        let mut addr = r.vaddr;
        let mut left = r.nr_pages * PAGE;
        while left > 0 {
            let room = span - file_off % span;
            let n = left.min(room);
            out.push(RemoteRange {
                addr,
                len: n as usize,
            });
            addr += n;
            left -= n;
            file_off += n;
        }
    }
    out
}

/// Group ranges (already split at window boundaries) into windows: each
/// item is the file offset of the window and its ranges.
fn windows(ranges: &[RemoteRange], span: u64) -> Vec<(u64, &[RemoteRange])> {
    let mut out = Vec::new();
    let mut start = 0usize;
    let mut off = 0u64;
    let mut win_off = 0u64;
    for (i, r) in ranges.iter().enumerate() {
        if off > win_off && off.is_multiple_of(span) {
            out.push((win_off, &ranges[start..i]));
            start = i;
            win_off = off;
        }
        off += r.len as u64;
    }
    if start < ranges.len() {
        out.push((win_off, &ranges[start..]));
    }
    out
}

// ---------------------------------------------------------------------------
// Restore.

/// Where a restored task's files come from: reg file entries by id.
pub type FileIndex = HashMap<u32, pb::RegFileEntry>;

/// The vdso area, vsyscall and AIO rings (made by the kernel, not mapped).
fn is_special(v: &pb::VmaEntry) -> bool {
    v.status & (VMA_AREA_VDSO | VMA_AREA_VVAR | VMA_AREA_VSYSCALL | crate::aio::VMA_AREA_AIORING)
        != 0
}

/// Whether VMA `v` may be premapped by its process before it forks, for
/// its children to inherit: plain private anonymous memory with pages.
fn inheritable(v: &pb::VmaEntry) -> bool {
    let no_fork = (1u64 << libc::MADV_DONTFORK) | (1u64 << libc::MADV_WIPEONFORK);
    v.status & VMA_ANON_PRIVATE != 0
        && !is_special(v)
        && v.flags & libc::MAP_GROWSDOWN as u32 == 0
        && v.madv.unwrap_or(0) & no_fork == 0
}

/// The private anonymous VMAs ([start, end)) each process premaps before
/// forking, so that its children inherit them copy-on-write as before the
/// dump: those with pages that the process's fork parent or one of its
/// children has at the same place, with mostly the same contents (a sample
/// of pages is compared: a VMA at the same place with other contents, such
/// as memory each process mapped for itself after the fork, is restored
/// the usual way).
pub fn cow_plan<'a>(procs: impl IntoIterator<Item = CowProc<'a>>) -> HashMap<u32, Vec<(u64, u64)>> {
    let ranges = |mm: &pb::MmEntry, pagemap: &[pb::PagemapEntry]| -> Vec<(u64, u64)> {
        let has = vmas_with_pages(mm, pagemap);
        mm.vmas
            .iter()
            .zip(has)
            .filter(|(v, h)| *h && inheritable(v))
            .map(|(v, _)| (v.start, v.end))
            .collect()
    };
    let of: HashMap<u32, (CowProc, Vec<(u64, u64)>)> = procs
        .into_iter()
        .map(|p| (p.pid, (p, ranges(p.mm, p.pagemap))))
        .collect();
    // Ranges a child shares with its fork parent, mostly alike.
    let mut shared: HashMap<u32, Vec<(u64, u64)>> = HashMap::new();
    for (&pid, (me, mine)) in &of {
        let Some((parent, theirs)) = of.get(&me.parent) else {
            continue;
        };
        for &r in mine.iter().filter(|r| theirs.contains(r)) {
            if mostly_alike(r, me, parent) {
                shared.entry(pid).or_default().push(r);
                shared.entry(me.parent).or_default().push(r);
            }
        }
    }
    for v in shared.values_mut() {
        v.sort_unstable();
        v.dedup();
        v.truncate(crate::tree::MAX_PREMAPPED);
    }
    shared
}

/// A process of a restore, as [`cow_plan`] sees it.
#[derive(Clone, Copy)]
pub struct CowProc<'a> {
    /// Its pid.
    pub pid: u32,
    /// The pid that forks it (0: none of the tree).
    pub parent: u32,
    /// Its memory.
    pub mm: &'a pb::MmEntry,
    /// Its pagemap.
    pub pagemap: &'a [pb::PagemapEntry],
    /// Its page image.
    pub pages: &'a PageFile,
}

/// Pages compared per range by [`mostly_alike`].
const COW_SAMPLE: u64 = 16;

/// Whether range `r` holds mostly the same pages in two processes (each
/// given by its pagemap and page image): up to [`COW_SAMPLE`] pages spread
/// over it are compared; more than half must be alike (a page neither has
/// counts as alike).
fn mostly_alike((start, end): (u64, u64), a: &CowProc, b: &CowProc) -> bool {
    let pages = (end - start) / PAGE;
    let step = pages.div_ceil(COW_SAMPLE).max(1);
    let read = |p: &CowProc, addr: u64| -> Option<Vec<u8>> {
        let off = file_offset(p.pagemap, addr)?;
        let mut buf = vec![0u8; PAGE as usize];
        p.pages.read_at(off, &mut buf).ok()?;
        Some(buf)
    };
    let samples = pages.div_ceil(step);
    let (mut alike, mut differ) = (0, 0);
    for i in 0..samples {
        let addr = start + i * step * PAGE;
        if read(a, addr) == read(b, addr) {
            alike += 1;
        } else {
            differ += 1;
        }
        // Decided either way.
        if alike * 2 > samples || differ * 2 >= samples {
            break;
        }
    }
    alike * 2 > samples
}

/// Offset in the page image of the page at `addr`, if the pagemap has it.
fn file_offset(pagemap: &[pb::PagemapEntry], addr: u64) -> Option<u64> {
    let mut off = 0u64;
    for p in pagemap {
        let len = p.nr_pages as u64 * PAGE;
        if (p.vaddr..p.vaddr + len).contains(&addr) {
            return Some(off + (addr - p.vaddr));
        }
        off += len;
    }
    None
}

/// In the forked copy of crust that becomes a process: premap `ranges`
/// (from [`cow_plan`]) with the process's pages, writing only those that
/// differ from what it inherited, and dropping inherited pages it does not
/// have; premapped ranges inherited but not its own are unmapped. A range
/// crust's own code occupies here is left to the normal restore.
pub fn premap_own(
    ranges: &[(u64, u64)],
    pagemap: &[pb::PagemapEntry],
    pages: &PageFile,
    pages_name: &str,
) -> Result<()> {
    use crust_sys::premap;
    let io = |what: String| {
        move |e: std::io::Error| Error::Sys {
            what: what.clone(),
            err: e,
        }
    };
    premap::release_except(ranges).map_err(io("unmapping premapped memory".into()))?;
    let inherited = premap::premapped();
    let mut off = 0u64;
    let mut runs = Vec::new(); // (vaddr, len, file offset)
    for p in pagemap {
        let len = p.nr_pages as u64 * PAGE;
        runs.push((p.vaddr, len, off));
        off += len;
    }
    for &(start, end) in ranges {
        let had = inherited.contains(&(start, end));
        if !premap::premap(start, end).map_err(io(format!("premapping {start:#x}-{end:#x}")))? {
            continue;
        }
        let mut at = start;
        for &(vaddr, len, foff) in runs.iter().filter(|r| r.0 < end && r.0 + r.1 > start) {
            let (s, e) = (vaddr.max(start), (vaddr + len).min(end));
            if had && s > at {
                premap::drop_pages(at, (s - at) as usize)
                    .map_err(io(format!("dropping pages at {at:#x}")))?;
            }
            let mut done = s;
            while done < e {
                let n = (e - done).min(WINDOW);
                pages
                    .read_window(foff + (done - vaddr), n as usize, |buf| {
                        premap::fill(done, buf)
                    })
                    .ctx(|| format!("mapping {pages_name}"))?
                    .map_err(io(format!("filling premapped memory at {done:#x}")))?;
                done += n;
            }
            at = e;
        }
        if had && end > at {
            premap::drop_pages(at, (end - at) as usize)
                .map_err(io(format!("dropping pages at {at:#x}")))?;
        }
    }
    Ok(())
}

/// Lowest address a task can map (the usual vm.mmap_min_addr).
const MMAP_FLOOR: u64 = 0x10000;
/// End of the x86_64 user address space (4-level paging).
const TASK_TOP: u64 = 0x7fff_ffff_f000;

/// Unmap every mapping the restored child inherited from crust except the
/// vdso area, the scratch area (which must be mapped) and the `keep`
/// ranges (its premapped memory), then move the vdso area to its dumped
/// place: one batch each. `current` is the process's mappings now.
pub fn clear_and_move_vdso(
    r: &mut Remote,
    mm: &pb::MmEntry,
    file: &str,
    keep: &[(u64, u64)],
    current: &[Vma],
) -> Result<()> {
    let pid = r.pid();
    let now: Vec<&Vma> = current
        .iter()
        .filter(|v| matches!(v.path, VmaPath::Vdso | VmaPath::Vvar | VmaPath::VvarVclock))
        .collect();
    let contiguous = now.windows(2).all(|w| w[0].end == w[1].start);
    if now.is_empty() || !contiguous {
        return Err(Error::Kernel(format!(
            "a contiguous [vvar]..[vdso] area in pid {pid}"
        )));
    }
    // Everything below and above the vdso area goes but the scratch area
    // and premapped ranges, in one batch.
    let (lo, hi) = (now[0].start, now.last().unwrap().end);
    let scratch = r.scratch();
    let mut keep: Vec<(u64, u64)> = keep
        .iter()
        .copied()
        .chain([(scratch, scratch + SCRATCH_LEN as u64)])
        .collect();
    keep.sort_unstable();
    let mut gaps = Vec::new();
    for (start, end) in [(MMAP_FLOOR, lo), (hi, TASK_TOP)] {
        let mut at = start;
        for &(ks, ke) in keep.iter().filter(|k| k.0 < end && k.1 > start) {
            gaps.push((at, ks.max(start)));
            at = ke.min(end);
        }
        gaps.push((at, end));
    }
    let unmaps: Vec<Call> = gaps
        .into_iter()
        .filter(|(start, end)| end > start)
        .map(|(start, end)| Call {
            what: format!("munmap of the inherited mappings at {start:#x}-{end:#x}"),
            nr: libc::SYS_munmap,
            args: [start, end - start, 0, 0, 0, 0],
        })
        .collect();
    r.batch(&unmaps)?;
    let want: Vec<&pb::VmaEntry> = mm
        .vmas
        .iter()
        .filter(|v| v.status & (VMA_AREA_VDSO | VMA_AREA_VVAR) != 0)
        .collect();
    let sizes_now: Vec<u64> = now.iter().map(|v| v.end - v.start).collect();
    let sizes_want: Vec<u64> = want.iter().map(|v| v.end - v.start).collect();
    if sizes_now != sizes_want {
        return Err(Error::BadImage {
            file: file.to_string(),
            what: format!(
                "the dumped vdso area {sizes_want:x?} differs from this kernel's {sizes_now:x?}; restoring on another kernel is not supported yet"
            ),
        });
    }
    if now.iter().zip(&want).all(|(n, w)| n.start == w.start) {
        return Ok(());
    }
    let moves: Vec<(u64, u64, u64)> = now
        .iter()
        .zip(&want)
        .map(|(n, w)| (n.start, n.end - n.start, w.start))
        .collect();
    let span = hi - lo;
    let (new_lo, new_hi) = (want[0].start, want[0].start + span);
    // The steps (from, len, to): straight there when the places do not
    // overlap; else by a place where neither the old nor the new one is,
    // so that no step overlaps another.
    let steps: Vec<(u64, u64, u64)> = if new_hi <= lo || new_lo >= hi {
        moves
    } else {
        let park = if lo.min(new_lo) > span + (1 << 30) {
            lo.min(new_lo) - span - (1 << 28)
        } else {
            hi.max(new_hi) + (1 << 28)
        };
        let there = moves
            .iter()
            .map(|&(old, len, _)| (old, len, park + (old - lo)));
        let back = moves
            .iter()
            .map(|&(old, len, new)| (park + (old - lo), len, new));
        there.chain(back).collect()
    };
    let calls: Vec<Call> = steps
        .iter()
        .map(|&(old, len, new)| Call {
            what: format!("mremap of the vdso area {old:#x} to {new:#x}"),
            nr: libc::SYS_mremap,
            args: [
                old,
                len,
                len,
                (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64,
                new,
                0,
            ],
        })
        .collect();
    for (&(old, len, new), got) in steps.iter().zip(r.batch(&calls)?) {
        if got != new {
            return Err(Error::Restore {
                pid: r.pid(),
                what: format!("mremap moved {old:#x} to {got:#x}, not {new:#x}"),
            });
        }
        r.moved(old, len, new);
    }
    Ok(())
}

/// The file ids of the files `mm` maps, once per mapping.
pub fn mapped_file_ids(mm: &pb::MmEntry) -> impl Iterator<Item = u32> + '_ {
    mm.vmas
        .iter()
        .filter(|v| v.status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED) != 0)
        .map(|v| v.shmid as u32)
}

/// A free address range for the scratch area in the dumped layout and in
/// the process as it is now (its mappings `current`, crust's fork), so
/// that it can be mapped first and outlive the clearing of the inherited
/// mappings.
pub fn scratch_gap(mm: &pb::MmEntry, current: &[Vma]) -> u64 {
    let mut cand: u64 = 16 << 20;
    let mut vmas: Vec<(u64, u64)> = mm.vmas.iter().map(|v| (v.start, v.end)).collect();
    vmas.extend(current.iter().map(|v| (v.start, v.end)));
    vmas.sort_unstable();
    for (s, e) in vmas {
        if cand + SCRATCH_LEN as u64 <= s {
            break;
        }
        cand = cand.max(e);
    }
    cand
}

/// The files restored processes map (and their exe files), opened once by
/// crust before the tree is forked: each process inherits them and keeps
/// its own right after its report and hold fds, so that mapping them takes
/// no remote open (nor close: one close_range at the end).
pub struct MappedFiles {
    fds: HashMap<(u32, u32), std::os::fd::OwnedFd>,
    lists: HashMap<u32, Vec<(u32, u32)>>,
}

/// A restored process's mapped files: (file id, access mode) to its fd.
pub type MapFds = HashMap<(u32, u32), u64>;

impl MappedFiles {
    /// Open the files `procs` (pid, memory) map, each as its process could
    /// (`paths`). One that cannot be opened here is left to the task (which
    /// reports the error then), unless it was opened as the task: then its
    /// error is the restore's.
    pub fn open<'a>(
        procs: impl IntoIterator<Item = (u32, &'a pb::MmEntry)>,
        files: &FileIndex,
        paths: &crate::creds::PathIdentities,
    ) -> Result<Self> {
        let mut fds = HashMap::new();
        let mut lists = HashMap::new();
        for (pid, mm) in procs {
            let acting = paths.act_for_pid(pid)?;
            let mut refused = None;
            let mut want: Vec<(u32, u32)> = mapped_file_ids(mm)
                .filter_map(|id| Some((id, files.get(&id)?.flags & libc::O_ACCMODE as u32)))
                .chain(std::iter::once((mm.exe_file_id, libc::O_RDONLY as u32)))
                .collect();
            want.sort_unstable();
            want.dedup();
            want.retain(|key @ &(id, mode)| {
                if fds.contains_key(key) {
                    return true;
                }
                let Some(rf) = files.get(&id) else {
                    return false;
                };
                let f = std::fs::OpenOptions::new()
                    .read(mode != libc::O_WRONLY as u32)
                    .write(mode != libc::O_RDONLY as u32)
                    .open(&rf.name);
                match f {
                    Ok(f) => {
                        fds.insert(*key, f.into());
                        true
                    }
                    Err(err) => {
                        if acting.is_some() && refused.is_none() {
                            refused = Some(Error::Sys {
                                what: format!(
                                    "opening {}, which pid {pid} maps{}",
                                    rf.name,
                                    crate::creds::AsTask::note(&acting)
                                ),
                                err,
                            });
                        }
                        false
                    }
                }
            });
            if let Some(e) = refused {
                return Err(e);
            }
            lists.insert(pid, want);
        }
        Ok(MappedFiles { fds, lists })
    }

    /// In the forked copy of crust that becomes `pid`: duplicates of the
    /// files it maps, in the order [`map_fds`] numbers them.
    pub fn dup_for(&self, pid: u32) -> Result<Vec<std::os::fd::OwnedFd>> {
        self.lists
            .get(&pid)
            .into_iter()
            .flatten()
            .map(|k| {
                self.fds[k]
                    .try_clone()
                    .ctx(|| format!("dup of mapped file id {}", k.0))
            })
            .collect()
    }

    /// Once the tree exists: which files each process got (crust's copies
    /// are closed).
    pub fn numbers(self) -> HashMap<u32, Vec<(u32, u32)>> {
        self.lists
    }
}

/// Where a process that reported `hold_fd` has the files of `list` (they
/// follow its hold fd).
pub fn map_fds(list: &[(u32, u32)], hold_fd: i32) -> MapFds {
    list.iter()
        .enumerate()
        .map(|(i, &k)| (k, (hold_fd + 1 + i as i32) as u64))
        .collect()
}

/// A restored process whose VMAs are mapped and whose pages are still to
/// be written: [`Fill::run`] writes them from any thread (it needs no
/// ptrace, so the tracer goes on with the next process meanwhile), then
/// [`protect`] gives each VMA its protection and advice.
pub struct Fill<'a> {
    pid: i32,
    pagemap: &'a [pb::PagemapEntry],
    pages: &'a PageFile,
    pages_name: &'a str,
    /// The task's userfaultfd and the ranges registered with it.
    uffd: Option<(Uffd, Vec<(u64, u64)>)>,
    /// Ranges the task premapped and filled itself: not written again.
    premapped: Vec<(u64, u64)>,
    /// The manifest's sums of the page image and its path, when its
    /// pieces are checked here, each before any of its bytes is written.
    check: Option<(FileSum, String)>,
}

/// Below this many bytes of anonymous pages, writing them costs less than
/// setting up a userfaultfd (two remote syscalls).
const UFFD_MIN: u64 = 1 << 20;

/// Map every dumped VMA at its address, writable where pages go; the pages
/// are left to the returned [`Fill`], with which VMAs receive them (for
/// [`protect`]). The scratch area must be mapped.
#[allow(clippy::too_many_arguments)]
pub fn map_vmas<'a>(
    r: &Remote,
    inner_pid: i32,
    mm: &pb::MmEntry,
    files: &FileIndex,
    pagemap: &'a [pb::PagemapEntry],
    pages: &'a PageFile,
    pages_name: &'a str,
    shmem: &mut crate::shmem::Restorer,
    premapped: &[(u64, u64)],
    prefds: &MapFds,
) -> Result<(Vec<bool>, Fill<'a>)> {
    let pid = r.pid();
    let has_pages = vmas_with_pages(mm, pagemap);
    let is_premapped = |v: &pb::VmaEntry| premapped.contains(&(v.start, v.end));
    let (runs, extents) = collapse_plan(mm, pagemap);
    // Anonymous private VMAs with pages, outside collapsed runs (whose huge
    // pages are made before the fill), go through a userfaultfd. Every VMA
    // with pages is mapped writable until [`protect`], as it was once (which
    // the kernel remembers: VM_ACCOUNT, and adjacent VMAs that stay apart).
    let anon = |i: usize, v: &pb::VmaEntry| {
        has_pages[i]
            && !is_premapped(v)
            && v.status & VMA_ANON_PRIVATE != 0
            && !is_special(v)
            && !runs.iter().any(|&(s, e)| s < v.end && e > v.start)
    };
    let anon_bytes: u64 = pagemap
        .iter()
        .filter(|p| {
            mm.vmas
                .iter()
                .enumerate()
                .any(|(i, v)| anon(i, v) && v.start <= p.vaddr && p.vaddr < v.end)
        })
        .map(|p| p.nr_pages as u64 * PAGE)
        .sum();
    let uffd = if anon_bytes >= UFFD_MIN {
        task_uffd(r)?
    } else {
        None
    };
    let mut by_uffd = Vec::new();
    let mut filled = has_pages.clone();
    for (i, v) in mm.vmas.iter().enumerate() {
        if v.status & VMA_ANON_SHARED != 0 && shmem.will_create(v) {
            filled[i] = true;
        }
        if uffd.is_some() && anon(i, v) {
            by_uffd.push((v.start, v.end));
        }
    }
    let mut fds: HashMap<(u32, u32), u64> = HashMap::new();
    let mut private = Vec::new();
    for (i, v) in mm.vmas.iter().enumerate() {
        // Premapped memory is in place, filled and writable already.
        if is_special(v) || is_premapped(v) {
            continue;
        }
        let mut prot = v.prot as u64;
        if filled[i] {
            prot |= (libc::PROT_READ | libc::PROT_WRITE) as u64;
        }
        let mut flags = (v.flags as u64) | libc::MAP_FIXED as u64;
        let mut fd = u64::MAX;
        let mut pgoff = v.pgoff;
        let mut close_after = false;
        if v.status & VMA_ANON_SHARED != 0 {
            let existing = shmem.map_files_path(v)?;
            if let (None, Some(name)) = (&existing, &v.crust_memfd) {
                // Create the memfd, sized to every mapping of it.
                let p = r.put_path(0, name)?;
                fd = r.call(
                    &format!("memfd_create({name})"),
                    libc::SYS_memfd_create,
                    [p, 0, 0, 0, 0, 0],
                )?;
                r.call(
                    "ftruncate of a memfd",
                    libc::SYS_ftruncate,
                    [fd, shmem.size_of(v.shmid), 0, 0, 0, 0],
                )?;
                flags &= !(libc::MAP_ANONYMOUS as u64);
                close_after = true;
            } else if let Some(path) = existing {
                let p = r.put_path(0, &path)?;
                let oflags = if v.prot & libc::PROT_WRITE as u32 != 0 || filled[i] {
                    libc::O_RDWR
                } else {
                    libc::O_RDONLY
                };
                fd = r.call(
                    &format!("open of {path}"),
                    libc::SYS_openat,
                    [libc::AT_FDCWD as u64, p, oflags as u64, 0, 0, 0],
                )?;
                flags &= !(libc::MAP_ANONYMOUS as u64);
                close_after = true;
            } else if v.crust_memfd.is_none() {
                pgoff = 0;
            }
        } else if v.status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED) != 0 {
            let id = v.shmid as u32;
            let rf = files.get(&id).ok_or_else(|| Error::BadImage {
                file: "mm".into(),
                what: format!(
                    "VMA {:#x} refers to file id {id}, which files.img lacks",
                    v.start
                ),
            })?;
            let oflags = rf.flags & libc::O_ACCMODE as u32;
            fd = match fds.get(&(id, oflags)).or(prefds.get(&(id, oflags))) {
                Some(&fd) => fd,
                None => {
                    let p = r.put_path(0, &rf.name)?;
                    let fd = r.call(
                        &format!("open of {}", rf.name),
                        libc::SYS_openat,
                        [libc::AT_FDCWD as u64, p, oflags as u64, 0, 0, 0],
                    )?;
                    fds.insert((id, oflags), fd);
                    fd
                }
            };
        } else {
            flags |= libc::MAP_ANONYMOUS as u64;
        }
        let args = [v.start, v.end - v.start, prot, flags, fd, pgoff];
        // Private mappings go together in one batch, after the loop.
        if !close_after && v.status & VMA_ANON_SHARED == 0 {
            private.push(Call {
                what: format!("mmap of {:#x}-{:#x}", v.start, v.end),
                nr: libc::SYS_mmap,
                args,
            });
            continue;
        }
        let got = r.call(
            &format!("mmap of {:#x}-{:#x}", v.start, v.end),
            libc::SYS_mmap,
            args,
        )?;
        if close_after {
            r.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
        }
        if got != v.start {
            return Err(Error::Restore {
                pid,
                what: format!("mmap of {:#x} landed at {got:#x}", v.start),
            });
        }
        if v.status & VMA_ANON_SHARED != 0 {
            shmem.mapped(pid, inner_pid, v)?;
        }
    }
    for (c, got) in private.iter().zip(r.batch(&private)?) {
        if got != c.args[0] {
            return Err(Error::Restore {
                pid,
                what: format!("mmap of {:#x} landed at {got:#x}", c.args[0]),
            });
        }
    }
    for fd in fds.into_values() {
        r.call("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
    }
    crate::aio::restore(r, &mm.aios)?;
    collapse(r, &runs, &extents, pages, pages_name)?;
    let uffd = uffd.map(|u| {
        // A VMA the userfaultfd refuses is written the plain way.
        by_uffd.retain(|&(s, e)| match u.register_missing(s, e - s) {
            Ok(()) => true,
            Err(err) => {
                tracing::debug!("userfaultfd of pid {pid} refused {s:#x}-{e:#x}: {err}");
                false
            }
        });
        (u, by_uffd)
    });
    let fill = Fill {
        pid,
        pagemap,
        pages,
        pages_name,
        uffd,
        premapped: premapped.to_vec(),
        check: None,
    };
    Ok((filled, fill))
}

/// A userfaultfd of the task behind `r`, made by the task and taken over by
/// crust; `None` when the task may not have one (ENOSYS, a seccomp filter,
/// a sysctl), and then pages are written the plain way.
fn task_uffd(r: &Remote) -> Result<Option<Uffd>> {
    let flags = libc::O_CLOEXEC as u64 | crust_sys::uffd::UFFD_USER_MODE_ONLY;
    let fd = r.raw("userfaultfd", libc::SYS_userfaultfd, [flags, 0, 0, 0, 0, 0])?;
    if fd < 0 {
        tracing::debug!("no userfaultfd in pid {}: errno {}", r.pid(), -fd);
        return Ok(None);
    }
    let got = crust_sys::pidfd::pidfd_open(r.pid())
        .and_then(|pidfd| crust_sys::pidfd::pidfd_getfd(&pidfd, fd as i32));
    r.call("close", libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0])?;
    match got.and_then(Uffd::adopt) {
        Ok(u) => Ok(Some(u)),
        Err(err) => {
            tracing::debug!("userfaultfd of pid {} unusable: {err}", r.pid());
            Ok(None)
        }
    }
}

impl Fill<'_> {
    /// Check each piece of the page image against `check` (the manifest's
    /// sums, from [`crate::images::PageSums::defer`], and the image's path
    /// for errors) before writing any of its bytes.
    pub fn checked_against(self, check: Option<(FileSum, String)>) -> Self {
        Fill { check, ..self }
    }

    /// Write the pages, a piece of the page image at a time, read into a
    /// buffer of the mover thread's (which stays in its cache: faster, here,
    /// than copying from mapped windows of the image). The userfaultfd, if
    /// any, is closed when this returns (which unregisters its ranges).
    pub fn run(self) -> Result<()> {
        thread_local! {
            static PIECE_BUF: std::cell::RefCell<Option<PageBuf>> = const { std::cell::RefCell::new(None) };
        }
        let runs: Vec<PageRun> = self
            .pagemap
            .iter()
            .map(|p| PageRun {
                vaddr: p.vaddr,
                nr_pages: p.nr_pages as u64,
            })
            .collect();
        let ranges = split_runs(&runs, PIECE);
        let pid = self.pid;
        PIECE_BUF.with_borrow_mut(|slot| -> Result<()> {
            let buf = match slot {
                Some(b) => b,
                None => slot.insert(
                    PageBuf::new(PIECE as usize).ctx(|| "allocating a page buffer".to_string())?,
                ),
            };
            for (off, chunk) in windows(&ranges, PIECE) {
                // Premapped before the fork, and checked then.
                if chunk.iter().all(|r| inside(&self.premapped, r)) {
                    continue;
                }
                let len: usize = chunk.iter().map(|r| r.len).sum();
                let data = &mut buf[..len];
                self.pages
                    .read_at(off, data)
                    .ctx(|| format!("reading {}", self.pages_name))?;
                if let Some((sums, path)) = &self.check {
                    check_pieces(sums, off, data).map_err(|what| Error::BadImage {
                        file: path.clone(),
                        what,
                    })?;
                }
                self.write_chunk(chunk, data)
                    .ctx(|| format!("writing the memory of pid {pid}"))?;
            }
            Ok(())
        })
    }

    /// Write `buf` into `chunk`: runs of ranges inside registered VMAs
    /// through the userfaultfd, the others with process_vm_writev.
    fn write_chunk(&self, chunk: &[RemoteRange], buf: &[u8]) -> std::io::Result<()> {
        #[derive(PartialEq)]
        enum Way {
            Skip,
            Uffd,
            Plain,
        }
        let way = |r: &RemoteRange| match &self.uffd {
            _ if inside(&self.premapped, r) => Way::Skip,
            Some((_, set)) if inside(set, r) => Way::Uffd,
            _ => Way::Plain,
        };
        let (mut i, mut pos) = (0, 0);
        while i < chunk.len() {
            let kind = way(&chunk[i]);
            let n = chunk[i..].iter().take_while(|r| way(r) == kind).count();
            let group = &chunk[i..i + n];
            let bytes: usize = group.iter().map(|r| r.len).sum();
            let local = &buf[pos..pos + bytes];
            match (kind, &self.uffd) {
                (Way::Skip, _) => {}
                (Way::Uffd, Some((uffd, _))) => {
                    let mut at = 0;
                    for r in group {
                        uffd.copy(r.addr, &local[at..at + r.len])?;
                        at += r.len;
                    }
                }
                _ => vm::write_ranges(self.pid, group, local)?,
            }
            i += n;
            pos += bytes;
        }
        Ok(())
    }
}

/// Whether range `r` lies inside one of `set` ([start, end) each).
fn inside(set: &[(u64, u64)], r: &RemoteRange) -> bool {
    set.iter()
        .any(|&(s, e)| s <= r.addr && r.addr + r.len as u64 <= e)
}

/// Check `buf`, the bytes of a page image from offset `off`, against the
/// manifest's `sums`: it must hold whole pieces.
fn check_pieces(sums: &FileSum, off: u64, buf: &[u8]) -> std::result::Result<(), String> {
    let end = off + buf.len() as u64;
    let mut i = (off / sums.piece_len) as usize;
    loop {
        let piece = sums.piece_range(i);
        if piece.start >= end || piece.is_empty() {
            return Ok(());
        }
        if piece.start < off || piece.end > end {
            return Err(format!(
                "bytes {off}-{end} do not hold whole checksummed pieces of the manifest"
            ));
        }
        let at = (piece.start - off) as usize;
        sums.check_piece(i, &buf[at..at + (piece.end - piece.start) as usize])?;
        i += 1;
    }
}

/// The byte ranges of the page image that a restore reads before
/// [`Fill::run`]: the pages of `premapped` (written by the process itself
/// before it forks) and the first page of each extent made a huge page.
pub fn read_before_fill(
    mm: &pb::MmEntry,
    pagemap: &[pb::PagemapEntry],
    premapped: &[(u64, u64)],
) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut off = 0u64;
    for p in pagemap {
        let len = p.nr_pages as u64 * PAGE;
        for &(s, e) in premapped {
            let (from, to) = (s.max(p.vaddr), e.min(p.vaddr + len));
            if from < to {
                out.push((off + from - p.vaddr, off + to - p.vaddr));
            }
        }
        off += len;
    }
    let (_, extents) = collapse_plan(mm, pagemap);
    out.extend(extents.iter().map(|&(_, at)| (at, at + PAGE)));
    out
}

/// Give each VMA of a filled process its dumped protection and advice.
/// One batch of remote calls.
pub fn protect(r: &Remote, mm: &pb::MmEntry, filled: &[bool]) -> Result<()> {
    let mut calls = Vec::new();
    for (i, v) in mm.vmas.iter().enumerate() {
        if is_special(v) {
            continue;
        }
        let len = v.end - v.start;
        if filled[i] && v.prot != (v.prot | (libc::PROT_READ | libc::PROT_WRITE) as u32) {
            calls.push(Call {
                what: format!("mprotect of {:#x}-{:#x}", v.start, v.end),
                nr: libc::SYS_mprotect,
                args: [v.start, len, v.prot as u64, 0, 0, 0],
            });
        }
        let madv = v.madv.unwrap_or(0);
        for &(name, adv) in MADVICE {
            if madv & (1 << adv) != 0 {
                calls.push(Call {
                    what: format!("madvise({name}) of {:#x}-{:#x}", v.start, v.end),
                    nr: libc::SYS_madvise,
                    args: [v.start, len, adv as u64, 0, 0, 0],
                });
            }
        }
    }
    r.batch(&calls).map(drop)
}

/// A 2 MiB extent to collapse: its address and the page image offset of
/// its first page.
type Extent = (u64, u64);

/// Size of a transparent huge page.
const HPAGE: u64 = 2 << 20;
/// Smallest run of full extents worth a MADV_COLLAPSE.
const COLLAPSE_MIN: u64 = 64 << 20;
/// `MADV_COLLAPSE` (newer than Debian 12's libc crate may know).
const MADV_COLLAPSE: u64 = 25;

/// First touch of fresh memory in 4 KiB pages costs more than the copy
/// itself here, so every 2 MiB extent of anonymous memory whose pages are
/// all in the image is made one huge page before the pages are written:
/// its first page is written, then MADV_COLLAPSE (which leaves the VMA's
/// flags as they are). Extents with holes stay in small pages, so no
/// memory appears that the task did not have. Best effort: a collapse the
/// kernel refuses just leaves small pages.
///
/// This plans it: the runs of extents to collapse, and each extent with
/// the file offset of its first page.
fn collapse_plan(mm: &pb::MmEntry, pagemap: &[pb::PagemapEntry]) -> (Vec<(u64, u64)>, Vec<Extent>) {
    let nohuge = 1u64 << libc::MADV_NOHUGEPAGE;
    // (first address, file offset) of each run, to find extents.
    let mut extents: Vec<(u64, u64)> = Vec::new(); // (extent start, file offset of it)
    let mut off = 0u64;
    for p in pagemap {
        let len = p.nr_pages as u64 * PAGE;
        let (start, end) = (p.vaddr, p.vaddr + len);
        let mut e = start.next_multiple_of(HPAGE);
        while e + HPAGE <= end {
            extents.push((e, off + (e - start)));
            e += HPAGE;
        }
        off += len;
    }
    // A process that turned huge pages off gets none.
    let eligible = |e: u64| {
        mm.vmas.iter().any(|v| {
            !mm.thp_disabled.unwrap_or(false)
                && v.status & VMA_ANON_PRIVATE != 0
                && v.madv.unwrap_or(0) & nohuge == 0
                && v.flags & libc::MAP_GROWSDOWN as u32 == 0
                && v.start <= e
                && e + HPAGE <= v.end
        })
    };
    extents.retain(|&(e, _)| eligible(e));
    // Runs of adjacent extents; each MADV_COLLAPSE call has a fixed cost of
    // milliseconds (it drains the LRU caches of every CPU), measured here to
    // outweigh the gain below a few dozen huge pages.
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &(e, _) in &extents {
        match runs.last_mut() {
            Some(r) if r.1 == e => r.1 += HPAGE,
            _ => runs.push((e, e + HPAGE)),
        }
    }
    runs.retain(|&(s, e)| e - s >= COLLAPSE_MIN);
    extents.retain(|&(e, _)| runs.iter().any(|&(s, end)| s <= e && e < end));
    (runs, extents)
}

/// Collapse what [`collapse_plan`] planned, in VMAs mapped writable.
fn collapse(
    r: &Remote,
    runs: &[(u64, u64)],
    extents: &[(u64, u64)],
    pages: &PageFile,
    pages_name: &str,
) -> Result<()> {
    if extents.is_empty() {
        return Ok(());
    }
    let mut first = vec![0u8; extents.len() * PAGE as usize];
    for (i, &(_, foff)) in extents.iter().enumerate() {
        pages
            .read_at(foff, &mut first[i * PAGE as usize..(i + 1) * PAGE as usize])
            .ctx(|| format!("reading {pages_name}"))?;
    }
    let ranges: Vec<RemoteRange> = extents
        .iter()
        .map(|&(e, _)| RemoteRange {
            addr: e,
            len: PAGE as usize,
        })
        .collect();
    vm::write_ranges(r.pid(), &ranges, &first)
        .ctx(|| format!("writing the memory of pid {}", r.pid()))?;
    for &(start, end) in runs {
        let res = r.raw(
            "madvise(MADV_COLLAPSE)",
            libc::SYS_madvise,
            [start, end - start, MADV_COLLAPSE, 0, 0, 0],
        )?;
        if res < 0 {
            tracing::debug!(
                "MADV_COLLAPSE of {start:#x}-{end:#x} refused: errno {}",
                -res
            );
        }
    }
    Ok(())
}

/// Which VMAs receive pages from the page image.
fn vmas_with_pages(mm: &pb::MmEntry, pagemap: &[pb::PagemapEntry]) -> Vec<bool> {
    mm.vmas
        .iter()
        .map(|v| {
            pagemap.iter().any(|p| {
                let end = p.vaddr + p.nr_pages as u64 * PAGE;
                p.vaddr < v.end && end > v.start
            })
        })
        .collect()
}

/// Check the pagemap against the VMAs and the page image's size.
pub fn check_pagemap(
    mm: &pb::MmEntry,
    pagemap: &[pb::PagemapEntry],
    pages_len: u64,
    pagemap_name: &str,
    pages_name: &str,
) -> Result<()> {
    let bad = |what: String| Error::BadImage {
        file: pagemap_name.to_string(),
        what,
    };
    let mut total = 0u64;
    let mut prev_end = 0u64;
    for p in pagemap {
        if p.vaddr % PAGE != 0 || p.nr_pages == 0 || p.vaddr < prev_end {
            return Err(bad(format!(
                "entry at {:#x} with {} pages is misaligned, empty or out of order",
                p.vaddr, p.nr_pages
            )));
        }
        let end = p
            .vaddr
            .checked_add(p.nr_pages as u64 * PAGE)
            .ok_or_else(|| bad(format!("entry at {:#x} overflows", p.vaddr)))?;
        let inside = mm
            .vmas
            .iter()
            .any(|v| v.start <= p.vaddr && end <= v.end && !is_special(v));
        if !inside {
            return Err(bad(format!(
                "pages {:#x}-{end:#x} lie outside every dumped VMA",
                p.vaddr
            )));
        }
        prev_end = end;
        total += p.nr_pages as u64 * PAGE;
    }
    if total != pages_len {
        return Err(bad(format!(
            "lists {total} bytes of pages, but {pages_name} holds {pages_len}"
        )));
    }
    Ok(())
}

/// Size of `struct prctl_mm_map`: eleven u64 bounds, the auxv pointer,
/// auxv_size and exe_fd.
const PRCTL_MM_MAP_SIZE: usize = 12 * 8 + 4 + 4;
const PR_SET_MM: u64 = 35;
const PR_SET_MM_MAP: u64 = 14;

/// Set the mm fields and the exe file with PR_SET_MM_MAP.
pub fn set_mm_fields(
    r: &Remote,
    mm: &pb::MmEntry,
    files: &FileIndex,
    prefds: &MapFds,
) -> Result<()> {
    let exe = files.get(&mm.exe_file_id).ok_or_else(|| Error::BadImage {
        file: "mm".into(),
        what: format!("exe file id {} is not in files.img", mm.exe_file_id),
    })?;
    let opened = prefds
        .get(&(mm.exe_file_id, libc::O_RDONLY as u32))
        .copied();
    let exe_fd = match opened {
        Some(fd) => fd,
        None => {
            let p = r.put_path(0, &exe.name)?;
            r.call(
                &format!("open of the exe file {}", exe.name),
                libc::SYS_openat,
                [libc::AT_FDCWD as u64, p, libc::O_RDONLY as u64, 0, 0, 0],
            )?
        }
    };
    let auxv: Vec<u8> = mm
        .mm_saved_auxv
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect();
    let map_size = PRCTL_MM_MAP_SIZE;
    if map_size + auxv.len() > SCRATCH_LEN {
        return Err(Error::BadImage {
            file: "mm".into(),
            what: format!("saved auxv of {} bytes is too long", auxv.len()),
        });
    }
    let auxv_addr = r.put(map_size, &auxv)?;
    let bytes: Vec<u8> = [
        mm.mm_start_code,
        mm.mm_end_code,
        mm.mm_start_data,
        mm.mm_end_data,
        mm.mm_start_brk,
        mm.mm_brk,
        mm.mm_start_stack,
        mm.mm_arg_start,
        mm.mm_arg_end,
        mm.mm_env_start,
        mm.mm_env_end,
        auxv_addr,
    ]
    .iter()
    .flat_map(|v| v.to_ne_bytes())
    .chain((auxv.len() as u32).to_ne_bytes())
    .chain((exe_fd as u32).to_ne_bytes())
    .collect();
    let addr = r.put(0, &bytes)?;
    let res = r.call(
        "prctl(PR_SET_MM_MAP)",
        libc::SYS_prctl,
        [PR_SET_MM, PR_SET_MM_MAP, addr, map_size as u64, 0, 0],
    );
    if opened.is_none() {
        r.call("close", libc::SYS_close, [exe_fd, 0, 0, 0, 0, 0])?;
    }
    res.map(drop)
}

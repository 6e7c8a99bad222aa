//! Remote syscalls with a scratch mapping: how crust asks a stopped task for
//! what only the task itself can see or change. The syscalls run at a
//! `syscall` instruction of the task's own code; arguments and results
//! travel through a scratch mapping that crust maps in the task and unmaps
//! again.
//!
//! At dump, where the task must come out whole even if crust is killed at
//! any moment, they are guarded (see [`GuardedSyscaller`]): each thread is
//! parked on a signal frame of its own state, which rt_sigreturn gives back
//! if crust dies. At restore, where a crust that dies takes the whole tree
//! with it, they are plain.

use crust_sys::procfs::{self, Vma, VmaPath};
use crust_sys::ptrace::{self, Regs};
use crust_sys::remote::{
    errno_result, find_gadgets, find_syscall_insn, gadgets_at, raw_in_each, run_in_each, Gadgets,
    GuardedSyscaller, Parking, RemoteSyscaller, BATCH_CODE, BATCH_END, BATCH_ENTRY,
};
use crust_sys::vm::{self, RemoteRange};

use crate::error::{Context, Error, Result};
use crate::task::ThreadState;

/// Size of the scratch mapping.
pub const SCRATCH_LEN: usize = 64 * 1024;
/// Where the batch code goes in a restore's scratch area; its table
/// follows it, up to the end of the area.
const BATCH_AT: usize = 48 * 1024;
/// Where the table of a batch starts.
const BATCH_TABLE_AT: usize = BATCH_AT + 64;
/// The most syscalls a batch runs with one resume.
const BATCH_MAX: usize = (SCRATCH_LEN - BATCH_TABLE_AT) / BATCH_ENTRY - 1;

/// One syscall of a [`Remote::batch`]: what it is (for errors), its
/// number and arguments.
pub struct Call {
    /// Names the call in errors.
    pub what: String,
    /// The syscall number.
    pub nr: i64,
    /// Its arguments.
    pub args: [u64; 6],
}

/// How the syscalls of a [`Remote`] are driven.
enum Driver {
    /// At a vdso `syscall`, single-stepped (restore, and dumps of tasks
    /// without the gadgets).
    Plain(RemoteSyscaller),
    /// On a signal frame of the thread's own state (dump).
    Guarded(GuardedSyscaller),
}

/// A stopped, traced task that crust drives with remote syscalls.
pub struct Remote {
    pid: i32,
    sc: Driver,
    scratch: Option<u64>,
    /// At dump: what [`Remote::finish`] puts back (own registers and mask),
    /// and what siblings need.
    dump: Option<DumpSide>,
}

/// What a dump-side [`Remote`] remembers.
struct DumpSide {
    gadgets: Option<Gadgets>,
    /// Writable mappings of the process, where a thread's stack may be
    /// (empty in a sibling's side: its main thread's parks it).
    writable: Vec<(u64, u64)>,
    regs: Regs,
    sigmask: u64,
    finished: bool,
}

impl Remote {
    /// Prepare remote syscalls in `pid`, whose registers are `regs`, at a
    /// `syscall` instruction of its current [vdso].
    pub fn new(pid: i32, regs: Regs) -> Result<Self> {
        Self::with_maps(pid, regs, &procfs::read_maps(pid)?)
    }

    /// [`Remote::new`] for a task whose mappings `maps` were just read.
    pub fn with_maps(pid: i32, regs: Regs, maps: &[Vma]) -> Result<Self> {
        let ip = vdso_syscall_ip(pid, maps)?;
        Ok(Remote {
            pid,
            sc: Driver::Plain(RemoteSyscaller::new(pid, ip, regs)),
            scratch: None,
            dump: None,
        })
    }

    /// Remote syscalls in a frozen process `pid` being dumped, in its thread
    /// `tid` whose state is `th`: guarded, so that the task stays whole
    /// whatever moment crust dies at, when the task's code has the gadgets
    /// for it (else plain, with a warning). Every signal of the thread is
    /// blocked until [`Remote::finish`] (or drop) puts its own state back.
    /// `gadgets` remembers where the last process had them.
    pub fn for_dump(
        pid: i32,
        tid: i32,
        th: &ThreadState,
        gadgets: &mut GadgetCache,
    ) -> Result<Self> {
        let maps = procfs::read_maps(pid)?;
        let gadgets = dump_gadgets(pid, &maps, gadgets);
        if gadgets.is_none() {
            tracing::warn!(
                "pid {pid}: no `syscall; ret` and signal restorer in its code: \
                 remote syscalls are not guarded, a crust killed during them \
                 leaves the task with wrong registers"
            );
        }
        let writable = maps
            .iter()
            .filter(|v| v.read && v.write && !v.shared)
            .map(|v| (v.start, v.end))
            .collect();
        let side = DumpSide {
            gadgets,
            writable,
            regs: th.regs,
            sigmask: th.sigmask,
            finished: false,
        };
        Self::dump_thread(pid, tid, th, side, None)
    }

    /// Dump-side remote syscalls in `others`, other threads of the same
    /// process (same code, same scratch area), each with its state: the
    /// guarded ones parked all at once (see [`GuardedSyscaller::park_all`]).
    /// In the order of `others`.
    pub fn dump_siblings(&self, others: &[(i32, &ThreadState)]) -> Result<Vec<Remote>> {
        let own = self.dump.as_ref().expect("a dump-side remote");
        let mut plans = Vec::new();
        let mut plain = Vec::new();
        for (i, &(tid, th)) in others.iter().enumerate() {
            match own
                .gadgets
                .and_then(|g| plan_guarded(tid, th, g, &own.writable))
            {
                Some(plan) => plans.push((i, plan?)),
                None => plain.push(i),
            }
        }
        let (places, plans): (Vec<usize>, Vec<_>) = plans.into_iter().unzip();
        let parked = GuardedSyscaller::park_all(plans).ctx(|| {
            format!(
                "preparing remote syscalls in {} threads of pid {}",
                places.len(),
                self.pid
            )
        })?;
        let side = |th: &ThreadState| DumpSide {
            gadgets: own.gadgets,
            writable: Vec::new(),
            regs: th.regs,
            sigmask: th.sigmask,
            finished: false,
        };
        let mut out: Vec<Option<Remote>> = others.iter().map(|_| None).collect();
        for (i, g) in places.into_iter().zip(parked) {
            out[i] = Some(Remote {
                pid: g.tid(),
                sc: Driver::Guarded(g),
                scratch: self.scratch,
                dump: Some(side(others[i].1)),
            });
        }
        for i in plain {
            let (tid, th) = others[i];
            out[i] = Some(Self::dump_plain(tid, tid, th, side(th), self.scratch)?);
        }
        Ok(out.into_iter().flatten().collect())
    }

    fn dump_thread(
        pid: i32,
        tid: i32,
        th: &ThreadState,
        side: DumpSide,
        scratch: Option<u64>,
    ) -> Result<Remote> {
        let Some(plan) = side
            .gadgets
            .and_then(|g| plan_guarded(tid, th, g, &side.writable))
        else {
            return Self::dump_plain(pid, tid, th, side, scratch);
        };
        let g = GuardedSyscaller::park_all(vec![plan?])
            .ctx(|| format!("preparing remote syscalls in thread {tid}"))?
            .pop()
            .expect("park_all parks every plan or fails");
        Ok(Remote {
            pid: tid,
            sc: Driver::Guarded(g),
            scratch,
            dump: Some(side),
        })
    }

    /// Unguarded dump-side remote syscalls in thread `tid` of `pid`, at its
    /// vdso, with every signal blocked.
    fn dump_plain(
        pid: i32,
        tid: i32,
        th: &ThreadState,
        side: DumpSide,
        scratch: Option<u64>,
    ) -> Result<Remote> {
        let ip = vdso_syscall_ip(pid, &procfs::read_maps(pid)?)?;
        ptrace::set_sigmask(tid, u64::MAX).ctx(|| format!("blocking signals of {tid}"))?;
        Ok(Remote {
            pid: tid,
            sc: Driver::Plain(RemoteSyscaller::new(tid, ip, th.regs)),
            scratch,
            dump: Some(side),
        })
    }

    /// Whether this remote's syscalls are guarded against crust's death.
    pub fn guarded(&self) -> bool {
        matches!(self.sc, Driver::Guarded(_))
    }

    /// At dump: put back the thread's own signal mask and registers (and
    /// with guarded syscalls, the bytes under their signal frame).
    /// Idempotent; drop does it too, ignoring errors.
    pub fn finish(&mut self) -> Result<()> {
        let Some(side) = self.dump.as_mut() else {
            return Ok(());
        };
        if side.finished {
            return Ok(());
        }
        let tid = self.pid;
        match &mut self.sc {
            Driver::Guarded(g) => g.finish(),
            Driver::Plain(_) => ptrace::set_sigmask(tid, side.sigmask)
                .and_then(|()| ptrace::set_regs(tid, &side.regs)),
        }
        .ctx(|| format!("putting back the registers and signal mask of thread {tid}"))?;
        side.finished = true;
        Ok(())
    }

    /// [`Remote::finish`] for each of `remotes`, with the threads sent
    /// back to their stops all at once. Every one is finished; the first
    /// error is returned.
    pub fn finish_each(remotes: &mut [Remote]) -> Result<()> {
        let mut first = Ok(());
        for r in remotes.iter() {
            if let (Driver::Guarded(g), Some(side)) = (&r.sc, &r.dump) {
                if !side.finished {
                    first = first.and(
                        g.begin_finish()
                            .ctx(|| format!("putting back the registers of thread {}", r.pid)),
                    );
                }
            }
        }
        // The bytes under their frames in one write; a thread this leaves
        // unfinished is tried again, alone, below (naming it).
        let mut guarded: Vec<&mut GuardedSyscaller> = remotes
            .iter_mut()
            .filter_map(|r| match &mut r.sc {
                Driver::Guarded(g) => Some(g),
                Driver::Plain(_) => None,
            })
            .collect();
        let _ = GuardedSyscaller::finish_all(&mut guarded);
        for r in remotes.iter_mut() {
            first = first.and(r.finish());
        }
        first
    }

    /// Remote syscalls in another thread `tid` of the same process (same
    /// vdso, same scratch area), whose registers are `regs` (restore).
    pub fn sibling(&self, tid: i32, regs: Regs) -> Remote {
        let ip = match &self.sc {
            Driver::Plain(p) => p.ip(),
            Driver::Guarded(_) => unreachable!("restore-side remotes are plain"),
        };
        Remote {
            pid: tid,
            sc: Driver::Plain(RemoteSyscaller::new(tid, ip, regs)),
            scratch: self.scratch,
            dump: None,
        }
    }

    /// Forget the scratch area without unmapping it (a sibling's view).
    pub fn forget_scratch(&mut self) {
        self.scratch = None;
    }

    /// The task.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The range `[old, old + len)` moved to `new`: if the syscall
    /// instruction crust executes at was in it, follow it.
    pub fn moved(&mut self, old: u64, len: u64, new: u64) {
        if let Driver::Plain(sc) = &mut self.sc {
            let ip = sc.ip();
            if (old..old + len).contains(&ip) {
                sc.set_ip(ip - old + new);
            }
        }
    }

    /// Run syscall `nr`; `what` names it in errors.
    pub fn call(&self, what: &str, nr: i64, args: [u64; 6]) -> Result<u64> {
        match &self.sc {
            Driver::Plain(sc) => sc.call(nr, args),
            Driver::Guarded(sc) => sc.call(nr, args),
        }
        .ctx(|| format!("remote {what} in pid {}", self.pid))
    }

    /// Run syscall `nr` and return its raw result (negative errno).
    pub fn raw(&self, what: &str, nr: i64, args: [u64; 6]) -> Result<i64> {
        match &self.sc {
            Driver::Plain(sc) => sc.raw(nr, args),
            Driver::Guarded(sc) => sc.raw(nr, args),
        }
        .ctx(|| format!("remote {what} in pid {}", self.pid))
    }

    /// Run one syscall in each of `remotes` (threads of one process being
    /// dumped): `calls[i]`, number and arguments, in `remotes[i]`; `what`
    /// names it in errors. Guarded threads run theirs at once (see
    /// [`crust_sys::remote::raw_in_each`]), others one after the other.
    pub fn call_in_each(
        remotes: &[Remote],
        what: &str,
        calls: &[(i64, [u64; 6])],
    ) -> Result<Vec<u64>> {
        let Some(guarded) = Self::all_guarded(remotes) else {
            return remotes
                .iter()
                .zip(calls)
                .map(|(r, &(nr, args))| r.call(what, nr, args))
                .collect();
        };
        let raw = raw_in_each(&guarded, calls)
            .ctx(|| format!("remote {what} in threads {}", Self::pids(remotes)))?;
        remotes
            .iter()
            .zip(raw)
            .map(|(r, v)| errno_result(v).ctx(|| format!("remote {what} in pid {}", r.pid)))
            .collect()
    }

    /// [`Remote::call_in_each`] for calls that leave their results in the
    /// scratch area: the threads' registers are not read back, so a call
    /// that failed shows only as bytes it did not write there (see
    /// [`crust_sys::remote::run_in_each`]).
    pub fn run_in_each(remotes: &[Remote], what: &str, calls: &[(i64, [u64; 6])]) -> Result<()> {
        let Some(guarded) = Self::all_guarded(remotes) else {
            return remotes
                .iter()
                .zip(calls)
                .try_for_each(|(r, &(nr, args))| r.call(what, nr, args).map(drop));
        };
        run_in_each(&guarded, calls)
            .ctx(|| format!("remote {what} in threads {}", Self::pids(remotes)))
    }

    /// The guarded syscallers of `remotes`, if every one is guarded.
    fn all_guarded(remotes: &[Remote]) -> Option<Vec<&GuardedSyscaller>> {
        remotes
            .iter()
            .map(|r| match &r.sc {
                Driver::Guarded(g) => Some(g),
                Driver::Plain(_) => None,
            })
            .collect()
    }

    /// The threads of `remotes`, for errors.
    fn pids(remotes: &[Remote]) -> String {
        remotes
            .iter()
            .map(|r| r.pid.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Run `calls` in the task in order, as few resumes as possible: at
    /// restore, a table run by the batch code in the scratch area (which
    /// must be mapped); at dump, one by one (no code goes into a dumped
    /// task). Returns every result; the first call that fails is the
    /// error, and the calls after it are not run.
    pub fn batch(&self, calls: &[Call]) -> Result<Vec<u64>> {
        let sc = match &self.sc {
            Driver::Plain(sc) if self.dump.is_none() && self.scratch.is_some() => sc,
            _ => {
                return calls
                    .iter()
                    .map(|c| self.call(&c.what, c.nr, c.args))
                    .collect()
            }
        };
        let mut out = Vec::with_capacity(calls.len());
        for chunk in calls.chunks(BATCH_MAX) {
            let mut table: Vec<u8> = Vec::with_capacity((chunk.len() + 1) * BATCH_ENTRY);
            for c in chunk {
                for w in std::iter::once(c.nr as u64).chain(c.args).chain([0]) {
                    table.extend_from_slice(&w.to_ne_bytes());
                }
            }
            table.extend_from_slice(&BATCH_END.to_ne_bytes());
            table.resize((chunk.len() + 1) * BATCH_ENTRY, 0);
            let at = self.put(BATCH_TABLE_AT, &table)?;
            sc.run_batch(self.scratch() + BATCH_AT as u64, at).ctx(|| {
                format!(
                    "remote {} and what follows in pid {}",
                    chunk[0].what, self.pid
                )
            })?;
            self.get(BATCH_TABLE_AT, &mut table)?;
            for (i, c) in chunk.iter().enumerate() {
                let at = i * BATCH_ENTRY + 56;
                let raw = i64::from_ne_bytes(table[at..at + 8].try_into().expect("8 bytes"));
                out.push(
                    errno_result(raw).ctx(|| format!("remote {} in pid {}", c.what, self.pid))?,
                );
            }
        }
        Ok(out)
    }

    /// Map the scratch area: at `fixed` exactly (which must be free), or
    /// wherever the kernel likes. Shared anonymous memory never merges with
    /// the task's own private mappings. At restore it is executable too,
    /// and holds the code of [`Remote::batch`].
    pub fn map_scratch(&mut self, fixed: Option<u64>) -> Result<u64> {
        let (addr, flags) = match fixed {
            Some(a) => (a, libc::MAP_FIXED_NOREPLACE),
            None => (0, 0),
        };
        let restoring = self.dump.is_none();
        let prot = if restoring {
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC
        } else {
            libc::PROT_READ | libc::PROT_WRITE
        };
        let got = self.call(
            "mmap of the scratch area",
            libc::SYS_mmap,
            [
                addr,
                SCRATCH_LEN as u64,
                prot as u64,
                (libc::MAP_SHARED | libc::MAP_ANONYMOUS | flags) as u64,
                u64::MAX,
                0,
            ],
        )?;
        if fixed.is_some_and(|a| a != got) {
            return Err(Error::Restore {
                pid: self.pid,
                what: format!("scratch area landed at {got:#x}, not {addr:#x}"),
            });
        }
        self.scratch = Some(got);
        if restoring {
            self.put(BATCH_AT, &BATCH_CODE)?;
        }
        Ok(got)
    }

    /// Unmap the scratch area.
    pub fn unmap_scratch(&mut self) -> Result<()> {
        if let Some(addr) = self.scratch.take() {
            self.call(
                "munmap of the scratch area",
                libc::SYS_munmap,
                [addr, SCRATCH_LEN as u64, 0, 0, 0, 0],
            )?;
        }
        Ok(())
    }

    /// Address of the scratch area (which must be mapped).
    pub fn scratch(&self) -> u64 {
        self.scratch.expect("scratch area is mapped")
    }

    /// Copy `data` into the scratch area at `offset`; returns its remote
    /// address.
    pub fn put(&self, offset: usize, data: &[u8]) -> Result<u64> {
        assert!(offset + data.len() <= SCRATCH_LEN, "scratch overflow");
        let addr = self.scratch() + offset as u64;
        vm::write_ranges(
            self.pid,
            &[RemoteRange {
                addr,
                len: data.len(),
            }],
            data,
        )
        .ctx(|| format!("writing the scratch area of pid {}", self.pid))?;
        Ok(addr)
    }

    /// Read `buf.len()` bytes of the scratch area at `offset`.
    pub fn get(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        assert!(offset + buf.len() <= SCRATCH_LEN, "scratch overflow");
        vm::read_ranges(
            self.pid,
            &[RemoteRange {
                addr: self.scratch() + offset as u64,
                len: buf.len(),
            }],
            buf,
        )
        .ctx(|| format!("reading the scratch area of pid {}", self.pid))
    }

    /// Put a NUL-terminated path into the scratch area at `offset`.
    pub fn put_path(&self, offset: usize, path: &str) -> Result<u64> {
        let mut bytes = path.as_bytes().to_vec();
        bytes.push(0);
        if offset + bytes.len() > SCRATCH_LEN {
            return Err(Error::Restore {
                pid: self.pid,
                what: format!("path too long: {path}"),
            });
        }
        self.put(offset, &bytes)
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            tracing::warn!("{e}");
        }
    }
}

/// Where the gadgets of the last process dumped were: for each, the
/// mapping that holds it (file, offset in it and size) and its place in
/// that mapping. The processes of a tree mostly run the same programs: each
/// next one is looked at there first, a few bytes read instead of its code.
#[derive(Default)]
pub struct GadgetCache {
    spots: Option<[(MapKey, u64); 2]>,
}

/// What identifies a mapping of the same code in another process.
#[derive(Clone, PartialEq, Eq)]
struct MapKey {
    path: VmaPath,
    inode: u64,
    offset: u64,
    len: u64,
}

impl MapKey {
    fn of(v: &Vma) -> MapKey {
        MapKey {
            path: v.path.clone(),
            inode: v.inode,
            offset: v.offset,
            len: v.end - v.start,
        }
    }
}

impl GadgetCache {
    /// Where the cached gadgets would be in a process mapped as `maps`.
    fn guess(&self, maps: &[Vma]) -> Option<Gadgets> {
        let [(k1, o1), (k2, o2)] = self.spots.as_ref()?;
        let at = |k: &MapKey, o: u64| {
            maps.iter()
                .find(|v| v.exec && MapKey::of(v) == *k)
                .map(|v| v.start + o)
        };
        Some(Gadgets {
            syscall_ret: at(k1, *o1)?,
            restorer: at(k2, *o2)?,
        })
    }

    /// Remember `g`, found in a process mapped as `maps`.
    fn remember(&mut self, g: &Gadgets, maps: &[Vma]) {
        let spot = |addr: u64| {
            maps.iter()
                .find(|v| v.start <= addr && addr < v.end)
                .map(|v| (MapKey::of(v), addr - v.start))
        };
        self.spots = spot(g.syscall_ret)
            .zip(spot(g.restorer))
            .map(|(a, b)| [a, b]);
    }
}

/// The gadgets of guarded remote syscalls in process `pid` whose mappings
/// are `maps`: where `cache` says, if they are there, else looked for in
/// its readable code, the vdso and C libraries first.
/// The parking of thread `tid` (state `th`) on a frame of its own, with
/// gadgets `g` of its process whose writable mappings are `writable`; None,
/// with a warning, where its stack has no room for the frame (its remote
/// syscalls are then unguarded).
fn plan_guarded(
    tid: i32,
    th: &ThreadState,
    g: Gadgets,
    writable: &[(u64, u64)],
) -> Option<Result<Parking>> {
    let rsp = th.regs.rsp;
    let plan = match writable.iter().copied().find(|&(s, e)| s < rsp && rsp <= e) {
        Some(stack) => GuardedSyscaller::plan(tid, g, th.regs, &th.xstate, th.sigmask, stack),
        None => {
            warn_unguarded(
                tid,
                &format!("its stack pointer {rsp:#x} is in no writable mapping"),
            );
            return None;
        }
    };
    match plan {
        Ok(p) => Some(Ok(p)),
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
            warn_unguarded(tid, &e.to_string());
            None
        }
        Err(e) => Some(Err(e).ctx(|| format!("preparing remote syscalls in thread {tid}"))),
    }
}

fn warn_unguarded(tid: i32, why: &str) {
    tracing::warn!(
        "thread {tid}: remote syscalls not guarded ({why}): a crust killed during them \
         leaves the thread with wrong registers"
    );
}

fn dump_gadgets(pid: i32, maps: &[Vma], cache: &mut GadgetCache) -> Option<Gadgets> {
    if let Some(g) = cache.guess(maps).filter(|g| gadgets_at(pid, g)) {
        return Some(g);
    }
    let rank = |v: &Vma| match &v.path {
        VmaPath::Vdso => 0,
        VmaPath::File { path, .. } if path.contains("/libc") || path.contains("/ld-musl") => 1,
        _ => 2,
    };
    let mut code: Vec<&Vma> = maps.iter().filter(|v| v.read && v.exec).collect();
    code.sort_by_key(|v| rank(v));
    let ranges: Vec<(u64, u64)> = code.iter().map(|v| (v.start, v.end)).collect();
    let found = find_gadgets(pid, &ranges);
    if let Some(g) = &found {
        cache.remember(g, maps);
    }
    found
}

/// Address of a `syscall` instruction in the [vdso] of `pid`, whose
/// mappings are `maps`.
fn vdso_syscall_ip(pid: i32, maps: &[Vma]) -> Result<u64> {
    let vdso = maps
        .iter()
        .find(|v| v.path == VmaPath::Vdso)
        .ok_or_else(|| Error::Kernel(format!("a [vdso] in pid {pid}")))?;
    find_syscall_insn(pid, vdso.start, vdso.end)
        .ctx(|| format!("looking for a syscall instruction in the vdso of pid {pid}"))
}

//! The image directory: writing image files durably, with a manifest of
//! their checksums that marks the dump complete; reading them with errors
//! that name the file; verifying a folder against its manifest.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crust_image::manifest::{FileSum, HashingWriter, Manifest, MANIFEST, PIECE};
use crust_image::{names, pb, ImageError, ImageKind, ImageWriter};

use crate::error::{Context, Error, Result};

/// A folder of image files, remembering which files it wrote (so that a
/// failed dump can take them away again) and their checksums, for the
/// manifest.
///
/// Files are not fsynced one by one as they are written (on a disk, each
/// fsync of a small image waited for a journal commit, which waits for the
/// data of the page images written before it: the tracer of a 100-process
/// dump spent seconds there). [`ImageDir::commit`] makes them all durable
/// with one syncfs on the folder, which reports every writeback error of
/// its filesystem since the folder was opened here.
pub struct ImageDir {
    path: PathBuf,
    /// The folder, opened when this was made (None if it could not be: it
    /// is opened again to sync it, which then fails if it still cannot).
    opened: Option<File>,
    written: Mutex<Vec<PathBuf>>,
    sums: Mutex<BTreeMap<String, FileSum>>,
}

/// The suffix of a file written under a temporary name, renamed into
/// place once complete.
const PARTIAL: &str = ".partial";

impl ImageDir {
    /// The image folder at `path`.
    pub fn new(path: &Path) -> Self {
        ImageDir {
            path: path.to_path_buf(),
            opened: File::open(path).ok(),
            written: Mutex::new(Vec::new()),
            sums: Mutex::new(BTreeMap::new()),
        }
    }

    /// Path of the image file `name`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Path of the image file `name`, which the caller is about to create:
    /// [`ImageDir::discard`] removes it.
    pub fn create(&self, name: &str) -> PathBuf {
        let p = self.file(name);
        self.written.lock().expect("image list").push(p.clone());
        p
    }

    /// Record the size and checksum of `path` (a file of this folder),
    /// computed while it was written, for the manifest. Files written
    /// without one are read back when the dump is committed.
    pub fn record_sum(&self, path: &Path, sum: FileSum) {
        if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            self.sums
                .lock()
                .expect("image sums")
                .insert(name.to_string(), sum);
        }
    }

    /// Remove every file this dump created (after a failure).
    pub fn discard(&self) {
        for p in self.written.lock().expect("image list").drain(..) {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Write image `name` of `kind` with `entries`.
    pub fn write<M: prost::Message>(
        &self,
        name: &str,
        kind: ImageKind,
        entries: &[M],
    ) -> Result<()> {
        self.write_with(name, kind, |w| {
            for e in entries {
                w.write_entry(e)?;
            }
            Ok(())
        })
    }

    /// Write a pagemap image: its head naming page image `pages_id`, then
    /// the entries.
    pub fn write_pagemap(
        &self,
        name: &str,
        pages_id: u32,
        entries: &[pb::PagemapEntry],
    ) -> Result<()> {
        self.write_with(name, ImageKind::Pagemap, |w| {
            w.write_entry(&pb::PagemapHead { pages_id })?;
            for e in entries {
                w.write_entry(e)?;
            }
            Ok(())
        })
    }

    /// Create image `name`, let `fill` write its entries and record its
    /// checksum.
    fn write_with(
        &self,
        name: &str,
        kind: ImageKind,
        fill: impl FnOnce(&mut ImageWriter<BufWriter<HashingWriter<File>>>) -> std::io::Result<()>,
    ) -> Result<()> {
        let path = self.create(name);
        let io = |e| ImageError::io(path.display().to_string(), e);
        let f = File::create(&path).map_err(io)?;
        let mut w = ImageWriter::new(BufWriter::new(HashingWriter::new(f)), kind).map_err(io)?;
        fill(&mut w).map_err(io)?;
        let hashed = w
            .finish()
            .map_err(io)?
            .into_inner()
            .map_err(|e| io(e.into_error()))?;
        self.record_sum(&path, hashed.sum());
        Ok(())
    }

    /// Finish a dump: write `inventory` and the manifest (the checksum of
    /// every file this dump wrote) under temporary names, sync the
    /// folder's filesystem (every file durable), then rename the manifest
    /// and the inventory into place.
    /// Until both names exist the folder is not a complete image set: a
    /// restore refuses a folder without inventory, and a crust folder
    /// (one with a manifest) whose files do not match it.
    pub fn commit(&self, inventory: &pb::InventoryEntry) -> Result<()> {
        let inv_tmp = format!("{}{PARTIAL}", names::INVENTORY);
        self.write(
            &inv_tmp,
            ImageKind::Inventory,
            std::slice::from_ref(inventory),
        )?;
        let mut sums = std::mem::take(&mut *self.sums.lock().expect("image sums"));
        if let Some(s) = sums.remove(&inv_tmp) {
            sums.insert(names::INVENTORY.to_string(), s);
        }
        let written: Vec<PathBuf> = self.written.lock().expect("image list").clone();
        let mut reread = 0u64;
        let mut block = None;
        for p in &written {
            let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name == inv_tmp || sums.contains_key(name) {
                continue;
            }
            // Removed again by the dump (a process that vanished).
            if !p.exists() {
                continue;
            }
            let io = |e| ImageError::io(p.display().to_string(), e);
            let block = match &mut block {
                Some(b) => b,
                None => block.insert(SumBlock::new().map_err(io)?),
            };
            let sum = sum_file(p, block, crust_image::manifest::PIECE).map_err(io)?;
            reread += sum.size;
            sums.insert(name.to_string(), sum);
        }
        tracing::debug!(files = sums.len(), reread, "manifest computed");
        let manifest = Manifest { files: sums };
        let man_tmp = self.create(&format!("{MANIFEST}{PARTIAL}"));
        let io = |p: &Path, e| ImageError::io(p.display().to_string(), e);
        let mut f = File::create(&man_tmp).map_err(|e| io(&man_tmp, e))?;
        f.write_all(manifest.to_text().as_bytes())
            .map_err(|e| io(&man_tmp, e))?;
        drop(f);
        self.sync_all_files()?;
        let man = self.create(MANIFEST);
        std::fs::rename(&man_tmp, &man).map_err(|e| io(&man, e))?;
        let inv = self.create(names::INVENTORY);
        std::fs::rename(self.file(&inv_tmp), &inv).map_err(|e| io(&inv, e))?;
        self.sync()
    }

    /// Read every entry of image `name`.
    pub fn read<M: prost::Message + Default>(&self, name: &str, kind: ImageKind) -> Result<Vec<M>> {
        Ok(crust_image::read_entries(&self.file(name), kind)?)
    }

    /// Read the single entry of image `name`.
    pub fn read_one<M: prost::Message + Default>(&self, name: &str, kind: ImageKind) -> Result<M> {
        Ok(crust_image::read_single(&self.file(name), kind)?)
    }

    /// Run `op` on the folder (opened when this was made, or now); its
    /// errors name the folder.
    fn on_folder(&self, op: impl FnOnce(&File) -> std::io::Result<()>) -> Result<()> {
        let io = |e| ImageError::io(self.path.display().to_string(), e);
        let reopened;
        let dir = match &self.opened {
            Some(d) => d,
            None => {
                reopened = File::open(&self.path).map_err(io)?;
                &reopened
            }
        };
        op(dir).map_err(io)?;
        Ok(())
    }

    /// Sync the filesystem of the folder: every file written into it is
    /// durable, names included, or the first writeback error is returned.
    fn sync_all_files(&self) -> Result<()> {
        self.on_folder(|d| {
            nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(d)).map_err(Into::into)
        })
    }

    /// fsync the folder itself, so the new names are durable.
    fn sync(&self) -> Result<()> {
        self.on_folder(File::sync_all)
    }
}

/// The block [`sum_file`] reads into: page-aligned (see PageBuf; reading
/// tmpfs into a malloc'ed block ran at 1.9 GB/s here, into an aligned one
/// at 5 GB/s), made once per thread that checks files.
pub struct SumBlock(crust_sys::mmap::PageBuf);

impl SumBlock {
    const LEN: usize = PIECE as usize;

    /// A fresh block.
    pub fn new() -> std::io::Result<Self> {
        crust_sys::mmap::PageBuf::new(Self::LEN).map(SumBlock)
    }
}

/// The size and checksums of the file at `path` in pieces of `piece_len`
/// bytes, read through `block`.
pub fn sum_file(path: &Path, block: &mut SumBlock, piece_len: u64) -> std::io::Result<FileSum> {
    let mut f = File::open(path)?;
    let mut sum = crust_image::manifest::Checksum::with_pieces(piece_len);
    let buf = &mut block.0[..SumBlock::LEN];
    loop {
        let n = match f.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        sum.update(&buf[..n]);
    }
    Ok(sum.finish())
}

/// One thing wrong with a file of an images dir.
#[derive(Debug, Clone)]
pub struct Problem {
    /// The file.
    pub file: PathBuf,
    /// What is wrong with it (missing, size, checksum).
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.what)
    }
}

/// What checking a folder against its manifest found.
#[derive(Debug)]
pub enum ManifestCheck {
    /// The folder has no manifest (written by CRIU, or an old crust).
    Absent,
    /// Every file of the manifest was checked.
    Checked {
        /// How many files the manifest lists.
        files: usize,
        /// How many bytes were read to check them.
        bytes: u64,
        /// What does not match (empty when all is well).
        problems: Vec<Problem>,
    },
}

/// The manifest of `dir`, or `None` when there is none. A manifest that
/// cannot be read or parsed is an error naming it.
fn read_manifest(dir: &Path) -> Result<Option<Manifest>> {
    let path = dir.join(MANIFEST);
    let label = path.display().to_string();
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ImageError::io(label, e).into()),
    };
    Ok(Some(Manifest::parse(&text, &label)?))
}

/// Check every file listed in the manifest of `dir`: present, of the
/// recorded size, with the recorded checksums.
pub fn check_manifest(dir: &Path) -> Result<ManifestCheck> {
    let Some(manifest) = read_manifest(dir)? else {
        return Ok(ManifestCheck::Absent);
    };
    let files = manifest.files.len();
    let (bytes, problems) = check_files(dir, manifest.files.into_iter().collect());
    Ok(ManifestCheck::Checked {
        files,
        bytes,
        problems,
    })
}

/// Check `todo` (file names in `dir` with their sums) on two threads, the
/// largest files first; the bytes read and every problem found, by file.
fn check_files(dir: &Path, todo: Vec<(String, FileSum)>) -> (u64, Vec<Problem>) {
    let mut todo: Vec<(PathBuf, FileSum)> = todo
        .into_iter()
        .map(|(name, sum)| (dir.join(name), sum))
        .collect();
    todo.sort_by_key(|(_, s)| std::cmp::Reverse(s.size));
    let results = on_two_threads(&todo, |(file, want), block| {
        block
            .map_err(|e| format!("no buffer to read it: {e}"))
            .and_then(|b| check_one(file, want, b))
    });
    let mut bytes = 0u64;
    let mut problems = Vec::new();
    for ((file, _), r) in todo.iter().zip(results) {
        match r {
            Ok(n) => bytes += n,
            Err(what) => problems.push(Problem {
                file: file.clone(),
                what,
            }),
        }
    }
    problems.sort_by(|a, b| a.file.cmp(&b.file));
    (bytes, problems)
}

/// Run `each` over `jobs` on this thread and, when there is more than one
/// job, a helper thread: each takes the next job from a shared counter and
/// reads through a [`SumBlock`] of its own, made at its first job (`each`
/// gets the error if that failed). The results, in the order of `jobs`.
/// The helper has left the kernel's thread list when this returns: a
/// restore forks after, which needs crust single-threaded.
fn on_two_threads<J: Sync, R: Send>(
    jobs: &[J],
    each: impl Fn(&J, std::io::Result<&mut SumBlock>) -> R + Sync,
) -> Vec<R> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || {
        let mut block: Option<std::io::Result<SumBlock>> = None;
        let mut out = Vec::new();
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(job) = jobs.get(i) else {
                return out;
            };
            let block = match block.get_or_insert_with(SumBlock::new) {
                Ok(b) => Ok(b),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
            out.push((i, each(job, block)));
        }
    };
    let helped = jobs.len() > 1;
    let mut all = std::thread::scope(|s| {
        let helper = helped.then(|| s.spawn(work));
        let mut all = work();
        if let Some(h) = helper {
            all.extend(h.join().expect("image check thread panicked"));
        }
        all
    });
    if helped {
        wait_single_threaded();
    }
    all.sort_unstable_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
}

/// Wait (up to a second) until a joined thread has left the kernel's
/// thread list too: the join returns when it has finished, slightly before.
fn wait_single_threaded() {
    let t = std::time::Instant::now();
    while std::fs::read_dir("/proc/self/task").is_ok_and(|d| d.count() > 1)
        && t.elapsed() < std::time::Duration::from_secs(1)
    {
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}

/// Check one file against its manifest line; the bytes read, or what is wrong.
fn check_one(
    file: &Path,
    want: &FileSum,
    block: &mut SumBlock,
) -> std::result::Result<u64, String> {
    let meta = match std::fs::metadata(file) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("missing (listed in the manifest)".into())
        }
        Err(e) => return Err(e.to_string()),
    };
    if meta.len() != want.size {
        return Err(format!(
            "size is {} bytes, the manifest says {}",
            meta.len(),
            want.size
        ));
    }
    let got = sum_file(file, block, want.piece_len).map_err(|e| e.to_string())?;
    match want.mismatch(&got) {
        Some(what) => Err(what),
        None => Ok(got.size),
    }
}

/// Why someone other than root could have written the images in `dir`
/// (the folder or a file in it owned by another user, or writable by its
/// group or others), or `None` when only root could have.
pub fn written_by_others(dir: &Path) -> Result<Option<String>> {
    use std::os::unix::fs::MetadataExt;
    let why = |path: &Path, md: &std::fs::Metadata| -> Option<String> {
        if md.uid() != 0 {
            Some(format!("{} is owned by uid {}", path.display(), md.uid()))
        } else if md.mode() & 0o022 != 0 {
            Some(format!(
                "{} is writable by its group or others (mode {:o})",
                path.display(),
                md.mode() & 0o7777
            ))
        } else {
            None
        }
    };
    let shown = dir.display();
    let md = std::fs::metadata(dir).ctx(|| format!("stat of the images dir {shown}"))?;
    if let Some(w) = why(dir, &md) {
        return Ok(Some(w));
    }
    for e in std::fs::read_dir(dir).ctx(|| format!("listing the images dir {shown}"))? {
        let e = e.ctx(|| format!("listing the images dir {shown}"))?;
        let md = e
            .metadata()
            .ctx(|| format!("stat of {}", e.path().display()))?;
        if let Some(w) = why(&e.path(), &md) {
            return Ok(Some(w));
        }
    }
    Ok(None)
}

/// Before a restore reads any image: check every file of `dir` but the
/// page images against its manifest. A folder without one (a CRIU dump)
/// is restored with a warning, unless `strict`. The page images' sums are
/// returned, for [`PageSums::defer`] and [`PageSums::check_rest`].
pub fn verify_for_restore(dir: &Path, strict: bool) -> Result<PageSums> {
    let t = std::time::Instant::now();
    let Some(manifest) = read_manifest(dir)? else {
        if strict {
            return Err(Error::BadImage {
                file: dir.join(MANIFEST).display().to_string(),
                what: "missing: the images cannot be verified (--strict-images)".into(),
            });
        }
        tracing::warn!(
            "{} has no {MANIFEST} (not written by crust?): restoring without verifying checksums",
            dir.display()
        );
        return Ok(PageSums::default());
    };
    let (pages, others): (Vec<_>, Vec<_>) = manifest
        .files
        .into_iter()
        .partition(|(name, _)| name.starts_with("pages-"));
    let files = others.len();
    let (bytes, mut problems) = check_files(dir, others);
    // The page images' contents are checked later, but their presence and
    // sizes now.
    for (name, sum) in &pages {
        let file = dir.join(name);
        let what = match std::fs::metadata(&file) {
            Ok(m) if m.len() == sum.size => continue,
            Ok(m) => format!("size is {} bytes, the manifest says {}", m.len(), sum.size),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                "missing (listed in the manifest)".into()
            }
            Err(e) => e.to_string(),
        };
        problems.push(Problem { file, what });
    }
    problems.sort_by(|a, b| a.file.cmp(&b.file));
    refuse(problems)?;
    tracing::info!(
        files,
        bytes,
        ms = t.elapsed().as_millis() as u64,
        "images verified against the manifest (page images: as they are read)"
    );
    Ok(PageSums {
        dir: dir.to_path_buf(),
        sums: pages.into_iter().collect(),
        deferred: Default::default(),
    })
}

/// The manifest's sums of the page images of a restore, none checked yet.
/// Each is either handed to whoever reads that page image, piece by piece,
/// before any of its bytes go into a process ([`PageSums::defer_all`]; a page
/// image two processes name is handed to both),
/// or checked whole before the tree is forked ([`PageSums::check_rest`]).
#[derive(Default)]
pub struct PageSums {
    dir: PathBuf,
    sums: BTreeMap<String, FileSum>,
    deferred: std::collections::BTreeSet<String>,
}

impl PageSums {
    /// The sums of each page image named in `images` (key, name, length in
    /// bytes now, byte ranges read before the image is read whole), to be
    /// checked piece by piece as it is read; by key. The pieces holding the
    /// early ranges are checked now, on two threads (100 processes of a
    /// tree: 200 MiB of pieces, 24 ms on one). An image the manifest does
    /// not list, lists with another size, or sums in other pieces is left
    /// out: [`PageSums::check_rest`] checks it whole.
    pub fn defer_all<'a, K: Copy + Eq + std::hash::Hash + Send>(
        &mut self,
        images: impl IntoIterator<Item = (K, &'a str, u64, Vec<(u64, u64)>)>,
    ) -> Result<std::collections::HashMap<K, (FileSum, String)>> {
        let mut out = std::collections::HashMap::new();
        let mut checks: Vec<(PathBuf, FileSum, Vec<usize>)> = Vec::new();
        for (key, name, len, early) in images {
            let Some(sum) = self.sums.get(name) else {
                continue;
            };
            if sum.size != len || (sum.piece_len != PIECE && sum.size > PIECE) {
                continue;
            }
            let path = self.dir.join(name);
            let mut pieces: Vec<usize> = early
                .iter()
                .filter(|(s, e)| s < e)
                .flat_map(|&(s, e)| {
                    (s / sum.piece_len) as usize..=((e - 1) / sum.piece_len) as usize
                })
                .collect();
            pieces.sort_unstable();
            pieces.dedup();
            if !pieces.is_empty() {
                checks.push((path.clone(), sum.clone(), pieces));
            }
            self.deferred.insert(name.to_string());
            out.insert(key, (sum.clone(), path.display().to_string()));
        }
        on_two_threads(&checks, |(path, sum, pieces), block| -> Result<()> {
            let shown = || path.display().to_string();
            let block = block.map_err(|e| ImageError::io(shown(), e))?;
            let file = File::open(path).map_err(|e| ImageError::io(shown(), e))?;
            for &i in pieces {
                let r = sum.piece_range(i);
                let buf = &mut block.0[..(r.end - r.start) as usize];
                std::os::unix::fs::FileExt::read_exact_at(&file, buf, r.start)
                    .map_err(|e| ImageError::io(shown(), e))?;
                sum.check_piece(i, buf).map_err(|what| Error::BadImage {
                    file: shown(),
                    what,
                })?;
            }
            Ok(())
        })
        .into_iter()
        .collect::<Result<()>>()?;
        Ok(out)
    }

    /// Check every page image not deferred, whole (two threads).
    pub fn check_rest(self) -> Result<()> {
        let t = std::time::Instant::now();
        let todo: Vec<(String, FileSum)> = self
            .sums
            .into_iter()
            .filter(|(name, _)| !self.deferred.contains(name))
            .collect();
        if todo.is_empty() {
            return Ok(());
        }
        let files = todo.len();
        let (bytes, problems) = check_files(&self.dir, todo);
        refuse(problems)?;
        tracing::info!(
            files,
            bytes,
            deferred = self.deferred.len(),
            ms = t.elapsed().as_millis() as u64,
            "page images verified against the manifest"
        );
        Ok(())
    }
}

/// An error for the first of `problems` that lists the others, if any.
fn refuse(problems: Vec<Problem>) -> Result<()> {
    let Some((first, rest)) = problems.split_first() else {
        return Ok(());
    };
    Err(Error::BadImage {
        file: first.file.display().to_string(),
        what: if rest.is_empty() {
            first.what.clone()
        } else {
            format!(
                "{} (and {} more: {})",
                first.what,
                rest.len(),
                rest.iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        },
    })
}

/// What `crust check-images` found in a folder.
#[derive(Debug)]
pub struct ImagesReport {
    /// The manifest check.
    pub manifest: ManifestCheck,
    /// How many `*.img` files were decoded.
    pub decoded: usize,
    /// Every problem: manifest mismatches, then images that do not decode.
    pub problems: Vec<Problem>,
}

/// Check a dump offline: every file against the manifest, and every image
/// (all `*.img` but raw `pages-*.img`) decoded entry by entry, as
/// `crust show` does. A missing inventory is a problem too.
pub fn check_images(dir: &Path) -> Result<ImagesReport> {
    let shown = dir.display().to_string();
    if !dir.is_dir() {
        return Err(Error::Sys {
            what: format!("reading the images dir {shown}"),
            err: std::io::Error::from_raw_os_error(libc::ENOTDIR),
        });
    }
    let manifest = check_manifest(dir)?;
    let mut problems = match &manifest {
        ManifestCheck::Checked { problems, .. } => problems.clone(),
        ManifestCheck::Absent => Vec::new(),
    };
    let mut imgs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ImageError::io(shown.clone(), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".img") && !n.starts_with("pages-"))
        })
        .collect();
    imgs.sort();
    let inventory = dir.join(names::INVENTORY);
    if !imgs.contains(&inventory) {
        problems.push(Problem {
            file: inventory,
            what: "missing: not a complete image set".into(),
        });
    }
    let mut decoded = 0;
    for img in &imgs {
        match crust_image::show(img) {
            Ok(_) => decoded += 1,
            Err(e) => {
                let full = e.to_string();
                let prefix = format!("{}: ", img.display());
                let what = full.strip_prefix(&prefix).unwrap_or(&full).to_string();
                problems.push(Problem {
                    file: img.clone(),
                    what,
                });
            }
        }
    }
    Ok(ImagesReport {
        manifest,
        decoded,
        problems,
    })
}

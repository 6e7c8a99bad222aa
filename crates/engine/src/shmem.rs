//! Shared anonymous memory (MAP_SHARED | MAP_ANONYMOUS): each shmem object
//! is dumped once, however many processes map it, from its file in
//! /proc/PID/map_files (pagemap-shmem-ID.img + pages-N.img, as CRIU). At
//! restore the first process that maps it creates it with mmap, its pages
//! are written there, and every other mapping opens it through that
//! process's map_files entry, so a write by one is seen by all again.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;

use crust_image::{names, pb};
use crust_sys::mmap::PageFile;

use crate::error::{Context, Error, Result};
use crate::images::ImageDir;
use crate::mm::{PAGE, PE_PRESENT};

/// Bytes copied at once when dumping a shmem object.
const CHUNK: usize = 8 << 20;

/// Where a shmem object is read from at dump.
#[derive(Clone, Copy)]
enum Source {
    /// A mapping of process `pid`: start, end, offset in the object.
    Mapping(i32, u64, u64, u64),
    /// fd `fd` of process `pid` (a memfd nobody maps).
    Fd(i32, i32),
}

/// The shmem objects met during a dump: the first mapping of each (or an
/// fd of a memfd), by inode.
#[derive(Default)]
pub struct Dumper {
    objects: Vec<(u64, Source)>,
}

impl Dumper {
    /// Note the shared anonymous mappings (inode, start, end, pgoff) of `pid`.
    pub fn add(&mut self, pid: i32, mappings: &[(u64, u64, u64, u64)]) {
        for &(ino, start, end, pgoff) in mappings {
            let this = Source::Mapping(pid, start, end, pgoff);
            match self.objects.iter_mut().find(|o| o.0 == ino) {
                // Prefer a mapping from the object's start.
                Some(o) if pgoff == 0 && !matches!(o.1, Source::Mapping(_, _, _, 0)) => o.1 = this,
                Some(_) => {}
                None => self.objects.push((ino, this)),
            }
        }
    }

    /// Note memfd `ino`, open at fd `fd` of `pid` (dumped from there unless
    /// a process maps it).
    pub fn add_fd(&mut self, ino: u64, pid: i32, fd: i32) {
        if !self.objects.iter().any(|o| o.0 == ino) {
            self.objects.push((ino, Source::Fd(pid, fd)));
        }
    }

    /// Dump every object into page images numbered from `first_pages_id`.
    pub fn dump_all(self, dir: &ImageDir, first_pages_id: u32) -> Result<u64> {
        let mut written = 0;
        for (i, &(ino, source)) in self.objects.iter().enumerate() {
            let (pid, path) = match source {
                Source::Mapping(pid, start, end, _) => {
                    (pid, format!("/proc/{pid}/map_files/{start:x}-{end:x}"))
                }
                Source::Fd(pid, fd) => (pid, format!("/proc/{pid}/fd/{fd}")),
            };
            let f = std::fs::File::open(&path).ctx(|| format!("opening {path}"))?;
            let size = f.metadata().ctx(|| format!("stat of {path}"))?.len();
            let memfd = std::fs::read_link(&path)
                .map(|l| l.to_string_lossy().starts_with("/memfd:"))
                .unwrap_or(false);
            // A memfd is created again at its full size; anonymous shared
            // memory only as large as the mapping that creates it.
            if let Source::Mapping(_, start, end, pgoff) = source {
                if !memfd && (pgoff != 0 || end - start < size) {
                    return Err(Error::Unsupported {
                        pid,
                        what: format!(
                            "shared anonymous memory at {start:#x}-{end:#x} that no process maps whole (not supported yet)"
                        ),
                    });
                }
            }
            let pages_id = first_pages_id + i as u32;
            let pages_path = dir.create(&names::pages(pages_id));
            let mut out = PageFile::create(&pages_path, 0)
                .ctx(|| format!("creating {}", pages_path.display()))?;
            let mut entries = Vec::new();
            let mut buf = crust_sys::mmap::PageBuf::new(CHUNK)
                .ctx(|| format!("allocating a buffer for {path}"))?;
            let mut file_off = 0u64;
            for (data, hole) in data_ranges(&f, size).ctx(|| format!("scanning {path}"))? {
                let mut off = data;
                while off < hole {
                    let n = ((hole - off) as usize).min(CHUNK);
                    // The last page may run past the end of the file.
                    let inside = (size.saturating_sub(off) as usize).min(n);
                    f.read_exact_at(&mut buf[..inside], off)
                        .ctx(|| format!("reading {path}"))?;
                    buf[inside..n].fill(0);
                    out.append_at(file_off, &buf[..n])
                        .ctx(|| format!("writing {}", pages_path.display()))?;
                    file_off += n as u64;
                    off += n as u64;
                }
                entries.push(pb::PagemapEntry {
                    vaddr: data,
                    nr_pages: ((hole - data) / PAGE) as u32,
                    in_parent: None,
                    flags: Some(PE_PRESENT),
                });
            }
            out.finish(file_off)
                .ctx(|| format!("writing {}", pages_path.display()))?;
            written += file_off / PAGE;
            dir.write_pagemap(&names::shmem_pagemap(ino), pages_id, &entries)?;
        }
        Ok(written)
    }
}

/// The page-aligned (data, hole) ranges of a shmem file below `size`.
fn data_ranges(f: &std::fs::File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    use nix::unistd::{lseek, Whence};
    use std::os::fd::AsRawFd;
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut pos = 0i64;
    while (pos as u64) < size {
        let data = match lseek(fd, pos, Whence::SeekData) {
            Ok(d) => d,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = lseek(fd, data, Whence::SeekHole).map_err(std::io::Error::from)?;
        let d = (data as u64) & !(PAGE - 1);
        let h = ((hole as u64).min(size) + PAGE - 1) & !(PAGE - 1);
        if h > d {
            out.push((d, h));
        }
        pos = hole;
    }
    Ok(out)
}

/// One shmem object of a restore.
struct Object {
    /// Bytes every mapping of it needs.
    size: u64,
    pagemap: Vec<pb::PagemapEntry>,
    pages: PageFile,
    pages_name: String,
    /// (pid in its own namespace, start, end) of the mapping that created it.
    creator: Option<(i32, u64, u64)>,
    /// The path of the object when crust made it before the tree existed.
    provided: Option<String>,
}

/// The shmem objects of a restore, created by their first mapping.
#[derive(Default)]
pub struct Restorer {
    objects: HashMap<u64, Object>,
}

impl Restorer {
    /// Read the images of the shmem objects that `vmas` map.
    pub fn load<'a>(
        dir: &ImageDir,
        vmas: impl IntoIterator<Item = &'a pb::VmaEntry>,
    ) -> Result<Self> {
        let mut objects: HashMap<u64, Object> = HashMap::new();
        for v in vmas {
            let id = v.shmid;
            let need = v.pgoff + (v.end - v.start);
            if let Some(o) = objects.get_mut(&id) {
                o.size = o.size.max(need);
                continue;
            }
            let (pagemap, pages, pages_name) = load_object(dir, id)?;
            let data_end = pagemap
                .iter()
                .map(|p| p.vaddr + p.nr_pages as u64 * PAGE)
                .max()
                .unwrap_or(0);
            objects.insert(
                id,
                Object {
                    size: need.max(data_end),
                    pagemap,
                    pages,
                    pages_name,
                    creator: None,
                    provided: None,
                },
            );
        }
        Ok(Restorer { objects })
    }

    fn object(&self, v: &pb::VmaEntry) -> Result<&Object> {
        self.objects.get(&v.shmid).ok_or_else(|| Error::BadImage {
            file: names::shmem_pagemap(v.shmid),
            what: "is missing".into(),
        })
    }

    /// Bytes the object `shmid` must hold.
    pub fn size_of(&self, shmid: u64) -> u64 {
        self.objects.get(&shmid).map(|o| o.size).unwrap_or(0)
    }

    /// Whether mapping `v` will create its object (and so be filled).
    pub fn will_create(&self, v: &pb::VmaEntry) -> bool {
        self.object(v)
            .is_ok_and(|o| o.creator.is_none() && o.provided.is_none())
    }

    /// The map_files path to open for mapping `v`, or `None` when `v`
    /// creates the object with a plain MAP_SHARED | MAP_ANONYMOUS mmap.
    pub fn map_files_path(&self, v: &pb::VmaEntry) -> Result<Option<String>> {
        let o = self.object(v)?;
        if let Some(p) = &o.provided {
            return Ok(Some(p.clone()));
        }
        match o.creator {
            Some((pid, start, end)) => Ok(Some(format!("/proc/{pid}/map_files/{start:x}-{end:x}"))),
            None if v.pgoff == 0 || v.crust_memfd.is_some() => Ok(None),
            None => Err(Error::BadImage {
                file: names::shmem_pagemap(v.shmid),
                what: format!(
                    "its first mapping at {:#x} does not start at offset 0",
                    v.start
                ),
            }),
        }
    }

    /// Mapping `v` of `pid` (crust's view; `inner` in its own pid
    /// namespace) is in place: if it created its object, write the object's
    /// pages into it.
    pub fn mapped(&mut self, pid: i32, inner: i32, v: &pb::VmaEntry) -> Result<()> {
        let o = self
            .objects
            .get_mut(&v.shmid)
            .expect("checked by map_files_path");
        if o.creator.is_some() || o.provided.is_some() {
            return Ok(());
        }
        o.creator = Some((inner, v.start, v.end));
        // Write the pages through the object's file (from crust's side of
        // /proc), so that no mapping needs to be writable.
        let path = format!("/proc/{pid}/map_files/{:x}-{:x}", v.start, v.end);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .ctx(|| format!("opening {path}"))?;
        write_object(&file, v.shmid, o.size, &o.pagemap, &o.pages, &o.pages_name)
    }

    /// Object `shmid` exists already (a memfd crust made for an fd): its
    /// mappings open `path`, and none fills it again.
    pub fn provide(&mut self, shmid: u64, path: String) {
        if let Some(o) = self.objects.get_mut(&shmid) {
            o.provided = Some(path);
        }
    }
}

/// The pagemap and page image of shmem object `id`, checked against each
/// other.
fn load_object(dir: &ImageDir, id: u64) -> Result<(Vec<pb::PagemapEntry>, PageFile, String)> {
    let name = names::shmem_pagemap(id);
    let (head, pagemap) = crust_image::read_pagemap(&dir.file(&name))?;
    let pages_name = names::pages(head.pages_id);
    let path = dir.file(&pages_name);
    let pages = PageFile::open(&path)
        .map_err(|e| crust_image::ImageError::io(path.display().to_string(), e))?;
    let total: u64 = pagemap.iter().map(|p| p.nr_pages as u64 * PAGE).sum();
    if total != pages.len() {
        return Err(Error::BadImage {
            file: name,
            what: format!(
                "lists {total} bytes of pages, but {pages_name} holds {}",
                pages.len()
            ),
        });
    }
    Ok((pagemap, pages, pages_name))
}

/// Write the pages of object `shmid` (`size` bytes) into `file`.
fn write_object(
    file: &std::fs::File,
    shmid: u64,
    size: u64,
    pagemap: &[pb::PagemapEntry],
    pages: &PageFile,
    pages_name: &str,
) -> Result<()> {
    let mut off = 0u64;
    for p in pagemap {
        let n = p.nr_pages as u64 * PAGE;
        let room = size.next_multiple_of(PAGE);
        if p.vaddr % PAGE != 0 || p.vaddr.checked_add(n).is_none_or(|end| end > room) {
            return Err(Error::BadImage {
                file: names::shmem_pagemap(shmid),
                what: format!(
                    "pages at offset {:#x} lie outside the {size} byte object",
                    p.vaddr
                ),
            });
        }
        let mut done = 0u64;
        while done < n {
            let chunk = (n - done).min(CHUNK as u64) as usize;
            pages
                .read_window(off + done, chunk, |buf| {
                    // Not past the end of the object: the last page may be
                    // partly outside a memfd.
                    let at = p.vaddr + done;
                    let inside = (size.saturating_sub(at) as usize).min(buf.len());
                    file.write_all_at(&buf[..inside], at)
                })
                .ctx(|| format!("mapping {pages_name}"))?
                .ctx(|| format!("writing shmem object {shmid}"))?;
            done += chunk as u64;
        }
        off += n;
    }
    Ok(())
}

/// Fill `file` (a fresh memfd of `size` bytes) with the pages of shmem
/// object `shmid`.
pub fn fill_file(dir: &ImageDir, shmid: u64, size: u64, file: &std::fs::File) -> Result<()> {
    let (pagemap, pages, pages_name) = load_object(dir, shmid)?;
    write_object(file, shmid, size, &pagemap, &pages, &pages_name)
}

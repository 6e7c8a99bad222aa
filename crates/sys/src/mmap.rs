//! Page image files, moved through short-lived mappings: pages go straight
//! between a task and the file's page cache (no copy through crust's heap),
//! one window at a time, so crust's own memory stays small whatever the
//! size of the image.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// A page image file.
pub struct PageFile {
    file: File,
    len: u64,
}

impl PageFile {
    /// Create `path` with `len` bytes allocated ahead of time (fallocate),
    /// so that filling it later only copies.
    pub fn create(path: &Path, len: u64) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        if len > 0 {
            // SAFETY: plain syscall on our own fd.
            let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as i64) };
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(PageFile { file, len })
    }

    /// Make the file `len` bytes long if it is shorter, allocating only
    /// what it lacks.
    pub fn grow(&mut self, len: u64) -> io::Result<()> {
        if len <= self.len {
            return Ok(());
        }
        let extra = len - self.len;
        // SAFETY: plain syscall on our own fd.
        let r = unsafe { libc::fallocate(self.file.as_raw_fd(), 0, self.len as i64, extra as i64) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        self.len = len;
        Ok(())
    }

    /// Open an existing page image for reading.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        Ok(PageFile { file, len })
    }

    /// Current length of the file in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the file holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Map `[offset, offset + len)` (offset page-aligned, inside the file)
    /// read-only and call `f` on it; the mapping is gone when this returns.
    pub fn read_window<R>(
        &self,
        offset: u64,
        len: usize,
        f: impl FnOnce(&[u8]) -> R,
    ) -> io::Result<R> {
        self.window(offset, len, false, |s| f(s))
    }

    fn window<R>(
        &self,
        offset: u64,
        len: usize,
        writable: bool,
        f: impl FnOnce(&mut [u8]) -> R,
    ) -> io::Result<R> {
        if !offset.is_multiple_of(4096) || offset + len as u64 > self.len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "window {offset}+{len} outside page file of {} bytes",
                    self.len
                ),
            ));
        }
        if len == 0 {
            return Ok(f(&mut []));
        }
        let (prot, flags) = if writable {
            (libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED)
        } else {
            (libc::PROT_READ, libc::MAP_PRIVATE)
        };
        // SAFETY: a fresh mapping of our own file; unmapped below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                flags | libc::MAP_POPULATE,
                self.file.as_raw_fd(),
                offset as i64,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: ptr..ptr+len is the mapping made above. A read-only window
        // is only handed out as &[u8] by read_window.
        let slice = unsafe { std::slice::from_raw_parts_mut(ptr.cast::<u8>(), len) };
        let r = f(slice);
        // SAFETY: unmapping the mapping made above, once.
        unsafe { libc::munmap(ptr, len) };
        Ok(r)
    }

    /// Read `buf.len()` bytes at `offset`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.read_exact_at(buf, offset)
    }

    /// Write `data` at `offset`, growing the file's recorded length.
    pub fn append_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(data, offset)?;
        self.len = self.len.max(offset + data.len() as u64);
        Ok(())
    }

    /// Write `data` at `offset`.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(data, offset)
    }

    /// Cut the file to `len` bytes and start writing it back to its disk,
    /// without waiting: durable once its filesystem is synced (the image
    /// folder's commit does that once for every file), its writes overlap
    /// the rest of the dump meanwhile.
    pub fn finish(self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        // SAFETY: plain syscall on our own fd.
        let r = unsafe {
            libc::sync_file_range(self.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE)
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A page-aligned buffer of crust's own memory, in a private anonymous
/// mapping populated when made (no page faults on first use).
///
/// Page-aligned matters: copying a page-aligned source (a task's pages,
/// the page cache) into a buffer 16 bytes past a page boundary, where
/// malloc puts large blocks, ran at 1.4 GB/s here against 5.3-6 GB/s into
/// an aligned one (4K aliasing between the loads and the stores).
pub struct PageBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: PageBuf owns its mapping exclusively, like a Vec<u8>.
unsafe impl Send for PageBuf {}
// SAFETY: shared access only reads.
unsafe impl Sync for PageBuf {}

impl PageBuf {
    /// A buffer of `len` bytes (rounded up to whole pages), populated.
    pub fn new(len: usize) -> io::Result<Self> {
        let len = len.max(1).next_multiple_of(4096);
        // SAFETY: a fresh private anonymous mapping, owned by the PageBuf.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        Ok(PageBuf { ptr, len })
    }
}

impl std::ops::Deref for PageBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr..ptr+len is the mapping this PageBuf owns.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for PageBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref, and &mut self makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for PageBuf {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping this PageBuf owns, once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

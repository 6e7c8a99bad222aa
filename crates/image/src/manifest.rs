//! The manifest of a dump: the size and checksum of every image and page
//! file, in a text file that CRIU's tools ignore (its name does not end in
//! `.img`).
//!
//! ```text
//! crust-manifest 1 xxh3-64
//! 1234 0123456789abcdef inventory.img
//! 4096 fedcba9876543210 pages-1.img
//! ```
//!
//! One line per file: its size in bytes, its XXH3-64 checksum in hex, its
//! name. The manifest is written last, under a temporary name that is
//! renamed into place, so its presence also marks the dump as complete.

use std::collections::BTreeMap;

use xxhash_rust::xxh3::Xxh3;

use crate::ImageError;

/// The manifest's file name in the images dir.
pub const MANIFEST: &str = "crust-manifest.txt";

/// The first line of every manifest: format name, version, algorithm.
const HEADER: &str = "crust-manifest 1 xxh3-64";

/// The most lines a manifest may hold: far more than any dump writes, so a
/// hostile manifest cannot make crust check (or allocate for) millions.
pub const MAX_MANIFEST_FILES: usize = 1 << 20;

/// The size and checksum of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSum {
    /// Length in bytes.
    pub size: u64,
    /// XXH3-64 of the contents.
    pub xxh3: u64,
}

impl FileSum {
    /// The sum of `data`, in one go.
    pub fn of(data: &[u8]) -> FileSum {
        let mut c = Checksum::new();
        c.update(data);
        c.finish()
    }
}

/// A checksum computed while a file is written (or read), in order.
#[derive(Clone)]
pub struct Checksum {
    hasher: Xxh3,
    size: u64,
}

impl Default for Checksum {
    fn default() -> Self {
        Checksum::new()
    }
}

impl Checksum {
    /// An empty checksum.
    pub fn new() -> Checksum {
        Checksum {
            hasher: Xxh3::new(),
            size: 0,
        }
    }

    /// Feeds the next bytes of the file.
    pub fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.size += data.len() as u64;
    }

    /// How many bytes were fed so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The size and checksum of everything fed.
    pub fn finish(&self) -> FileSum {
        FileSum {
            size: self.size,
            xxh3: self.hasher.digest(),
        }
    }
}

/// The files of a dump with their sums, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    /// File name (inside the images dir) to its sum.
    pub files: BTreeMap<String, FileSum>,
}

impl Manifest {
    /// The manifest as text, ready to write.
    pub fn to_text(&self) -> String {
        let mut s = String::with_capacity(32 + self.files.len() * 48);
        s.push_str(HEADER);
        s.push('\n');
        for (name, sum) in &self.files {
            s.push_str(&format!("{} {:016x} {name}\n", sum.size, sum.xxh3));
        }
        s
    }

    /// Parses a manifest; `file_label` names it in errors. Names must be
    /// plain file names (no `/`, not `.` or `..`), so that a manifest can
    /// only point inside its own folder.
    pub fn parse(text: &[u8], file_label: &str) -> Result<Manifest, ImageError> {
        let bad = |what: String| ImageError::Unexpected {
            file: file_label.to_string(),
            what,
        };
        let text = std::str::from_utf8(text).map_err(|e| bad(format!("not UTF-8 text: {e}")))?;
        let mut lines = text.lines();
        match lines.next() {
            Some(HEADER) => {}
            Some(other) => {
                let shown: String = other.chars().take(64).collect();
                return Err(bad(format!(
                    "first line is {shown:?}, not the manifest header {HEADER:?}"
                )));
            }
            None => {
                return Err(ImageError::Empty {
                    file: file_label.to_string(),
                })
            }
        }
        let mut files = BTreeMap::new();
        for (i, line) in lines.enumerate() {
            let lineno = i + 2;
            if files.len() >= MAX_MANIFEST_FILES {
                return Err(bad(format!("lists more than {MAX_MANIFEST_FILES} files")));
            }
            let mut parts = line.splitn(3, ' ');
            let (Some(size), Some(sum), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(bad(format!("line {lineno}: not \"SIZE CHECKSUM NAME\"")));
            };
            let size: u64 = size
                .parse()
                .map_err(|_| bad(format!("line {lineno}: size {size:?} is not a number")))?;
            if sum.len() != 16 {
                return Err(bad(format!("line {lineno}: checksum is not 16 hex digits")));
            }
            let xxh3 = u64::from_str_radix(sum, 16)
                .map_err(|_| bad(format!("line {lineno}: checksum is not 16 hex digits")))?;
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                return Err(bad(format!(
                    "line {lineno}: {name:?} is not a file name inside the images dir"
                )));
            }
            if files
                .insert(name.to_string(), FileSum { size, xxh3 })
                .is_some()
            {
                return Err(bad(format!("line {lineno}: {name} is listed twice")));
            }
        }
        Ok(Manifest { files })
    }
}

/// A writer that checksums everything written through it, so a file's sum
/// is known when it is closed, without reading it again.
pub struct HashingWriter<W> {
    inner: W,
    sum: Checksum,
}

impl<W: std::io::Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            sum: Checksum::new(),
        }
    }

    /// The sum of what was written so far.
    pub fn sum(&self) -> FileSum {
        self.sum.finish()
    }

    /// The wrapped writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }
}

impl<W: std::io::Write> std::io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sum.update(&buf[..n.min(buf.len())]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

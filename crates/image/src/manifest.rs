//! The manifest of a dump: the size and checksums of every image and page
//! file, in a text file that CRIU's tools ignore (its name does not end in
//! `.img`).
//!
//! ```text
//! crust-manifest 2 xxh3-64
//! 1234 0123456789abcdef inventory.img
//! 1572864 fedcba9876543210,0123456789abcdef pages-1.img
//! ```
//!
//! One line per file: its size in bytes, the XXH3-64 checksums in hex of
//! each [`PIECE`] of it (the last piece may be shorter; an empty file has
//! one, of nothing), and its name. Pieces let a restore check each window
//! of a page file just before its pages go into a process, instead of
//! reading every page file once more beforehand. Version 1 manifests (one
//! checksum of the whole file per line) are still read. The manifest is
//! written last, under a temporary name that is renamed into place, so its
//! presence also marks the dump as complete.

use std::collections::BTreeMap;
use std::hash::Hasher;

use twox_hash::XxHash3_64;

use crate::ImageError;

/// The manifest's file name in the images dir.
pub const MANIFEST: &str = "crust-manifest.txt";

/// The first line of the manifests crust writes: format name, version,
/// algorithm.
const HEADER: &str = "crust-manifest 2 xxh3-64";

/// The first line of the manifests of older crusts (whole-file sums).
const HEADER_V1: &str = "crust-manifest 1 xxh3-64";

/// Bytes per checksummed piece of a file: small enough that the few
/// pages a restore writes before the movers do (memory premapped for
/// copy-on-write sharing) are checked without reading much else.
pub const PIECE: u64 = 1 << 20;

/// The most lines a manifest may hold: far more than any dump writes, so a
/// hostile manifest cannot make crust check (or allocate for) millions.
pub const MAX_MANIFEST_FILES: usize = 1 << 20;

/// The size and checksums of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSum {
    /// Length in bytes.
    pub size: u64,
    /// Bytes per piece: [`PIECE`], or `u64::MAX` (the whole file in one
    /// piece) for a version 1 manifest.
    pub piece_len: u64,
    /// XXH3-64 of each piece, in order.
    pub pieces: Vec<u64>,
}

impl FileSum {
    /// The sum of `data`, in one go.
    pub fn of(data: &[u8]) -> FileSum {
        let mut c = Checksum::new();
        c.update(data);
        c.finish()
    }

    /// How many pieces a file of `size` bytes has, `piece_len` bytes each.
    pub fn pieces_for(size: u64, piece_len: u64) -> u64 {
        size.div_ceil(piece_len).max(1)
    }

    /// The byte range of piece `i`.
    pub fn piece_range(&self, i: usize) -> std::ops::Range<u64> {
        let start = (i as u64).saturating_mul(self.piece_len).min(self.size);
        start..start.saturating_add(self.piece_len).min(self.size)
    }

    /// What differs between these sums (the manifest's) and `got` (the
    /// file's, in pieces of the same length), or `None` if nothing does.
    pub fn mismatch(&self, got: &FileSum) -> Option<String> {
        if got.size != self.size {
            return Some(format!(
                "size is {} bytes, the manifest says {}",
                got.size, self.size
            ));
        }
        let i = (0..self.pieces.len().max(got.pieces.len()))
            .find(|&i| self.pieces.get(i) != got.pieces.get(i))?;
        Some(self.piece_mismatch(i, got.pieces.get(i).copied().unwrap_or(0)))
    }

    /// Check `data`, which must be piece `i` whole, against its sum.
    pub fn check_piece(&self, i: usize, data: &[u8]) -> Result<(), String> {
        let range = self.piece_range(i);
        if data.len() as u64 != range.end - range.start {
            return Err(format!(
                "bytes {}-{} are not a whole checksummed piece of the manifest",
                range.start,
                range.start + data.len() as u64
            ));
        }
        let got = XxHash3_64::oneshot(data);
        match self.pieces.get(i) {
            Some(&want) if want == got => Ok(()),
            _ => Err(self.piece_mismatch(i, got)),
        }
    }

    fn piece_mismatch(&self, i: usize, got: u64) -> String {
        let want = self.pieces.get(i).copied().unwrap_or(0);
        let where_ = if self.pieces.len() == 1 {
            String::new()
        } else {
            let r = self.piece_range(i);
            format!(" in bytes {}-{}", r.start, r.end)
        };
        format!(
            "checksum mismatch{where_}: contents hash to {got:016x}, the manifest says {want:016x}"
        )
    }
}

/// A checksum computed while a file is written (or read), in order.
/// twox-hash picks AVX2 at run time where the CPU has it: 44 GB/s here
/// against 22 GB/s for SSE2 (an 8 MiB buffer in cache).
#[derive(Clone)]
pub struct Checksum {
    hasher: XxHash3_64,
    piece_len: u64,
    /// Bytes fed into the current piece.
    in_piece: u64,
    done: Vec<u64>,
    size: u64,
}

impl Default for Checksum {
    fn default() -> Self {
        Checksum::new()
    }
}

impl Checksum {
    /// An empty checksum, in pieces of [`PIECE`] bytes.
    pub fn new() -> Checksum {
        Checksum::with_pieces(PIECE)
    }

    /// An empty checksum in pieces of `piece_len` bytes (`u64::MAX`: one
    /// sum of the whole file).
    pub fn with_pieces(piece_len: u64) -> Checksum {
        Checksum {
            hasher: XxHash3_64::with_seed(0),
            piece_len: piece_len.max(1),
            in_piece: 0,
            done: Vec::new(),
            size: 0,
        }
    }

    /// Feeds the next bytes of the file.
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.in_piece == self.piece_len {
                self.done.push(self.hasher.finish());
                self.hasher = XxHash3_64::with_seed(0);
                self.in_piece = 0;
            }
            let room = (self.piece_len - self.in_piece).min(data.len() as u64) as usize;
            self.hasher.write(&data[..room]);
            self.in_piece += room as u64;
            self.size += room as u64;
            data = &data[room..];
        }
    }

    /// How many bytes were fed so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The size and checksums of everything fed.
    pub fn finish(&self) -> FileSum {
        let mut pieces = self.done.clone();
        pieces.push(self.hasher.finish());
        FileSum {
            size: self.size,
            piece_len: self.piece_len,
            pieces,
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
            s.push_str(&sum.size.to_string());
            for (i, p) in sum.pieces.iter().enumerate() {
                s.push(if i == 0 { ' ' } else { ',' });
                s.push_str(&format!("{p:016x}"));
            }
            s.push(' ');
            s.push_str(name);
            s.push('\n');
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
        let piece_len = match lines.next() {
            Some(HEADER) => PIECE,
            Some(HEADER_V1) => u64::MAX,
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
        };
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
            let want = FileSum::pieces_for(size, piece_len);
            if sum.len() as u64 != want.saturating_mul(17) - 1 {
                return Err(bad(format!(
                    "line {lineno}: not {want} checksums of 16 hex digits for {size} bytes"
                )));
            }
            let pieces = sum
                .split(',')
                .map(|p| match p.len() {
                    16 => u64::from_str_radix(p, 16).ok(),
                    _ => None,
                })
                .collect::<Option<Vec<u64>>>()
                .ok_or_else(|| bad(format!("line {lineno}: checksum is not 16 hex digits")))?;
            if name.is_empty() || name.contains('/') || name == "." || name == ".." {
                return Err(bad(format!(
                    "line {lineno}: {name:?} is not a file name inside the images dir"
                )));
            }
            if files
                .insert(
                    name.to_string(),
                    FileSum {
                        size,
                        piece_len,
                        pieces,
                    },
                )
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The sums are XXH3-64 with seed 0, whatever implementation computes
    /// them: manifests written by any crust stay checkable.
    #[test]
    fn sums_are_standard_xxh3_64() {
        assert_eq!(FileSum::of(b"").pieces, [0x2d06_8005_38d3_94c2]);
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut streamed = Checksum::new();
        for piece in data.chunks(4093) {
            streamed.update(piece);
        }
        assert_eq!(streamed.finish(), FileSum::of(&data));
        assert_eq!(streamed.size(), data.len() as u64);
    }

    /// Pieces are the sums of each PIECE of the file, the same however
    /// the bytes are fed; a file of whole pieces has no empty last one.
    #[test]
    fn pieces_split_at_piece_boundaries() {
        let piece = 1000u64;
        let data: Vec<u8> = (0..2500u32).map(|i| (i % 253) as u8).collect();
        let mut c = Checksum::with_pieces(piece);
        for part in data.chunks(333) {
            c.update(part);
        }
        let sum = c.finish();
        let each: Vec<u64> = data
            .chunks(piece as usize)
            .map(|p| FileSum::of(p).pieces[0])
            .collect();
        assert_eq!(sum.pieces, each);
        assert_eq!(sum.piece_range(2), 2000..2500);
        let mut whole = Checksum::with_pieces(piece);
        whole.update(&data[..2000]);
        assert_eq!(whole.finish().pieces.len(), 2);
        assert_eq!(FileSum::pieces_for(2000, piece), 2);
        assert_eq!(FileSum::pieces_for(0, piece), 1);
    }

    /// Version 2 text round-trips; version 1 lines are whole-file sums.
    #[test]
    fn manifests_of_both_versions_parse() {
        let mut m = Manifest::default();
        let mut c = Checksum::new();
        c.update(&vec![7u8; (PIECE + 10) as usize]);
        m.files.insert("pages-1.img".into(), c.finish());
        m.files.insert("core-1.img".into(), FileSum::of(b"abc"));
        let text = m.to_text();
        assert!(text.starts_with("crust-manifest 2 xxh3-64\n"));
        assert_eq!(Manifest::parse(text.as_bytes(), "m").unwrap(), m);
        let v1 = format!(
            "crust-manifest 1 xxh3-64\n{} {:016x} big.img\n",
            PIECE * 3,
            5u64
        );
        let got = Manifest::parse(v1.as_bytes(), "m").unwrap();
        assert_eq!(got.files["big.img"].piece_len, u64::MAX);
        assert_eq!(got.files["big.img"].pieces, [5]);
        let short = format!(
            "crust-manifest 2 xxh3-64\n{} {:016x} big.img\n",
            PIECE * 3,
            5u64
        );
        assert!(Manifest::parse(short.as_bytes(), "m").is_err());
    }
}

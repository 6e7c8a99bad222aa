//! The framing of CRIU images: magics, then entries of a little-endian
//! `u32` length followed by that many protobuf bytes, sometimes followed by
//! a raw payload.

use std::io::Write;
use std::path::Path;

use crate::{pb, ImageError, ImageKind};

/// The largest entry crust accepts or writes (64 MiB). Larger length
/// prefixes are reported as [`ImageError::EntryTooLarge`] before anything
/// is allocated.
pub const MAX_ENTRY_SIZE: usize = 64 << 20;

/// Writes one image: the magics on creation, then entries and raw payloads.
///
/// Errors are plain `std::io::Error`s; [`write_entries`] wraps them with the
/// file name.
pub struct ImageWriter<W: Write> {
    w: W,
    kind: ImageKind,
    written: u64,
}

impl<W: Write> ImageWriter<W> {
    /// Starts an image of `kind` on `w`, writing its magics (none for raw pages).
    pub fn new(mut w: W, kind: ImageKind) -> std::io::Result<Self> {
        let mut written = 0;
        if let Some(common) = kind.common_magic() {
            w.write_all(&common.to_le_bytes())?;
            written += 4;
        }
        if kind != ImageKind::Pages {
            w.write_all(&kind.magic().to_le_bytes())?;
            written += 4;
        }
        Ok(ImageWriter { w, kind, written })
    }

    /// Writes one entry: its encoded length as a little-endian `u32`, then
    /// the protobuf bytes. Fails with `InvalidInput` for entries larger than
    /// [`MAX_ENTRY_SIZE`].
    pub fn write_entry<M: prost::Message>(&mut self, msg: &M) -> std::io::Result<()> {
        let len = msg.encoded_len();
        if len > MAX_ENTRY_SIZE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{} entry of {len} bytes exceeds the {MAX_ENTRY_SIZE}-byte limit",
                    self.kind
                ),
            ));
        }
        let mut buf = Vec::with_capacity(4 + len);
        buf.extend_from_slice(&(len as u32).to_le_bytes());
        msg.encode(&mut buf).map_err(std::io::Error::other)?;
        self.w.write_all(&buf)?;
        self.written += buf.len() as u64;
        Ok(())
    }

    /// Writes raw bytes (the payload after a pipe_data_entry, page contents...).
    pub fn write_raw(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.w.write_all(data)?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// The kind of image being written.
    pub fn kind(&self) -> ImageKind {
        self.kind
    }

    /// How many bytes were written so far, magics included.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Flushes and returns the underlying writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.w.flush()?;
        Ok(self.w)
    }

    /// Returns the underlying writer without flushing it.
    pub fn into_inner(self) -> W {
        self.w
    }
}

/// Reads one image held in memory. Never panics; every failure is an
/// [`ImageError`] naming the file and the offset.
#[derive(Debug, Clone)]
pub struct ImageReader<'a> {
    data: &'a [u8],
    pos: usize,
    kind: ImageKind,
    file: String,
}

impl<'a> ImageReader<'a> {
    /// Opens `bytes` as an image of `kind`, checking its magics.
    /// `file_label` names the file in errors. An empty input is
    /// [`ImageError::Empty`], except for raw pages where it is a valid
    /// (empty) image.
    pub fn open(bytes: &'a [u8], kind: ImageKind, file_label: &str) -> Result<Self, ImageError> {
        let mut r = ImageReader {
            data: bytes,
            pos: 0,
            kind,
            file: file_label.to_string(),
        };
        if kind == ImageKind::Pages {
            return Ok(r);
        }
        if bytes.is_empty() {
            return Err(ImageError::Empty { file: r.file });
        }
        if let Some(common) = kind.common_magic() {
            let found = r.read_u32()?;
            if found != common {
                return Err(ImageError::BadMagic {
                    file: r.file,
                    expected: common,
                    found,
                });
            }
        }
        let found = r.read_u32()?;
        if found != kind.magic() {
            return Err(ImageError::BadMagic {
                file: r.file,
                expected: kind.magic(),
                found,
            });
        }
        Ok(r)
    }

    fn read_u32(&mut self) -> Result<u32, ImageError> {
        let b = self.read_raw(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The next entry's protobuf bytes, without decoding them, and the
    /// offset of its length prefix. `Ok(None)` at the clean end of the file.
    pub fn next_entry_bytes(&mut self) -> Result<Option<(usize, &'a [u8])>, ImageError> {
        if self.pos == self.data.len() {
            return Ok(None);
        }
        let start = self.pos;
        let len = self.read_u32()? as usize;
        if len > MAX_ENTRY_SIZE {
            self.pos = start;
            return Err(ImageError::EntryTooLarge {
                file: self.file.clone(),
                offset: start,
                len: len as u64,
            });
        }
        match self.read_raw(len) {
            Ok(b) => Ok(Some((start, b))),
            Err(e) => {
                self.pos = start;
                Err(e)
            }
        }
    }

    /// Decodes the next entry as `M`. `Ok(None)` at the clean end of the
    /// file; a partial length or entry is [`ImageError::Truncated`].
    pub fn next_entry<M: prost::Message + Default>(&mut self) -> Result<Option<M>, ImageError> {
        let Some((offset, bytes)) = self.next_entry_bytes()? else {
            return Ok(None);
        };
        M::decode(bytes)
            .map(Some)
            .map_err(|source| ImageError::Decode {
                file: self.file.clone(),
                offset,
                message: short_type_name::<M>(),
                source,
            })
    }

    /// Like [`ImageReader::next_entry`], but the end of the file is an
    /// [`ImageError::Unexpected`] naming `what` was expected.
    pub fn expect_entry<M: prost::Message + Default>(
        &mut self,
        what: &str,
    ) -> Result<M, ImageError> {
        match self.next_entry()? {
            Some(m) => Ok(m),
            None => Err(ImageError::Unexpected {
                file: self.file.clone(),
                what: format!("ends at offset {} where {what} was expected", self.pos),
            }),
        }
    }

    /// Takes the next `len` raw bytes (a payload after an entry). Checks the
    /// length against what is left before touching anything.
    pub fn read_raw(&mut self, len: usize) -> Result<&'a [u8], ImageError> {
        let available = self.data.len() - self.pos;
        if len > available {
            return Err(ImageError::Truncated {
                file: self.file.clone(),
                offset: self.pos,
                wanted: len as u64,
                available,
            });
        }
        let b = &self.data[self.pos..self.pos + len];
        self.pos += len;
        Ok(b)
    }

    /// Like [`ImageReader::read_raw`] with a 64-bit length from an entry field.
    pub fn read_raw_u64(&mut self, len: u64) -> Result<&'a [u8], ImageError> {
        match usize::try_from(len) {
            Ok(l) => self.read_raw(l),
            Err(_) => Err(ImageError::Truncated {
                file: self.file.clone(),
                offset: self.pos,
                wanted: len,
                available: self.remaining().len(),
            }),
        }
    }

    /// Everything not read yet (e.g. a non-chunked ghost file's contents).
    pub fn remaining(&self) -> &'a [u8] {
        &self.data[self.pos..]
    }

    /// Takes everything not read yet.
    pub fn read_rest(&mut self) -> &'a [u8] {
        let r = self.remaining();
        self.pos = self.data.len();
        r
    }

    /// Whether every byte was read.
    pub fn is_at_end(&self) -> bool {
        self.pos == self.data.len()
    }

    /// The current offset in the file.
    pub fn offset(&self) -> usize {
        self.pos
    }

    /// The kind this image was opened as.
    pub fn kind(&self) -> ImageKind {
        self.kind
    }

    /// The file label used in errors.
    pub fn file(&self) -> &str {
        &self.file
    }
}

fn short_type_name<M>() -> &'static str {
    let n = std::any::type_name::<M>();
    n.rsplit("::").next().unwrap_or(n)
}

/// Reads a whole file, mapping "not found" to [`ImageError::Missing`].
pub fn read_file(path: &Path) -> Result<Vec<u8>, ImageError> {
    std::fs::read(path).map_err(|e| ImageError::io(path.display().to_string(), e))
}

/// Decodes every entry of an in-memory image of `kind` as `M`.
pub fn decode_entries<M: prost::Message + Default>(
    bytes: &[u8],
    kind: ImageKind,
    file_label: &str,
) -> Result<Vec<M>, ImageError> {
    let mut r = ImageReader::open(bytes, kind, file_label)?;
    let mut out = Vec::new();
    while let Some(m) = r.next_entry()? {
        out.push(m);
    }
    Ok(out)
}

/// Reads every entry of the image file at `path`. Errors name the file.
pub fn read_entries<M: prost::Message + Default>(
    path: &Path,
    kind: ImageKind,
) -> Result<Vec<M>, ImageError> {
    let data = read_file(path)?;
    decode_entries(&data, kind, &path.display().to_string())
}

/// Reads the one entry of an image that must hold exactly one
/// (inventory, mm, fs, ids, stats...).
pub fn read_single<M: prost::Message + Default>(
    path: &Path,
    kind: ImageKind,
) -> Result<M, ImageError> {
    let file = path.display().to_string();
    let data = read_file(path)?;
    let mut r = ImageReader::open(&data, kind, &file)?;
    let first = r.expect_entry::<M>("an entry")?;
    if !r.is_at_end() {
        return Err(ImageError::Unexpected {
            file,
            what: format!("holds more than the one {} entry expected", kind),
        });
    }
    Ok(first)
}

/// Writes an image file of `kind` holding `entries` (no raw payloads).
pub fn write_entries<M: prost::Message>(
    path: &Path,
    kind: ImageKind,
    entries: &[M],
) -> Result<(), ImageError> {
    let file = path.display().to_string();
    let io = |e| ImageError::io(file.clone(), e);
    let f = std::fs::File::create(path).map_err(io)?;
    let mut w = ImageWriter::new(std::io::BufWriter::new(f), kind).map_err(io)?;
    for e in entries {
        w.write_entry(e).map_err(io)?;
    }
    w.finish().map_err(io)?;
    Ok(())
}

/// Reads `pagemap-N.img` (or a shmem pagemap): the head, then the entries.
pub fn read_pagemap(path: &Path) -> Result<(pb::PagemapHead, Vec<pb::PagemapEntry>), ImageError> {
    let data = read_file(path)?;
    decode_pagemap(&data, &path.display().to_string())
}

/// [`read_pagemap`] over bytes in memory; `file` names them in errors.
pub fn decode_pagemap(
    data: &[u8],
    file: &str,
) -> Result<(pb::PagemapHead, Vec<pb::PagemapEntry>), ImageError> {
    let mut r = ImageReader::open(data, ImageKind::Pagemap, file)?;
    let head = r.expect_entry::<pb::PagemapHead>("a pagemap_head")?;
    let mut entries = Vec::new();
    while let Some(e) = r.next_entry()? {
        entries.push(e);
    }
    Ok((head, entries))
}

/// Reads `pipes-data.img` or `fifo-data.img` (`kind` says which): each
/// entry with the `bytes` bytes of pipe contents that follow it.
pub fn read_pipes_data(
    path: &Path,
    kind: ImageKind,
) -> Result<Vec<(pb::PipeDataEntry, Vec<u8>)>, ImageError> {
    let data = read_file(path)?;
    decode_pipes_data(&data, kind, &path.display().to_string())
}

/// [`read_pipes_data`] over bytes in memory; `file` names them in errors.
pub fn decode_pipes_data(
    data: &[u8],
    kind: ImageKind,
    file: &str,
) -> Result<Vec<(pb::PipeDataEntry, Vec<u8>)>, ImageError> {
    let mut r = ImageReader::open(data, kind, file)?;
    let mut out = Vec::new();
    while let Some(e) = r.next_entry::<pb::PipeDataEntry>()? {
        let payload = r.read_raw(e.bytes as usize)?.to_vec();
        out.push((e, payload));
    }
    Ok(out)
}

//! The image directory: writing image files durably, reading them with
//! errors that name the file.

use std::cell::RefCell;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use crust_image::{pb, ImageError, ImageKind, ImageWriter};

use crate::error::Result;

/// A folder of image files, remembering which files it wrote so that a
/// failed dump can take them away again.
pub struct ImageDir {
    path: PathBuf,
    written: RefCell<Vec<PathBuf>>,
}

impl ImageDir {
    /// The image folder at `path`.
    pub fn new(path: &Path) -> Self {
        ImageDir {
            path: path.to_path_buf(),
            written: RefCell::new(Vec::new()),
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
        self.written.borrow_mut().push(p.clone());
        p
    }

    /// Remove every file this dump created (after a failure).
    pub fn discard(&self) {
        for p in self.written.borrow_mut().drain(..) {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Write image `name` of `kind` with `entries`, and fsync it.
    pub fn write<M: prost::Message>(
        &self,
        name: &str,
        kind: ImageKind,
        entries: &[M],
    ) -> Result<()> {
        let path = self.create(name);
        let io = |e| ImageError::io(path.display().to_string(), e);
        let f = File::create(&path).map_err(io)?;
        let mut w = ImageWriter::new(BufWriter::new(f), kind).map_err(io)?;
        for e in entries {
            w.write_entry(e).map_err(io)?;
        }
        let buf = w.finish().map_err(io)?;
        let f = buf.into_inner().map_err(|e| io(e.into_error()))?;
        f.sync_all().map_err(io)?;
        Ok(())
    }

    /// Write a pagemap image: its head naming page image `pages_id`, then
    /// the entries; fsync it.
    pub fn write_pagemap(
        &self,
        name: &str,
        pages_id: u32,
        entries: &[pb::PagemapEntry],
    ) -> Result<()> {
        let path = self.create(name);
        let io = |e| ImageError::io(path.display().to_string(), e);
        let f = File::create(&path).map_err(io)?;
        let mut w = ImageWriter::new(BufWriter::new(f), ImageKind::Pagemap).map_err(io)?;
        w.write_entry(&pb::PagemapHead { pages_id }).map_err(io)?;
        for e in entries {
            w.write_entry(e).map_err(io)?;
        }
        let f = w
            .finish()
            .map_err(io)?
            .into_inner()
            .map_err(|e| io(e.into_error()))?;
        f.sync_all().map_err(io)?;
        Ok(())
    }

    /// Read every entry of image `name`.
    pub fn read<M: prost::Message + Default>(&self, name: &str, kind: ImageKind) -> Result<Vec<M>> {
        Ok(crust_image::read_entries(&self.file(name), kind)?)
    }

    /// Read the single entry of image `name`.
    pub fn read_one<M: prost::Message + Default>(&self, name: &str, kind: ImageKind) -> Result<M> {
        Ok(crust_image::read_single(&self.file(name), kind)?)
    }

    /// fsync the folder itself, so the new names are durable.
    pub fn sync(&self) -> Result<()> {
        let d = File::open(&self.path)
            .map_err(|e| ImageError::io(self.path.display().to_string(), e))?;
        d.sync_all()
            .map_err(|e| ImageError::io(self.path.display().to_string(), e))?;
        Ok(())
    }
}

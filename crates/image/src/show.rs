//! `crit show` for crust: decode any image to JSON with prost-reflect.

use std::path::Path;
use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use serde_json::{json, Value};

use crate::framing::{read_file, ImageReader};
use crate::{magic, ImageError, ImageKind, FILE_DESCRIPTOR_SET};

/// The descriptor pool of every message in [`crate::pb`] (from
/// [`FILE_DESCRIPTOR_SET`]), for reflection.
pub fn descriptor_pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(FILE_DESCRIPTOR_SET)
            .expect("crust-image's built-in descriptor set is valid (built by build.rs)")
    })
}

/// Decodes the image file at `path` to JSON, like `crit show`:
/// `{"magic": "CORE", "entries": [...]}`. The kind is detected from the
/// magic. A pagemap gives its head then its entries; pipes-data and
/// fifo-data entries get a `"payload_len"` with the length of the raw pipe
/// contents that follow them, as do ghost-file chunks (or the ghost-file
/// head for non-chunked contents). Raw `pages-*.img` are refused with
/// [`ImageError::Unexpected`].
pub fn show(path: &Path) -> Result<Value, ImageError> {
    let data = read_file(path)?;
    show_bytes(&data, &path.display().to_string())
}

/// [`show`] over bytes already in memory; `file_label` names the file in
/// errors and, when its base name starts with `pages-`, marks it as raw.
pub fn show_bytes(data: &[u8], file_label: &str) -> Result<Value, ImageError> {
    let file = file_label.to_string();
    let base = Path::new(file_label)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(file_label);
    if base.starts_with("pages-") {
        return Err(ImageError::Unexpected {
            file,
            what: "is a raw pages image: nothing to show".into(),
        });
    }
    if data.is_empty() {
        return Err(ImageError::Empty { file });
    }
    let kind = detect_kind(data, &file)?;
    let mut r = ImageReader::open(data, kind, &file)?;
    let opts = SerializeOptions::new()
        .use_proto_field_name(true)
        .stringify_64_bit_integers(false);
    let pool = descriptor_pool();
    let desc = |name: &str| -> Result<MessageDescriptor, ImageError> {
        pool.get_message_by_name(name)
            .ok_or_else(|| ImageError::Unexpected {
                file: file.clone(),
                what: format!("no descriptor for message {name}"),
            })
    };
    let main = desc(kind.message_name().unwrap_or("pagemap_entry"))?;
    let mut entries = Vec::new();
    let mut index = 0usize;
    while let Some((offset, bytes)) = r.next_entry_bytes()? {
        let d = match kind {
            ImageKind::Pagemap | ImageKind::ShmemPagemap if index == 0 => desc("pagemap_head")?,
            ImageKind::GhostFile if index > 0 => desc("ghost_chunk_entry")?,
            _ => main.clone(),
        };
        let msg =
            DynamicMessage::decode(d.clone(), bytes).map_err(|source| ImageError::Decode {
                file: file.clone(),
                offset,
                message: static_name(kind, index),
                source,
            })?;
        let mut v = msg
            .serialize_with_options(serde_json::value::Serializer, &opts)
            .map_err(|e| ImageError::Unexpected {
                file: file.clone(),
                what: format!("cannot render entry at offset {offset}: {e}"),
            })?;
        match kind {
            ImageKind::PipesData | ImageKind::FifoData => {
                let n = u64_field(&msg, "bytes");
                r.read_raw_u64(n)?;
                set(&mut v, "payload_len", json!(n));
            }
            ImageKind::GhostFile if index == 0 => {
                let chunked = msg
                    .get_field_by_name("chunks")
                    .and_then(|f| f.as_bool())
                    .unwrap_or(false);
                if !chunked {
                    let rest = r.read_rest().len();
                    set(&mut v, "payload_len", json!(rest));
                }
            }
            ImageKind::GhostFile => {
                let n = u64_field(&msg, "len");
                r.read_raw_u64(n)?;
                set(&mut v, "payload_len", json!(n));
            }
            _ => {}
        }
        entries.push(v);
        index += 1;
    }
    Ok(json!({ "magic": kind.name(), "entries": entries }))
}

fn detect_kind(data: &[u8], file: &str) -> Result<ImageKind, ImageError> {
    let word = |at: usize| -> Result<u32, ImageError> {
        data.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| ImageError::Truncated {
                file: file.to_string(),
                offset: at,
                wanted: 4,
                available: data.len().saturating_sub(at),
            })
    };
    let first = word(0)?;
    if first == magic::INVENTORY {
        return Ok(ImageKind::Inventory);
    }
    if first != magic::IMG_COMMON && first != magic::IMG_SERVICE {
        return Err(ImageError::UnknownMagic {
            file: file.to_string(),
            found: first,
        });
    }
    let second = word(4)?;
    match ImageKind::from_magic(second) {
        Some(k) if k != ImageKind::Inventory => Ok(k),
        _ => Err(ImageError::UnknownMagic {
            file: file.to_string(),
            found: second,
        }),
    }
}

fn static_name(kind: ImageKind, index: usize) -> &'static str {
    match kind {
        ImageKind::Pagemap | ImageKind::ShmemPagemap if index == 0 => "pagemap_head",
        ImageKind::GhostFile if index > 0 => "ghost_chunk_entry",
        _ => kind.message_name().unwrap_or("entry"),
    }
}

fn u64_field(msg: &DynamicMessage, name: &str) -> u64 {
    msg.get_field_by_name(name)
        .and_then(|v| v.as_u64().or_else(|| v.as_u32().map(u64::from)))
        .unwrap_or(0)
}

fn set(v: &mut Value, key: &str, val: Value) {
    if let Value::Object(m) = v {
        m.insert(key.to_string(), val);
    }
}

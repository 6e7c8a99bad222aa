//! The typed error of every reader. Its `Display` always names the file and
//! what is wrong with it.

/// What went wrong reading or writing an image file. `file` is the label
/// the caller gave (usually the path).
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image file does not exist.
    #[error("{file}: image file is missing")]
    Missing {
        /// The file.
        file: String,
    },
    /// An I/O error other than "not found".
    #[error("{file}: {source}")]
    Io {
        /// The file.
        file: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file has no bytes at all.
    #[error("{file}: image file is empty")]
    Empty {
        /// The file.
        file: String,
    },
    /// A magic number is not the expected one.
    #[error("{file}: bad magic: expected {expected:#010x}, found {found:#010x}")]
    BadMagic {
        /// The file.
        file: String,
        /// The magic wanted here.
        expected: u32,
        /// The magic found.
        found: u32,
    },
    /// The image magic is not one crust knows (e.g. in [`crate::show`]).
    #[error("{file}: unknown image magic {found:#010x}")]
    UnknownMagic {
        /// The file.
        file: String,
        /// The magic found.
        found: u32,
    },
    /// The file ends in the middle of something.
    #[error("{file}: truncated at offset {offset}: wanted {wanted} bytes, {available} left")]
    Truncated {
        /// The file.
        file: String,
        /// Where the incomplete item starts.
        offset: usize,
        /// How many bytes it needs.
        wanted: u64,
        /// How many bytes are left.
        available: usize,
    },
    /// An entry claims a length above [`crate::MAX_ENTRY_SIZE`].
    #[error(
        "{file}: entry at offset {offset} claims {len} bytes, more than the limit of {} bytes",
        crate::MAX_ENTRY_SIZE
    )]
    EntryTooLarge {
        /// The file.
        file: String,
        /// Offset of the length prefix.
        offset: usize,
        /// The claimed length.
        len: u64,
    },
    /// An entry's bytes are not a valid protobuf message of the expected type.
    #[error("{file}: cannot decode {message} at offset {offset}: {source}")]
    Decode {
        /// The file.
        file: String,
        /// Offset of the entry's length prefix.
        offset: usize,
        /// The message type expected.
        message: &'static str,
        /// The protobuf error.
        #[source]
        source: prost::DecodeError,
    },
    /// The image is well formed but not what was asked for (wrong number
    /// of entries, a raw image where entries were expected, ...).
    #[error("{file}: {what}")]
    Unexpected {
        /// The file.
        file: String,
        /// What is wrong.
        what: String,
    },
}

impl ImageError {
    /// The file this error is about.
    pub fn file(&self) -> &str {
        match self {
            ImageError::Missing { file }
            | ImageError::Io { file, .. }
            | ImageError::Empty { file }
            | ImageError::BadMagic { file, .. }
            | ImageError::UnknownMagic { file, .. }
            | ImageError::Truncated { file, .. }
            | ImageError::EntryTooLarge { file, .. }
            | ImageError::Decode { file, .. }
            | ImageError::Unexpected { file, .. } => file,
        }
    }

    /// An I/O error on `file`, as [`ImageError::Missing`] when not found.
    pub fn io(file: impl Into<String>, source: std::io::Error) -> Self {
        let file = file.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            ImageError::Missing { file }
        } else {
            ImageError::Io { file, source }
        }
    }
}

//! Property tests (proptest) over every reader of the crate: arbitrary
//! bytes, valid images of every kind mutated (bytes changed, inserted,
//! removed, truncated, length prefixes made huge), and hostile manifests.
//! Each reader must return a typed error naming the file, never panic,
//! and never allocate more than the input holds (the entry limit is
//! checked before any allocation). Each test runs a fixed number of cases
//! (`CASES`), a few seconds in a debug build.

use proptest::prelude::*;

use crate::manifest::Manifest;
use crate::tests::samples;
use crate::{
    decode_entries, decode_pagemap, decode_pipes_data, pb, show_bytes, ImageError, ImageKind,
    ImageReader,
};

const LABEL: &str = "/images/fuzzed.img";

/// Every error must name the file it is about.
fn named<T>(r: Result<T, ImageError>) {
    if let Err(e) = r {
        assert_eq!(e.file(), LABEL);
        assert!(e.to_string().contains(LABEL), "{e}");
    }
}

/// Run every reader that applies to `kind` on `bytes`.
fn read_all_ways(bytes: &[u8], kind: ImageKind) {
    named(show_bytes(bytes, LABEL));
    named(walk(bytes, kind));
    use ImageKind::*;
    match kind {
        Pagemap | ShmemPagemap => named(decode_pagemap(bytes, LABEL)),
        PipesData | FifoData => named(decode_pipes_data(bytes, kind, LABEL)),
        Core => named(decode_entries::<pb::CoreEntry>(bytes, kind, LABEL)),
        Mm => named(decode_entries::<pb::MmEntry>(bytes, kind, LABEL)),
        Pstree => named(decode_entries::<pb::PstreeEntry>(bytes, kind, LABEL)),
        Files => named(decode_entries::<pb::FileEntry>(bytes, kind, LABEL)),
        Fdinfo => named(decode_entries::<pb::FdinfoEntry>(bytes, kind, LABEL)),
        Inventory => named(decode_entries::<pb::InventoryEntry>(bytes, kind, LABEL)),
        Fs => named(decode_entries::<pb::FsEntry>(bytes, kind, LABEL)),
        Ids => named(decode_entries::<pb::TaskKobjIdsEntry>(bytes, kind, LABEL)),
        Creds => named(decode_entries::<pb::CredsEntry>(bytes, kind, LABEL)),
        MemfdInode => named(decode_entries::<pb::MemfdInodeEntry>(bytes, kind, LABEL)),
        Seccomp => named(decode_entries::<pb::SeccompEntry>(bytes, kind, LABEL)),
        StatsDump | StatsRestore => named(decode_entries::<pb::StatsEntry>(bytes, kind, LABEL)),
        Timens => named(decode_entries::<pb::TimensEntry>(bytes, kind, LABEL)),
        _ => {}
    }
}

/// The ghost-file layout (head, then chunks with payloads) and raw reads.
fn walk(bytes: &[u8], kind: ImageKind) -> Result<(), ImageError> {
    let mut r = ImageReader::open(bytes, kind, LABEL)?;
    if kind == ImageKind::GhostFile {
        let head = r.expect_entry::<pb::GhostFileEntry>("a ghost_file_entry")?;
        if head.chunks == Some(true) {
            while let Some(c) = r.next_entry::<pb::GhostChunkEntry>()? {
                r.read_raw_u64(c.len)?;
            }
        } else {
            r.read_rest();
        }
        return Ok(());
    }
    while r.next_entry_bytes()?.is_some() {}
    Ok(())
}

/// One edit to a valid image.
#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
    /// Overwrite 4 bytes with a large little-endian u32 (a length prefix
    /// claiming gigabytes, or just under the entry limit).
    HugeWord(usize, u32),
    /// Overwrite up to 10 bytes with a maximal varint (a size field).
    HugeVarint(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Edit::Set(p, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Edit::Insert(p, b)),
        any::<usize>().prop_map(Edit::Remove),
        any::<usize>().prop_map(Edit::Truncate),
        (
            any::<usize>(),
            prop_oneof![
                Just(u32::MAX),
                Just(0x8000_0000),
                Just(crate::MAX_ENTRY_SIZE as u32),
                Just(crate::MAX_ENTRY_SIZE as u32 + 1),
                any::<u32>()
            ]
        )
            .prop_map(|(p, v)| Edit::HugeWord(p, v)),
        any::<usize>().prop_map(Edit::HugeVarint),
    ]
}

fn apply(bytes: &mut Vec<u8>, e: &Edit) {
    let at = |p: usize, len: usize| if len == 0 { 0 } else { p % len };
    match *e {
        Edit::Set(p, b) if !bytes.is_empty() => {
            let i = at(p, bytes.len());
            bytes[i] = b;
        }
        Edit::Insert(p, b) => {
            let i = at(p, bytes.len() + 1);
            bytes.insert(i, b);
        }
        Edit::Remove(p) if !bytes.is_empty() => {
            bytes.remove(at(p, bytes.len()));
        }
        Edit::Truncate(p) => bytes.truncate(at(p, bytes.len() + 1)),
        Edit::HugeWord(p, v) if bytes.len() >= 4 => {
            let i = at(p, bytes.len() - 3);
            bytes[i..i + 4].copy_from_slice(&v.to_le_bytes());
        }
        Edit::HugeVarint(p) if !bytes.is_empty() => {
            let i = at(p, bytes.len());
            let n = (bytes.len() - i).min(10);
            for (k, b) in bytes[i..i + n].iter_mut().enumerate() {
                *b = if k + 1 == n { 0x01 } else { 0xff };
            }
        }
        _ => {}
    }
}

/// Cases per property test.
const CASES: u32 = 16_000;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(CASES))]

    /// Valid images of every kind, edited: every reader survives.
    #[test]
    fn edited_images_give_typed_errors(
        which in any::<usize>(),
        edits in proptest::collection::vec(edit(), 1..6),
    ) {
        let all = samples();
        let s = &all[which % all.len()];
        let mut b = s.bytes.clone();
        for e in &edits {
            apply(&mut b, e);
        }
        read_all_ways(&b, s.kind);
    }

    /// The right magics followed by arbitrary bytes, for every kind.
    #[test]
    fn arbitrary_bodies_give_typed_errors(
        which in any::<usize>(),
        body in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let kind = ImageKind::ALL[which % ImageKind::ALL.len()];
        let mut b = Vec::new();
        if let Some(c) = kind.common_magic() {
            b.extend_from_slice(&c.to_le_bytes());
        }
        if kind != ImageKind::Pages {
            b.extend_from_slice(&kind.magic().to_le_bytes());
        }
        b.extend_from_slice(&body);
        read_all_ways(&b, kind);
    }

    /// Entirely arbitrary bytes.
    #[test]
    fn arbitrary_bytes_give_typed_errors(
        which in any::<usize>(),
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        read_all_ways(&body, ImageKind::ALL[which % ImageKind::ALL.len()]);
    }

    /// Manifests: arbitrary text and edited valid ones parse or fail with
    /// an error naming the manifest; names never leave the folder.
    #[test]
    fn manifests_parse_or_fail_cleanly(
        lines in proptest::collection::vec("[0-9a-f ,./x-]{0,40}", 0..8),
        header in prop_oneof![
            Just("crust-manifest 2 xxh3-64".to_string()),
            Just("crust-manifest 1 xxh3-64".to_string()),
            "[ -~]{0,30}",
        ],
    ) {
            let text = format!("{header}\n{}", lines.join("\n"));
        match Manifest::parse(text.as_bytes(), LABEL) {
            Ok(m) => {
                for name in m.files.keys() {
                    prop_assert!(!name.contains('/') && name != ".." && name != "." && !name.is_empty());
                }
                prop_assert_eq!(Manifest::parse(m.to_text().as_bytes(), LABEL).unwrap(), m);
            }
            Err(e) => prop_assert_eq!(e.file(), LABEL),
        }
    }
}

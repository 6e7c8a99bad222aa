//! `/proc/PID/maps` and `/proc/PID/smaps`.

use super::{dec_u32, dec_u64, hex_u32, hex_u64, ProcError, ProcFile};

/// The VmFlags of one smaps entry: the kernel's two-letter codes as a set.
///
/// Known codes are bits of crust's own numbering (the associated consts; they
/// are not the kernel's `VM_*` bit numbers, which vary by architecture and
/// version). Codes this table does not know are kept, in order, as strings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmFlags {
    bits: u64,
    unknown: Vec<String>,
}

macro_rules! vm_flag_codes {
    ($( $(#[$doc:meta])* $name:ident = $bit:expr, $code:literal; )*) => {
        impl VmFlags {
            $( $(#[$doc])* pub const $name: u64 = 1 << $bit; )*

            /// Every known code with its bit, in kernel print order.
            pub const CODES: &'static [(&'static str, u64)] = &[ $( ($code, 1 << $bit), )* ];
        }
    };
}

vm_flag_codes! {
    /// `rd`: readable.
    RD = 0, "rd";
    /// `wr`: writeable.
    WR = 1, "wr";
    /// `ex`: executable.
    EX = 2, "ex";
    /// `sh`: shared.
    SH = 3, "sh";
    /// `mr`: may read.
    MR = 4, "mr";
    /// `mw`: may write.
    MW = 5, "mw";
    /// `me`: may execute.
    ME = 6, "me";
    /// `ms`: may share.
    MS = 7, "ms";
    /// `gd`: stack segment grows down.
    GD = 8, "gd";
    /// `pf`: pure PFN range.
    PF = 9, "pf";
    /// `dw`: disabled write to the mapped file (kernels before 5.15).
    DW = 10, "dw";
    /// `lo`: pages are locked in memory.
    LO = 11, "lo";
    /// `io`: memory mapped I/O area.
    IO = 12, "io";
    /// `sr`: sequential read advice (MADV_SEQUENTIAL).
    SR = 13, "sr";
    /// `rr`: random read advice (MADV_RANDOM).
    RR = 14, "rr";
    /// `dc`: do not copy area on fork (MADV_DONTFORK).
    DC = 15, "dc";
    /// `de`: do not expand area on remapping.
    DE = 16, "de";
    /// `lf`: lock on fault (MLOCK_ONFAULT).
    LF = 17, "lf";
    /// `ac`: area is accountable.
    AC = 18, "ac";
    /// `nr`: swap space is not reserved for the area (MAP_NORESERVE).
    NR = 19, "nr";
    /// `ht`: area uses huge TLB pages (hugetlbfs).
    HT = 20, "ht";
    /// `sf`: synchronous page faults (MAP_SYNC).
    SF = 21, "sf";
    /// `nl`: non-linear mapping (kernels before 4.0).
    NL = 22, "nl";
    /// `ar`: architecture-specific flag (VM_ARCH_1: PAT on x86).
    AR = 23, "ar";
    /// `wf`: wipe on fork (MADV_WIPEONFORK).
    WF = 24, "wf";
    /// `dd`: do not include area in a core dump (MADV_DONTDUMP).
    DD = 25, "dd";
    /// `bt`: arm64 BTI guarded page.
    BT = 26, "bt";
    /// `sd`: soft-dirty.
    SD = 27, "sd";
    /// `mm`: mixed map area.
    MM = 28, "mm";
    /// `hg`: huge page advice (MADV_HUGEPAGE).
    HG = 29, "hg";
    /// `nh`: no huge page advice (MADV_NOHUGEPAGE).
    NH = 30, "nh";
    /// `mg`: mergeable advice (MADV_MERGEABLE, KSM).
    MG = 31, "mg";
    /// `um`: userfaultfd missing-page tracking.
    UM = 32, "um";
    /// `uw`: userfaultfd write-protect tracking.
    UW = 33, "uw";
    /// `mt`: arm64 MTE allocation tags enabled.
    MT = 34, "mt";
    /// `ui`: userfaultfd minor-fault tracking.
    UI = 35, "ui";
    /// `ss`: shadow stack.
    SS = 36, "ss";
    /// `dp`: always lazily freeable (droppable) mapping.
    DP = 37, "dp";
    /// `sl`: sealed (mseal).
    SL = 38, "sl";
    /// `mp`: MPX bounds table (kernels before 5.6).
    MP = 39, "mp";
    /// `gu`: may contain guard regions (newer kernels).
    GU = 40, "gu";
}

impl VmFlags {
    /// An empty set.
    pub const fn empty() -> Self {
        VmFlags {
            bits: 0,
            unknown: Vec::new(),
        }
    }

    /// Parses the value of a `VmFlags:` line (codes separated by spaces).
    /// Never fails: unknown codes are kept.
    pub fn parse(s: &str) -> Self {
        let mut flags = VmFlags::empty();
        for code in s.split_ascii_whitespace() {
            flags.insert_code(code);
        }
        flags
    }

    /// Adds one code (known or not).
    pub fn insert_code(&mut self, code: &str) {
        match Self::bit_of(code) {
            Some(bit) => self.bits |= bit,
            None => {
                if !self.unknown.iter().any(|c| c == code) {
                    self.unknown.push(code.to_string());
                }
            }
        }
    }

    /// The bit (one of the associated consts) of a known code.
    pub fn bit_of(code: &str) -> Option<u64> {
        // Every code is two letters: compared as two bytes, not as strings
        // (smaps of a process of 200 threads has some 17 000 codes).
        let &[a, b] = code.as_bytes() else {
            return None;
        };
        Self::CODES
            .iter()
            .find(|(c, _)| c.as_bytes() == [a, b])
            .map(|&(_, bit)| bit)
    }

    /// True if the set holds `code` (known or unknown), e.g. `has("dd")`.
    pub fn has(&self, code: &str) -> bool {
        match Self::bit_of(code) {
            Some(bit) => self.bits & bit != 0,
            None => self.unknown.iter().any(|c| c == code),
        }
    }

    /// True if every bit of `mask` (associated consts or-ed) is set.
    pub fn contains(&self, mask: u64) -> bool {
        self.bits & mask == mask
    }

    /// The known codes as bits (crust's numbering, see the consts).
    pub fn bits(&self) -> u64 {
        self.bits
    }

    /// The codes this table does not know, in the order first seen.
    pub fn unknown(&self) -> &[String] {
        &self.unknown
    }

    /// True if no code at all is set.
    pub fn is_empty(&self) -> bool {
        self.bits == 0 && self.unknown.is_empty()
    }

    /// Every code in the set: known ones in kernel order, then unknown ones.
    pub fn codes(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Self::CODES
            .iter()
            .filter(|(_, bit)| self.bits & bit != 0)
            .map(|&(c, _)| c)
            .collect();
        out.extend(self.unknown.iter().map(String::as_str));
        out
    }
}

/// What a VMA maps, from the last column of maps/smaps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmaPath {
    /// No name: private or shared anonymous memory (shared anonymous memory
    /// shows as `/dev/zero (deleted)`, a [`VmaPath::File`]).
    Anonymous,
    /// A file, as the kernel printed its path (a newline in the name shows
    /// as `\012`), with a `" (deleted)"` suffix stripped into `deleted`.
    /// Also non-absolute file names such as `anon_inode:[perf_event]`.
    File {
        /// The path without the `" (deleted)"` suffix.
        path: String,
        /// The kernel marked the file as deleted (unlinked).
        deleted: bool,
    },
    /// `[heap]`.
    Heap,
    /// `[stack]`.
    Stack,
    /// `[vdso]`.
    Vdso,
    /// `[vvar]`.
    Vvar,
    /// `[vvar_vclock]`.
    VvarVclock,
    /// `[vsyscall]`.
    Vsyscall,
    /// Another bracketed name, brackets included: `[anon:xyz]`,
    /// `[anon_shmem:xyz]`, `[uprobes]`, `[stack:TID]`, ...
    Other(String),
}

impl VmaPath {
    /// Classifies the name column of a maps line (already without padding).
    pub fn from_name(name: &str) -> Self {
        match name {
            "" => VmaPath::Anonymous,
            "[heap]" => VmaPath::Heap,
            "[stack]" => VmaPath::Stack,
            "[vdso]" => VmaPath::Vdso,
            "[vvar]" => VmaPath::Vvar,
            "[vvar_vclock]" => VmaPath::VvarVclock,
            "[vsyscall]" => VmaPath::Vsyscall,
            n if n.starts_with('[') && n.ends_with(']') => VmaPath::Other(n.to_string()),
            n => match n.strip_suffix(" (deleted)") {
                Some(p) => VmaPath::File {
                    path: p.to_string(),
                    deleted: true,
                },
                None => VmaPath::File {
                    path: n.to_string(),
                    deleted: false,
                },
            },
        }
    }

    /// The file's path, if this is a file mapping.
    pub fn file_path(&self) -> Option<&str> {
        match self {
            VmaPath::File { path, .. } => Some(path),
            _ => None,
        }
    }

    /// True for the kernel's vdso area: `[vdso]`, `[vvar]`, `[vvar_vclock]`.
    pub fn is_vdso_area(&self) -> bool {
        matches!(self, VmaPath::Vdso | VmaPath::Vvar | VmaPath::VvarVclock)
    }
}

/// One VMA from maps or smaps. The size fields (KiB) and `vm_flags` are only
/// filled from smaps; from maps they are zero / empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vma {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `r` permission.
    pub read: bool,
    /// `w` permission.
    pub write: bool,
    /// `x` permission.
    pub exec: bool,
    /// `s` (shared) rather than `p` (private).
    pub shared: bool,
    /// Offset into the file (bytes).
    pub offset: u64,
    /// Device major number of the file.
    pub dev_major: u32,
    /// Device minor number of the file.
    pub dev_minor: u32,
    /// Inode number of the file (0 for anonymous memory).
    pub inode: u64,
    /// What is mapped.
    pub path: VmaPath,
    /// smaps `VmFlags:`.
    pub vm_flags: VmFlags,
    /// smaps `Size:` (KiB).
    pub size_kib: u64,
    /// smaps `KernelPageSize:` (KiB).
    pub kernel_page_size_kib: u64,
    /// smaps `MMUPageSize:` (KiB).
    pub mmu_page_size_kib: u64,
    /// smaps `Rss:` (KiB).
    pub rss_kib: u64,
    /// smaps `Pss:` (KiB).
    pub pss_kib: u64,
    /// smaps `Pss_Dirty:` (KiB).
    pub pss_dirty_kib: u64,
    /// smaps `Shared_Clean:` (KiB).
    pub shared_clean_kib: u64,
    /// smaps `Shared_Dirty:` (KiB).
    pub shared_dirty_kib: u64,
    /// smaps `Private_Clean:` (KiB).
    pub private_clean_kib: u64,
    /// smaps `Private_Dirty:` (KiB).
    pub private_dirty_kib: u64,
    /// smaps `Referenced:` (KiB).
    pub referenced_kib: u64,
    /// smaps `Anonymous:` (KiB).
    pub anonymous_kib: u64,
    /// smaps `KSM:` (KiB).
    pub ksm_kib: u64,
    /// smaps `LazyFree:` (KiB).
    pub lazy_free_kib: u64,
    /// smaps `AnonHugePages:` (KiB).
    pub anon_huge_pages_kib: u64,
    /// smaps `ShmemPmdMapped:` (KiB).
    pub shmem_pmd_mapped_kib: u64,
    /// smaps `FilePmdMapped:` (KiB).
    pub file_pmd_mapped_kib: u64,
    /// smaps `Shared_Hugetlb:` (KiB).
    pub shared_hugetlb_kib: u64,
    /// smaps `Private_Hugetlb:` (KiB).
    pub private_hugetlb_kib: u64,
    /// smaps `Swap:` (KiB).
    pub swap_kib: u64,
    /// smaps `SwapPss:` (KiB).
    pub swap_pss_kib: u64,
    /// smaps `Locked:` (KiB).
    pub locked_kib: u64,
    /// smaps `THPeligible:` is 1.
    pub thp_eligible: bool,
    /// smaps `ProtectionKey:` (only where the kernel prints it).
    pub protection_key: Option<u32>,
}

impl Vma {
    /// Length in bytes (`end - start`).
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// True if the VMA is empty (never the case for a kernel VMA).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True if `addr` is inside the VMA.
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }

    fn new_from_header(
        start: u64,
        end: u64,
        perms: [bool; 4],
        offset: u64,
        dev: (u32, u32),
        inode: u64,
        path: VmaPath,
    ) -> Self {
        Vma {
            start,
            end,
            read: perms[0],
            write: perms[1],
            exec: perms[2],
            shared: perms[3],
            offset,
            dev_major: dev.0,
            dev_minor: dev.1,
            inode,
            path,
            vm_flags: VmFlags::empty(),
            size_kib: 0,
            kernel_page_size_kib: 0,
            mmu_page_size_kib: 0,
            rss_kib: 0,
            pss_kib: 0,
            pss_dirty_kib: 0,
            shared_clean_kib: 0,
            shared_dirty_kib: 0,
            private_clean_kib: 0,
            private_dirty_kib: 0,
            referenced_kib: 0,
            anonymous_kib: 0,
            ksm_kib: 0,
            lazy_free_kib: 0,
            anon_huge_pages_kib: 0,
            shmem_pmd_mapped_kib: 0,
            file_pmd_mapped_kib: 0,
            shared_hugetlb_kib: 0,
            private_hugetlb_kib: 0,
            swap_kib: 0,
            swap_pss_kib: 0,
            locked_kib: 0,
            thp_eligible: false,
            protection_key: None,
        }
    }
}

/// The kernel pads the name column to this many bytes (64-bit: 25 + 6 * 8 - 1)
/// and then prints one more space.
const NAME_COLUMN_PAD: usize = 72;

/// Splits the next space-separated token off `s` (exactly one separator).
/// Tokens are short: a byte loop, not a searcher.
fn next_token(s: &str) -> (&str, &str) {
    match s.bytes().position(|b| b == b' ') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, ""),
    }
}

/// `s` split around its first `sep`: like `str::split_once`, for the short
/// fields of a header line.
fn split_at_byte(s: &str, sep: u8) -> Option<(&str, &str)> {
    let i = s.bytes().position(|b| b == sep)?;
    Some((&s[..i], &s[i + 1..]))
}

/// The lines of `text` as `str::lines` gives them, found with one SIMD
/// scan of the whole text rather than a search per line.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut from = 0;
    memchr::memchr_iter(b'\n', text.as_bytes())
        .map(Some)
        .chain(std::iter::once(None))
        .filter_map(move |nl| {
            let end = nl.unwrap_or(text.len());
            let line = text.get(from..end)?;
            from = end + 1;
            // A last line without a newline, not the empty rest after one.
            (nl.is_some() || !line.is_empty()).then(|| line.strip_suffix('\r').unwrap_or(line))
        })
}

/// Parses one maps header line: `start-end perms offset maj:min inode   name`.
fn parse_header(file: ProcFile, lineno: usize, line: &str) -> Result<Vma, ProcError> {
    let err = |what: String| ProcError::at(file, lineno, what);
    let (range, rest) = next_token(line);
    let (start, end) = split_at_byte(range, b'-')
        .and_then(|(a, b)| Some((hex_u64(a)?, hex_u64(b)?)))
        .ok_or_else(|| err(format!("bad address range {range:?}")))?;
    if end < start {
        return Err(err(format!(
            "address range {range:?} ends before it starts"
        )));
    }
    let (perms_s, rest) = next_token(rest);
    let perms = parse_perms(perms_s).ok_or_else(|| err(format!("bad permissions {perms_s:?}")))?;
    let (off_s, rest) = next_token(rest);
    let offset = hex_u64(off_s).ok_or_else(|| err(format!("bad offset {off_s:?}")))?;
    let (dev_s, rest) = next_token(rest);
    let dev = split_at_byte(dev_s, b':')
        .and_then(|(a, b)| Some((hex_u32(a)?, hex_u32(b)?)))
        .ok_or_else(|| err(format!("bad device {dev_s:?}")))?;
    let (ino_s, rest) = next_token(rest);
    let inode = dec_u64(ino_s).ok_or_else(|| err(format!("bad inode {ino_s:?}")))?;
    // Bytes of the line before `rest` (the prefix including the space after
    // the inode); the kernel pads from there to the name column.
    let prefix_len = line.len() - rest.len();
    let want_pad = NAME_COLUMN_PAD.saturating_sub(prefix_len) + 1;
    let name = if rest.len() >= want_pad && rest.as_bytes()[..want_pad].iter().all(|&b| b == b' ') {
        &rest[want_pad..]
    } else {
        // Not the kernel's exact padding (hand-written or trimmed text).
        rest.trim_start_matches(' ')
    };
    Ok(Vma::new_from_header(
        start,
        end,
        perms,
        offset,
        dev,
        inode,
        VmaPath::from_name(name),
    ))
}

fn parse_perms(s: &str) -> Option<[bool; 4]> {
    let b = s.as_bytes();
    if b.len() != 4 {
        return None;
    }
    let flag = |c: u8, yes: u8| match c {
        c if c == yes => Some(true),
        b'-' => Some(false),
        _ => None,
    };
    let shared = match b[3] {
        b's' => true,
        b'p' => false,
        _ => return None,
    };
    Some([
        flag(b[0], b'r')?,
        flag(b[1], b'w')?,
        flag(b[2], b'x')?,
        shared,
    ])
}

/// Parses `/proc/PID/maps`: one [`Vma`] per line, smaps fields left empty.
pub fn parse_maps(text: &str) -> Result<Vec<Vma>, ProcError> {
    let mut out = Vec::new();
    for (i, line) in lines(text).enumerate() {
        if line.is_empty() {
            continue;
        }
        out.push(parse_header(ProcFile::Maps, i + 1, line)?);
    }
    Ok(out)
}

/// Parses `/proc/PID/smaps`: a header line per VMA followed by `Key: value`
/// lines. Unknown keys are ignored; a known key with a bad value is an error.
pub fn parse_smaps(text: &str) -> Result<Vec<Vma>, ProcError> {
    let file = ProcFile::Smaps;
    let mut out: Vec<Vma> = Vec::new();
    for (i, line) in lines(text).enumerate() {
        let lineno = i + 1;
        if line.is_empty() {
            continue;
        }
        let (first, rest) = next_token(line);
        let Some(key) = first.strip_suffix(':') else {
            out.push(parse_header(file, lineno, line)?);
            continue;
        };
        let value = rest.trim_ascii();
        let Some(vma) = out.last_mut() else {
            return Err(ProcError::at(
                file,
                lineno,
                format!("field {key:?} before any VMA header"),
            ));
        };
        apply_smaps_field(vma, key, value)
            .map_err(|what| ProcError::at(file, lineno, format!("{key}: {what}")))?;
    }
    Ok(out)
}

fn kib(value: &str) -> Result<u64, String> {
    // The kernel prints "%8lu kB": after the trim, "N kB".
    let quick = value.strip_suffix(" kB").and_then(dec_u64);
    quick.map(Ok).unwrap_or_else(|| {
        let mut it = value.split_ascii_whitespace();
        let n = it.next().and_then(dec_u64);
        match (n, it.next(), it.next()) {
            (Some(n), Some("kB"), None) => Ok(n),
            _ => Err(format!("expected \"N kB\", got {value:?}")),
        }
    })
}

fn apply_smaps_field(vma: &mut Vma, key: &str, value: &str) -> Result<(), String> {
    let slot = match key {
        "VmFlags" => {
            vma.vm_flags = VmFlags::parse(value);
            return Ok(());
        }
        "THPeligible" => {
            vma.thp_eligible = match value {
                "0" => false,
                "1" => true,
                _ => return Err(format!("expected 0 or 1, got {value:?}")),
            };
            return Ok(());
        }
        "ProtectionKey" => {
            vma.protection_key =
                Some(dec_u32(value).ok_or_else(|| format!("bad number {value:?}"))?);
            return Ok(());
        }
        "Size" => &mut vma.size_kib,
        "KernelPageSize" => &mut vma.kernel_page_size_kib,
        "MMUPageSize" => &mut vma.mmu_page_size_kib,
        "Rss" => &mut vma.rss_kib,
        "Pss" => &mut vma.pss_kib,
        "Pss_Dirty" => &mut vma.pss_dirty_kib,
        "Shared_Clean" => &mut vma.shared_clean_kib,
        "Shared_Dirty" => &mut vma.shared_dirty_kib,
        "Private_Clean" => &mut vma.private_clean_kib,
        "Private_Dirty" => &mut vma.private_dirty_kib,
        "Referenced" => &mut vma.referenced_kib,
        "Anonymous" => &mut vma.anonymous_kib,
        "KSM" => &mut vma.ksm_kib,
        "LazyFree" => &mut vma.lazy_free_kib,
        "AnonHugePages" => &mut vma.anon_huge_pages_kib,
        "ShmemPmdMapped" => &mut vma.shmem_pmd_mapped_kib,
        "FilePmdMapped" => &mut vma.file_pmd_mapped_kib,
        "Shared_Hugetlb" => &mut vma.shared_hugetlb_kib,
        "Private_Hugetlb" => &mut vma.private_hugetlb_kib,
        "Swap" => &mut vma.swap_kib,
        "SwapPss" => &mut vma.swap_pss_kib,
        "Locked" => &mut vma.locked_kib,
        _ => return Ok(()),
    };
    *slot = kib(value)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = include_str!("testdata/smaps.txt");
    const MAPS: &str = include_str!("testdata/maps.txt");

    #[test]
    fn lines_split_as_str_lines_does() {
        for text in [
            "",
            "\n",
            "\n\n",
            "a",
            "a\n",
            "a\nb",
            "a\r\nb\r\n",
            "\r\n",
            "a\n\nb\n",
            "é\nü",
        ] {
            assert_eq!(
                lines(text).collect::<Vec<_>>(),
                text.lines().collect::<Vec<_>>(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn numbers_parse_in_one_pass_and_refuse_overflow() {
        use crate::procfs::{dec_u64, hex_u64};
        assert_eq!(hex_u64("ffffffffffffffff"), Some(u64::MAX));
        assert_eq!(hex_u64("7fFf0a"), Some(0x7fff0a));
        assert_eq!(hex_u64("10000000000000000"), None);
        assert_eq!(dec_u64("18446744073709551615"), Some(u64::MAX));
        assert_eq!(dec_u64("18446744073709551616"), None);
        for bad in ["", "+1", "-1", "1 ", "0x1", "١"] {
            assert_eq!(dec_u64(bad), None, "{bad:?}");
            assert_eq!(hex_u64(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn procfs_smaps_sample() {
        let vmas = parse_smaps(SMAPS).unwrap();
        assert!(vmas.len() > 10);
        let first = &vmas[0];
        assert_eq!(
            first.path,
            VmaPath::File {
                path: "/usr/bin/cat".into(),
                deleted: false
            }
        );
        assert!(first.read && !first.write && !first.shared);
        assert_eq!(first.dev_major, 0xfe);
        assert!(first.vm_flags.has("rd") && first.vm_flags.has("mr"));
        assert!(first
            .vm_flags
            .contains(VmFlags::RD | VmFlags::MR | VmFlags::MW));
        assert!(!first.vm_flags.has("wr"));
        assert_eq!(first.size_kib * 1024, first.len());
        assert_eq!(first.kernel_page_size_kib, 4);
        for p in [
            VmaPath::Heap,
            VmaPath::Stack,
            VmaPath::Vdso,
            VmaPath::Vvar,
            VmaPath::VvarVclock,
        ] {
            assert!(vmas.iter().any(|v| v.path == p), "{p:?} missing");
        }
        assert!(vmas.iter().any(|v| v.path == VmaPath::Anonymous));
        let stack = vmas.iter().find(|v| v.path == VmaPath::Stack).unwrap();
        assert!(stack.vm_flags.has("gd") && stack.write && stack.anonymous_kib > 0);
    }

    #[test]
    fn procfs_maps_sample_matches_smaps_headers() {
        let m = parse_maps(MAPS).unwrap();
        assert!(m.iter().any(|v| v.path == VmaPath::VvarVclock));
        assert!(m.iter().any(|v| v.shared));
        assert!(m.iter().all(|v| v.vm_flags.is_empty() && v.rss_kib == 0));
    }

    #[test]
    fn procfs_maps_paths_with_spaces_and_deleted() {
        let text = "\
7f0000000000-7f0000001000 rw-s 00000000 00:01 1234                       /dev/zero (deleted)
7f0000001000-7f0000002000 r--p 00001000 fe:00 99                         /tmp/a dir/with  two spaces
7f0000002000-7f0000003000 r--p 00000000 fe:00 98                         /tmp/x (deleted) (deleted)
7f0000003000-7f0000004000 r--p 00000000 00:00 0                          [anon:my name]
7f0000004000-7f0000005000 r--p 00000000 00:00 0                          [vvar_vclock]
7f0000005000-7f0000006000 r-xp 00000000 00:00 0                          [vsyscall]
7f0000006000-7f0000007000 ---p 00000000 00:00 0 
7f0000007000-7f0000008000 r--p 00000000 fe:00 97                           leading spaces
7f0000008000-7f0000009000 r--p 00000000 fe:00 96 /trimmed by hand
ffffffffff600000-ffffffffff601000 --xp 00000000 103:1f 123456789012345678 /long/prefix
";
        let m = parse_maps(text).unwrap();
        let file = |p: &str, d: bool| VmaPath::File {
            path: p.into(),
            deleted: d,
        };
        assert_eq!(m[0].path, file("/dev/zero", true));
        assert!(m[0].shared && m[0].write);
        assert_eq!(m[1].path, file("/tmp/a dir/with  two spaces", false));
        assert_eq!(m[1].offset, 0x1000);
        assert_eq!(m[2].path, file("/tmp/x (deleted)", true));
        assert_eq!(m[3].path, VmaPath::Other("[anon:my name]".into()));
        assert_eq!(m[4].path, VmaPath::VvarVclock);
        assert!(m[4].path.is_vdso_area());
        assert_eq!(m[5].path, VmaPath::Vsyscall);
        assert_eq!(m[6].path, VmaPath::Anonymous);
        assert!(!m[6].read && !m[6].write && !m[6].exec);
        assert_eq!(m[7].path, file("  leading spaces", false));
        assert_eq!(m[8].path, file("/trimmed by hand", false));
        assert_eq!((m[9].dev_major, m[9].dev_minor), (0x103, 0x1f));
        assert_eq!(m[9].inode, 123456789012345678);
        assert_eq!(m[9].path, file("/long/prefix", false));
        assert_eq!(m[9].end, 0xffffffffff601000);
    }

    #[test]
    fn procfs_smaps_edge_cases() {
        assert_eq!(parse_smaps("").unwrap(), vec![]);
        assert_eq!(parse_maps("").unwrap(), vec![]);
        let e = parse_smaps("Rss: 4 kB\n").unwrap_err();
        assert_eq!(e.file, ProcFile::Smaps);
        assert_eq!(e.line, Some(1));
        let text = "1000-2000 rw-p 00000000 00:00 0 \nRss:  8 kB\nNewField:  whatever\nVmFlags: rd wr zz ?? hg\nProtectionKey:  3\n";
        let v = parse_smaps(text).unwrap();
        assert_eq!(v[0].rss_kib, 8);
        assert!(v[0].vm_flags.has("zz") && v[0].vm_flags.has("??") && v[0].vm_flags.has("hg"));
        assert_eq!(v[0].vm_flags.codes(), vec!["rd", "wr", "hg", "zz", "??"]);
        assert_eq!(v[0].protection_key, Some(3));
        let e = parse_smaps("1000-2000 rw-p 00000000 00:00 0 \nRss:  x kB\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.to_string().contains("Rss"), "{e}");
        for bad in [
            "1000 rw-p 00000000 00:00 0",
            "1000-2000 rw-q 00000000 00:00 0",
            "1000-2000 rw-p 0000000g 00:00 0",
            "1000-2000 rw-p 00000000 0000 0",
            "1000-2000 rw-p 00000000 00:00 -1",
            "2000-1000 rw-p 00000000 00:00 0",
            "1000-2000 rwxp",
        ] {
            let e = parse_maps(bad).unwrap_err();
            assert_eq!(e.line, Some(1), "{bad}");
        }
    }

    #[test]
    fn procfs_vmflags_table_is_consistent() {
        let mut seen = 0u64;
        for &(code, bit) in VmFlags::CODES {
            assert_eq!(code.len(), 2);
            assert_eq!(bit.count_ones(), 1);
            assert_eq!(seen & bit, 0, "{code} reuses a bit");
            seen |= bit;
            assert!(VmFlags::parse(code).has(code));
            assert!(VmFlags::parse(code).unknown().is_empty());
        }
    }
}

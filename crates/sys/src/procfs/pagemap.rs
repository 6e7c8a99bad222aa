//! `/proc/PID/pagemap` entries.

use super::{ProcError, ProcFile};

/// Bytes per pagemap entry.
pub const PAGEMAP_ENTRY_SIZE: usize = 8;

/// One decoded `/proc/PID/pagemap` entry (one virtual page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagemapEntry {
    /// The raw 64-bit entry.
    pub raw: u64,
    /// Bit 63: the page is present in RAM.
    pub present: bool,
    /// Bit 62: the page is in swap.
    pub swapped: bool,
    /// Bit 61: the page is a file page or shared anonymous memory.
    pub file_or_shared_anon: bool,
    /// Bit 58: the page is in a guard region (MADV_GUARD_INSTALL; newer kernels).
    pub guard_region: bool,
    /// Bit 57: the page is userfaultfd write-protected.
    pub uffd_wp: bool,
    /// Bit 56: the page is mapped exclusively (by this process only).
    pub exclusive: bool,
    /// Bit 55: the page is soft-dirty.
    pub soft_dirty: bool,
    /// Bits 0-54 when present: the page frame number (0 without
    /// CAP_SYS_ADMIN).
    pub pfn: Option<u64>,
    /// Bits 0-4 when swapped: the swap type (swap device).
    pub swap_type: Option<u8>,
    /// Bits 5-54 when swapped: the offset in the swap device.
    pub swap_offset: Option<u64>,
}

const PFN_MASK: u64 = (1 << 55) - 1;

impl PagemapEntry {
    /// Decodes one raw entry.
    pub fn from_u64(raw: u64) -> Self {
        let bit = |n: u32| raw & (1u64 << n) != 0;
        let present = bit(63);
        let swapped = bit(62);
        PagemapEntry {
            raw,
            present,
            swapped,
            file_or_shared_anon: bit(61),
            guard_region: bit(58),
            uffd_wp: bit(57),
            exclusive: bit(56),
            soft_dirty: bit(55),
            pfn: present.then_some(raw & PFN_MASK),
            swap_type: (swapped && !present).then_some((raw & 0x1f) as u8),
            swap_offset: (swapped && !present).then_some((raw & PFN_MASK) >> 5),
        }
    }

    /// True if the page has contents to dump: present or swapped.
    pub fn has_contents(&self) -> bool {
        self.present || self.swapped
    }
}

/// Parses a buffer of native-endian pagemap entries (as read from
/// `/proc/PID/pagemap`); its length must be a multiple of 8.
pub fn parse_pagemap(bytes: &[u8]) -> Result<Vec<PagemapEntry>, ProcError> {
    if !bytes.len().is_multiple_of(PAGEMAP_ENTRY_SIZE) {
        return Err(ProcError::whole(
            ProcFile::Pagemap,
            format!(
                "length {} is not a multiple of {PAGEMAP_ENTRY_SIZE}",
                bytes.len()
            ),
        ));
    }
    Ok(bytes
        .chunks_exact(PAGEMAP_ENTRY_SIZE)
        .map(|c| {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            PagemapEntry::from_u64(u64::from_ne_bytes(w))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn procfs_pagemap_bits() {
        let e = PagemapEntry::from_u64(0);
        assert!(!e.present && !e.swapped && e.pfn.is_none() && !e.has_contents());
        let e = PagemapEntry::from_u64((1 << 63) | (1 << 61) | (1 << 56) | 0x1234);
        assert!(e.present && e.file_or_shared_anon && e.exclusive && !e.soft_dirty);
        assert_eq!(e.pfn, Some(0x1234));
        assert_eq!(e.swap_type, None);
        let e = PagemapEntry::from_u64((1 << 62) | (1 << 55) | (1 << 57) | (0xabc << 5) | 3);
        assert!(e.swapped && e.soft_dirty && e.uffd_wp && !e.present && e.has_contents());
        assert_eq!(
            (e.swap_type, e.swap_offset, e.pfn),
            (Some(3), Some(0xabc), None)
        );
        let e = PagemapEntry::from_u64(1 << 58);
        assert!(e.guard_region);
        let e = PagemapEntry::from_u64(u64::MAX);
        assert_eq!(e.pfn, Some((1 << 55) - 1));
    }

    #[test]
    fn procfs_pagemap_buffer() {
        let mut b = Vec::new();
        b.extend_from_slice(&(1u64 << 63 | 7).to_ne_bytes());
        b.extend_from_slice(&0u64.to_ne_bytes());
        let v = parse_pagemap(&b).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].pfn, Some(7));
        assert!(!v[1].present);
        assert!(parse_pagemap(&b[..9]).is_err());
        assert_eq!(parse_pagemap(&[]).unwrap(), vec![]);
    }
}

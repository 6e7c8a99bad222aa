//! `/proc/PID/auxv`.

use super::{ProcError, ProcFile};

/// Parses `/proc/PID/auxv`: native-endian (u64 type, u64 value) pairs up to,
/// not including, the `AT_NULL` terminator. An empty file (kernel threads,
/// zombies) gives no pairs; a length that is not a whole number of pairs, or
/// a non-empty file without `AT_NULL`, is an error.
pub fn parse_auxv(bytes: &[u8]) -> Result<Vec<(u64, u64)>, ProcError> {
    let file = ProcFile::Auxv;
    if !bytes.len().is_multiple_of(16) {
        return Err(ProcError::whole(
            file,
            format!(
                "length {} is not a multiple of 16 (a (type, value) pair of u64)",
                bytes.len()
            ),
        ));
    }
    let word = |b: &[u8]| {
        let mut w = [0u8; 8];
        w.copy_from_slice(b);
        u64::from_ne_bytes(w)
    };
    let mut out = Vec::new();
    for pair in bytes.chunks_exact(16) {
        let (key, value) = (word(&pair[..8]), word(&pair[8..]));
        if key == libc::AT_NULL {
            return Ok(out);
        }
        out.push((key, value));
    }
    if out.is_empty() {
        Ok(out)
    } else {
        Err(ProcError::whole(
            file,
            format!("no AT_NULL terminator after {} pairs", out.len()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = include_bytes!("testdata/auxv.bin");

    #[test]
    fn procfs_auxv_sample() {
        let a = parse_auxv(SAMPLE).unwrap();
        assert!(a.len() > 10);
        assert_eq!(a.len() * 16 + 16, SAMPLE.len());
        let get = |k: u64| a.iter().find(|(t, _)| *t == k).map(|&(_, v)| v);
        assert_eq!(get(libc::AT_PAGESZ), Some(4096));
        assert!(get(libc::AT_SYSINFO_EHDR).is_some());
        assert!(get(libc::AT_ENTRY).is_some());
    }

    #[test]
    fn procfs_auxv_edges() {
        assert_eq!(parse_auxv(&[]).unwrap(), vec![]);
        assert_eq!(parse_auxv(&[0; 16]).unwrap(), vec![]);
        let e = parse_auxv(&SAMPLE[..SAMPLE.len() - 1]).unwrap_err();
        assert!(e.to_string().contains("multiple of 16"), "{e}");
        assert!(parse_auxv(&SAMPLE[..32]).is_err());
        // Data after AT_NULL is ignored.
        let mut v = SAMPLE.to_vec();
        v.extend_from_slice(&[1; 16]);
        assert_eq!(parse_auxv(&v).unwrap(), parse_auxv(SAMPLE).unwrap());
    }
}

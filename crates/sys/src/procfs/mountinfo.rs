//! `/proc/PID/mountinfo`.

use super::{dec_u32, dec_u64, ProcError, ProcFile};

/// A propagation field of a mountinfo line (the fields before `-`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionalField {
    /// `shared:N`: member of peer group N.
    Shared(u32),
    /// `master:N`: slave of peer group N.
    Master(u32),
    /// `propagate_from:N`: receives from peer group N (the closest dominant
    /// peer group under the same root).
    PropagateFrom(u32),
    /// `unbindable`.
    Unbindable,
    /// Anything else, as printed.
    Other(String),
}

impl OptionalField {
    fn parse(s: &str) -> Self {
        let num = |tag: &str| s.strip_prefix(tag).and_then(dec_u32);
        if let Some(n) = num("shared:") {
            OptionalField::Shared(n)
        } else if let Some(n) = num("master:") {
            OptionalField::Master(n)
        } else if let Some(n) = num("propagate_from:") {
            OptionalField::PropagateFrom(n)
        } else if s == "unbindable" {
            OptionalField::Unbindable
        } else {
            OptionalField::Other(s.to_string())
        }
    }
}

/// One line of `/proc/PID/mountinfo`. Paths and the source are unescaped
/// (the kernel prints space, tab, newline and backslash as `\040`, `\011`,
/// `\012`, `\134`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// (1) Mount id.
    pub mnt_id: u64,
    /// (2) Parent mount id (itself, or an id outside the namespace, for the
    /// namespace root).
    pub parent_id: u64,
    /// (3) Device major number.
    pub major: u32,
    /// (3) Device minor number.
    pub minor: u32,
    /// (4) Root of the mount within its filesystem.
    pub root: String,
    /// (5) Mount point, relative to the reader's root.
    pub mount_point: String,
    /// (6) Per-mount options, e.g. `rw,nosuid,relatime`.
    pub options: String,
    /// (7) Propagation fields (zero or more).
    pub optional: Vec<OptionalField>,
    /// (9) Filesystem type, e.g. `ext4`, `fuse.sshfs`.
    pub fs_type: String,
    /// (10) Mount source, e.g. `/dev/vda`, `none`.
    pub source: String,
    /// (11) Per-superblock options.
    pub super_options: String,
}

impl MountInfo {
    /// The peer group this mount is shared in, if any.
    pub fn shared(&self) -> Option<u32> {
        self.optional.iter().find_map(|f| match f {
            OptionalField::Shared(n) => Some(*n),
            _ => None,
        })
    }

    /// The peer group this mount is a slave of, if any.
    pub fn master(&self) -> Option<u32> {
        self.optional.iter().find_map(|f| match f {
            OptionalField::Master(n) => Some(*n),
            _ => None,
        })
    }
}

/// Undoes the kernel's `\ooo` octal escapes; other backslashes are kept.
pub fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let d = &b[i + 1..i + 4];
            if d.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = (d[0] - b'0') as u32 * 64 + (d[1] - b'0') as u32 * 8 + (d[2] - b'0') as u32;
                if v <= 0xff {
                    out.push(v as u8);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// Parses `/proc/PID/mountinfo`.
pub fn parse_mountinfo(text: &str) -> Result<Vec<MountInfo>, ProcError> {
    let file = ProcFile::MountInfo;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        if line.is_empty() {
            continue;
        }
        let err = |what: String| ProcError::at(file, lineno, what);
        let mut f = line.split(' ');
        let mut next = |name: &str| {
            f.next()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| err(format!("{name} missing")))
        };
        let id_s = next("mount id")?;
        let mnt_id = dec_u64(id_s).ok_or_else(|| err(format!("bad mount id {id_s:?}")))?;
        let pid_s = next("parent id")?;
        let parent_id = dec_u64(pid_s).ok_or_else(|| err(format!("bad parent id {pid_s:?}")))?;
        let dev_s = next("major:minor")?;
        let (major, minor) = dev_s
            .split_once(':')
            .and_then(|(a, b)| Some((dec_u32(a)?, dec_u32(b)?)))
            .ok_or_else(|| err(format!("bad major:minor {dev_s:?}")))?;
        let root = unescape_octal(next("root")?);
        let mount_point = unescape_octal(next("mount point")?);
        let options = next("mount options")?.to_string();
        let mut optional = Vec::new();
        loop {
            let t = next("'-' separator")?;
            if t == "-" {
                break;
            }
            optional.push(OptionalField::parse(t));
        }
        let fs_type = unescape_octal(next("filesystem type")?);
        let source = unescape_octal(next("mount source")?);
        let super_options = f.next().unwrap_or("").to_string();
        if f.next().is_some() {
            return Err(err("unexpected fields after the super options".into()));
        }
        out.push(MountInfo {
            mnt_id,
            parent_id,
            major,
            minor,
            root,
            mount_point,
            options,
            optional,
            fs_type,
            source,
            super_options,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = include_str!("testdata/mountinfo.txt");

    #[test]
    fn procfs_mountinfo_sample() {
        let m = parse_mountinfo(SAMPLE).unwrap();
        assert!(!m.is_empty());
        let root = m.iter().find(|x| x.mount_point == "/").unwrap();
        assert_eq!(root.fs_type, "ext4");
        assert_eq!(root.source, "/dev/vda");
        assert_eq!((root.major, root.minor), (254, 0));
        assert!(root.options.starts_with("rw"));
        let proc_ = m.iter().find(|x| x.mount_point == "/proc").unwrap();
        assert_eq!(proc_.fs_type, "proc");
        assert!(m
            .iter()
            .any(|x| x.mount_point == "/mnt/ro data" && x.shared() == Some(7)));
    }

    #[test]
    fn procfs_mountinfo_escapes_and_optional() {
        let text = "36 35 98:0 /mnt\\0401 /mnt/a\\040b\\011c\\134d rw,noatime shared:1 master:2 propagate_from:3 unbindable weird - fuse.sshfs user@host:/x\\040y rw,errors=continue\n\
                    37 36 0:5 / /x rw - tmpfs none \n";
        let m = parse_mountinfo(text).unwrap();
        assert_eq!(m[0].root, "/mnt 1");
        assert_eq!(m[0].mount_point, "/mnt/a b\tc\\d");
        assert_eq!(
            m[0].optional,
            vec![
                OptionalField::Shared(1),
                OptionalField::Master(2),
                OptionalField::PropagateFrom(3),
                OptionalField::Unbindable,
                OptionalField::Other("weird".into())
            ]
        );
        assert_eq!(m[0].shared(), Some(1));
        assert_eq!(m[0].master(), Some(2));
        assert_eq!(m[0].fs_type, "fuse.sshfs");
        assert_eq!(m[0].source, "user@host:/x y");
        assert_eq!(m[0].super_options, "rw,errors=continue");
        assert!(m[1].optional.is_empty());
        assert_eq!(m[1].super_options, "");
        assert_eq!(unescape_octal("a\\9\\04"), "a\\9\\04");
        assert_eq!(unescape_octal("\\777x"), "\\777x");
    }

    #[test]
    fn procfs_mountinfo_errors() {
        assert_eq!(parse_mountinfo("").unwrap(), vec![]);
        for (bad, what) in [
            ("x 1 0:1 / / rw - t s o", "mount id"),
            ("1 1 01 / / rw - t s o", "major:minor"),
            ("1 1 0:1 / / rw shared:1", "separator"),
            ("1 1 0:1 / / rw -", "filesystem type"),
            ("1 1 0:1 / / rw - t", "source"),
            ("1 1 0:1 / / rw - t s o extra", "unexpected"),
        ] {
            let e = parse_mountinfo(bad).unwrap_err();
            assert_eq!(e.line, Some(1));
            assert!(e.to_string().contains(what), "{bad}: {e}");
        }
    }
}

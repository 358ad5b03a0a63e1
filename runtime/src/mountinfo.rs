//! `/proc/<pid>/mountinfo`: which mount holds a path, and how it propagates.
//!
//! Hand-written rather than taken from `procfs-core`, whose parser leaves the
//! kernel's octal escapes (`\040` for a space) in mount points: a path with a
//! space would then never match its mount.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// How a mount propagates, from its optional fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// In a peer group (`shared:N`); may also be a slave of another.
    Shared,
    /// Only a slave (`master:N`): receives from its master, sends nothing.
    Slave,
    /// Neither.
    Private,
}

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The mount's id.
    pub id: u32,
    /// Its parent's id.
    pub parent: u32,
    /// The directory of the filesystem mounted here.
    pub root: PathBuf,
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// Filesystem type.
    pub fs_type: String,
    /// Its source (`/dev/vda`, `overlay`, `tmpfs`).
    pub source: String,
    /// Its propagation.
    pub propagation: Propagation,
}

/// The kernel's escapes for space, tab, newline and backslash.
fn unescape(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = b[i + 1..i + 4].iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(OsString::from_vec(out))
}

fn parse_line(line: &str) -> Option<Mount> {
    let mut f = line.split(' ');
    let id = f.next()?.parse().ok()?;
    let parent = f.next()?.parse().ok()?;
    let _majmin = f.next()?;
    let root = unescape(f.next()?);
    let mount_point = unescape(f.next()?);
    let _options = f.next()?;
    let (mut shared, mut slave) = (false, false);
    loop {
        match f.next()? {
            "-" => break,
            o if o.starts_with("shared:") => shared = true,
            o if o.starts_with("master:") => slave = true,
            _ => {}
        }
    }
    let fs_type = f.next()?.to_string();
    let source = unescape(f.next().unwrap_or_default()).to_string_lossy().into_owned();
    let propagation = match (shared, slave) {
        (true, _) => Propagation::Shared,
        (false, true) => Propagation::Slave,
        _ => Propagation::Private,
    };
    Some(Mount { id, parent, root, mount_point, fs_type, source, propagation })
}

/// Parses mountinfo text; lines it cannot read are skipped.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_line).collect()
}

/// The calling process's mounts.
pub fn read_self() -> std::io::Result<Vec<Mount>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// The mount that holds `path` (absolute, symlinks already resolved): the
/// one with the longest mount point above it; of mounts stacked on the
/// same point, the last listed, which is the one on top.
pub fn containing<'a>(mounts: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    let mut best: Option<&Mount> = None;
    for m in mounts.iter().filter(|m| path.starts_with(&m.mount_point)) {
        if best.is_none_or(|b| m.mount_point.components().count() >= b.mount_point.components().count()) {
            best = Some(m);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:25 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
41 22 0:40 / /var/lib/kube\\040lets rw,relatime shared:20 master:3 - tmpfs tmpfs rw
42 41 0:41 / /var/lib/kube\\040lets/pods rw,relatime master:3 - tmpfs tmpfs rw
43 22 0:42 /sub /mnt/private rw,relatime - tmpfs tmpfs rw
44 43 0:43 / /mnt/private rw,relatime shared:9 - tmpfs tmpfs rw
";

    #[test]
    fn escapes_optional_fields_and_stacking() {
        let m = parse(SAMPLE);
        assert_eq!(m.len(), 6);
        assert_eq!(m[2].mount_point, Path::new("/var/lib/kube lets"));
        assert_eq!(m[2].propagation, Propagation::Shared);
        assert_eq!(m[3].propagation, Propagation::Slave);
        assert_eq!(m[4].propagation, Propagation::Private);
        assert_eq!(m[4].root, Path::new("/sub"));
        assert_eq!((m[0].source.as_str(), m[0].fs_type.as_str()), ("/dev/sda1", "ext4"));
        let at = |p: &str| containing(&m, Path::new(p)).map(|m| m.id);
        assert_eq!(at("/var/lib/kube lets/pods/x"), Some(42));
        assert_eq!(at("/var/lib/kube lets"), Some(41));
        assert_eq!(at("/var/lib/kube"), Some(22), "a prefix of a name is not a parent");
        assert_eq!(at("/mnt/private/a"), Some(44), "the mount on top");
        assert_eq!(at("/etc"), Some(22));
    }

    #[test]
    fn unescape_leaves_what_is_not_an_escape() {
        assert_eq!(unescape("a\\134b\\011c"), Path::new("a\\b\tc"));
        assert_eq!(unescape("a\\9x\\"), Path::new("a\\9x\\"));
        assert_eq!(unescape("\\777"), Path::new("\\777"));
    }
}

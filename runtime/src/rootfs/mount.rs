//! OCI mounts in kernel terms: the flags, propagation and data of a mount's
//! options, decided without touching the kernel.

use std::path::PathBuf;

use nix::mount::MsFlags;
use oci_spec::runtime::Mount;

/// One mount, ready to be made at `dest` inside the rootfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOp {
    /// Path inside the container.
    pub dest: PathBuf,
    /// Source: a host path for binds, the filesystem's name otherwise.
    pub source: PathBuf,
    /// Filesystem type ("bind" for bind mounts).
    pub kind: String,
    /// A bind mount (flags then need a remount).
    pub bind: bool,
    /// `MS_REC` with `bind`.
    pub recursive: bool,
    /// Per-mount flags (ro, nosuid, nodev, noexec, atime).
    pub flags: MsFlags,
    /// Propagation to set afterwards (empty: leave as is).
    pub propagation: MsFlags,
    /// Filesystem data (`mode=755,size=64m`).
    pub data: String,
    /// Read-only all the way down, submounts included (runc's `rro`).
    pub recursive_readonly: bool,
}

impl MountOp {
    /// From an OCI mount.
    pub fn from_oci(m: &Mount) -> MountOp {
        let kind = m.typ().clone().unwrap_or_else(|| "bind".into());
        let options = m.options().clone().unwrap_or_default();
        let recursive_readonly = options.iter().any(|o| o == "rro");
        let options: Vec<String> = options.into_iter().filter(|o| o != "rro").collect();
        let (mut flags, propagation, data) = parse_options(&options);
        if recursive_readonly {
            flags |= MsFlags::MS_RDONLY;
        }
        let bind = kind == "bind" || flags.contains(MsFlags::MS_BIND);
        MountOp {
            dest: m.destination().clone(),
            source: m.source().clone().unwrap_or_else(|| PathBuf::from(&kind)),
            recursive: flags.contains(MsFlags::MS_REC),
            flags: flags & !(MsFlags::MS_BIND | MsFlags::MS_REC),
            bind,
            kind,
            propagation,
            data,
            recursive_readonly,
        }
    }

    /// True for the tmpfs mounted at the container's /dev.
    pub fn is_dev_tmpfs(&self) -> bool {
        self.dest == std::path::Path::new("/dev") && self.kind == "tmpfs"
    }
}

/// Mount flags, propagation and data from OCI mount options.
pub fn parse_options(options: &[String]) -> (MsFlags, MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut propagation = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => flags &= !MsFlags::MS_RDONLY,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "private" => propagation = MsFlags::MS_PRIVATE,
            "rprivate" => propagation = MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            "slave" => propagation = MsFlags::MS_SLAVE,
            "rslave" => propagation = MsFlags::MS_SLAVE | MsFlags::MS_REC,
            "shared" => propagation = MsFlags::MS_SHARED,
            "rshared" => propagation = MsFlags::MS_SHARED | MsFlags::MS_REC,
            "suid" | "dev" | "exec" | "atime" | "async" | "defaults" => {}
            other => data.push(other.to_string()),
        }
    }
    (flags, propagation, data.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let (f, p, d) = parse_options(&["ro".into(), "rbind".into(), "rslave".into(), "mode=755".into(), "size=64m".into()]);
        assert!(f.contains(MsFlags::MS_RDONLY | MsFlags::MS_BIND | MsFlags::MS_REC));
        assert_eq!(p, MsFlags::MS_SLAVE | MsFlags::MS_REC);
        assert_eq!(d, "mode=755,size=64m");
    }

    #[test]
    fn oci_mounts_become_ops() {
        let m = oci_spec::runtime::MountBuilder::default()
            .destination("/data")
            .typ("bind")
            .source("/srv/data")
            .options(vec!["rbind".to_string(), "ro".to_string(), "rprivate".to_string()])
            .build()
            .unwrap();
        let op = MountOp::from_oci(&m);
        assert!(op.bind && op.recursive && op.flags == MsFlags::MS_RDONLY);
        assert_eq!(op.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        let dev = oci_spec::runtime::MountBuilder::default().destination("/dev").typ("tmpfs").source("tmpfs").build().unwrap();
        assert!(MountOp::from_oci(&dev).is_dev_tmpfs() && !op.is_dev_tmpfs());
        assert!(!op.recursive_readonly);
        let rro = oci_spec::runtime::MountBuilder::default()
            .destination("/data")
            .typ("bind")
            .source("/srv/data")
            .options(vec!["rbind".to_string(), "rro".to_string()])
            .build()
            .unwrap();
        let op = MountOp::from_oci(&rro);
        assert!(op.recursive_readonly && op.flags.contains(MsFlags::MS_RDONLY) && op.data.is_empty(), "{op:?}");
    }
}

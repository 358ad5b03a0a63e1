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
    /// Id-mapped through the container's user namespace (the OCI mount
    /// has uid/gid mappings; [`crate::rootfs::build`] checks they are the
    /// container's own): a bind shows the source's ids as the container
    /// sees them, an overlay its lower layers.
    pub idmap: bool,
    /// Mount only this path inside the volume (an image volume's
    /// `image_sub_path`, given as the `berth.subpath=` option): the volume
    /// is mounted aside first and the path, resolved inside it, bound here.
    pub sub_path: Option<PathBuf>,
}

/// The option that carries an image volume's sub path in berth's specs.
pub const SUB_PATH_OPTION: &str = "berth.subpath=";

impl MountOp {
    /// From an OCI mount.
    pub fn from_oci(m: &Mount) -> MountOp {
        let kind = m.typ().clone().unwrap_or_else(|| "bind".into());
        let options = m.options().clone().unwrap_or_default();
        let recursive_readonly = options.iter().any(|o| o == "rro");
        let sub_path = options.iter().find_map(|o| o.strip_prefix(SUB_PATH_OPTION)).map(PathBuf::from);
        let options: Vec<String> = options.into_iter().filter(|o| o != "rro" && !o.starts_with(SUB_PATH_OPTION)).collect();
        let (mut flags, propagation, data) = parse_options(&options);
        if recursive_readonly {
            flags |= MsFlags::MS_RDONLY;
        }
        let bind = kind == "bind" || flags.contains(MsFlags::MS_BIND);
        let idmap = m.uid_mappings().as_ref().is_some_and(|v| !v.is_empty()) || m.gid_mappings().as_ref().is_some_and(|v| !v.is_empty());
        MountOp {
            idmap,
            sub_path,
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

    /// For a container in a user namespace: the ids in a tmpfs's or
    /// devpts's options are the container's, so they become the node's ids
    /// they map to (the kernel reads them in the mounter's namespace, the
    /// node's), and a tmpfs without an owner is owned by the container's
    /// root, as it would be had root inside mounted it.
    pub fn map_ids(&mut self, m: &crate::userns::Mappings) -> Result<(), String> {
        if self.bind || !matches!(self.kind.as_str(), "tmpfs" | "devpts") {
            return Ok(());
        }
        let mut opts: Vec<String> = if self.data.is_empty() { Vec::new() } else { self.data.split(',').map(str::to_string).collect() };
        for (key, map) in [("uid", &m.uids), ("gid", &m.gids)] {
            let prefix = format!("{key}=");
            let inside = match opts.iter().position(|o| o.starts_with(&prefix)) {
                Some(i) => {
                    let v = opts.remove(i);
                    let id: u32 = v[prefix.len()..].parse().map_err(|_| format!("{v:?} on {} is not an id", self.dest.display()))?;
                    Some(id)
                }
                None if self.kind == "tmpfs" => Some(0),
                None => None,
            };
            if let Some(id) = inside {
                let host = crate::userns::map_id(map, id)
                    .ok_or_else(|| format!("{key} {id} of {} is not mapped in the user namespace", self.dest.display()))?;
                opts.push(format!("{key}={host}"));
            }
        }
        self.data = opts.join(",");
        Ok(())
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
        assert!(!op.idmap && op.sub_path.is_none());
        let sub = oci_spec::runtime::MountBuilder::default()
            .destination("/models")
            .typ("overlay")
            .source("overlay")
            .options(vec!["ro".to_string(), "berth.subpath=a,b/c".to_string(), "lowerdir=/l1:/l0".to_string()])
            .build()
            .unwrap();
        let op = MountOp::from_oci(&sub);
        assert_eq!((op.sub_path.as_deref(), op.data.as_str()), (Some(std::path::Path::new("a,b/c")), "lowerdir=/l1:/l0"));
    }

    #[test]
    fn ids_in_tmpfs_and_devpts_options_become_the_nodes() {
        let r = vec![crate::userns::IdMap { container_id: 0, host_id: 100000, size: 65536 }];
        let m = crate::userns::Mappings { uids: r.clone(), gids: r };
        let op = |kind: &str, opts: &[&str]| {
            let mount = oci_spec::runtime::MountBuilder::default()
                .destination("/x")
                .typ(kind)
                .source(kind)
                .options(opts.iter().map(|o| o.to_string()).collect::<Vec<_>>())
                .build()
                .unwrap();
            MountOp::from_oci(&mount)
        };
        let mut dev = op("tmpfs", &["nosuid", "mode=755", "size=65536k"]);
        dev.map_ids(&m).unwrap();
        assert_eq!(dev.data, "mode=755,size=65536k,uid=100000,gid=100000");
        let mut pts = op("devpts", &["newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]);
        pts.map_ids(&m).unwrap();
        assert_eq!(pts.data, "newinstance,ptmxmode=0666,mode=0620,gid=100005");
        let mut mq = op("mqueue", &["nosuid"]);
        mq.map_ids(&m).unwrap();
        assert_eq!(mq.data, "");
        assert!(op("tmpfs", &["uid=70000"]).map_ids(&m).unwrap_err().contains("not mapped"));
    }
}

//! User namespaces of pods (`hostUsers: false`, KEP-127): the id mappings
//! kubelet sends, checked before anything is made; what they make of ids
//! inside and outside; and the step a container init or exec helper takes
//! last before it confines itself — joining the pod's user namespace as its
//! root.
//!
//! The pod's user namespace owns its network, IPC and UTS namespaces
//! ([`crate::sandbox::pin_namespaces`]), so root in the pod has its
//! capabilities there (binding port 80, its own sysctls) and nowhere else.
//! The container's mount namespace stays the host's to own: berth builds
//! the rootfs with the host's privileges and joins the user namespace only
//! afterwards, so nothing in the container can undo a mask or a read-only
//! mount, and the image's files are shown through id-mapped mounts.

use std::os::fd::AsFd;

use nix::sched::CloneFlags;
use nix::unistd::{Gid, Uid};
use serde::{Deserialize, Serialize};

/// One range of ids: `size` ids from `container_id` inside are `host_id`… outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    /// First id inside the namespace.
    pub container_id: u32,
    /// First id outside (on the node).
    pub host_id: u32,
    /// Number of ids.
    pub size: u32,
}

/// uid and gid mappings in an OCI spec's form.
pub type OciMappings = (Vec<oci_spec::runtime::LinuxIdMapping>, Vec<oci_spec::runtime::LinuxIdMapping>);

/// The uid and gid mappings of a pod's user namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mappings {
    /// uid ranges.
    pub uids: Vec<IdMap>,
    /// gid ranges.
    pub gids: Vec<IdMap>,
}

/// The kernel's limit on lines in `uid_map` (since Linux 4.15).
pub const MAX_RANGES: usize = 340;

/// Why a set of mappings cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    /// No range at all.
    #[error("no {0} mapping given")]
    Empty(&'static str),
    /// More ranges than the kernel takes.
    #[error("{0} {1} ranges, more than the kernel's {MAX_RANGES}")]
    TooMany(&'static str, usize),
    /// A range of no ids, or one past the end of the id space.
    #[error("{0} range {1} is empty or runs past 2^32")]
    BadRange(&'static str, usize),
    /// Two ranges overlap inside or outside.
    #[error("{0} ranges {1} and {2} overlap")]
    Overlap(&'static str, usize, usize),
    /// Container id 0 is not mapped: berth's init needs a root inside to
    /// build from, as every kubelet mapping has.
    #[error("{0} 0 inside is not mapped")]
    NoRoot(&'static str),
    /// The node's root would be the pod's: that is no isolation at all.
    #[error("{0} mapping includes the node's id 0")]
    HostRoot(&'static str),
}

impl IdMap {
    fn end_inside(&self) -> u64 {
        self.container_id as u64 + self.size as u64
    }
    fn end_outside(&self) -> u64 {
        self.host_id as u64 + self.size as u64
    }
}

fn check_ranges(kind: &'static str, maps: &[IdMap]) -> Result<(), MappingError> {
    if maps.is_empty() {
        return Err(MappingError::Empty(kind));
    }
    if maps.len() > MAX_RANGES {
        return Err(MappingError::TooMany(kind, maps.len()));
    }
    let limit = 1u64 << 32;
    for (i, m) in maps.iter().enumerate() {
        // u32::MAX itself is never a valid id (it is (uid_t)-1).
        if m.size == 0 || m.end_inside() >= limit || m.end_outside() >= limit {
            return Err(MappingError::BadRange(kind, i));
        }
        if m.host_id == 0 {
            return Err(MappingError::HostRoot(kind));
        }
        for (j, o) in maps.iter().enumerate().take(i) {
            let inside = (m.container_id as u64) < o.end_inside() && (o.container_id as u64) < m.end_inside();
            let outside = (m.host_id as u64) < o.end_outside() && (o.host_id as u64) < m.end_outside();
            if inside || outside {
                return Err(MappingError::Overlap(kind, j, i));
            }
        }
    }
    if map_id(maps, 0).is_none() {
        return Err(MappingError::NoRoot(kind));
    }
    Ok(())
}

/// The id outside of `inside` under `maps`.
pub fn map_id(maps: &[IdMap], inside: u32) -> Option<u32> {
    maps.iter().find(|m| inside >= m.container_id && (inside as u64) < m.end_inside()).map(|m| m.host_id + (inside - m.container_id))
}

impl Mappings {
    /// Checks what the kernel would refuse, and what berth will not run.
    pub fn check(&self) -> Result<(), MappingError> {
        check_ranges("uid", &self.uids)?;
        check_ranges("gid", &self.gids)
    }

    /// The node's uid of `uid` inside.
    pub fn host_uid(&self, uid: u32) -> Option<u32> {
        map_id(&self.uids, uid)
    }

    /// The node's gid of `gid` inside.
    pub fn host_gid(&self, gid: u32) -> Option<u32> {
        map_id(&self.gids, gid)
    }

    /// The node's ids of root inside ([`Mappings::check`] makes sure it is mapped).
    pub fn host_root(&self) -> (u32, u32) {
        (self.host_uid(0).unwrap_or(u32::MAX), self.host_gid(0).unwrap_or(u32::MAX))
    }

    /// `/proc/<pid>/uid_map` text of the uid ranges.
    pub fn uid_map(&self) -> String {
        proc_text(&self.uids)
    }

    /// `/proc/<pid>/gid_map` text of the gid ranges.
    pub fn gid_map(&self) -> String {
        proc_text(&self.gids)
    }

    /// As an OCI spec's `uidMappings` and `gidMappings`.
    pub fn to_oci(&self) -> Result<OciMappings, oci_spec::OciSpecError> {
        let conv = |maps: &[IdMap]| {
            maps.iter()
                .map(|m| {
                    oci_spec::runtime::LinuxIdMappingBuilder::default().container_id(m.container_id).host_id(m.host_id).size(m.size).build()
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok((conv(&self.uids)?, conv(&self.gids)?))
    }

    /// From an OCI spec's (or mount's) mappings; None when there are none.
    pub fn from_oci(
        uids: Option<&Vec<oci_spec::runtime::LinuxIdMapping>>,
        gids: Option<&Vec<oci_spec::runtime::LinuxIdMapping>>,
    ) -> Option<Mappings> {
        let conv = |v: Option<&Vec<oci_spec::runtime::LinuxIdMapping>>| -> Vec<IdMap> {
            v.map(|v| v.iter().map(|m| IdMap { container_id: m.container_id(), host_id: m.host_id(), size: m.size() }).collect())
                .unwrap_or_default()
        };
        let m = Mappings { uids: conv(uids), gids: conv(gids) };
        (!m.uids.is_empty() || !m.gids.is_empty()).then_some(m)
    }
}

fn proc_text(maps: &[IdMap]) -> String {
    maps.iter().map(|m| format!("{} {} {}\n", m.container_id, m.host_id, m.size)).collect()
}

/// Whether this node can run pods in user namespaces as berth builds them:
/// user namespaces allowed (`user.max_user_namespaces` above 0), the new
/// mount API (5.12) and overlayfs on id-mapped layers (5.19).
pub fn supported() -> bool {
    let allowed = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .is_some_and(|n| n > 0);
    let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    allowed && crate::mountapi::supported() && kernel_at_least(&release, (5, 19))
}

/// Whether the filesystem at `path` takes id-mapped mounts (Linux 5.12 for
/// ext4 and xfs, 6.3 for tmpfs): berth id-maps the image layers under it for
/// every pod in a user namespace. Asked the kernel by doing it once, through
/// a user namespace made as a pod's is (pinned under `scratch` meanwhile).
pub fn probe(monitor_bin: &std::path::Path, scratch: &std::path::Path, path: &std::path::Path) -> Result<(), String> {
    if !supported() {
        return Err("the kernel needs user namespaces allowed (user.max_user_namespaces), the new mount API and Linux 5.19".into());
    }
    std::fs::create_dir_all(scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let range = vec![IdMap { container_id: 0, host_id: 1 << 30, size: 1 }];
    let mappings = Mappings { uids: range.clone(), gids: range };
    let result = crate::sandbox::pin_namespaces_in_userns(monitor_bin, scratch, Default::default(), &mappings, "", &[])
        .map_err(|e| format!("making a user namespace: {e}"))
        .and_then(|()| {
            let userns = std::fs::File::open(crate::sandbox::pin_path(scratch, "user")).map_err(|e| e.to_string())?;
            let tree = crate::mountapi::clone_tree(path, false).map_err(|e| format!("open_tree {}: {e}", path.display()))?;
            let attr = crate::mountapi::Attr {
                set: libc::MOUNT_ATTR_IDMAP,
                userns_fd: Some(std::os::fd::AsRawFd::as_raw_fd(&userns)),
                ..Default::default()
            };
            crate::mountapi::set_attr(tree.as_fd(), false, attr).map_err(|e| format!("{} cannot be id-mapped: {e}", path.display()))
        });
    crate::sandbox::unpin_namespaces(scratch);
    let _ = std::fs::remove_dir(scratch);
    result
}

/// `release` (`6.1.0-13-amd64`) is at least `min` (major, minor).
fn kernel_at_least(release: &str, min: (u32, u32)) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    match (parts.next(), parts.next()) {
        (Some(major), Some(minor)) => (major, minor) >= min,
        _ => false,
    }
}

/// Joins the user namespace `fd` refers to and becomes root in it, with
/// every capability there and none outside. Root first, so that the user
/// switch that follows clears capabilities exactly as it does on the host
/// (the kernel's rule looks at root *of the current namespace*).
///
/// The caller is single-threaded (setns refuses a user namespace switch
/// otherwise) and has built everything that needs the host's privileges.
pub fn enter(fd: impl AsFd) -> nix::Result<()> {
    nix::sched::setns(fd, CloneFlags::CLONE_NEWUSER)?;
    nix::unistd::setgroups(&[])?;
    nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))?;
    nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubelet(host: u32) -> Mappings {
        let r = vec![IdMap { container_id: 0, host_id: host, size: 65536 }];
        Mappings { uids: r.clone(), gids: r }
    }

    #[test]
    fn kubelets_mapping_is_fine_and_maps_both_ways() {
        let m = kubelet(65536 * 3);
        assert_eq!(m.check(), Ok(()));
        assert_eq!(m.host_uid(0), Some(196608));
        assert_eq!(m.host_gid(1000), Some(197608));
        assert_eq!(m.host_uid(65536), None);
        assert_eq!(m.uid_map(), "0 196608 65536\n");
        assert_eq!(m.host_root(), (196608, 196608));
        let (u, g) = m.to_oci().unwrap();
        assert_eq!(Mappings::from_oci(Some(&u), Some(&g)), Some(m));
        assert_eq!(Mappings::from_oci(None, Some(&vec![])), None);
    }

    #[test]
    fn kernel_releases() {
        assert!(kernel_at_least("6.1.0-13-amd64", (5, 19)));
        assert!(kernel_at_least("5.19.0", (5, 19)));
        assert!(!kernel_at_least("5.15.0-91-generic", (5, 19)));
        assert!(!kernel_at_least("garbage", (5, 19)));
    }

    #[test]
    fn what_the_kernel_or_berth_refuses() {
        let r = |c, h, s| IdMap { container_id: c, host_id: h, size: s };
        let with = |uids: Vec<IdMap>| Mappings { uids, gids: kubelet(65536).gids };
        assert_eq!(with(vec![]).check(), Err(MappingError::Empty("uid")));
        assert_eq!(with(vec![r(0, 65536, 0)]).check(), Err(MappingError::BadRange("uid", 0)));
        assert_eq!(with(vec![r(0, u32::MAX - 10, 11)]).check(), Err(MappingError::BadRange("uid", 0)));
        assert_eq!(with(vec![r(0, 0, 65536)]).check(), Err(MappingError::HostRoot("uid")));
        assert_eq!(with(vec![r(1, 65536, 10)]).check(), Err(MappingError::NoRoot("uid")));
        assert_eq!(with(vec![r(0, 65536, 100), r(50, 200000, 10)]).check(), Err(MappingError::Overlap("uid", 0, 1)));
        assert_eq!(with(vec![r(0, 65536, 100), r(100, 65600, 10)]).check(), Err(MappingError::Overlap("uid", 0, 1)));
        assert_eq!(with(vec![r(0, 65536, 100), r(100, 200000, 10)]).check(), Ok(()));
        assert_eq!(with(vec![r(0, 65536, 1); MAX_RANGES + 1]).check(), Err(MappingError::TooMany("uid", MAX_RANGES + 1)));
    }
}

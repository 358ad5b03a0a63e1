//! The container's view of its own cgroup at `/sys/fs/cgroup`, as runc
//! gives it: on cgroup v2 a cgroup2 mount in the container's cgroup
//! namespace (its root is the container's cgroup); on v1 a tmpfs holding,
//! per hierarchy, a bind of the container's own directory, named as the
//! host names the hierarchy (`memory`, `cpu,cpuacct`), with a symlink per
//! controller of a joint mount (`cpu -> cpu,cpuacct`).

use std::path::{Path, PathBuf};

/// The v1 layout under the tmpfs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct V1Layout {
    /// (directory name under /sys/fs/cgroup, the container's cgroup dir).
    pub binds: Vec<(String, PathBuf)>,
    /// (link name, target) for the controllers of joint hierarchies.
    pub links: Vec<(String, String)>,
}

/// The layout for the container's cgroup `dirs` (one per hierarchy);
/// `mount_of` names the mount point of the cgroup hierarchy that holds a
/// dir ([`hierarchy_mount`]). A dir no cgroup mount holds is
/// left out.
pub fn v1_layout(dirs: &[PathBuf], mount_of: impl Fn(&Path) -> Option<PathBuf>) -> V1Layout {
    let mut out = V1Layout::default();
    for dir in dirs {
        let Some(mount_point) = mount_of(dir) else { continue };
        let Some(name) = mount_point.file_name().and_then(|n| n.to_str()) else { continue };
        if out.binds.iter().any(|(n, _)| n == name) {
            continue;
        }
        if name.contains(',') {
            for part in name.split(',') {
                out.links.push((part.to_string(), name.to_string()));
            }
        }
        out.binds.push((name.to_string(), dir.clone()));
    }
    out
}

/// A `mount_of` for [`v1_layout`] from the kernel: the highest ancestor of
/// `dir` on the same mount (statx mount ids), when that mount is a cgroup
/// filesystem — without reading mountinfo, whose size (and the cost of
/// reading it) grows with the node's mounts.
pub fn hierarchy_mount(dir: &Path) -> Option<PathBuf> {
    let id = mount_id(dir)?;
    let mut top = dir;
    for a in dir.ancestors().skip(1) {
        if mount_id(a) != Some(id) {
            break;
        }
        top = a;
    }
    use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC, CGROUP_SUPER_MAGIC};
    let kind = statfs(top).ok()?.filesystem_type();
    (kind == CGROUP_SUPER_MAGIC || kind == CGROUP2_SUPER_MAGIC).then(|| top.to_path_buf())
}

/// The id of the mount `path` is on (Linux 5.8).
fn mount_id(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statx>::zeroed();
    let flags = libc::AT_STATX_DONT_SYNC | libc::AT_SYMLINK_NOFOLLOW;
    // SAFETY: a valid C string for the call; the kernel writes at most a
    // `statx` into `st`, which was zeroed before.
    let r = unsafe { libc::statx(libc::AT_FDCWD, c.as_ptr(), flags, libc::STATX_MNT_ID, st.as_mut_ptr()) };
    if r != 0 {
        return None;
    }
    // SAFETY: zeroed, then filled by a successful statx.
    let st = unsafe { st.assume_init() };
    (st.stx_mask & libc::STATX_MNT_ID != 0).then_some(st.stx_mnt_id)
}

/// The cgroup dirs from the spec's `cgroup.procs` files.
pub fn dirs_of(procs: &str) -> Vec<PathBuf> {
    procs.split(':').filter(|p| !p.is_empty()).filter_map(|p| Path::new(p).parent().map(Path::to_path_buf)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mountinfo::{containing, parse, Mount};

    /// A `mount_of` for [`v1_layout`] from a mount table.
    fn mount_in(mounts: &[Mount]) -> impl Fn(&Path) -> Option<PathBuf> + '_ {
        |dir| containing(mounts, dir).filter(|m| m.fs_type == "cgroup" || m.fs_type == "cgroup2").map(|m| m.mount_point.clone())
    }

    #[test]
    fn one_bind_per_hierarchy_and_links_for_joint_ones() {
        let mounts = parse(
            "\
31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd
",
        );
        let dirs =
            dirs_of("/sys/fs/cgroup/cpu,cpuacct/berth/c1/cgroup.procs:/sys/fs/cgroup/memory/berth/c1/cgroup.procs:/srv/c1/cgroup.procs");
        let l = v1_layout(&dirs, mount_in(&mounts));
        assert_eq!(
            l.binds,
            [
                ("cpu,cpuacct".to_string(), PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/berth/c1")),
                ("memory".to_string(), PathBuf::from("/sys/fs/cgroup/memory/berth/c1")),
            ]
        );
        assert_eq!(l.links, [("cpu".to_string(), "cpu,cpuacct".to_string()), ("cpuacct".to_string(), "cpu,cpuacct".to_string())]);
    }

    #[test]
    fn hierarchy_mounts_from_the_kernel_are_those_mountinfo_names() {
        let mounts = crate::mountinfo::read_self().unwrap();
        let cgroups: Vec<_> = mounts.iter().filter(|m| m.fs_type == "cgroup" || m.fs_type == "cgroup2").collect();
        assert!(!cgroups.is_empty(), "no cgroup mount on this node");
        for m in cgroups {
            assert_eq!(hierarchy_mount(&m.mount_point).as_ref(), Some(&m.mount_point));
            let child = std::fs::read_dir(&m.mount_point).unwrap().flatten().find(|e| e.path().is_dir()).map(|e| e.path());
            if let Some(child) = child {
                assert_eq!(hierarchy_mount(&child).as_ref(), Some(&m.mount_point), "{}", child.display());
            }
        }
        assert_eq!(hierarchy_mount(Path::new("/etc")), None);
    }
}

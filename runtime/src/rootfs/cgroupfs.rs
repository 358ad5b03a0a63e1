//! The container's view of its own cgroup at `/sys/fs/cgroup`, as runc
//! gives it: on cgroup v2 a cgroup2 mount in the container's cgroup
//! namespace (its root is the container's cgroup); on v1 a tmpfs holding,
//! per hierarchy, a bind of the container's own directory, named as the
//! host names the hierarchy (`memory`, `cpu,cpuacct`), with a symlink per
//! controller of a joint mount (`cpu -> cpu,cpuacct`).

use std::path::{Path, PathBuf};

use crate::mountinfo::{containing, Mount};

/// The v1 layout under the tmpfs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct V1Layout {
    /// (directory name under /sys/fs/cgroup, the container's cgroup dir).
    pub binds: Vec<(String, PathBuf)>,
    /// (link name, target) for the controllers of joint hierarchies.
    pub links: Vec<(String, String)>,
}

/// The layout for the container's cgroup `dirs` (one per hierarchy), from
/// the mounts that hold them. A dir no cgroup mount holds is left out.
pub fn v1_layout(dirs: &[PathBuf], mounts: &[Mount]) -> V1Layout {
    let mut out = V1Layout::default();
    for dir in dirs {
        let Some(m) = containing(mounts, dir).filter(|m| m.fs_type == "cgroup" || m.fs_type == "cgroup2") else { continue };
        let Some(name) = m.mount_point.file_name().and_then(|n| n.to_str()) else { continue };
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

/// The cgroup dirs from the spec's `cgroup.procs` files.
pub fn dirs_of(procs: &str) -> Vec<PathBuf> {
    procs.split(':').filter(|p| !p.is_empty()).filter_map(|p| Path::new(p).parent().map(Path::to_path_buf)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mountinfo::parse;

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
        let l = v1_layout(&dirs, &mounts);
        assert_eq!(
            l.binds,
            [
                ("cpu,cpuacct".to_string(), PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/berth/c1")),
                ("memory".to_string(), PathBuf::from("/sys/fs/cgroup/memory/berth/c1")),
            ]
        );
        assert_eq!(l.links, [("cpu".to_string(), "cpu,cpuacct".to_string()), ("cpuacct".to_string(), "cpu,cpuacct".to_string())]);
    }
}

//! The annotations berthd puts into a container's OCI spec for what the OCI
//! runtime spec has no field for; the executor reads them back.

/// overlayfs lowerdirs, top first, `:`-separated.
pub const LOWERDIRS: &str = "io.berth.rootfs.lowerdirs";
/// overlayfs upperdir.
pub const UPPERDIR: &str = "io.berth.rootfs.upperdir";
/// overlayfs workdir.
pub const WORKDIR: &str = "io.berth.rootfs.workdir";
/// A node directory that is a mount of its own and holds only berth's pod
/// mounts (namespace pins, each pod's /dev/shm): the container's init
/// detaches it from its copy of the node's mounts before building the
/// rootfs, having first cloned what its spec binds from there, so the cost
/// of that build does not grow with the number of pods on the node.
pub const SET_ASIDE: &str = "io.berth.rootfs.set-aside";
/// The pin of the mount namespace template ([`crate::mntns`]): the init
/// starts its mount namespace from it instead of from a copy of the node's,
/// where the spec allows (see [`crate::rootfs::build`]).
pub const MOUNT_TEMPLATE: &str = "io.berth.rootfs.mount-template";
/// `cgroup.procs` files to join, `:`-separated.
pub const CGROUP_PROCS: &str = "io.berth.cgroup.procs";
/// "1": keep the container's cgroup populated until the monitor has read
/// its OOM count (a systemd scope's cgroup is removed once empty).
pub const CGROUP_HOLD: &str = "io.berth.cgroup.hold";
/// A user name (`name` or `name:group`) to resolve in the image.
pub const USER: &str = "io.berth.user";
/// Supplemental groups policy Strict (no image memberships).
pub const GROUPS_STRICT: &str = "io.berth.groups.strict";

/// A non-empty annotation of `spec`.
pub fn get<'a>(spec: &'a oci_spec::runtime::Spec, key: &str) -> Option<&'a str> {
    spec.annotations().as_ref().and_then(|a| a.get(key)).map(String::as_str).filter(|s| !s.is_empty())
}

//! The container's view of the filesystem, built by its init inside a new
//! mount namespace: the overlay rootfs, the spec's mounts, the device nodes
//! of its own /dev, `pivot_root`, then hostname, sysctls, masked and
//! read-only paths and a read-only root.
//!
//! [`build`] decides what happens and in which order; a [`RootfsOps`] does
//! it — [`Kernel`] with real syscalls in a container init, a recorder in the
//! unit tests, which check the ordering and choices without root.

pub mod cgroupfs;
pub mod devices;
mod kernel;
pub mod mount;

use nix::mount::MsFlags;
use oci_spec::runtime::Spec;

pub use devices::DeviceNode;
pub use kernel::Kernel;
pub use mount::MountOp;

use crate::annotations;
use crate::cgroup::DeviceRule;
use crate::message::InitError;

/// The overlayfs layers of the rootfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layers {
    /// lowerdirs, top first, `:`-separated.
    pub lower: String,
    /// upperdir and workdir; None for a read-only stack.
    pub upper_work: Option<(String, String)>,
    /// The lower layers are id-mapped through the container's user
    /// namespace (the image's root shows as the container's).
    pub idmap: bool,
}

/// What an init takes along into a mount namespace made from the template
/// ([`crate::mntns`]): there, no path of the node resolves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakeAlong {
    /// The template's pin.
    pub template: std::path::PathBuf,
    /// The spec's bind sources (path, recursive), in the order it binds them.
    pub binds: Vec<(std::path::PathBuf, bool)>,
    /// The container's cgroup dirs, when the spec mounts its cgroup view.
    pub cgroup_dirs: Option<Vec<std::path::PathBuf>>,
    /// The propagation the clones take at once (`MS_SLAVE` or `MS_PRIVATE`,
    /// the root's): a clone of a shared mount of the node is the node's
    /// peer until then.
    pub propagation: MsFlags,
}

/// Mount types made anew in the container, from no path of the node.
const MADE_ANEW: [&str; 7] = ["proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2"];

/// What the init takes along to start from the mount template, when the
/// spec names one and needs nothing a switch would lose: no user namespace
/// (its id-mapped layers are mapped from the node's paths), a root
/// propagation that shares nothing with the node (a shared root's mounts
/// must stay the node's peers), and mounts that are binds or made anew.
pub fn take_along(spec: &Spec, propagation: MsFlags, userns: bool) -> Option<TakeAlong> {
    let template = annotations::get(spec, annotations::MOUNT_TEMPLATE)?;
    if userns || !shares_nothing(propagation) {
        return None;
    }
    let mounts: Vec<MountOp> = spec.mounts().iter().flatten().map(MountOp::from_oci).collect();
    if mounts.iter().any(|m| m.idmap || !(m.bind || MADE_ANEW.contains(&m.kind.as_str()))) {
        return None;
    }
    let cgroup = |m: &MountOp| m.kind == "cgroup";
    Some(TakeAlong {
        template: template.into(),
        binds: mounts.iter().filter(|m| m.bind && !cgroup(m)).map(|m| (m.source.clone(), m.recursive)).collect(),
        cgroup_dirs: mounts
            .iter()
            .any(cgroup)
            .then(|| cgroupfs::dirs_of(annotations::get(spec, annotations::CGROUP_PROCS).unwrap_or_default())),
        propagation: propagation & !MsFlags::MS_REC,
    })
}

/// After a recursive rslave or rprivate no mount of the namespace is shared.
fn shares_nothing(propagation: MsFlags) -> bool {
    propagation.contains(MsFlags::MS_REC) && propagation.intersects(MsFlags::MS_SLAVE | MsFlags::MS_PRIVATE)
}

/// The kernel operations that build a rootfs. Paths are the container's;
/// the implementation resolves them inside the rootfs (before the pivot)
/// or the container's root (after it).
pub trait RootfsOps {
    /// Gives the init a mount namespace of its own: a copy of the template
    /// `from` names, having taken along what it lists — when it is given
    /// and the implementation can (then true) — else a copy of the node's.
    fn new_namespace(&mut self, from: Option<&TakeAlong>) -> Result<bool, InitError>;
    /// Makes every mount of the new namespace `propagation` (e.g. rslave),
    /// so nothing mounted from here on reaches the host unless asked.
    fn set_root_propagation(&mut self, propagation: MsFlags) -> Result<(), InitError>;
    /// Clones the bind sources `keep` (path, recursive) — each under `dir`,
    /// in the order the spec binds them — then detaches the mount at `dir`
    /// from this namespace; [`RootfsOps::mount`] binds from the clones.
    /// Only once nothing mounted or unmounted here reaches the node (the
    /// root is a slave or private).
    fn set_aside(&mut self, dir: &std::path::Path, keep: &[(std::path::PathBuf, bool)]) -> Result<(), InitError>;
    /// Makes the mount that holds the rootfs directory private (in this
    /// namespace only): with a shared root, the overlay would otherwise
    /// propagate to the host, and `pivot_root` refuses a shared parent.
    fn make_rootfs_parent_private(&mut self) -> Result<(), InitError>;
    /// Mounts the overlay rootfs with per-mount `flags`.
    fn mount_rootfs(&mut self, layers: &Layers, flags: MsFlags) -> Result<(), InitError>;
    /// Makes one mount inside the rootfs.
    fn mount(&mut self, m: &MountOp) -> Result<(), InitError>;
    /// Mounts the container's view of its cgroup (`dirs`, one per
    /// hierarchy) at `m.dest` with `m.flags`; see [`cgroupfs`].
    fn mount_cgroup(&mut self, m: &MountOp, dirs: &[std::path::PathBuf]) -> Result<(), InitError>;
    /// Creates device nodes and links in the /dev tmpfs the last
    /// [`RootfsOps::mount`] made, and keeps its null device for masking.
    fn populate_dev(&mut self, nodes: &[DeviceNode], links: &[(&str, &str)]) -> Result<(), InitError>;
    /// `pivot_root` into the rootfs; the host's root is made rslave (so
    /// that detaching it reaches no host mount) and detached.
    fn pivot_root(&mut self) -> Result<(), InitError>;
    /// Sets the hostname (of a new UTS namespace).
    fn set_hostname(&mut self, name: &str) -> Result<(), InitError>;
    /// Writes a namespaced sysctl.
    fn sysctl(&mut self, key: &str, value: &str) -> Result<(), InitError>;
    /// Hides a path: a directory under an empty read-only tmpfs, a file
    /// under the null device [`RootfsOps::populate_dev`] made. Missing is fine.
    fn mask(&mut self, path: &str) -> Result<(), InitError>;
    /// Makes a path read-only (recursively). Missing is fine.
    fn readonly(&mut self, path: &str) -> Result<(), InitError>;
    /// Remounts / read-only, keeping `flags`.
    fn remount_root_readonly(&mut self, flags: MsFlags) -> Result<(), InitError>;
}

/// True when the spec's device cgroup rules deny by default: then no device
/// node in the rootfs may be usable either (`nodev`), whoever put it there.
pub fn devices_restricted(spec: &Spec) -> Result<bool, InitError> {
    let rules = spec.linux().as_ref().and_then(|l| l.resources().as_ref()).and_then(|r| r.devices().clone()).unwrap_or_default();
    let rules: Vec<DeviceRule> =
        rules.iter().map(DeviceRule::from_oci).collect::<Result<_, _>>().map_err(|e| InitError::setup("device rules", e))?;
    Ok(!crate::cgroup::devices::reduce(&rules).default_allow)
}

/// The layers the agent put into the spec's annotations.
pub fn layers(spec: &Spec) -> Result<Layers, InitError> {
    let lower = annotations::get(spec, annotations::LOWERDIRS).ok_or_else(|| InitError::Setup("no rootfs layers".into()))?;
    let upper_work = match (annotations::get(spec, annotations::UPPERDIR), annotations::get(spec, annotations::WORKDIR)) {
        (Some(u), Some(w)) => Some((u.to_string(), w.to_string())),
        _ => None,
    };
    Ok(Layers { lower: lower.to_string(), upper_work, idmap: false })
}

/// The overlay rootfs of `layers`, mounted ahead and detached by whoever
/// has the layers ready before the container init runs (berthd, beside its
/// other work), for the init to attach ([`Kernel::with_rootfs_mount`])
/// instead of mounting it: the overlay's set-up (its work dir, the upper
/// filesystem's feature checks) is then off the init's path. `nodev` as
/// [`devices_restricted`] says. Not for id-mapped lower layers, which only
/// the init, inside the container's user namespace, can map.
pub fn mount_ahead(layers: &Layers, nodev: bool) -> std::io::Result<std::os::fd::OwnedFd> {
    if layers.idmap {
        return Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "id-mapped lower layers are mounted by the init"));
    }
    let mut options = vec![("lowerdir", layers.lower.as_str())];
    if let Some((upper, work)) = &layers.upper_work {
        options.extend([("upperdir", upper.as_str()), ("workdir", work.as_str())]);
    }
    crate::mountapi::new_mount("overlay", &options, if nodev { libc::MOUNT_ATTR_NODEV } else { 0 })
}

/// The destinations of `spec`'s mounts that land on the rootfs itself, as
/// (path, is a file): not those beneath an earlier mount of the spec
/// (`/dev/shm` is made in the `/dev` tmpfs, a path inside a volume in the
/// volume), nor those the init resolves in its own way (sub paths, the
/// cgroup view, id-mapped mounts). A bind of a file needs a file to mount
/// on, anything else a directory. With the rootfs mounted ahead, berthd makes
/// them ([`Kernel::make_targets`]) while other work goes on; the init finds
/// them made.
pub fn targets_on_rootfs(spec: &Spec) -> Vec<(std::path::PathBuf, bool)> {
    let mut dests: Vec<std::path::PathBuf> = Vec::new();
    let mut out = Vec::new();
    for m in spec.mounts().iter().flatten() {
        let op = MountOp::from_oci(m);
        let beneath = dests.iter().any(|d| op.dest.starts_with(d));
        dests.push(op.dest.clone());
        if beneath || op.sub_path.is_some() || op.kind == "cgroup" || op.idmap {
            continue;
        }
        let is_file = op.bind && std::fs::metadata(&op.source).is_ok_and(|md| !md.is_dir());
        out.push((op.dest, is_file));
    }
    out
}

/// The propagation of the container's mounts: the spec's
/// `rootfsPropagation` (rshared when a volume is bidirectional, so mounts
/// under it stay in the host's peer group), else rslave: the host's mounts
/// reach the container, nothing mounted inside reaches the host.
pub fn root_propagation(spec: &Spec) -> Result<MsFlags, InitError> {
    let Some(p) = spec.linux().as_ref().and_then(|l| l.rootfs_propagation().as_deref()) else {
        return Ok(MsFlags::MS_SLAVE | MsFlags::MS_REC);
    };
    let (_, flags, _) = mount::parse_options(&[p.to_string()]);
    if flags.is_empty() {
        return Err(InitError::Setup(format!("rootfsPropagation {p:?} is not a propagation")));
    }
    Ok(flags)
}

/// The mappings of the container's user namespace, when it has one.
pub fn user_namespace(spec: &Spec) -> Result<Option<crate::userns::Mappings>, InitError> {
    let Some(linux) = spec.linux() else { return Ok(None) };
    let has_userns = linux.namespaces().iter().flatten().any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::User);
    let mappings = crate::userns::Mappings::from_oci(linux.uid_mappings().as_ref(), linux.gid_mappings().as_ref());
    match (has_userns, mappings) {
        (false, None) => Ok(None),
        (true, Some(m)) => m.check().map(|()| Some(m)).map_err(|e| InitError::setup("user namespace mappings", e)),
        (true, None) => Err(InitError::Setup("a user namespace without uid and gid mappings".into())),
        (false, Some(_)) => Err(InitError::Setup("uid and gid mappings without a user namespace".into())),
    }
}

/// Gives the init its mount namespace: from the template where the spec
/// allows ([`take_along`]; then true), else a copy of the node's.
pub fn new_namespace(spec: &Spec, ops: &mut impl RootfsOps) -> Result<bool, InitError> {
    let userns = user_namespace(spec)?.is_some();
    ops.new_namespace(take_along(spec, root_propagation(spec)?, userns).as_ref())
}

/// Builds the container's filesystem view from `spec` in the mount
/// namespace [`new_namespace`] gave (`from_template` is what it returned);
/// `new_uts` says whether the container has a UTS namespace of its own to
/// name.
pub fn build(spec: &Spec, new_uts: bool, from_template: bool, ops: &mut impl RootfsOps) -> Result<(), InitError> {
    // As runc: the whole tree first takes the root propagation, then the
    // rootfs's parent becomes private so the rootfs and what is mounted
    // into it stay in this namespace.
    let propagation = root_propagation(spec)?;
    let userns = user_namespace(spec)?;
    ops.set_root_propagation(propagation)?;
    // A copy of the node's: its pod mounts go at once. With a shared root (a
    // bidirectional volume) a detach here would propagate to the node's
    // peers: then the whole copy stays.
    let set_aside = annotations::get(spec, annotations::SET_ASIDE).filter(|_| !from_template && !propagation.contains(MsFlags::MS_SHARED));
    if let Some(dir) = set_aside {
        let dir = std::path::Path::new(dir);
        let keep: Vec<(std::path::PathBuf, bool)> = spec
            .mounts()
            .iter()
            .flatten()
            .map(MountOp::from_oci)
            .filter(|m| m.bind && m.sub_path.is_none() && m.source.starts_with(dir))
            .map(|m| (m.source, m.recursive))
            .collect();
        ops.set_aside(dir, &keep)?;
    }
    // The rootfs's parent included: only other propagations need the
    // check (which reads mountinfo).
    if !shares_nothing(propagation) {
        ops.make_rootfs_parent_private()?;
    }
    let root_flags = if devices_restricted(spec)? { MsFlags::MS_NODEV } else { MsFlags::empty() };
    ops.mount_rootfs(&Layers { idmap: userns.is_some(), ..layers(spec)? }, root_flags)?;
    let nodes = devices::nodes(spec)?;
    for m in spec.mounts().iter().flatten() {
        let mut op = MountOp::from_oci(m);
        if op.idmap {
            // Only the container's own mapping: its user namespace is the
            // one berth has to map a mount through.
            let own = crate::userns::Mappings::from_oci(m.uid_mappings().as_ref(), m.gid_mappings().as_ref());
            if own != userns {
                return Err(InitError::Setup(format!(
                    "mount {}: id mappings other than the container's user namespace's are not supported",
                    op.dest.display()
                )));
            }
        }
        if let Some(mappings) = &userns {
            op.map_ids(mappings).map_err(InitError::Setup)?;
        }
        if op.kind == "cgroup" {
            ops.mount_cgroup(&op, &cgroupfs::dirs_of(annotations::get(spec, annotations::CGROUP_PROCS).unwrap_or_default()))?;
            continue;
        }
        ops.mount(&op)?;
        // Device nodes go into the /dev tmpfs right after it is mounted: never
        // into the image, nor into a volume mounted over /dev later.
        if op.is_dev_tmpfs() {
            ops.populate_dev(&nodes, &devices::LINKS)?;
        }
    }
    ops.pivot_root()?;
    if propagation.contains(MsFlags::MS_PRIVATE) {
        // Private asked for: the new root as well (before the pivot it was
        // the rootfs's own mount, which took the parent's).
        ops.set_root_propagation(propagation)?;
    }
    if new_uts {
        if let Some(h) = spec.hostname().as_deref().filter(|h| !h.is_empty()) {
            ops.set_hostname(h)?;
        }
    }
    if let Some(linux) = spec.linux() {
        for (key, value) in linux.sysctl().iter().flatten() {
            ops.sysctl(key, value)?;
        }
        for p in linux.masked_paths().iter().flatten() {
            ops.mask(p)?;
        }
        for p in linux.readonly_paths().iter().flatten() {
            ops.readonly(p)?;
        }
    }
    if spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false) {
        ops.remount_root_readonly(root_flags)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxBuilder, LinuxDeviceCgroupBuilder, LinuxResourcesBuilder, MountBuilder, RootBuilder, SpecBuilder};

    /// Records the operations instead of making them.
    #[derive(Default)]
    struct Recorder(Vec<String>);

    /// The init's two steps, as `process::init` takes them.
    fn build(spec: &Spec, new_uts: bool, ops: &mut Recorder) -> Result<(), InitError> {
        let from_template = new_namespace(spec, ops)?;
        super::build(spec, new_uts, from_template, ops)
    }

    impl RootfsOps for Recorder {
        fn new_namespace(&mut self, from: Option<&TakeAlong>) -> Result<bool, InitError> {
            match from {
                Some(t) => {
                    let binds: Vec<String> = t.binds.iter().map(|(p, _)| p.display().to_string()).collect();
                    let cg = t.cgroup_dirs.as_ref().map(|d| format!(" cgroup {}", d.len())).unwrap_or_default();
                    self.0.push(format!("from {} taking [{}]{cg} {:?}", t.template.display(), binds.join(", "), t.propagation));
                }
                None => self.0.push("copy of the node's".into()),
            }
            Ok(from.is_some())
        }
        fn set_root_propagation(&mut self, p: MsFlags) -> Result<(), InitError> {
            self.0.push(format!("propagation {p:?}"));
            Ok(())
        }
        fn set_aside(&mut self, dir: &std::path::Path, keep: &[(std::path::PathBuf, bool)]) -> Result<(), InitError> {
            let keep: Vec<String> = keep.iter().map(|(p, rec)| format!("{}{}", p.display(), if *rec { " rec" } else { "" })).collect();
            self.0.push(format!("set aside {} keeping [{}]", dir.display(), keep.join(", ")));
            Ok(())
        }
        fn make_rootfs_parent_private(&mut self) -> Result<(), InitError> {
            self.0.push("parent private".into());
            Ok(())
        }
        fn mount_rootfs(&mut self, layers: &Layers, flags: MsFlags) -> Result<(), InitError> {
            self.0.push(format!("rootfs {} {:?}{}", layers.lower, flags, if layers.idmap { " idmapped" } else { "" }));
            Ok(())
        }
        fn mount(&mut self, m: &MountOp) -> Result<(), InitError> {
            let extra = [(m.idmap, " idmapped".to_string()), (!m.data.is_empty(), format!(" {}", m.data))];
            let extra: String = extra.into_iter().filter(|(on, _)| *on).map(|(_, t)| t).collect();
            self.0.push(format!("mount {} {}{extra}", m.kind, m.dest.display()));
            Ok(())
        }
        fn mount_cgroup(&mut self, m: &MountOp, dirs: &[std::path::PathBuf]) -> Result<(), InitError> {
            self.0.push(format!("cgroup {} {:?} {}", m.dest.display(), m.flags, dirs.len()));
            Ok(())
        }
        fn populate_dev(&mut self, nodes: &[DeviceNode], links: &[(&str, &str)]) -> Result<(), InitError> {
            let names: Vec<String> = nodes.iter().map(|n| n.rel.display().to_string()).collect();
            self.0.push(format!("devices {} +{} links", names.join(","), links.len()));
            Ok(())
        }
        fn pivot_root(&mut self) -> Result<(), InitError> {
            self.0.push("pivot".into());
            Ok(())
        }
        fn set_hostname(&mut self, name: &str) -> Result<(), InitError> {
            self.0.push(format!("hostname {name}"));
            Ok(())
        }
        fn sysctl(&mut self, key: &str, value: &str) -> Result<(), InitError> {
            self.0.push(format!("sysctl {key}={value}"));
            Ok(())
        }
        fn mask(&mut self, path: &str) -> Result<(), InitError> {
            self.0.push(format!("mask {path}"));
            Ok(())
        }
        fn readonly(&mut self, path: &str) -> Result<(), InitError> {
            self.0.push(format!("readonly {path}"));
            Ok(())
        }
        fn remount_root_readonly(&mut self, flags: MsFlags) -> Result<(), InitError> {
            self.0.push(format!("root ro {flags:?}"));
            Ok(())
        }
    }

    fn bind(dest: &str, source: &str, opts: &[&str]) -> oci_spec::runtime::Mount {
        MountBuilder::default()
            .destination(dest)
            .typ("bind")
            .source(source)
            .options(opts.iter().map(|o| o.to_string()).collect::<Vec<_>>())
            .build()
            .unwrap()
    }

    fn mount(dest: &str, kind: &str) -> oci_spec::runtime::Mount {
        MountBuilder::default().destination(dest).typ(kind).source(kind).build().unwrap()
    }

    fn spec(deny_devices: bool, readonly: bool, mounts: Vec<oci_spec::runtime::Mount>) -> Spec {
        let rule = LinuxDeviceCgroupBuilder::default().allow(!deny_devices).access("rwm").build().unwrap();
        let linux = LinuxBuilder::default()
            .resources(LinuxResourcesBuilder::default().devices(vec![rule]).build().unwrap())
            .masked_paths(vec!["/proc/kcore".to_string()])
            .readonly_paths(vec!["/proc/sys".to_string()])
            .build()
            .unwrap();
        let mut s = SpecBuilder::default()
            .linux(linux)
            .mounts(mounts)
            .root(RootBuilder::default().path("rootfs").readonly(readonly).build().unwrap())
            .hostname("pod")
            .build()
            .unwrap();
        let mut ann = std::collections::HashMap::new();
        ann.insert(annotations::LOWERDIRS.to_string(), "/l1:/l0".to_string());
        s.set_annotations(Some(ann));
        s
    }

    #[test]
    fn dev_nodes_come_right_after_the_dev_tmpfs_and_masks_after_the_pivot() {
        let mut cg = mount("/sys/fs/cgroup", "cgroup");
        cg.set_options(Some(vec!["ro".into(), "nosuid".into()]));
        let mut s =
            spec(true, true, vec![mount("/proc", "proc"), mount("/dev", "tmpfs"), mount("/dev/pts", "devpts"), mount("/dev", "bind"), cg]);
        let mut ann = s.annotations().clone().unwrap();
        ann.insert(annotations::CGROUP_PROCS.into(), "/a/x/cgroup.procs:/b/x/cgroup.procs".into());
        s.set_annotations(Some(ann));
        let mut r = Recorder::default();
        build(&s, true, &mut r).unwrap();
        assert_eq!(
            r.0,
            [
                "copy of the node's",
                "propagation MsFlags(MS_REC | MS_SLAVE)",
                "rootfs /l1:/l0 MsFlags(MS_NODEV)",
                "mount proc /proc",
                "mount tmpfs /dev",
                "devices null,zero,full,random,urandom,tty +6 links",
                "mount devpts /dev/pts",
                "mount bind /dev",
                "cgroup /sys/fs/cgroup MsFlags(MS_RDONLY | MS_NOSUID) 2",
                "pivot",
                "hostname pod",
                "mask /proc/kcore",
                "readonly /proc/sys",
                "root ro MsFlags(MS_NODEV)",
            ]
        );
    }

    #[test]
    fn an_unrestricted_device_cgroup_leaves_the_rootfs_dev_and_no_tmpfs_gets_no_nodes() {
        let s = spec(false, false, vec![mount("/proc", "proc")]);
        let mut r = Recorder::default();
        build(&s, false, &mut r).unwrap();
        assert_eq!(r.0[2], "rootfs /l1:/l0 MsFlags(0x0)");
        assert!(!r.0.iter().any(|c| c.starts_with("devices") || c.starts_with("hostname") || c.starts_with("root ro")), "{:?}", r.0);
    }

    #[test]
    fn pod_mounts_are_set_aside_after_the_propagation_keeping_what_the_spec_binds_from_there() {
        let mounts = vec![
            mount("/proc", "proc"),
            bind("/dev/shm", "/run/berth/pods/p1/shm", &["rbind", "nosuid"]),
            bind("/etc/hosts", "/run/berth/pods/p1/hosts", &["bind", "ro"]),
            bind("/data", "/srv/data", &["rbind"]),
            bind("/podsx", "/run/berth/podsx/f", &["rbind"]),
        ];
        let with = |propagation: Option<&str>, dir: &str| {
            let mut s = spec(true, false, mounts.clone());
            let mut ann = s.annotations().clone().unwrap();
            ann.insert(annotations::SET_ASIDE.into(), dir.into());
            s.set_annotations(Some(ann));
            let mut linux = s.linux().clone().unwrap();
            linux.set_rootfs_propagation(propagation.map(str::to_string));
            s.set_linux(Some(linux));
            let mut r = Recorder::default();
            build(&s, false, &mut r).unwrap();
            r.0
        };
        let ops = with(None, "/run/berth/pods");
        assert_eq!(
            ops[..4],
            [
                "copy of the node's".to_string(),
                "propagation MsFlags(MS_REC | MS_SLAVE)".to_string(),
                "set aside /run/berth/pods keeping [/run/berth/pods/p1/shm rec, /run/berth/pods/p1/hosts]".to_string(),
                "rootfs /l1:/l0 MsFlags(MS_NODEV)".to_string()
            ]
        );
        assert!(with(Some("rprivate"), "/run/berth/pods")[2].starts_with("set aside"));
        // A shared root would carry the detach to the node: nothing is set aside.
        assert!(!with(Some("rshared"), "/run/berth/pods").iter().any(|o| o.starts_with("set aside")));
        // Without the annotation nothing is either.
        assert!(!with(None, "").iter().any(|o| o.starts_with("set aside")));
    }

    #[test]
    fn the_specs_root_propagation_is_set_first_and_private_again_after_the_pivot() {
        // The rootfs's parent is made private where it may still be shared:
        // not after rslave or rprivate.
        for (asked, first, again, parent) in [
            (Some("rshared"), "MS_REC | MS_SHARED", false, true),
            (Some("shared"), "MS_SHARED", false, true),
            (Some("slave"), "MS_SLAVE", false, true),
            (Some("rprivate"), "MS_REC | MS_PRIVATE", true, false),
            (None, "MS_REC | MS_SLAVE", false, false),
        ] {
            let mut s = spec(true, false, vec![mount("/proc", "proc")]);
            let mut linux = s.linux().clone().unwrap();
            linux.set_rootfs_propagation(asked.map(str::to_string));
            s.set_linux(Some(linux));
            let mut r = Recorder::default();
            build(&s, false, &mut r).unwrap();
            assert_eq!(r.0[1], format!("propagation MsFlags({first})"));
            assert_eq!(r.0[2] == "parent private", parent, "{asked:?}: {:?}", r.0);
            let after_pivot = r.0.iter().skip_while(|c| *c != "pivot").nth(1).cloned().unwrap_or_default();
            assert_eq!(after_pivot == format!("propagation MsFlags({first})"), again, "{asked:?}: {:?}", r.0);
        }
        let mut s = spec(true, false, vec![]);
        let mut linux = s.linux().clone().unwrap();
        linux.set_rootfs_propagation(Some("sideways".into()));
        s.set_linux(Some(linux));
        assert!(build(&s, false, &mut Recorder::default()).is_err());
    }

    #[test]
    fn from_the_template_the_init_takes_every_bind_along_and_sets_nothing_aside() {
        let with = |mounts: Vec<oci_spec::runtime::Mount>, propagation: Option<&str>, userns: bool| {
            let mut s = spec(true, false, mounts);
            let mut ann = s.annotations().clone().unwrap();
            ann.insert(annotations::SET_ASIDE.into(), "/run/berth/pods".into());
            ann.insert(annotations::MOUNT_TEMPLATE.into(), "/run/berth/mntns/template".into());
            ann.insert(annotations::CGROUP_PROCS.into(), "/a/x/cgroup.procs".into());
            s.set_annotations(Some(ann));
            let mut linux = s.linux().clone().unwrap();
            linux.set_rootfs_propagation(propagation.map(str::to_string));
            if userns {
                let map =
                    oci_spec::runtime::LinuxIdMappingBuilder::default().container_id(0u32).host_id(1000u32).size(1u32).build().unwrap();
                linux.set_uid_mappings(Some(vec![map]));
                linux.set_gid_mappings(Some(vec![map]));
                let ns = oci_spec::runtime::LinuxNamespaceBuilder::default()
                    .typ(oci_spec::runtime::LinuxNamespaceType::User)
                    .path("/run/berth/pods/p1/ns-user")
                    .build()
                    .unwrap();
                linux.set_namespaces(Some(vec![ns]));
            }
            s.set_linux(Some(linux));
            let mut r = Recorder::default();
            build(&s, false, &mut r).unwrap();
            r.0
        };
        let mounts = vec![
            mount("/proc", "proc"),
            bind("/dev/shm", "/run/berth/pods/p1/shm", &["rbind", "nosuid"]),
            bind("/data", "/srv/data", &["rbind"]),
            bind("/sub", "/srv/data", &["rbind", &format!("{}x", mount::SUB_PATH_OPTION)]),
            mount("/sys/fs/cgroup", "cgroup"),
        ];
        let ops = with(mounts.clone(), None, false);
        assert_eq!(
            ops[..3],
            [
                "from /run/berth/mntns/template taking [/run/berth/pods/p1/shm, /srv/data, /srv/data] cgroup 1 MsFlags(MS_SLAVE)"
                    .to_string(),
                "propagation MsFlags(MS_REC | MS_SLAVE)".to_string(),
                "rootfs /l1:/l0 MsFlags(MS_NODEV)".to_string(),
            ]
        );
        assert!(with(mounts.clone(), Some("rprivate"), false)[0].ends_with("MsFlags(MS_PRIVATE)"));
        // What a switch would lose: the node's copy, as before.
        let copy = "copy of the node's";
        assert_eq!(with(mounts.clone(), Some("rshared"), false)[0], copy);
        assert_eq!(with(mounts.clone(), Some("slave"), false)[0], copy);
        assert_eq!(with(mounts.clone(), None, true)[0], copy);
        let mut overlay = mount("/ovl", "overlay");
        overlay.set_options(Some(vec!["lowerdir=/srv/a".into()]));
        assert_eq!(with(vec![mount("/proc", "proc"), overlay], None, false)[0], copy);
    }

    #[test]
    fn targets_ahead_are_those_on_the_rootfs_itself() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let m = |dest: &str, typ: &str, source: &std::path::Path, options: &[&str]| {
            MountBuilder::default()
                .destination(dest)
                .typ(typ)
                .source(source)
                .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
                .build()
                .unwrap()
        };
        let none = std::path::Path::new("none");
        let mounts = vec![
            m("/proc", "proc", none, &[]),
            m("/dev", "tmpfs", none, &[]),
            m("/dev/pts", "devpts", none, &[]),
            m("/sys/fs/cgroup", "cgroup", none, &[]),
            m("/etc/hosts", "bind", file.path(), &["rbind"]),
            m("/data", "bind", dir.path(), &["rbind"]),
            m("/data/inner", "bind", dir.path(), &["rbind"]),
            m("/sub", "bind", dir.path(), &["rbind", &format!("{}x", mount::SUB_PATH_OPTION)]),
            m("/dev/termination-log", "bind", file.path(), &["rbind"]),
        ];
        let spec = SpecBuilder::default().mounts(mounts).build().unwrap();
        let got = targets_on_rootfs(&spec);
        let want: Vec<(std::path::PathBuf, bool)> =
            [("/proc", false), ("/dev", false), ("/etc/hosts", true), ("/data", false)].iter().map(|(p, f)| (p.into(), *f)).collect();
        assert_eq!(got, want);
    }
}

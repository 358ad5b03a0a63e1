//! [`RootfsOps`] with real syscalls. Before the pivot every path is resolved
//! inside the rootfs through its fd with `openat2(RESOLVE_IN_ROOT)`, so a
//! symlink an image planted never leads a mount out of it; mounts are made
//! onto fds (`/proc/self/fd/N`), never onto looked-up path strings.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};

use super::{DeviceNode, Layers, MountOp, RootfsOps};
use crate::fs::{clean_relative, PathError, RootDir};
use crate::message::InitError;

/// The kernel, building the rootfs at `rootfs` (the bundle's `rootfs/`).
pub struct Kernel {
    rootfs: PathBuf,
    /// The rootfs, once mounted.
    root: Option<RootDir>,
    /// The root of the last mount made (for populate_dev).
    last_mount: Option<OwnedFd>,
    /// The null device populate_dev made (for masking).
    null: Option<OwnedFd>,
    /// The container's user namespace, for id-mapped mounts.
    userns: Option<OwnedFd>,
    /// Staging dirs made so far (id-mapped layers, sub path volumes): they
    /// are numbered.
    staged: usize,
    /// Bind sources cloned before their mount was detached
    /// ([`RootfsOps::set_aside`]), in the order the spec binds them.
    aside: Vec<(PathBuf, OwnedFd)>,
    /// The overlay rootfs, mounted ahead and detached ([`super::mount_ahead`]).
    ahead: Option<OwnedFd>,
    /// In a namespace from the mount template: a bind has to come from a
    /// clone taken along, no path of the node resolves.
    from_template: bool,
    /// The v1 cgroup view's layout, worked out before the switch to the
    /// template, while the node's paths still resolve.
    cgroup_v1: Option<super::cgroupfs::V1Layout>,
    /// Whether the node runs cgroup v2, once asked: the answer looks at the
    /// node's /sys/fs/cgroup, which the template does not have.
    cgroup_v2: Option<bool>,
    /// The init sets up outside the PID namespace its process joins: `/proc`
    /// is mounted for the namespace it joined for its children, and after
    /// the pivot it has no `/proc/self` (it is not in that namespace).
    proc_for_children: bool,
    /// With `proc_for_children`: a detached procfs mount of that namespace
    /// for the spec's `/proc`, taken by the first proc mount.
    proc_tree: Option<OwnedFd>,
}

/// Attaches `tree`, a detached procfs mount, at `target` for the proc mount
/// `m`, with `m`'s flags. Its options cannot apply: the procfs was made
/// before, and is shared by every container of the pod.
fn attach_proc(m: &MountOp, tree: OwnedFd, target: &OwnedFd) -> Result<(), InitError> {
    let step = |what: &str| format!("attach the pod's /proc on {} ({what})", m.dest.display());
    if !m.data.is_empty() {
        let data = &m.data;
        return Err(InitError::Setup(step(&format!("the options {data:?} cannot apply to a /proc shared with the pod"))));
    }
    let attrs = [
        (MsFlags::MS_RDONLY, libc::MOUNT_ATTR_RDONLY),
        (MsFlags::MS_NOSUID, libc::MOUNT_ATTR_NOSUID),
        (MsFlags::MS_NODEV, libc::MOUNT_ATTR_NODEV),
        (MsFlags::MS_NOEXEC, libc::MOUNT_ATTR_NOEXEC),
        (MsFlags::MS_NODIRATIME, libc::MOUNT_ATTR_NODIRATIME),
    ];
    let (mut set, mut left) = (0, m.flags);
    for (flag, attr) in attrs {
        if m.flags.contains(flag) {
            set |= attr;
            left.remove(flag);
        }
    }
    if !left.is_empty() {
        return Err(InitError::Setup(step(&format!("the flags {left:?} cannot apply to an attached mount"))));
    }
    let attr = crate::mountapi::Attr { set, ..Default::default() };
    crate::mountapi::set_attr(tree.as_fd(), false, attr).map_err(|e| InitError::setup(&step("mount_setattr"), e))?;
    crate::mountapi::attach_at_fd(tree.as_fd(), target.as_fd()).map_err(|e| InitError::setup(&step("move_mount"), e))
}

impl Kernel {
    /// A builder for the rootfs at `rootfs`.
    pub fn new(rootfs: &Path) -> Kernel {
        Kernel {
            rootfs: rootfs.to_path_buf(),
            root: None,
            last_mount: None,
            null: None,
            userns: None,
            staged: 0,
            aside: Vec::new(),
            ahead: None,
            from_template: false,
            cgroup_v1: None,
            cgroup_v2: None,
            proc_for_children: false,
            proc_tree: None,
        }
    }

    /// `/proc` mounts are for the PID namespace this process has joined for
    /// its children (`setns`), which it is not in itself: `tree`, a detached
    /// procfs mount of that namespace, is attached as the first; without it
    /// (or for any other) the kernel is asked for one with procfs `pidns=`
    /// ([`crate::mountapi::procfs_takes_pidns`]), never for a /proc of this
    /// process's own namespace.
    pub fn with_proc_for_children(mut self, yes: bool, tree: Option<OwnedFd>) -> Kernel {
        self.proc_for_children = yes;
        self.proc_tree = tree;
        self
    }

    /// The overlay rootfs as [`super::mount_ahead`] made it: attached where
    /// [`RootfsOps::mount_rootfs`] would mount it, which then mounts nothing.
    /// Its layers and flags are the spec's, as the init's own mount's would be.
    pub fn with_rootfs_mount(mut self, fd: Option<OwnedFd>) -> Kernel {
        self.ahead = fd;
        self
    }

    /// Id-mapped mounts map through the user namespace `fd` refers to.
    pub fn with_userns(mut self, fd: Option<OwnedFd>) -> Kernel {
        self.userns = fd;
        self
    }

    /// A detached copy of the mount (tree) at `source` (or `tree`, one
    /// cloned before), id-mapped through the container's user namespace.
    fn idmapped(&self, source: &Path, recursive: bool, tree: Option<OwnedFd>) -> Result<OwnedFd, InitError> {
        let step = |what: &str| format!("id-mapped mount of {} ({what})", source.display());
        let userns = self.userns.as_ref().ok_or_else(|| InitError::Setup(step("no user namespace")))?;
        let tree = match tree {
            Some(t) => t,
            None => crate::mountapi::clone_tree(source, recursive).map_err(|e| InitError::setup(&step("open_tree"), e))?,
        };
        let attr = crate::mountapi::Attr { set: libc::MOUNT_ATTR_IDMAP, userns_fd: Some(userns.as_raw_fd()), ..Default::default() };
        crate::mountapi::set_attr(tree.as_fd(), recursive, attr).map_err(|e| InitError::setup(&step("mount_setattr"), e))?;
        Ok(tree)
    }

    /// Overlay lower dirs (`a:b:c`) id-mapped, each attached at a numbered
    /// dir beside the rootfs (`<bundle>/idmap/N`) in this mount namespace
    /// only — overlayfs takes id-mapped layers (Linux 5.19) but cannot be
    /// id-mapped itself. The staging mounts go with the old root at the pivot.
    fn idmapped_lowers(&mut self, lower: &str) -> Result<String, InitError> {
        let mut out = Vec::new();
        for dir in lower.split(':') {
            let at = self.staging_dir("idmap")?;
            let tree = self.idmapped(Path::new(dir), false, None)?;
            crate::mountapi::attach(tree.as_fd(), &at).map_err(|e| InitError::setup(&format!("attach the id-mapped {dir}"), e))?;
            out.push(at.display().to_string());
        }
        Ok(out.join(":"))
    }

    /// A new, numbered dir beside the rootfs (`<bundle>/<kind>/N`) to mount
    /// on in this mount namespace only: it goes with the old root at the pivot.
    fn staging_dir(&mut self, kind: &str) -> Result<PathBuf, InitError> {
        let at = self.rootfs.with_file_name(kind).join(self.staged.to_string());
        self.staged += 1;
        std::fs::create_dir_all(&at).map_err(|e| InitError::setup(&format!("create {}", at.display()), e))?;
        Ok(at)
    }

    /// The clone [`RootfsOps::set_aside`] kept of `source`, taken (a tree
    /// is attached once).
    fn take_aside(&mut self, source: &Path) -> Option<OwnedFd> {
        let i = self.aside.iter().position(|(p, _)| p == source)?;
        Some(self.aside.remove(i).1)
    }

    /// Clones the mount (tree) at `source` for a bind after the switch to
    /// the template, with the propagation `attr` sets.
    fn clone_for_template(&mut self, source: &Path, recursive: bool, attr: crate::mountapi::Attr) -> Result<(), InitError> {
        let step = |what: &str| format!("take {} along ({what})", source.display());
        let tree = crate::mountapi::clone_tree(source, recursive).map_err(|e| InitError::setup(&step("open_tree"), e))?;
        crate::mountapi::set_attr(tree.as_fd(), recursive, attr).map_err(|e| InitError::setup(&step("propagation"), e))?;
        self.aside.push((source.to_path_buf(), tree));
        Ok(())
    }

    /// Makes the mount `m` describes on the (`O_PATH`) fd `target`; a bind
    /// set aside comes from its clone `aside`.
    fn mount_on(&self, m: &MountOp, data: &str, target: &OwnedFd, aside: Option<OwnedFd>) -> Result<(), InitError> {
        let step = |what: &str| format!("mount {} on {} ({what})", m.source.display(), m.dest.display());
        let tpath = fd_path(target);
        if m.bind && m.idmap {
            let tree = self.idmapped(&m.source, m.recursive, aside)?;
            crate::mountapi::attach_at_fd(tree.as_fd(), target.as_fd()).map_err(|e| InitError::setup(&step("attach id-mapped"), e))
        } else if let (true, Some(tree)) = (m.bind, aside) {
            crate::mountapi::attach_at_fd(tree.as_fd(), target.as_fd()).map_err(|e| InitError::setup(&step("attach"), e))
        } else if m.bind && self.from_template {
            Err(InitError::Setup(step("its source was not taken along into the namespace")))
        } else if m.bind {
            let rec = if m.recursive { MsFlags::MS_REC } else { MsFlags::empty() };
            mount(Some(&m.source), tpath.as_str(), None::<&str>, MsFlags::MS_BIND | rec, None::<&str>)
                .map_err(|e| InitError::setup(&step("bind"), e))
        } else {
            let data = (!data.is_empty()).then_some(data);
            mount(Some(&m.source), tpath.as_str(), Some(m.kind.as_str()), m.flags, data).map_err(|e| InitError::setup(&step(&m.kind), e))
        }
    }

    /// Mounts `m` aside, then binds its `sub` path — resolved inside it,
    /// never out of it — at the destination.
    fn mount_sub_path(&mut self, m: &MountOp, data: &str, sub: &Path) -> Result<(), InitError> {
        let step = |what: &str| format!("sub path {} of the volume at {} ({what})", sub.display(), m.dest.display());
        let aside = self.staging_dir("subpath")?;
        let aside_fd = nix::fcntl::open(&aside, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| InitError::setup(&step("open the staging dir"), e))?;
        let tree = if m.bind { self.take_aside(&m.source) } else { None };
        self.mount_on(m, data, &aside_fd, tree)?;
        let volume = RootDir::open(&aside).map_err(|e| InitError::setup(&step("open the volume"), e))?;
        let rel = clean_relative(sub).map_err(|e| InitError::setup(&step("path"), e))?;
        let inner = volume.open_in_root(&rel, OFlag::O_PATH, Mode::empty()).map_err(|e| InitError::setup(&step("lookup"), e))?;
        let is_dir = nix::sys::stat::fstat(&inner).map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR).unwrap_or(true);
        let target = mount_target(self.root()?, &m.dest, !is_dir)?;
        let tree = crate::mountapi::clone_tree_at(inner.as_fd(), true).map_err(|e| InitError::setup(&step("open_tree"), e))?;
        crate::mountapi::attach_at_fd(tree.as_fd(), target.as_fd()).map_err(|e| InitError::setup(&step("attach"), e))
    }

    /// An overlay's options with its lowerdir id-mapped.
    fn idmapped_overlay_data(&mut self, data: &str) -> Result<String, InitError> {
        let mut opts = Vec::new();
        for o in data.split(',') {
            match o.strip_prefix("lowerdir=") {
                Some(lower) => opts.push(format!("lowerdir={}", self.idmapped_lowers(lower)?)),
                None => opts.push(o.to_string()),
            }
        }
        Ok(opts.join(","))
    }

    /// Makes `targets` ([`super::targets_on_rootfs`]) on the overlay rootfs
    /// `rootfs` mounted ahead, with the lookups and creations the init's
    /// [`RootfsOps::mount`] would do (symlinks resolved inside the root, never
    /// out of it; new files 0644, new dirs 0755, root's), so that the
    /// init's own lookups find them.
    pub fn make_targets(rootfs: BorrowedFd<'_>, targets: &[(PathBuf, bool)]) -> Result<(), InitError> {
        let fd = rootfs.try_clone_to_owned().map_err(|e| InitError::setup("dup the rootfs fd", e))?;
        let root = RootDir::from_fd(fd, Path::new("the rootfs mounted ahead"));
        for (dest, is_file) in targets {
            mount_target(&root, dest, *is_file)?;
        }
        Ok(())
    }

    /// Whether the node runs cgroup v2, asked once (see `cgroup_v2`).
    fn cgroup_v2(&mut self) -> bool {
        *self.cgroup_v2.get_or_insert_with(|| crate::cgroup::version() == crate::cgroup::Version::V2)
    }

    fn root(&self) -> Result<&RootDir, InitError> {
        self.root.as_ref().ok_or_else(|| InitError::Setup("the rootfs is not mounted".into()))
    }
}

/// True when / is the namespace's own root mount (a rootfs/ramfs booted
/// from, with no parent), as on a node running from its initramfs.
fn root_is_the_initial_ramfs() -> bool {
    let Ok(mounts) = crate::mountinfo::read_self() else { return false };
    let root = mounts.iter().rev().find(|m| m.mount_point == Path::new("/"));
    root.is_some_and(|r| {
        (r.fs_type == "rootfs" || r.fs_type == "ramfs" || r.fs_type == "tmpfs")
            && (r.parent == r.id || !mounts.iter().any(|m| m.id == r.parent))
    })
}

fn path_err(e: PathError) -> InitError {
    InitError::setup("mount destination", e)
}

fn fd_path(fd: &impl AsRawFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Creates the destination inside the root (symlinks resolved as the
/// container would, never out of it) and returns an O_PATH fd to mount on.
fn mount_target(root: &RootDir, dest: &Path, is_file: bool) -> Result<OwnedFd, InitError> {
    let rel = clean_relative(dest.strip_prefix("/").unwrap_or(dest)).map_err(path_err)?;
    // Most destinations exist (the image's /proc and /sys, the files of a
    // bind): one lookup, not one per component.
    if let Ok(fd) = root.open_in_root(&rel, OFlag::O_PATH, Mode::empty()) {
        return Ok(fd);
    }
    let target_err = |e: Errno| InitError::setup(&format!("mount destination {}", dest.display()), e);
    let mut prefix = PathBuf::new();
    let comps: Vec<_> = rel.components().collect();
    for (i, c) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        let parent_path = prefix.clone();
        prefix.push(c);
        if root.open_in_root(&prefix, OFlag::O_PATH, Mode::empty()).is_ok() {
            continue;
        }
        let parent = root.open_in_root(&parent_path, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).map_err(path_err)?;
        let name = c.as_os_str();
        if last && is_file {
            let fd = nix::fcntl::openat(
                parent.as_fd(),
                name,
                OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
                Mode::from_bits_truncate(0o644),
            );
            match fd {
                Ok(_) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(target_err(e)),
            }
        } else {
            match nix::sys::stat::mkdirat(parent.as_fd(), name, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(target_err(e)),
            }
        }
    }
    root.open_in_root(&rel, OFlag::O_PATH, Mode::empty()).map_err(path_err)
}

impl RootfsOps for Kernel {
    fn new_namespace(&mut self, from: Option<&super::TakeAlong>) -> Result<bool, InitError> {
        // The init mounts an overlay itself from the layers' paths: only a
        // rootfs mounted ahead can come along.
        let template = from.filter(|_| self.ahead.is_some()).and_then(|f| Some((f, crate::mntns::open(&f.template)?)));
        let Some((from, template)) = template else {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(|e| InitError::setup("unshare a mount namespace", e))?;
            return Ok(false);
        };
        let attr = crate::mountapi::Attr { propagation: from.propagation.bits(), ..Default::default() };
        for (source, recursive) in &from.binds {
            self.clone_for_template(source, *recursive, attr)?;
        }
        // Asked here, before the switch, for mount_cgroup after it.
        let v2 = self.cgroup_v2();
        if let Some(dirs) = &from.cgroup_dirs {
            if v2 {
                // For the bind mount_cgroup falls back to without a cgroup
                // namespace; unused, the clone goes when the init's fds close.
                if let Some(dir) = dirs.first() {
                    self.clone_for_template(dir, false, attr)?;
                }
            } else {
                let layout = super::cgroupfs::v1_layout(dirs, super::cgroupfs::hierarchy_mount);
                for (_, dir) in &layout.binds {
                    self.clone_for_template(dir, false, attr)?;
                }
                self.cgroup_v1 = Some(layout);
            }
        }
        crate::mntns::enter(template).map_err(|e| InitError::setup("enter the mount template", e))?;
        self.from_template = true;
        self.rootfs = Path::new(crate::mntns::WORK).join("rootfs");
        std::fs::create_dir(&self.rootfs).map_err(|e| InitError::setup("create the rootfs dir", e))?;
        Ok(true)
    }

    fn set_root_propagation(&mut self, propagation: MsFlags) -> Result<(), InitError> {
        mount(None::<&str>, "/", None::<&str>, propagation, None::<&str>).map_err(|e| InitError::setup("set the propagation of /", e))
    }

    fn set_aside(&mut self, dir: &Path, keep: &[(PathBuf, bool)]) -> Result<(), InitError> {
        for (source, recursive) in keep {
            let tree = crate::mountapi::clone_tree(source, *recursive)
                .map_err(|e| InitError::setup(&format!("clone {} before setting {} aside", source.display(), dir.display()), e))?;
            self.aside.push((source.clone(), tree));
        }
        match umount2(dir, MntFlags::MNT_DETACH) {
            // EINVAL: not a mount here (a node where berthd could not make
            // it one); the clones serve all the same.
            Ok(()) | Err(Errno::EINVAL) => Ok(()),
            Err(e) => Err(InitError::setup(&format!("set {} aside", dir.display()), e)),
        }
    }

    fn make_rootfs_parent_private(&mut self) -> Result<(), InitError> {
        let rootfs = std::fs::canonicalize(&self.rootfs).map_err(|e| InitError::setup("resolve the rootfs path", e))?;
        let mounts = crate::mountinfo::read_self().map_err(|e| InitError::setup("read mountinfo", e))?;
        let parent = crate::mountinfo::containing(&mounts, &rootfs)
            .ok_or_else(|| InitError::Setup(format!("no mount holds {}", rootfs.display())))?;
        if parent.propagation != crate::mountinfo::Propagation::Shared {
            return Ok(());
        }
        mount(None::<&str>, &parent.mount_point, None::<&str>, MsFlags::MS_PRIVATE, None::<&str>)
            .map_err(|e| InitError::setup(&format!("make {} private", parent.mount_point.display()), e))
    }

    fn mount_rootfs(&mut self, layers: &Layers, flags: MsFlags) -> Result<(), InitError> {
        if let Some(ahead) = self.ahead.take().filter(|_| !layers.idmap) {
            crate::mountapi::attach(ahead.as_fd(), &self.rootfs).map_err(|e| InitError::setup("attach the overlay rootfs", e))?;
        } else {
            let lower = if layers.idmap { self.idmapped_lowers(&layers.lower)? } else { layers.lower.clone() };
            let data = match &layers.upper_work {
                Some((upper, work)) => format!("lowerdir={lower},upperdir={upper},workdir={work}"),
                None => format!("lowerdir={lower}"),
            };
            mount(Some("overlay"), &self.rootfs, Some("overlay"), flags, Some(data.as_str()))
                .map_err(|e| InitError::setup(&format!("mount overlay rootfs ({} bytes of options)", data.len()), e))?;
        }
        self.root = Some(RootDir::open(&self.rootfs).map_err(|e| InitError::setup("open rootfs", e))?);
        Ok(())
    }

    fn mount(&mut self, m: &MountOp) -> Result<(), InitError> {
        let mut data = if m.idmap && m.kind == "overlay" { self.idmapped_overlay_data(&m.data)? } else { m.data.clone() };
        if self.proc_for_children && m.kind == "proc" && !m.bind {
            // Resolved by the kernel at the mount, in the mount namespace's
            // own /proc, where this process still is.
            let pidns = "pidns=/proc/self/ns/pid_for_children";
            data = if data.is_empty() { pidns.to_string() } else { format!("{data},{pidns}") };
        }
        let step = |what: &str| format!("mount {} on {} ({what})", m.source.display(), m.dest.display());
        match &m.sub_path {
            Some(sub) => self.mount_sub_path(m, &data, sub)?,
            None => {
                let aside = if m.bind { self.take_aside(&m.source) } else { None };
                let is_file = match &aside {
                    Some(tree) => nix::sys::stat::fstat(tree).is_ok_and(|st| st.st_mode & libc::S_IFMT != libc::S_IFDIR),
                    None => m.bind && std::fs::metadata(&m.source).map(|md| !md.is_dir()).unwrap_or(false),
                };
                let target = mount_target(self.root()?, &m.dest, is_file)?;
                let tree = if m.kind == "proc" && !m.bind { self.proc_tree.take() } else { None };
                match tree {
                    Some(tree) => attach_proc(m, tree, &target)?,
                    None => self.mount_on(m, &data, &target, aside)?,
                }
            }
        }
        let root = self.root()?;
        // The target fd points beneath the new mount; open the mount itself.
        let rel = clean_relative(m.dest.strip_prefix("/").unwrap_or(&m.dest)).map_err(path_err)?;
        let mounted = root.open_in_root(&rel, OFlag::O_PATH, Mode::empty()).map_err(path_err)?;
        let mpath = fd_path(&mounted);
        // A bind mount (a sub path is one) takes its flags only on a remount.
        if (m.bind || m.sub_path.is_some()) && !m.flags.is_empty() {
            mount(None::<&str>, mpath.as_str(), None::<&str>, m.flags | MsFlags::MS_REMOUNT | MsFlags::MS_BIND, None::<&str>)
                .map_err(|e| InitError::setup(&step("remount"), e))?;
        }
        if m.recursive_readonly {
            // MS_RDONLY on a bind remount covers the top mount only; the
            // mounts beneath a recursive bind stay writable without this.
            let ro = crate::mountapi::Attr { set: libc::MOUNT_ATTR_RDONLY, ..Default::default() };
            crate::mountapi::set_attr(mounted.as_fd(), true, ro).map_err(|e| InitError::setup(&step("recursive read-only"), e))?;
        }
        if !m.propagation.is_empty() {
            mount(None::<&str>, mpath.as_str(), None::<&str>, m.propagation, None::<&str>)
                .map_err(|e| InitError::setup(&step("propagation"), e))?;
        }
        self.last_mount = Some(mounted);
        Ok(())
    }

    fn mount_cgroup(&mut self, m: &MountOp, dirs: &[PathBuf]) -> Result<(), InitError> {
        let step = |what: &str| format!("mount the cgroup view at {} ({what})", m.dest.display());
        let bind = |dest: PathBuf, source: &Path, flags: MsFlags| MountOp {
            dest,
            source: source.to_path_buf(),
            kind: "bind".into(),
            bind: true,
            recursive: false,
            flags,
            propagation: MsFlags::empty(),
            idmap: false,
            sub_path: None,
            data: String::new(),
            recursive_readonly: false,
        };
        if self.cgroup_v2() {
            let target = mount_target(self.root()?, &m.dest, false)?;
            // In the container's cgroup namespace, the mount's root is its
            // own cgroup. Without one (a host cgroupns asked for) the kernel
            // would show the whole tree: bind the container's directory.
            match mount(Some("cgroup2"), fd_path(&target).as_str(), Some("cgroup2"), m.flags, None::<&str>) {
                Ok(()) => return Ok(()),
                Err(Errno::EPERM | Errno::EBUSY) if !dirs.is_empty() => return self.mount(&bind(m.dest.clone(), &dirs[0], m.flags)),
                Err(e) => return Err(InitError::setup(&step("cgroup2"), e)),
            }
        }
        let layout = self.cgroup_v1.take().unwrap_or_else(|| super::cgroupfs::v1_layout(dirs, super::cgroupfs::hierarchy_mount));
        let tmpfs = MountOp {
            dest: m.dest.clone(),
            source: "tmpfs".into(),
            kind: "tmpfs".into(),
            bind: false,
            recursive: false,
            flags: m.flags & !MsFlags::MS_RDONLY,
            propagation: MsFlags::empty(),
            idmap: false,
            sub_path: None,
            data: "mode=755".into(),
            recursive_readonly: false,
        };
        self.mount(&tmpfs)?;
        let dir = self.last_mount.take().ok_or_else(|| InitError::Setup(step("no tmpfs")))?;
        for (name, source) in &layout.binds {
            self.mount(&bind(m.dest.join(name), source, m.flags))?;
        }
        for (link, target) in &layout.links {
            match nix::unistd::symlinkat(target.as_str(), dir.as_fd(), link.as_str()) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(InitError::setup(&step(&format!("symlink {link}")), e)),
            }
        }
        if m.flags.contains(MsFlags::MS_RDONLY) {
            let flags = m.flags | MsFlags::MS_REMOUNT | MsFlags::MS_BIND;
            mount(None::<&str>, fd_path(&dir).as_str(), None::<&str>, flags, None::<&str>)
                .map_err(|e| InitError::setup(&step("read-only"), e))?;
        }
        Ok(())
    }

    fn populate_dev(&mut self, nodes: &[DeviceNode], links: &[(&str, &str)]) -> Result<(), InitError> {
        let dev = self.last_mount.take().ok_or_else(|| InitError::Setup("no /dev mount to make devices in".into()))?;
        let fs = nix::sys::statfs::fstatfs(&dev).map_err(|e| InitError::setup("statfs /dev", e))?;
        if fs.filesystem_type() != nix::sys::statfs::TMPFS_MAGIC {
            return Err(InitError::Setup("/dev is not the container's tmpfs: no device nodes are made there".into()));
        }
        let dev = RootDir::from_fd(dev, Path::new("/dev"));
        for n in nodes {
            let name = n.rel.file_name().ok_or_else(|| InitError::Setup("device path is /dev".into()))?;
            let parent = dev.open_dir_beneath(n.rel.parent().unwrap_or(Path::new("")), true).map_err(path_err)?;
            let _ = nix::unistd::unlinkat(parent.as_fd(), name, nix::unistd::UnlinkatFlags::NoRemoveDir);
            nix::sys::stat::mknodat(
                parent.as_fd(),
                name,
                n.kind,
                Mode::from_bits_truncate(n.mode),
                nix::sys::stat::makedev(n.major, n.minor),
            )
            .map_err(|e| InitError::setup(&format!("mknod /dev/{}", n.rel.display()), e))?;
            let (uid, gid) = (nix::unistd::Uid::from_raw(n.uid), nix::unistd::Gid::from_raw(n.gid));
            nix::unistd::fchownat(parent.as_fd(), name, Some(uid), Some(gid), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(|e| InitError::setup("chown device", e))?;
        }
        for (link, target) in links {
            match nix::unistd::symlinkat(*target, dev.fd(), *link) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(InitError::setup(&format!("symlink /dev/{link}"), e)),
            }
        }
        let null =
            crate::fs::open_beneath(dev.fd(), Path::new("null"), OFlag::O_PATH).map_err(|e| InitError::setup("open /dev/null", e))?;
        let st = nix::sys::stat::fstat(&null).map_err(|e| InitError::setup("stat /dev/null", e))?;
        if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFCHR || st.st_rdev != nix::sys::stat::makedev(1, 3) {
            return Err(InitError::Setup("/dev/null is not the null device".into()));
        }
        self.null = Some(null);
        Ok(())
    }

    fn pivot_root(&mut self) -> Result<(), InitError> {
        self.root = None;
        self.last_mount = None;
        fn step(what: &'static str) -> impl Fn(Errno) -> InitError {
            move |e| InitError::setup(what, e)
        }
        let old_root =
            nix::fcntl::open("/", OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).map_err(step("open old root"))?;
        nix::unistd::chdir(&self.rootfs).map_err(step("chdir rootfs"))?;
        nix::unistd::pivot_root(".", ".").map_err(|e| match e {
            Errno::EINVAL if root_is_the_initial_ramfs() => InitError::Setup(
                "pivot_root: the node's / is the initial ramfs, which pivot_root cannot leave; \
                 boot with a real root (or switch_root/chroot onto one) first"
                    .into(),
            ),
            e => InitError::setup("pivot_root", e),
        })?;
        // The old root is now stacked on the new one. Through its fd, make
        // it a slave (with a shared root its detach would otherwise
        // propagate to the host's mounts; runc does the same), then detach
        // it; the new root's own mounts keep their propagation.
        nix::unistd::fchdir(&old_root).map_err(step("fchdir old root"))?;
        mount(None::<&str>, ".", None::<&str>, MsFlags::MS_SLAVE | MsFlags::MS_REC, None::<&str>).map_err(step("make old root rslave"))?;
        umount2(".", MntFlags::MNT_DETACH).map_err(step("detach old root"))?;
        nix::unistd::chdir("/").map_err(step("chdir /"))
    }

    fn set_hostname(&mut self, name: &str) -> Result<(), InitError> {
        nix::unistd::sethostname(name).map_err(|e| InitError::setup("sethostname", e))
    }

    fn sysctl(&mut self, key: &str, value: &str) -> Result<(), InitError> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        std::fs::write(&path, value).map_err(|e| InitError::setup(&format!("sysctl {key}={value}"), e))
    }

    fn mask(&mut self, p: &str) -> Result<(), InitError> {
        let r = match std::fs::symlink_metadata(p) {
            Err(_) => return Ok(()),
            Ok(m) if m.is_dir() => mount(Some("tmpfs"), p, Some("tmpfs"), MsFlags::MS_RDONLY, None::<&str>),
            Ok(_) => {
                // Bound from the fd of the node populate_dev made and checked,
                // never a /dev/null looked up by name (a volume at /dev could
                // have swapped it for a link elsewhere).
                let null = self
                    .null
                    .as_ref()
                    .ok_or_else(|| InitError::Setup(format!("mask {p}: the spec mounts no /dev tmpfs to take a null device from")))?;
                if self.proc_for_children {
                    // No /proc/self/fd here: a clone of the node's mount, by its fd.
                    let tree =
                        crate::mountapi::clone_tree_at(null.as_fd(), false).map_err(|e| InitError::setup(&format!("mask {p}"), e))?;
                    return crate::mountapi::attach(tree.as_fd(), Path::new(p)).map_err(|e| InitError::setup(&format!("mask {p}"), e));
                }
                mount(Some(fd_path(null).as_str()), p, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            }
        };
        r.map_err(|e| InitError::setup(&format!("mask {p}"), e))
    }

    fn readonly(&mut self, p: &str) -> Result<(), InitError> {
        if std::fs::symlink_metadata(p).is_err() {
            return Ok(());
        }
        let ro = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        mount(Some(p), p, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
            .and_then(|_| mount(None::<&str>, p, None::<&str>, ro, None::<&str>))
            .map_err(|e| InitError::setup(&format!("readonly {p}"), e))
    }

    fn remount_root_readonly(&mut self, flags: MsFlags) -> Result<(), InitError> {
        // A bind remount sets every per-mount flag: keep the rootfs's own.
        mount(None::<&str>, "/", None::<&str>, flags | MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY, None::<&str>)
            .map_err(|e| InitError::setup("remount / read-only", e))
    }
}

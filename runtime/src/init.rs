//! The container init: what the process forked by the monitor does between
//! `fork` and `execve` — join the cgroup and namespaces, build the rootfs
//! (overlayfs, /proc, /sys, /dev, spec mounts), `pivot_root`, resolve the user,
//! working directory and executable, report ready, wait for start, switch
//! user and exec. Every failure goes back to the monitor as an [`InitError`].
//!
//! This runs in a single-threaded child, so plain allocation is fine.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::{Mode, SFlag};
use oci_spec::runtime::{LinuxNamespaceType, Mount, Spec};

use crate::cgroup::DeviceRule;
use crate::fs::{clean_relative, PathError, RootDir};
use crate::user::{self, ResolvedUser};

/// Annotation: overlayfs lowerdirs, top first, `:`-separated.
pub const ANN_LOWERDIRS: &str = "io.berth.rootfs.lowerdirs";
/// Annotation: overlayfs upperdir.
pub const ANN_UPPERDIR: &str = "io.berth.rootfs.upperdir";
/// Annotation: overlayfs workdir.
pub const ANN_WORKDIR: &str = "io.berth.rootfs.workdir";
/// Annotation: `cgroup.procs` files to join, `:`-separated.
pub const ANN_CGROUP_PROCS: &str = "io.berth.cgroup.procs";
/// Annotation: a user name (`name` or `name:group`) to resolve in the image.
pub const ANN_USER: &str = "io.berth.user";
/// Annotation: supplemental groups policy Strict (no image memberships).
pub const ANN_GROUPS_STRICT: &str = "io.berth.groups.strict";

/// Why a container could not be started; travels from the init to the
/// monitor to berthd as one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InitError {
    /// A bare command not found in `$PATH`.
    #[error("exec: \"{0}\": executable file not found in $PATH")]
    NotInPath(String),
    /// A command path that does not exist.
    #[error("exec: \"{0}\": stat {0}: no such file or directory")]
    NoSuchFile(String),
    /// The command exists but cannot be executed.
    #[error("exec: \"{0}\": permission denied")]
    NotExecutable(String),
    /// The working directory is missing or not a directory.
    #[error("chdir to cwd (\"{0}\") set in config.json failed: {1}")]
    BadCwd(String, String),
    /// The user name is not in the image's /etc/passwd.
    #[error("unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    /// The group name is not in the image's /etc/group.
    #[error("unable to find group {0}: no matching entries in group file")]
    UnknownGroup(String),
    /// Any other setup step.
    #[error("{0}")]
    Setup(String),
}

impl InitError {
    /// One line, for the pipe.
    pub fn encode(&self) -> String {
        let (kind, a, b) = match self {
            InitError::NotInPath(a) => ("notinpath", a.as_str(), ""),
            InitError::NoSuchFile(a) => ("nosuchfile", a.as_str(), ""),
            InitError::NotExecutable(a) => ("notexec", a.as_str(), ""),
            InitError::BadCwd(a, b) => ("badcwd", a.as_str(), b.as_str()),
            InitError::UnknownUser(a) => ("unknownuser", a.as_str(), ""),
            InitError::UnknownGroup(a) => ("unknowngroup", a.as_str(), ""),
            InitError::Setup(a) => ("setup", a.as_str(), ""),
        };
        format!("{kind}\t{}\t{}", a.replace(['\t', '\n'], " "), b.replace(['\t', '\n'], " "))
    }

    /// The inverse of [`InitError::encode`].
    pub fn decode(line: &str) -> InitError {
        let mut parts = line.splitn(3, '\t');
        let kind = parts.next().unwrap_or("");
        let a = parts.next().unwrap_or("").to_string();
        let b = parts.next().unwrap_or("").to_string();
        match kind {
            "notinpath" => InitError::NotInPath(a),
            "nosuchfile" => InitError::NoSuchFile(a),
            "notexec" => InitError::NotExecutable(a),
            "badcwd" => InitError::BadCwd(a, b),
            "unknownuser" => InitError::UnknownUser(a),
            "unknowngroup" => InitError::UnknownGroup(a),
            _ => InitError::Setup(a),
        }
    }
}

fn setup_err(step: &str, e: impl std::fmt::Display) -> InitError {
    InitError::Setup(format!("{step}: {e}"))
}

/// The first word of the line a ready init sends before waiting for start:
/// `ready <uid> <gid> <groups,…>`.
pub const READY: &str = "ready";

/// Runs the init: never returns. `report` is close-on-exec, so the monitor
/// sees EOF exactly when `execve` succeeded. With a `console` socket (a TTY
/// container) the init opens a terminal in the container's devpts, makes it
/// its stdio and controlling terminal, and sends the master to the monitor.
pub fn run(spec: &Spec, bundle: &Path, mut report: std::fs::File, mut start: std::fs::File, console: Option<std::os::fd::OwnedFd>) -> ! {
    let result: Result<(), InitError> = prepare(spec, bundle).and_then(|prepared| {
        let u = &prepared.user;
        if let Some(console) = console {
            let (master, slave) = crate::tty::open_pty()?;
            crate::tty::attach_terminal(&slave, Some((u.uid, u.gid)))?;
            crate::tty::send_fd(&console, &master).map_err(|e| setup_err("sending the terminal to the monitor", e))?;
        }
        let groups: Vec<String> = u.groups.iter().map(|g| g.to_string()).collect();
        report
            .write_all(format!("{READY}\t{}\t{}\t{}\n", u.uid, u.gid, groups.join(",")).as_bytes())
            .map_err(|e| setup_err("report ready", e))?;
        let mut byte = [0u8; 1];
        match start.read(&mut byte) {
            Ok(1) => {}
            // The monitor went away or closed the start pipe: do not start.
            _ => std::process::exit(1),
        }
        Err(exec(spec, prepared))
    });
    if let Err(e) = result {
        let _ = report.write_all(format!("{}\n", e.encode()).as_bytes());
    }
    // SAFETY: _exit is async-signal-safe and ends this child without running
    // the parent's atexit handlers or flushing its stdio buffers twice.
    unsafe { libc::_exit(127) }
}

/// What `prepare` resolved for `exec`.
pub struct Prepared {
    user: ResolvedUser,
    executable: CString,
    cwd: PathBuf,
    seccomp: Option<libseccomp::ScmpFilterContext>,
}

fn annotation<'a>(spec: &'a Spec, key: &str) -> Option<&'a str> {
    spec.annotations().as_ref().and_then(|a| a.get(key)).map(String::as_str).filter(|s| !s.is_empty())
}

/// Everything up to the point where only `execve` is left.
pub fn prepare(spec: &Spec, bundle: &Path) -> Result<Prepared, InitError> {
    make_non_dumpable();
    // Modes are given explicitly; the umask of the spec applies at exec.
    nix::sys::stat::umask(Mode::empty());
    if let Some(procs) = annotation(spec, ANN_CGROUP_PROCS) {
        for f in procs.split(':') {
            std::fs::write(f, "0").map_err(|e| setup_err(&format!("joining cgroup {f}"), e))?;
        }
    }
    let new_uts = join_namespaces(spec)?;
    let rootfs = bundle.join("rootfs");
    let root_flags = mount_rootfs(spec, &rootfs)?;
    let root = RootDir::open(&rootfs).map_err(|e| setup_err("open rootfs", e))?;
    // The container's null device, made by us in its /dev tmpfs: the one
    // thing masked files are bound from.
    let mut null = None;
    for m in spec.mounts().iter().flatten() {
        let mounted = mount_into(&root, m)?;
        // Device nodes go into the /dev tmpfs right after it is mounted, by
        // its fd: never into the image, nor into a volume mounted at /dev later.
        if m.destination() == Path::new("/dev") && m.typ().as_deref() == Some("tmpfs") {
            null = Some(create_devices(spec, mounted)?);
        }
    }
    drop(root);
    pivot(&rootfs)?;
    if new_uts {
        if let Some(h) = spec.hostname() {
            nix::unistd::sethostname(h).map_err(|e| setup_err("sethostname", e))?;
        }
    }
    if let Some(linux) = spec.linux() {
        for (key, value) in linux.sysctl().iter().flatten() {
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            std::fs::write(&path, value).map_err(|e| setup_err(&format!("sysctl {key}={value}"), e))?;
        }
        for p in linux.masked_paths().iter().flatten() {
            mask_path(p, null.as_ref())?;
        }
        for p in linux.readonly_paths().iter().flatten() {
            readonly_path(p)?;
        }
    }
    if spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false) {
        // A bind remount sets every per-mount flag: keep the rootfs's own.
        mount(None::<&str>, "/", None::<&str>, root_flags | MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY, None::<&str>)
            .map_err(|e| setup_err("remount / read-only", e))?;
    }
    let process = spec.process().as_ref().ok_or_else(|| InitError::Setup("spec has no process".into()))?;
    let user = user::resolve(process.user(), annotation(spec, ANN_USER), annotation(spec, ANN_GROUPS_STRICT).is_some())?;
    let cwd = process.cwd().clone();
    check_cwd(&cwd)?;
    let env: Vec<String> = process.env().clone().unwrap_or_default();
    let args = process.args().clone().unwrap_or_default();
    let arg0 = args.first().ok_or_else(|| InitError::Setup("no command given".into()))?;
    let executable = find_executable(arg0, &env)?;
    set_rlimits_and_oom(process)?;
    let seccomp = match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        Some(profile) => Some(crate::security::compile(profile)?),
        None => None,
    };
    Ok(Prepared { user, executable, cwd, seccomp })
}

/// setns into namespaces with a path, unshare the new ones (PID is done by
/// the monitor before fork). Returns whether the UTS namespace is new.
fn join_namespaces(spec: &Spec) -> Result<bool, InitError> {
    let mut new = CloneFlags::empty();
    let mut new_uts = false;
    for ns in spec.linux().as_ref().and_then(|l| l.namespaces().clone()).unwrap_or_default() {
        let flag = match ns.typ() {
            LinuxNamespaceType::Pid | LinuxNamespaceType::User | LinuxNamespaceType::Time => continue,
            LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
            LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
            LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
            LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
            LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        };
        match ns.path() {
            Some(path) => {
                let fd = nix::fcntl::open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
                    .map_err(|e| setup_err(&format!("open namespace {}", path.display()), e))?;
                nix::sched::setns(fd, flag).map_err(|e| setup_err(&format!("setns {}", path.display()), e))?;
            }
            None => {
                new |= flag;
                new_uts |= flag == CloneFlags::CLONE_NEWUTS;
            }
        }
    }
    if !new.contains(CloneFlags::CLONE_NEWNS) {
        return Err(InitError::Setup("the container needs its own mount namespace".into()));
    }
    nix::sched::unshare(new).map_err(|e| setup_err("unshare", e))?;
    Ok(new_uts)
}

/// True when the spec's device cgroup rules deny by default: then no device
/// node in the rootfs may be usable either (`nodev`), whoever put it there.
fn devices_restricted(spec: &Spec) -> Result<bool, InitError> {
    let rules = spec.linux().as_ref().and_then(|l| l.resources().as_ref()).and_then(|r| r.devices().clone()).unwrap_or_default();
    let rules: Vec<DeviceRule> =
        rules.iter().map(DeviceRule::from_oci).collect::<Result<_, _>>().map_err(|e| setup_err("device rules", e))?;
    Ok(!crate::cgroup::devices::reduce(&rules).default_allow)
}

/// Overlayfs of the image snapshots with the container's writable layer;
/// returns the per-mount flags it was mounted with.
fn mount_rootfs(spec: &Spec, rootfs: &Path) -> Result<MsFlags, InitError> {
    // Nothing mounted from here on may propagate back to the host.
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>).map_err(|e| setup_err("make / rslave", e))?;
    let lower = annotation(spec, ANN_LOWERDIRS).ok_or_else(|| InitError::Setup("no rootfs layers".into()))?;
    let data = match (annotation(spec, ANN_UPPERDIR), annotation(spec, ANN_WORKDIR)) {
        (Some(upper), Some(work)) => format!("lowerdir={lower},upperdir={upper},workdir={work}"),
        _ => format!("lowerdir={lower}"),
    };
    let flags = if devices_restricted(spec)? { MsFlags::MS_NODEV } else { MsFlags::empty() };
    mount(Some("overlay"), rootfs, Some("overlay"), flags, Some(data.as_str()))
        .map_err(|e| setup_err(&format!("mount overlay rootfs ({} bytes of options)", data.len()), e))?;
    Ok(flags)
}

/// Mount flags and data from OCI mount options.
fn parse_options(options: &[String]) -> (MsFlags, MsFlags, String) {
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

/// Creates the destination inside the root (symlinks resolved as the
/// container would, never out of it) and returns an O_PATH fd to mount on.
fn mount_target(root: &RootDir, dest: &Path, is_file: bool) -> Result<OwnedFd, InitError> {
    let rel = clean_relative(dest.strip_prefix("/").unwrap_or(dest)).map_err(|e| setup_err("mount destination", e))?;
    let target_err = |e: Errno| setup_err(&format!("mount destination {}", dest.display()), e);
    let mut prefix = PathBuf::new();
    let comps: Vec<_> = rel.components().collect();
    for (i, c) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        let parent = root.open_in_root(&prefix, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).map_err(path_err)?;
        prefix.push(c);
        if root.open_in_root(&prefix, OFlag::O_PATH, Mode::empty()).is_ok() {
            continue;
        }
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

fn path_err(e: PathError) -> InitError {
    setup_err("mount destination", e)
}

fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// One OCI mount, into the (not yet pivoted) root; returns an `O_PATH` fd of
/// the new mount's root.
fn mount_into(root: &RootDir, m: &Mount) -> Result<OwnedFd, InitError> {
    let kind = m.typ().clone().unwrap_or_else(|| "bind".into());
    let (mut flags, propagation, data) = parse_options(m.options().as_deref().unwrap_or(&[]));
    let source = m.source().clone().unwrap_or_else(|| PathBuf::from(&kind));
    let is_bind = kind == "bind" || flags.contains(MsFlags::MS_BIND);
    let is_file = is_bind && std::fs::metadata(&source).map(|md| !md.is_dir()).unwrap_or(false);
    if is_bind {
        flags |= MsFlags::MS_BIND;
    }
    let dest = m.destination();
    let target = mount_target(root, dest, is_file)?;
    let tpath = fd_path(&target);
    let step = |what: &str| format!("mount {} on {} ({what})", source.display(), dest.display());
    let data_opt = if data.is_empty() { None } else { Some(data.as_str()) };
    if is_bind {
        mount(Some(&source), tpath.as_str(), None::<&str>, flags & (MsFlags::MS_BIND | MsFlags::MS_REC), None::<&str>)
            .map_err(|e| setup_err(&step("bind"), e))?;
    } else {
        mount(Some(&source), tpath.as_str(), Some(kind.as_str()), flags, data_opt).map_err(|e| setup_err(&step(&kind), e))?;
    }
    // The target fd points beneath the new mount; open the mount itself.
    let rel = clean_relative(dest.strip_prefix("/").unwrap_or(dest)).map_err(|e| setup_err("mount destination", e))?;
    let mounted = root.open_in_root(&rel, OFlag::O_PATH, Mode::empty()).map_err(path_err)?;
    // A bind mount takes its flags only on a remount.
    let extra = if is_bind { flags & !(MsFlags::MS_BIND | MsFlags::MS_REC) } else { MsFlags::empty() };
    let mpath = fd_path(&mounted);
    if !extra.is_empty() {
        mount(None::<&str>, mpath.as_str(), None::<&str>, extra | MsFlags::MS_REMOUNT | MsFlags::MS_BIND, None::<&str>)
            .map_err(|e| setup_err(&step("remount"), e))?;
    }
    if !propagation.is_empty() {
        mount(None::<&str>, mpath.as_str(), None::<&str>, propagation, None::<&str>).map_err(|e| setup_err(&step("propagation"), e))?;
    }
    Ok(mounted)
}

/// The OCI default devices plus the spec's, as nodes in the container's /dev
/// tmpfs `dev` (checked to be a tmpfs), and its standard links. Returns an
/// `O_PATH` fd of the `null` node made here (checked to be `c 1:3`).
fn create_devices(spec: &Spec, dev: OwnedFd) -> Result<OwnedFd, InitError> {
    let fs = nix::sys::statfs::fstatfs(&dev).map_err(|e| setup_err("statfs /dev", e))?;
    if fs.filesystem_type() != nix::sys::statfs::TMPFS_MAGIC {
        return Err(InitError::Setup("/dev is not the container's tmpfs: no device nodes are made there".into()));
    }
    let dev = RootDir::from_fd(dev, Path::new("/dev"));
    let defaults: [(&str, u64, u64); 6] =
        [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)];
    let mut nodes: Vec<(PathBuf, SFlag, u64, u64, u32, u32, u32)> =
        defaults.iter().map(|(n, ma, mi)| (PathBuf::from(n), SFlag::S_IFCHR, *ma, *mi, 0o666, 0, 0)).collect();
    if let Some(linux) = spec.linux() {
        for d in linux.devices().iter().flatten() {
            let rel = d
                .path()
                .strip_prefix("/dev")
                .map(Path::to_path_buf)
                .map_err(|_| InitError::Setup(format!("device {} is not under /dev", d.path().display())))?;
            let kind = match d.typ() {
                oci_spec::runtime::LinuxDeviceType::B => SFlag::S_IFBLK,
                oci_spec::runtime::LinuxDeviceType::P => SFlag::S_IFIFO,
                _ => SFlag::S_IFCHR,
            };
            nodes.push((
                rel,
                kind,
                d.major() as u64,
                d.minor() as u64,
                d.file_mode().unwrap_or(0o666),
                d.uid().unwrap_or(0),
                d.gid().unwrap_or(0),
            ));
        }
    }
    for (rel, kind, major, minor, mode, uid, gid) in nodes {
        let rel = clean_relative(&rel).map_err(|e| setup_err("device path", e))?;
        let name = rel.file_name().ok_or_else(|| InitError::Setup("device path is /dev".into()))?;
        let parent = dev.open_dir_beneath(rel.parent().unwrap_or(Path::new("")), true).map_err(path_err)?;
        let _ = nix::unistd::unlinkat(parent.as_fd(), name, nix::unistd::UnlinkatFlags::NoRemoveDir);
        nix::sys::stat::mknodat(parent.as_fd(), name, kind, Mode::from_bits_truncate(mode), nix::sys::stat::makedev(major, minor))
            .map_err(|e| setup_err(&format!("mknod /dev/{}", rel.display()), e))?;
        nix::unistd::fchownat(
            parent.as_fd(),
            name,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| setup_err("chown device", e))?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
        ("core", "/proc/kcore"),
    ] {
        match nix::unistd::symlinkat(target, dev.fd(), link) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(setup_err(&format!("symlink /dev/{link}"), e)),
        }
    }
    let null = crate::fs::open_beneath(dev.fd(), Path::new("null"), OFlag::O_PATH).map_err(|e| setup_err("open /dev/null", e))?;
    let st = nix::sys::stat::fstat(&null).map_err(|e| setup_err("stat /dev/null", e))?;
    if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFCHR || st.st_rdev != nix::sys::stat::makedev(1, 3) {
        return Err(InitError::Setup("/dev/null is not the null device".into()));
    }
    Ok(null)
}

/// `pivot_root` onto the rootfs and detach the old root.
fn pivot(rootfs: &Path) -> Result<(), InitError> {
    nix::unistd::chdir(rootfs).map_err(|e| setup_err("chdir rootfs", e))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| setup_err("pivot_root", e))?;
    // The old root is stacked under the new one at "."; detach it.
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| setup_err("detach old root", e))?;
    nix::unistd::chdir("/").map_err(|e| setup_err("chdir /", e))
}

/// Hides `p`: a directory under an empty read-only tmpfs, a file under the
/// null device that `create_devices` made and checked — bound from its fd,
/// never looked up by name, so a `/dev/null` swapped for a link to somewhere
/// else (a volume at /dev) cannot be what is mounted.
fn mask_path(p: &str, null: Option<&OwnedFd>) -> Result<(), InitError> {
    let r = match std::fs::symlink_metadata(p) {
        Err(_) => return Ok(()),
        Ok(m) if m.is_dir() => mount(Some("tmpfs"), p, Some("tmpfs"), MsFlags::MS_RDONLY, None::<&str>),
        Ok(_) => {
            let null =
                null.ok_or_else(|| InitError::Setup(format!("mask {p}: the spec mounts no /dev tmpfs to take a null device from")))?;
            mount(Some(fd_path(null).as_str()), p, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        }
    };
    r.map_err(|e| setup_err(&format!("mask {p}"), e))
}

fn readonly_path(p: &str) -> Result<(), InitError> {
    if std::fs::symlink_metadata(p).is_err() {
        return Ok(());
    }
    mount(Some(p), p, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .and_then(|_| {
            mount(
                None::<&str>,
                p,
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                None::<&str>,
            )
        })
        .map_err(|e| setup_err(&format!("readonly {p}"), e))
}

/// `chdir`, then a check that the new working directory is inside the
/// process's root: a directory reached through an fd from outside (the shape
/// of CVE-2024-21626) has no path from the root, and `getcwd` fails for it
/// (the kernel marks it "(unreachable)", glibc answers ENOENT).
pub fn chdir_inside(cwd: &Path) -> Result<(), InitError> {
    let bad = |why: String| InitError::BadCwd(cwd.display().to_string(), why);
    nix::unistd::chdir(cwd).map_err(|e| bad(e.to_string()))?;
    match nix::unistd::getcwd() {
        Ok(p) if p.is_absolute() => Ok(()),
        Ok(p) => Err(bad(format!("the working directory {} is outside the container", p.display()))),
        Err(e) => Err(bad(format!("the working directory is outside the container ({e})"))),
    }
}

fn check_cwd(cwd: &Path) -> Result<(), InitError> {
    match std::fs::metadata(cwd) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(InitError::BadCwd(cwd.display().to_string(), "not a directory".into())),
        Err(e) => Err(InitError::BadCwd(cwd.display().to_string(), e.to_string())),
    }
}

/// `$PATH` lookup as Go's exec.LookPath does (containerd's error text).
pub fn find_executable(arg0: &str, env: &[String]) -> Result<CString, InitError> {
    let is_exec = |p: &Path| -> Result<bool, ()> {
        match std::fs::metadata(p) {
            Ok(m) if m.is_file() => Ok(std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0),
            Ok(_) => Ok(false),
            Err(_) => Err(()),
        }
    };
    let cstring = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|_| InitError::Setup(format!("NUL in {arg0:?}")));
    if arg0.contains('/') {
        return match is_exec(Path::new(arg0)) {
            Ok(true) => cstring(Path::new(arg0)),
            Ok(false) => Err(InitError::NotExecutable(arg0.into())),
            Err(()) => Err(InitError::NoSuchFile(arg0.into())),
        };
    }
    let path = env.iter().find_map(|e| e.strip_prefix("PATH=")).unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(arg0);
        if let Ok(true) = is_exec(&candidate) {
            return cstring(&candidate);
        }
    }
    Err(InitError::NotInPath(arg0.into()))
}

/// rlimits and oom_score_adj. Without CAP_SYS_RESOURCE a raise above the hard
/// limit or a lower oom_score_adj is refused: clamp and go on, as containerd's
/// restrict_oom_score_adj does.
pub fn set_rlimits_and_oom(process: &oci_spec::runtime::Process) -> Result<(), InitError> {
    for r in process.rlimits().iter().flatten() {
        let resource = rlimit_resource(r.typ());
        let Some(resource) = resource else { continue };
        let (soft, hard) = (r.soft(), r.hard());
        if nix::sys::resource::setrlimit(resource, soft, hard).is_err() {
            let (_, cur_hard) = nix::sys::resource::getrlimit(resource).map_err(|e| setup_err("getrlimit", e))?;
            let hard = hard.min(cur_hard);
            nix::sys::resource::setrlimit(resource, soft.min(hard), hard).map_err(|e| setup_err("setrlimit", e))?;
        }
    }
    if let Some(adj) = process.oom_score_adj() {
        if std::fs::write("/proc/self/oom_score_adj", adj.to_string()).is_err() {
            // Lowering needs CAP_SYS_RESOURCE; keep the inherited (higher) value.
            let current: i32 = std::fs::read_to_string("/proc/self/oom_score_adj").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
            let _ = std::fs::write("/proc/self/oom_score_adj", adj.max(current).to_string());
        }
    }
    Ok(())
}

fn rlimit_resource(t: oci_spec::runtime::PosixRlimitType) -> Option<nix::sys::resource::Resource> {
    use nix::sys::resource::Resource as R;
    use oci_spec::runtime::PosixRlimitType as T;
    Some(match t {
        T::RlimitCpu => R::RLIMIT_CPU,
        T::RlimitFsize => R::RLIMIT_FSIZE,
        T::RlimitData => R::RLIMIT_DATA,
        T::RlimitStack => R::RLIMIT_STACK,
        T::RlimitCore => R::RLIMIT_CORE,
        T::RlimitRss => R::RLIMIT_RSS,
        T::RlimitNproc => R::RLIMIT_NPROC,
        T::RlimitNofile => R::RLIMIT_NOFILE,
        T::RlimitMemlock => R::RLIMIT_MEMLOCK,
        T::RlimitAs => R::RLIMIT_AS,
        T::RlimitLocks => R::RLIMIT_LOCKS,
        T::RlimitSigpending => R::RLIMIT_SIGPENDING,
        T::RlimitMsgqueue => R::RLIMIT_MSGQUEUE,
        T::RlimitNice => R::RLIMIT_NICE,
        T::RlimitRtprio => R::RLIMIT_RTPRIO,
        T::RlimitRttime => R::RLIMIT_RTTIME,
        #[allow(unreachable_patterns)]
        _ => return None,
    })
}

/// The last steps: user, umask, fds, exec. Returns only on failure.
pub fn exec(spec: &Spec, prepared: Prepared) -> InitError {
    let Some(process) = spec.process().as_ref() else { return InitError::Setup("spec has no process".into()) };
    if let Err(e) = confine(process, &prepared.user, prepared.seccomp.as_ref()) {
        return e;
    }
    // After the switch, so permission on the directory is the user's.
    if let Err(e) = chdir_inside(&prepared.cwd) {
        return e;
    }
    let umask = process.user().umask().unwrap_or(0o022);
    nix::sys::stat::umask(Mode::from_bits_truncate(umask));
    // The container outlives its monitor's setup phase: no parent-death signal.
    exec_final(&prepared.executable, process.args().as_deref().unwrap_or(&[]), process.env().as_deref().unwrap_or(&[]), 0)
}

/// Until exec, berth's own binary is this process's /proc/<pid>/exe: a
/// process in the container must not be able to open it (ptrace access
/// checks fail for non-dumpable processes). exec of the workload resets it.
pub fn make_non_dumpable() {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0) };
}

/// User, capabilities, no_new_privs and seccomp, in the order that lets each
/// step still have the privilege it needs: without no_new_privs the filter
/// is loaded while CAP_SYS_ADMIN is still held.
pub fn confine(
    process: &oci_spec::runtime::Process,
    user: &ResolvedUser,
    seccomp: Option<&libseccomp::ScmpFilterContext>,
) -> Result<(), InitError> {
    if let Some(profile) = process.apparmor_profile() {
        // Takes effect at exec, like runc's aa_change_onexec.
        std::fs::write("/proc/self/attr/apparmor/exec", format!("exec {profile}"))
            .or_else(|_| std::fs::write("/proc/self/attr/exec", format!("exec {profile}")))
            .map_err(|e| InitError::Setup(format!("apparmor profile {profile}: {e}")))?;
    }
    let nnp = process.no_new_privileges().unwrap_or(false);
    if let (Some(f), false) = (seccomp, nnp) {
        crate::security::load(f)?;
    }
    crate::security::switch_user_with_caps(user, process.capabilities().as_ref())?;
    if nnp {
        crate::security::no_new_privs()?;
        if let Some(f) = seccomp {
            crate::security::load(f)?;
        }
    }
    Ok(())
}

/// Closes every descriptor above stderr on exec, sets the parent-death
/// signal (after the user switch, which clears it), and calls `execve`.
pub fn exec_final(executable: &CString, args: &[String], env: &[String], pdeathsig: i32) -> InitError {
    close_on_exec_from(3);
    let to_c = |v: &[String]| -> Vec<CString> { v.iter().filter_map(|s| CString::new(s.as_bytes()).ok()).collect() };
    let (argv, envp) = (to_c(args), to_c(env));
    let parent = nix::unistd::getppid();
    // SAFETY: prctl with PR_SET_PDEATHSIG and an int argument has no memory effects.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, pdeathsig) };
    if pdeathsig != 0 && nix::unistd::getppid() != parent {
        return InitError::Setup("parent exited before exec".into());
    }
    match nix::unistd::execve(executable, &argv, &envp) {
        Err(Errno::EACCES) => InitError::NotExecutable(args.first().cloned().unwrap_or_default()),
        Err(Errno::ENOENT) => InitError::NoSuchFile(args.first().cloned().unwrap_or_default()),
        Err(e) => setup_err(&format!("exec {:?}", executable), e),
    }
}

/// Marks every fd >= `from` close-on-exec (close_range with CLOEXEC), so
/// nothing of berth's leaks into the container while the report pipe still
/// works until exec.
pub fn close_on_exec_from(from: RawFd) {
    // SAFETY: close_range only changes fd flags; no memory is touched.
    let r = unsafe { libc::syscall(libc::SYS_close_range, from as libc::c_uint, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    if r != 0 {
        // Older kernels: walk /proc/self/fd.
        if let Ok(rd) = std::fs::read_dir("/proc/self/fd") {
            let fds: Vec<RawFd> = rd.flatten().filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok())).collect();
            for fd in fds.into_iter().filter(|&fd| fd >= from) {
                let _ = nix::fcntl::fcntl(unsafe_borrow(fd), nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
            }
        }
    }
}

fn unsafe_borrow(fd: RawFd) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: used only for fcntl on fds listed in /proc/self/fd of this
    // single-threaded process; an fd closed meanwhile makes fcntl fail, harmlessly.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

/// Opens `path` for the child's stdin (host side, before pivot).
pub fn open_null() -> std::io::Result<OwnedFd> {
    let f = std::fs::File::options().read(true).write(true).open("/dev/null")?;
    Ok(OwnedFd::from(f))
}

/// dup2 of `fd` onto `target` (0, 1 or 2).
pub fn dup_onto(fd: RawFd, target: RawFd) -> Result<(), InitError> {
    // SAFETY: dup2 on valid fds has no memory effects.
    if unsafe { libc::dup2(fd, target) } < 0 {
        return Err(setup_err("dup2 stdio", Errno::last()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_round_trip_the_pipe() {
        for e in [
            InitError::NotInPath("foo".into()),
            InitError::BadCwd("/nope".into(), "No such file".into()),
            InitError::UnknownUser("bob".into()),
            InitError::Setup("mount x: EPERM".into()),
        ] {
            assert_eq!(InitError::decode(&e.encode()), e);
        }
        assert_eq!(InitError::NotInPath("foo".into()).to_string(), "exec: \"foo\": executable file not found in $PATH");
    }

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let (f, p, d) = parse_options(&["ro".into(), "rbind".into(), "rslave".into(), "mode=755".into(), "size=64m".into()]);
        assert!(f.contains(MsFlags::MS_RDONLY | MsFlags::MS_BIND | MsFlags::MS_REC));
        assert_eq!(p, MsFlags::MS_SLAVE | MsFlags::MS_REC);
        assert_eq!(d, "mode=755,size=64m");
    }

    /// CVE-2024-21626's shape: a working directory reached through an fd to
    /// a directory outside the root. chdir itself succeeds; chdir_inside
    /// refuses it. Runs in a thread of its own, which alone gets the new
    /// mount namespace and root.
    #[test]
    fn chdir_through_an_fd_outside_the_root_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (root, outside) = (dir.path().join("root"), dir.path().join("outside"));
        std::fs::create_dir_all(root.join("proc")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let outcome = std::thread::spawn(move || {
            nix::sched::unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_FS).unwrap();
            mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>).unwrap();
            mount(Some("proc"), &root.join("proc"), Some("proc"), MsFlags::empty(), None::<&str>).unwrap();
            let fd = nix::fcntl::open(&outside, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
            nix::unistd::chroot(&root).unwrap();
            nix::unistd::chdir("/").unwrap();
            let through_fd = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
            let refused = chdir_inside(&through_fd);
            (refused, chdir_inside(Path::new("/proc")))
        })
        .join()
        .unwrap();
        assert!(matches!(outcome.0, Err(InitError::BadCwd(_, ref why)) if why.contains("outside the container")), "{:?}", outcome.0);
        assert!(outcome.1.is_ok(), "{:?}", outcome.1);
    }

    #[test]
    fn executable_lookup() {
        let env = vec!["PATH=/nonexistent:/bin".to_string()];
        assert!(find_executable("sh", &env).is_ok());
        assert_eq!(find_executable("no-such-cmd-x", &env).unwrap_err(), InitError::NotInPath("no-such-cmd-x".into()));
        assert_eq!(find_executable("/no/such", &env).unwrap_err(), InitError::NoSuchFile("/no/such".into()));
        assert_eq!(find_executable("/etc/passwd", &env).unwrap_err(), InitError::NotExecutable("/etc/passwd".into()));
    }
}

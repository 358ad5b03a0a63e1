//! A container request + pod + image → OCI runtime spec for the executor.
//! Command, env, working dir and user follow Kubernetes' merge rules with the
//! image config; mounts, devices and namespaces follow containerd's defaults.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use berth_runtime::annotations;
use oci_spec::runtime::{
    LinuxBuilder, LinuxDeviceBuilder, LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxNamespace, LinuxNamespaceBuilder,
    LinuxNamespaceType, LinuxResourcesBuilder, Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use crate::error::{Error, Result};
use crate::model::{ContainerRequest, NamespaceMode, Propagation, UserNamespaceRequest};
use crate::store::{ImageRecord, MountRecord, PodRecord};

/// CRI NamespaceMode values.
pub mod ns_mode {
    /// Shared by the pod.
    pub const POD: i32 = 0;
    /// The container's own.
    pub const CONTAINER: i32 = 1;
    /// The host's.
    pub const NODE: i32 = 2;
    /// Another container's.
    pub const TARGET: i32 = 3;
}

/// The default `$PATH` when neither image nor config sets one.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// containerd's default masked paths.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
];
/// containerd's default read-only paths.
pub const READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// Host-side paths the spec refers to.
#[derive(Debug, Clone)]
pub struct SpecPaths {
    /// berthd's state dir (where generated security profiles are written).
    pub state: PathBuf,
    /// The pod's state dir (hostname, hosts, resolv.conf, shm, ns pins).
    pub pod_dir: PathBuf,
    /// overlayfs lowerdirs, top first.
    pub lower_dirs: Vec<PathBuf>,
    /// overlayfs upperdir.
    pub upper: PathBuf,
    /// overlayfs workdir.
    pub work: PathBuf,
    /// `cgroup.procs` files to join.
    pub cgroup_procs: Vec<PathBuf>,
    /// The container cgroup (relative).
    pub cgroup: String,
    /// Whether the node runs cgroup v2.
    pub cgroup_v2: bool,
    /// systemd removes the cgroup once empty (see annotations::CGROUP_HOLD).
    pub cgroup_hold: bool,
    /// The node's dir of pod mounts, when containers may set it aside
    /// (annotations::SET_ASIDE).
    pub set_aside: Option<PathBuf>,
    /// The pin of the node's mount template, when containers may start
    /// from it (annotations::MOUNT_TEMPLATE).
    pub mount_template: Option<PathBuf>,
    /// Image volumes by mount index: the image id and its layer dirs, top
    /// first.
    pub image_volumes: HashMap<usize, (String, Vec<PathBuf>)>,
}

/// What the spec decided that berthd records.
#[derive(Debug, Clone)]
pub struct Built {
    /// The spec.
    pub spec: Spec,
    /// The process's PID namespace mode.
    pub pid_mode: i32,
    /// Target container for `TARGET` PID mode.
    pub pid_target: String,
    /// Mounts as reported in ContainerStatus.
    pub mounts: Vec<MountRecord>,
    /// The stop signal (number).
    pub stop_signal: i32,
}

/// A volume that propagates needs a host source that does: bidirectional a
/// shared mount, host-to-container a shared or slave one (kubelet makes its
/// own directories rshared; containerd refuses the same way).
fn check_source_propagation(mounts: &[berth_runtime::mountinfo::Mount], source: &Path, asked: Propagation) -> Result<(), String> {
    use berth_runtime::mountinfo::{containing, Propagation as Host};
    if asked == Propagation::Private {
        return Ok(());
    }
    let resolved = std::fs::canonicalize(source).map_err(|e| format!("{}: {e}", source.display()))?;
    let Some(m) = containing(mounts, &resolved) else {
        return Err(format!("no mount holds {}", resolved.display()));
    };
    let fits = match asked {
        Propagation::Bidirectional => m.propagation == Host::Shared,
        _ => m.propagation != Host::Private,
    };
    if fits {
        return Ok(());
    }
    let (what, needs) = if asked == Propagation::Bidirectional {
        ("bidirectional", "a shared mount")
    } else {
        ("host-to-container", "a shared or slave mount")
    };
    let is = if m.propagation == Host::Slave { "a slave" } else { "private" };
    Err(format!("{what} propagation needs {needs}: {} is on {}, which is {is}", source.display(), m.mount_point.display()))
}

fn invalid(field: &str, reason: impl std::fmt::Display) -> Error {
    Error::invalid(field, reason)
}

fn spec_err(e: oci_spec::OciSpecError) -> Error {
    Error::internal("building the OCI spec", e)
}

/// The process's argv by Kubernetes' rules: `command` replaces the image's
/// ENTRYPOINT (and drops its CMD); `args` replace CMD.
pub fn argv(config: &ContainerRequest, image: &ImageRecord) -> Result<Vec<String>> {
    let argv: Vec<String> = if !config.command.is_empty() {
        config.command.iter().chain(config.args.iter()).cloned().collect()
    } else if !config.args.is_empty() {
        image.config.entrypoint.iter().chain(config.args.iter()).cloned().collect()
    } else {
        image.config.entrypoint.iter().chain(image.config.cmd.iter()).cloned().collect()
    };
    if argv.is_empty() || argv[0].is_empty() {
        return Err(invalid("config.command", "no command given and the image has no ENTRYPOINT or CMD"));
    }
    Ok(argv)
}

/// Image env, then the config's envs overriding by name; PATH defaulted.
pub fn env(config: &ContainerRequest, image: &ImageRecord, hostname: &str) -> Result<Vec<String>> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| match env.iter_mut().find(|(ek, _)| ek == k) {
        Some(e) => e.1 = v.to_string(),
        None => env.push((k.to_string(), v.to_string())),
    };
    if !hostname.is_empty() {
        set("HOSTNAME", hostname);
    }
    for e in &image.config.env {
        let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
        set(k, v);
    }
    for (key, value) in &config.envs {
        if key.is_empty() || key.contains('=') {
            return Err(invalid("config.envs", format!("{key:?} is not a valid variable name")));
        }
        set(key, value);
    }
    let mut out: Vec<String> = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    if !out.iter().any(|e| e.starts_with("PATH=")) {
        out.push(DEFAULT_PATH.to_string());
    }
    Ok(out)
}

/// uid/gid from the security context or the image's USER; a name that must
/// be resolved inside the image travels as an annotation.
pub fn user(config: &ContainerRequest, image: &ImageRecord) -> Result<(u32, u32, Vec<u32>, Option<String>)> {
    let sc = &config.security;
    let extra: Vec<u32> = sc
        .supplemental_groups
        .iter()
        .map(|g| u32::try_from(*g).map_err(|_| invalid("supplemental_groups", format!("{g} is not a gid"))))
        .collect::<Result<_>>()?;
    let check_id = |field: &str, v: i64| u32::try_from(v).map_err(|_| invalid(field, format!("{v} is not a valid id")));
    // A group alone is refused, as by containerd: which user it goes with
    // would be the image's guess.
    if sc.run_as_group.is_some() && sc.run_as_user.is_none() && sc.run_as_username.is_empty() {
        return Err(invalid("config.linux.security_context.run_as_group", "given without run_as_user or run_as_username"));
    }
    let group = sc.run_as_group.map(|g| check_id("run_as_group", g)).transpose()?;
    if let Some(uid) = sc.run_as_user {
        let uid = check_id("run_as_user", uid)?;
        // A numeric user keeps the image's group unless one is given.
        let name = if group.is_some() { None } else { Some(uid.to_string()) };
        return Ok((uid, group.unwrap_or(0), extra, name.map(|n| with_group(&n, group))));
    }
    if !sc.run_as_username.is_empty() {
        return Ok((0, group.unwrap_or(0), extra, Some(with_group(&sc.run_as_username, group))));
    }
    let image_user = image.config.user.trim();
    if image_user.is_empty() {
        return Ok((0, group.unwrap_or(0), extra, group.map(|g| format!("0:{g}"))));
    }
    let image_user = match group {
        Some(g) => format!("{}:{g}", image_user.split(':').next().unwrap_or("")),
        None => image_user.to_string(),
    };
    Ok((0, group.unwrap_or(0), extra, Some(image_user)))
}

fn with_group(user: &str, group: Option<u32>) -> String {
    match group {
        Some(g) => format!("{user}:{g}"),
        None => user.to_string(),
    }
}

/// The signal number of an image's STOPSIGNAL (`SIGQUIT`, `QUIT`, `3`, and
/// the realtime ones as Docker names them: `SIGRTMIN+3`, which systemd stops
/// on, or `RTMAX-1`); SIGTERM when it has none or names none.
pub fn stop_signal(image: &ImageRecord) -> i32 {
    let s = image.config.stop_signal.trim();
    if s.is_empty() {
        return libc::SIGTERM;
    }
    if let Ok(n) = s.parse::<i32>() {
        return if berth_runtime::signal::ALL.contains(&n) { n } else { libc::SIGTERM };
    }
    let name = s.strip_prefix("SIG").unwrap_or(s);
    if name.starts_with("RT") {
        return realtime_signal(name).unwrap_or(libc::SIGTERM);
    }
    format!("SIG{name}").parse::<nix::sys::signal::Signal>().map(|sig| sig as i32).unwrap_or(libc::SIGTERM)
}

/// A realtime signal as Docker names it, without `SIG` (`RTMIN`, `RTMIN+3`,
/// `RTMAX-1`), as the kernel's number; None for another name or one out of
/// range.
fn realtime_signal(name: &str) -> Option<i32> {
    use berth_runtime::signal::{RTMAX, RTMIN};
    let offset = |rest: &str, sign: char| if rest.is_empty() { Some(0) } else { rest.strip_prefix(sign)?.parse::<i32>().ok() };
    let n = match name.strip_prefix("RTMIN") {
        Some(rest) => RTMIN + offset(rest, '+')?,
        None => RTMAX - offset(name.strip_prefix("RTMAX")?, '-')?,
    };
    (RTMIN..=RTMAX).contains(&n).then_some(n)
}

fn bind(dest: &str, source: &Path, options: &[&str]) -> Result<Mount> {
    MountBuilder::default()
        .destination(dest)
        .typ("bind")
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(spec_err)
}

/// An image volume: the image's layers read-only and without exec (as
/// KEP-4639 has them): one layer is a bind of its snapshot, more an overlay
/// of them with no upper layer; with a sub path, the runtime mounts that
/// aside and binds the path inside it.
fn image_volume(dest: &str, dirs: &[PathBuf], sub_path: &str) -> Result<Mount> {
    let sub = (!sub_path.is_empty()).then(|| format!("{}{sub_path}", berth_runtime::rootfs::mount::SUB_PATH_OPTION));
    if let [only] = dirs {
        let mut opts = vec!["rbind", "rprivate", "ro", "nosuid", "nodev", "noexec"];
        opts.extend(sub.as_deref());
        return bind(dest, only, &opts);
    }
    let lower = dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":");
    let mut opts = vec!["ro".into(), "nosuid".into(), "nodev".into(), "noexec".into(), format!("lowerdir={lower}")];
    opts.extend(sub);
    MountBuilder::default().destination(dest).typ("overlay").source("overlay").options(opts).build().map_err(spec_err)
}

/// Checks an image volume's sub path: relative, without `..`, and present in
/// one of the image's layers (`dirs`, top first). A path an upper layer
/// deleted passes here and fails in the runtime, which sees the merged view.
fn check_image_sub_path(sub: &str, dirs: &[PathBuf]) -> std::result::Result<(), String> {
    use std::path::Component;
    let path = Path::new(sub);
    if !path.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)) || path.components().next().is_none() {
        return Err(format!("{sub:?} is not a relative path without back traversals"));
    }
    // Looked up inside each layer as the container would (symlinks stay in it).
    let found = |d: &PathBuf| {
        berth_runtime::fs::RootDir::open(d)
            .and_then(|root| root.open_in_root(path, nix::fcntl::OFlag::O_PATH, nix::sys::stat::Mode::empty()))
            .is_ok()
    };
    if !dirs.iter().any(found) {
        return Err(format!("{sub:?} does not exist in the image"));
    }
    Ok(())
}

fn fs_mount(dest: &str, kind: &str, options: &[&str]) -> Result<Mount> {
    MountBuilder::default()
        .destination(dest)
        .typ(kind)
        .source(kind)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(spec_err)
}

/// The user namespace the container runs in: the pod's, whatever the
/// container's own options say, which may only repeat it (kubelet sends the
/// pod's); a pod in its own user namespace runs no privileged container
/// and none in the node's PID namespace (the API server refuses both).
fn container_userns<'a>(config: &ContainerRequest, pod: &'a PodRecord) -> Result<Option<&'a berth_runtime::userns::Mappings>> {
    let field = "config.linux.security_context.namespace_options.userns_options";
    match (&config.security.userns, &pod.userns) {
        (UserNamespaceRequest::Unset, _) | (UserNamespaceRequest::Node, None) => {}
        (UserNamespaceRequest::Pod(asked), Some(own)) if asked == own => {}
        (UserNamespaceRequest::Pod(_), Some(_)) => return Err(invalid(field, "differs from the pod's user namespace")),
        (UserNamespaceRequest::Pod(_), None) => return Err(invalid(field, "the pod runs in the node's user namespace")),
        (UserNamespaceRequest::Node, Some(_)) => return Err(invalid(field, "the pod runs in a user namespace of its own")),
    }
    let Some(own) = &pod.userns else { return Ok(None) };
    if config.security.privileged {
        return Err(invalid("config.linux.security_context.privileged", "not allowed in a pod with its own user namespace"));
    }
    if config.security.pid == NamespaceMode::Node {
        return Err(invalid(
            "config.linux.security_context.namespace_options.pid",
            "NODE is not allowed in a pod with its own user namespace",
        ));
    }
    Ok(Some(own))
}

/// `m` id-mapped through the container's user namespace, when it has one.
fn idmapped(mut m: Mount, userns: Option<&berth_runtime::userns::Mappings>) -> Result<Mount> {
    if let Some(own) = userns {
        let (uids, gids) = own.to_oci().map_err(spec_err)?;
        m.set_uid_mappings(Some(uids));
        m.set_gid_mappings(Some(gids));
    }
    Ok(m)
}

fn namespace(kind: LinuxNamespaceType, path: Option<PathBuf>) -> Result<LinuxNamespace> {
    let mut b = LinuxNamespaceBuilder::default().typ(kind);
    if let Some(p) = path {
        b = b.path(p);
    }
    b.build().map_err(spec_err)
}

/// Builds the spec. `pod_pid_ns` is the path of the pod's shared PID
/// namespace when it has one.
pub fn build(config: &ContainerRequest, pod: &PodRecord, image: &ImageRecord, paths: &SpecPaths) -> Result<Built> {
    let sc = &config.security;
    let args = argv(config, image)?;
    let env = env(config, image, &pod.hostname)?;
    let cwd = if !config.working_dir.is_empty() {
        config.working_dir.clone()
    } else if !image.config.working_dir.is_empty() {
        image.config.working_dir.clone()
    } else {
        "/".into()
    };
    if !cwd.starts_with('/') {
        return Err(invalid("config.working_dir", format!("{cwd:?} is not absolute")));
    }
    let (uid, gid, extra, user_name) = user(config, image)?;
    let privileged = sc.privileged;
    let userns = container_userns(config, pod)?;
    // Root unless a non-zero uid or a user name (resolved inside) says otherwise.
    let root = uid == 0 && user_name.as_deref().is_none_or(|n| n == "0" || n.starts_with("0:") || n == "root" || n.starts_with("root:"));
    let capabilities = crate::security::capabilities(sc, root)?;
    let seccomp = crate::security::seccomp(&sc.seccomp, privileged, &capabilities)?;
    let oom_score_adj = config.resources.oom_score_adj;
    let apparmor = crate::security::apparmor(&sc.apparmor, privileged, &paths.state)?;
    let mut process = ProcessBuilder::default()
        .capabilities(capabilities)
        .terminal(config.tty)
        .args(args)
        .env(env)
        .cwd(cwd)
        .user(UserBuilder::default().uid(uid).gid(gid).additional_gids(extra).build().map_err(spec_err)?)
        .no_new_privileges(sc.no_new_privs)
        .build()
        .map_err(spec_err)?;
    process.set_apparmor_profile(apparmor);
    if oom_score_adj != 0 {
        let adj = i32::try_from(oom_score_adj)
            .ok()
            .filter(|a| (-1000..=1000).contains(a))
            .ok_or_else(|| invalid("linux.resources.oom_score_adj", format!("{oom_score_adj} is not within -1000..=1000")))?;
        process.set_oom_score_adj(Some(adj));
    }

    // Mounts: containerd's defaults, the pod's files, then the config's, which
    // win over a default at the same destination.
    let user_dests: Vec<String> = config.mounts.iter().map(|m| m.container_path.clone()).collect();
    let mut mounts = vec![
        fs_mount("/proc", "proc", &["nosuid", "noexec", "nodev"])?,
        fs_mount("/dev", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"])?,
        fs_mount("/dev/pts", "devpts", &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"])?,
        fs_mount("/dev/mqueue", "mqueue", &["nosuid", "noexec", "nodev"])?,
        fs_mount("/sys", "sysfs", if privileged { &["nosuid", "noexec", "nodev"][..] } else { &["nosuid", "noexec", "nodev", "ro"][..] })?,
    ];
    // The container's own cgroup (the runtime lays it out per version);
    // writable only for privileged containers, as containerd does.
    let cgroup_opts: &[&str] =
        if privileged { &["nosuid", "noexec", "nodev", "relatime"] } else { &["nosuid", "noexec", "nodev", "relatime", "ro"] };
    mounts.push(fs_mount("/sys/fs/cgroup", "cgroup", cgroup_opts)?);
    let shm = if pod.ipc_mode == ns_mode::NODE { PathBuf::from("/dev/shm") } else { paths.pod_dir.join("shm") };
    let readonly_root = sc.readonly_rootfs;
    let file_opts: &[&str] = if readonly_root { &["rbind", "rprivate", "ro"] } else { &["rbind", "rprivate"] };
    for (dest, source, opts) in [
        ("/dev/shm", shm, &["rbind", "nosuid", "nodev", "noexec"][..]),
        ("/etc/hostname", paths.pod_dir.join("hostname"), file_opts),
        ("/etc/hosts", paths.pod_dir.join("hosts"), file_opts),
        ("/etc/resolv.conf", paths.pod_dir.join("resolv.conf"), file_opts),
    ] {
        if !user_dests.iter().any(|d| d == dest) {
            mounts.push(bind(dest, &source, opts)?);
        }
    }
    let mut mount_records = Vec::new();
    let mut rootfs_propagation: Option<&str> = None;
    let host_mounts = if config.mounts.iter().any(|m| m.propagation != Propagation::Private) {
        berth_runtime::mountinfo::read_self().map_err(Error::internal_fn("read mountinfo"))?
    } else {
        Vec::new()
    };
    for (i, m) in config.mounts.iter().enumerate() {
        let field = format!("config.mounts[{i}]");
        if !m.container_path.starts_with('/') {
            return Err(invalid(&format!("{field}.container_path"), format!("{:?} is not absolute", m.container_path)));
        }
        if m.recursive_read_only && !m.readonly {
            return Err(invalid(&format!("{field}.recursive_read_only"), "needs readonly"));
        }
        if m.recursive_read_only && m.propagation != Propagation::Private {
            return Err(invalid(&format!("{field}.recursive_read_only"), "needs private propagation"));
        }
        if !m.image.is_empty() {
            if !m.host_path.is_empty() {
                return Err(invalid(&format!("{field}.host_path"), "an image volume has no host path"));
            }
            let (image_id, dirs) =
                paths.image_volumes.get(&i).ok_or_else(|| Error::internal(format!("{field}.image"), "image volume not resolved"))?;
            if !m.image_sub_path.is_empty() {
                check_image_sub_path(&m.image_sub_path, dirs).map_err(|why| invalid(&format!("{field}.image_sub_path"), why))?;
            }
            // In a user namespace the image's files show as its root's, as the rootfs's do.
            mounts.push(idmapped(image_volume(&m.container_path, dirs, &m.image_sub_path)?, userns)?);
            mount_records.push(MountRecord { image_id: image_id.clone(), readonly: true, ..MountRecord::from(m) });
            continue;
        }
        if !m.image_sub_path.is_empty() {
            return Err(invalid(&format!("{field}.image_sub_path"), "only an image volume has a sub path"));
        }
        if !m.host_path.starts_with('/') {
            return Err(invalid(&format!("{field}.host_path"), format!("{:?} is not absolute", m.host_path)));
        }
        if let Err(e) = std::fs::metadata(&m.host_path) {
            return Err(invalid(&format!("{field}.host_path"), format!("{}: {e}", m.host_path)));
        }
        check_source_propagation(&host_mounts, Path::new(&m.host_path), m.propagation)
            .map_err(|why| invalid(&format!("{field}.propagation"), why))?;
        let propagation = match m.propagation {
            Propagation::HostToContainer => {
                rootfs_propagation.get_or_insert("rslave");
                "rslave"
            }
            Propagation::Bidirectional => {
                rootfs_propagation = Some("rshared");
                "rshared"
            }
            Propagation::Private => "rprivate",
        };
        let mut opts = vec!["rbind", propagation];
        if m.readonly {
            opts.push("ro");
        }
        if m.recursive_read_only {
            opts.push("rro");
        }
        let volume = bind(&m.container_path, Path::new(&m.host_path), &opts)?;
        let volume = match &m.idmap {
            None => volume,
            // kubelet maps a volume through the pod's own mappings; another
            // set would need a user namespace of its own, which berth does not make.
            Some(asked) if Some(asked) == userns => idmapped(volume, userns)?,
            Some(_) if userns.is_none() => {
                return Err(invalid(&format!("{field}.uid_mappings"), "an id-mapped volume needs the pod in its own user namespace"))
            }
            Some(_) => return Err(invalid(&format!("{field}.uid_mappings"), "only the pod's own uid and gid mappings are supported")),
        };
        mounts.push(volume);
        mount_records.push(MountRecord::from(m));
    }

    let mut devices = if privileged { host_devices() } else { Vec::new() };
    let mut device_rules = default_device_rules(privileged)?;
    for (i, d) in config.devices.iter().enumerate() {
        let field = format!("config.devices[{i}]");
        let meta = std::fs::metadata(&d.host_path).map_err(|e| invalid(&format!("{field}.host_path"), format!("{}: {e}", d.host_path)))?;
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let kind = if meta.file_type().is_char_device() {
            LinuxDeviceType::C
        } else if meta.file_type().is_block_device() {
            LinuxDeviceType::B
        } else {
            return Err(invalid(&format!("{field}.host_path"), format!("{} is not a device", d.host_path)));
        };
        let path = if d.container_path.is_empty() { d.host_path.clone() } else { d.container_path.clone() };
        if !path.starts_with("/dev/") {
            return Err(invalid(&format!("{field}.container_path"), format!("{path:?} is not under /dev")));
        }
        let permissions = if d.permissions.is_empty() { "rwm" } else { d.permissions.as_str() };
        if !permissions.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(invalid(&format!("{field}.permissions"), format!("{permissions:?} is not a combination of r, w and m")));
        }
        device_rules.push(device_rule(
            true,
            kind,
            Some(nix::sys::stat::major(meta.rdev()) as i64),
            Some(nix::sys::stat::minor(meta.rdev()) as i64),
            permissions,
        )?);
        devices.push(
            LinuxDeviceBuilder::default()
                .path(path)
                .typ(kind)
                .major(nix::sys::stat::major(meta.rdev()) as i64)
                .minor(nix::sys::stat::minor(meta.rdev()) as i64)
                .file_mode(meta.mode() & 0o777)
                .uid(0u32)
                .gid(0u32)
                .build()
                .map_err(spec_err)?,
        );
    }

    // Namespaces: the pod's pins, or the host's when the pod asked for NODE.
    let pin = |kind: &str| berth_runtime::sandbox::pin_path(&paths.pod_dir, kind);
    let mut namespaces = vec![namespace(LinuxNamespaceType::Mount, None)?];
    if pod.network_mode != ns_mode::NODE {
        namespaces.push(namespace(LinuxNamespaceType::Network, Some(pin("net")))?);
        namespaces.push(namespace(LinuxNamespaceType::Uts, Some(pin("uts")))?);
    }
    if pod.ipc_mode != ns_mode::NODE {
        namespaces.push(namespace(LinuxNamespaceType::Ipc, Some(pin("ipc")))?);
    }
    if paths.cgroup_v2 {
        namespaces.push(namespace(LinuxNamespaceType::Cgroup, None)?);
    }
    if userns.is_some() {
        namespaces.push(namespace(LinuxNamespaceType::User, Some(pin("user")))?);
    }
    let (pid_mode, pid_target) = match sc.pid {
        _ if pod.pid_mode == ns_mode::NODE => (ns_mode::NODE, String::new()),
        NamespaceMode::Pod => (if pod.pid_mode == ns_mode::POD { ns_mode::POD } else { ns_mode::CONTAINER }, String::new()),
        NamespaceMode::Node => (ns_mode::NODE, String::new()),
        NamespaceMode::Target => (ns_mode::TARGET, sc.pid_target.clone()),
        NamespaceMode::Container => (ns_mode::CONTAINER, String::new()),
    };
    if pid_mode == ns_mode::TARGET && pid_target.is_empty() {
        return Err(invalid("namespace_options.target_id", "TARGET PID mode needs a target container"));
    }

    // Privileged: nothing masked or read-only. Otherwise kubelet's lists
    // (it sends containerd's defaults unless procMount is Unmasked), else ours.
    let pick = |given: Option<&Vec<String>>, default: &[&str]| -> Vec<String> {
        if privileged {
            Vec::new()
        } else {
            match given {
                Some(v) if !v.is_empty() => v.clone(),
                _ => default.iter().map(|s| s.to_string()).collect(),
            }
        }
    };
    let resources = LinuxResourcesBuilder::default().devices(device_rules).build().map_err(spec_err)?;
    let mut linux = LinuxBuilder::default()
        .resources(resources)
        .namespaces(namespaces)
        .masked_paths(pick(sc.masked_paths.as_ref(), MASKED_PATHS))
        .readonly_paths(pick(sc.readonly_paths.as_ref(), READONLY_PATHS))
        .devices(devices)
        .cgroups_path(PathBuf::from(format!("/{}", paths.cgroup)))
        .build()
        .map_err(spec_err)?;
    linux.set_seccomp(seccomp);
    linux.set_rootfs_propagation(rootfs_propagation.map(str::to_string));
    if let Some(m) = userns {
        let (uids, gids) = m.to_oci().map_err(spec_err)?;
        linux.set_uid_mappings(Some(uids));
        linux.set_gid_mappings(Some(gids));
    }

    let mut annotations: HashMap<String, String> = config.annotations.clone().into_iter().collect();
    let join = |v: &[PathBuf]| v.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":");
    annotations.insert(annotations::LOWERDIRS.into(), join(&paths.lower_dirs));
    annotations.insert(annotations::UPPERDIR.into(), paths.upper.display().to_string());
    annotations.insert(annotations::WORKDIR.into(), paths.work.display().to_string());
    annotations.insert(annotations::CGROUP_PROCS.into(), join(&paths.cgroup_procs));
    if let Some(dir) = &paths.set_aside {
        annotations.insert(annotations::SET_ASIDE.into(), dir.display().to_string());
    }
    if let Some(pin) = &paths.mount_template {
        annotations.insert(annotations::MOUNT_TEMPLATE.into(), pin.display().to_string());
    }
    if paths.cgroup_hold {
        annotations.insert(annotations::CGROUP_HOLD.into(), "1".into());
    }
    if let Some(name) = user_name {
        annotations.insert(annotations::USER.into(), name);
    }
    // Strict: only the ids given, no memberships from the image's /etc/group.
    if sc.strict_groups {
        annotations.insert(annotations::GROUPS_STRICT.into(), "true".into());
    }

    let mut spec = SpecBuilder::default()
        .version("1.0.2")
        .process(process)
        .root(RootBuilder::default().path("rootfs").readonly(readonly_root).build().map_err(spec_err)?)
        .mounts(mounts)
        .linux(linux)
        .annotations(annotations)
        .build()
        .map_err(spec_err)?;
    if !pod.hostname.is_empty() {
        spec.set_hostname(Some(pod.hostname.clone()));
    }
    Ok(Built { spec, pid_mode, pid_target, mounts: mount_records, stop_signal: config.stop_signal.unwrap_or_else(|| stop_signal(image)) })
}

/// One device cgroup rule.
fn device_rule(allow: bool, kind: LinuxDeviceType, major: Option<i64>, minor: Option<i64>, access: &str) -> Result<LinuxDeviceCgroup> {
    let mut b = LinuxDeviceCgroupBuilder::default().allow(allow).typ(kind).access(access);
    if let Some(m) = major {
        b = b.major(m);
    }
    if let Some(m) = minor {
        b = b.minor(m);
    }
    b.build().map_err(spec_err)
}

/// The device cgroup rules every container starts from, as containerd's
/// default spec has them: a privileged container may use every device;
/// any other may use the OCI default nodes and its terminals, and may
/// create (`m`) any node but not open one it was not given.
pub fn default_device_rules(privileged: bool) -> Result<Vec<LinuxDeviceCgroup>> {
    use LinuxDeviceType::{A, C};
    if privileged {
        return Ok(vec![device_rule(true, A, None, None, "rwm")?]);
    }
    let mut rules = vec![
        device_rule(false, A, None, None, "rwm")?,
        device_rule(true, C, None, None, "m")?,
        device_rule(true, LinuxDeviceType::B, None, None, "m")?,
    ];
    // null, zero, full, random, urandom, tty, console, ptmx, and every pts.
    for (major, minor) in
        [(1, Some(3)), (1, Some(5)), (1, Some(7)), (1, Some(8)), (1, Some(9)), (5, Some(0)), (5, Some(1)), (5, Some(2)), (136, None)]
    {
        rules.push(device_rule(true, C, Some(major), minor, "rwm")?);
    }
    Ok(rules)
}

/// Every character and block device of the host's /dev (privileged containers).
fn host_devices() -> Vec<oci_spec::runtime::LinuxDevice> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = Vec::new();
    let mut dirs = vec![PathBuf::from("/dev")];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            let ft = meta.file_type();
            if ft.is_dir() {
                // The container has its own pts, shm and mqueue.
                if !matches!(path.file_name().and_then(|n| n.to_str()), Some("pts" | "shm" | "mqueue")) {
                    dirs.push(path);
                }
                continue;
            }
            let kind = if ft.is_char_device() {
                LinuxDeviceType::C
            } else if ft.is_block_device() {
                LinuxDeviceType::B
            } else {
                continue;
            };
            // The OCI defaults are created anyway; /dev/console and ptmx belong to the container.
            if matches!(
                path.to_str(),
                Some("/dev/null" | "/dev/zero" | "/dev/full" | "/dev/random" | "/dev/urandom" | "/dev/tty" | "/dev/console" | "/dev/ptmx")
            ) {
                continue;
            }
            if let Ok(d) = LinuxDeviceBuilder::default()
                .path(path.clone())
                .typ(kind)
                .major(nix::sys::stat::major(meta.rdev()) as i64)
                .minor(nix::sys::stat::minor(meta.rdev()) as i64)
                .file_mode(meta.mode() & 0o777)
                .uid(meta.uid())
                .gid(meta.gid())
                .build()
            {
                out.push(d);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ImageRunConfig;

    fn image(entrypoint: &[&str], cmd: &[&str]) -> ImageRecord {
        ImageRecord {
            config: ImageRunConfig {
                entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                env: vec!["PATH=/bin".into(), "A=image".into()],
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn config(command: &[&str], args: &[&str]) -> ContainerRequest {
        ContainerRequest {
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn kubernetes_command_rules() {
        let img = image(&["/entry"], &["cmd"]);
        assert_eq!(argv(&config(&[], &[]), &img).unwrap(), vec!["/entry", "cmd"]);
        assert_eq!(argv(&config(&[], &["a"]), &img).unwrap(), vec!["/entry", "a"]);
        assert_eq!(argv(&config(&["sh"], &[]), &img).unwrap(), vec!["sh"]);
        assert_eq!(argv(&config(&["sh"], &["-c", "x"]), &img).unwrap(), vec!["sh", "-c", "x"]);
        assert!(argv(&config(&[], &[]), &image(&[], &[])).is_err());
    }

    #[test]
    fn env_overrides_and_path_default() {
        let mut c = config(&["sh"], &[]);
        c.envs = vec![("A".into(), "config".into())];
        let e = env(&c, &image(&[], &[]), "host").unwrap();
        assert!(e.contains(&"A=config".to_string()) && e.contains(&"PATH=/bin".to_string()) && e.contains(&"HOSTNAME=host".to_string()));
        let e = env(&c, &ImageRecord::default(), "").unwrap();
        assert!(e.contains(&DEFAULT_PATH.to_string()));
        c.envs.push(("B=C".into(), "x".into()));
        assert!(matches!(env(&c, &ImageRecord::default(), ""), Err(Error::InvalidArgument { .. })));
    }

    #[test]
    fn stop_signals() {
        let mut img = ImageRecord::default();
        assert_eq!(stop_signal(&img), libc::SIGTERM);
        img.config.stop_signal = "SIGQUIT".into();
        assert_eq!(stop_signal(&img), libc::SIGQUIT);
        img.config.stop_signal = "USR1".into();
        assert_eq!(stop_signal(&img), libc::SIGUSR1);
        img.config.stop_signal = "9".into();
        assert_eq!(stop_signal(&img), 9);
        for (name, n) in [("SIGRTMIN+3", 37), ("RTMIN", 34), ("SIGRTMAX", 64), ("RTMAX-1", 63), ("SIGRTMIN+30", 64)] {
            img.config.stop_signal = name.into();
            assert_eq!(stop_signal(&img), n, "{name}");
        }
        for name in ["SIGRTMIN+31", "RTMAX-31", "RTMIN3", "RTMIN+x", "SIGNOPE", "0", "65"] {
            img.config.stop_signal = name.into();
            assert_eq!(stop_signal(&img), libc::SIGTERM, "{name}");
        }
    }

    #[test]
    fn users() {
        let img = ImageRecord { config: ImageRunConfig { user: "1000".into(), ..Default::default() }, ..Default::default() };
        let (_, _, _, name) = user(&config(&["sh"], &[]), &img).unwrap();
        assert_eq!(name.as_deref(), Some("1000"));
        let mut c = config(&["sh"], &[]);
        c.security.run_as_user = Some(33);
        c.security.run_as_group = Some(44);
        let (uid, gid, _, name) = user(&c, &img).unwrap();
        assert_eq!((uid, gid, name), (33, 44, None));
        c.security.run_as_user = None;
        assert!(user(&c, &img).unwrap_err().to_string().contains("run_as_group"));
        c.security.run_as_username = "user".into();
        assert_eq!(user(&c, &img).unwrap().3.as_deref(), Some("user:44"));
    }
}

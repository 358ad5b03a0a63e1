//! What the domain is asked to do, in its own terms: the wire adapters
//! (`cri/`) turn requests into these, the lifecycle code and the spec
//! builder work only with them.

use std::collections::BTreeMap;

use crate::store::MountRecord;

/// Who owns a namespace of a container or pod (CRI's NamespaceMode).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NamespaceMode {
    /// Shared by the pod.
    #[default]
    Pod,
    /// The container's own.
    Container,
    /// The host's.
    Node,
    /// Another container's.
    Target,
}

/// A security profile choice (seccomp, AppArmor).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Profile {
    /// Nothing asked (kubelet's default: unconfined).
    #[default]
    Unset,
    /// The runtime's default profile.
    RuntimeDefault,
    /// No profile.
    Unconfined,
    /// A named or local profile (a path for seccomp, a name for AppArmor).
    Localhost(String),
}

/// How a volume's mounts propagate (CRI's MountPropagation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Propagation {
    /// Neither way.
    #[default]
    Private,
    /// Host mounts appear in the container.
    HostToContainer,
    /// Both ways.
    Bidirectional,
}

/// A volume to bind into the container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountRequest {
    /// Path in the container.
    pub container_path: String,
    /// Path on the host.
    pub host_path: String,
    /// Read-only.
    pub readonly: bool,
    /// Propagation.
    pub propagation: Propagation,
    /// Read-only all the way down, submounts included.
    pub recursive_read_only: bool,
    /// An image whose filesystem is mounted read-only here instead of a
    /// host path (an image volume); empty for a host path.
    pub image: String,
    /// kubelet's id mappings for the volume (a pod in its own user
    /// namespace): the mount is id-mapped through it.
    pub idmap: Option<berth_runtime::userns::Mappings>,
    /// The path inside an image volume to mount instead of its root.
    pub image_sub_path: String,
}

/// A host device to give the container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceRequest {
    /// Path in the container ("" = the host path).
    pub container_path: String,
    /// Path on the host.
    pub host_path: String,
    /// Device cgroup permissions ("rwm"; "" = all).
    pub permissions: String,
}

/// The security context of a container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecurityRequest {
    /// Privileged mode.
    pub privileged: bool,
    /// uid to run as.
    pub run_as_user: Option<i64>,
    /// gid to run as.
    pub run_as_group: Option<i64>,
    /// User name to resolve in the image.
    pub run_as_username: String,
    /// Extra groups.
    pub supplemental_groups: Vec<i64>,
    /// Supplemental groups policy Strict: no memberships from the image.
    pub strict_groups: bool,
    /// Read-only rootfs.
    pub readonly_rootfs: bool,
    /// no_new_privs.
    pub no_new_privs: bool,
    /// Capabilities to add.
    pub add_capabilities: Vec<String>,
    /// Capabilities to drop.
    pub drop_capabilities: Vec<String>,
    /// Capabilities to add as ambient.
    pub add_ambient_capabilities: Vec<String>,
    /// seccomp profile.
    pub seccomp: Profile,
    /// AppArmor profile.
    pub apparmor: Profile,
    /// Masked paths (None: berth's defaults).
    pub masked_paths: Option<Vec<String>>,
    /// Read-only paths (None: berth's defaults).
    pub readonly_paths: Option<Vec<String>>,
    /// The PID namespace.
    pub pid: NamespaceMode,
    /// The container whose PID namespace to join (with [`NamespaceMode::Target`]).
    pub pid_target: String,
    /// The user namespace asked for.
    pub userns: UserNamespaceRequest,
}

/// A container's (or pod's) user namespace as CRI asks for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum UserNamespaceRequest {
    /// Not said: the pod's.
    #[default]
    Unset,
    /// The node's (`hostUsers: true`).
    Node,
    /// The pod's own, with these mappings (`hostUsers: false`).
    Pod(berth_runtime::userns::Mappings),
}

/// Resource limits of a container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// cgroup limits.
    pub limits: berth_runtime::cgroup::Limits,
    /// oom_score_adj.
    pub oom_score_adj: i64,
}

/// CreateContainer, validated at the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerRequest {
    /// Name within the pod.
    pub name: String,
    /// Restart attempt.
    pub attempt: u32,
    /// The image as the client named it (kubelet names the image id).
    pub image: String,
    /// The image as the pod spec named it (kubelet's
    /// `user_specified_image`; empty from older clients).
    pub user_image: String,
    /// Replaces the image's ENTRYPOINT.
    pub command: Vec<String>,
    /// Replaces the image's CMD.
    pub args: Vec<String>,
    /// Working directory ("" = the image's).
    pub working_dir: String,
    /// Environment, in order.
    pub envs: Vec<(String, String)>,
    /// Volumes.
    pub mounts: Vec<MountRequest>,
    /// Devices.
    pub devices: Vec<DeviceRequest>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// Log path relative to the pod's log directory.
    pub log_path: String,
    /// Keep stdin open.
    pub stdin: bool,
    /// Close stdin after the first attach.
    pub stdin_once: bool,
    /// A terminal.
    pub tty: bool,
    /// Limits.
    pub resources: Resources,
    /// Security context.
    pub security: SecurityRequest,
    /// The signal StopContainer sends first, when the client chose one
    /// (kubelet's `lifecycle.stopSignal`); None: the image's STOPSIGNAL.
    pub stop_signal: Option<i32>,
}

impl From<&MountRequest> for MountRecord {
    fn from(m: &MountRequest) -> MountRecord {
        MountRecord {
            container_path: m.container_path.clone(),
            host_path: m.host_path.clone(),
            readonly: m.readonly,
            propagation: m.propagation.into(),
            recursive_read_only: m.recursive_read_only,
            image: m.image.clone(),
            image_id: String::new(),
            image_sub_path: m.image_sub_path.clone(),
        }
    }
}

impl From<Propagation> for i32 {
    /// CRI's numbering, which the store keeps.
    fn from(p: Propagation) -> i32 {
        match p {
            Propagation::Private => 0,
            Propagation::HostToContainer => 1,
            Propagation::Bidirectional => 2,
        }
    }
}

/// What ExecSync returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// The command's stdout, capped.
    pub stdout: Vec<u8>,
    /// Its stderr, capped.
    pub stderr: Vec<u8>,
    /// Its exit code.
    pub exit_code: i32,
}

//! The record types kept in the store, one table each. New fields carry
//! `#[serde(default)]` so older records still decode.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Record;
pub use crate::image::record::{ImageRecord, ImageRunConfig, LayerRecord};

/// Lifecycle of a pod sandbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodState {
    /// Intent recorded; host resources may be half made (start-up cleans up).
    #[default]
    Creating,
    /// Namespaces, cgroup and files exist.
    Ready,
    /// Stopped: containers stopped, network released.
    NotReady,
}

/// A pod sandbox as berth remembers it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PodRecord {
    /// 64 hex characters.
    pub id: String,
    /// Kubernetes pod name.
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Kubernetes pod UID.
    pub uid: String,
    /// Restart attempt of the sandbox.
    pub attempt: u32,
    /// Lifecycle state.
    pub state: PodState,
    /// Creation time, nanoseconds since the epoch.
    pub created_at_ns: i64,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// Pod annotations.
    pub annotations: BTreeMap<String, String>,
    /// Hostname inside the pod.
    pub hostname: String,
    /// kubelet's log directory for the pod's containers.
    pub log_directory: String,
    /// Runtime handler asked for.
    pub runtime_handler: String,
    /// CRI NamespaceMode of the network namespace (0 POD, 2 NODE).
    pub network_mode: i32,
    /// CRI NamespaceMode of the PID namespace.
    pub pid_mode: i32,
    /// CRI NamespaceMode of the IPC namespace.
    pub ipc_mode: i32,
    /// The pod cgroup, relative to the hierarchy root.
    pub cgroup: String,
    /// True when berth named (and so removes) the pod cgroup; kubelet's
    /// `cgroup_parent` belongs to kubelet.
    pub own_cgroup: bool,
    /// Host pid of berth's PID-namespace init, when the pod shares one.
    pub init_pid: i32,
    /// Its /proc start time.
    pub init_start_time: u64,
    /// Pod IPs.
    pub ips: Vec<String>,
    /// hostPort mappings.
    pub port_mappings: Vec<berth_network::PortMapping>,
    /// Namespaced sysctls set in the pod's namespaces.
    pub sysctls: BTreeMap<String, String>,
    /// A stopped pod's init and network are released (a stop recorded
    /// NotReady first, then released them, then set this).
    pub host_released: bool,
    /// The mappings of the pod's own user namespace (`hostUsers: false`);
    /// None: the node's.
    pub userns: Option<berth_runtime::userns::Mappings>,
}

impl PodRecord {
    /// The key kubelet's retries are recognised by.
    pub fn name_key(&self) -> String {
        format!("{}/{}/{}/{}", self.namespace, self.name, self.uid, self.attempt)
    }
}

impl Record for PodRecord {
    const TABLE: &'static str = "pods";
}

/// Lifecycle of a container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    /// Intent recorded; the monitor may or may not exist (start-up cleans up).
    #[default]
    Creating,
    /// The init waits for StartContainer.
    Created,
    /// Started.
    Running,
    /// Exited; the exit status is recorded.
    Exited,
}

/// A bind mount as asked for (reported back in ContainerStatus).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MountRecord {
    /// Path in the container.
    pub container_path: String,
    /// Path on the host.
    pub host_path: String,
    /// Read-only.
    pub readonly: bool,
    /// CRI MountPropagation.
    pub propagation: i32,
    /// Read-only with every submount.
    pub recursive_read_only: bool,
    /// An image volume's image, as asked for ("" for a host path).
    pub image: String,
    /// That image's id.
    pub image_id: String,
    /// The path inside the image mounted ("" for its root).
    pub image_sub_path: String,
}

/// A container as berth remembers it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerRecord {
    /// 64 hex characters.
    pub id: String,
    /// The pod sandbox it belongs to.
    pub pod_id: String,
    /// Container name within the pod.
    pub name: String,
    /// Restart attempt.
    pub attempt: u32,
    /// Lifecycle state.
    pub state: ContainerState,
    /// Creation time, nanoseconds since the epoch.
    pub created_at_ns: i64,
    /// Start time.
    pub started_at_ns: i64,
    /// Exit time.
    pub finished_at_ns: i64,
    /// Exit code (128 + signal for a signal).
    pub exit_code: i32,
    /// `Completed`, `Error`, `OOMKilled`…
    pub reason: String,
    /// Human-readable detail.
    pub message: String,
    /// Container labels.
    pub labels: BTreeMap<String, String>,
    /// Container annotations.
    pub annotations: BTreeMap<String, String>,
    /// The image as ContainerStatus names it: as the pod spec named it,
    /// else the image's first repo tag, else as CreateContainer named it.
    pub image: String,
    /// The pod spec's name for the image (kubelet's `user_specified_image`).
    pub user_image: String,
    /// Image id it was created from.
    pub image_id: String,
    /// What ContainerStatus reports as image_ref (a repo digest, else the id).
    pub image_ref: String,
    /// Chain IDs of the image snapshots its rootfs stacks: image GC keeps them.
    pub snapshot_chain: Vec<String>,
    /// Full path of the CRI log file ("" for none).
    pub log_path: String,
    /// Bind mounts.
    pub mounts: Vec<MountRecord>,
    /// The container cgroup, relative to the hierarchy root.
    pub cgroup: String,
    /// Signal StopContainer sends first.
    pub stop_signal: i32,
    /// Host pid of the init.
    pub pid: i32,
    /// Its /proc start time.
    pub start_time: u64,
    /// Host pid of the monitor.
    pub monitor_pid: i32,
    /// Its /proc start time (0 in records from before it was kept: such a
    /// monitor is always asked for its state).
    pub monitor_start_time: u64,
    /// uid the process runs as (for ContainerStatus.user).
    pub uid: i64,
    /// gid.
    pub gid: i64,
    /// Supplementary groups.
    pub groups: Vec<i64>,
    /// Resource limits as last applied.
    pub limits: berth_runtime::cgroup::Limits,
    /// oom_score_adj asked for.
    pub oom_score_adj: i64,
    /// Stdin kept open for attach.
    pub stdin: bool,
    /// Stdin closes after the first attach session.
    pub stdin_once: bool,
    /// The container runs on a terminal.
    pub tty: bool,
}

impl ContainerRecord {
    /// The key kubelet's retries are recognised by.
    pub fn name_key(&self) -> String {
        format!("{}/{}/{}", self.pod_id, self.name, self.attempt)
    }
}

impl Record for ContainerRecord {
    const TABLE: &'static str = "containers";
}

impl Record for ImageRecord {
    const TABLE: &'static str = "images";
}

/// One IP address leased to a pod.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeaseRecord {
    /// The address, as text; it is also the key.
    pub ip: String,
    /// The pod holding it.
    pub pod_id: String,
}

impl Record for LeaseRecord {
    const TABLE: &'static str = "leases";
}

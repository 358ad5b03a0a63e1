//! The record types kept in the store, one table each. New fields carry
//! `#[serde(default)]` so older records still decode.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Record;

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
    /// Creation time, nanoseconds since the epoch.
    pub created_at_ns: i64,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// Pod annotations.
    pub annotations: BTreeMap<String, String>,
}

impl Record for PodRecord {
    const TABLE: &'static str = "pods";
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
    /// Creation time, nanoseconds since the epoch.
    pub created_at_ns: i64,
    /// Container labels.
    pub labels: BTreeMap<String, String>,
    /// Container annotations.
    pub annotations: BTreeMap<String, String>,
    /// Image id it was created from.
    pub image_id: String,
    /// Chain IDs of the image snapshots its rootfs stacks: image GC keeps them.
    pub snapshot_chain: Vec<String>,
}

impl Record for ContainerRecord {
    const TABLE: &'static str = "containers";
}

/// An image in the local store.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageRecord {
    /// The config digest (`sha256:…`): the image id.
    pub id: String,
    /// Tags pointing at it (`docker.io/library/busybox:latest`).
    pub repo_tags: Vec<String>,
    /// Digested references (`docker.io/library/busybox@sha256:…`).
    pub repo_digests: Vec<String>,
    /// Digest of the platform manifest.
    pub manifest_digest: String,
    /// Digests of indexes that led to the manifest (kept for GC).
    pub index_digests: Vec<String>,
    /// Layers, bottom first.
    pub layers: Vec<LayerRecord>,
    /// Bytes of manifest, config and compressed layers, as containerd reports.
    pub size: u64,
    /// Creation of this record, nanoseconds since the epoch.
    pub pulled_at_ns: i64,
    /// The parts of the image config that decide how containers run.
    pub config: ImageRunConfig,
}

/// One layer of an image.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LayerRecord {
    /// Compressed blob digest.
    pub digest: String,
    /// Compressed size.
    pub size: u64,
    /// Digest of the uncompressed tar.
    pub diff_id: String,
    /// Chain ID: names the unpacked snapshot directory.
    pub chain_id: String,
}

/// The image config fields a container is built from. This is data from the
/// image author: it never decides a host-side path.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageRunConfig {
    /// `USER`.
    pub user: String,
    /// `ENV`, as `KEY=value`.
    pub env: Vec<String>,
    /// `ENTRYPOINT`.
    pub entrypoint: Vec<String>,
    /// `CMD`.
    pub cmd: Vec<String>,
    /// `WORKDIR`.
    pub working_dir: String,
    /// `EXPOSE`, as `80/tcp`.
    pub exposed_ports: Vec<String>,
    /// `VOLUME` paths.
    pub volumes: Vec<String>,
    /// `STOPSIGNAL`.
    pub stop_signal: String,
    /// `LABEL`s.
    pub labels: BTreeMap<String, String>,
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

//! The image records the image service keeps (through [`super::ImageDb`]):
//! what was pulled, its layers and the parts of its config that decide how
//! containers run.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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

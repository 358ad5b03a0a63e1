//! Manifests, indexes and image configs as far as berth reads them: Docker
//! schema 2 and OCI share one JSON shape, so one set of structs serves both.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::distribution::{MEDIA_DOCKER_LIST, MEDIA_OCI_INDEX};
use super::record::ImageRunConfig;

/// A manifest or an index.
#[derive(Debug, Deserialize)]
pub struct Manifest {
    /// Media type from the document itself (optional in OCI).
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// Index entries.
    #[serde(default)]
    pub manifests: Vec<IndexEntry>,
    /// The image config.
    pub config: Option<Descriptor>,
    /// Layers, bottom first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

impl Manifest {
    /// True for an OCI index or a Docker manifest list.
    pub fn is_index(&self) -> bool {
        self.media_type == MEDIA_OCI_INDEX
            || self.media_type == MEDIA_DOCKER_LIST
            || (self.media_type.is_empty() && self.config.is_none() && !self.manifests.is_empty())
    }
}

/// A content descriptor.
#[derive(Debug, Clone, Deserialize)]
pub struct Descriptor {
    /// Media type.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// `sha256:…`.
    pub digest: String,
    /// Bytes.
    pub size: u64,
}

/// One entry of an index.
#[derive(Debug, Clone, Deserialize)]
pub struct IndexEntry {
    /// Manifest digest.
    pub digest: String,
    /// Manifest size.
    #[serde(default)]
    pub size: u64,
    /// Its platform, if declared.
    pub platform: Option<Platform>,
}

/// An index entry's platform.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Platform {
    /// GOARCH spelling: amd64, arm64…
    pub architecture: String,
    /// GOOS spelling: linux…
    pub os: String,
    /// CPU variant: v7, v8…
    #[serde(default)]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The platform this berthd runs on, in OCI spelling.
pub fn host_platform() -> Platform {
    let (architecture, variant) = match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", Some("v8")),
        "arm" => ("arm", Some("v7")),
        "powerpc64" => ("ppc64le", None),
        "s390x" => ("s390x", None),
        "riscv64" => ("riscv64", None),
        other => (other, None),
    };
    Platform { architecture: architecture.into(), os: "linux".into(), variant: variant.map(Into::into) }
}

/// Picks the entry for `want`: same OS and architecture; among those, the
/// exact variant, then one without a variant, then any.
pub fn choose_platform<'a>(entries: &'a [IndexEntry], want: &Platform) -> Option<&'a IndexEntry> {
    let candidates: Vec<&IndexEntry> =
        entries.iter().filter(|e| e.platform.as_ref().is_some_and(|p| p.os == want.os && p.architecture == want.architecture)).collect();
    let variant_of = |e: &IndexEntry| e.platform.as_ref().and_then(|p| p.variant.clone());
    candidates
        .iter()
        .find(|e| want.variant.is_some() && variant_of(e) == want.variant)
        .or_else(|| candidates.iter().find(|e| variant_of(e).is_none()))
        .or_else(|| candidates.first())
        .copied()
}

/// The image config blob.
#[derive(Debug, Deserialize)]
pub struct ImageConfigFile {
    /// Architecture the image was built for.
    #[serde(default)]
    pub architecture: String,
    /// OS the image was built for.
    #[serde(default)]
    pub os: String,
    /// How containers run.
    #[serde(default)]
    pub config: Option<ContainerConfig>,
    /// The layer diff ids.
    pub rootfs: RootFs,
}

/// `rootfs` of an image config.
#[derive(Debug, Deserialize)]
pub struct RootFs {
    /// Always "layers".
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Digests of the uncompressed layers, bottom first.
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// `config` of an image config, in the Docker/OCI capitalised spelling.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerConfig {
    /// USER.
    pub user: Option<String>,
    /// ENV.
    pub env: Option<Vec<String>>,
    /// ENTRYPOINT.
    pub entrypoint: Option<Vec<String>>,
    /// CMD.
    pub cmd: Option<Vec<String>>,
    /// WORKDIR.
    pub working_dir: Option<String>,
    /// EXPOSE.
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    /// VOLUME.
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    /// STOPSIGNAL.
    pub stop_signal: Option<String>,
    /// LABEL.
    pub labels: Option<BTreeMap<String, String>>,
}

impl ContainerConfig {
    /// The fields containers are built from.
    pub fn run_config(self) -> ImageRunConfig {
        ImageRunConfig {
            user: self.user.unwrap_or_default(),
            env: self.env.unwrap_or_default(),
            entrypoint: self.entrypoint.unwrap_or_default(),
            cmd: self.cmd.unwrap_or_default(),
            working_dir: self.working_dir.unwrap_or_default(),
            exposed_ports: self.exposed_ports.unwrap_or_default().into_keys().collect(),
            volumes: self.volumes.unwrap_or_default().into_keys().collect(),
            stop_signal: self.stop_signal.unwrap_or_default(),
            labels: self.labels.unwrap_or_default(),
        }
    }
}

/// Chain IDs per the OCI image spec: the first is the first diff id, each
/// next one is `sha256(previous + " " + diff_id)`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => super::content::sha256_digest(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// uid or username from a `USER` value (`1000`, `1000:1000`, `app`, `app:grp`).
pub fn user_of(user: &str) -> (Option<i64>, String) {
    let name = user.split(':').next().unwrap_or("");
    if name.is_empty() {
        return (None, String::new());
    }
    match name.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, name.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest as _, Sha256};

    fn entry(digest: &str, arch: &str, variant: Option<&str>) -> IndexEntry {
        IndexEntry {
            digest: digest.into(),
            size: 1,
            platform: Some(Platform { architecture: arch.into(), os: "linux".into(), variant: variant.map(Into::into) }),
        }
    }

    #[test]
    fn platform_choice_is_variant_aware() {
        let entries =
            vec![entry("a", "arm", Some("v6")), entry("b", "arm", Some("v7")), entry("c", "amd64", None), entry("d", "arm64", None)];
        let want = |a: &str, v: Option<&str>| Platform { architecture: a.into(), os: "linux".into(), variant: v.map(Into::into) };
        assert_eq!(choose_platform(&entries, &want("arm", Some("v7"))).unwrap().digest, "b");
        assert_eq!(choose_platform(&entries, &want("amd64", None)).unwrap().digest, "c");
        assert_eq!(choose_platform(&entries, &want("arm64", Some("v8"))).unwrap().digest, "d");
        assert!(choose_platform(&entries, &want("s390x", None)).is_none());
    }

    #[test]
    fn chain_ids_follow_the_spec() {
        let d = vec!["sha256:a".to_string(), "sha256:b".to_string()];
        let c = chain_ids(&d);
        assert_eq!(c[0], "sha256:a");
        assert_eq!(c[1], format!("sha256:{}", hex::encode(Sha256::digest(b"sha256:a sha256:b"))));
    }

    #[test]
    fn users() {
        assert_eq!(user_of("1000"), (Some(1000), String::new()));
        assert_eq!(user_of("1000:50"), (Some(1000), String::new()));
        assert_eq!(user_of("app:grp"), (None, "app".into()));
        assert_eq!(user_of(""), (None, String::new()));
    }

    #[test]
    fn docker_and_oci_shapes_parse() {
        let m: Manifest = serde_json::from_str(
            r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
            "config":{"mediaType":"x","digest":"sha256:c","size":3},"layers":[{"mediaType":"y","digest":"sha256:l","size":9}]}"#,
        )
        .unwrap();
        assert!(!m.is_index());
        assert_eq!(m.layers[0].size, 9);
        let i: Manifest = serde_json::from_str(
            r#"{"schemaVersion":2,"manifests":[{"digest":"sha256:m","size":1,
            "platform":{"architecture":"amd64","os":"linux"}}]}"#,
        )
        .unwrap();
        assert!(i.is_index());
        let c: ImageConfigFile = serde_json::from_str(
            r#"{"architecture":"amd64","os":"linux","config":{"User":"1000","Cmd":["sh"],
            "ExposedPorts":{"80/tcp":{}}},"rootfs":{"type":"layers","diff_ids":["sha256:d"]}}"#,
        )
        .unwrap();
        let run = c.config.unwrap().run_config();
        assert_eq!(run.user, "1000");
        assert_eq!(run.exposed_ports, vec!["80/tcp"]);
    }
}

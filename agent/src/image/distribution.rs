//! Talking to registries (OCI distribution API v2) through `oci-client`
//! (through [`super::http`] for a host with a client certificate):
//! endpoint choice (mirrors, then the registry), HTTP for insecure hosts,
//! credentials from the CRI `AuthConfig`, manifests and blob streams.

use std::net::IpAddr;

use base64::Engine as _;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol, SizedStream};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use super::hosts::{self, Endpoint};

/// The `[registry]` table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Hosts reached over plain HTTP.
    pub insecure: Vec<String>,
    /// Mirror hosts per registry host, in order.
    pub mirrors: std::collections::BTreeMap<String, Vec<String>>,
    /// The hosts directory: `<config_path>/<registry>/hosts.toml`.
    pub config_path: std::path::PathBuf,
    /// Credentials per registry host, for pulls that bring none.
    pub auths: std::collections::BTreeMap<String, AuthEntry>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            insecure: Vec::new(),
            mirrors: Default::default(),
            config_path: "/etc/berth/certs.d".into(),
            auths: Default::default(),
        }
    }
}

/// Credentials for one registry host, as in a CRI `AuthConfig`.
#[derive(Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthEntry {
    /// User name (with `password`).
    pub username: String,
    /// Password.
    pub password: String,
    /// base64 of `user:password`.
    pub auth: String,
    /// An OAuth2 refresh token.
    pub identity_token: String,
}

impl std::fmt::Debug for AuthEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthEntry(<redacted>)")
    }
}

impl AuthEntry {
    /// The same entry with every secret replaced, for printing.
    pub fn redacted(&self) -> AuthEntry {
        let r = |s: &str| if s.is_empty() { String::new() } else { "<redacted>".to_string() };
        AuthEntry {
            username: self.username.clone(),
            password: r(&self.password),
            auth: r(&self.auth),
            identity_token: r(&self.identity_token),
        }
    }
}

/// Manifest media types berth understands, in the Accept header.
pub const ACCEPTED_MANIFESTS: &[&str] = &[MEDIA_OCI_INDEX, MEDIA_DOCKER_LIST, MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST];
/// OCI image index.
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker manifest list.
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest.
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker schema 2 manifest.
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Why talking to a registry failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The request's credentials are unusable.
    #[error("auth: {0}")]
    BadAuth(String),
    /// Every endpoint failed; the reasons, in order.
    #[error("{0}")]
    AllEndpointsFailed(String),
    /// The registry's hosts.toml is unusable.
    #[error("hosts config {0}")]
    Hosts(String),
    /// A single request failed.
    #[error("{endpoint}: {reason}")]
    Request { endpoint: String, reason: String },
}

/// Credentials for one pull. Debug never shows secrets.
#[derive(Clone, Default)]
pub struct Credentials(Option<RegistryAuth>);

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match &self.0 {
            None | Some(RegistryAuth::Anonymous) => "anonymous",
            Some(RegistryAuth::Basic(..)) => "basic(<redacted>)",
            Some(RegistryAuth::Bearer(..)) => "bearer(<redacted>)",
        })
    }
}

impl Credentials {
    /// From the CRI `AuthConfig` fields. `registry_token` is a bearer token
    /// for the registry; `auth` is base64 `user:password`.
    pub fn from_cri(
        username: &str,
        password: &str,
        auth: &str,
        identity_token: &str,
        registry_token: &str,
    ) -> Result<Credentials, RegistryError> {
        if !registry_token.is_empty() {
            return Ok(Credentials(Some(RegistryAuth::Bearer(registry_token.to_string()))));
        }
        if !identity_token.is_empty() {
            // An identity token is an OAuth2 refresh token; registries that issue
            // them accept it as the password of the "<token>" user at their token
            // endpoint, which is what basic credentials become in the challenge.
            return Ok(Credentials(Some(RegistryAuth::Basic("<token>".into(), identity_token.to_string()))));
        }
        if !auth.is_empty() {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| RegistryError::BadAuth("auth.auth is not base64".into()))?;
            let text = String::from_utf8(decoded).map_err(|_| RegistryError::BadAuth("auth.auth is not UTF-8".into()))?;
            let (u, p) = text.split_once(':').ok_or_else(|| RegistryError::BadAuth("auth.auth is not user:password".into()))?;
            return Ok(Credentials(Some(RegistryAuth::Basic(u.into(), p.into()))));
        }
        if !username.is_empty() {
            return Ok(Credentials(Some(RegistryAuth::Basic(username.into(), password.into()))));
        }
        Ok(Credentials(None))
    }

    fn auth(&self) -> RegistryAuth {
        self.0.clone().unwrap_or(RegistryAuth::Anonymous)
    }
}

/// Decides endpoints and protocols from the `[registry]` config.
#[derive(Debug, Clone)]
pub struct Registries {
    config: RegistryConfig,
}

impl Registries {
    /// From config.
    pub fn new(config: RegistryConfig) -> Registries {
        Registries { config }
    }

    /// The hosts to try for `registry`, in order: from its hosts.toml when
    /// there is one, else its `[registry.mirrors]`, then itself.
    pub fn endpoints(&self, registry: &str) -> Result<Vec<Endpoint>, RegistryError> {
        match hosts::load(&self.config.config_path, registry) {
            Ok(Some(hosts)) => return Ok(hosts),
            Ok(None) => {}
            Err(e) => return Err(RegistryError::Hosts(e.to_string())),
        }
        let mut names = self.config.mirrors.get(registry).cloned().unwrap_or_default();
        names.push(registry.to_string());
        let n = names.len();
        Ok(names
            .into_iter()
            .enumerate()
            .map(|(i, name)| Endpoint {
                http: self.is_insecure(&name),
                name,
                repo_prefix: String::new(),
                ca: Vec::new(),
                skip_verify: false,
                resolve: true,
                mirror: i + 1 < n,
                client: None,
            })
            .collect())
    }

    /// Plain HTTP for configured hosts and, as Docker does, loopback.
    pub fn is_insecure(&self, host: &str) -> bool {
        if self.config.insecure.iter().any(|h| h == host) {
            return true;
        }
        let name = host_without_port(host);
        name == "localhost" || name.parse::<IpAddr>().map(|ip| ip.is_loopback()).unwrap_or(false)
    }

    /// The request's credentials; for a pull that brings none, the
    /// configured ones of the host being contacted (never another host's:
    /// a mirror does not get the registry's secrets).
    fn credentials_for(&self, endpoint: &Endpoint, creds: &Credentials) -> Result<Credentials, RegistryError> {
        if creds.0.is_some() {
            return Ok(creds.clone());
        }
        match self.config.auths.get(endpoint.host()) {
            Some(a) => Credentials::from_cri(&a.username, &a.password, &a.auth, &a.identity_token, "")
                .map_err(|e| RegistryError::BadAuth(format!("registry.auths.{:?}: {e}", endpoint.host()))),
            None => Ok(Credentials::default()),
        }
    }

    /// Connects to the first endpoint that serves `reference`'s manifest.
    /// Returns the remote and the top-level manifest (bytes, media type).
    pub async fn connect(&self, reference: &Reference, creds: &Credentials) -> Result<(Remote, Vec<u8>, String), RegistryError> {
        let mut failures = Vec::new();
        let by_tag = reference.digest().is_none();
        for endpoint in self.endpoints(reference.registry())? {
            // A host that may not resolve tags serves pulls by digest only.
            if by_tag && !endpoint.resolve {
                continue;
            }
            let r = endpoint_reference(reference, &endpoint);
            // One client per pull: oci-client caches credentials per registry for
            // the client's lifetime, and each pull brings its own.
            let auth = self.credentials_for(&endpoint, creds)?.auth();
            let kind = if endpoint.client.is_some() {
                RemoteKind::Http(super::http::HttpRemote::new(&endpoint, r.repository().to_string(), auth)?)
            } else {
                RemoteKind::Oci { client: client_for(&endpoint)?, reference: r, auth }
            };
            let remote = Remote { kind, endpoint: endpoint.name.clone() };
            match remote.manifest(&reference_target(reference)).await {
                Ok((bytes, media_type)) => return Ok((remote, bytes, media_type)),
                Err(e) => {
                    tracing::warn!(endpoint = %endpoint.name, image = %reference, "registry endpoint failed: {e}");
                    failures.push(e.to_string());
                }
            }
        }
        if failures.is_empty() {
            return Err(RegistryError::AllEndpointsFailed(format!("no host for {} may resolve tags (capabilities)", reference.registry())));
        }
        Err(RegistryError::AllEndpointsFailed(failures.join("; ")))
    }
}

/// The reference as `endpoint` serves it. The registry itself, and a
/// `[registry.mirrors]` host, get oci-client's mirror handling; a hosts.toml
/// host its own name and repository prefix.
fn endpoint_reference(reference: &Reference, endpoint: &Endpoint) -> Reference {
    if endpoint.name == reference.registry() {
        return reference.clone();
    }
    if endpoint.repo_prefix.is_empty() && !endpoint.name.contains('/') {
        let mut r = reference.clone();
        r.set_mirror_registry(endpoint.name.clone());
        return r;
    }
    let repository = if endpoint.repo_prefix.is_empty() {
        reference.repository().to_string()
    } else {
        format!("{}/{}", endpoint.repo_prefix, reference.repository())
    };
    match reference.digest() {
        Some(d) => Reference::with_digest(endpoint.name.clone(), repository, d.to_string()),
        None => Reference::with_tag(endpoint.name.clone(), repository, reference.tag().unwrap_or("latest").to_string()),
    }
}

/// An HTTP client for one endpoint: its scheme, CAs and verification.
fn client_for(endpoint: &Endpoint) -> Result<Client, RegistryError> {
    let fail = |reason: String| RegistryError::Request { endpoint: endpoint.name.clone(), reason };
    let mut extra_root_certificates = Vec::new();
    for path in &endpoint.ca {
        let data = std::fs::read(path).map_err(|e| fail(format!("ca {}: {e}", path.display())))?;
        extra_root_certificates.push(Certificate { encoding: CertificateEncoding::Pem, data });
    }
    // try_from, not new: new() falls back to reqwest's default client,
    // which panics where the first attempt failed (a machine without CA
    // certificates).
    Client::try_from(ClientConfig {
        protocol: if endpoint.http { ClientProtocol::Http } else { ClientProtocol::Https },
        platform_resolver: None,
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        user_agent: concat!("berth/", env!("CARGO_PKG_VERSION")),
        extra_root_certificates,
        accept_invalid_certificates: endpoint.skip_verify,
        ..Default::default()
    })
    .map_err(|e| fail(format!("cannot make an HTTP client: {e} (are CA certificates installed? on Debian: ca-certificates)")))
}

/// What a reference asks for: its digest if it has one, else its tag.
fn reference_target(r: &Reference) -> String {
    r.digest().or(r.tag()).unwrap_or("latest").to_string()
}

fn host_without_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// A manifest's media type: its own `mediaType` field, else `fallback`
/// (what the response's Content-Type said, where there was one).
pub(super) fn media_type(manifest: &[u8], fallback: String) -> String {
    serde_json::from_slice::<serde_json::Value>(manifest)
        .ok()
        .and_then(|v| v.get("mediaType").and_then(|m| m.as_str()).map(str::to_string))
        .unwrap_or(fallback)
}

/// One registry endpoint serving one repository.
pub struct Remote {
    kind: RemoteKind,
    /// The host answering (a mirror or the registry).
    pub endpoint: String,
}

/// Who speaks to the endpoint: oci-client, or berth's own client for a host
/// that wants a client certificate (see [`super::http`]).
enum RemoteKind {
    Oci { client: Client, reference: Reference, auth: RegistryAuth },
    Http(super::http::HttpRemote),
}

impl Remote {
    /// Fetches a manifest by tag or digest: (bytes, media type).
    pub async fn manifest(&self, target: &str) -> Result<(Vec<u8>, String), RegistryError> {
        let (client, reference, auth) = match &self.kind {
            RemoteKind::Http(h) => return h.manifest(target).await,
            RemoteKind::Oci { client, reference, auth } => (client, reference, auth),
        };
        let r = self.at(reference, target);
        let (bytes, _digest) = client.pull_manifest_raw(&r, auth, ACCEPTED_MANIFESTS).await.map_err(|e| self.error(e))?;
        let media_type = media_type(&bytes, String::new());
        Ok((bytes.to_vec(), media_type))
    }

    /// Streams a blob.
    pub async fn blob(&self, digest: &str) -> Result<SizedStream, RegistryError> {
        match &self.kind {
            RemoteKind::Http(h) => h.blob(digest).await,
            RemoteKind::Oci { client, reference, .. } => client.pull_blob_stream(reference, &digest).await.map_err(|e| self.error(e)),
        }
    }

    /// `target` (a tag or digest) of `reference`'s repository on this endpoint.
    fn at(&self, reference: &Reference, target: &str) -> Reference {
        let mut r = if target.contains(':') {
            Reference::with_digest(reference.registry().into(), reference.repository().into(), target.into())
        } else {
            Reference::with_tag(reference.registry().into(), reference.repository().into(), target.into())
        };
        if self.endpoint != reference.registry() {
            r.set_mirror_registry(self.endpoint.clone());
        }
        r
    }

    fn error(&self, e: oci_client::errors::OciDistributionError) -> RegistryError {
        RegistryError::Request { endpoint: self.endpoint.clone(), reason: flatten_error(&e) }
    }
}

/// The error with its sources on one line.
pub fn flatten_error(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_configured_hosts_are_insecure() {
        let mut config = RegistryConfig::default();
        config.insecure.push("registry.lan:5000".into());
        let r = Registries::new(config);
        assert!(r.is_insecure("localhost:5000"));
        assert!(r.is_insecure("127.0.0.1:41234"));
        assert!(r.is_insecure("127.9.9.9"));
        assert!(r.is_insecure("[::1]:5000"));
        assert!(r.is_insecure("registry.lan:5000"));
        assert!(!r.is_insecure("registry.lan"));
        assert!(!r.is_insecure("docker.io"));
    }

    #[test]
    fn mirrors_come_first_then_the_registry() {
        let mut config = RegistryConfig::default();
        config.mirrors.insert("docker.io".into(), vec!["m1:5000".into(), "m2".into()]);
        config.config_path = "/nonexistent".into();
        let r = Registries::new(config);
        let names = |reg: &str| r.endpoints(reg).unwrap().into_iter().map(|e| (e.name, e.mirror)).collect::<Vec<_>>();
        assert_eq!(names("docker.io"), vec![("m1:5000".into(), true), ("m2".into(), true), ("docker.io".into(), false)]);
        assert_eq!(names("quay.io"), vec![("quay.io".to_string(), false)]);
    }

    #[test]
    fn credentials_from_cri_and_never_shown() {
        let c = Credentials::from_cri("", "", "dXNlcjpwYXNz", "", "").unwrap();
        assert!(matches!(c.auth(), RegistryAuth::Basic(u, p) if u == "user" && p == "pass"));
        assert_eq!(format!("{c:?}"), "basic(<redacted>)");
        let c = Credentials::from_cri("u", "p", "", "", "tok").unwrap();
        assert!(matches!(c.auth(), RegistryAuth::Bearer(t) if t == "tok"));
        assert!(Credentials::from_cri("", "", "%%%", "", "").is_err());
        assert!(matches!(Credentials::from_cri("", "", "", "", "").unwrap().auth(), RegistryAuth::Anonymous));
    }
}

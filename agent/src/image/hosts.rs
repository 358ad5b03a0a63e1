//! Per-registry hosts configuration in the spirit of containerd's
//! `certs.d/<host>/hosts.toml`: which hosts to try for a registry, in
//! order (mirrors first, then the `server`), with a path prefix or an
//! overriding API path, the capabilities each has, a CA to trust and
//! whether to verify TLS at all. Read at every pull, as containerd does,
//! so an edited file applies without a reload.
//!
//! ```toml
//! server = "https://registry.example"
//! [host."https://harbor.example/v2/dockerhub-proxy"]
//!   capabilities = ["pull", "resolve"]
//!   override_path = true
//!   ca = "/etc/berth/certs.d/docker.io/harbor-ca.crt"
//! ```

use std::path::{Path, PathBuf};

/// One host to try for a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// What goes between the scheme and `/v2/`: `host[:port][/prefix]`.
    pub name: String,
    /// Plain HTTP.
    pub http: bool,
    /// Prepended to the repository (an `override_path` host's path after `/v2/`).
    pub repo_prefix: String,
    /// PEM files of CAs to trust besides the system's.
    pub ca: Vec<PathBuf>,
    /// Skip TLS verification.
    pub skip_verify: bool,
    /// May resolve tags to digests (manifests by tag).
    pub resolve: bool,
    /// Whether this is a mirror (not the registry's own server).
    pub mirror: bool,
    /// The client certificate to present: (certificate PEM, key PEM), or one
    /// PEM file holding both (key None).
    pub client: Option<(PathBuf, Option<PathBuf>)>,
}

impl Endpoint {
    /// The host part of `name` (for credentials and logs).
    pub fn host(&self) -> &str {
        self.name.split('/').next().unwrap_or(&self.name)
    }
}

/// A hosts.toml that berth cannot use.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct HostsError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong, naming the key.
    pub reason: String,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct HostFields {
    capabilities: Option<Vec<String>>,
    ca: Option<OneOrMany>,
    skip_verify: bool,
    override_path: bool,
    client: Option<ClientCerts>,
    header: Option<toml::Table>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(PathBuf),
    Many(Vec<PathBuf>),
}

/// containerd's forms: one PEM with certificate and key, several such
/// files, or (certificate, key) pairs (a key "" means the certificate file
/// holds it).
#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
enum ClientCerts {
    One(PathBuf),
    Pairs(Vec<(PathBuf, PathBuf)>),
    Many(Vec<PathBuf>),
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct HostsFile {
    server: Option<String>,
    host: toml::Table,
    #[serde(flatten)]
    fields: HostFields,
}

/// The hosts for `registry` from `<dir>/<registry>/hosts.toml` (or
/// `<dir>/_default/hosts.toml`); None when neither exists. Relative CA
/// paths are relative to the file's directory.
pub fn load(dir: &Path, registry: &str) -> Result<Option<Vec<Endpoint>>, HostsError> {
    if dir.as_os_str().is_empty() || registry.contains('/') || registry.starts_with('.') {
        return Ok(None);
    }
    let candidates = [dir.join(registry).join("hosts.toml"), dir.join("_default").join("hosts.toml")];
    let Some(path) = candidates.into_iter().find(|p| p.is_file()) else { return Ok(None) };
    let err = |reason: String| HostsError { path: path.clone(), reason };
    let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
    parse(&text, registry, path.parent().unwrap_or(Path::new("/"))).map(Some).map_err(err)
}

/// Parses a hosts.toml for `registry`; `base` resolves relative paths.
pub fn parse(text: &str, registry: &str, base: &Path) -> Result<Vec<Endpoint>, String> {
    let file: HostsFile = toml::from_str(text).map_err(|e| e.message().trim().replace('\n', " "))?;
    let mut out = Vec::new();
    for (url, fields) in &file.host {
        let fields: HostFields = fields.clone().try_into().map_err(|e: toml::de::Error| format!("host.{url:?}: {}", e.message().trim()))?;
        out.push(endpoint(url, &fields, base, true).map_err(|r| format!("host.{url:?}: {r}"))?);
    }
    let server = file.server.clone().unwrap_or_else(|| default_server(registry));
    out.push(endpoint(&server, &file.fields, base, false).map_err(|r| format!("server {server:?}: {r}"))?);
    Ok(out)
}

/// Docker Hub's API host; any other registry serves at its own name.
fn default_server(registry: &str) -> String {
    match registry {
        "docker.io" => "https://registry-1.docker.io".into(),
        r => format!("https://{r}"),
    }
}

fn endpoint(url: &str, f: &HostFields, base: &Path, mirror: bool) -> Result<Endpoint, String> {
    let mut clients: Vec<(PathBuf, Option<PathBuf>)> = match &f.client {
        None => Vec::new(),
        Some(ClientCerts::One(p)) => vec![(base.join(p), None)],
        Some(ClientCerts::Many(ps)) => ps.iter().map(|p| (base.join(p), None)).collect(),
        Some(ClientCerts::Pairs(pairs)) => {
            pairs.iter().map(|(cert, key)| (base.join(cert), (!key.as_os_str().is_empty()).then(|| base.join(key)))).collect()
        }
    };
    if clients.len() > 1 {
        return Err("client: berth presents one client certificate per host; list exactly one".into());
    }
    let client = clients.pop();
    if f.header.is_some() {
        return Err("extra headers are not supported by berth's registry client".into());
    }
    let (http, rest) = match url.split_once("://") {
        Some(("http", rest)) => (true, rest),
        Some(("https", rest)) => (false, rest),
        Some((scheme, _)) => return Err(format!("scheme {scheme:?} is not http or https")),
        None => (false, url),
    };
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if host.is_empty() {
        return Err("names no host".into());
    }
    let (name, repo_prefix) = if f.override_path {
        // The path is the API root itself: .../v2/<prefix>.
        let prefix = path.strip_prefix("/v2").ok_or("override_path needs a path starting with /v2")?;
        (host.to_string(), prefix.trim_matches('/').to_string())
    } else {
        // The path is where the API lives; /v2 is appended unless given.
        let prefix = path.strip_suffix("/v2").unwrap_or(path);
        (format!("{host}{prefix}"), String::new())
    };
    let mut capabilities = f.capabilities.clone().unwrap_or_else(|| vec!["pull".into(), "resolve".into()]);
    capabilities.sort();
    for c in &capabilities {
        if c != "pull" && c != "resolve" && c != "push" {
            return Err(format!("capability {c:?} is not pull, resolve or push"));
        }
    }
    if !capabilities.iter().any(|c| c == "pull") {
        return Err("a host without the pull capability is of no use to a node".into());
    }
    let ca = match &f.ca {
        None => Vec::new(),
        Some(OneOrMany::One(p)) => vec![base.join(p)],
        Some(OneOrMany::Many(ps)) => ps.iter().map(|p| base.join(p)).collect(),
    };
    if client.is_some() && http {
        return Err("client: a client certificate needs https".into());
    }
    Ok(Endpoint {
        name,
        http,
        repo_prefix,
        ca,
        skip_verify: f.skip_verify,
        resolve: capabilities.iter().any(|c| c == "resolve"),
        mirror,
        client,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_in_file_order_then_the_server() {
        let text = r#"
server = "https://registry.example:5000"
ca = "server-ca.pem"

[host."https://zeta.example/v2/dockerhub-proxy"]
  capabilities = ["pull", "resolve"]
  override_path = true

[host."http://alpha.example:8080/cache"]
  capabilities = ["pull"]
  skip_verify = true
"#;
        let e = parse(text, "docker.io", Path::new("/etc/berth/certs.d/docker.io")).unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(
            (e[0].name.as_str(), e[0].repo_prefix.as_str(), e[0].http, e[0].resolve),
            ("zeta.example", "dockerhub-proxy", false, true)
        );
        assert_eq!((e[1].name.as_str(), e[1].http, e[1].resolve, e[1].skip_verify), ("alpha.example:8080/cache", true, false, true));
        assert_eq!(e[1].host(), "alpha.example:8080");
        assert!(e[0].mirror && e[1].mirror && !e[2].mirror);
        assert_eq!(e[2].name, "registry.example:5000");
        assert_eq!(e[2].ca, vec![PathBuf::from("/etc/berth/certs.d/docker.io/server-ca.pem")]);
    }

    #[test]
    fn client_certificates_in_containerds_three_forms() {
        let base = Path::new("/etc/berth/certs.d/r");
        let client = |v: &str| parse(&format!("client = {v}\n"), "r", base).unwrap().pop().unwrap().client;
        assert_eq!(client("\"both.pem\""), Some((base.join("both.pem"), None)));
        assert_eq!(client("[\"both.pem\"]"), Some((base.join("both.pem"), None)));
        assert_eq!(client("[[\"c.pem\", \"/k/k.pem\"]]"), Some((base.join("c.pem"), Some(PathBuf::from("/k/k.pem")))));
        assert_eq!(client("[[\"c.pem\", \"\"]]"), Some((base.join("c.pem"), None)));
    }

    #[test]
    fn docker_hub_default_server_and_v2_suffix() {
        let e = parse("[host.\"https://m.example/prefix/v2\"]\n", "docker.io", Path::new("/")).unwrap();
        assert_eq!(e[0].name, "m.example/prefix");
        assert_eq!(e[1].name, "registry-1.docker.io");
    }

    #[test]
    fn unsupported_and_wrong_settings_are_named() {
        let e = parse("[host.\"https://m\"]\nclient = [\"a.pem\", \"b.pem\"]\n", "r", Path::new("/")).unwrap_err();
        assert!(e.contains("host.\"https://m\"") && e.contains("one client certificate"), "{e}");
        let e = parse("[host.\"http://m\"]\nclient = \"c.pem\"\n", "r", Path::new("/")).unwrap_err();
        assert!(e.contains("needs https"), "{e}");
        let e = parse("[host.\"https://m/x\"]\noverride_path = true\n", "r", Path::new("/")).unwrap_err();
        assert!(e.contains("override_path"), "{e}");
        let e = parse("[host.\"ftp://m\"]\n", "r", Path::new("/")).unwrap_err();
        assert!(e.contains("ftp"), "{e}");
        let e = parse("[host.\"https://m\"]\ncapabilities = [\"resolve\"]\n", "r", Path::new("/")).unwrap_err();
        assert!(e.contains("pull capability"), "{e}");
        let e = parse("sever = \"https://x\"\n", "r", Path::new("/")).unwrap_err();
        assert!(e.contains("sever"), "{e}");
    }
}

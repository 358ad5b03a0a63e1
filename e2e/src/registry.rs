//! A real OCI registry for tests: Debian's `docker-registry` on a free
//! 127.0.0.1 port with a temp storage dir, optionally behind htpasswd basic
//! auth or TLS, and a small distribution-API pusher.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::oci::{Blob, BuiltImage};

/// The registry binary from Debian's docker-registry package.
const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A running registry; killed (by pid) and its storage removed on drop.
pub struct Registry {
    dir: tempfile::TempDir,
    child: Child,
    /// `127.0.0.1:<port>`.
    pub host: String,
    /// Basic-auth credentials when started with [`Registry::start_with_auth`].
    pub auth: Option<(String, String)>,
}

/// A free port on 127.0.0.1 (bound and released; the registry takes it next).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

impl Registry {
    /// An anonymous registry.
    pub async fn start() -> Registry {
        Self::launch(None, None, None, None, None).await
    }

    /// A registry behind htpasswd basic auth with one user.
    pub async fn start_with_auth(user: &str, password: &str) -> Registry {
        Self::launch(Some((user.to_string(), password.to_string())), None, None, None, None).await
    }

    /// A second registry serving this one's storage (read it only) over
    /// TLS with `cert` and `key` (PEM): push to `self`, pull from the twin.
    pub async fn tls_twin(&self, cert: &Path, key: &Path) -> Registry {
        Self::launch(None, Some(self.dir.path().join("storage")), Some((cert.to_path_buf(), key.to_path_buf())), None, None).await
    }

    /// Same, but only for clients presenting a certificate `client_ca`
    /// signed, and with htpasswd basic auth for `user` on top.
    pub async fn mtls_twin(&self, cert: &Path, key: &Path, client_ca: &Path, user: &str, password: &str) -> Registry {
        let tls = Some((cert.to_path_buf(), key.to_path_buf()));
        let auth = Some((user.to_string(), password.to_string()));
        Self::launch(auth, Some(self.dir.path().join("storage")), tls, Some(client_ca.to_path_buf()), None).await
    }

    /// Same, with the distribution spec's token auth instead of basic: a
    /// request without a token is sent to `realm` for one, from `issuer`
    /// for `service`, signed by a key `bundle` (PEM) trusts.
    pub async fn mtls_token_twin(&self, tls: (&Path, &Path), client_ca: &Path, token: (&str, &str, &str), bundle: &Path) -> Registry {
        let (realm, service, issuer) = token;
        let yaml = format!(
            "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}\n",
            bundle.display()
        );
        let tls = Some((tls.0.to_path_buf(), tls.1.to_path_buf()));
        Self::launch(None, Some(self.dir.path().join("storage")), tls, Some(client_ca.to_path_buf()), Some(yaml)).await
    }

    async fn launch(
        auth: Option<(String, String)>,
        storage: Option<PathBuf>,
        tls: Option<(PathBuf, PathBuf)>,
        client_ca: Option<PathBuf>,
        token_yaml: Option<String>,
    ) -> Registry {
        assert!(Path::new(REGISTRY_BIN).exists(), "{REGISTRY_BIN} missing: install Debian's docker-registry (deploy/deps.sh --test)");
        let dir = tempfile::Builder::new().prefix("berth-registry-").tempdir().expect("tempdir");
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let mut auth_yaml = String::new();
        if let Some((user, password)) = &auth {
            let htpasswd = dir.path().join("htpasswd");
            let hash = bcrypt::hash(password, 5).expect("bcrypt");
            std::fs::write(&htpasswd, format!("{user}:{hash}\n")).expect("htpasswd");
            auth_yaml = format!("auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n", htpasswd.display());
        }
        if let Some(yaml) = token_yaml {
            auth_yaml = yaml;
        }
        let tls_yaml = match &tls {
            Some((cert, key)) => format!("  tls:\n    certificate: {}\n    key: {}\n", cert.display(), key.display()),
            None => String::new(),
        };
        let tls_yaml = match &client_ca {
            Some(ca) => format!("{tls_yaml}    clientcas:\n      - {}\n", ca.display()),
            None => tls_yaml,
        };
        let storage = storage.unwrap_or_else(|| dir.path().join("storage"));
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n{tls_yaml}{auth_yaml}",
            storage.display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("registry config");
        let log = File::create(dir.path().join("registry.log")).expect("registry log");
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("starting docker-registry");
        let mut reg = Registry { dir, child, host, auth };
        if tls.is_some() {
            reg.wait_listening().await;
        } else {
            reg.wait_ready().await;
        }
        reg
    }

    /// For a TLS registry (this crate's HTTP client speaks no TLS): the port accepts.
    async fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                panic!("docker-registry exited with {s}:\n{}", self.log());
            }
            if tokio::net::TcpStream::connect(&self.host).await.is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "docker-registry not listening:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = format!("http://{}/v2/", self.host);
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                panic!("docker-registry exited with {s}:\n{}", self.log());
            }
            if let Ok(resp) = reqwest::get(&url).await {
                if resp.status().is_success() || resp.status() == reqwest::StatusCode::UNAUTHORIZED {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "docker-registry not ready:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The registry's log (access log included).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// How many GETs of this blob the registry has served.
    pub fn blob_gets(&self, digest: &str) -> usize {
        self.log().lines().filter(|l| l.contains("\"GET /v2/") && l.contains(&format!("/blobs/{digest}"))).count()
    }

    /// The file where the registry keeps a blob (for tampering tests).
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.dir.path().join("storage/docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }

    fn request(&self, client: &reqwest::Client, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let rb = client.request(method, url);
        match &self.auth {
            Some((u, p)) => rb.basic_auth(u, Some(p)),
            None => rb,
        }
    }

    /// Uploads a blob with a monolithic POST+PUT.
    pub async fn push_blob(&self, repo: &str, blob: &Blob) {
        let client = reqwest::Client::new();
        let url = format!("http://{}/v2/{repo}/blobs/uploads/", self.host);
        let resp = self.request(&client, reqwest::Method::POST, &url).send().await.expect("start upload");
        assert_eq!(resp.status(), reqwest::StatusCode::ACCEPTED, "start upload: {:?}", resp.text().await);
        let location = resp.headers()["location"].to_str().expect("location").to_string();
        let location = if location.starts_with("http") { location } else { format!("http://{}{location}", self.host) };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = format!("{location}{sep}digest={}", blob.digest);
        let resp = self
            .request(&client, reqwest::Method::PUT, &put)
            .header("content-type", "application/octet-stream")
            .body(blob.bytes.clone())
            .send()
            .await
            .expect("finish upload");
        assert_eq!(resp.status(), reqwest::StatusCode::CREATED, "upload {}: {:?}", blob.digest, resp.text().await);
    }

    /// Uploads a manifest (or index) under `reference` (a tag or digest).
    pub async fn push_manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) {
        let client = reqwest::Client::new();
        let url = format!("http://{}/v2/{repo}/manifests/{reference}", self.host);
        let resp = self
            .request(&client, reqwest::Method::PUT, &url)
            .header("content-type", media_type)
            .body(bytes.to_vec())
            .send()
            .await
            .expect("put manifest");
        assert_eq!(resp.status(), reqwest::StatusCode::CREATED, "manifest: {:?}", resp.text().await);
    }

    /// Pushes a whole image (blobs, then its manifest) as `repo:tag`.
    pub async fn push(&self, repo: &str, tag: &str, image: &BuiltImage) {
        for blob in image.blobs() {
            self.push_blob(repo, blob).await;
        }
        self.push_manifest(repo, tag, &image.manifest.media_type, &image.manifest.bytes).await;
    }

    /// Where the registry keeps its blobs and manifests (another registry
    /// process may serve the same directory).
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// `host/repo:tag`, the reference to pull.
    pub fn reference(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.host)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// A registry's token endpoint on 127.0.0.1 (plain HTTP): answers every
/// request with `{"token": <token>}` and keeps each request's head.
pub struct TokenServer {
    /// `http://127.0.0.1:<port>/token`.
    pub realm: String,
    /// The request heads (request line and headers), in order.
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl TokenServer {
    /// Starts it.
    pub async fn start(token: String) -> TokenServer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let realm = format!("http://{}/token", listener.local_addr().expect("address"));
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (seen, token) = (seen.clone(), token.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    seen.lock().expect("lock").push(String::from_utf8_lossy(&head).into_owned());
                    let body = serde_json::json!({ "token": token }).to_string();
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(resp.as_bytes()).await;
                });
            }
        });
        TokenServer { realm, requests }
    }
}

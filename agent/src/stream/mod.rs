//! The streaming server behind Exec, Attach and PortForward: a TCP (or TLS)
//! listener handing out single-use, expiring tokens. An RPC stores its
//! request under a token and answers a URL; the client (kubelet, crictl)
//! connects there and upgrades to a stream protocol. Unknown, used or
//! expired tokens get 404.
//!
//! Protocols: SPDY/3.1 with `X-Stream-Protocol-Version` negotiation
//! (`v4`…`v1` `channel.k8s.io` for exec and attach, `portforward.k8s.io`),
//! what kubelet and crictl use by default; and WebSocket with the
//! channel-prefixed subprotocols (`v5.channel.k8s.io`, `v4.channel.k8s.io`,
//! `portforward.k8s.io`, `v2.portforward.k8s.io`). The session logic is
//! shared ([`session`]); each transport only maps its streams onto it.

pub mod session;
pub mod spdy;
mod ws;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpListener;

/// What the streaming server needs of the node it serves.
pub trait Backend: Send + Sync + 'static {
    /// The container `id` if it is running, or why not (for the client).
    fn running(&self, id: &str) -> Result<Target, String>;
    /// The executor (exec helpers, attach).
    fn runtime(&self) -> &berth_runtime::Runtime;
}

/// A running container, as sessions reach it.
#[derive(Debug, Clone)]
pub struct Target {
    /// Full id.
    pub id: String,
    /// Its bundle.
    pub bundle: std::path::PathBuf,
    /// Host pid of its init.
    pub pid: i32,
    /// Its start time.
    pub start_time: u64,
    /// It was created with stdin kept open.
    pub stdin: bool,
}

/// What a token stands for.
#[derive(Debug, Clone)]
pub enum StreamRequest {
    /// Port forwarding into a pod's network namespace.
    PortForward {
        /// The pod's netns pin; None for a host-network pod, whose
        /// localhost is berthd's own.
        netns: Option<std::path::PathBuf>,
        /// Ports asked for in the RPC (a client may name its own in the URL).
        ports: Vec<u16>,
    },
    /// An exec session.
    Exec {
        /// Container id (full).
        container_id: String,
        /// Command.
        cmd: Vec<String>,
        /// Streams asked for.
        wants: session::Wants,
    },
    /// Attaching to a container's own stdio.
    Attach {
        /// Container id (full).
        container_id: String,
        /// Streams asked for.
        wants: session::Wants,
    },
}

impl StreamRequest {
    /// The URL path segment of this kind of request.
    fn kind(&self) -> &'static str {
        match self {
            StreamRequest::PortForward { .. } => "portforward",
            StreamRequest::Exec { .. } => "exec",
            StreamRequest::Attach { .. } => "attach",
        }
    }
}

/// Tokens and the listener's address.
pub struct Streams {
    addr: SocketAddr,
    /// Token lifetime in milliseconds; a config reload changes it.
    ttl_ms: std::sync::atomic::AtomicU64,
    tls: Option<tokio_rustls::TlsAcceptor>,
    tokens: Mutex<HashMap<String, (StreamRequest, Instant)>>,
}

impl Streams {
    /// Binds the listener (port 0 = a free one); with `tls`, connections
    /// are TLS and URLs `https`.
    pub async fn bind(
        address: &str,
        port: u16,
        ttl: Duration,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> std::io::Result<(Arc<Streams>, TcpListener)> {
        let listener = TcpListener::bind((address, port)).await?;
        let addr = listener.local_addr()?;
        let ttl_ms = std::sync::atomic::AtomicU64::new(ttl.as_millis() as u64);
        Ok((Arc::new(Streams { addr, ttl_ms, tls, tokens: Mutex::new(HashMap::new()) }), listener))
    }

    /// Sets the lifetime of URLs handed out from now on.
    pub fn set_ttl(&self, ttl: Duration) {
        self.ttl_ms.store(ttl.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Stores `req` under a fresh token and returns the URL to give out.
    pub fn register(&self, req: StreamRequest) -> std::io::Result<String> {
        let token = random_token()?;
        let kind = req.kind();
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        tokens.retain(|_, (_, exp)| *exp > now);
        let ttl = Duration::from_millis(self.ttl_ms.load(std::sync::atomic::Ordering::Relaxed));
        tokens.insert(token.clone(), (req, now + ttl));
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        Ok(format!("{scheme}://{}/{kind}/{token}", self.addr))
    }

    /// Takes a token (single use); None when unknown, used, expired, or
    /// presented on another kind's path.
    fn take(&self, kind: &str, token: &str) -> Option<StreamRequest> {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let (req, exp) = tokens.remove(token)?;
        (exp > Instant::now() && req.kind() == kind).then_some(req)
    }
}

/// Loads a PEM certificate chain and key into a TLS acceptor.
pub fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("stream.tls_cert_file {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("stream.tls_cert_file {}: no certificate in it", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("stream.tls_key_file {}: {e}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("stream TLS certificate and key: {e}"))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves connections until the process ends.
pub fn serve(streams: Arc<Streams>, listener: TcpListener, backend: Weak<dyn Backend>) {
    tokio::spawn(async move {
        loop {
            let Ok((conn, peer)) = listener.accept().await else { continue };
            let _ = conn.set_nodelay(true);
            // A peer that vanishes without a FIN (a partition, a dead node)
            // is noticed within about two minutes, so its session ends.
            let keepalive =
                socket2::TcpKeepalive::new().with_time(Duration::from_secs(30)).with_interval(Duration::from_secs(10)).with_retries(9);
            let _ = socket2::SockRef::from(&conn).set_tcp_keepalive(&keepalive);
            let (streams, backend) = (streams.clone(), backend.clone());
            tokio::spawn(async move {
                let result = match streams.tls.clone() {
                    Some(tls) => match tokio::time::timeout(Duration::from_secs(10), tls.accept(conn)).await {
                        Ok(Ok(conn)) => handle(streams, backend, conn).await,
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
                    },
                    None => handle(streams, backend, conn).await,
                };
                if let Err(e) = result {
                    tracing::debug!(%peer, "stream connection: {e}");
                }
            });
        }
    });
}

/// A request head: path and headers (names lower case).
pub struct Head {
    /// The request target.
    pub path: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn parse(bytes: &[u8]) -> Option<Head> {
        let mut raw = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut raw);
        req.parse(bytes).ok()?;
        let path = req.path?.to_string();
        let headers = req.headers.iter().map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).to_string())).collect();
        Some(Head { path, headers })
    }

    /// All values of a header, comma lists split.
    pub fn values(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect::<Vec<_>>())
            .collect()
    }

    fn upgrade(&self) -> Option<String> {
        self.values("upgrade").first().map(|u| u.to_ascii_lowercase())
    }
}

/// Reads the request head, answers 404 for a bad token, else hands the
/// connection (with the head replayed for WebSocket) to the protocol.
async fn handle<S>(streams: Arc<Streams>, backend: Weak<dyn Backend>, mut conn: S) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    // Read in chunks: bytes past the head are replayed with it (WebSocket)
    // or handed to the protocol (SPDY).
    let end = loop {
        if let Some(p) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await.map_err(|_| std::io::ErrorKind::TimedOut)??;
        if n == 0 || head.len() > 16 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    };
    let Some(parsed) = Head::parse(&head) else {
        return conn.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
    };
    let path = parsed.path.clone();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (kind, token) = (parts.next().unwrap_or(""), parts.next().unwrap_or("").split('?').next().unwrap_or(""));
    let Some(req) = streams.take(kind, token) else {
        return conn.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
    };
    let Some(backend) = backend.upgrade() else { return Ok(()) };
    let query_ports: Vec<u16> = path
        .split_once('?')
        .map(|(_, q)| q.split('&').filter_map(|kv| kv.strip_prefix("port=").and_then(|p| p.parse().ok())).collect())
        .unwrap_or_default();
    let req = match req {
        StreamRequest::PortForward { netns, ports } if !query_ports.is_empty() && ports.is_empty() => {
            StreamRequest::PortForward { netns, ports: query_ports }
        }
        other => other,
    };
    match parsed.upgrade().as_deref() {
        Some("websocket") => ws::serve(backend, req, Prefixed { prefix: head, pos: 0, inner: conn }).await,
        Some(u) if u.starts_with("spdy/3") => {
            spdy::serve(backend, req, &parsed, Prefixed { prefix: head[end..].to_vec(), pos: 0, inner: conn }).await
        }
        _ => {
            let body = "berth's streaming server speaks SPDY/3.1 and WebSocket: send an Upgrade header\n";
            let response = format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(response.as_bytes()).await
        }
    }
}

/// A stream that first replays bytes already read from it.
struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.pos);
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A single-use token: 32 bytes from the kernel's random source, hex. A
/// failing source is an error, never a weaker token.
fn random_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_are_single_use_and_expire() {
        let (s, _l) = Streams::bind("127.0.0.1", 0, Duration::from_millis(50), None).await.unwrap();
        let wants = session::Wants { stdin: false, stdout: true, stderr: true, tty: false };
        let req = StreamRequest::Exec { container_id: "c".into(), cmd: vec![], wants };
        let url = s.register(req.clone()).unwrap();
        assert!(url.starts_with("http://127.0.0.1:"));
        let token = url.rsplit('/').next().unwrap().to_string();
        assert!(s.take("attach", &token).is_none(), "kind must match");
        let url = s.register(req.clone()).unwrap();
        let token = url.rsplit('/').next().unwrap().to_string();
        assert!(s.take("exec", &token).is_some());
        assert!(s.take("exec", &token).is_none(), "single use");
        let url = s.register(req).unwrap();
        let token = url.rsplit('/').next().unwrap().to_string();
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(s.take("exec", &token).is_none(), "expired");
    }
}

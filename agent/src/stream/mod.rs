//! The streaming server behind Exec (and, as they land, Attach and
//! PortForward): a TCP listener handing out single-use, expiring tokens.
//! An RPC stores its request under a token and answers a URL; the client
//! (kubelet, crictl) connects there and upgrades to a stream protocol.
//! Unknown, used or expired tokens get 404.
//!
//! Protocols today: WebSocket with the channel-prefixed subprotocols
//! (`v5.channel.k8s.io`, `v4.channel.k8s.io`) for exec without a TTY, and
//! `v4.channel.k8s.io` / `portforward.k8s.io` / `v2.portforward.k8s.io`
//! for port forwarding.

mod ws;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::cri::Agent;

/// What a token stands for.
#[derive(Debug, Clone)]
pub enum StreamRequest {
    /// Port forwarding into a pod's network namespace.
    PortForward {
        /// The pod's netns pin.
        netns: std::path::PathBuf,
        /// Ports asked for in the RPC (a client may name its own in the URL).
        ports: Vec<u16>,
    },
    /// An exec session.
    Exec {
        /// Container id (full).
        container_id: String,
        /// Command.
        cmd: Vec<String>,
        /// Attach stdin.
        stdin: bool,
        /// Send stdout.
        stdout: bool,
        /// Send stderr.
        stderr: bool,
        /// TTY requested.
        tty: bool,
    },
}

/// Tokens and the listener's address.
pub struct Streams {
    addr: SocketAddr,
    ttl: Duration,
    tokens: Mutex<HashMap<String, (StreamRequest, Instant)>>,
}

impl Streams {
    /// Binds the listener (port 0 = a free one).
    pub async fn bind(address: &str, port: u16, ttl: Duration) -> std::io::Result<(Arc<Streams>, TcpListener)> {
        let listener = TcpListener::bind((address, port)).await?;
        let addr = listener.local_addr()?;
        Ok((Arc::new(Streams { addr, ttl, tokens: Mutex::new(HashMap::new()) }), listener))
    }

    /// Stores `req` under a fresh token and returns the URL to give out.
    pub fn register(&self, kind: &str, req: StreamRequest) -> String {
        let token = crate::util::random_id();
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        tokens.retain(|_, (_, exp)| *exp > now);
        tokens.insert(token.clone(), (req, now + self.ttl));
        format!("http://{}/{kind}/{token}", self.addr)
    }

    /// Takes a token (single use); None when unknown, used or expired.
    fn take(&self, kind: &str, token: &str) -> Option<StreamRequest> {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let (req, exp) = tokens.remove(token)?;
        let matches = matches!((&req, kind), (StreamRequest::Exec { .. }, "exec") | (StreamRequest::PortForward { .. }, "portforward"));
        (exp > Instant::now() && matches).then_some(req)
    }
}

/// Serves connections until the process ends.
pub fn serve(streams: Arc<Streams>, listener: TcpListener, agent: Weak<Agent>) {
    tokio::spawn(async move {
        loop {
            let Ok((conn, peer)) = listener.accept().await else { continue };
            let (streams, agent) = (streams.clone(), agent.clone());
            tokio::spawn(async move {
                if let Err(e) = handle(streams, agent, conn).await {
                    tracing::debug!(%peer, "stream connection: {e}");
                }
            });
        }
    });
}

/// Reads the request head, answers 404 for a bad token, else hands the
/// connection (with the head replayed) to the protocol.
async fn handle(streams: Arc<Streams>, agent: Weak<Agent>, mut conn: TcpStream) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await.map_err(|_| std::io::ErrorKind::TimedOut)??;
        if n == 0 || head.len() > 16 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let path = text.lines().next().and_then(|l| l.split_whitespace().nth(1)).unwrap_or("").to_string();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (kind, token) = (parts.next().unwrap_or(""), parts.next().unwrap_or("").split('?').next().unwrap_or(""));
    let websocket = text.lines().any(|l| l.to_ascii_lowercase().starts_with("upgrade:") && l.to_ascii_lowercase().contains("websocket"));
    let Some(req) = streams.take(kind, token) else {
        conn.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await?;
        return Ok(());
    };
    let Some(agent) = agent.upgrade() else { return Ok(()) };
    if !websocket {
        conn.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nberth streams over WebSocket (v5.channel.k8s.io, v4.channel.k8s.io); SPDY is not built yet\n").await?;
        return Ok(());
    }
    let query_ports: Vec<u16> = path
        .split_once('?')
        .map(|(_, q)| q.split('&').filter_map(|kv| kv.strip_prefix("port=").and_then(|p| p.parse().ok())).collect())
        .unwrap_or_default();
    let req = match req {
        StreamRequest::PortForward { netns, ports } if !query_ports.is_empty() && ports.is_empty() => StreamRequest::PortForward { netns, ports: query_ports },
        other => other,
    };
    ws::serve(agent, req, Prefixed { prefix: head, pos: 0, inner: conn }).await
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

/// The `metav1.Status` the error channel carries at the end of an exec.
pub fn exit_status_json(code: i32) -> String {
    if code == 0 {
        return r#"{"metadata":{},"status":"Success"}"#.to_string();
    }
    serde_json::json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: error executing command, exit code {code}"),
        "reason": "NonZeroExitCode",
        "details": { "causes": [ { "reason": "ExitCode", "message": code.to_string() } ] }
    })
    .to_string()
}

/// The `metav1.Status` for a failure to run at all.
pub fn failure_json(message: &str) -> String {
    serde_json::json!({ "metadata": {}, "status": "Failure", "message": message, "reason": "InternalError" }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_json() {
        assert!(exit_status_json(0).contains("Success"));
        let v: serde_json::Value = serde_json::from_str(&exit_status_json(3)).unwrap();
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
    }

    #[tokio::test]
    async fn tokens_are_single_use_and_expire() {
        let (s, _l) = Streams::bind("127.0.0.1", 0, Duration::from_millis(50)).await.unwrap();
        let req = StreamRequest::Exec { container_id: "c".into(), cmd: vec![], stdin: false, stdout: true, stderr: true, tty: false };
        let url = s.register("exec", req.clone());
        let token = url.rsplit('/').next().unwrap().to_string();
        assert!(s.take("attach", &token).is_none(), "kind must match");
        let url = s.register("exec", req.clone());
        let token = url.rsplit('/').next().unwrap().to_string();
        assert!(s.take("exec", &token).is_some());
        assert!(s.take("exec", &token).is_none(), "single use");
        let url = s.register("exec", req);
        let token = url.rsplit('/').next().unwrap().to_string();
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(s.take("exec", &token).is_none(), "expired");
    }
}

//! SPDY/3.1, the transport kubelet's and crictl's streaming clients use by
//! default: the frame codec, a server connection, the remote-command and
//! port-forward protocols on top, and the HTTP upgrade that starts them.
//! berth has its own because no maintained Rust SPDY server exists.

pub mod conn;
mod portforward;
mod remote;

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{session, Head, StreamRequest};

/// The protocol this request may use, by `X-Stream-Protocol-Version`
/// negotiation: the first of berth's that the client offers; with no offer,
/// the oldest (what kubelet does for clients that predate negotiation).
fn negotiate(offered: &[String], ours: &[&'static str]) -> Result<&'static str, String> {
    if offered.is_empty() {
        return Ok(ours[ours.len() - 1]);
    }
    ours.iter()
        .find(|p| offered.iter().any(|o| o == *p))
        .copied()
        .ok_or_else(|| format!("unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {ours:?}"))
}

/// Upgrades to SPDY and runs the request's session.
pub async fn serve<S>(backend: Arc<dyn crate::stream::Backend>, req: StreamRequest, head: &Head, mut io: S) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let offered: Vec<String> = head.values("x-stream-protocol-version");
    let ours: &[&'static str] = match req {
        StreamRequest::PortForward { .. } => &[portforward::PROTOCOL],
        _ => remote::PROTOCOLS,
    };
    let protocol = match negotiate(&offered, ours) {
        Ok(p) => p,
        Err(message) => {
            let body = format!("{message}\n");
            let response = format!(
                "HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            return io.write_all(response.as_bytes()).await;
        }
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {protocol}\r\n\r\n"
    );
    io.write_all(response.as_bytes()).await?;
    let conn = conn::Conn::start(io);
    match req {
        StreamRequest::PortForward { netns, .. } => portforward::serve(conn, netns).await,
        StreamRequest::Exec { container_id, cmd, wants } => match remote::SpdyChannels::accept(conn, protocol, wants).await {
            Ok(ch) => session::exec(backend, ch, container_id, cmd, wants).await,
            Err(e) => tracing::debug!(container_id, "spdy exec: {e}"),
        },
        StreamRequest::Attach { container_id, wants } => match remote::SpdyChannels::accept(conn, protocol, wants).await {
            Ok(ch) => session::attach(backend, ch, container_id, wants).await,
            Err(e) => tracing::debug!(container_id, "spdy attach: {e}"),
        },
    }
    Ok(())
}

/// Port forwarding over a SPDY byte stream that needs no HTTP upgrade: the
/// one client-go tunnels through a WebSocket.
pub async fn serve_portforward<S>(io: S, netns: Option<std::path::PathBuf>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    portforward::serve(conn::Conn::start(io), netns).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_prefers_the_newest_common_protocol() {
        let o = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(negotiate(&o(&["v4.channel.k8s.io", "v3.channel.k8s.io"]), remote::PROTOCOLS), Ok("v4.channel.k8s.io"));
        assert_eq!(negotiate(&o(&["v2.channel.k8s.io"]), remote::PROTOCOLS), Ok("v2.channel.k8s.io"));
        assert_eq!(negotiate(&[], remote::PROTOCOLS), Ok("channel.k8s.io"));
        assert!(negotiate(&o(&["v9.channel.k8s.io"]), remote::PROTOCOLS).unwrap_err().contains("v9.channel.k8s.io"));
        assert_eq!(negotiate(&o(&["portforward.k8s.io"]), &[portforward::PROTOCOL]), Ok("portforward.k8s.io"));
    }
}

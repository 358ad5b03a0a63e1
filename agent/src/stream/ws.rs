//! The Kubernetes channel protocol over WebSocket: every binary message
//! starts with its channel (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize);
//! v5 adds 255 = "close the channel named in the next byte".

use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use berth_proto::remotecommand::{
    channel_frame, parse_terminal_size, portforward_channels, CLOSE, ERROR, RESIZE, STDERR, STDIN, STDOUT, WS_EXEC_PROTOCOLS,
    WS_PORTFORWARD_PROTOCOLS, WS_SPDY_TUNNEL_PORTFORWARD,
};

use super::session::{self, connect_in_netns, pump, Channels, Input, Outcome, Output};
use super::StreamRequest;

/// Upgrades and runs the request's session.
// The handshake callback's error type is tungstenite's own (an HTTP response).
#[allow(clippy::result_large_err)]
pub async fn serve<S>(backend: Arc<dyn super::Backend>, req: StreamRequest, stream: S) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let chosen: Arc<Mutex<Option<&'static str>>> = Arc::new(Mutex::new(None));
    let chosen2 = chosen.clone();
    let protocols: &'static [&'static str] =
        if matches!(req, StreamRequest::PortForward { .. }) { WS_PORTFORWARD_PROTOCOLS } else { WS_EXEC_PROTOCOLS };
    let callback = move |request: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
        let offered: Vec<String> = request
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
            .collect();
        let Some(p) = protocols.iter().find(|p| offered.iter().any(|o| o == *p)) else {
            let mut e = ErrorResponse::new(Some(format!("no supported subprotocol; berth speaks {} here", protocols.join(", "))));
            *e.status_mut() = http::StatusCode::BAD_REQUEST;
            return Err(e);
        };
        response.headers_mut().insert("sec-websocket-protocol", http::HeaderValue::from_static(p));
        *chosen2.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
        Ok(response)
    };
    let ws = tokio_tungstenite::accept_hdr_async(stream, callback).await.map_err(std::io::Error::other)?;
    let chosen = *chosen.lock().unwrap_or_else(|e| e.into_inner());
    let v5 = chosen == Some("v5.channel.k8s.io");
    match req {
        StreamRequest::PortForward { netns, .. } if chosen == Some(WS_SPDY_TUNNEL_PORTFORWARD) => return tunnel(ws, netns).await,
        StreamRequest::Exec { container_id, cmd, wants } => session::exec(backend, WsChannels::new(ws, v5), container_id, cmd, wants).await,
        StreamRequest::Attach { container_id, wants } => session::attach(backend, WsChannels::new(ws, v5), container_id, wants).await,
        StreamRequest::PortForward { netns, ports } => return port_forward(ws, netns, ports).await,
    }
    Ok(())
}

/// Port forwarding over WebSocket: port i gets data channel 2i and error
/// channel 2i+1; the first frame on each carries the port (little endian).
/// Each port is one connection to localhost:port inside the pod.
async fn port_forward<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    netns: Option<std::path::PathBuf>,
    ports: Vec<u16>,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut tx, mut rx) = ws.split();
    let (otx, mut orx) = tokio::sync::mpsc::channel::<(u8, Vec<u8>)>(32);
    let mut writers: Vec<Option<tokio::net::tcp::OwnedWriteHalf>> = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let Some((data, error)) = portforward_channels(i) else { break };
        let le = port.to_le_bytes();
        tx.send(frame(data, &le)).await.map_err(std::io::Error::other)?;
        tx.send(frame(error, &le)).await.map_err(std::io::Error::other)?;
        match connect_in_netns(netns.clone(), *port).await {
            Ok(s) => {
                let (r, w) = s.into_split();
                writers.push(Some(w));
                pump(r, data, true, otx.clone());
            }
            Err(e) => {
                writers.push(None);
                tx.send(frame(error, e.as_bytes())).await.map_err(std::io::Error::other)?;
            }
        }
    }
    drop(otx);
    loop {
        tokio::select! {
            out = orx.recv() => match out {
                Some((channel, data)) => if tx.send(frame(channel, &data)).await.is_err() { return Ok(()) },
                None => break,
            },
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(b))) if !b.is_empty() && b[0] % 2 == 0 => {
                    let i = (b[0] / 2) as usize;
                    if let Some(Some(w)) = writers.get_mut(i) {
                        if w.write_all(&b[1..]).await.is_err() {
                            writers[i] = None;
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(()),
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = tx.send(close_normal()).await;
    Ok(())
}

/// client-go's port forwarding (KEP-4006): the WebSocket's binary messages
/// carry a SPDY/3.1 byte stream, served by the SPDY port-forward code
/// through an in-memory pipe. Either side ending ends the other.
async fn tunnel<S>(ws: tokio_tungstenite::WebSocketStream<S>, netns: Option<std::path::PathBuf>) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (spdy_side, ws_side) = tokio::io::duplex(64 * 1024);
    let (mut from_spdy, mut to_spdy) = tokio::io::split(ws_side);
    let (mut tx, mut rx) = ws.split();
    let inbound = async move {
        while let Some(msg) = rx.next().await {
            match msg {
                Ok(Message::Binary(b)) => {
                    if to_spdy.write_all(&b).await.is_err() {
                        break;
                    }
                }
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        // Dropping the pipe's write half ends the SPDY connection.
    };
    let outbound = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match from_spdy.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(close_normal()).await;
    };
    let bridge = async {
        tokio::select! {
            _ = inbound => {}
            _ = outbound => {}
        }
    };
    tokio::join!(super::spdy::serve_portforward(spdy_side, netns), bridge);
    Ok(())
}

/// A Close frame with status 1000: client-go reports anything else (even
/// no status, 1005) as an error and loses the exit code it just read.
fn close_normal() -> Message {
    Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }))
}

fn frame(channel: u8, data: &[u8]) -> Message {
    Message::Binary(channel_frame(channel, data).into())
}

/// Exec and attach over the channel protocol.
struct WsChannels<S> {
    tx: futures::stream::SplitSink<tokio_tungstenite::WebSocketStream<S>, Message>,
    rx: futures::stream::SplitStream<tokio_tungstenite::WebSocketStream<S>>,
    v5: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> WsChannels<S> {
    fn new(ws: tokio_tungstenite::WebSocketStream<S>, v5: bool) -> Self {
        let (tx, rx) = ws.split();
        WsChannels { tx, rx, v5 }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Channels for WsChannels<S> {
    async fn recv(&mut self) -> Option<Input> {
        loop {
            match self.rx.next().await {
                Some(Ok(Message::Binary(b))) if !b.is_empty() => match b[0] {
                    STDIN => return Some(Input::Stdin(b[1..].to_vec())),
                    CLOSE if self.v5 && b.get(1) == Some(&STDIN) => return Some(Input::StdinClose),
                    RESIZE => {
                        if let Some((cols, rows)) = parse_terminal_size(&b[1..]) {
                            return Some(Input::Resize { cols, rows });
                        }
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    }

    async fn send(&mut self, out: Output, data: Vec<u8>) -> std::io::Result<()> {
        let channel = if out == Output::Stdout { STDOUT } else { STDERR };
        self.tx.send(frame(channel, &data)).await.map_err(std::io::Error::other)
    }

    async fn finish(mut self, outcome: Outcome) {
        let _ = self.tx.send(frame(ERROR, session::status_json(&outcome).as_bytes())).await;
        if self.tx.send(close_normal()).await.is_err() {
            return;
        }
        // Until the client's Close comes back (bounded): closing the socket
        // with its unread input would reset the connection, and the client
        // could lose the status and the Close before reading them.
        let drain = async {
            while let Some(Ok(m)) = self.rx.next().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drain).await;
    }
}

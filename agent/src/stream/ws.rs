//! The Kubernetes channel protocol over WebSocket: every binary message
//! starts with its channel (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize);
//! v5 adds 255 = "close the channel named in the next byte".

use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::Message;

use super::{exit_status_json, failure_json, StreamRequest};
use crate::cri::Agent;
use crate::store::ContainerState;

/// Subprotocols berth speaks, best first.
const PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io", "v2.portforward.k8s.io", "portforward.k8s.io"];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// Upgrades and runs the request's session.
pub async fn serve<S>(agent: Arc<Agent>, req: StreamRequest, stream: S) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let chosen: Arc<Mutex<Option<&'static str>>> = Arc::new(Mutex::new(None));
    let chosen2 = chosen.clone();
    let callback = move |request: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
        let offered: Vec<String> = request
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
            .collect();
        let Some(p) = PROTOCOLS.iter().find(|p| offered.iter().any(|o| o == *p)) else {
            let mut e = ErrorResponse::new(Some(format!("no supported subprotocol; berth speaks {}", PROTOCOLS.join(", "))));
            *e.status_mut() = http::StatusCode::BAD_REQUEST;
            return Err(e);
        };
        response.headers_mut().insert("sec-websocket-protocol", http::HeaderValue::from_static(p));
        *chosen2.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
        Ok(response)
    };
    let ws = tokio_tungstenite::accept_hdr_async(stream, callback).await.map_err(std::io::Error::other)?;
    let v5 = *chosen.lock().unwrap_or_else(|e| e.into_inner()) == Some("v5.channel.k8s.io");
    match req {
        StreamRequest::Exec { container_id, cmd, stdin, stdout, stderr, tty } => exec(agent, ws, v5, container_id, cmd, stdin, stdout, stderr, tty).await,
        StreamRequest::PortForward { netns, ports } => port_forward(ws, netns, ports).await,
    }
}

/// Port forwarding over WebSocket: port i gets data channel 2i and error
/// channel 2i+1; the first frame on each carries the port (little endian).
/// Each port is one connection to localhost:port inside the pod.
async fn port_forward<S>(ws: tokio_tungstenite::WebSocketStream<S>, netns: std::path::PathBuf, ports: Vec<u16>) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut tx, mut rx) = ws.split();
    let (otx, mut orx) = tokio::sync::mpsc::channel::<(u8, Vec<u8>)>(32);
    let mut writers: Vec<Option<tokio::net::tcp::OwnedWriteHalf>> = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let (data, error) = ((2 * i) as u8, (2 * i + 1) as u8);
        let le = port.to_le_bytes();
        tx.send(frame(data, &le)).await.map_err(std::io::Error::other)?;
        tx.send(frame(error, &le)).await.map_err(std::io::Error::other)?;
        let ns = netns.clone();
        let port = *port;
        // The socket is made on a thread inside the pod's namespace and
        // stays bound to it afterwards.
        let conn = berth_network::netlink::in_netns(&ns, move || {
            std::net::TcpStream::connect_timeout(&std::net::SocketAddr::from(([127, 0, 0, 1], port)), std::time::Duration::from_secs(5))
                .map_err(|e| berth_network::NetError::Config(format!("connect to localhost:{port} in the pod: {e}")))
        });
        let stream = conn.and_then(|s| {
            s.set_nonblocking(true).map_err(|e| berth_network::NetError::Config(e.to_string()))?;
            tokio::net::TcpStream::from_std(s).map_err(|e| berth_network::NetError::Config(e.to_string()))
        });
        match stream {
            Ok(s) => {
                let (r, w) = s.into_split();
                writers.push(Some(w));
                pump(r, data, true, otx.clone());
            }
            Err(e) => {
                writers.push(None);
                tx.send(frame(error, e.to_string().as_bytes())).await.map_err(std::io::Error::other)?;
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
    let _ = tx.send(Message::Close(None)).await;
    Ok(())
}

/// Copies `reader` into `out` as (channel, bytes) until EOF; output not
/// `wanted` is read and dropped, so the writer never blocks on a full pipe.
fn pump<R: AsyncRead + Unpin + Send + 'static>(mut reader: R, channel: u8, wanted: bool, out: tokio::sync::mpsc::Sender<(u8, Vec<u8>)>) {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) if wanted => {
                    if out.send((channel, buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
                Ok(_) => {}
            }
        }
    });
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(v.into())
}

#[allow(clippy::too_many_arguments)]
async fn exec<S>(agent: Arc<Agent>, ws: tokio_tungstenite::WebSocketStream<S>, v5: bool, id: String, cmd: Vec<String>, want_stdin: bool, want_stdout: bool, want_stderr: bool, tty: bool)
    -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut tx, mut rx) = ws.split();
    let fail = |msg: String| frame(ERROR, failure_json(&msg).as_bytes());
    let rec = match crate::container::find(&agent, &id) {
        Ok(r) if r.state == ContainerState::Running => r,
        Ok(r) => {
            let _ = tx.send(fail(format!("container {} is not running", r.id))).await;
            return Ok(());
        }
        Err(s) => {
            let _ = tx.send(fail(s.message().to_string())).await;
            return Ok(());
        }
    };
    let mut std_cmd = agent.runtime.exec_command_tty(&crate::container::bundle(&agent, &rec.id), rec.pid, rec.start_time, &cmd, tty);
    // With a TTY, window sizes go to the helper as "cols rows" lines on its fd 3.
    let mut resize_tx = None;
    let resize_rx;
    if tty {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::other)?;
        berth_runtime::client::pass_as_fd3(&mut std_cmd, &r);
        resize_rx = Some(r);
        resize_tx = Some(tokio::fs::File::from_std(std::fs::File::from(w)));
    } else {
        resize_rx = None;
    }
    let mut command = tokio::process::Command::from(std_cmd);
    command
        .stdin(if want_stdin || tty { std::process::Stdio::piped() } else { std::process::Stdio::null() })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = tx.send(fail(format!("exec helper: {e}"))).await;
            return Ok(());
        }
    };
    drop(resize_rx);
    let mut child_stdin = child.stdin.take();
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let (otx, mut orx) = tokio::sync::mpsc::channel::<(u8, Vec<u8>)>(16);
    for (channel, pipe, wanted) in [(STDOUT, out.take().map(|p| Box::new(p) as Box<dyn AsyncRead + Unpin + Send>), want_stdout), (STDERR, err.take().map(|p| Box::new(p) as Box<dyn AsyncRead + Unpin + Send>), want_stderr)] {
        if let Some(pipe) = pipe {
            pump(pipe, channel, wanted, otx.clone());
        }
    }
    drop(otx);
    let mut setup_error = Vec::new();
    let mut outputs_open = true;
    loop {
        tokio::select! {
            chunk = orx.recv(), if outputs_open => match chunk {
                Some((channel, data)) => {
                    if channel == STDERR && data.starts_with(berth_runtime::exec::ERROR_MARKER.as_bytes()) {
                        setup_error.extend_from_slice(&data);
                        continue;
                    }
                    if tx.send(frame(channel, &data)).await.is_err() {
                        return Ok(()); // client gone: kill_on_drop ends the helper and the command
                    }
                }
                None => outputs_open = false,
            },
            msg = rx.next() => match msg {
                Some(Ok(Message::Binary(b))) if !b.is_empty() => match b[0] {
                    STDIN => {
                        if let Some(stdin) = child_stdin.as_mut() {
                            if stdin.write_all(&b[1..]).await.is_err() {
                                child_stdin = None;
                            }
                        }
                    }
                    CLOSE if v5 && b.get(1) == Some(&STDIN) => child_stdin = None,
                    RESIZE => {
                        if let (Some(w), Ok(size)) = (resize_tx.as_mut(), serde_json::from_slice::<serde_json::Value>(&b[1..])) {
                            let (cols, rows) = (size["Width"].as_u64().unwrap_or(0), size["Height"].as_u64().unwrap_or(0));
                            let _ = w.write_all(format!("{cols} {rows}\n").as_bytes()).await;
                        }
                    }
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(()),
                Some(Ok(_)) => {}
            },
        }
        if !outputs_open {
            break;
        }
    }
    let status = child.wait().await?;
    let code = status.code().unwrap_or(255);
    let text = String::from_utf8_lossy(&setup_error);
    let status_json = match text.lines().find_map(|l| l.strip_prefix(berth_runtime::exec::ERROR_MARKER)) {
        Some(line) if code == berth_runtime::exec::SETUP_FAILED => failure_json(&berth_runtime::init::InitError::decode(line).to_string()),
        _ => exit_status_json(code),
    };
    let _ = tx.send(frame(ERROR, status_json.as_bytes())).await;
    let _ = tx.send(Message::Close(None)).await;
    Ok(())
}

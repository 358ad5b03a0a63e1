//! Exec and attach sessions, independent of the wire protocol: a transport
//! (WebSocket channels or SPDY streams) implements [`Channels`], and the
//! session moves bytes between it and the process (the exec helper) or the
//! container's monitor (attach).

use std::future::Future;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::{Backend, Target};

/// What the client sends during a session.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    /// Bytes for the process's stdin.
    Stdin(Vec<u8>),
    /// The client closed stdin.
    StdinClose,
    /// The terminal's new size.
    Resize { cols: u16, rows: u16 },
}

/// Output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The process's stdout (and, with a TTY, everything).
    Stdout,
    /// The process's stderr.
    Stderr,
}

/// How a session ended, for the error channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The command exited with this code (0 = success).
    Exit(i32),
    /// The session could not run (container gone, setup failed…).
    Failure(String),
}

/// One client's side of a session, whatever the protocol.
pub trait Channels: Send {
    /// The next input; `None` once the client is gone.
    fn recv(&mut self) -> impl Future<Output = Option<Input>> + Send;
    /// Sends output; an error means the client is gone.
    fn send(&mut self, out: Output, data: Vec<u8>) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Reports the outcome on the error channel and closes the session.
    fn finish(self, outcome: Outcome) -> impl Future<Output = ()> + Send;
}

/// What a session was asked to carry.
#[derive(Debug, Clone, Copy)]
pub struct Wants {
    /// Client stdin goes to the process.
    pub stdin: bool,
    /// Process stdout goes to the client.
    pub stdout: bool,
    /// Process stderr goes to the client.
    pub stderr: bool,
    /// The process runs on a terminal.
    pub tty: bool,
}

/// The error channel's `metav1.Status` for an outcome.
pub fn status_json(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Exit(code) => berth_proto::remotecommand::exit_status_json(*code),
        Outcome::Failure(m) => berth_proto::remotecommand::failure_json(m),
    }
}

/// The container `id` if it is running; else the session's failure.
fn running_container(backend: &dyn Backend, id: &str) -> Result<Target, Outcome> {
    backend.running(id).map_err(Outcome::Failure)
}

/// Runs `cmd` in a running container with the client's stdio.
pub async fn exec<C: Channels>(backend: Arc<dyn Backend>, mut ch: C, id: String, cmd: Vec<String>, wants: Wants) {
    let rec = match running_container(backend.as_ref(), &id) {
        Ok(r) => r,
        Err(failure) => return ch.finish(failure).await,
    };
    let helper = backend.runtime().exec_helper(&rec.bundle, rec.pid, rec.start_time, &cmd, wants.tty);
    let mut helper = match helper {
        Ok(h) => h,
        Err(e) => return ch.finish(Outcome::Failure(format!("exec helper: {e}"))).await,
    };
    // With a TTY, window sizes go to the helper as messages on its resize channel.
    let mut resize_tx = helper.resize.take().map(|w| tokio::fs::File::from_std(std::fs::File::from(w)));
    let std_cmd = std::mem::replace(&mut helper.command, std::process::Command::new("/"));
    let mut command = tokio::process::Command::from(std_cmd);
    command
        .stdin(if wants.stdin || wants.tty { std::process::Stdio::piped() } else { std::process::Stdio::null() })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => return ch.finish(Outcome::Failure(format!("exec helper: {e}"))).await,
    };
    helper.spawned();
    let mut child_stdin = child.stdin.take();
    let (otx, mut orx) = tokio::sync::mpsc::channel::<(Output, Vec<u8>)>(16);
    if let Some(p) = child.stdout.take() {
        pump(p, Output::Stdout, wants.stdout, otx.clone());
    }
    if let Some(p) = child.stderr.take() {
        pump(p, Output::Stderr, wants.stderr, otx.clone());
    }
    drop(otx);
    loop {
        tokio::select! {
            chunk = orx.recv() => match chunk {
                Some((out, data)) => {
                    if ch.send(out, data).await.is_err() {
                        return; // client gone: kill_on_drop ends the helper and the command
                    }
                }
                None => break,
            },
            input = ch.recv() => match input {
                Some(Input::Stdin(data)) => {
                    if let Some(stdin) = child_stdin.as_mut() {
                        if stdin.write_all(&data).await.is_err() {
                            child_stdin = None;
                        }
                    }
                }
                Some(Input::StdinClose) => child_stdin = None,
                Some(Input::Resize { cols, rows }) => {
                    if let Some(w) = resize_tx.as_mut() {
                        let msg = berth_runtime::channel::encode(&berth_runtime::message::ExecControl::Resize { cols, rows });
                        let _ = w.write_all(&msg).await;
                    }
                }
                None => return,
            },
        }
    }
    let code = match child.wait().await {
        Ok(status) => status.code().unwrap_or(255),
        Err(e) => return ch.finish(Outcome::Failure(format!("waiting for the exec helper: {e}"))).await,
    };
    let outcome = match berth_runtime::client::exec_failure(helper.report) {
        Some(e) => Outcome::Failure(e.to_string()),
        None => Outcome::Exit(code),
    };
    ch.finish(outcome).await;
}

/// Attaches the client to a running container's own stdio, held by its
/// monitor. Ends when the container exits (Success on the error channel,
/// as kubelet reports attach) or when the client goes away (the container
/// keeps running; a `stdin_once` container loses its stdin).
pub async fn attach<C: Channels>(backend: Arc<dyn Backend>, mut ch: C, id: String, wants: Wants) {
    use berth_runtime::monitor::{
        attach_frame, take_attach_frame, FRAME_EXIT, FRAME_RESIZE, FRAME_STDERR, FRAME_STDIN, FRAME_STDIN_CLOSE, FRAME_STDOUT,
    };
    let rec = match running_container(backend.as_ref(), &id) {
        Ok(r) => r,
        Err(failure) => return ch.finish(failure).await,
    };
    let bundle = rec.bundle.clone();
    let runtime = backend.runtime().clone();
    let (cid, stdin) = (rec.id.clone(), wants.stdin && rec.stdin);
    let conn = tokio::task::spawn_blocking(move || runtime.attach(&cid, &bundle, stdin)).await;
    let conn = match conn.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string())) {
        Ok(c) => c,
        Err(e) => return ch.finish(Outcome::Failure(format!("attach to container {}: {e}", rec.id))).await,
    };
    let conn = match conn.set_nonblocking(true).and_then(|()| tokio::net::UnixStream::from_std(conn)) {
        Ok(c) => c,
        Err(e) => return ch.finish(Outcome::Failure(format!("attach socket: {e}"))).await,
    };
    let (mut rd, mut wr) = conn.into_split();
    let (ftx, mut frx) = tokio::sync::mpsc::channel::<(u8, Vec<u8>)>(16);
    tokio::spawn(async move {
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut chunk = vec![0u8; 32 * 1024];
        loop {
            while let Some(frame) = take_attach_frame(&mut buf) {
                if ftx.send(frame).await.is_err() {
                    return;
                }
            }
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    });
    tracing::debug!(container_id = %rec.id, stdin, "attached");
    loop {
        tokio::select! {
            frame = frx.recv() => match frame {
                Some((FRAME_STDOUT, data)) if wants.stdout => {
                    if ch.send(Output::Stdout, data).await.is_err() {
                        return;
                    }
                }
                Some((FRAME_STDERR, data)) if wants.stderr => {
                    if ch.send(Output::Stderr, data).await.is_err() {
                        return;
                    }
                }
                Some((FRAME_EXIT, _)) | None => break,
                Some(_) => {}
            },
            input = ch.recv() => {
                let frame = match input {
                    Some(Input::Stdin(data)) if stdin => attach_frame(FRAME_STDIN, &data),
                    Some(Input::StdinClose) if stdin => attach_frame(FRAME_STDIN_CLOSE, &[]),
                    Some(Input::Resize { cols, rows }) => attach_frame(FRAME_RESIZE, &[cols.to_be_bytes(), rows.to_be_bytes()].concat()),
                    Some(_) => continue,
                    // Client gone: dropping the socket detaches from the monitor.
                    None => return,
                };
                if wr.write_all(&frame).await.is_err() {
                    break;
                }
            }
        }
    }
    ch.finish(Outcome::Exit(0)).await;
}

/// Copies `reader` into `out` as (stream, bytes) until EOF or until `out`
/// is closed; output not `wanted` is read and dropped, so the writer never
/// blocks on a full pipe.
pub fn pump<R, K>(mut reader: R, key: K, wanted: bool, out: tokio::sync::mpsc::Sender<(K, Vec<u8>)>)
where
    R: AsyncRead + Unpin + Send + 'static,
    K: Copy + Send + 'static,
{
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            // Stop as soon as nobody listens, even if the source stays open.
            let read = tokio::select! {
                r = reader.read(&mut buf) => r,
                () = out.closed() => break,
            };
            match read {
                Ok(0) | Err(_) => break,
                Ok(n) if wanted => {
                    if out.send((key, buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
                Ok(_) => {}
            }
        }
    });
}

/// Opens a TCP connection to `localhost:port` inside a network namespace
/// (None: berthd's own, where a host-network pod's localhost is).
pub async fn connect_in_netns(netns: Option<std::path::PathBuf>, port: u16) -> Result<tokio::net::TcpStream, String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let timeout = std::time::Duration::from_secs(5);
    let Some(netns) = netns else {
        return match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(format!("connect to localhost:{port} on the node: {e}")),
            Err(_) => Err(format!("connect to localhost:{port} on the node: timed out")),
        };
    };
    // The socket is made on a thread inside the namespace and stays bound to
    // it afterwards.
    let std_stream = tokio::task::spawn_blocking(move || {
        berth_network::netlink::in_netns(&netns, move || {
            std::net::TcpStream::connect_timeout(&addr, timeout)
                .map_err(|e| berth_network::NetError::Config(format!("connect to localhost:{port} in the pod: {e}")))
        })
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    std_stream.set_nonblocking(true).map_err(|e| e.to_string())?;
    tokio::net::TcpStream::from_std(std_stream).map_err(|e| e.to_string())
}

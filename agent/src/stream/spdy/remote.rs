//! Kubernetes remote command (exec, attach) over SPDY: the client opens one
//! stream per purpose, named by its `streamtype` header (error, stdin,
//! stdout, stderr, resize); the session starts once every stream the request
//! needs is there. The error stream carries a `metav1.Status` from
//! `v4.channel.k8s.io` on and a plain message before.

use std::collections::VecDeque;
use std::time::Duration;

use super::conn::{Conn, Event};
use berth_proto::remotecommand::terminal_size;
use berth_proto::spdy::frame::header;

use crate::stream::session::{status_json, Channels, Input, Outcome, Output, Wants};

/// Remote-command subprotocols berth speaks over SPDY, best first.
pub use berth_proto::remotecommand::SPDY_EXEC_PROTOCOLS as PROTOCOLS;
/// How long a client has to open its streams (kubelet's default).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// The streams of one session.
pub struct SpdyChannels {
    conn: Conn,
    error: u32,
    stdin: Option<u32>,
    stdout: Option<u32>,
    stderr: Option<u32>,
    resize: Option<u32>,
    /// Events that arrived while the streams were being set up.
    early: VecDeque<Event>,
    /// Partial JSON on the resize stream.
    resize_buf: Vec<u8>,
    sizes: VecDeque<(u16, u16)>,
    status_as_json: bool,
}

impl SpdyChannels {
    /// Waits until the client has opened the streams `wants` calls for.
    pub async fn accept(mut conn: Conn, protocol: &str, wants: Wants) -> Result<SpdyChannels, String> {
        // Before v3 there is no resize stream; a TTY session has no stderr.
        let resizable = matches!(protocol, "v4.channel.k8s.io" | "v3.channel.k8s.io");
        let need_resize = wants.tty && resizable;
        let need_stderr = wants.stderr && !wants.tty;
        let mut ch = SpdyChannels {
            error: 0,
            stdin: None,
            stdout: None,
            stderr: None,
            resize: None,
            early: VecDeque::new(),
            resize_buf: Vec::new(),
            sizes: VecDeque::new(),
            status_as_json: protocol == "v4.channel.k8s.io",
            conn,
        };
        let mut error = None;
        let deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
        loop {
            let complete = error.is_some()
                && (!wants.stdin || ch.stdin.is_some())
                && (!wants.stdout || ch.stdout.is_some())
                && (!need_stderr || ch.stderr.is_some())
                && (!need_resize || ch.resize.is_some());
            if complete {
                break;
            }
            let ev = match tokio::time::timeout_at(deadline, ch.conn.events.recv()).await {
                Ok(Some(ev)) => ev,
                Ok(None) => return Err("the client went away while opening streams".into()),
                Err(_) => {
                    conn = ch.conn;
                    conn.close().await;
                    return Err("timed out waiting for the client's streams".into());
                }
            };
            match ev {
                Event::Stream { id, headers } => match header(&headers, "streamtype").unwrap_or("") {
                    "error" => error = Some(id),
                    "stdin" => ch.stdin = Some(id),
                    "stdout" => ch.stdout = Some(id),
                    "stderr" => ch.stderr = Some(id),
                    "resize" => ch.resize = Some(id),
                    other => {
                        tracing::debug!(stream = id, "spdy: unknown stream type {other:?}");
                        let _ = ch.conn.sender.reset(id, berth_proto::spdy::frame::RST_PROTOCOL_ERROR).await;
                    }
                },
                other => ch.early.push_back(other),
            }
        }
        ch.error = error.unwrap_or(0);
        Ok(ch)
    }

    fn input(&mut self, ev: Event) -> Option<Option<Input>> {
        match ev {
            Event::Data { id, data } if Some(id) == self.stdin => Some(Some(Input::Stdin(data))),
            Event::Fin { id } if Some(id) == self.stdin => Some(Some(Input::StdinClose)),
            Event::Data { id, data } if Some(id) == self.resize => {
                self.resize_buf.extend_from_slice(&data);
                // The client writes one JSON object after another (a Go json.Encoder).
                let mut stream = serde_json::Deserializer::from_slice(&self.resize_buf).into_iter::<serde_json::Value>();
                let mut used = 0;
                while let Some(Ok(v)) = stream.next() {
                    used = stream.byte_offset();
                    self.sizes.extend(terminal_size(&v));
                }
                self.resize_buf.drain(..used);
                self.sizes.pop_front().map(|(cols, rows)| Some(Input::Resize { cols, rows }))
            }
            // A reset output or error stream means the client is not listening any more.
            Event::Reset { id } if id == self.error || Some(id) == self.stdout => Some(None),
            _ => None,
        }
    }
}

impl Channels for SpdyChannels {
    async fn recv(&mut self) -> Option<Input> {
        if let Some((cols, rows)) = self.sizes.pop_front() {
            return Some(Input::Resize { cols, rows });
        }
        while let Some(ev) = self.early.pop_front() {
            if let Some(input) = self.input(ev) {
                return input;
            }
        }
        loop {
            let ev = self.conn.events.recv().await?;
            if let Some(input) = self.input(ev) {
                return input;
            }
        }
    }

    async fn send(&mut self, out: Output, data: Vec<u8>) -> std::io::Result<()> {
        let id = match out {
            Output::Stdout => self.stdout,
            Output::Stderr => self.stderr,
        };
        match id {
            Some(id) => self.conn.sender.data(id, data, false).await,
            None => Ok(()),
        }
    }

    async fn finish(self, outcome: Outcome) {
        let sender = self.conn.sender.clone();
        for id in [self.stdout, self.stderr].into_iter().flatten() {
            let _ = sender.fin(id).await;
        }
        let message = if self.status_as_json {
            status_json(&outcome)
        } else {
            match &outcome {
                Outcome::Exit(0) => String::new(),
                Outcome::Exit(code) => format!("command terminated with non-zero exit code: exit status {code}"),
                Outcome::Failure(m) => m.clone(),
            }
        };
        if !message.is_empty() {
            let _ = sender.data(self.error, message.into_bytes(), false).await;
        }
        let _ = sender.fin(self.error).await;
        self.conn.close().await;
    }
}

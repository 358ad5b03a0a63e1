//! A SPDY/3.1 client for the tests, speaking Kubernetes remote command and
//! port forwarding the way client-go does: HTTP upgrade with
//! `X-Stream-Protocol-Version`, client-opened streams named by
//! `streamtype`. It uses berth-proto's frame codec; the Go interop test checks
//! that codec against spdystream independently.

use std::collections::HashMap;
use std::time::Duration;

use berth_proto::spdy::frame::{Decoder, Encoder, Frame, Headers};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Any byte stream (plain TCP or TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One upgraded SPDY connection.
pub struct SpdyClient {
    io: Box<dyn Io>,
    enc: Encoder,
    dec: Decoder,
    buf: Vec<u8>,
    next_id: u32,
    /// The protocol the server chose.
    pub protocol: String,
}

/// What the upgrade request got instead of 101.
#[derive(Debug)]
pub struct Refused {
    /// HTTP status.
    pub status: u16,
    /// Response body.
    pub body: String,
}

impl SpdyClient {
    /// Connects over plain TCP and upgrades.
    pub async fn connect(url: &str, protocols: &[&str]) -> Result<SpdyClient, Refused> {
        let host = url.trim_start_matches("http://").split('/').next().unwrap_or("").to_string();
        let tcp = tokio::net::TcpStream::connect(&host).await.expect("connect to the streaming server");
        Self::upgrade(Box::new(tcp), url, protocols).await
    }

    /// Upgrades an established connection (e.g. TLS) for `url`.
    pub async fn upgrade(mut io: Box<dyn Io>, url: &str, protocols: &[&str]) -> Result<SpdyClient, Refused> {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let mut req = format!("POST /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n");
        for p in protocols {
            req.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
        }
        req.push_str("\r\n");
        io.write_all(req.as_bytes()).await.expect("send upgrade");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if io.read(&mut byte).await.expect("read response") == 0 {
                break;
            }
            head.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&head).to_string();
        let status: u16 = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        if status != 101 {
            let mut body = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), io.read_to_end(&mut body)).await;
            return Err(Refused { status, body: String::from_utf8_lossy(&body).into() });
        }
        let protocol = text
            .lines()
            .find_map(|l| {
                l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case("x-stream-protocol-version")).map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_default();
        Ok(SpdyClient { io, enc: Encoder::new(), dec: Decoder::new(), buf: Vec::new(), next_id: 1, protocol })
    }

    /// Opens a stream with these headers; returns its id.
    pub async fn open(&mut self, headers: &[(&str, &str)]) -> u32 {
        let id = self.next_id;
        self.next_id += 2;
        let headers: Headers = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        self.write(Frame::SynStream { stream_id: id, associated_to: 0, priority: 0, fin: false, headers }).await;
        id
    }

    /// Sends data on a stream (`fin` closes the client's half).
    pub async fn send(&mut self, id: u32, data: &[u8], fin: bool) {
        self.write(Frame::Data { stream_id: id, fin, data: data.to_vec() }).await;
    }

    async fn write(&mut self, frame: Frame) {
        let mut out = Vec::new();
        self.enc.encode(&frame, &mut out).expect("encode");
        self.io.write_all(&out).await.expect("write frame");
    }

    /// The next frame; None at end of connection.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.dec.decode(&mut self.buf).expect("decode") {
                return Some(f);
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout(Duration::from_secs(30), self.io.read(&mut chunk)).await.expect("server stalled") {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads until every stream in `until` is finished (or the connection
    /// ends); returns each stream's data and the ids that got SYN_REPLY.
    pub async fn collect(&mut self, until: &[u32]) -> (HashMap<u32, Vec<u8>>, Vec<u32>) {
        let mut data: HashMap<u32, Vec<u8>> = HashMap::new();
        let mut replied = Vec::new();
        let mut open: Vec<u32> = until.to_vec();
        while !open.is_empty() {
            match self.next().await {
                Some(Frame::Data { stream_id, fin, data: d }) => {
                    data.entry(stream_id).or_default().extend_from_slice(&d);
                    if fin {
                        open.retain(|i| *i != stream_id);
                    }
                }
                Some(Frame::SynReply { stream_id, .. }) => replied.push(stream_id),
                Some(Frame::RstStream { stream_id, .. }) => open.retain(|i| *i != stream_id),
                Some(_) => {}
                None => break,
            }
        }
        (data, replied)
    }
}

/// The result of an exec or attach over SPDY.
#[derive(Debug)]
pub struct Session {
    /// stdout.
    pub stdout: String,
    /// stderr.
    pub stderr: String,
    /// The error stream's content.
    pub error: String,
}

/// Opens the remote-command streams as client-go does (error, stdin,
/// stdout, stderr unless tty, resize if tty), sends `stdin` then closes it,
/// and collects everything.
pub async fn remote_command(c: &mut SpdyClient, stdin: Option<&[u8]>, tty: Option<(u16, u16)>) -> Session {
    let error = c.open(&[("streamtype", "error")]).await;
    let sin = if stdin.is_some() { Some(c.open(&[("streamtype", "stdin")]).await) } else { None };
    let out = c.open(&[("streamtype", "stdout")]).await;
    let err = if tty.is_none() { Some(c.open(&[("streamtype", "stderr")]).await) } else { None };
    if let Some((w, h)) = tty {
        let resize = c.open(&[("streamtype", "resize")]).await;
        c.send(resize, format!("{{\"Width\":{w},\"Height\":{h}}}\n").as_bytes(), false).await;
    }
    if let (Some(id), Some(bytes)) = (sin, stdin) {
        if !bytes.is_empty() {
            c.send(id, bytes, false).await;
        }
        c.send(id, &[], true).await;
    }
    let mut until = vec![error, out];
    until.extend(err);
    let (data, _) = c.collect(&until).await;
    let text = |id: Option<u32>| id.and_then(|i| data.get(&i)).map(|d| String::from_utf8_lossy(d).to_string()).unwrap_or_default();
    Session { stdout: text(Some(out)), stderr: text(err), error: text(Some(error)) }
}

//! Port forwarding over SPDY (`portforward.k8s.io`): for every connection
//! the client opens an error stream and a data stream with the same
//! `requestid` and the target `port`; berth connects to localhost:port
//! inside the pod and copies bytes both ways. Failures go, as text, to the
//! pair's error stream.

use std::collections::HashMap;
use std::path::PathBuf;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::conn::{AbortOnDrop, Conn, Event, Sender};
use crate::stream::session::connect_in_netns;
use berth_proto::spdy::frame::{header, Headers};

/// The port-forward subprotocol.
pub use berth_proto::remotecommand::SPDY_PORTFORWARD_PROTOCOL as PROTOCOL;

#[derive(Default)]
struct Pair {
    port: u16,
    error: Option<u32>,
    data: Option<u32>,
    /// Bytes for the pod connection (sent before it is up are queued).
    to_pod: Option<mpsc::Sender<Option<Vec<u8>>>>,
}

/// Serves one port-forward connection until the client goes away.
pub async fn serve(mut conn: Conn, netns: Option<PathBuf>) {
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut by_data: HashMap<u32, String> = HashMap::new();
    // Forwarded connections end with the client's connection, even when the
    // pod side would stay open.
    let mut forwards: Vec<AbortOnDrop> = Vec::new();
    while let Some(ev) = conn.events.recv().await {
        match ev {
            Event::Stream { id, headers } => {
                let Some((kind, request, port)) = describe(id, &headers) else {
                    let _ = conn.sender.reset(id, berth_proto::spdy::frame::RST_PROTOCOL_ERROR).await;
                    continue;
                };
                let pair = pairs.entry(request.clone()).or_default();
                match kind {
                    "error" => pair.error = Some(id),
                    _ => {
                        pair.data = Some(id);
                        by_data.insert(id, request.clone());
                    }
                }
                if let Err(message) = port {
                    if let Some(e) = pair.error {
                        let _ = conn.sender.data(e, message.into_bytes(), true).await;
                    }
                    continue;
                }
                pair.port = port.unwrap_or(0);
                if let (Some(error), Some(data), None) = (pair.error, pair.data, pair.to_pod.as_ref()) {
                    let (tx, rx) = mpsc::channel(32);
                    pair.to_pod = Some(tx);
                    forwards.retain(|f| !f.0.is_finished());
                    forwards.push(AbortOnDrop(tokio::spawn(forward(conn.sender.clone(), netns.clone(), pair.port, error, data, rx))));
                }
            }
            Event::Data { id, data } => {
                if let Some(tx) = by_data.get(&id).and_then(|r| pairs.get(r)).and_then(|p| p.to_pod.as_ref()) {
                    let _ = tx.send(Some(data)).await;
                }
            }
            Event::Fin { id } | Event::Reset { id } => {
                if let Some(request) = by_data.remove(&id) {
                    if let Some(tx) = pairs.remove(&request).and_then(|p| p.to_pod) {
                        let _ = tx.send(None).await;
                    }
                }
            }
        }
    }
    drop(forwards);
    conn.close().await;
}

/// The stream's type, its request id and its port (or why the port is bad).
fn describe(id: u32, headers: &Headers) -> Option<(&'static str, String, Result<u16, String>)> {
    let kind = match header(headers, "streamtype")? {
        "error" => "error",
        "data" => "data",
        _ => return None,
    };
    // Clients before Kubernetes 1.4 send no request id: the error stream is
    // created right before its data stream, so they pair by stream id.
    let request = header(headers, "requestid").map(str::to_string).unwrap_or_else(|| {
        if kind == "error" {
            (id + 2).to_string()
        } else {
            id.to_string()
        }
    });
    let port = match header(headers, "port") {
        None => Err("port: the stream names no port".to_string()),
        Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| format!("port: {p:?} is not a valid port")),
    };
    Some((kind, request, port))
}

/// One forwarded connection.
async fn forward(
    sender: Sender,
    netns: Option<PathBuf>,
    port: u16,
    error: u32,
    data: u32,
    mut from_client: mpsc::Receiver<Option<Vec<u8>>>,
) {
    let pod = match connect_in_netns(netns, port).await {
        Ok(s) => s,
        Err(e) => {
            let _ = sender.data(error, format!("error forwarding port {port} to pod: {e}").into_bytes(), true).await;
            let _ = sender.fin(data).await;
            return;
        }
    };
    let (mut rd, mut wr) = pod.into_split();
    let up = tokio::spawn(async move {
        while let Some(Some(bytes)) = from_client.recv().await {
            if wr.write_all(&bytes).await.is_err() {
                return;
            }
        }
        // The client closed its half: so do we, towards the pod.
        let _ = wr.shutdown().await;
    });
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if sender.data(data, buf[..n].to_vec(), false).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = sender.fin(data).await;
    let _ = sender.fin(error).await;
    up.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_pair_by_request_id_or_by_stream_id() {
        let h = |pairs: &[(&str, &str)]| pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Headers>();
        let (k, r, p) = describe(5, &h(&[("streamtype", "data"), ("port", "8080"), ("requestid", "0")])).unwrap();
        assert_eq!((k, r.as_str(), p), ("data", "0", Ok(8080)));
        let (_, r_err, _) = describe(1, &h(&[("streamtype", "error"), ("port", "80")])).unwrap();
        let (_, r_data, _) = describe(3, &h(&[("streamtype", "data"), ("port", "80")])).unwrap();
        assert_eq!(r_err, r_data);
        assert!(describe(1, &h(&[("streamtype", "data"), ("port", "0")])).unwrap().2.is_err());
        assert!(describe(1, &h(&[("streamtype", "data"), ("port", "http")])).unwrap().2.unwrap_err().contains("http"));
        assert!(describe(1, &h(&[("streamtype", "stdin")])).is_none());
    }
}

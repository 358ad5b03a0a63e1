//! A SPDY/3.1 server connection: a reader task turning frames into stream
//! events and a writer task owning the outgoing header compressor.
//!
//! Streams are opened by the client (kubelet's and crictl's remote-command
//! and port-forward clients create every stream themselves); each SYN_STREAM
//! is answered with SYN_REPLY at once, as spdystream does, because the
//! client waits for that reply before it uses the stream. Flow control is
//! not enforced in either direction: spdystream neither sends nor honours
//! WINDOW_UPDATE, so a window would only stall large outputs.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use berth_proto::spdy::frame::{Decoder, Encoder, Frame, Headers};

/// What the client did.
#[derive(Debug)]
pub enum Event {
    /// A new stream with its headers (already replied to).
    Stream { id: u32, headers: Headers },
    /// Payload on a stream.
    Data { id: u32, data: Vec<u8> },
    /// The client closed its half of a stream.
    Fin { id: u32 },
    /// The client reset a stream.
    Reset { id: u32 },
}

/// The sending side of a connection; cheap to clone.
#[derive(Clone)]
pub struct Sender(mpsc::Sender<Out>);

/// What the writer task gets: a frame, or the order to flush and shut down.
enum Out {
    Frame(Frame),
    Shutdown,
}

impl Sender {
    /// Sends payload on a stream (`fin` closes berth's half).
    pub async fn data(&self, id: u32, data: Vec<u8>, fin: bool) -> std::io::Result<()> {
        self.send(Frame::Data { stream_id: id, fin, data }).await
    }

    /// Closes berth's half of a stream.
    pub async fn fin(&self, id: u32) -> std::io::Result<()> {
        self.data(id, Vec::new(), true).await
    }

    /// Resets a stream.
    pub async fn reset(&self, id: u32, status: u32) -> std::io::Result<()> {
        self.send(Frame::RstStream { stream_id: id, status }).await
    }

    async fn send(&self, f: Frame) -> std::io::Result<()> {
        self.0.send(Out::Frame(f)).await.map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }
}

/// A running connection.
pub struct Conn {
    /// The client's actions, in wire order; ends when the client goes away.
    pub events: mpsc::Receiver<Event>,
    /// Frames out.
    pub sender: Sender,
    writer: tokio::task::JoinHandle<()>,
    last_stream: Arc<AtomicU32>,
    /// The reader task ends with the connection, not with the client's
    /// good will: a client that keeps its socket open after GOAWAY or
    /// after the session ended must not keep the task and fd alive.
    _reader: AbortOnDrop,
}

/// Aborts a task when dropped.
pub(super) struct AbortOnDrop(pub(super) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Conn {
    /// Starts the reader and writer tasks on an upgraded connection.
    pub fn start<S>(io: S) -> Conn
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(io);
        let (ftx, mut frx) = mpsc::channel::<Out>(64);
        let (etx, events) = mpsc::channel::<Event>(64);
        let writer = tokio::spawn(async move {
            let mut enc = Encoder::new();
            let mut buf = Vec::with_capacity(16 * 1024);
            let mut next = frx.recv().await;
            'write: while let Some(Out::Frame(frame)) = next {
                buf.clear();
                if enc.encode(&frame, &mut buf).is_err() {
                    break;
                }
                // Batch what is already queued into one write.
                next = None;
                while buf.len() < 64 * 1024 {
                    match frx.try_recv() {
                        Ok(Out::Frame(f)) => {
                            if enc.encode(&f, &mut buf).is_err() {
                                break 'write;
                            }
                        }
                        Ok(Out::Shutdown) => {
                            next = Some(Out::Shutdown);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                if wr.write_all(&buf).await.is_err() {
                    break;
                }
                if next.is_none() {
                    next = frx.recv().await;
                }
            }
            let _ = wr.shutdown().await;
        });
        let sender = Sender(ftx);
        let replies = sender.clone();
        let last_stream = Arc::new(AtomicU32::new(0));
        let last = last_stream.clone();
        let reader = tokio::spawn(async move {
            let mut dec = Decoder::new();
            let mut buf = Vec::with_capacity(16 * 1024);
            let mut chunk = vec![0u8; 32 * 1024];
            'read: loop {
                loop {
                    let frame = match dec.decode(&mut buf) {
                        Ok(Some(f)) => f,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!("spdy: {e}");
                            let _ = replies.send(Frame::GoAway { last_good_stream_id: last.load(Ordering::Relaxed), status: 1 }).await;
                            break 'read;
                        }
                    };
                    let mut ev = Vec::with_capacity(2);
                    match frame {
                        Frame::SynStream { stream_id, fin, headers, .. } => {
                            // Client streams are odd and their ids only grow (SPDY/3.1
                            // 2.3.2), so a repeated or older id is refused.
                            if stream_id % 2 == 0 || stream_id <= last.load(Ordering::Relaxed) {
                                let _ = replies.reset(stream_id, berth_proto::spdy::frame::RST_PROTOCOL_ERROR).await;
                                continue;
                            }
                            last.store(stream_id, Ordering::Relaxed);
                            let _ = replies.send(Frame::SynReply { stream_id, fin: false, headers: Vec::new() }).await;
                            ev.push(Event::Stream { id: stream_id, headers });
                            if fin {
                                ev.push(Event::Fin { id: stream_id });
                            }
                        }
                        Frame::Data { stream_id, fin, data } => {
                            if !data.is_empty() {
                                ev.push(Event::Data { id: stream_id, data });
                            }
                            if fin {
                                ev.push(Event::Fin { id: stream_id });
                            }
                        }
                        Frame::Headers { stream_id, fin: true, .. } => ev.push(Event::Fin { id: stream_id }),
                        Frame::RstStream { stream_id, .. } => ev.push(Event::Reset { id: stream_id }),
                        Frame::Ping { id } => {
                            let _ = replies.send(Frame::Ping { id }).await;
                        }
                        Frame::GoAway { .. } => break 'read,
                        _ => {}
                    }
                    for e in ev {
                        if etx.send(e).await.is_err() {
                            break 'read;
                        }
                    }
                }
                match rd.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        });
        Conn { events, sender, writer, last_stream, _reader: AbortOnDrop(reader) }
    }

    /// Says goodbye (GOAWAY) and waits until everything queued is written.
    pub async fn close(self) {
        let Conn { events, sender, writer, last_stream, _reader } = self;
        drop(events);
        let _ = sender.send(Frame::GoAway { last_good_stream_id: last_stream.load(Ordering::Relaxed), status: 0 }).await;
        let _ = sender.0.send(Out::Shutdown).await;
        // Bounded: a client that stopped reading must not hold the task.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), writer).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn streams_are_replied_to_and_repeated_ids_reset() {
        let (server, mut client) = tokio::io::duplex(64 * 1024);
        let mut conn = Conn::start(server);
        let (mut enc, mut dec) = (Encoder::new(), Decoder::new());
        let mut wire = Vec::new();
        for id in [1, 1, 2, 3] {
            enc.encode(&Frame::SynStream { stream_id: id, associated_to: 0, priority: 0, fin: false, headers: vec![] }, &mut wire).unwrap();
        }
        enc.encode(&Frame::Ping { id: 9 }, &mut wire).unwrap();
        client.write_all(&wire).await.unwrap();
        let mut seen = Vec::new();
        let mut buf = Vec::new();
        while seen.len() < 5 {
            let mut chunk = [0u8; 1024];
            let n = client.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                seen.push(f);
            }
        }
        assert_eq!(
            seen,
            [
                Frame::SynReply { stream_id: 1, fin: false, headers: vec![] },
                Frame::RstStream { stream_id: 1, status: berth_proto::spdy::frame::RST_PROTOCOL_ERROR },
                Frame::RstStream { stream_id: 2, status: berth_proto::spdy::frame::RST_PROTOCOL_ERROR },
                Frame::SynReply { stream_id: 3, fin: false, headers: vec![] },
                Frame::Ping { id: 9 },
            ]
        );
        assert!(matches!(conn.events.recv().await, Some(Event::Stream { id: 1, .. })));
        assert!(matches!(conn.events.recv().await, Some(Event::Stream { id: 3, .. })));
    }
}

//! Attach: a client of the monitor's socket that asked for
//! [`crate::message::ControlRequest::Attach`] switches its connection to
//! frames — a kind byte, a big-endian u32 length and the payload. Monitor to
//! client: [`FRAME_STDOUT`], [`FRAME_STDERR`], and [`FRAME_EXIT`] (i32 code)
//! last. Client to monitor: [`FRAME_STDIN`], [`FRAME_STDIN_CLOSE`] and
//! [`FRAME_RESIZE`] (u16 cols, u16 rows). Output fans out to every client;
//! the monitor never blocks on one.

use std::io::Write;
use std::os::unix::net::UnixStream;

/// Attach frame: bytes for the container's stdin.
pub const FRAME_STDIN: u8 = 0;
/// Attach frame: container stdout (everything, for a TTY container).
pub const FRAME_STDOUT: u8 = 1;
/// Attach frame: container stderr.
pub const FRAME_STDERR: u8 = 2;
/// Attach frame: the container exited; payload is the i32 exit code.
pub const FRAME_EXIT: u8 = 3;
/// Attach frame: the client closed its stdin.
pub const FRAME_STDIN_CLOSE: u8 = 4;
/// Attach frame: terminal size, u16 cols then u16 rows.
pub const FRAME_RESIZE: u8 = 5;
/// Output buffered for one attached client before it counts as stuck and is dropped.
pub(super) const CLIENT_BUFFER_LIMIT: usize = 8 << 20;
/// Stdin buffered for the container before the monitor stops reading clients.
pub(super) const STDIN_BUFFER_LIMIT: usize = 256 << 10;

/// Encodes one attach frame.
pub fn attach_frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(5 + payload.len());
    f.push(kind);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Takes one whole attach frame off the front of `buf`.
pub fn take_attach_frame(buf: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
    if buf.len() < 5 {
        return None;
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if buf.len() < 5 + len {
        return None;
    }
    let kind = buf[0];
    let payload = buf[5..5 + len].to_vec();
    buf.drain(..5 + len);
    Some((kind, payload))
}

/// An attached client (`attach` on the control socket).
pub(super) struct Client {
    pub(super) sock: UnixStream,
    pub(super) inbuf: Vec<u8>,
    pub(super) outbuf: Vec<u8>,
    /// It attached with stdin.
    pub(super) stdin: bool,
}

impl Client {
    /// Writes buffered output without blocking; Err when the client is gone.
    pub(super) fn flush(&mut self) -> std::io::Result<()> {
        while !self.outbuf.is_empty() {
            match self.sock.write(&self.outbuf) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.outbuf.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_frames_round_trip() {
        let mut wire = attach_frame(FRAME_STDOUT, b"hi");
        wire.extend_from_slice(&attach_frame(FRAME_RESIZE, &[0, 80, 0, 24]));
        let tail = attach_frame(FRAME_EXIT, &3i32.to_be_bytes());
        wire.extend_from_slice(&tail[..3]);
        assert_eq!(take_attach_frame(&mut wire), Some((FRAME_STDOUT, b"hi".to_vec())));
        assert_eq!(take_attach_frame(&mut wire), Some((FRAME_RESIZE, vec![0, 80, 0, 24])));
        assert_eq!(take_attach_frame(&mut wire), None, "incomplete");
        wire.extend_from_slice(&tail[3..]);
        assert_eq!(take_attach_frame(&mut wire), Some((FRAME_EXIT, 3i32.to_be_bytes().to_vec())));
    }
}

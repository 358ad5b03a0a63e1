//! The framing of every channel between berth's own processes (berthd, the
//! monitor, the container init, the exec helper, the pod init): one message
//! is a big-endian u32 length and that many bytes of JSON of the channel's
//! [`crate::message`] type. A channel is a dedicated fd (pipe, socketpair or
//! the monitor's socket), never a stream that also carries container output.

use std::io::{Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The largest message accepted: the biggest carries a setup error's text.
pub const MAX_MESSAGE: usize = 1 << 20;

/// Why a message could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The fd failed.
    #[error("channel: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a message of the expected type.
    #[error("channel: malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    /// A length beyond [`MAX_MESSAGE`].
    #[error("channel: message of {0} bytes is too large")]
    TooLarge(usize),
    /// The peer went away in the middle of a message.
    #[error("channel: message cut short")]
    Truncated,
}

/// One message's bytes on the wire.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serialising these plain enums of numbers and strings cannot fail.
    let body = serde_json::to_vec(msg).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Writes one message.
pub fn send<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<(), ChannelError> {
    w.write_all(&encode(msg))?;
    Ok(())
}

/// Reads one message; `None` when the peer closed the channel between
/// messages (for a report pipe: the writer exec'd or exited).
pub fn recv<T: DeserializeOwned>(r: &mut impl Read) -> Result<Option<T>, ChannelError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(ChannelError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(ChannelError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(|e| if e.kind() == std::io::ErrorKind::UnexpectedEof { ChannelError::Truncated } else { e.into() })?;
    Ok(Some(serde_json::from_slice(&body)?))
}

/// Takes one whole message off the front of `buf` (for readers that buffer,
/// such as an async task); `Ok(None)` until it has all arrived.
pub fn take<T: DeserializeOwned>(buf: &mut Vec<u8>) -> Result<Option<T>, ChannelError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_MESSAGE {
        return Err(ChannelError::TooLarge(len));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let msg = serde_json::from_slice(&buf[4..4 + len]);
    buf.drain(..4 + len);
    Ok(Some(msg?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{InitError, InitReport};

    #[test]
    fn messages_round_trip_and_eof_is_none() {
        let mut wire = Vec::new();
        send(&mut wire, &InitReport::Ready { uid: 1, gid: 2, groups: vec![3], stages_us: vec![], process: None }).unwrap();
        send(&mut wire, &InitReport::Failed(InitError::BadCwd("/x\tweird\nname".into(), "no".into()))).unwrap();
        let mut r = &wire[..];
        assert_eq!(
            recv::<InitReport>(&mut r).unwrap(),
            Some(InitReport::Ready { uid: 1, gid: 2, groups: vec![3], stages_us: vec![], process: None })
        );
        assert_eq!(recv::<InitReport>(&mut r).unwrap(), Some(InitReport::Failed(InitError::BadCwd("/x\tweird\nname".into(), "no".into()))));
        assert_eq!(recv::<InitReport>(&mut r).unwrap(), None);
        let mut cut = &wire[..6];
        assert!(matches!(recv::<InitReport>(&mut cut), Err(ChannelError::Truncated)));
        let mut huge = &[0xff, 0xff, 0xff, 0xff][..];
        assert!(matches!(recv::<InitReport>(&mut huge), Err(ChannelError::TooLarge(_))));
        let mut buf = wire[..5].to_vec();
        assert!(take::<InitReport>(&mut buf).unwrap().is_none());
        buf = wire.clone();
        assert!(take::<InitReport>(&mut buf).unwrap().is_some());
        assert!(take::<InitReport>(&mut buf).unwrap().is_some());
        assert!(buf.is_empty());
    }
}

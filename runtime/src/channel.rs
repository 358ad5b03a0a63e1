//! The framing of every channel between berth's own processes (berthd, the
//! monitor, the container init, the exec helper, the pod init): one message
//! is a big-endian u32 length and that many bytes of JSON of the channel's
//! [`crate::message`] type. A channel is a dedicated fd (pipe, socketpair or
//! the monitor's socket), never a stream that also carries container output.

use std::io::{Read, Write};
use std::os::fd::BorrowedFd;
use std::time::Instant;

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

/// Reads one message from `fd` (made non-blocking here), giving up at
/// `deadline`: for a channel that a process outside berth may also hold
/// open — a container's process can reopen a pipe through
/// `/proc/<pid>/fd` — so that neither a withheld EOF nor a message left
/// half-written holds the reader past it. Reads no byte beyond the
/// message. `None` on EOF between messages.
pub fn recv_before<T: DeserializeOwned>(fd: BorrowedFd<'_>, deadline: Instant) -> Result<Option<T>, ChannelError> {
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
    let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(std::io::Error::from)?;
    let mut buf = Vec::new();
    loop {
        // The header first, then exactly the body it announces.
        let want = match buf.get(..4) {
            None => 4,
            Some(h) => {
                let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
                if len > MAX_MESSAGE {
                    return Err(ChannelError::TooLarge(len));
                }
                4 + len
            }
        };
        if buf.len() >= 4 && buf.len() == want {
            return Ok(Some(serde_json::from_slice(&buf[4..])?));
        }
        let start = buf.len();
        buf.resize(want, 0);
        match nix::unistd::read(fd, &mut buf[start..]) {
            Ok(0) => {
                buf.truncate(start);
                return if buf.is_empty() { Ok(None) } else { Err(ChannelError::Truncated) };
            }
            Ok(n) => {
                buf.truncate(start + n);
                continue;
            }
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => buf.truncate(start),
            Err(e) => return Err(ChannelError::Io(e.into())),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "no whole message in time");
            return Err(ChannelError::Io(e));
        }
        let mut pfd = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        if let Err(e) = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(ms)) {
            if e != nix::errno::Errno::EINTR {
                return Err(ChannelError::Io(e.into()));
            }
        }
    }
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

    /// Over a pipe another process may hold open: the message, then EOF as
    /// None once the writers are gone; a message left half-written, or no
    /// EOF, ends at the deadline rather than blocking; nothing past the
    /// message is read.
    #[test]
    fn recv_before_never_waits_past_its_deadline() {
        use std::os::fd::AsFd;
        let soon = || Instant::now() + std::time::Duration::from_millis(50);
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut wf = std::fs::File::from(w.try_clone().unwrap());
        send(&mut wf, &InitReport::Failed(InitError::Setup("one".into()))).unwrap();
        send(&mut wf, &InitReport::Failed(InitError::Setup("two".into()))).unwrap();
        let got = |r: &std::os::fd::OwnedFd| recv_before::<InitReport>(r.as_fd(), soon());
        assert_eq!(got(&r).unwrap(), Some(InitReport::Failed(InitError::Setup("one".into()))));
        assert_eq!(got(&r).unwrap(), Some(InitReport::Failed(InitError::Setup("two".into()))));
        // A writer still open, nothing written: the deadline, not a hang.
        assert!(matches!(got(&r), Err(ChannelError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut));
        // Half a message, the writer still open: the same.
        wf.write_all(&encode(&InitReport::Failed(InitError::Setup("three".into())))[..6]).unwrap();
        assert!(matches!(got(&r), Err(ChannelError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut));
        drop((wf, w));
        let (r, w) = nix::unistd::pipe().unwrap();
        drop(w);
        assert_eq!(got(&r).unwrap(), None);
    }
}

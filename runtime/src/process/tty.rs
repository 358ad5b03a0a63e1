//! Terminals for containers and exec sessions: a pty opened from the
//! container's own devpts (so `tty` inside names a device the container can
//! see), made the controlling terminal of the process; and passing a pty
//! master between processes over a unix socket (SCM_RIGHTS).

use std::io::IoSlice;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::fcntl::OFlag;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use nix::sys::stat::Mode;

use crate::message::InitError;

fn setup(step: &str, e: impl std::fmt::Display) -> InitError {
    InitError::Setup(format!("{step}: {e}"))
}

/// A new pseudo-terminal from the current mount namespace's /dev/ptmx: the
/// master fd and the slave's path.
pub fn open_pty() -> Result<(OwnedFd, String), InitError> {
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).map_err(|e| setup("open /dev/ptmx", e))?;
    grantpt(&master).map_err(|e| setup("grantpt", e))?;
    unlockpt(&master).map_err(|e| setup("unlockpt", e))?;
    let path = ptsname_r(&master).map_err(|e| setup("ptsname", e))?;
    Ok((master.into(), path))
}

/// Opens the slave of a new terminal (O_NOCTTY: not as this process's
/// controlling terminal) and hands it to `owner` (uid, gid), so a non-root
/// process may use it.
pub fn open_slave(slave_path: &str, owner: Option<(u32, u32)>) -> Result<OwnedFd, InitError> {
    let fd = nix::fcntl::open(slave_path, OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| setup(&format!("open {slave_path}"), e))?;
    if let Some((uid, gid)) = owner {
        nix::unistd::fchown(&fd, Some(nix::unistd::Uid::from_raw(uid)), Some(nix::unistd::Gid::from_raw(gid)))
            .map_err(|e| setup(&format!("chown {slave_path}"), e))?;
    }
    Ok(fd)
}

/// In the process about to exec: a new session with the terminal `slave`
/// ([`open_slave`], maybe by another process, for one that may not open
/// it) as its controlling terminal and as stdin, stdout and stderr. Needs
/// no privilege.
pub fn attach_opened_terminal(slave: OwnedFd) -> Result<(), InitError> {
    nix::unistd::setsid().map_err(|e| setup("setsid", e))?;
    // SAFETY: TIOCSCTTY takes an int argument; slave is an open terminal.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
        return Err(setup("TIOCSCTTY", nix::errno::Errno::last()));
    }
    for target in 0..3 {
        super::init::dup_onto(slave.as_raw_fd(), target)?;
    }
    Ok(())
}

/// Sends `fd` over a connected unix socket.
pub fn send_fd(socket: &impl AsRawFd, fd: &impl AsRawFd) -> nix::Result<()> {
    let fds = [fd.as_raw_fd()];
    let byte = [b'f'];
    sendmsg::<()>(socket.as_raw_fd(), &[IoSlice::new(&byte)], &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None)?;
    Ok(())
}

/// Receives one fd sent with [`send_fd`]; None if the peer sent none.
pub fn recv_fd(socket: &impl AsRawFd) -> nix::Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!(RawFd);
    let msg = recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just installed this fd in our table; nobody else owns it.
                return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
    }
    Ok(None)
}

/// Sets a terminal's window size.
pub fn set_window_size(master: &impl AsRawFd, cols: u16, rows: u16) {
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which outlives the call.
    unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

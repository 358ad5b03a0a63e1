//! A pre-started `berth-monitor zygote` that forks each container's monitor
//! when berthd asks, instead of berthd spawning a fresh berth-monitor per
//! container. A fork of a process that already runs skips what every new
//! berth-monitor paid: the exec, the dynamic linker and its thousands of
//! PIE relocations. Those relocations also dirtied `.data.rel.ro` in each
//! monitor (about 160 kB private per container); forked monitors share the
//! zygote's copy until one writes to it, which none does.
//!
//! The forked process behaves as if berthd had spawned `berth-monitor
//! <argv…>` with the passed fds at their numbers: it takes its command line
//! from the request (written over the zygote's own, which is padded for
//! it), so start-up garbage collection and operators find a monitor by its
//! command line as before. The forked process is the monitor itself: it
//! skips the second fork a spawned monitor makes to leave berthd's tree (it
//! is the zygote's child, not berthd's; the zygote ignores SIGCHLD, so the
//! kernel reaps a monitor that ends, and when the zygote ends its monitors
//! go to init as any orphan does). The zygote answers once it has forked.
//! Requests are typed messages
//! ([`ForkRequest`], [`ForkReply`]) on a `SOCK_SEQPACKET` pair, the fds as
//! `SCM_RIGHTS` of the same message. The zygote ends at EOF (berthd gone);
//! a zygote that died, or whose binary was replaced on disk, is started
//! again on the next request, and berthd falls back to spawning when it
//! cannot use one.

use std::ffi::OsStr;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::socket::{recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType};
use serde::{Deserialize, Serialize};

use crate::spawn::Spawned;

/// The room the zygote's command line keeps for its children's: the
/// longest command line a forked process may take (longer ones are
/// spawned as before).
pub const CMDLINE_ROOM: usize = 4096;

/// The most fds one request passes.
const MAX_FDS: usize = 8;

/// The largest request the zygote reads.
const MAX_MESSAGE: usize = 64 << 10;

/// How long berthd waits for the zygote's answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Fork a process that runs `berth-monitor <argv[1..]>`; the request's
/// `SCM_RIGHTS` fds go to `targets`, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkRequest {
    /// The command line, `argv[0]` the monitor binary as berthd names it.
    pub argv: Vec<String>,
    /// The fd number each passed fd takes in the child.
    pub targets: Vec<RawFd>,
}

/// What the zygote did with a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForkReply {
    /// Forked: the monitor's pid. Whether it came up is its report to tell.
    Forked(i32),
    /// Nothing was forked, and why.
    Refused(String),
}

/// Why a request through the zygote did not happen; the caller spawns
/// instead.
#[derive(Debug, thiserror::Error)]
pub enum ZygoteError {
    /// The command line does not fit the zygote's room for it.
    #[error("command line of {0} bytes is longer than the zygote's room")]
    TooLong(usize),
    /// An argument is not UTF-8.
    #[error("an argument is not UTF-8")]
    NotUtf8,
    /// Starting or talking to the zygote failed.
    #[error("zygote: {0}")]
    Io(#[from] std::io::Error),
    /// The zygote refused the request.
    #[error("zygote refused: {0}")]
    Refused(String),
}

#[derive(Debug)]
struct Running {
    sock: OwnedFd,
    child: Spawned,
    /// The binary's (device, inode) when it was started.
    binary: Option<(u64, u64)>,
}

/// `bin`'s (device, inode): a new build installed over it is a new inode.
fn identity(bin: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(bin).ok().map(|m| (m.dev(), m.ino()))
}

impl Running {
    fn start(bin: &Path) -> std::io::Result<Running> {
        let binary = identity(bin);
        let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?;
        let room = " ".repeat(CMDLINE_ROOM);
        let child = crate::spawn::spawn(bin, &[OsStr::new("zygote"), OsStr::new(&room)], &[(theirs.as_fd(), 3)])?;
        let timeout = nix::sys::time::TimeVal::new(REPLY_TIMEOUT.as_secs() as i64, 0);
        nix::sys::socket::setsockopt(&ours, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)?;
        Ok(Running { sock: ours, child, binary })
    }

    fn ask(&self, request: &ForkRequest, fds: &[RawFd]) -> std::io::Result<ForkReply> {
        let body = serde_json::to_vec(request).map_err(std::io::Error::other)?;
        sendmsg::<()>(self.sock.as_raw_fd(), &[IoSlice::new(&body)], &[ControlMessage::ScmRights(fds)], MsgFlags::empty(), None)?;
        // A reply is a few bytes of JSON.
        let mut buf = [0u8; 4096];
        let n = loop {
            match nix::sys::socket::recv(self.sock.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => break other?,
            }
        };
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the zygote is gone"));
        }
        serde_json::from_slice(&buf[..n]).map_err(std::io::Error::other)
    }

    /// Ends it (it may be stuck rather than gone) and reaps it.
    fn end(self) {
        drop(self.sock);
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.pid()), nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// berthd's handle on the zygote of one monitor binary, started on first use.
#[derive(Debug)]
pub struct Zygote {
    bin: PathBuf,
    running: Mutex<Option<Running>>,
}

impl Zygote {
    /// A zygote of `bin` (not started yet).
    pub fn new(bin: PathBuf) -> Zygote {
        Zygote { bin, running: Mutex::new(None) }
    }

    /// Forks `berth-monitor <args>` with each `(fd, n)` of `fds` as its fd
    /// `n` (and nothing else: stdin and stdout are the zygote's /dev/null).
    /// One retry with a new zygote if the old one is gone.
    pub fn run(&self, args: &[&OsStr], fds: &[(BorrowedFd<'_>, RawFd)]) -> Result<(), ZygoteError> {
        // The request is JSON: an argument that is not UTF-8 (a path berth
        // was given so) is spawned instead of being mangled.
        let argv: Vec<String> = std::iter::once(self.bin.as_os_str())
            .chain(args.iter().copied())
            .map(|a| a.to_str().map(str::to_string).ok_or(ZygoteError::NotUtf8))
            .collect::<Result<_, _>>()?;
        let len: usize = argv.iter().map(|a| a.len() + 1).sum();
        if len > CMDLINE_ROOM || fds.len() > MAX_FDS {
            return Err(ZygoteError::TooLong(len));
        }
        let request = ForkRequest { argv, targets: fds.iter().map(|(_, n)| *n).collect() };
        let raw: Vec<RawFd> = fds.iter().map(|(fd, _)| fd.as_raw_fd()).collect();
        let mut slot = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let mut last = None;
        for _ in 0..2 {
            let running = match slot.take() {
                // A zygote of a binary since replaced would fork the old build.
                Some(r) if r.binary.is_some() && r.binary == identity(&self.bin) => r,
                Some(stale) => {
                    stale.end();
                    Running::start(&self.bin)?
                }
                None => Running::start(&self.bin)?,
            };
            match running.ask(&request, &raw) {
                Ok(reply) => {
                    *slot = Some(running);
                    return match reply {
                        ForkReply::Forked(_) => Ok(()),
                        ForkReply::Refused(why) => Err(ZygoteError::Refused(why)),
                    };
                }
                Err(e) => {
                    running.end();
                    last = Some(e);
                }
            }
        }
        Err(ZygoteError::Io(last.unwrap_or_else(|| std::io::Error::other("no answer"))))
    }
}

/// Set in a process the zygote forked: it is the monitor already, with no
/// need to fork again to leave berthd's process tree.
static FORKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether this process was forked by the zygote.
pub fn forked() -> bool {
    FORKED.load(std::sync::atomic::Ordering::Relaxed)
}

/// `berth-monitor zygote`: serves [`ForkRequest`]s on fd 3 until EOF; each
/// forked child runs `run(argv[1..])` — the binary's own dispatch — and
/// exits with its code.
pub fn main(run: fn(&[String]) -> i32) -> i32 {
    // SAFETY: fd 3 was set up by Running::start and is ours alone.
    let sock = unsafe { OwnedFd::from_raw_fd(3) };
    // Monitors are the zygote's children for life: the kernel reaps them.
    // SAFETY: installing SIG_IGN is always sound.
    if let Err(e) = unsafe { nix::sys::signal::signal(nix::sys::signal::Signal::SIGCHLD, nix::sys::signal::SigHandler::SigIgn) } {
        eprintln!("berth-monitor zygote: ignoring SIGCHLD: {e}");
        return 1;
    }
    // The command line's memory, the same in every child.
    let area = arg_area();
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let (n, fds) = match receive(&sock, &mut buf) {
            Ok(Some(m)) => m,
            Ok(None) => return 0,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 1,
        };
        let reply = match serde_json::from_slice::<ForkRequest>(&buf[..n]) {
            Ok(req) if req.targets.len() == fds.len() && !req.argv.is_empty() => fork_one(&req, fds, area, run),
            Ok(_) => ForkReply::Refused("fds and their targets do not match".into()),
            Err(e) => ForkReply::Refused(format!("malformed request: {e}")),
        };
        let body = serde_json::to_vec(&reply).unwrap_or_default();
        if nix::sys::socket::send(sock.as_raw_fd(), &body, MsgFlags::empty()).is_err() {
            return 1;
        }
    }
}

/// One message and its fds; None at EOF.
fn receive(sock: &OwnedFd, buf: &mut [u8]) -> nix::Result<Option<(usize, Vec<OwnedFd>)>> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: the kernel just installed these fds in our table; nobody else owns them.
            fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    if msg.bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    Ok(Some((msg.bytes, fds)))
}

fn fork_one(req: &ForkRequest, fds: Vec<OwnedFd>, area: Option<(usize, usize)>, run: fn(&[String]) -> i32) -> ForkReply {
    // SAFETY: the zygote is single-threaded.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            // Before anything forks: a monitor waits for its init, which an
            // ignored SIGCHLD would have the kernel reap instead.
            // SAFETY: installing SIG_DFL is always sound.
            let _ = unsafe { nix::sys::signal::signal(nix::sys::signal::Signal::SIGCHLD, nix::sys::signal::SigHandler::SigDfl) };
            FORKED.store(true, std::sync::atomic::Ordering::Relaxed);
            // The zygote's socket goes here too (closed or overwritten).
            if let Err(e) = place_fds(fds, &req.targets) {
                eprintln!("berth-monitor zygote: placing fds: {e}");
                std::process::exit(1);
            }
            if let Some(area) = area {
                set_cmdline(area, &req.argv);
            }
            std::process::exit(run(&req.argv[1..]))
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(fds);
            ForkReply::Forked(child.as_raw())
        }
        Err(e) => ForkReply::Refused(format!("fork: {e}")),
    }
}

/// Puts each of `fds` at its target number and closes every other fd above
/// stderr (the zygote's socket among them): the sources are first copied
/// above every target, so no dup2 overwrites a source still needed.
fn place_fds(fds: Vec<OwnedFd>, targets: &[RawFd]) -> nix::Result<()> {
    let top = targets.iter().copied().max().unwrap_or(2).max(2);
    let high: Vec<OwnedFd> = fds
        .iter()
        .map(|fd| {
            let copy = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(top + 1))?;
            // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
            Ok(unsafe { OwnedFd::from_raw_fd(copy) })
        })
        .collect::<nix::Result<_>>()?;
    drop(fds);
    for (fd, target) in high.iter().zip(targets) {
        // SAFETY: dup2 onto a number this process is giving to the child's
        // role; whatever was there (the zygote's socket, a source already
        // copied above) is no longer used under that number.
        if unsafe { libc::dup2(fd.as_raw_fd(), *target) } < 0 {
            return Err(nix::errno::Errno::last());
        }
    }
    drop(high);
    for n in 3..=top {
        if !targets.contains(&n) {
            // SAFETY: closes a number no target uses; nothing refers to it any more.
            unsafe { libc::close(n) };
        }
    }
    // SAFETY: close_range only closes fds; none above `top` is used again.
    unsafe { libc::syscall(libc::SYS_close_range, top as libc::c_uint + 1, libc::c_uint::MAX, 0) };
    Ok(())
}

/// Writes `argv` over this process's command line (the zygote's, padded
/// with [`CMDLINE_ROOM`] bytes for it), so that `/proc/<pid>/cmdline` shows
/// what a spawned berth-monitor would. The kernel reads the command line
/// from this memory (`arg_start`..`arg_end` in /proc/self/stat); it cannot
/// be set otherwise without CAP_SYS_RESOURCE.
/// `area`: [`arg_area`], read once by the zygote.
fn set_cmdline((start, end): (usize, usize), argv: &[String]) {
    let mut bytes: Vec<u8> = Vec::with_capacity(end - start);
    for a in argv {
        bytes.extend_from_slice(OsStr::new(a).as_bytes());
        bytes.push(0);
    }
    if bytes.len() > end - start {
        return;
    }
    bytes.resize(end - start, 0);
    // SAFETY: [start, end) is this process's argument area, on its initial
    // stack and mapped writable for the process's life; nothing in this
    // single-threaded child holds a reference into it (Rust copies the
    // arguments out when asked, and is not asked again here). The write
    // stays inside the area and ends with a NUL, so every argv pointer
    // still points at a terminated string.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), start as *mut u8, bytes.len()) };
}

/// Shows `argv` as this process's command line in place of its own, which
/// names host paths and pids: for berth's processes a container can see
/// (`/proc/<pid>/cmdline` needs no ptrace access). Children forked later
/// inherit it. `area`: [`arg_area`], read by this process or by the one it
/// was forked from (the same addresses) while /proc/self was there.
pub fn show_cmdline_as(area: Option<(usize, usize)>, argv: &[&str]) {
    if let Some(area) = area {
        set_cmdline(area, &argv.iter().map(|a| a.to_string()).collect::<Vec<_>>());
    }
}

/// `arg_start` and `arg_end` of this process (fields 48 and 49 of
/// /proc/self/stat).
pub fn arg_area() -> Option<(usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_arg_area(&stat)
}

fn parse_arg_area(stat: &str) -> Option<(usize, usize)> {
    // Fields after the command name, which may hold spaces and parentheses:
    // field 3 (state) is the first after the last ')'.
    let rest = stat.rsplit_once(") ")?.1;
    let mut fields = rest.split(' ').skip(48 - 3);
    let start: usize = fields.next()?.parse().ok()?;
    let end: usize = fields.next()?.parse().ok()?;
    (start < end).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_argument_area_is_read_from_stat() {
        let mut fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        fields[48 - 3] = "1000".into();
        fields[49 - 3] = "1200".into();
        let stat = format!("42 (a) odd) name) {}", fields.join(" "));
        assert_eq!(parse_arg_area(&stat), Some((1000, 1200)));
        assert_eq!(parse_arg_area("42 (x) R 1"), None);
        let own = arg_area().expect("this process's own");
        assert!(own.0 < own.1);
    }
}

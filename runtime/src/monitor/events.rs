//! The monitor's event loop: one `poll` over SIGCHLD (a signalfd), the
//! control socket, the container's output (pipes or terminal), its stdin and
//! the attached clients; output goes to the CRI log and every client, the
//! init's exit is recorded.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::attach::{attach_frame, take_attach_frame, Client, CLIENT_BUFFER_LIMIT, STDIN_BUFFER_LIMIT};
use super::attach::{FRAME_EXIT, FRAME_RESIZE, FRAME_STDERR, FRAME_STDIN, FRAME_STDIN_CLOSE, FRAME_STDOUT};
use super::exit::ExitStatus;
use super::log::{LineSplitter, Stream};
use crate::channel;
use crate::message::{ControlReply, ControlRequest, InitCommand, InitError, InitReport};
use crate::time::{now_ns, rfc3339_nano};

/// After the init exits, how long the monitor keeps draining output held open
/// by other processes (a shared PID namespace) before it stops.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

pub(super) struct Monitor {
    pub(super) child: Pid,
    pub(super) log_path: Option<PathBuf>,
    pub(super) log: Option<std::fs::File>,
    pub(super) out: Option<std::fs::File>,
    pub(super) err: Option<std::fs::File>,
    pub(super) out_split: LineSplitter,
    pub(super) err_split: LineSplitter,
    /// A TTY container's terminal (master side): output in, stdin out.
    pub(super) pty: Option<std::fs::File>,
    /// The write end of a `stdin: true` container's stdin pipe.
    pub(super) stdin: Option<std::fs::File>,
    /// Stdin from clients not yet taken by the container.
    pub(super) stdin_pending: Vec<u8>,
    /// Close stdin once the pending bytes are written.
    pub(super) stdin_closing: bool,
    pub(super) stdin_once: bool,
    pub(super) clients: Vec<Client>,
    pub(super) report: Option<std::fs::File>,
    pub(super) start: Option<std::fs::File>,
    /// When the init exec'd the container's process (ns since the epoch).
    pub(super) started_at_ns: Option<i64>,
    pub(super) exit: Option<ExitStatus>,
    pub(super) exited_at: Option<Instant>,
    /// OOM kills in the container's cgroup (cgroup v2).
    pub(super) oom: Option<super::oom::OomWatch>,
    /// The container's cgroup, whose processes are killed once the init
    /// exited (no PID namespace of its own; see [`super::leftovers`]).
    pub(super) leftovers: Option<OwnedFd>,
    /// The buffer reads from the container's output and from clients go
    /// through; see [`ReadBuf`].
    pub(super) read_buf: ReadBuf,
}

/// How much one read from the container's output or a client takes.
const READ_SIZE: usize = 32 * 1024;

/// The monitor's one read buffer, on the heap and made on first use. As a
/// local array it was in the event loop's stack frame, whose every page the
/// stack probe touches on entry: 32 KiB private to each monitor for life,
/// output or not. `vec![0; n]` is calloc, which does not clear memory fresh
/// from the kernel; when the buffer is such memory, a quiet container's
/// monitor keeps resident only the pages its reads filled (when it is a
/// reused chunk, calloc clears it and it costs what the array did).
#[derive(Default)]
pub(super) struct ReadBuf(Vec<u8>);

impl ReadBuf {
    /// The buffer, taken out so that the monitor can be borrowed while it
    /// is in use; [`ReadBuf::put`] it back.
    fn take(&mut self) -> Vec<u8> {
        if self.0.is_empty() {
            self.0 = vec![0; READ_SIZE];
        }
        std::mem::take(&mut self.0)
    }

    fn put(&mut self, buf: Vec<u8>) {
        self.0 = buf;
    }
}

impl Monitor {
    pub(super) fn open_log(&mut self) {
        self.log = self.log_path.as_ref().and_then(|p| {
            if let Some(dir) = p.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            match std::fs::OpenOptions::new().create(true).append(true).custom_flags(libc::O_CLOEXEC).mode(0o640).open(p) {
                Ok(f) => Some(f),
                Err(e) => {
                    crate::diag::log(crate::diag::Level::Warn, &format!("cannot open the CRI log {}: {e}", p.display()));
                    None
                }
            }
        });
    }

    pub(super) fn event_loop(&mut self, listener: &UnixListener) -> Result<(), InitError> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        mask.thread_block().map_err(|e| super::setup_err("block SIGCHLD", e))?;
        let sigfd =
            SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).map_err(|e| super::setup_err("signalfd", e))?;
        for f in [&self.out, &self.err, &self.pty, &self.stdin].into_iter().flatten() {
            set_nonblocking(f.as_raw_fd());
        }
        // The init may have died before SIGCHLD was blocked.
        self.reap();
        drop_file_pages();
        loop {
            if self.exit.is_some() {
                let drained = self.out.is_none() && self.err.is_none() && self.pty.is_none();
                let overdue = self.exited_at.is_some_and(|t| t.elapsed() > DRAIN_AFTER_EXIT);
                if drained || overdue {
                    let ts = rfc3339_nano(now_ns());
                    if let Some(log) = self.log.as_mut() {
                        let _ = self.out_split.finish(&ts, log);
                        let _ = self.err_split.finish(&ts, log);
                    }
                    self.say_goodbye();
                    return Ok(());
                }
            }
            let stdin_target = self.pty.as_ref().or(self.stdin.as_ref());
            let want_stdin_out = !self.stdin_pending.is_empty() && stdin_target.is_some();
            let read_clients = self.stdin_pending.len() < STDIN_BUFFER_LIMIT;
            let mut fds = vec![PollFd::new(sigfd.as_fd(), PollFlags::POLLIN), PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
            fn slot<'a>(fds: &mut Vec<PollFd<'a>>, f: Option<&'a std::fs::File>, flags: PollFlags) -> Option<usize> {
                f.map(|f| {
                    fds.push(PollFd::new(f.as_fd(), flags));
                    fds.len() - 1
                })
            }
            let out_idx = slot(&mut fds, self.out.as_ref(), PollFlags::POLLIN);
            let err_idx = slot(&mut fds, self.err.as_ref(), PollFlags::POLLIN);
            let pty_flags = if want_stdin_out { PollFlags::POLLIN | PollFlags::POLLOUT } else { PollFlags::POLLIN };
            let pty_idx = slot(&mut fds, self.pty.as_ref(), pty_flags);
            let stdin_idx =
                if want_stdin_out && self.pty.is_none() { slot(&mut fds, self.stdin.as_ref(), PollFlags::POLLOUT) } else { None };
            let oom_idx = self.oom.as_ref().and_then(|o| o.fd()).map(|fd| {
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
                fds.len() - 1
            });
            let first_client = fds.len();
            for c in &self.clients {
                let mut flags = PollFlags::empty();
                if read_clients {
                    flags |= PollFlags::POLLIN;
                }
                if !c.outbuf.is_empty() {
                    flags |= PollFlags::POLLOUT;
                }
                fds.push(PollFd::new(c.sock.as_fd(), flags));
            }
            let timeout = if self.exit.is_some() { PollTimeout::from(100u16) } else { PollTimeout::NONE };
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(super::setup_err("poll", e)),
            }
            let ready = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
            let (sig_ready, sock_ready) = (ready(0), ready(1));
            let out_ready = out_idx.is_some_and(ready);
            let err_ready = err_idx.is_some_and(ready);
            let pty_ready = pty_idx.is_some_and(ready);
            let stdin_ready = stdin_idx.is_some_and(ready);
            let oom_ready = oom_idx.is_some_and(ready);
            let clients_ready: Vec<bool> = (first_client..fds.len()).map(ready).collect();
            drop(fds);
            // Clients first, while `clients_ready` still matches the list:
            // output below may drop stuck clients and reorder it. Highest
            // index first, so a client's own removal (swap_remove) only moves
            // one already served.
            for (i, r) in clients_ready.iter().enumerate().rev() {
                if *r {
                    self.serve_client(i);
                }
            }
            if out_ready {
                self.drain(Stream::Stdout);
            }
            if err_ready {
                self.drain(Stream::Stderr);
            }
            if pty_ready {
                self.drain_pty();
                self.flush_stdin();
            }
            if stdin_ready {
                self.flush_stdin();
            }
            if oom_ready {
                if let Some(o) = self.oom.as_mut() {
                    o.changed();
                }
            }
            if sig_ready {
                while let Ok(Some(_)) = sigfd.read_signal() {}
                self.reap();
            }
            if sock_ready {
                while let Ok((conn, _)) = listener.accept() {
                    self.serve(conn);
                }
            }
        }
    }

    /// Reads what is there from one output pipe into the log and to clients.
    fn drain(&mut self, stream: Stream) {
        let mut buf = self.read_buf.take();
        self.drain_into(stream, &mut buf);
        self.read_buf.put(buf);
    }

    fn drain_into(&mut self, stream: Stream, buf: &mut [u8]) {
        loop {
            let file = match stream {
                Stream::Stdout => self.out.as_mut(),
                Stream::Stderr => self.err.as_mut(),
            };
            let Some(file) = file else { return };
            match file.read(buf) {
                Ok(0) => {
                    match stream {
                        Stream::Stdout => self.out = None,
                        Stream::Stderr => self.err = None,
                    }
                    return;
                }
                Ok(n) => self.output(stream, &buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }

    /// Reads a TTY container's terminal; EIO means every slave is closed.
    fn drain_pty(&mut self) {
        let mut buf = self.read_buf.take();
        while let Some(pty) = self.pty.as_mut() {
            match pty.read(&mut buf) {
                Ok(0) => self.pty = None,
                Ok(n) => self.output(Stream::Stdout, &buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // EIO: every slave fd is closed, the container's stdio is gone.
                Err(_) => self.pty = None,
            }
        }
        self.read_buf.put(buf);
    }

    /// One chunk of container output: to the CRI log and every attached client.
    fn output(&mut self, stream: Stream, data: &[u8]) {
        let ts = rfc3339_nano(now_ns());
        let split = match stream {
            Stream::Stdout => &mut self.out_split,
            Stream::Stderr => &mut self.err_split,
        };
        match self.log.as_mut() {
            Some(log) => {
                let _ = split.feed(data, &ts, log);
            }
            None => {
                let _ = split.feed(data, &ts, &mut std::io::sink());
            }
        }
        if self.clients.is_empty() {
            return;
        }
        let frame = attach_frame(if stream == Stream::Stdout { FRAME_STDOUT } else { FRAME_STDERR }, data);
        let mut i = 0;
        while i < self.clients.len() {
            let c = &mut self.clients[i];
            c.outbuf.extend_from_slice(&frame);
            if c.flush().is_err() || c.outbuf.len() > CLIENT_BUFFER_LIMIT {
                crate::diag::log(crate::diag::Level::Warn, "dropping an attached client that stopped reading");
                self.detach(i);
            } else {
                i += 1;
            }
        }
    }

    /// Writes pending stdin to the container without blocking.
    fn flush_stdin(&mut self) {
        while !self.stdin_pending.is_empty() {
            let target = match (self.pty.as_mut(), self.stdin.as_mut()) {
                (Some(p), _) => p,
                (None, Some(s)) => s,
                (None, None) => {
                    self.stdin_pending.clear();
                    return;
                }
            };
            match target.write(&self.stdin_pending) {
                Ok(n) => {
                    self.stdin_pending.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    // The reader is gone (EPIPE): nothing will take stdin any more.
                    self.stdin_pending.clear();
                    self.stdin = None;
                }
            }
        }
        if self.stdin_pending.is_empty() && self.stdin_closing {
            self.stdin = None;
            self.stdin_closing = false;
        }
    }

    /// Input from an attached client, or its departure.
    fn serve_client(&mut self, i: usize) {
        let mut buf = self.read_buf.take();
        let gone = loop {
            let c = &mut self.clients[i];
            if c.flush().is_err() {
                break true;
            }
            match c.sock.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => c.inbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                Err(_) => break true,
            }
            if c.inbuf.len() > STDIN_BUFFER_LIMIT {
                break false;
            }
        };
        self.read_buf.put(buf);
        while let Some((kind, payload)) = take_attach_frame(&mut self.clients[i].inbuf) {
            let with_stdin = self.clients[i].stdin;
            match kind {
                FRAME_STDIN if with_stdin => self.stdin_pending.extend_from_slice(&payload),
                FRAME_STDIN_CLOSE if with_stdin => self.client_closed_stdin(),
                FRAME_RESIZE if payload.len() == 4 => {
                    if let Some(pty) = &self.pty {
                        let cols = u16::from_be_bytes([payload[0], payload[1]]);
                        let rows = u16::from_be_bytes([payload[2], payload[3]]);
                        crate::process::tty::set_window_size(pty, cols, rows);
                    }
                }
                _ => {}
            }
        }
        self.flush_stdin();
        if gone {
            let with_stdin = self.clients[i].stdin;
            self.detach(i);
            if with_stdin {
                self.client_closed_stdin();
            }
        }
    }

    /// `stdin_once`: the first client's stdin ends the container's. A
    /// terminal stays open (closing it would hang up the container).
    fn client_closed_stdin(&mut self) {
        if self.stdin_once && self.stdin.is_some() {
            self.stdin_closing = true;
            self.flush_stdin();
        }
    }

    fn detach(&mut self, i: usize) {
        self.clients.swap_remove(i);
    }

    /// Tells attached clients the exit code and lets them go.
    fn say_goodbye(&mut self) {
        let code = self.exit.as_ref().map_or(-1, |e| e.code);
        for mut c in std::mem::take(&mut self.clients) {
            c.outbuf.extend_from_slice(&attach_frame(FRAME_EXIT, &code.to_be_bytes()));
            let _ = c.sock.set_nonblocking(false);
            let _ = c.sock.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = c.sock.write_all(&c.outbuf);
        }
    }

    /// Reaps every exited child (we are a subreaper); notes the init's status.
    fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == self.child => self.exited(code, 0),
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == self.child => self.exited(128 + sig as i32, sig as i32),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    fn exited(&mut self, code: i32, signal: i32) {
        // The cgroup is empty now; read it before anyone removes it.
        let oom = self.oom.as_mut().is_some_and(|o| o.finish());
        self.oom = None;
        // After the OOM count is read: this also ends the sentinel.
        if let Some(dir) = self.leftovers.take() {
            let (killed, left) = super::leftovers::kill(&dir);
            if killed > 0 || !left.is_empty() {
                let empty = left.is_empty();
                let still: Vec<String> = left.into_iter().map(super::leftovers::describe).collect();
                let still = if empty { String::new() } else { format!(" (still listed: {})", still.join(", ")) };
                crate::diag::log(
                    crate::diag::Level::Info,
                    &format!(
                        "killed {killed} processes left in the container's cgroup (no PID namespace of its own); cgroup empty: {empty}{still}"
                    ),
                );
            }
        }
        self.exit = Some(ExitStatus { code, signal, finished_ns: now_ns(), oom });
        self.exited_at = Some(Instant::now());
        self.start = None;
    }

    /// One request per connection, one reply; an accepted attach keeps the
    /// connection as a client.
    fn serve(&mut self, mut conn: UnixStream) {
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let request = match channel::recv::<ControlRequest>(&mut conn) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                let _ = channel::send(&mut conn, &ControlReply::Error(e.to_string()));
                return;
            }
        };
        if let ControlRequest::Attach { stdin } = request {
            if self.exit.is_some() {
                let _ = channel::send(&mut conn, &ControlReply::NotRunning);
                return;
            }
            if channel::send(&mut conn, &ControlReply::Ok).is_ok() && conn.set_nonblocking(true).is_ok() {
                self.clients.push(Client { sock: conn, inbuf: Vec::new(), outbuf: Vec::new(), stdin });
            }
            return;
        }
        let reply = self.handle(request);
        let _ = channel::send(&mut conn, &reply);
    }

    fn handle(&mut self, request: ControlRequest) -> ControlReply {
        match request {
            ControlRequest::Start => self.start(),
            ControlRequest::Signal(n) => match (crate::signal::ALL.contains(&n), &self.exit) {
                (false, _) => ControlReply::Error(format!("{n} is not a signal")),
                (_, Some(_)) => ControlReply::NotRunning,
                (true, None) => match kill(self.child, n) {
                    Ok(()) => ControlReply::Ok,
                    Err(e) => ControlReply::Error(format!("kill: {e}")),
                },
            },
            ControlRequest::Reopen => {
                self.open_log();
                if self.log_path.is_some() && self.log.is_none() {
                    ControlReply::Error("cannot open the log file".into())
                } else {
                    ControlReply::Ok
                }
            }
            ControlRequest::State => match &self.exit {
                Some(_) => ControlReply::NotRunning,
                None => ControlReply::Running { pid: self.child.as_raw(), started_at_ns: self.started_at_ns },
            },
            // Handled by serve, which keeps the connection.
            ControlRequest::Attach { .. } => ControlReply::Error("attach is answered by serve".into()),
        }
    }

    /// Lets the init exec and reports whether exec worked: the report pipe
    /// closes on exec or carries why not. A process of the container that
    /// may ptrace can hold the pipe open (reopened through `/proc/<pid>/fd`
    /// of the process while it waits here), so the monitor waits for EOF
    /// no longer than the kernel takes to say the process exec'd (its
    /// executable is not the one it waited in) or is gone, reads the pipe
    /// with a deadline, and never waits longer than [`START_WAIT`].
    fn start(&mut self) -> ControlReply {
        let (Some(mut start), Some(report)) = (self.start.take(), self.report.take()) else {
            return ControlReply::NotRunning;
        };
        let waiting_in = executable_of(self.child);
        if channel::send(&mut start, &InitCommand::Start).is_err() {
            return ControlReply::StartFailed(InitError::Setup("the init is gone".into()));
        }
        drop(start);
        let deadline = Instant::now() + START_WAIT;
        let started = |this: &mut Self| {
            this.started_at_ns = Some(crate::time::now_ns());
            ControlReply::Ok
        };
        loop {
            let mut fds = [PollFd::new(report.as_fd(), PollFlags::POLLIN)];
            if poll(&mut fds, PollTimeout::from(10u16)).is_ok_and(|n| n > 0) {
                // A whole message is written at once: a short grace for it.
                return match channel::recv_before::<InitReport>(report.as_fd(), Instant::now() + Duration::from_millis(100)) {
                    // EOF: the report pipe closed on exec.
                    Ok(None) => started(self),
                    Ok(Some(InitReport::Failed(e))) => ControlReply::StartFailed(e),
                    Ok(Some(InitReport::Ready { .. })) => ControlReply::StartFailed(InitError::Setup("unexpected report".into())),
                    Err(e) => ControlReply::StartFailed(InitError::setup("the init's report", e)),
                };
            }
            // Gone (no executable) counts as started: one that failed before
            // its exec said why on the pipe first.
            if waiting_in.is_some() && executable_of(self.child) != waiting_in {
                return started(self);
            }
            if Instant::now() > deadline {
                return ControlReply::StartFailed(InitError::Setup(format!("the container's process did not exec within {START_WAIT:?}")));
            }
        }
    }
}

/// How long StartContainer waits for the container's process to exec
/// (berthd gives up on the monitor's answer after 30 s).
const START_WAIT: Duration = Duration::from_secs(20);

/// The device and inode of `pid`'s executable; None once it has none (it
/// exited) or cannot be looked at.
fn executable_of(pid: Pid) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{}/exe", pid.as_raw())).ok().map(|m| (m.dev(), m.ino()))
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on an fd we own; no memory effects.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

/// Unmaps the file pages faulted in so far (process start-up, the init's
/// fork, the handoff: code and read-only data of the binary, libc and
/// ld.so), so that the monitor keeps resident only the fault-around windows
/// of what the loop touches from here on.
fn drop_file_pages() {
    // Read line by line: heap pages touched here stay resident too.
    let Ok(smaps) = std::fs::File::open("/proc/self/smaps") else { return };
    for (start, end) in droppable(std::io::BufReader::with_capacity(4096, smaps)) {
        // SAFETY: [start, end) is a whole private, read-only file mapping of
        // this process with no anonymous page (see `droppable`), and this
        // thread is the process's only one, so no loader remaps it
        // meanwhile: dropping its pages changes no byte a later access reads.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    }
}

/// The private, read-only file mappings in `smaps` that hold no anonymous
/// page. Every resident page of such a mapping is the file's page-cache
/// page, so MADV_DONTNEED only drops page-table entries and the next access
/// maps the same bytes again. Not RELRO (read-only now, but written by the
/// dynamic loader before: its pages are anonymous copies), nor any writable
/// or shared memory; for them MADV_DONTNEED would lose what was written, or
/// be seen by others.
fn droppable(smaps: impl std::io::BufRead) -> Vec<(usize, usize)> {
    let mut candidate = None;
    let mut out = Vec::new();
    for line in smaps.lines() {
        let Ok(line) = line else { return Vec::new() };
        let mut words = line.split_ascii_whitespace();
        let Some(first) = words.next() else { continue };
        if first == "Anonymous:" {
            if let (Some(range), Some("0")) = (candidate.take(), words.next()) {
                out.push(range);
            }
            continue;
        }
        if first.ends_with(':') {
            continue;
        }
        // A mapping's header: start-end perms offset dev inode [path].
        candidate = None;
        let (Some(perms), Some(inode)) = (words.next(), words.nth(2)) else { continue };
        if !matches!(perms, "r-xp" | "r--p") || inode == "0" {
            continue;
        }
        let Some((start, end)) = first.split_once('-') else { continue };
        if let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) {
            candidate = Some((start, end));
        }
    }
    out
}

/// kill(2) with any signal number of [`crate::signal::ALL`].
fn kill(pid: Pid, signal: i32) -> nix::Result<()> {
    // SAFETY: kill takes two integers and reads or writes no memory.
    let r = unsafe { libc::kill(pid.as_raw(), signal) };
    nix::errno::Errno::result(r).map(drop)
}

#[cfg(test)]
mod tests {
    use super::droppable;

    /// A monitor's smaps, cut to the fields that matter.
    const SMAPS: &str = "\
55c295a3d000-55c295a56000 r--p 00000000 fe:01 1234 /usr/bin/berth-monitor-loop
Rss:                  64 kB
Anonymous:             0 kB
VmFlags: rd mr mw me dw sd
55c295a56000-55c295aa2000 r-xp 00019000 fe:01 1234 /usr/bin/berth-monitor-loop
Rss:                 240 kB
Anonymous:             0 kB
55c295aa2000-55c295aa6000 r--p 00064000 fe:01 1234 /usr/bin/berth-monitor-loop
Rss:                  16 kB
Anonymous:            16 kB
55c295aa6000-55c295aa7000 rw-p 00068000 fe:01 1234 /usr/bin/berth-monitor-loop
Anonymous:             4 kB
7f7b2b6f0000-7f7b2b6f3000 r--p 00000000 00:00 0
Anonymous:             0 kB
7f7b2b6f3000-7f7b2b719000 r--s 00000000 fe:01 99 /dev/shm/x
Anonymous:             0 kB
7f7b2b719000-7f7b2b86f000 r-xp 00026000 fe:01 77 /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                 384 kB
Anonymous:             4 kB
7f7b2b906000-7f7b2b908000 r-xp 00000000 00:00 0                          [vdso]
Anonymous:             0 kB
7f7b2b908000-7f7b2b909000 r--p 00000000 fe:01 88 /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
Anonymous:             0 kB
";

    #[test]
    fn only_read_only_private_file_mappings_without_anonymous_pages_are_dropped() {
        let got = droppable(SMAPS.as_bytes());
        // The binary's headers and text, and ld.so's headers. Not: the
        // binary's RELRO and data, anonymous and shared memory, text with
        // a written page (a debugger's breakpoint), the vDSO.
        assert_eq!(got, [(0x55c295a3d000, 0x55c295a56000), (0x55c295a56000, 0x55c295aa2000), (0x7f7b2b908000, 0x7f7b2b909000)]);
    }

    #[test]
    fn a_cut_smaps_drops_nothing_it_has_not_seen_whole() {
        // A header whose Anonymous line never came is no candidate.
        assert!(droppable("7f7b2b908000-7f7b2b909000 r--p 00000000 fe:01 88 /lib/ld.so\nRss: 4 kB\n".as_bytes()).is_empty());
    }
}

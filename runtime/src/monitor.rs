//! The per-container monitor: a small single-threaded process (no async
//! runtime), parent of the container init and a child subreaper, not a child
//! of berthd. It holds the container's stdio (pipes, or a terminal for TTY
//! containers), writes the CRI log, answers a line protocol on a filesystem
//! socket in the container's 0700 state dir (`start`, `signal N`, `reopen`,
//! `state`, `attach`), and records the exit status in the `exit` file before
//! it goes.
//!
//! `attach [stdin]` turns its connection into a framed stream: each frame is
//! a kind byte, a big-endian u32 length and the payload. Monitor to client:
//! [`FRAME_STDOUT`], [`FRAME_STDERR`], and [`FRAME_EXIT`] (i32 code) last.
//! Client to monitor: [`FRAME_STDIN`], [`FRAME_STDIN_CLOSE`] and
//! [`FRAME_RESIZE`] (u16 cols, u16 rows).

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use crate::init::{self, InitError};
use crate::log::{LineSplitter, Stream};
use crate::time::{now_ns, rfc3339_nano};

/// The control socket's name in the bundle.
pub const SOCKET: &str = "monitor.sock";
/// The exit status file's name in the bundle.
pub const EXIT_FILE: &str = "exit";
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
const CLIENT_BUFFER_LIMIT: usize = 8 << 20;
/// Stdin buffered for the container before the monitor stops reading clients.
const STDIN_BUFFER_LIMIT: usize = 256 << 10;

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

/// After the init exits, how long the monitor keeps draining output held open
/// by other processes (a shared PID namespace) before it stops.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// How the container's PID namespace is set up before the fork.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PidNamespace {
    /// A new one; the init is its PID 1.
    New,
    /// Join the one of a running process (the pod's init, or a target
    /// container's), named by pid and start time.
    Join {
        /// Host pid.
        pid: i32,
        /// Its start time, so a reused pid is refused.
        start_time: u64,
    },
    /// The host's.
    Host,
}

/// Arguments of `berth-monitor monitor`.
#[derive(Debug, Clone)]
pub struct MonitorArgs {
    /// Container id, for messages.
    pub id: String,
    /// The bundle: config.json, rootfs/, the socket and exit file.
    pub bundle: PathBuf,
    /// The CRI log file, if any.
    pub log: Option<PathBuf>,
    /// PID namespace.
    pub pid_ns: PidNamespace,
    /// Where to report `created <pid>` or `error …` (then closed).
    pub sync_fd: RawFd,
    /// The container's stdio.
    pub stdio: StdioOpts,
}

/// How the container's stdio is wired (CRI's `stdin`, `stdin_once`, `tty`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StdioOpts {
    /// Keep stdin open for attach (else it is /dev/null).
    pub stdin: bool,
    /// Close stdin when the first attached client with stdin detaches.
    pub stdin_once: bool,
    /// A terminal is the container's stdin, stdout and stderr.
    pub tty: bool,
}

/// The exit status the monitor records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code, or 128 + signal.
    pub code: i32,
    /// The killing signal, 0 if none.
    pub signal: i32,
    /// When the monitor saw it, ns since the epoch.
    pub finished_ns: i64,
}

impl ExitStatus {
    /// The `exit` file's text.
    pub fn encode(&self) -> String {
        format!("code={}\nsignal={}\nfinished_ns={}\n", self.code, self.signal, self.finished_ns)
    }

    /// Parses the `exit` file's text.
    pub fn decode(text: &str) -> Option<ExitStatus> {
        let mut code = None;
        let mut signal = 0;
        let mut finished_ns = 0;
        for line in text.lines() {
            match line.split_once('=') {
                Some(("code", v)) => code = v.parse().ok(),
                Some(("signal", v)) => signal = v.parse().unwrap_or(0),
                Some(("finished_ns", v)) => finished_ns = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        Some(ExitStatus { code: code?, signal, finished_ns })
    }

    /// Reads a bundle's exit file, if the container has exited.
    pub fn read(bundle: &Path) -> Option<ExitStatus> {
        std::fs::read_to_string(bundle.join(EXIT_FILE)).ok().and_then(|t| ExitStatus::decode(&t))
    }
}

fn pipe_cloexec() -> nix::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC)
}

/// Runs the monitor; returns the process exit code (only on early failure
/// in the first process; the daemonised monitor exits itself).
pub fn main(args: MonitorArgs) -> i32 {
    // SAFETY: sync_fd was handed to us by berthd and nobody else owns it.
    let mut sync = unsafe { std::fs::File::from_raw_fd(args.sync_fd) };
    // Leave berthd's process tree: the first process exits at once, the
    // second lives on, reparented to init (or the nearest subreaper).
    // SAFETY: single-threaded at this point (no threads were started).
    match unsafe { fork() } {
        Ok(ForkResult::Parent { .. }) => return 0,
        Ok(ForkResult::Child) => {}
        Err(e) => {
            let _ = writeln!(sync, "error\t{}", InitError::Setup(format!("fork monitor: {e}")).encode());
            return 1;
        }
    }
    let _ = nix::unistd::setsid();
    match run(&args, &mut sync) {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(sync, "error\t{}", e.encode());
            1
        }
    }
}

fn setup_err(step: &str, e: impl std::fmt::Display) -> InitError {
    InitError::Setup(format!("monitor {step}: {e}"))
}

fn run(args: &MonitorArgs, sync: &mut std::fs::File) -> Result<(), InitError> {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    init::close_on_exec_from(3);
    let socket_path = args.bundle.join(SOCKET);
    let _ = std::fs::remove_file(&socket_path);
    // sun_path holds 108 bytes; the bundle path may be longer, so bind
    // relative to the bundle as the working directory.
    nix::unistd::chdir(&args.bundle).map_err(|e| setup_err("chdir bundle", e))?;
    let listener = UnixListener::bind(SOCKET).map_err(|e| setup_err("bind socket", e))?;
    listener.set_nonblocking(true).map_err(|e| setup_err("socket", e))?;

    let tty = args.stdio.tty;
    // A TTY container's output comes from its terminal, not from pipes.
    let out = if tty { None } else { Some(pipe_cloexec().map_err(|e| setup_err("pipe", e))?) };
    let err = if tty { None } else { Some(pipe_cloexec().map_err(|e| setup_err("pipe", e))?) };
    let stdin = if args.stdio.stdin && !tty { Some(pipe_cloexec().map_err(|e| setup_err("pipe", e))?) } else { None };
    let console = if tty {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        Some(socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC).map_err(|e| setup_err("socketpair", e))?)
    } else {
        None
    };
    let (out_r, out_w) = out.unzip();
    let (err_r, err_w) = err.unzip();
    let (stdin_r, stdin_w) = stdin.unzip();
    let (console_parent, console_child) = console.unzip();
    let (report_r, report_w) = pipe_cloexec().map_err(|e| setup_err("pipe", e))?;
    let (start_r, start_w) = pipe_cloexec().map_err(|e| setup_err("pipe", e))?;
    let null = init::open_null().map_err(|e| setup_err("open /dev/null", e))?;

    match &args.pid_ns {
        PidNamespace::New => nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID).map_err(|e| setup_err("unshare pid", e))?,
        PidNamespace::Join { pid, start_time } => {
            let target = crate::process::Process::open(*pid, *start_time)
                .map_err(|e| setup_err(&format!("the process {pid} whose PID namespace to join"), e))?;
            target.join(nix::sched::CloneFlags::CLONE_NEWPID).map_err(|e| setup_err("setns pid", e))?;
        }
        PidNamespace::Host => {}
    }

    // SAFETY: the monitor is single-threaded, so the child may allocate.
    let child = match unsafe { fork() }.map_err(|e| setup_err("fork init", e))? {
        ForkResult::Child => {
            drop((out_r, err_r, stdin_w, console_parent, report_r, start_w, listener));
            let stdio = [stdin_r, out_w, err_w];
            child_main(args, null, stdio, report_w, start_r, console_child)
        }
        ForkResult::Parent { child } => child,
    };
    drop((out_w, err_w, stdin_r, console_child, report_w, start_r, null));

    let mut report = std::fs::File::from(report_r);
    let mut pty = None;
    match read_report(&mut report) {
        Report::Ready(ids) => {
            // A TTY init sent its terminal's master before it reported ready.
            if let Some(console) = &console_parent {
                match crate::tty::recv_fd(console) {
                    Ok(Some(master)) => pty = Some(std::fs::File::from(master)),
                    other => {
                        let why = other.err().map_or("no terminal received".to_string(), |e| e.to_string());
                        let _ = writeln!(sync, "error\t{}", InitError::Setup(format!("container terminal: {why}")).encode());
                        let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                        let _ = waitpid(child, None);
                        let _ = std::fs::remove_file(&socket_path);
                        return Ok(());
                    }
                }
            }
            let _ = writeln!(sync, "created\t{}\t{}\t{ids}", child.as_raw(), std::process::id());
        }
        Report::Failed(e) => {
            let _ = writeln!(sync, "error\t{}", e.encode());
            let _ = waitpid(child, None);
            let _ = std::fs::remove_file(&socket_path);
            return Ok(());
        }
        Report::Exec => {
            let _ = writeln!(sync, "error\t{}", InitError::Setup("init exited before it was ready".into()).encode());
            let _ = waitpid(child, None);
            let _ = std::fs::remove_file(&socket_path);
            return Ok(());
        }
    }
    drop(std::mem::replace(sync, std::fs::File::from(init::open_null().map_err(|e| setup_err("null", e))?)));
    drop(console_parent);

    let mut state = Monitor {
        child,
        log_path: args.log.clone(),
        log: None,
        out: out_r.map(std::fs::File::from),
        err: err_r.map(std::fs::File::from),
        pty,
        stdin: stdin_w.map(std::fs::File::from),
        stdin_pending: Vec::new(),
        stdin_closing: false,
        stdin_once: args.stdio.stdin_once,
        clients: Vec::new(),
        out_split: LineSplitter::new(Stream::Stdout),
        err_split: LineSplitter::new(Stream::Stderr),
        report: Some(report),
        start: Some(std::fs::File::from(start_w)),
        exit: None,
        exited_at: None,
    };
    state.open_log();
    state.event_loop(&listener)?;
    if let Some(status) = &state.exit {
        write_exit_file(&args.bundle, status);
    }
    let _ = std::fs::remove_file(&socket_path);
    Ok(())
}

enum Report {
    /// Ready, with the ids the init resolved (`uid\tgid\tgroups`).
    Ready(String),
    Failed(InitError),
    /// EOF: the init exec'd (or died without a word).
    Exec,
}

fn read_report(report: &mut std::fs::File) -> Report {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match report.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => break,
            Ok(1) => buf.push(byte[0]),
            Ok(_) => {
                if buf.is_empty() {
                    return Report::Exec;
                }
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Report::Exec,
        }
    }
    let line = String::from_utf8_lossy(&buf);
    match line.split_once('\t') {
        Some((init::READY, ids)) => Report::Ready(ids.to_string()),
        _ => Report::Failed(InitError::decode(&line)),
    }
}

fn child_main(
    args: &MonitorArgs,
    null: OwnedFd,
    stdio: [Option<OwnedFd>; 3],
    report_w: OwnedFd,
    start_r: OwnedFd,
    console: Option<OwnedFd>,
) -> ! {
    let mut report = std::fs::File::from(report_w);
    let fail = |report: &mut std::fs::File, e: InitError| -> ! {
        let _ = writeln!(report, "{}", e.encode());
        // SAFETY: _exit in a forked child.
        unsafe { libc::_exit(127) }
    };
    // SAFETY: prctl with integer arguments; dies with the monitor until exec.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    reset_signals();
    // Missing streams are /dev/null; a TTY init replaces all three later.
    for (target, fd) in stdio.iter().enumerate() {
        let fd = fd.as_ref().map_or(null.as_raw_fd(), |f| f.as_raw_fd());
        if let Err(e) = init::dup_onto(fd, target as RawFd) {
            fail(&mut report, e);
        }
    }
    drop((null, stdio));
    let spec = match std::fs::read(args.bundle.join("config.json"))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice::<oci_spec::runtime::Spec>(&b).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => fail(&mut report, InitError::Setup(format!("reading config.json: {e}"))),
    };
    init::run(&spec, &args.bundle, report, std::fs::File::from(start_r), console)
}

/// Default dispositions and an empty mask: the Rust runtime ignores SIGPIPE,
/// and ignored signals would stay ignored across execve.
pub fn reset_signals() {
    for sig in Signal::iterator() {
        if sig == Signal::SIGKILL || sig == Signal::SIGSTOP {
            continue;
        }
        // SAFETY: installing SIG_DFL is always sound.
        unsafe {
            let _ = nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl);
        }
    }
    let _ = nix::sys::signal::sigprocmask(nix::sys::signal::SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

fn write_exit_file(bundle: &Path, status: &ExitStatus) {
    let tmp = bundle.join(".exit.tmp");
    if std::fs::write(&tmp, status.encode()).is_ok() {
        if let Ok(f) = std::fs::File::open(&tmp) {
            let _ = f.sync_all();
        }
        let _ = std::fs::rename(&tmp, bundle.join(EXIT_FILE));
    }
}

struct Monitor {
    child: Pid,
    log_path: Option<PathBuf>,
    log: Option<std::fs::File>,
    out: Option<std::fs::File>,
    err: Option<std::fs::File>,
    out_split: LineSplitter,
    err_split: LineSplitter,
    /// A TTY container's terminal (master side): output in, stdin out.
    pty: Option<std::fs::File>,
    /// The write end of a `stdin: true` container's stdin pipe.
    stdin: Option<std::fs::File>,
    /// Stdin from clients not yet taken by the container.
    stdin_pending: Vec<u8>,
    /// Close stdin once the pending bytes are written.
    stdin_closing: bool,
    stdin_once: bool,
    clients: Vec<Client>,
    report: Option<std::fs::File>,
    start: Option<std::fs::File>,
    exit: Option<ExitStatus>,
    exited_at: Option<Instant>,
}

impl Monitor {
    fn open_log(&mut self) {
        self.log = self.log_path.as_ref().and_then(|p| {
            if let Some(dir) = p.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            std::fs::OpenOptions::new().create(true).append(true).custom_flags(libc::O_CLOEXEC).mode(0o640).open(p).ok()
        });
    }

    fn event_loop(&mut self, listener: &UnixListener) -> Result<(), InitError> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        mask.thread_block().map_err(|e| setup_err("block SIGCHLD", e))?;
        let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).map_err(|e| setup_err("signalfd", e))?;
        for f in [&self.out, &self.err, &self.pty, &self.stdin].into_iter().flatten() {
            set_nonblocking(f.as_raw_fd());
        }
        // The init may have died before SIGCHLD was blocked.
        self.reap();
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
                Err(e) => return Err(setup_err("poll", e)),
            }
            let ready = |i: usize| fds[i].revents().is_some_and(|r| !r.is_empty());
            let (sig_ready, sock_ready) = (ready(0), ready(1));
            let out_ready = out_idx.is_some_and(ready);
            let err_ready = err_idx.is_some_and(ready);
            let pty_ready = pty_idx.is_some_and(ready);
            let stdin_ready = stdin_idx.is_some_and(ready);
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
        let mut buf = [0u8; 32 * 1024];
        loop {
            let file = match stream {
                Stream::Stdout => self.out.as_mut(),
                Stream::Stderr => self.err.as_mut(),
            };
            let Some(file) = file else { return };
            match file.read(&mut buf) {
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
        let mut buf = [0u8; 32 * 1024];
        while let Some(pty) = self.pty.as_mut() {
            match pty.read(&mut buf) {
                Ok(0) => self.pty = None,
                Ok(n) => self.output(Stream::Stdout, &buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                // EIO: every slave fd is closed, the container's stdio is gone.
                Err(_) => self.pty = None,
            }
        }
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
                eprintln!("monitor: dropping an attached client that stopped reading");
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
        let mut buf = [0u8; 32 * 1024];
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
        while let Some((kind, payload)) = take_attach_frame(&mut self.clients[i].inbuf) {
            let with_stdin = self.clients[i].stdin;
            match kind {
                FRAME_STDIN if with_stdin => self.stdin_pending.extend_from_slice(&payload),
                FRAME_STDIN_CLOSE if with_stdin => self.client_closed_stdin(),
                FRAME_RESIZE if payload.len() == 4 => {
                    if let Some(pty) = &self.pty {
                        let cols = u16::from_be_bytes([payload[0], payload[1]]);
                        let rows = u16::from_be_bytes([payload[2], payload[3]]);
                        crate::tty::set_window_size(pty, cols, rows);
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
        self.exit = Some(ExitStatus { code, signal, finished_ns: now_ns() });
        self.exited_at = Some(Instant::now());
        self.start = None;
    }

    /// One command per connection, one line each way.
    fn serve(&mut self, mut conn: UnixStream) {
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while line.len() < 256 {
            match conn.read(&mut byte) {
                Ok(1) if byte[0] != b'\n' => line.push(byte[0]),
                _ => break,
            }
        }
        let line = String::from_utf8_lossy(&line).to_string();
        let mut words = line.split_whitespace();
        if words.next() == Some("attach") {
            let stdin = words.next() == Some("stdin");
            if self.exit.is_some() {
                let _ = conn.write_all(b"error\tnot running\n");
                return;
            }
            if conn.write_all(b"ok\n").is_ok() && conn.set_nonblocking(true).is_ok() {
                self.clients.push(Client { sock: conn, inbuf: Vec::new(), outbuf: Vec::new(), stdin });
            }
            return;
        }
        let reply = self.command(line.trim());
        let _ = conn.write_all(format!("{reply}\n").as_bytes());
    }

    fn command(&mut self, cmd: &str) -> String {
        let mut words = cmd.split_whitespace();
        match words.next() {
            Some("start") => self.start(),
            Some("signal") => {
                let sig = words.next().and_then(|s| s.parse::<i32>().ok()).and_then(|n| Signal::try_from(n).ok());
                match (sig, &self.exit) {
                    (None, _) => "error\tbad signal".into(),
                    (_, Some(_)) => "error\tnot running".into(),
                    (Some(sig), None) => match nix::sys::signal::kill(self.child, sig) {
                        Ok(()) => "ok".into(),
                        Err(e) => format!("error\t{e}"),
                    },
                }
            }
            Some("reopen") => {
                self.open_log();
                if self.log_path.is_some() && self.log.is_none() {
                    "error\tcannot open the log file".into()
                } else {
                    "ok".into()
                }
            }
            Some("state") => match &self.exit {
                Some(e) => format!("exited\t{}", e.code),
                None => format!("running\t{}", self.child.as_raw()),
            },
            _ => "error\tunknown command".into(),
        }
    }

    /// Lets the init exec and reports whether exec worked.
    fn start(&mut self) -> String {
        let (Some(mut start), Some(mut report)) = (self.start.take(), self.report.take()) else {
            return "error\tsetup\talready started or exited".into();
        };
        if start.write_all(b"s").is_err() {
            return "error\tsetup\tthe init is gone".into();
        }
        drop(start);
        match read_report(&mut report) {
            Report::Exec => "ok".into(),
            Report::Failed(e) => format!("error\t{}", e.encode()),
            Report::Ready(_) => "error\tsetup\tunexpected report".into(),
        }
    }
}

/// An attached client (`attach` on the control socket).
struct Client {
    sock: UnixStream,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    /// It attached with stdin.
    stdin: bool,
}

impl Client {
    /// Writes buffered output without blocking; Err when the client is gone.
    fn flush(&mut self) -> std::io::Result<()> {
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

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on an fd we own; no memory effects.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

use std::os::unix::fs::OpenOptionsExt;

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

    #[test]
    fn exit_status_round_trips() {
        let s = ExitStatus { code: 137, signal: 9, finished_ns: 42 };
        assert_eq!(ExitStatus::decode(&s.encode()), Some(s));
        assert_eq!(ExitStatus::decode("garbage"), None);
    }
}

//! The per-container monitor: a small single-threaded process (no async
//! runtime), parent of the container init and a child subreaper, not a child
//! of berthd. It holds the container's stdio, writes the CRI log, answers a
//! line protocol on a filesystem socket in the container's 0700 state dir
//! (`start`, `signal N`, `reopen`, `state`), and records the exit status in
//! the `exit` file before it goes.

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
/// After the init exits, how long the monitor keeps draining output held open
/// by other processes (a shared PID namespace) before it stops.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// How the container's PID namespace is set up before the fork.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PidNamespace {
    /// A new one; the init is its PID 1.
    New,
    /// Join an existing one (the pod's), by path.
    Join(PathBuf),
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

    let (out_r, out_w) = pipe_cloexec().map_err(|e| setup_err("pipe", e))?;
    let (err_r, err_w) = pipe_cloexec().map_err(|e| setup_err("pipe", e))?;
    let (report_r, report_w) = pipe_cloexec().map_err(|e| setup_err("pipe", e))?;
    let (start_r, start_w) = pipe_cloexec().map_err(|e| setup_err("pipe", e))?;
    let null = init::open_null().map_err(|e| setup_err("open /dev/null", e))?;

    match &args.pid_ns {
        PidNamespace::New => nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID).map_err(|e| setup_err("unshare pid", e))?,
        PidNamespace::Join(path) => {
            let fd = nix::fcntl::open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
                .map_err(|e| setup_err(&format!("open {}", path.display()), e))?;
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWPID).map_err(|e| setup_err("setns pid", e))?;
        }
        PidNamespace::Host => {}
    }

    // SAFETY: the monitor is single-threaded, so the child may allocate.
    let child = match unsafe { fork() }.map_err(|e| setup_err("fork init", e))? {
        ForkResult::Child => {
            drop((out_r, err_r, report_r, start_w, listener));
            child_main(args, null, out_w, err_w, report_w, start_r)
        }
        ForkResult::Parent { child } => child,
    };
    drop((out_w, err_w, report_w, start_r, null));

    let mut report = std::fs::File::from(report_r);
    match read_report(&mut report) {
        Report::Ready(ids) => {
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

    let mut state = Monitor {
        child,
        log_path: args.log.clone(),
        log: None,
        out: Some(std::fs::File::from(out_r)),
        err: Some(std::fs::File::from(err_r)),
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

fn child_main(args: &MonitorArgs, null: OwnedFd, out_w: OwnedFd, err_w: OwnedFd, report_w: OwnedFd, start_r: OwnedFd) -> ! {
    let mut report = std::fs::File::from(report_w);
    let fail = |report: &mut std::fs::File, e: InitError| -> ! {
        let _ = writeln!(report, "{}", e.encode());
        // SAFETY: _exit in a forked child.
        unsafe { libc::_exit(127) }
    };
    // SAFETY: prctl with integer arguments; dies with the monitor until exec.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    reset_signals();
    for (fd, target) in [(null.as_raw_fd(), 0), (out_w.as_raw_fd(), 1), (err_w.as_raw_fd(), 2)] {
        if let Err(e) = init::dup_onto(fd, target) {
            fail(&mut report, e);
        }
    }
    drop((null, out_w, err_w));
    let spec = match std::fs::read(args.bundle.join("config.json"))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice::<oci_spec::runtime::Spec>(&b).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => fail(&mut report, InitError::Setup(format!("reading config.json: {e}"))),
    };
    init::run(&spec, &args.bundle, report, std::fs::File::from(start_r))
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
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .custom_flags(libc::O_CLOEXEC)
                .mode(0o640)
                .open(p)
                .ok()
        });
    }

    fn event_loop(&mut self, listener: &UnixListener) -> Result<(), InitError> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        mask.thread_block().map_err(|e| setup_err("block SIGCHLD", e))?;
        let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).map_err(|e| setup_err("signalfd", e))?;
        for f in [&self.out, &self.err].into_iter().flatten() {
            set_nonblocking(f.as_raw_fd());
        }
        // The init may have died before SIGCHLD was blocked.
        self.reap();
        loop {
            if self.exit.is_some() {
                let drained = self.out.is_none() && self.err.is_none();
                let overdue = self.exited_at.is_some_and(|t| t.elapsed() > DRAIN_AFTER_EXIT);
                if drained || overdue {
                    let ts = rfc3339_nano(now_ns());
                    if let Some(log) = self.log.as_mut() {
                        let _ = self.out_split.finish(&ts, log);
                        let _ = self.err_split.finish(&ts, log);
                    }
                    return Ok(());
                }
            }
            let mut fds = vec![PollFd::new(sigfd.as_fd(), PollFlags::POLLIN), PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
            let out_idx = self.out.as_ref().map(|f| {
                fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
                fds.len() - 1
            });
            let err_idx = self.err.as_ref().map(|f| {
                fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
                fds.len() - 1
            });
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
            drop(fds);
            if out_ready {
                self.drain(Stream::Stdout);
            }
            if err_ready {
                self.drain(Stream::Stderr);
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

    /// Reads what is there from one stream into the log.
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
                Ok(n) => {
                    let ts = rfc3339_nano(now_ns());
                    let split = match stream {
                        Stream::Stdout => &mut self.out_split,
                        Stream::Stderr => &mut self.err_split,
                    };
                    match self.log.as_mut() {
                        Some(log) => {
                            let _ = split.feed(&buf[..n], &ts, log);
                        }
                        None => {
                            let _ = split.feed(&buf[..n], &ts, &mut std::io::sink());
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
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
    fn exit_status_round_trips() {
        let s = ExitStatus { code: 137, signal: 9, finished_ns: 42 };
        assert_eq!(ExitStatus::decode(&s.encode()), Some(s));
        assert_eq!(ExitStatus::decode("garbage"), None);
    }
}

//! The executor as berthd uses it: create a container from a spec and a
//! bundle (spawning its monitor), start it, signal it, reopen its log, read
//! its exit status, and build ExecSync commands. Blocking calls; the agent
//! runs them on its blocking pool.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use oci_spec::runtime::Spec;

use crate::init::InitError;
use crate::monitor::{ExitStatus, PidNamespace, StdioOpts, EXIT_FILE, SOCKET};

/// Executor failures, typed so that the agent can map them.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The container's own setup failed (bad command, cwd, user…).
    #[error("{0}")]
    Init(#[from] InitError),
    /// Talking to or starting the monitor failed.
    #[error("monitor of {id}: {reason}")]
    Monitor { id: String, reason: String },
    /// The container is not running.
    #[error("container {0} is not running")]
    NotRunning(String),
    /// Local I/O.
    #[error("{0}")]
    Io(String),
}

/// A created container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    /// Host pid of the container init.
    pub pid: i32,
    /// Its /proc start time (guards pid reuse).
    pub start_time: u64,
    /// Host pid of the monitor.
    pub monitor_pid: i32,
    /// uid the process will run as.
    pub uid: u32,
    /// gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// What a monitor says about its container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonitorState {
    /// Alive (created or started).
    Running,
    /// The monitor has written the exit status.
    Exited(ExitStatus),
    /// No monitor and no exit status: it died without a word.
    Lost,
}

/// The executor handle.
#[derive(Debug, Clone)]
pub struct Runtime {
    monitor_bin: PathBuf,
}

impl Runtime {
    /// Uses `monitor_bin` (the `berth-monitor` binary).
    pub fn new(monitor_bin: PathBuf) -> Runtime {
        Runtime { monitor_bin }
    }

    /// The monitor binary.
    pub fn monitor_bin(&self) -> &Path {
        &self.monitor_bin
    }

    /// Writes `spec` into `bundle/config.json`, spawns the monitor, and waits
    /// until the container init has done everything but exec.
    pub fn create(
        &self,
        id: &str,
        bundle: &Path,
        spec: &Spec,
        log: Option<&Path>,
        pid_ns: &PidNamespace,
        stdio: StdioOpts,
    ) -> Result<Created, RuntimeError> {
        let io = |what: &str, e: std::io::Error| RuntimeError::Io(format!("{what}: {e}"));
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(bundle).map_err(|e| io("bundle", e))?;
        std::fs::DirBuilder::new().recursive(true).mode(0o755).create(bundle.join("rootfs")).map_err(|e| io("rootfs dir", e))?;
        let json = serde_json::to_vec(spec).map_err(|e| RuntimeError::Io(format!("spec: {e}")))?;
        std::fs::write(bundle.join("config.json"), json).map_err(|e| io("config.json", e))?;
        let _ = std::fs::remove_file(bundle.join(EXIT_FILE));

        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| RuntimeError::Io(format!("pipe: {e}")))?;
        let mut cmd = Command::new(&self.monitor_bin);
        cmd.arg("monitor").arg("--id").arg(id).arg("--bundle").arg(bundle).arg("--sync-fd").arg("3");
        if let Some(log) = log {
            cmd.arg("--log").arg(log);
        }
        match pid_ns {
            PidNamespace::New => cmd.arg("--pid-ns").arg("new"),
            PidNamespace::Host => cmd.arg("--pid-ns").arg("host"),
            PidNamespace::Join { pid, start_time } => cmd.arg("--pid-ns").arg(format!("pid:{pid}:{start_time}")),
        };
        for (flag, on) in [("--stdin", stdio.stdin), ("--stdin-once", stdio.stdin_once), ("--tty", stdio.tty)] {
            if on {
                cmd.arg(flag).arg("true");
            }
        }
        let log_file = std::fs::File::create(bundle.join("monitor.log")).map_err(|e| io("monitor.log", e))?;
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log_file);
        pass_as_fd3(&mut cmd, &w);
        let mut first =
            cmd.spawn().map_err(|e| RuntimeError::Monitor { id: id.into(), reason: format!("{}: {e}", self.monitor_bin.display()) })?;
        drop(w);
        // The first monitor process exits right after forking the real one.
        let _ = first.wait();
        let line = read_line_timeout(r, Duration::from_secs(60)).map_err(|reason| RuntimeError::Monitor { id: id.into(), reason })?;
        let mut parts = line.trim_end().splitn(2, '\t');
        match (parts.next(), parts.next()) {
            (Some("created"), Some(rest)) => {
                let f: Vec<&str> = rest.split('\t').collect();
                let num = |i: usize| f.get(i).and_then(|s| s.parse::<i64>().ok());
                match (num(0), num(1), num(2), num(3)) {
                    (Some(pid), Some(monitor_pid), Some(uid), Some(gid)) => {
                        let pid = pid as i32;
                        let groups = f.get(4).map(|g| g.split(',').filter_map(|x| x.parse().ok()).collect()).unwrap_or_default();
                        let start_time = crate::process::start_time(pid).unwrap_or(0);
                        Ok(Created { pid, start_time, monitor_pid: monitor_pid as i32, uid: uid as u32, gid: gid as u32, groups })
                    }
                    _ => Err(RuntimeError::Monitor { id: id.into(), reason: format!("bad answer {line:?}") }),
                }
            }
            (Some("error"), Some(rest)) => Err(RuntimeError::Init(InitError::decode(rest))),
            _ => {
                let log = std::fs::read_to_string(bundle.join("monitor.log")).unwrap_or_default();
                Err(RuntimeError::Monitor { id: id.into(), reason: format!("no answer ({line:?}); monitor log: {}", log.trim()) })
            }
        }
    }

    /// Lets a created container exec its process.
    pub fn start(&self, id: &str, bundle: &Path) -> Result<(), RuntimeError> {
        let reply = command(id, bundle, "start")?;
        match reply.split_once('\t') {
            None if reply == "ok" => Ok(()),
            Some(("error", rest)) => Err(RuntimeError::Init(InitError::decode(rest))),
            _ => Err(RuntimeError::Monitor { id: id.into(), reason: format!("start: {reply}") }),
        }
    }

    /// Sends a signal to the container init through its monitor.
    pub fn signal(&self, id: &str, bundle: &Path, signal: i32) -> Result<(), RuntimeError> {
        let reply = command(id, bundle, &format!("signal {signal}"))?;
        match reply.as_str() {
            "ok" => Ok(()),
            r if r.contains("not running") => Err(RuntimeError::NotRunning(id.into())),
            r => Err(RuntimeError::Monitor { id: id.into(), reason: r.replace('\t', " ") }),
        }
    }

    /// Makes the monitor reopen the log file (after kubelet rotated it).
    pub fn reopen_log(&self, id: &str, bundle: &Path) -> Result<(), RuntimeError> {
        match command(id, bundle, "reopen")?.as_str() {
            "ok" => Ok(()),
            r => Err(RuntimeError::Monitor { id: id.into(), reason: r.replace('\t', " ") }),
        }
    }

    /// Attaches to the container's stdio through its monitor: the returned
    /// socket speaks the monitor's attach frames ([`crate::monitor::attach_frame`]).
    pub fn attach(&self, id: &str, bundle: &Path, stdin: bool) -> Result<UnixStream, RuntimeError> {
        let err = |reason: String| RuntimeError::Monitor { id: id.into(), reason };
        let mut conn = send(id, bundle, if stdin { "attach stdin" } else { "attach" })?;
        // Byte by byte: frames may follow the reply at once.
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while reply.len() < 256 {
            match conn.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break,
                Ok(1) => reply.push(byte[0]),
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(err(format!("read reply to attach: {e}"))),
            }
        }
        match reply.as_slice() {
            b"ok" => {
                conn.set_read_timeout(None).map_err(|e| err(e.to_string()))?;
                Ok(conn)
            }
            r if r.ends_with(b"not running") => Err(RuntimeError::NotRunning(id.into())),
            r => Err(err(String::from_utf8_lossy(r).replace('\t', " "))),
        }
    }

    /// The container's state as its monitor and exit file tell.
    pub fn state(&self, bundle: &Path) -> MonitorState {
        if let Some(s) = ExitStatus::read(bundle) {
            return MonitorState::Exited(s);
        }
        match connect(bundle) {
            Ok(_) => MonitorState::Running,
            // The monitor may have written the file between our two looks.
            Err(_) => match ExitStatus::read(bundle) {
                Some(s) => MonitorState::Exited(s),
                None => MonitorState::Lost,
            },
        }
    }

    /// A command running `args` in the container (ExecSync): stdout and
    /// stderr are the command's, except a failure to start it, which is an
    /// [`crate::exec::ERROR_MARKER`] line on stderr and exit code
    /// [`crate::exec::SETUP_FAILED`].
    pub fn exec_command(&self, bundle: &Path, pid: i32, start_time: u64, args: &[String]) -> Command {
        self.exec_command_tty(bundle, pid, start_time, args, false)
    }

    /// Like [`Runtime::exec_command`]; with `tty` the command runs on a
    /// terminal and window sizes are read as `cols rows` lines from fd 3.
    pub fn exec_command_tty(&self, bundle: &Path, pid: i32, start_time: u64, args: &[String], tty: bool) -> Command {
        let mut cmd = Command::new(&self.monitor_bin);
        cmd.arg("exec")
            .arg("--tty")
            .arg(if tty { "true" } else { "false" })
            .arg("--bundle")
            .arg(bundle)
            .arg("--pid")
            .arg(pid.to_string())
            .arg("--start-time")
            .arg(start_time.to_string())
            .arg("--")
            .args(args)
            .stdin(Stdio::null());
        cmd
    }
}

/// Makes `fd` the child's fd 3 (the sync/report pipe of berth-monitor); the
/// original stays close-on-exec.
pub fn pass_as_fd3(cmd: &mut Command, fd: &OwnedFd) {
    let raw = fd.as_raw_fd();
    // SAFETY: only dup2 (async-signal-safe) runs between fork and exec, on
    // an fd that stays open until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Connects to the monitor and sends one command line; NotRunning when the
/// monitor is gone because the container exited.
fn send(id: &str, bundle: &Path, cmd: &str) -> Result<UnixStream, RuntimeError> {
    let err = |reason: String| RuntimeError::Monitor { id: id.into(), reason };
    let mut conn = match connect(bundle) {
        Ok(c) => c,
        Err(_) if ExitStatus::read(bundle).is_some() => return Err(RuntimeError::NotRunning(id.into())),
        Err(e) => return Err(err(format!("connect: {e}"))),
    };
    conn.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| err(e.to_string()))?;
    conn.write_all(format!("{cmd}\n").as_bytes()).map_err(|e| err(format!("send {cmd}: {e}")))?;
    Ok(conn)
}

/// One command on the monitor's socket, one line back.
fn command(id: &str, bundle: &Path, cmd: &str) -> Result<String, RuntimeError> {
    let err = |reason: String| RuntimeError::Monitor { id: id.into(), reason };
    let conn = send(id, bundle, cmd)?;
    let mut reply = String::new();
    BufReader::new(&conn).read_line(&mut reply).map_err(|e| err(format!("read reply to {cmd}: {e}")))?;
    if reply.is_empty() {
        return Err(err(format!("no reply to {cmd}")));
    }
    Ok(reply.trim_end().to_string())
}

/// Connects to the monitor socket in `bundle`. The path goes through an fd
/// of the bundle (`/proc/self/fd/N/monitor.sock`) because sun_path is short.
fn connect(bundle: &Path) -> std::io::Result<UnixStream> {
    let dir = std::fs::File::open(bundle)?;
    UnixStream::connect(format!("/proc/self/fd/{}/{SOCKET}", dir.as_raw_fd()))
}

fn read_line_timeout(fd: OwnedFd, timeout: Duration) -> Result<String, String> {
    let mut pfd = [nix::poll::PollFd::new(std::os::fd::AsFd::as_fd(&fd), nix::poll::PollFlags::POLLIN)];
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    match nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(ms)) {
        Ok(0) => return Err(format!("no answer within {timeout:?}")),
        Ok(_) => {}
        Err(e) => return Err(format!("poll: {e}")),
    }
    // SAFETY: into_raw_fd hands over ownership of the fd to the File.
    let file = unsafe { std::fs::File::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(fd)) };
    let mut line = String::new();
    let mut reader = BufReader::new(file.take(64 * 1024));
    reader.read_line(&mut line).map_err(|e| format!("read: {e}"))?;
    Ok(line)
}

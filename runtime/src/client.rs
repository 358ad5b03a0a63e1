//! The executor as berthd uses it: create a container from a spec and a
//! bundle (spawning its monitor), start it, signal it, reopen its log, read
//! its exit status, attach to it, and build exec helpers. Blocking calls;
//! the agent runs them on its blocking pool. Every exchange with berth's own
//! processes is a typed message ([`crate::message`]) on a channel of its own.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use oci_spec::runtime::Spec;

use crate::channel::{self, ChannelError};
use crate::message::{ControlReply, ControlRequest, InitError, MonitorReport};
use crate::monitor::{ExitStatus, JoinProc, PidNamespace, StdioOpts, SOCKET};

/// Executor failures, typed so that the agent can map them.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The container's own setup failed (bad command, cwd, user…).
    #[error("{0}")]
    Init(#[from] InitError),
    /// Talking to or starting the monitor failed.
    #[error("monitor of {id}: {reason}")]
    Monitor {
        /// Container id.
        id: String,
        /// What went wrong.
        reason: String,
    },
    /// A channel to one of berth's processes failed.
    #[error("monitor of {id}: {source}")]
    Channel {
        /// Container id.
        id: String,
        /// The channel's error.
        #[source]
        source: ChannelError,
    },
    /// The container is not running.
    #[error("container {0} is not running")]
    NotRunning(String),
    /// Local I/O on the bundle.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
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
    /// The monitor's /proc start time (guards pid reuse; 0 if it could not
    /// be read).
    pub monitor_start_time: u64,
    /// uid the process will run as.
    pub uid: u32,
    /// gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// The monitor's and the init's steps with their durations in µs.
    pub stages_us: Vec<(String, u64)>,
    /// Why the zygote did not fork this monitor (it was spawned instead).
    pub zygote_error: Option<String>,
}

/// What a monitor says about its container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonitorState {
    /// Alive; with the time the container's process was started, once it was.
    Running(Option<i64>),
    /// The monitor has written the exit status.
    Exited(ExitStatus),
    /// No monitor and no exit status: it died without a word.
    Lost,
}

/// The executor handle.
#[derive(Debug, Clone)]
pub struct Runtime {
    monitor_bin: PathBuf,
    /// Forks monitors, when used (see [`crate::zygote`]).
    zygote: Option<std::sync::Arc<crate::zygote::Zygote>>,
}

/// An exec helper ready to spawn: the command, and berthd's ends of its
/// report channel and (with a TTY) its resize channel.
pub struct ExecHelper {
    /// `berth-monitor exec …`; stdio is the caller's to set.
    pub command: Command,
    /// Read end of the report channel ([`crate::message::ExecReport`]).
    pub report: OwnedFd,
    /// Write end of the resize channel ([`crate::message::ExecControl`]).
    pub resize: Option<OwnedFd>,
    /// The helper's ends, kept open until it is spawned.
    child_ends: Vec<OwnedFd>,
}

impl ExecHelper {
    /// Closes berthd's copies of the helper's ends: call once it is spawned,
    /// so the report channel ends when the helper does.
    pub fn spawned(&mut self) {
        self.child_ends.clear();
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let what = what.into();
    move |source| RuntimeError::Io { what, source }
}

/// A container's bundle, written ([`Runtime::write_bundle`]) and not yet
/// handed to a monitor.
#[derive(Debug)]
pub struct Bundle {
    dir: PathBuf,
    monitor_log: std::fs::File,
    /// The spec's `CGROUP_PROCS` annotation, passed to the monitor.
    cgroup_procs: Option<String>,
    /// The spec's `CGROUP_HOLD` annotation is set.
    cgroup_hold: bool,
}

impl Runtime {
    /// Uses `monitor_bin` (the `berth-monitor` binary).
    pub fn new(monitor_bin: PathBuf) -> Runtime {
        Runtime { monitor_bin, zygote: None }
    }

    /// With `on`, container monitors are forked by a zygote of the monitor
    /// binary, started on the first create; else each is spawned.
    pub fn with_zygote(mut self, on: bool) -> Runtime {
        self.zygote = on.then(|| std::sync::Arc::new(crate::zygote::Zygote::new(self.monitor_bin.clone())));
        self
    }

    /// The monitor binary.
    pub fn monitor_bin(&self) -> &Path {
        &self.monitor_bin
    }

    /// The bundle of a container about to be created: `bundle/` (0700),
    /// `rootfs/`, `config.json` from `spec`, and the monitor's log file.
    /// Separate from [`Runtime::create`] so that a caller can write it
    /// beside other work.
    pub fn write_bundle(bundle: &Path, spec: &Spec) -> Result<Bundle, RuntimeError> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(bundle).map_err(io_err("bundle"))?;
        std::fs::DirBuilder::new().recursive(true).mode(0o755).create(bundle.join("rootfs")).map_err(io_err("rootfs dir"))?;
        let json = serde_json::to_vec(spec).map_err(|e| io_err("serializing the spec")(std::io::Error::other(e)))?;
        std::fs::write(bundle.join("config.json"), json).map_err(io_err("config.json"))?;
        let _ = std::fs::remove_file(bundle.join(crate::monitor::EXIT_FILE));
        let monitor_log = std::fs::File::create(bundle.join("monitor.log")).map_err(io_err("monitor.log"))?;
        Ok(Bundle {
            dir: bundle.to_path_buf(),
            monitor_log,
            cgroup_procs: crate::annotations::get(spec, crate::annotations::CGROUP_PROCS).map(str::to_string),
            cgroup_hold: crate::annotations::get(spec, crate::annotations::CGROUP_HOLD) == Some("1"),
        })
    }

    /// Spawns the monitor of the container whose `bundle` was written, and
    /// waits until the container init has done everything but exec.
    /// `rootfs`: the overlay rootfs, if the caller mounted it ahead
    /// ([`crate::rootfs::mount_ahead`]) from the spec's layers.
    pub fn create(
        &self,
        id: &str,
        bundle: Bundle,
        log: Option<&Path>,
        pid_ns: &PidNamespace,
        stdio: StdioOpts,
        rootfs: Option<OwnedFd>,
    ) -> Result<Created, RuntimeError> {
        let monitor_err = |reason: String| RuntimeError::Monitor { id: id.into(), reason };
        let Bundle { dir, monitor_log: log_file, cgroup_procs, cgroup_hold } = bundle;
        let bundle = dir.as_path();
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io_err("pipe")(e.into()))?;
        let (pid_ns, pid_ns_proc) = match pid_ns {
            PidNamespace::New => ("new".to_string(), None),
            PidNamespace::Host => ("host".to_string(), None),
            PidNamespace::Join { pid, start_time, proc } => {
                let proc = match proc {
                    JoinProc::Pinned(dir) => Some(dir.as_os_str()),
                    JoinProc::OfTarget => Some(std::ffi::OsStr::new("target")),
                    JoinProc::Kernel => None,
                };
                (format!("pid:{pid}:{start_time}"), proc)
            }
        };
        let s = std::ffi::OsStr::new;
        let mut args = vec![s("monitor"), s("--id"), s(id), s("--bundle"), bundle.as_os_str(), s("--sync-fd"), s("3")];
        if let Some(log) = log {
            args.extend([s("--log"), log.as_os_str()]);
        }
        args.extend([s("--pid-ns"), s(&pid_ns)]);
        if let Some(p) = pid_ns_proc {
            args.extend([s("--pid-ns-proc"), p]);
        }
        // The monitor needs these two of the spec before the init exists;
        // as arguments it never parses the spec itself.
        if let Some(procs) = &cgroup_procs {
            args.extend([s("--cgroup-procs"), s(procs)]);
        }
        for (flag, on) in
            [("--cgroup-hold", cgroup_hold), ("--stdin", stdio.stdin), ("--stdin-once", stdio.stdin_once), ("--tty", stdio.tty)]
        {
            if on {
                args.extend([s(flag), s("true")]);
            }
        }
        let mut fds = vec![(log_file.as_fd(), 2), (w.as_fd(), 3)];
        if let Some(fd) = &rootfs {
            args.extend([s("--rootfs-fd"), s("4")]);
            fds.push((fd.as_fd(), 4));
        }
        // Spawned, the first monitor process exits right after forking the
        // real one, and is waited for; from the zygote, the forked process
        // is the monitor.
        let asked_ns = crate::time::monotonic_ns();
        let zygote_error = match self.zygote.as_deref().map(|z| z.run(&args, &fds)) {
            Some(Ok(())) => None,
            unused => {
                let first = crate::spawn::spawn(&self.monitor_bin, &args, &fds)
                    .map_err(|e| monitor_err(format!("{}: {e}", self.monitor_bin.display())))?;
                let _ = first.wait();
                unused.and_then(Result::err).map(|e| e.to_string())
            }
        };
        drop(w);
        let report =
            recv_timeout::<MonitorReport>(r, Duration::from_secs(60)).map_err(|source| RuntimeError::Channel { id: id.into(), source });
        match report {
            Ok(Some(MonitorReport::Created { pid, monitor_pid, uid, gid, groups, mut stages_us, started_ns })) => {
                // From the request to the monitor's first step: the zygote's
                // fork (or the spawn) and the monitor's own.
                if started_ns >= asked_ns && asked_ns > 0 {
                    stages_us.insert(0, ("monitor_start".to_string(), (started_ns - asked_ns) / 1000));
                }
                let start_time = crate::pidfd::start_time(pid).unwrap_or(0);
                // The monitor waits for Start: it is alive, so its pid is its own.
                let monitor_start_time = crate::pidfd::start_time(monitor_pid).unwrap_or(0);
                Ok(Created { pid, start_time, monitor_pid, monitor_start_time, uid, gid, groups, stages_us, zygote_error })
            }
            Ok(Some(MonitorReport::Failed(e))) => Err(RuntimeError::Init(e)),
            other => {
                let log = std::fs::read_to_string(bundle.join("monitor.log")).unwrap_or_default();
                let what = match other {
                    Err(e) => e.to_string(),
                    _ => "the monitor closed its report channel without a word".into(),
                };
                Err(monitor_err(format!("{what}; monitor log: {}", log.trim())))
            }
        }
    }

    /// Lets a created container exec its process.
    pub fn start(&self, id: &str, bundle: &Path) -> Result<(), RuntimeError> {
        match request(id, bundle, ControlRequest::Start)?.1 {
            ControlReply::Ok => Ok(()),
            ControlReply::StartFailed(e) => Err(RuntimeError::Init(e)),
            ControlReply::NotRunning => Err(RuntimeError::Init(InitError::Setup("already started or exited".into()))),
            other => Err(unexpected(id, other)),
        }
    }

    /// Sends a signal to the container init through its monitor.
    pub fn signal(&self, id: &str, bundle: &Path, signal: i32) -> Result<(), RuntimeError> {
        match request(id, bundle, ControlRequest::Signal(signal))?.1 {
            ControlReply::Ok => Ok(()),
            ControlReply::NotRunning => Err(RuntimeError::NotRunning(id.into())),
            other => Err(unexpected(id, other)),
        }
    }

    /// Makes the monitor reopen the log file (after kubelet rotated it).
    pub fn reopen_log(&self, id: &str, bundle: &Path) -> Result<(), RuntimeError> {
        match request(id, bundle, ControlRequest::Reopen)?.1 {
            ControlReply::Ok => Ok(()),
            other => Err(unexpected(id, other)),
        }
    }

    /// Attaches to the container's stdio through its monitor: the returned
    /// socket carries the monitor's attach frames ([`crate::monitor::attach`]).
    pub fn attach(&self, id: &str, bundle: &Path, stdin: bool) -> Result<UnixStream, RuntimeError> {
        let (conn, reply) = request(id, bundle, ControlRequest::Attach { stdin })?;
        match reply {
            ControlReply::Ok => {
                conn.set_read_timeout(None).map_err(io_err("attach socket"))?;
                Ok(conn)
            }
            ControlReply::NotRunning => Err(RuntimeError::NotRunning(id.into())),
            other => Err(unexpected(id, other)),
        }
    }

    /// The container's state as its monitor and exit file tell.
    pub fn state(&self, bundle: &Path) -> MonitorState {
        if let Some(s) = ExitStatus::read(bundle) {
            return MonitorState::Exited(s);
        }
        match connect(bundle) {
            Ok(mut conn) => {
                // Ask whether it has started: the monitor knows even when a
                // crash kept berthd from recording it.
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let started =
                    match channel::send(&mut conn, &ControlRequest::State).ok().and_then(|_| channel::recv::<ControlReply>(&mut conn).ok())
                    {
                        Some(Some(ControlReply::Running { started_at_ns, .. })) => started_at_ns,
                        _ => None,
                    };
                MonitorState::Running(started)
            }
            // The monitor may have written the file between our two looks.
            Err(_) => match ExitStatus::read(bundle) {
                Some(s) => MonitorState::Exited(s),
                None => MonitorState::Lost,
            },
        }
    }

    /// [`Runtime::state`] of a container known to have started, whose
    /// monitor is `monitor_pid` with the /proc start time `monitor_start_time`:
    /// an exit file, else a monitor process that is still the same one and
    /// alive means it runs, without waking the monitor to ask (a listing of
    /// many containers would wake every monitor). Anything else, or a start
    /// time of 0, is asked as `state` asks.
    pub fn state_of_started(&self, bundle: &Path, monitor_pid: i32, monitor_start_time: u64) -> MonitorState {
        if let Some(s) = ExitStatus::read(bundle) {
            return MonitorState::Exited(s);
        }
        if monitor_start_time != 0 && crate::pidfd::Process::open(monitor_pid, monitor_start_time).is_ok_and(|monitor| !monitor.exited()) {
            return MonitorState::Running(None);
        }
        self.state(bundle)
    }

    /// An exec helper running `args` in the container whose init is
    /// `pid`/`start_time`: a failure to start the command comes as an
    /// [`crate::message::ExecReport`] on `report`, never on its stderr; with
    /// `tty` the command runs on a terminal sized through `resize`.
    pub fn exec_helper(&self, bundle: &Path, pid: i32, start_time: u64, args: &[String], tty: bool) -> std::io::Result<ExecHelper> {
        let mut command = crate::spawn::helper_command(&self.monitor_bin);
        command
            .arg("exec")
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
        let (report, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let mut child_ends = vec![report_w];
        let resize = if tty {
            let (resize_r, resize_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
            child_ends.push(resize_r);
            Some(resize_w)
        } else {
            None
        };
        let mut map = vec![(&child_ends[0], crate::process::exec::REPORT_FD)];
        if let Some(r) = child_ends.get(1) {
            map.push((r, crate::process::exec::RESIZE_FD));
        }
        pass_fds(&mut command, &map);
        Ok(ExecHelper { command, report, resize, child_ends })
    }
}

/// Once an exec helper has exited: why its command could not be started,
/// or None when it ran (the report channel closed on exec without a word).
/// Never blocks: what berth's processes of the exec wrote is in the pipe
/// by then, as they are all gone, but a process of the container may still
/// hold a writer — one allowed to ptrace can reopen the pipe through
/// `/proc/<pid>/fd` of the exec's init while that holds it — and is not
/// waited for.
pub fn exec_failure(report: OwnedFd) -> Option<InitError> {
    match channel::recv_before::<crate::message::ExecReport>(std::os::fd::AsFd::as_fd(&report), std::time::Instant::now()) {
        Ok(Some(crate::message::ExecReport::Failed(e))) => Some(e),
        _ => None,
    }
}

fn unexpected(id: &str, reply: ControlReply) -> RuntimeError {
    match reply {
        ControlReply::Error(reason) => RuntimeError::Monitor { id: id.into(), reason },
        other => RuntimeError::Monitor { id: id.into(), reason: format!("unexpected reply {other:?}") },
    }
}

/// Makes each `fd` the child's fd `target` (the originals stay close-on-exec).
pub fn pass_fds(cmd: &mut Command, fds: &[(&OwnedFd, i32)]) {
    let raw: Vec<(i32, i32)> = fds.iter().map(|(fd, target)| (fd.as_raw_fd(), *target)).collect();
    // SAFETY: only fcntl and dup2 (async-signal-safe) run between fork and
    // exec, on fds that stay open until spawn returns. Every source is first
    // copied above the targets, so no dup2 overwrites a source still needed;
    // the copies are close-on-exec.
    unsafe {
        cmd.pre_exec(move || {
            let mut high = [0i32; 8];
            for (i, (fd, _)) in raw.iter().enumerate().take(high.len()) {
                high[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 64);
                if high[i] < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, (_, target)) in raw.iter().enumerate().take(high.len()) {
                if libc::dup2(high[i], *target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// One request on the monitor's socket and its reply; NotRunning when the
/// monitor is gone because the container exited.
fn request(id: &str, bundle: &Path, req: ControlRequest) -> Result<(UnixStream, ControlReply), RuntimeError> {
    let mut conn = match connect(bundle) {
        Ok(c) => c,
        Err(_) if ExitStatus::read(bundle).is_some() => return Err(RuntimeError::NotRunning(id.into())),
        Err(e) => return Err(RuntimeError::Monitor { id: id.into(), reason: format!("connect: {e}") }),
    };
    let chan = |source| RuntimeError::Channel { id: id.into(), source };
    conn.set_read_timeout(Some(Duration::from_secs(30))).map_err(io_err("monitor socket"))?;
    channel::send(&mut conn, &req).map_err(chan)?;
    match channel::recv::<ControlReply>(&mut conn).map_err(chan)? {
        Some(reply) => Ok((conn, reply)),
        None => Err(RuntimeError::Monitor { id: id.into(), reason: format!("no reply to {req:?}") }),
    }
}

/// Connects to the monitor socket in `bundle`. The path goes through an fd
/// of the bundle (`/proc/self/fd/N/monitor.sock`) because sun_path is short.
fn connect(bundle: &Path) -> std::io::Result<UnixStream> {
    let dir = std::fs::File::open(bundle)?;
    UnixStream::connect(format!("/proc/self/fd/{}/{SOCKET}", dir.as_raw_fd()))
}

/// Waits up to `timeout` for a message on `fd`, then reads it.
fn recv_timeout<T: serde::de::DeserializeOwned>(fd: OwnedFd, timeout: Duration) -> Result<Option<T>, ChannelError> {
    let mut pfd = [nix::poll::PollFd::new(std::os::fd::AsFd::as_fd(&fd), nix::poll::PollFlags::POLLIN)];
    let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
    match nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(ms)) {
        Ok(0) => return Err(ChannelError::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer within {timeout:?}")))),
        Ok(_) => {}
        Err(e) => return Err(ChannelError::Io(e.into())),
    }
    channel::recv(&mut std::fs::File::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A started container's state without its monitor's word: the exit
    /// file, else whether the monitor process is still the one recorded.
    /// No socket exists in these bundles, so an answer of Running came from
    /// the process check alone.
    #[test]
    fn a_started_containers_state_is_read_from_its_exit_file_or_its_monitors_life() {
        let rt = Runtime::new(PathBuf::from("/nonexistent/berth-monitor"));
        let bundle = tempfile::tempdir().unwrap();
        let mut child = Command::new("sleep").arg("100").spawn().unwrap();
        let pid = child.id() as i32;
        let started = crate::pidfd::start_time(pid).unwrap();
        assert_eq!(rt.state_of_started(bundle.path(), pid, started), MonitorState::Running(None));
        // Another start time is another process: asked as `state` asks, and
        // with no monitor socket and no exit file, it is lost.
        assert_eq!(rt.state_of_started(bundle.path(), pid, started + 1), MonitorState::Lost);
        // No start time kept (an older record): asked too.
        assert_eq!(rt.state_of_started(bundle.path(), pid, 0), MonitorState::Lost);
        // The exit file wins over a live process.
        let status = ExitStatus { code: 3, signal: 0, finished_ns: 7, oom: false };
        std::fs::write(bundle.path().join(crate::monitor::EXIT_FILE), status.encode()).unwrap();
        assert_eq!(rt.state_of_started(bundle.path(), pid, started), MonitorState::Exited(status));
        std::fs::remove_file(bundle.path().join(crate::monitor::EXIT_FILE)).unwrap();
        // The monitor gone without a word: lost.
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(rt.state_of_started(bundle.path(), pid, started), MonitorState::Lost);
    }
}

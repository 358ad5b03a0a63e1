//! The messages of each channel between berth's processes, one enum per
//! channel, defined once here and used by both ends (framing in
//! [`crate::channel`]).
//!
//! | channel | from → to | type |
//! |---|---|---|
//! | sync fd (fd 3 of `berth-monitor monitor`) | monitor → berthd | [`MonitorReport`] |
//! | report pipe | container init → monitor | [`InitReport`] (EOF = exec'd) |
//! | start pipe | monitor → container init | [`InitCommand`] |
//! | monitor socket | berthd ↔ monitor | [`ControlRequest`] / [`ControlReply`], then attach frames |
//! | report fd (fd 3 of `berth-monitor exec`) | exec helper → berthd | [`ExecReport`] (EOF = the command ran) |
//! | resize fd (fd 4 of a TTY exec helper) | berthd → exec helper | [`ExecControl`] |
//! | started pipe | exec starter → exec helper | [`ExecStarted`] (EOF = failed, on the report fd) |
//! | report fd (fd 3 of `berth-monitor pod-init`) | pod init → berthd | [`PodInitReport`] |
//! | stdin of `berth-monitor pod-userns` | berthd → namespace maker | [`PodUsernsRequest`] (EOF = pinned, exit) |
//! | report fd (its fd 3) | namespace maker → berthd | [`PodUsernsReport`] |

use serde::{Deserialize, Serialize};

/// Why a container (or an exec'd command) could not be started; travels
/// from the init or exec helper to berthd, where it becomes the RPC's error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum InitError {
    /// A bare command not found in `$PATH`.
    #[error("exec: \"{0}\": executable file not found in $PATH")]
    NotInPath(String),
    /// A command path that does not exist.
    #[error("exec: \"{0}\": stat {0}: no such file or directory")]
    NoSuchFile(String),
    /// The command exists but cannot be executed.
    #[error("exec: \"{0}\": permission denied")]
    NotExecutable(String),
    /// The working directory is missing, not a directory, or outside the container.
    #[error("chdir to cwd (\"{0}\") set in config.json failed: {1}")]
    BadCwd(String, String),
    /// The user name is not in the image's /etc/passwd.
    #[error("unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    /// The group name is not in the image's /etc/group.
    #[error("unable to find group {0}: no matching entries in group file")]
    UnknownGroup(String),
    /// Any other setup step.
    #[error("{0}")]
    Setup(String),
}

impl InitError {
    /// A failed setup step: "step: error".
    pub fn setup(step: &str, e: impl std::fmt::Display) -> InitError {
        InitError::Setup(format!("{step}: {e}"))
    }
}

/// Monitor → berthd, once, on the sync fd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MonitorReport {
    /// The container init did everything but exec and waits for start.
    Created {
        /// Host pid of the init.
        pid: i32,
        /// Host pid of the monitor.
        monitor_pid: i32,
        /// The ids the process will run as.
        uid: u32,
        /// gid.
        gid: u32,
        /// Supplementary groups.
        groups: Vec<u32>,
        /// Where the time went, in order: the monitor's own steps, then the
        /// init's (`init_*`), in microseconds.
        #[serde(default)]
        stages_us: Vec<(String, u64)>,
        /// `CLOCK_MONOTONIC` (ns) when the monitor began its own work,
        /// after the forks that started it: berthd times `monitor_start`
        /// from its request to here. 0: not known.
        #[serde(default)]
        started_ns: u64,
    },
    /// Setup failed; nothing runs.
    Failed(InitError),
}

/// Container init → monitor, on the report pipe. Closed on exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InitReport {
    /// Ready to exec, as these ids.
    Ready {
        /// uid.
        uid: u32,
        /// gid.
        gid: u32,
        /// Supplementary groups.
        groups: Vec<u32>,
        /// The init's steps and their durations in microseconds, in order.
        #[serde(default)]
        stages_us: Vec<(String, u64)>,
        /// The container's process, when the init is not it: an init that
        /// set up outside the PID namespace it joins starts the process
        /// there as the monitor's child, and exits. Its host pid.
        #[serde(default)]
        process: Option<i32>,
    },
    /// Setup (or exec) failed.
    Failed(InitError),
}

/// Monitor → container init, on the start pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InitCommand {
    /// Exec the process now.
    Start,
}

/// berthd → monitor, one per connection to the monitor's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// StartContainer.
    Start,
    /// Signal the container init.
    Signal(i32),
    /// Reopen the CRI log (after kubelet rotated it).
    Reopen,
    /// Is the container running?
    State,
    /// Switch the connection to attach frames (see [`crate::monitor::attach`]).
    Attach {
        /// The client sends stdin.
        stdin: bool,
    },
}

/// Monitor → berthd, the answer to a [`ControlRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlReply {
    /// Done (for Attach: attach frames follow on this connection).
    Ok,
    /// The container init runs with this pid.
    Running {
        /// Host pid of the init.
        pid: i32,
        /// When the container's process was started (the init exec'd);
        /// None while it waits for StartContainer. Absent from monitors
        /// older than the field, which read as not started.
        #[serde(default)]
        started_at_ns: Option<i64>,
    },
    /// The container has exited (or exec failed): nothing to act on.
    NotRunning,
    /// Start failed: the init could not exec.
    StartFailed(InitError),
    /// Anything else that failed.
    Error(String),
}

/// Exec helper → berthd, on its report fd, only when the command could not
/// be started; EOF means it ran (its exit code is the helper's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecReport {
    /// Joining the container or starting the command failed.
    Failed(InitError),
}

/// berthd → a TTY exec helper, on its resize fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecControl {
    /// The client's terminal size.
    Resize {
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
}

/// The exec's starter (the helper's child that joins the PID namespace and
/// takes on the container's privileges) → the helper: the exec's init is
/// started, as the helper's child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecStarted {
    /// Its host pid.
    pub pid: i32,
}

/// Pod init → berthd, on its report fd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodInitReport {
    /// The init process exists (from the process that forked it).
    Started {
        /// Its host pid.
        pid: i32,
    },
    /// The init is confined and serving.
    Ready,
    /// Something failed.
    Failed(String),
}

/// berthd → `berth-monitor pod-userns`: which namespaces to make inside a
/// new user namespace, and what to set in them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodUsernsRequest {
    /// The namespaces besides the user namespace.
    pub want: crate::sandbox::PodNamespaces,
    /// The hostname of a new UTS namespace (empty: leave it).
    pub hostname: String,
    /// Namespaced sysctls to write.
    pub sysctls: Vec<(String, String)>,
}

/// `berth-monitor pod-userns` → berthd, on its report fd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodUsernsReport {
    /// The namespaces exist and are set up; berthd may map and pin them.
    Ready,
    /// Something failed.
    Failed(String),
}

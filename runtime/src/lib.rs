//! berth's executor: takes an OCI runtime spec and a bundle and runs the
//! container's processes in namespaces and cgroups, with a small monitor per
//! container. It knows nothing of gRPC or CRI.

pub mod cgroup;
pub mod client;
pub mod exec;
pub mod fs;
pub mod init;
pub mod log;
pub mod monitor;
pub mod process;
pub mod sandbox;
pub mod security;
pub mod time;
pub mod tty;
pub mod user;

pub use client::{Created, MonitorState, Runtime, RuntimeError};
pub use monitor::{ExitStatus, PidNamespace};

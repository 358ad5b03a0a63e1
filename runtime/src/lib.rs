//! berth's executor: takes an OCI runtime spec and a bundle and runs the
//! container's processes in namespaces and cgroups, with a small monitor per
//! container. It knows nothing of gRPC or CRI.
//!
//! - [`client`]: berthd's end — create, start, signal, attach, exec helpers.
//! - [`monitor`]: the per-container process (event loop, CRI log, attach,
//!   exit recording).
//! - [`process`]: what runs inside the container (init, exec helper, users,
//!   capabilities and seccomp, terminals).
//! - [`rootfs`]: the container's filesystem view (mounts, devices, masks).
//! - [`cgroup`]: v1 and v2 placement, limits, the device cgroup.
//! - [`sandbox`]: pod namespaces and the pod's PID-namespace init.
//! - [`userns`]: user namespaces of pods: mappings, joining one.
//! - [`message`] and [`channel`]: the typed messages between these processes.

pub mod annotations;
pub mod cgroup;
pub mod channel;
pub mod client;
pub mod diag;
pub mod flags;
pub mod fs;
pub mod message;
pub mod mntns;
pub mod monitor;
pub mod mountapi;
pub mod mountinfo;
pub mod pidfd;
pub mod process;
pub mod rootfs;
pub mod sandbox;
pub mod signal;
pub mod spawn;
pub mod time;
pub mod userns;
pub mod zygote;

pub use client::{Bundle, Created, MonitorState, Runtime, RuntimeError};
pub use monitor::{ExitStatus, JoinProc, PidNamespace};

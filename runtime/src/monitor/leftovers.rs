//! What a container without a PID namespace of its own leaves behind.
//!
//! The kernel kills every process of a PID namespace when its init exits,
//! so a container that is PID 1 of its own namespace leaves nothing. One in
//! its pod's shared namespace, or in the node's, does: a daemonized child
//! would go on running in the container's cgroup, holding its output open,
//! after the container is reported exited. As containerd's runc shim does
//! for such containers, the monitor kills every process left in the
//! container's cgroup once the init has exited.

use std::io::{Read as _, Write as _};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;

/// How long the cgroup is listed and its processes killed, round after
/// round: a process that forks between a listing and its kill leaves a
/// child for the next round, and a killed process is listed until it has
/// run its exit, which on a busy node may wait for a CPU (during a test run
/// one was still listed 200 ms after its SIGKILL). What is still listed
/// after this is logged by name and state.
const BOUND: Duration = Duration::from_secs(2);

/// Opens the directory of the first cgroup of `procs` (the `cgroup.procs`
/// files the init joined, `:`-separated): every process of the container is
/// in each of them.
pub(super) fn open(procs: &str) -> Option<OwnedFd> {
    let first = procs.split(':').find(|f| !f.is_empty())?;
    let dir = std::path::Path::new(first).parent()?;
    nix::fcntl::open(dir, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()).ok()
}

/// The pids `cgroup.procs` in `dir` lists; none if it cannot be read.
fn listed(dir: &OwnedFd) -> Vec<i32> {
    let Ok(fd) = openat(dir.as_fd(), "cgroup.procs", OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()) else { return Vec::new() };
    let mut text = String::new();
    let _ = std::fs::File::from(fd).read_to_string(&mut text);
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// Kills every process in the cgroup `dir` names with SIGKILL; returns how
/// many it killed (as listed when it began, and as signalled one by one)
/// and what was still listed when it gave up ([`BOUND`]; empty: the
/// cgroup was seen empty). On cgroup v2 `cgroup.kill` (Linux 5.14) does it
/// in one step that also catches forks; the listing rounds follow either
/// way, for v1 and older kernels.
pub(super) fn kill(dir: &OwnedFd) -> (usize, Vec<i32>) {
    let me = std::process::id() as i32;
    let mut signalled = std::collections::BTreeSet::new();
    if let Ok(fd) = openat(dir.as_fd(), "cgroup.kill", OFlag::O_WRONLY | OFlag::O_CLOEXEC, Mode::empty()) {
        // Listed first, so that the count says what the write killed.
        let before = listed(dir);
        if std::fs::File::from(fd).write_all(b"1").is_ok() {
            signalled.extend(before.into_iter().filter(|p| *p != me));
        }
    }
    let deadline = std::time::Instant::now() + BOUND;
    let mut pause = Duration::from_millis(1);
    loop {
        let pids: Vec<i32> = listed(dir).into_iter().filter(|p| *p != me).collect();
        if pids.is_empty() || std::time::Instant::now() > deadline {
            return (signalled.len(), pids);
        }
        for &pid in &pids {
            if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).is_ok() {
                signalled.insert(pid);
            }
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// How a process still listed looks: its pid, name and state (from
/// `/proc/<pid>/stat`), for the log.
pub(super) fn describe(pid: i32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let name = stat.split_once('(').and_then(|(_, r)| r.rsplit_once(')')).map(|(n, rest)| (n.to_string(), rest.trim().to_string()));
    match name {
        Some((n, rest)) => format!("{pid} ({n}) {}", rest.split(' ').next().unwrap_or("?")),
        None => format!("{pid} (gone)"),
    }
}

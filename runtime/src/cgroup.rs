//! cgroupfs placement of pods and containers, on cgroup v1 or v2 (detected
//! once), through `cgroups-rs`. A cgroup is named by its path relative to the
//! hierarchy root, e.g. `kubepods/burstable/pod<uid>/<container id>`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cgroups_rs::fs::hierarchies;
use cgroups_rs::fs::Cgroup;

/// cgroup failures.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A path that is not a plain relative cgroup path.
    #[error("cgroup path {0:?} is invalid: {1}")]
    InvalidPath(String, &'static str),
    /// The kernel refused.
    #[error("cgroup {path}: {reason}")]
    Failed { path: String, reason: String },
}

/// Which cgroup hierarchy the node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Per-controller hierarchies.
    V1,
    /// The unified hierarchy.
    V2,
}

/// The node's cgroup version.
pub fn version() -> Version {
    if hierarchies::is_cgroup2_unified_mode() {
        Version::V2
    } else {
        Version::V1
    }
}

/// Normalises `kubelet`'s `cgroup_parent` (`/kubepods/pod1` or `kubepods/pod1`)
/// into a relative path, refusing `..` and empty components.
pub fn normalize(path: &str) -> Result<String, CgroupError> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return Err(CgroupError::InvalidPath(path.into(), "empty"));
    }
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(CgroupError::InvalidPath(path.into(), "contains . or .."));
    }
    Ok(parts.join("/"))
}

fn failed(path: &str, e: impl std::fmt::Display) -> CgroupError {
    CgroupError::Failed { path: path.into(), reason: e.to_string() }
}

fn load(path: &str) -> Cgroup {
    Cgroup::load(hierarchies::auto(), path)
}

/// Creates the cgroup in every hierarchy and returns the `cgroup.procs` files
/// a process writes `0` into to join it.
pub fn create(path: &str) -> Result<Vec<PathBuf>, CgroupError> {
    let cg = Cgroup::new(hierarchies::auto(), path).map_err(|e| failed(path, e))?;
    Ok(procs_files(&cg, path))
}

/// The `cgroup.procs` files of an existing cgroup.
pub fn procs_files_of(path: &str) -> Vec<PathBuf> {
    procs_files(&load(path), path)
}

fn procs_files(cg: &Cgroup, path: &str) -> Vec<PathBuf> {
    if cg.v2() {
        return vec![hierarchies::auto().root().join(path).join("cgroup.procs")];
    }
    let mut out: Vec<PathBuf> = cg.subsystems().iter().map(|s| s.to_controller().path().join("cgroup.procs")).collect();
    out.sort();
    out.dedup();
    out
}

/// The directories of the cgroup (one per v1 hierarchy, one on v2).
pub fn dirs(path: &str) -> Vec<PathBuf> {
    procs_files_of(path).into_iter().filter_map(|p| p.parent().map(Path::to_path_buf)).collect()
}

/// Pids in the cgroup (and, on v1, in any hierarchy of it).
pub fn pids(path: &str) -> Vec<i32> {
    let mut out: Vec<i32> = Vec::new();
    for f in procs_files_of(path) {
        if let Ok(text) = std::fs::read_to_string(&f) {
            out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Sends `signal` to every process in the cgroup.
pub fn signal_all(path: &str, signal: nix::sys::signal::Signal) {
    for pid in pids(path) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
}

/// Kills every process and removes the cgroup everywhere; a missing cgroup is
/// fine. Waits (bounded) for the processes to go, since rmdir of a populated
/// cgroup fails.
pub fn remove(path: &str) -> Result<(), CgroupError> {
    let cg = load(path);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if pids(path).is_empty() {
            break;
        }
        signal_all(path, nix::sys::signal::Signal::SIGKILL);
        if Instant::now() > deadline {
            return Err(failed(path, "processes did not exit after SIGKILL"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Children first: a v1 hierarchy may have sub-cgroups made by the workload.
    for dir in dirs(path) {
        remove_tree(&dir).map_err(|e| failed(path, format!("{}: {e}", dir.display())))?;
    }
    drop(cg);
    Ok(())
}

fn remove_tree(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in entries.flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_tree(&e.path())?;
        }
    }
    // rmdir can race with the kernel still tearing down the last task.
    let mut tries = 0;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_kubelet_parents() {
        assert_eq!(normalize("/kubepods/burstable/podabc").unwrap(), "kubepods/burstable/podabc");
        assert_eq!(normalize("berth/x/").unwrap(), "berth/x");
        assert!(normalize("/").is_err());
        assert!(normalize("/a/../b").is_err());
    }
}

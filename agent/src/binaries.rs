//! berth's own binaries, as its processes run them: through a read-only
//! bind mount of their directory under the state dir.
//!
//! Some of berth's processes live in a container's PID namespace for a
//! while: a Created container's init until its execve, an exec's init for
//! the exec's life. A container with CAP_SYS_PTRACE may open their
//! `/proc/<pid>/exe` (the capability overrides their non-dumpable state).
//! Opened from the node's own mount, that is berth-monitor on the node: the
//! kernel refuses writes to it only while some process runs it (ETXTBSY),
//! so a container could hold it open and rewrite it once none does, and
//! the next berth-monitor would run its code as root (runc's
//! CVE-2019-5736). Run from a read-only mount, reopening `/proc/<pid>/exe`
//! for writing fails with EROFS whatever runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Where berth's binaries run from; the binds go again when this is dropped
/// before [`Protected::keep`] (a start that failed).
pub struct Protected {
    run_as: BTreeMap<PathBuf, PathBuf>,
    state: Option<PathBuf>,
}

impl Protected {
    /// The path `bin` is run by.
    pub fn run_as(&self, bin: &Path) -> PathBuf {
        self.run_as.get(bin).cloned().unwrap_or_else(|| bin.to_path_buf())
    }

    /// The binds stay: berthd runs.
    pub fn keep(mut self) {
        self.state = None;
    }
}

impl Drop for Protected {
    fn drop(&mut self) {
        if let Some(state) = &self.state {
            release(state);
        }
    }
}

/// The path each of `bins` is run by: the same file name in a read-only
/// bind mount of its directory at `<state>/bin/<n>`, one per directory.
/// A bin whose directory cannot be mounted keeps its own path (logged).
pub fn protect(state: &Path, bins: &[PathBuf]) -> Protected {
    let mut dirs: BTreeMap<PathBuf, Option<PathBuf>> = BTreeMap::new();
    let mut run_as = BTreeMap::new();
    for bin in bins {
        let (Some(dir), Some(name)) = (bin.parent(), bin.file_name()) else { continue };
        let n = dirs.len();
        let target = dirs.entry(dir.to_path_buf()).or_insert_with(|| match bind_read_only(dir, &state.join("bin").join(n.to_string())) {
            Ok(target) => Some(target),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "berth's binaries run from their own directory: a container that may ptrace one of berth's processes could reopen its binary for writing: {e}");
                None
            }
        });
        run_as.insert(bin.clone(), target.as_ref().map_or_else(|| bin.clone(), |t| t.join(name)));
    }
    Protected { run_as, state: Some(state.to_path_buf()) }
}

/// Detaches every bind [`protect`] made under `state` and removes their
/// directories (a berthd that failed to start, `berthd cleanup`).
pub fn release(state: &Path) {
    let bin = state.join("bin");
    for e in std::fs::read_dir(&bin).into_iter().flatten().flatten() {
        detach_all(&e.path());
        let _ = std::fs::remove_dir(e.path());
    }
    let _ = std::fs::remove_dir(bin);
}

/// Detaches what is mounted at `target`, stacked mounts included, until
/// nothing is (EINVAL: not a mount point).
fn detach_all(target: &Path) {
    for _ in 0..16 {
        if umount2(target, MntFlags::MNT_DETACH).is_err() {
            break;
        }
    }
}

/// Binds `dir` read-only at `target`, replacing whatever a previous berthd
/// mounted there (possibly of another directory).
fn bind_read_only(dir: &Path, target: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(target)?;
    detach_all(target);
    mount(Some(dir), target, None::<&str>, MsFlags::MS_BIND, None::<&str>)?;
    let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if let Err(e) = mount(None::<&str>, target, None::<&str>, ro, None::<&str>) {
        let _ = umount2(target, MntFlags::MNT_DETACH);
        return Err(e.into());
    }
    Ok(target.to_path_buf())
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_directory_is_bound_once_and_read_only() {
        if !nix::unistd::Uid::effective().is_root() {
            return;
        }
        let src = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        for d in [src.path(), other.path()] {
            std::fs::write(d.join("berth-monitor"), "binary").unwrap();
        }
        std::fs::write(src.path().join("berth-monitor-x"), "binary").unwrap();
        let bins = [src.path().join("berth-monitor"), src.path().join("berth-monitor-x"), other.path().join("berth-monitor")];
        // Twice: a second berthd on the same state replaces the first's
        // binds (the first one's are kept, as by a berthd that ran).
        super::protect(state.path(), &bins).keep();
        // Dropped at the end, or when an assertion fails: the binds go.
        let got = super::protect(state.path(), &bins);
        assert_eq!(got.run_as(&bins[0]), state.path().join("bin/0/berth-monitor"));
        assert_eq!(got.run_as(&bins[1]), state.path().join("bin/0/berth-monitor-x"));
        assert_eq!(got.run_as(&bins[2]), state.path().join("bin/1/berth-monitor"));
        assert_eq!(std::fs::read_to_string(got.run_as(&bins[2])).unwrap(), "binary");
        let e = std::fs::OpenOptions::new().append(true).open(got.run_as(&bins[0])).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS));
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert_eq!(mounts.lines().filter(|l| l.contains(&*state.path().to_string_lossy())).count(), 2, "one bind per directory");
        drop(got);
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(&*state.path().to_string_lossy()), "release left a bind");
        assert!(!state.path().join("bin").exists());
    }
}

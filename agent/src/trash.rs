//! Directories deleted off the request path. RemoveContainer gives up a
//! container's bundle and writable layer with one `rename` each into a
//! trash dir on the same filesystem; a thread of its own deletes them
//! afterwards, one at a time, so a burst of removals does not crowd the
//! CPUs or the disk of the pods still running. What a crash leaves in the
//! trash is deleted at the next start.
//!
//! Only plain files and dirs go this way: a pod's dir, which holds its
//! namespace pins and /dev/shm mount until they are undone, is removed in
//! place by the pod's teardown.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

/// The trash dirs (one per filesystem berth keeps dirs on) and the thread
/// that empties them.
#[derive(Debug)]
pub struct Trash {
    /// (the dir whose entries may be thrown away, its trash dir).
    dirs: Vec<(PathBuf, PathBuf)>,
    tx: mpsc::Sender<PathBuf>,
}

impl Trash {
    /// A trash dir `<base>/trash` for each of `bases` (made private if
    /// missing), and the thread that first empties what an earlier berthd
    /// left in them and then deletes what is thrown away.
    pub fn open(bases: &[&Path]) -> std::io::Result<Trash> {
        let mut dirs = Vec::new();
        for base in bases {
            let trash = base.join("trash");
            berth_runtime::fs::ensure_private_dir(&trash)?;
            dirs.push((base.to_path_buf(), trash));
        }
        let (tx, rx) = mpsc::channel::<PathBuf>();
        let left: Vec<PathBuf> = dirs
            .iter()
            .flat_map(|(_, t)| std::fs::read_dir(t).into_iter().flatten().flatten().map(|e| e.path()).collect::<Vec<_>>())
            .collect();
        std::thread::Builder::new().name("berth-trash".into()).spawn(move || {
            for path in left.into_iter().chain(rx) {
                delete(&path);
            }
        })?;
        Ok(Trash { dirs, tx })
    }

    /// The trash dir of `base`, if it is one of the bases.
    pub fn dir_for(&self, base: &Path) -> Option<PathBuf> {
        self.dirs.iter().find(|(b, _)| b == base).map(|(_, t)| t.clone())
    }

    /// Takes `dir` away from where it is now (it is gone from there when
    /// this returns) and has the thread delete it. Where it cannot be moved
    /// (not under a base, another filesystem), it is deleted here. A
    /// missing `dir` is fine.
    pub fn discard(&self, dir: &Path) -> std::io::Result<()> {
        let Some((_, trash)) = self.dirs.iter().find(|(base, _)| dir.starts_with(base)) else {
            return remove_all(dir);
        };
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let to = trash.join(format!("{name}.{}", crate::util::random_id()?.get(..8).unwrap_or_default()));
        match std::fs::rename(dir, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                tracing::debug!(dir = %dir.display(), "cannot move to the trash ({e}): deleted in place");
                return remove_all(dir);
            }
        }
        if self.tx.send(to.clone()).is_err() {
            // The thread is gone (it never returns while berthd runs).
            delete(&to);
        }
        Ok(())
    }
}

fn remove_all(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

fn delete(path: &Path) {
    if let Err(e) = remove_all(path) {
        tracing::warn!(path = %path.display(), "deleting from the trash: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_discarded_dir_is_gone_at_once_and_deleted_soon() {
        let base = tempfile::tempdir().unwrap();
        let left = base.path().join("trash/left-by-a-crash");
        std::fs::create_dir_all(left.join("sub")).unwrap();
        let trash = Trash::open(&[base.path()]).unwrap();
        assert_eq!(trash.dir_for(base.path()), Some(base.path().join("trash")));
        assert_eq!(trash.dir_for(std::path::Path::new("/elsewhere")), None);
        let dir = base.path().join("containers/c1");
        std::fs::create_dir_all(dir.join("upper/etc")).unwrap();
        std::fs::write(dir.join("upper/etc/hosts"), "x").unwrap();
        trash.discard(&dir).unwrap();
        assert!(!dir.exists());
        trash.discard(&dir).unwrap();
        let outside = tempfile::tempdir().unwrap();
        trash.discard(outside.path()).unwrap();
        assert!(!outside.path().exists(), "a dir under no base is deleted in place");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_dir(base.path().join("trash")).unwrap().count() > 0 {
            assert!(std::time::Instant::now() < deadline, "the trash was not emptied");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

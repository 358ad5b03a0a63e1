//! Path handling inside directories whose content is untrusted (image layers,
//! container rootfs): every lookup goes through a directory fd with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` or `RESOLVE_IN_ROOT`, never
//! through a string path that a symlink planted by an image could redirect.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstatat, mkdirat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

/// A path that cannot be used inside a root.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// Absolute, or climbing above the root with `..`.
    #[error("{path:?} would land outside the root")]
    Escapes { path: PathBuf },
    /// A component on the way is a symlink.
    #[error("{path:?} goes through a symlink")]
    ThroughSymlink { path: PathBuf },
    /// A component on the way is not a directory.
    #[error("{path:?}: a parent is not a directory")]
    NotADirectory { path: PathBuf },
    /// Any other failure of a filesystem call.
    #[error("{path:?}: {op}: {errno}")]
    Io { path: PathBuf, op: &'static str, errno: Errno },
}

impl PathError {
    fn io(path: &Path, op: &'static str, errno: Errno) -> PathError {
        PathError::Io { path: path.to_path_buf(), op, errno }
    }
}

/// Cleans a relative path lexically: drops `.` and a leading `/`-free `./`,
/// resolves `..` against earlier components and refuses an absolute path or a
/// `..` that climbs above the root. The empty result means the root itself.
pub fn clean_relative(path: &Path) -> Result<PathBuf, PathError> {
    let mut out: Vec<&OsStr> = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                if out.pop().is_none() {
                    return Err(PathError::Escapes { path: path.to_path_buf() });
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(PathError::Escapes { path: path.to_path_buf() });
            }
        }
    }
    Ok(out.iter().collect())
}

/// Creates `path` (and missing parents) if needed and makes it mode 0700,
/// also when it already existed with a wider mode: the directories under
/// which image content and container layers live are root's alone, so no
/// local user reaches a device node or setuid binary an image brought.
pub fn ensure_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

/// An open directory that is the root of untrusted content.
#[derive(Debug)]
pub struct RootDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl RootDir {
    /// Opens `path` (trusted: chosen by berth) as a root.
    pub fn open(path: &Path) -> Result<RootDir, PathError> {
        let fd = nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| PathError::io(path, "open root", e))?;
        Ok(RootDir { fd, path: path.to_path_buf() })
    }

    /// Takes `fd` (an open directory, e.g. a mount just made) as a root;
    /// `path` names it in messages.
    pub fn from_fd(fd: OwnedFd, path: &Path) -> RootDir {
        RootDir { fd, path: path.to_path_buf() }
    }

    /// The root's host path (for messages and mounts).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The root's fd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Opens the directory `rel` (already cleaned) beneath the root, refusing
    /// any symlink on the way; with `create`, missing directories are made
    /// with mode 0755 as image tools do. Returns an `O_PATH` fd.
    pub fn open_dir_beneath(&self, rel: &Path, create: bool) -> Result<OwnedFd, PathError> {
        let mut cur = dup_path_fd(self.fd.as_fd(), &self.path)?;
        for comp in rel.components() {
            let Component::Normal(name) = comp else {
                return Err(PathError::Escapes { path: rel.to_path_buf() });
            };
            cur = match open_beneath(cur.as_fd(), Path::new(name), OFlag::O_PATH | OFlag::O_DIRECTORY) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) if create => {
                    match mkdirat(cur.as_fd(), name, Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(PathError::io(rel, "mkdir", e)),
                    }
                    open_beneath(cur.as_fd(), Path::new(name), OFlag::O_PATH | OFlag::O_DIRECTORY)
                        .map_err(|e| classify(cur.as_fd(), name, rel, e))?
                }
                Err(e) => return Err(classify(cur.as_fd(), name, rel, e)),
            };
        }
        Ok(cur)
    }

    /// Opens `rel` inside the root the way a process chrooted there would
    /// (symlinks followed but never out of the root): for writing files such
    /// as `/etc/hosts` into a container rootfs.
    pub fn open_in_root(&self, rel: &Path, flags: OFlag, mode: Mode) -> Result<OwnedFd, PathError> {
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .mode(mode)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
        retry_eagain(|| openat2(self.fd.as_fd(), rel, how)).map_err(|e| PathError::io(rel, "open", e))
    }
}

/// `openat2` of one name beneath `dir` with no symlinks, no magic links and no
/// climbing out. `O_NOFOLLOW` also refuses a symlink as the last component.
pub fn open_beneath(dir: BorrowedFd<'_>, name: &Path, flags: OFlag) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    retry_eagain(|| openat2(dir, name, how))
}

/// openat2 answers EAGAIN when a concurrent rename races the lookup.
fn retry_eagain<T>(mut f: impl FnMut() -> Result<T, Errno>) -> Result<T, Errno> {
    let mut tries = 0;
    loop {
        match f() {
            Err(Errno::EAGAIN) if tries < 16 => tries += 1,
            r => return r,
        }
    }
}

fn dup_path_fd(fd: BorrowedFd<'_>, path: &Path) -> Result<OwnedFd, PathError> {
    openat(fd, ".", OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty()).map_err(|e| PathError::io(path, "reopen", e))
}

/// Names the reason a component could not be opened as a directory; with
/// `O_NOFOLLOW` a symlink shows up as ENOTDIR or ELOOP.
fn classify(dir: BorrowedFd<'_>, name: &OsStr, path: &Path, e: Errno) -> PathError {
    let is_link = matches!(lstat_kind(dir, name), Ok(Some(SFlag::S_IFLNK)));
    match e {
        _ if is_link => PathError::ThroughSymlink { path: path.to_path_buf() },
        Errno::ELOOP => PathError::ThroughSymlink { path: path.to_path_buf() },
        Errno::ENOTDIR => PathError::NotADirectory { path: path.to_path_buf() },
        Errno::EXDEV => PathError::Escapes { path: path.to_path_buf() },
        e => PathError::io(path, "open", e),
    }
}

/// The file type of `name` in `dir` without following a symlink, or None.
pub fn lstat_kind(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Option<SFlag>, Errno> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()))),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes `name` in `dir` whatever it is; a directory with all its content.
/// Never follows a symlink.
pub fn remove_all_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
    match lstat_kind(dir, name)? {
        None => Ok(()),
        Some(SFlag::S_IFDIR) => {
            let sub = open_beneath(dir, Path::new(name), OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
            let names: Vec<OsString> = {
                let mut d = nix::dir::Dir::from_fd(sub.try_clone().map_err(|_| Errno::EBADF)?)?;
                d.iter()
                    .filter_map(|e| e.ok())
                    .map(|e| OsStr::from_bytes(e.file_name().to_bytes()).to_os_string())
                    .filter(|n| n != "." && n != "..")
                    .collect()
            };
            for n in names {
                remove_all_at(sub.as_fd(), &n)?;
            }
            unlinkat(dir, name, UnlinkatFlags::RemoveDir)
        }
        Some(_) => unlinkat(dir, name, UnlinkatFlags::NoRemoveDir),
    }
}

/// Sets an extended attribute on an open (non-`O_PATH`) fd.
pub fn fsetxattr(fd: BorrowedFd<'_>, name: &str, value: &[u8]) -> Result<(), Errno> {
    let cname = CString::new(name).map_err(|_| Errno::EINVAL)?;
    // SAFETY: the fd is valid for the borrow, cname is NUL-terminated and the
    // value pointer/length come from one live slice.
    let r = unsafe { libc::fsetxattr(fd.as_raw_fd(), cname.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    Errno::result(r).map(drop)
}

/// Sets an extended attribute on `name` in `dir` without following a symlink
/// (for symlinks, which cannot be opened for `fsetxattr`).
pub fn lsetxattr_at(dir: BorrowedFd<'_>, name: &OsStr, attr: &str, value: &[u8]) -> Result<(), Errno> {
    // /proc/self/fd/N/name resolves N's directory by fd, so the lookup stays
    // pinned to the directory we hold; lsetxattr does not follow the last link.
    let path = CString::new(format!("/proc/self/fd/{}/{}", dir.as_raw_fd(), name.to_string_lossy())).map_err(|_| Errno::EINVAL)?;
    let cattr = CString::new(attr).map_err(|_| Errno::EINVAL)?;
    // SAFETY: both strings are NUL-terminated and live; value is one live slice.
    let r = unsafe { libc::lsetxattr(path.as_ptr(), cattr.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    Errno::result(r).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_relative_paths() {
        assert_eq!(clean_relative(Path::new("./a/./b/")).unwrap(), PathBuf::from("a/b"));
        assert_eq!(clean_relative(Path::new("a/../b")).unwrap(), PathBuf::from("b"));
        assert_eq!(clean_relative(Path::new("./")).unwrap(), PathBuf::new());
        assert!(clean_relative(Path::new("../etc/passwd")).is_err());
        assert!(clean_relative(Path::new("a/../../b")).is_err());
        assert!(clean_relative(Path::new("/etc/passwd")).is_err());
    }

    #[test]
    fn beneath_refuses_symlinks_and_creates_dirs() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("link")).unwrap();
        let root = RootDir::open(dir.path()).unwrap();
        let e = root.open_dir_beneath(Path::new("link/x"), true).unwrap_err();
        assert!(matches!(e, PathError::ThroughSymlink { .. }), "{e}");
        assert!(!Path::new("/etc/x").exists());
        root.open_dir_beneath(Path::new("a/b/c"), true).unwrap();
        assert!(dir.path().join("a/b/c").is_dir());
    }

    #[test]
    fn in_root_clamps_absolute_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc/hosts-real", dir.path().join("etc/hosts")).unwrap();
        let root = RootDir::open(dir.path()).unwrap();
        let fd = root.open_in_root(Path::new("etc/hosts"), OFlag::O_WRONLY | OFlag::O_CREAT, Mode::from_bits_truncate(0o644)).unwrap();
        drop(fd);
        // The link pointed at the host's /etc: the file landed inside the root instead.
        assert!(dir.path().join("etc/hosts-real").exists());
    }

    #[test]
    fn remove_all_at_does_not_follow_links() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), "x").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("d/e")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("d/e/out")).unwrap();
        let root = RootDir::open(dir.path()).unwrap();
        remove_all_at(root.fd(), OsStr::new("d")).unwrap();
        assert!(!dir.path().join("d").exists());
        assert!(outside.path().join("keep").exists());
    }
}

//! Layer extraction: one OCI layer (tar, maybe gzip or zstd) into an empty
//! directory, ready to be an overlayfs lowerdir.
//!
//! The `tar` crate only reads entries. Every entry is created relative to an
//! fd of its parent directory, opened beneath the layer root with no symlink
//! allowed on the way (`openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`), and
//! with `*at` calls that do not follow the last component. A path that climbs
//! out, is absolute, or goes through a symlink fails the layer; nothing is ever
//! written outside the root. OCI whiteouts become overlayfs whiteouts.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use berth_runtime::fs::{self as safefs, PathError, RootDir};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fchmod, fchmodat, mkdirat, mknodat, FchmodatFlags, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, linkat, symlinkat, Gid, Uid};
use sha2::{Digest as _, Sha256};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Why a layer could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// An entry's path is unsafe.
    #[error("layer entry {entry:?}: {source}")]
    Path { entry: PathBuf, source: PathError },
    /// An entry could not be created.
    #[error("layer entry {entry:?}: {op}: {errno}")]
    Create { entry: PathBuf, op: &'static str, errno: Errno },
    /// The archive itself is broken.
    #[error("layer archive: {0}")]
    Archive(io::Error),
    /// The uncompressed content does not match the config's diff_id.
    #[error("layer content digest is {actual}, the image config says {expected}")]
    DiffId { expected: String, actual: String },
}

/// Compression of a layer blob, from its first bytes (registries mislabel
/// media types often enough that the bytes are the better witness).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// Sniffs the magic number.
    pub fn detect(head: &[u8]) -> Compression {
        match head {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            _ => Compression::None,
        }
    }
}

/// How layers are unpacked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackOptions {
    /// Create the character and block devices a layer carries. Off by
    /// default: a node from an image is data from its author, usable by
    /// whoever can reach it; the layer then gets everything else and the
    /// nodes are left out (logged). FIFOs and overlayfs whiteouts (`c 0:0`)
    /// are always made.
    pub device_nodes: bool,
    /// `syncfs` the layer's filesystem once a layer is unpacked, before it
    /// is renamed into place (and so before the image record): the files
    /// reach the disk, not only the page cache.
    pub sync_fs: bool,
}

/// Unpacks the layer blob at `blob` into the empty directory `dest` and checks
/// that the uncompressed stream hashes to `diff_id`.
pub fn unpack_layer(blob: &Path, dest: &Path, diff_id: &str, opts: UnpackOptions) -> Result<(), UnpackError> {
    let mut file = File::open(blob).map_err(UnpackError::Archive)?;
    unpack_layer_from(&mut file, dest, diff_id, opts)
}

/// Unpacks a layer read from `compressed` (compressed as its first bytes
/// say) into the empty directory `dest` and checks that the uncompressed
/// stream hashes to `diff_id`. What follows the compressed stream's end is
/// left in `compressed`.
pub fn unpack_layer_from(compressed: &mut dyn Read, dest: &Path, diff_id: &str, opts: UnpackOptions) -> Result<(), UnpackError> {
    let mut head = [0u8; 4];
    let n = read_up_to(compressed, &mut head).map_err(UnpackError::Archive)?;
    let file = io::Cursor::new(head[..n].to_vec()).chain(compressed);
    let reader: Box<dyn Read + '_> = match Compression::detect(&head[..n]) {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(file).map_err(UnpackError::Archive)?),
    };
    let mut hashing = HashingReader::new(reader);
    let skipped = unpack_tar(&mut hashing, dest, opts)?;
    if skipped > 0 {
        tracing::warn!(layer = %diff_id, skipped, "left out the layer's device nodes (image.unpack_device_nodes is off)");
    }
    // The tar reader stops at the end-of-archive blocks; the digest covers all.
    io::copy(&mut hashing, &mut io::sink()).map_err(UnpackError::Archive)?;
    let (actual, _) = hashing.finish();
    if actual != diff_id {
        return Err(UnpackError::DiffId { expected: diff_id.to_string(), actual });
    }
    Ok(())
}

fn read_up_to(r: &mut (impl Read + ?Sized), buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// A reader that hashes and counts what is read through it.
pub(super) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
}

impl<R> HashingReader<R> {
    pub(super) fn new(inner: R) -> HashingReader<R> {
        HashingReader { inner, hasher: Sha256::new(), len: 0 }
    }

    /// The `sha256:<hex>` digest and the length of what was read.
    pub(super) fn finish(self) -> (String, u64) {
        (super::content::digest_of(self.hasher), self.len)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// A directory's metadata, applied after all its children exist (creating a
/// child changes the directory's mtime).
struct DirTimes {
    path: PathBuf,
    mtime: TimeSpec,
}

/// Extracts an uncompressed tar stream into `dest`; returns how many device
/// nodes `opts` left out.
pub fn unpack_tar(reader: &mut dyn Read, dest: &Path, opts: UnpackOptions) -> Result<usize, UnpackError> {
    let root = RootDir::open(dest).map_err(|source| UnpackError::Path { entry: dest.into(), source })?;
    let mut archive = tar::Archive::new(reader);
    let mut dir_times = Vec::new();
    let mut parents = ParentCache::default();
    let mut skipped = 0;
    for entry in archive.entries().map_err(UnpackError::Archive)? {
        let mut entry = entry.map_err(UnpackError::Archive)?;
        let raw = entry.path().map_err(UnpackError::Archive)?.into_owned();
        let rel = safefs::clean_relative(&raw).map_err(|source| UnpackError::Path { entry: raw.clone(), source })?;
        if !opts.device_nodes && is_device_node(&entry) {
            tracing::debug!(entry = ?raw, "leaving out a device node");
            skipped += 1;
            continue;
        }
        extract_entry(&root, &mut parents, &mut entry, &raw, &rel, &mut dir_times)?;
    }
    // Children first, so a parent's time is set after its children's.
    for d in dir_times.iter().rev() {
        let (parent, name) = parents.get(&root, &d.path, false)?;
        let name = name.unwrap_or_else(|| OsString::from("."));
        let _ = nix::sys::stat::utimensat(parent.as_fd(), name.as_os_str(), &d.mtime, &d.mtime, UtimensatFlags::NoFollowSymlink);
    }
    Ok(skipped)
}

/// A character or block device other than an overlayfs whiteout (`c 0:0`).
fn is_device_node<R: Read>(entry: &tar::Entry<R>) -> bool {
    let h = entry.header();
    match h.entry_type() {
        tar::EntryType::Block => true,
        tar::EntryType::Char => {
            let major = h.device_major().ok().flatten().unwrap_or(0);
            let minor = h.device_minor().ok().flatten().unwrap_or(0);
            (major, minor) != (0, 0)
        }
        _ => false,
    }
}

/// Keeps the fd of the last parent directory: entries come grouped by directory.
#[derive(Default)]
struct ParentCache {
    last: Option<(PathBuf, OwnedFd)>,
}

impl ParentCache {
    /// The parent directory fd of `rel` and its final name (None for the root itself).
    fn get(&mut self, root: &RootDir, rel: &Path, create: bool) -> Result<(OwnedFd, Option<OsString>), UnpackError> {
        let (parent_rel, name) = match rel.file_name() {
            Some(n) => (rel.parent().unwrap_or(Path::new("")).to_path_buf(), Some(n.to_os_string())),
            // The root itself: its "parent" is the root, named ".".
            None => (PathBuf::new(), None),
        };
        if let Some((p, fd)) = &self.last {
            if *p == parent_rel {
                let fd = fd.try_clone().map_err(UnpackError::Archive)?;
                return Ok((fd, name));
            }
        }
        let fd = root.open_dir_beneath(&parent_rel, create).map_err(|source| UnpackError::Path { entry: rel.to_path_buf(), source })?;
        let copy = fd.try_clone().map_err(UnpackError::Archive)?;
        self.last = Some((parent_rel, copy));
        Ok((fd, name))
    }

    fn forget(&mut self) {
        self.last = None;
    }
}

fn extract_entry<R: Read>(
    root: &RootDir,
    parents: &mut ParentCache,
    entry: &mut tar::Entry<R>,
    raw: &Path,
    rel: &Path,
    dir_times: &mut Vec<DirTimes>,
) -> Result<(), UnpackError> {
    let fail = |op: &'static str| move |errno: Errno| UnpackError::Create { entry: raw.to_path_buf(), op, errno };
    let header = entry.header().clone();
    let kind = header.entry_type();
    let mode = Mode::from_bits_truncate(header.mode().map_err(UnpackError::Archive)? & 0o7777);
    let uid = Uid::from_raw(header.uid().map_err(UnpackError::Archive)? as u32);
    let gid = Gid::from_raw(header.gid().map_err(UnpackError::Archive)? as u32);
    let mtime = TimeSpec::new(header.mtime().unwrap_or(0) as i64, 0);

    let (parent, name) = parents.get(root, rel, true)?;
    let Some(name) = name else {
        // "./": the layer root's own metadata.
        if kind.is_dir() {
            fchownat(root.fd(), ".", Some(uid), Some(gid), AtFlags::empty()).map_err(fail("chown"))?;
            fchmodat(root.fd(), ".", mode, FchmodatFlags::FollowSymlink).map_err(fail("chmod"))?;
            dir_times.push(DirTimes { path: PathBuf::new(), mtime });
        }
        return Ok(());
    };
    let name_bytes = name.as_bytes();

    // Whiteouts: the opaque marker makes the parent hide lower layers; `.wh.x`
    // hides x. Other `.wh..wh.` names are aufs bookkeeping and are skipped.
    if name_bytes == OPAQUE_MARKER.as_bytes() {
        let dir =
            safefs::open_beneath(parent.as_fd(), Path::new("."), OFlag::O_RDONLY | OFlag::O_DIRECTORY).map_err(fail("open parent"))?;
        return safefs::fsetxattr(dir.as_fd(), OVERLAY_OPAQUE_XATTR, b"y").map_err(fail("set opaque xattr"));
    }
    if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
        if hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return Ok(());
        }
        let hidden = OsStr::from_bytes(hidden);
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err(UnpackError::Path { entry: raw.into(), source: PathError::Escapes { path: raw.into() } });
        }
        safefs::remove_all_at(parent.as_fd(), hidden).map_err(fail("remove"))?;
        parents.forget();
        return mknodat(parent.as_fd(), hidden, SFlag::S_IFCHR, Mode::empty(), 0).map_err(fail("mknod whiteout"));
    }

    // Replace whatever this layer already has there, unless both are directories.
    let existing = safefs::lstat_kind(parent.as_fd(), &name).map_err(fail("stat"))?;
    let keep_dir = kind.is_dir() && existing == Some(SFlag::S_IFDIR);
    if existing.is_some() && !keep_dir {
        safefs::remove_all_at(parent.as_fd(), &name).map_err(fail("remove"))?;
        parents.forget();
    }

    match kind {
        tar::EntryType::Directory => {
            if !keep_dir {
                mkdirat(parent.as_fd(), name.as_os_str(), Mode::from_bits_truncate(0o700)).map_err(fail("mkdir"))?;
            }
            let fd =
                safefs::open_beneath(parent.as_fd(), Path::new(&name), OFlag::O_RDONLY | OFlag::O_DIRECTORY).map_err(fail("open dir"))?;
            set_owner_mode_xattrs(&fd, entry, uid, gid, mode).map_err(fail("metadata"))?;
            dir_times.push(DirTimes { path: rel.to_path_buf(), mtime });
        }
        tar::EntryType::Regular | tar::EntryType::Continuous => {
            let fd = nix::fcntl::openat(
                parent.as_fd(),
                name.as_os_str(),
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )
            .map_err(fail("create"))?;
            let mut file = File::from(fd);
            io::copy(entry, &mut file).map_err(UnpackError::Archive)?;
            let fd = OwnedFd::from(file);
            set_owner_mode_xattrs(&fd, entry, uid, gid, mode).map_err(fail("metadata"))?;
            nix::sys::stat::futimens(fd.as_fd(), &mtime, &mtime).map_err(fail("utimes"))?;
        }
        tar::EntryType::Symlink => {
            let target = entry.link_name().map_err(UnpackError::Archive)?.unwrap_or_default().into_owned();
            symlinkat(target.as_os_str(), parent.as_fd(), name.as_os_str()).map_err(fail("symlink"))?;
            fchownat(parent.as_fd(), name.as_os_str(), Some(uid), Some(gid), AtFlags::AT_SYMLINK_NOFOLLOW).map_err(fail("chown"))?;
            nix::sys::stat::utimensat(parent.as_fd(), name.as_os_str(), &mtime, &mtime, UtimensatFlags::NoFollowSymlink)
                .map_err(fail("utimes"))?;
        }
        tar::EntryType::Link => {
            let target_raw = entry.link_name().map_err(UnpackError::Archive)?.unwrap_or_default().into_owned();
            let target = safefs::clean_relative(&target_raw).map_err(|source| UnpackError::Path { entry: raw.into(), source })?;
            let target_name = target
                .file_name()
                .ok_or_else(|| UnpackError::Path { entry: raw.into(), source: PathError::Escapes { path: target_raw.clone() } })?;
            let target_parent = root
                .open_dir_beneath(target.parent().unwrap_or(Path::new("")), false)
                .map_err(|source| UnpackError::Path { entry: raw.into(), source })?;
            // Flags 0: a symlink target is linked itself, never followed.
            linkat(target_parent.as_fd(), target_name, parent.as_fd(), name.as_os_str(), AtFlags::empty()).map_err(fail("hardlink"))?;
        }
        tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
            let kind_flag = match kind {
                tar::EntryType::Char => SFlag::S_IFCHR,
                tar::EntryType::Block => SFlag::S_IFBLK,
                _ => SFlag::S_IFIFO,
            };
            let major = header.device_major().ok().flatten().unwrap_or(0) as u64;
            let minor = header.device_minor().ok().flatten().unwrap_or(0) as u64;
            let dev = nix::sys::stat::makedev(major, minor);
            mknodat(parent.as_fd(), name.as_os_str(), kind_flag, mode, dev).map_err(fail("mknod"))?;
            fchownat(parent.as_fd(), name.as_os_str(), Some(uid), Some(gid), AtFlags::AT_SYMLINK_NOFOLLOW).map_err(fail("chown"))?;
            fchmodat(parent.as_fd(), name.as_os_str(), mode, FchmodatFlags::FollowSymlink).map_err(fail("chmod"))?;
            nix::sys::stat::utimensat(parent.as_fd(), name.as_os_str(), &mtime, &mtime, UtimensatFlags::NoFollowSymlink)
                .map_err(fail("utimes"))?;
        }
        // PAX/GNU headers are consumed by the tar crate; anything else is skipped.
        other => tracing::debug!(entry = ?raw, kind = ?other, "skipping tar entry of unsupported type"),
    }
    Ok(())
}

/// chown, then chmod (chown clears setuid bits), then the entry's xattrs.
fn set_owner_mode_xattrs<R: Read>(fd: &OwnedFd, entry: &mut tar::Entry<R>, uid: Uid, gid: Gid, mode: Mode) -> Result<(), Errno> {
    nix::unistd::fchown(fd.as_fd(), Some(uid), Some(gid))?;
    fchmod(fd.as_fd(), mode)?;
    if let Ok(Some(exts)) = entry.pax_extensions() {
        for ext in exts.flatten() {
            let Ok(key) = ext.key() else { continue };
            let Some(attr) = key.strip_prefix("SCHILY.xattr.") else { continue };
            if !xattr_allowed(attr) {
                tracing::debug!(attr, "dropping layer xattr");
                continue;
            }
            safefs::fsetxattr(fd.as_fd(), attr, ext.value_bytes())?;
        }
    }
    Ok(())
}

/// Image xattrs are data from the image author: `trusted.overlay.*` would
/// steer overlayfs itself (redirects, metacopy) and other trusted or security
/// namespaces are host policy, so only user attributes and file capabilities
/// pass.
fn xattr_allowed(name: &str) -> bool {
    name.starts_with("user.") || name == "security.capability"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_is_sniffed() {
        assert_eq!(Compression::detect(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd]), Compression::Zstd);
        assert_eq!(Compression::detect(b"bin/"), Compression::None);
    }

    #[test]
    fn only_user_and_capability_xattrs_pass() {
        assert!(xattr_allowed("user.foo"));
        assert!(xattr_allowed("security.capability"));
        assert!(!xattr_allowed("trusted.overlay.redirect"));
        assert!(!xattr_allowed("security.selinux"));
    }
}

//! The new mount API where the old one cannot say it: `mount_setattr`
//! (recursive read-only, id-mapped mounts) and `open_tree`. libc has the
//! numbers and structs; these are the thin, checked calls.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Attributes to set and clear on a mount tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attr {
    /// `MOUNT_ATTR_*` to set.
    pub set: u64,
    /// `MOUNT_ATTR_*` to clear.
    pub clear: u64,
    /// A user namespace fd, with `MOUNT_ATTR_IDMAP` in `set`.
    pub userns_fd: Option<i32>,
}

/// `mount_setattr` on the mount `fd` refers to (an `O_PATH` fd of its
/// root), and with `recursive` on every mount beneath it.
pub fn set_attr(fd: BorrowedFd<'_>, recursive: bool, attr: Attr) -> io::Result<()> {
    let mut a = libc::mount_attr { attr_set: attr.set, attr_clr: attr.clear, propagation: 0, userns_fd: 0 };
    if let Some(u) = attr.userns_fd {
        a.userns_fd = u as u64;
    }
    let flags = libc::AT_EMPTY_PATH | if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: the path is a static empty C string, `a` lives across the call
    // and its size is passed; the kernel only reads them.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &a as *const libc::mount_attr,
            size_of::<libc::mount_attr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `open_tree(OPEN_TREE_CLONE)`: a detached copy of the mount (tree, with
/// `recursive`) at `path`, to change and attach elsewhere.
pub fn clone_tree(path: &Path, recursive: bool) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    open_tree(libc::AT_FDCWD, &c, recursive, 0)
}

/// As [`clone_tree`], of what the (`O_PATH`) fd `at` refers to: a bind of
/// that directory or file, detached.
pub fn clone_tree_at(at: BorrowedFd<'_>, recursive: bool) -> io::Result<OwnedFd> {
    open_tree(at.as_raw_fd(), c"", recursive, libc::AT_EMPTY_PATH as libc::c_uint)
}

fn open_tree(dirfd: i32, path: &std::ffi::CStr, recursive: bool, extra: libc::c_uint) -> io::Result<OwnedFd> {
    let flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | extra | if recursive { libc::AT_RECURSIVE as libc::c_uint } else { 0 };
    // SAFETY: `path` is a valid C string for the call; the result is a new
    // fd this process owns.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, dirfd, path.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new, open fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `move_mount`: attaches the detached tree `from` at the path `to` (its
/// last component is not followed: a `/proc/self/fd/N` would name the
/// link itself — use [`attach_at_fd`] for an fd).
pub fn attach(from: BorrowedFd<'_>, to: &Path) -> io::Result<()> {
    let c = CString::new(to.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: valid C strings for the call; no memory is written.
    let r = unsafe {
        libc::syscall(libc::SYS_move_mount, from.as_raw_fd(), c"".as_ptr(), libc::AT_FDCWD, c.as_ptr(), libc::MOVE_MOUNT_F_EMPTY_PATH)
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `move_mount`: attaches the detached tree `from` on what the (`O_PATH`)
/// fd `to` refers to.
pub fn attach_at_fd(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: static empty C strings; no memory is written.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from.as_raw_fd(),
            c"".as_ptr(),
            to.as_raw_fd(),
            c"".as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the kernel has `mount_setattr` (Linux 5.12): asked with a bad fd,
/// it answers EBADF if it exists, ENOSYS if not.
pub fn supported() -> bool {
    let a = libc::mount_attr { attr_set: 0, attr_clr: 0, propagation: 0, userns_fd: 0 };
    // SAFETY: as in set_attr; fd -1 makes the kernel fail before any change.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &a as *const libc::mount_attr,
            size_of::<libc::mount_attr>(),
        )
    };
    r == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS)
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_kernel_has_it() {
        // The project's machines run 6.x; berth reports the feature from this.
        assert!(super::supported());
    }
}

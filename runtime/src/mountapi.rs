//! The new mount API where the old one cannot say it: `mount_setattr`
//! (recursive read-only, id-mapped mounts), `open_tree`, and `fsopen` /
//! `fsmount` (a filesystem mounted detached, in one process, and attached in
//! another's mount namespace). libc has the numbers and structs; these are
//! the thin, checked calls.

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
    /// A propagation to take (`MS_PRIVATE`, `MS_SLAVE`, `MS_SHARED` or
    /// `MS_UNBINDABLE`; recursion is the call's), 0 to keep it.
    pub propagation: u64,
}

/// `mount_setattr` on the mount `fd` refers to (an `O_PATH` fd of its
/// root), and with `recursive` on every mount beneath it.
pub fn set_attr(fd: BorrowedFd<'_>, recursive: bool, attr: Attr) -> io::Result<()> {
    let mut a = libc::mount_attr { attr_set: attr.set, attr_clr: attr.clear, propagation: attr.propagation, userns_fd: 0 };
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

// linux/mount.h; the libc crate has them only in its newer modules.
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;

/// The last OS error, with `what` was being done.
fn failed(what: String) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// `fsopen` + `fsconfig`: a context for a new `fstype` filesystem with the
/// string `options` set, not created yet.
fn fs_context(fstype: &str, options: &[(&str, &str)]) -> io::Result<OwnedFd> {
    let cstr = |s: &str| CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{s:?} holds a NUL")));
    let fstype_c = cstr(fstype)?;
    // SAFETY: a valid C string for the call; the result is a new fd this
    // process owns.
    let fs = unsafe { libc::syscall(libc::SYS_fsopen, fstype_c.as_ptr(), FSOPEN_CLOEXEC) };
    if fs < 0 {
        return Err(failed(format!("fsopen {fstype}")));
    }
    // SAFETY: the kernel returned a new, open fd.
    let fs = unsafe { OwnedFd::from_raw_fd(fs as i32) };
    for (key, value) in options {
        let (k, v) = (cstr(key)?, cstr(value)?);
        // SAFETY: valid C strings for the call; the kernel copies them.
        let r = unsafe { libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), FSCONFIG_SET_STRING, k.as_ptr(), v.as_ptr(), 0) };
        if r < 0 {
            return Err(failed(format!("{fstype} option {key}")));
        }
    }
    Ok(fs)
}

/// `fsopen` + `fsconfig` + `fsmount`: a new mount of a `fstype` filesystem
/// made with the string `options` and the `MOUNT_ATTR_*` flags `attrs`,
/// detached: it is attached nowhere until [`attach`]ed, and is gone when
/// its last fd is closed unattached.
pub fn new_mount(fstype: &str, options: &[(&str, &str)], attrs: u64) -> io::Result<OwnedFd> {
    let fs = fs_context(fstype, options)?;
    // SAFETY: no pointers: the command takes none.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    if r < 0 {
        return Err(failed(format!("creating the {fstype} filesystem")));
    }
    // SAFETY: integers only; the result is a new fd this process owns.
    let m = unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs as libc::c_uint) };
    if m < 0 {
        return Err(failed(format!("fsmount {fstype}")));
    }
    // SAFETY: the kernel returned a new, open fd.
    Ok(unsafe { OwnedFd::from_raw_fd(m as i32) })
}

/// Whether this kernel's procfs takes `pidns=` (Linux 6.15): a `/proc` for
/// a PID namespace the mounting process is not in. Asked by configuring a
/// filesystem context that is never created.
pub fn procfs_takes_pidns() -> bool {
    fs_context("proc", &[("pidns", "/proc/self/ns/pid")]).is_ok()
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
    fn procfs_pidns_is_known_on_this_kernel() {
        // Linux 6.15 and later have it; this project's machine runs 6.18.
        let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
        let mut v = release.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u32>().ok());
        let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
        if nix::unistd::geteuid().is_root() {
            assert_eq!(super::procfs_takes_pidns(), (major, minor) >= (6, 15), "{release}");
        }
    }

    #[test]
    fn this_kernel_has_it() {
        // The project's machines run 6.x; berth reports the feature from this.
        assert!(super::supported());
    }

    #[test]
    fn a_new_mount_is_made_detached_and_a_bad_option_is_named() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let fd = super::new_mount("tmpfs", &[("size", "1m")], libc::MOUNT_ATTR_NODEV).unwrap();
        let st = nix::sys::statfs::fstatfs(&fd).unwrap();
        assert_eq!(st.filesystem_type(), nix::sys::statfs::TMPFS_MAGIC);
        // Attached nowhere: this process's mounts do not list it.
        let e = super::new_mount("tmpfs", &[("no-such-option", "1")], 0).unwrap_err();
        assert!(e.to_string().contains("no-such-option"), "{e}");
    }
}

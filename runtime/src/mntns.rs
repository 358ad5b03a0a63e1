//! The mount namespace a container's init starts from: a template that holds
//! nothing of the node — a read-only tmpfs root with an empty `work`
//! directory and a `proc` mount — pinned by berthd in a private dir of its
//! state. `unshare(CLONE_NEWNS)` in the node's namespace copies every mount
//! of the node, each pod's pins and `/dev/shm` among them, and the pivot
//! later detaches them all again: a container start cost grew with the
//! pods on the node. An init that joins the template and unshares copies
//! two mounts. What the container needs of the node (the rootfs mounted
//! ahead, the spec's bind sources) it takes along as detached mounts before
//! it switches ([`crate::rootfs::RootfsOps::new_namespace`]).
//!
//! The `proc` mount is for the init's `/proc/self/fd/N` mount targets
//! before the pivot; it goes with the template's root at the pivot.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;

use crate::sandbox::{ns_err, PrivateDir, SandboxError};

/// In the template: where an init mounts a tmpfs of its own to build the
/// rootfs in.
pub const WORK: &str = "/work";

/// `NS_GET_NSTYPE` (`_IO(0xb7, 0x3)`, Linux 4.11).
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// The mounts of the template and of an init's work dir hold nothing to run.
const HIDDEN: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV).union(MsFlags::MS_NOEXEC);

/// The template's pin in its dir.
pub fn pin_path(dir: &Path) -> PathBuf {
    dir.join("template")
}

/// Whether `fd` refers to a mount namespace (a pin's bind, not the empty
/// file it is mounted on).
pub fn is_mount_namespace(fd: &impl AsRawFd) -> bool {
    // SAFETY: the ioctl takes no argument; on anything but an nsfs file it
    // fails with ENOTTY.
    let kind = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE as _) };
    kind == libc::CLONE_NEWNS
}

/// Opens the template pinned at `pin`; None when there is none.
pub fn open(pin: &Path) -> Option<OwnedFd> {
    let fd = nix::fcntl::open(pin, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).ok()?;
    is_mount_namespace(&fd).then_some(fd)
}

/// Makes `dir` a private mount with the template pinned in it, or finds the
/// one an earlier berthd pinned there (pins survive berthd); returns the
/// pin's path. On failure nothing of this call stays mounted.
pub fn ensure(dir: &Path) -> Result<PathBuf, SandboxError> {
    std::fs::create_dir_all(dir).map_err(|e| SandboxError::Init(format!("create {}: {e}", dir.display())))?;
    let made = match crate::sandbox::mount_private_dir(dir)? {
        PrivateDir::Made => true,
        PrivateDir::Kept => false,
        PrivateDir::LeftAlone => return Err(SandboxError::Init(format!("{} holds mounts but is no mount of its own", dir.display()))),
    };
    let pin = pin_path(dir);
    if open(&pin).is_some() {
        return Ok(pin);
    }
    let pinned = make(dir).and_then(|ns| crate::sandbox::pin_at(&pin, "mnt", Path::new(&format!("/proc/self/fd/{}", ns.as_raw_fd()))));
    match pinned {
        Ok(()) => Ok(pin),
        Err(e) => {
            if made {
                crate::sandbox::unmount_private_dir(dir);
            }
            Err(e)
        }
    }
}

/// Undoes [`ensure`]: the template goes once no init is still joining it.
pub fn remove(dir: &Path) {
    crate::sandbox::unmount_private_dir(dir);
    let _ = std::fs::remove_file(pin_path(dir));
}

/// A new template namespace, made by a thread of its own (unshare moves
/// only the calling thread, which ends right after): a tmpfs mounted on the
/// copy of `scratch` becomes the root, the copy of the node's mounts is
/// detached, the root made read-only. Returns an fd of the namespace.
fn make(scratch: &Path) -> Result<OwnedFd, SandboxError> {
    let scratch = scratch.to_path_buf();
    let thread = std::thread::Builder::new().name("berth-mntns".into()).spawn(move || -> Result<OwnedFd, SandboxError> {
        nix::sched::unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_FS).map_err(ns_err("unshare a mount namespace"))?;
        // Private first: nothing done here may reach the node's mounts.
        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>).map_err(ns_err("make / rprivate"))?;
        mount(Some("berth-template"), &scratch, Some("tmpfs"), HIDDEN, Some("mode=755,size=16k,nr_inodes=16"))
            .map_err(ns_err("mount the template's tmpfs"))?;
        for d in ["proc", "work", "old"] {
            nix::unistd::mkdir(&scratch.join(d), Mode::from_bits_truncate(0o755)).map_err(ns_err(format!("mkdir {d}")))?;
        }
        mount(Some("proc"), &scratch.join("proc"), Some("proc"), HIDDEN, None::<&str>).map_err(ns_err("mount proc"))?;
        nix::unistd::chdir(&scratch).map_err(ns_err("chdir"))?;
        nix::unistd::pivot_root(".", "old").map_err(ns_err("pivot_root"))?;
        nix::unistd::chdir("/").map_err(ns_err("chdir /"))?;
        umount2("/old", MntFlags::MNT_DETACH).map_err(ns_err("detach the node's mounts"))?;
        std::fs::remove_dir("/old").map_err(|e| SandboxError::Init(format!("rmdir /old: {e}")))?;
        mount(None::<&str>, "/", None::<&str>, HIDDEN | MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY, None::<&str>)
            .map_err(ns_err("remount / read-only"))?;
        nix::fcntl::open("/proc/thread-self/ns/mnt", OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(ns_err("open the namespace"))
    });
    let thread = thread.map_err(|e| SandboxError::Init(format!("thread: {e}")))?;
    thread.join().unwrap_or_else(|_| Err(SandboxError::Init("mount template thread panicked".into())))
}

/// In a container's init: joins the template pinned as `template` and
/// unshares a copy of it, then mounts a tmpfs of its own at [`WORK`] (the
/// template's own root is shared by every copy and read-only). From here
/// on no path of the node resolves.
pub fn enter(template: OwnedFd) -> Result<(), Errno> {
    nix::sched::setns(template, CloneFlags::CLONE_NEWNS)?;
    nix::sched::unshare(CloneFlags::CLONE_NEWNS)?;
    mount(Some("berth-work"), WORK, Some("tmpfs"), HIDDEN, Some("mode=755"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A template made, pinned, found again, joined: its copy holds the
    /// root, proc and the init's work tmpfs, nothing of the node.
    #[test]
    fn a_template_holds_nothing_of_the_node() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mntns = dir.path().join("mntns");
        let pin = ensure(&mntns).unwrap();
        let again = ensure(&mntns).unwrap();
        assert_eq!(pin, again);
        let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        assert_eq!(ino(&pin), ino(&again), "found again, not made anew");
        let fd = open(&pin).unwrap();
        let mounts = std::thread::spawn(move || {
            nix::sched::unshare(CloneFlags::CLONE_FS).unwrap();
            enter(fd).unwrap();
            std::fs::read_to_string("/proc/thread-self/mountinfo").unwrap()
        })
        .join()
        .unwrap();
        let points: Vec<&str> = mounts.lines().filter_map(|l| l.split(' ').nth(4)).collect();
        assert_eq!(points, ["/", "/proc", "/work"], "{mounts}");
        remove(&mntns);
        assert!(open(&pin).is_none());
        assert!(!crate::mountinfo::read_self().unwrap().iter().any(|m| m.mount_point.starts_with(dir.path())));
    }
}

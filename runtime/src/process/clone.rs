//! `fork` into a cgroup: `clone3(CLONE_INTO_CGROUP)` (Linux 5.7) starts the
//! child in a cgroup v2 directory, so nothing writes `cgroup.procs` (a write
//! takes the kernel's `cgroup_threadgroup_rwsem` for writing, a clone into
//! the cgroup for reading; on this project's machine the difference
//! measured 0.69 against 0.55 ms, see the ignored test below). Only on a
//! pure cgroup v2 node: with v1 hierarchies their writes remain.
//!
//! Used for the container init, which unshares its cgroup namespace after
//! it is placed. Not for the exec helper: it has joined the container's
//! cgroup namespace before it forks, and the kernel refuses to move a
//! process from outside that namespace's root into it (ENOENT), for a
//! clone as for a `cgroup.procs` write — so the helper joins the cgroup by
//! path first, as before.
//!
//! Also `fork` for the parent ([`fork_for_parent`], `CLONE_PARENT`): how a
//! confined process outside a PID namespace starts the container's or the
//! exec's process inside it.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::unistd::{ForkResult, Pid};

/// `CLONE_INTO_CGROUP` (not in libc yet).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The kernel's `struct clone_args` (version 2, 88 bytes, with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// The cgroup v2 directory to clone into, when `procs` (the
/// `cgroup.procs` files a process must join, `:`-separated) names exactly
/// one and it is on a cgroup2 filesystem; opened for `CLONE_INTO_CGROUP`.
pub fn v2_only_dir(procs: &str) -> Option<OwnedFd> {
    let mut files = procs.split(':').filter(|f| !f.is_empty());
    let only = files.next()?;
    if files.next().is_some() {
        return None;
    }
    let dir = Path::new(only).parent()?;
    let fs = nix::sys::statfs::statfs(dir).ok()?;
    if fs.filesystem_type() != nix::sys::statfs::CGROUP2_SUPER_MAGIC {
        return None;
    }
    let fd = nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ok()?;
    Some(fd)
}

/// `fork`, with the child born in the cgroup `dir` refers to. An error
/// leaves no child (the caller may fork and join the cgroup as before).
///
/// # Safety
/// As `fork`: the caller is single-threaded, or the child only calls
/// async-signal-safe functions before exec. The raw clone3 skips libc's
/// fork handlers, which matters only for locks other threads could hold.
pub unsafe fn fork_into_cgroup(dir: BorrowedFd<'_>) -> nix::Result<ForkResult> {
    let args =
        CloneArgs { flags: CLONE_INTO_CGROUP, exit_signal: libc::SIGCHLD as u64, cgroup: dir.as_raw_fd() as u64, ..Default::default() };
    // SAFETY: `args` is a valid clone_args of the size passed; no stack is
    // given, so the child runs on a copy of this one, as after fork.
    let r = unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) };
    match r {
        -1 => Err(nix::errno::Errno::last()),
        0 => Ok(ForkResult::Child),
        pid => Ok(ForkResult::Parent { child: Pid::from_raw(pid as i32) }),
    }
}

/// `fork` whose child is a child of this process's parent
/// (`CLONE_PARENT`): a process started for the parent, which this one then
/// leaves to it. Plain `clone`, not `clone3`: it runs under container
/// seccomp filters, which refuse clone3 (ENOSYS).
///
/// # Safety
/// As [`fork_into_cgroup`]: the caller is single-threaded, or the child only
/// calls async-signal-safe functions before exec.
pub unsafe fn fork_for_parent() -> nix::Result<ForkResult> {
    // SAFETY: no stack is given, so the child runs on a copy of this one, as
    // after fork; the other arguments are unused without their flags.
    let r =
        unsafe { libc::syscall(libc::SYS_clone, (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong, 0usize, 0usize, 0usize, 0usize) };
    match r {
        -1 => Err(nix::errno::Errno::last()),
        0 => Ok(ForkResult::Child),
        pid => Ok(ForkResult::Parent { child: Pid::from_raw(pid as i32) }),
    }
}

#[cfg(test)]
mod tests {
    /// This machine's cgroup2 mount: the unified one of a hybrid layout, or the only one.
    fn cgroup2_root() -> Option<&'static std::path::Path> {
        ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(std::path::Path::new)
            .find(|p| nix::sys::statfs::statfs(*p).is_ok_and(|f| f.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC))
    }

    #[test]
    fn only_a_single_cgroup2_directory_qualifies() {
        // This machine is cgroup v1 (hybrid): its v1 hierarchies never do.
        assert!(super::v2_only_dir("").is_none());
        assert!(super::v2_only_dir("/sys/fs/cgroup/memory/cgroup.procs").is_none());
        assert!(super::v2_only_dir("/sys/fs/cgroup/memory/cgroup.procs:/sys/fs/cgroup/pids/cgroup.procs").is_none());
        assert!(super::v2_only_dir("/nonexistent/cgroup.procs").is_none());
        let unified = std::path::Path::new("/sys/fs/cgroup/unified/cgroup.procs");
        let pure = std::path::Path::new("/sys/fs/cgroup/cgroup.procs");
        for p in [unified, pure].into_iter().filter(|p| p.exists()) {
            assert!(super::v2_only_dir(p.to_str().unwrap()).is_some(), "{}", p.display());
        }
    }

    /// The child is in the cgroup from its first instruction: it reads its
    /// own /proc/self/cgroup before doing anything else.
    #[test]
    fn the_child_is_born_in_the_cgroup() {
        let (Some(root), true) = (cgroup2_root(), nix::unistd::geteuid().is_root()) else { return };
        let name = format!("berth-clone-test-{}", std::process::id());
        let dir = root.join(&name);
        std::fs::create_dir(&dir).unwrap();
        let fd = super::v2_only_dir(dir.join("cgroup.procs").to_str().unwrap()).unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        // SAFETY: the child reads a file, writes a pipe and calls _exit.
        match unsafe { super::fork_into_cgroup(std::os::fd::AsFd::as_fd(&fd)) }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
                let _ = nix::unistd::write(&w, own.as_bytes());
                // SAFETY: ends the child without running the harness's code.
                unsafe { libc::_exit(0) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop(w);
                nix::sys::wait::waitpid(child, None).unwrap();
            }
        }
        let mut seen = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(r), &mut seen).unwrap();
        let _ = std::fs::remove_dir(&dir);
        assert!(seen.lines().any(|l| l.starts_with("0::") && l.ends_with(&format!("/{name}"))), "{seen}");
    }

    /// The kernel mechanism, measured (`cargo test -p berth-runtime --lib
    /// clone -- --ignored --nocapture`, root, a cgroup2 mount): a child that
    /// joins a cgroup by writing `cgroup.procs` after a quiet moment, against
    /// one cloned into it; prints medians of 15 of each.
    #[test]
    #[ignore]
    fn joining_by_write_against_cloning_into() {
        use std::time::{Duration, Instant};
        let Some(root) = cgroup2_root() else { return };
        let dir = root.join(format!("berth-clone-measure-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let procs = dir.join("cgroup.procs");
        let fd = super::v2_only_dir(procs.to_str().unwrap()).unwrap();
        let median = |mut v: Vec<Duration>| {
            v.sort();
            v[v.len() / 2]
        };
        let (mut write, mut clone) = (Vec::new(), Vec::new());
        for _ in 0..15 {
            for by_clone in [false, true] {
                std::thread::sleep(Duration::from_millis(300));
                let t = Instant::now();
                // SAFETY: the child only writes to a file and calls _exit.
                let r = if by_clone {
                    unsafe { super::fork_into_cgroup(std::os::fd::AsFd::as_fd(&fd)) }
                } else {
                    unsafe { nix::unistd::fork() }
                };
                match r.unwrap() {
                    nix::unistd::ForkResult::Child => {
                        if !by_clone {
                            let _ = std::fs::write(&procs, "0");
                        }
                        // SAFETY: ends the child without running the test harness's code.
                        unsafe { libc::_exit(0) }
                    }
                    nix::unistd::ForkResult::Parent { child } => {
                        nix::sys::wait::waitpid(child, None).unwrap();
                    }
                }
                if by_clone {
                    clone.push(t.elapsed())
                } else {
                    write.push(t.elapsed())
                }
            }
        }
        let _ = std::fs::remove_dir(&dir);
        eprintln!(
            "child joining {}: write cgroup.procs median {:?}, clone3 into it median {:?}",
            dir.display(),
            median(write),
            median(clone)
        );
    }
}

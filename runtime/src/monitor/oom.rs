//! OOM kills seen while the container runs (cgroup v2): an inotify watch on
//! the cgroup's `memory.events`, read again at every change and when the
//! init exits. Reading it afterwards is not enough under the systemd driver:
//! systemd removes a scope's cgroup as soon as it is empty.

use std::io::Read as _;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::fcntl::{openat, OFlag};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::stat::Mode;

pub(super) struct OomWatch {
    /// The container's cgroup directory.
    dir: OwnedFd,
    inotify: Option<Inotify>,
    /// An OOM kill was counted.
    pub(super) killed: bool,
    /// The write end of the sentinel's pipe, if one holds the cgroup.
    sentinel: Option<OwnedFd>,
}

/// Starts a sentinel in the cgroup `dir` names: a child of the monitor that
/// only waits for EOF on a pipe, so the cgroup stays populated — and under
/// the systemd driver, its directory stays — after the container's last
/// process exited, until the monitor has read `memory.events` and lets the
/// sentinel go (or dies). Returns the pipe's write end.
pub(super) fn start_sentinel(dir: BorrowedFd<'_>) -> nix::Result<OwnedFd> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    // SAFETY: the monitor is single-threaded; the child only makes raw
    // syscalls (signal, dup2, close_range, read, _exit) before it ends.
    match unsafe { crate::process::clone::fork_into_cgroup(dir) }? {
        nix::unistd::ForkResult::Child => {
            let rfd = std::os::fd::AsRawFd::as_raw_fd(&r);
            // SAFETY: plain syscalls on fds this process owns; it holds
            // nothing but fd 0 afterwards (no container stdin or log).
            unsafe {
                // systemd < 253 answers an OOM kill in a scope by stopping
                // it with SIGTERM to every process; the sentinel outlasts
                // that until the monitor has read the count.
                libc::signal(libc::SIGTERM, libc::SIG_IGN);
                libc::signal(libc::SIGINT, libc::SIG_IGN);
                libc::signal(libc::SIGHUP, libc::SIG_IGN);
                libc::dup2(rfd, 0);
                libc::syscall(libc::SYS_close_range, 1u32, u32::MAX, 0u32);
                let mut b = [0u8; 1];
                while libc::read(0, b.as_mut_ptr().cast(), 1) != 0 {}
                libc::_exit(0);
            }
        }
        nix::unistd::ForkResult::Parent { .. } => Ok(w),
    }
}

impl OomWatch {
    /// Watches the cgroup `dir` (a cgroup2 directory) names; no watch if the
    /// kernel refuses one (the exit-time read still happens).
    pub(super) fn new(dir: OwnedFd, sentinel: Option<OwnedFd>) -> OomWatch {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok().and_then(|i| {
            let path = format!("/proc/self/fd/{}/memory.events", std::os::fd::AsRawFd::as_raw_fd(&dir));
            i.add_watch(path.as_str(), AddWatchFlags::IN_MODIFY).ok().map(|_| i)
        });
        let mut w = OomWatch { dir, inotify, killed: false, sentinel };
        let _ = w.check();
        w
    }

    /// The fd to poll for changes.
    pub(super) fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.inotify.as_ref().map(|i| i.as_fd())
    }

    /// memory.events changed: drain the events and read it.
    pub(super) fn changed(&mut self) {
        if let Some(i) = &self.inotify {
            while matches!(i.read_events(), Ok(e) if !e.is_empty()) {}
        }
        let _ = self.check();
    }

    /// The container has exited: a last read, then the sentinel may go.
    pub(super) fn finish(&mut self) -> bool {
        let before = self.killed;
        let read = self.check();
        crate::diag::log(
            crate::diag::Level::Info,
            &format!("oom count at exit: killed={} (seen live: {before}; exit-time read: {read})", self.killed),
        );
        drop(self.sentinel.take());
        self.killed
    }

    /// Reads the `oom_kill` count; a cgroup already gone changes nothing.
    /// What happened, for the log.
    pub(super) fn check(&mut self) -> String {
        if self.killed {
            return "skipped".into();
        }
        let fd = match openat(self.dir.as_fd(), "memory.events", OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()) {
            Ok(fd) => fd,
            Err(e) => return format!("open: {e}"),
        };
        let mut text = String::new();
        match std::fs::File::from(fd).read_to_string(&mut text) {
            Ok(_) => {
                let kills = crate::cgroup::oom_kills(&text);
                self.killed = kills > 0;
                format!("oom_kill {kills}")
            }
            Err(e) => format!("read: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_oom_kills() {
        assert_eq!(crate::cgroup::oom_kills("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n"), 1);
        assert_eq!(crate::cgroup::oom_kills("low 0\nmax 3\noom 0\noom_kill 0\n"), 0);
        assert_eq!(crate::cgroup::oom_kills(""), 0);
    }
}

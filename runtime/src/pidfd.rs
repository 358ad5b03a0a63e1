//! Handles on host processes that a later process with the same pid can
//! never be mistaken for: a pidfd, taken before the start time is compared,
//! so every action goes to the process that was checked.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use nix::sched::CloneFlags;

/// The start time (clock ticks since boot) of a process, field 22 of its stat.
pub fn start_time(pid: i32) -> Option<u64> {
    stat_fields(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?).map(|(_, start)| start)
}

/// A process's state letter and start time, from the `/proc` that
/// `proc_dir` (an fd of it) is: one of the node's PID namespace, for a
/// process whose own /proc is another's.
pub fn state_and_start_time_in(proc_dir: std::os::fd::BorrowedFd<'_>, pid: i32) -> Option<(char, u64)> {
    let fd = nix::fcntl::openat(
        proc_dir,
        format!("{pid}/stat").as_str(),
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ok()?;
    stat_fields(&std::io::read_to_string(std::fs::File::from(fd)).ok()?)
}

/// The state (field 3) and start time (field 22) of a stat line.
fn stat_fields(stat: &str) -> Option<(char, u64)> {
    // The command name may contain spaces and parentheses; fields follow the last ')'.
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    Some((state, rest.nth(18)?.parse().ok()?))
}

/// `pidfd_open(2)`: an fd that refers to `pid` and becomes readable when it exits.
pub fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: the syscall takes two integers and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a fresh fd that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A pidfd of `pid`, checked to be the process that started at `started`:
/// taken first, so a pid reused after the check cannot be the one it
/// refers to, and one reused before it fails it (ESRCH).
pub fn pidfd_open_checked(pid: i32, started: u64) -> std::io::Result<OwnedFd> {
    open_then_check(pid, started, || start_time(pid))
}

/// A pidfd of `pid`, taken before `now_started` reads its start time, which
/// must be `started`.
fn open_then_check(pid: i32, started: u64, now_started: impl FnOnce() -> Option<u64>) -> std::io::Result<OwnedFd> {
    let fd = pidfd_open(pid)?;
    if now_started() != Some(started) {
        return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(fd)
}

/// Whether a pidfd is readable, which it becomes once its process has
/// exited, reaped or not (a zombie nobody reaps is no live process).
pub fn readable(fd: impl AsFd) -> nix::Result<bool> {
    let mut fds = [nix::poll::PollFd::new(fd.as_fd(), nix::poll::PollFlags::POLLIN)];
    nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO).map(|n| n > 0)
}

/// A running process, pinned by a pidfd.
#[derive(Debug)]
pub struct Process {
    fd: OwnedFd,
    pid: i32,
}

/// The pidfd, for `setns` into the process's namespaces.
impl std::os::fd::AsFd for Process {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Process {
    /// Opens `pid` and checks that it is the process that started at
    /// `start_time`: the pidfd is taken first, so a pid reused after the
    /// check cannot be the one acted on, and one reused before it fails it.
    pub fn open(pid: i32, started: u64) -> std::io::Result<Process> {
        Ok(Process { fd: pidfd_open_checked(pid, started)?, pid })
    }

    /// As [`Process::open`], with the start time read from the `/proc`
    /// that `proc_dir` is ([`state_and_start_time_in`]).
    pub fn open_in(proc_dir: std::os::fd::BorrowedFd<'_>, pid: i32, started: u64) -> std::io::Result<Process> {
        let fd = open_then_check(pid, started, || state_and_start_time_in(proc_dir, pid).map(|(_, s)| s))?;
        Ok(Process { fd, pid })
    }

    /// The pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// True once the process has exited, reaped or not: a pidfd becomes
    /// readable then (a zombie nobody reaps is no live process).
    pub fn exited(&self) -> bool {
        readable(&self.fd).unwrap_or(false)
    }

    /// Sends `signal` to the process (`pidfd_send_signal`); ESRCH once it has exited.
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid pidfd, a signal number, no siginfo, no flags.
        let r = unsafe {
            libc::syscall(libc::SYS_pidfd_send_signal, self.fd.as_raw_fd(), signal as i32, std::ptr::null::<libc::siginfo_t>(), 0)
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Joins the process's namespaces named by `flags`, all at once
    /// (`setns` on a pidfd); ESRCH once it has exited.
    pub fn join(&self, flags: CloneFlags) -> nix::Result<()> {
        nix::sched::setns(self.fd.as_fd(), flags)
    }
}

/// How a process's PID namespace stands to the caller's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidNamespace {
    /// The caller's own.
    Same,
    /// A child of the caller's (the process is, e.g., a pod's PID 1).
    Child,
    /// Anything else: a sibling's, or one further down — a nested runtime's.
    Other,
}

/// `NS_GET_PARENT` (`_IO(0xb7, 0x2)`, Linux 4.9): the owning parent of a PID namespace.
const NS_GET_PARENT: libc::c_ulong = 0xb702;

fn ns_id(f: &std::fs::File) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = f.metadata()?;
    Ok((m.dev(), m.ino()))
}

/// The PID namespace `pid` is in, as the device and inode of its
/// `/proc/<pid>/ns/pid`: two processes share the namespace when these match.
/// An error when the process is gone (or a zombie, which has none).
pub fn pid_namespace_id(pid: i32) -> std::io::Result<(u64, u64)> {
    ns_id(&std::fs::File::open(format!("/proc/{pid}/ns/pid"))?)
}

/// Where `pid`'s PID namespace stands to the caller's (read from
/// `/proc/<pid>/ns/pid`); an error when the process is gone.
pub fn pid_namespace_of(pid: i32) -> std::io::Result<PidNamespace> {
    let ours = ns_id(&std::fs::File::open("/proc/self/ns/pid")?)?;
    let theirs = std::fs::File::open(format!("/proc/{pid}/ns/pid"))?;
    if ns_id(&theirs)? == ours {
        return Ok(PidNamespace::Same);
    }
    // SAFETY: the ioctl takes no argument and returns a new fd or -1.
    let parent = unsafe { libc::ioctl(theirs.as_raw_fd(), NS_GET_PARENT as _) };
    if parent < 0 {
        // EPERM: its parent is outside the caller's view, so not the caller's.
        return Ok(PidNamespace::Other);
    }
    // SAFETY: a fresh fd returned by the kernel, owned from here on.
    let parent = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(parent) });
    Ok(if ns_id(&parent)? == ours { PidNamespace::Child } else { PidNamespace::Other })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_in_its_own_pid_namespace() {
        assert_eq!(pid_namespace_of(std::process::id() as i32).unwrap(), PidNamespace::Same);
        assert!(pid_namespace_of(i32::MAX).is_err());
    }

    #[test]
    fn start_time_of_self_and_a_checked_open() {
        let me = std::process::id() as i32;
        let t = start_time(me).unwrap();
        assert!(start_time(i32::MAX).is_none());
        assert_eq!(Process::open(me, t).unwrap().pid(), me);
        assert_eq!(Process::open(me, t + 1).unwrap_err().raw_os_error(), Some(libc::ESRCH));
    }
}

#[cfg(test)]
mod zombie_tests {
    use super::*;

    #[test]
    fn a_zombie_has_exited() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        std::thread::sleep(std::time::Duration::from_millis(200));
        let p = Process::open(pid, start_time(pid).unwrap()).unwrap();
        assert!(p.exited());
        let _ = child.wait();
    }
}

//! Starting berth's helper processes (the monitor, a pod's init) from
//! berthd with `posix_spawn`: glibc clones with `CLONE_VM | CLONE_VFORK`, so
//! the start costs the same whatever berthd's size, where `fork` (what
//! `std::process::Command` falls back to once a `pre_exec` hook is set)
//! copies the page tables of a daemon with tens of MiB mapped and many
//! threads. File actions put each passed fd at its number in the child only:
//! the originals stay close-on-exec, so a helper spawned at the same time by
//! another thread inherits none of them.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::spawn::{posix_spawn, PosixSpawnAttr, PosixSpawnFileActions};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

/// A spawned helper; reap it with [`Spawned::wait`].
#[derive(Debug)]
pub struct Spawned {
    pid: Pid,
}

impl Spawned {
    /// Its pid.
    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// Waits for it to end.
    pub fn wait(self) -> nix::Result<WaitStatus> {
        loop {
            match waitpid(self.pid, None) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => return other,
            }
        }
    }
}

fn cstring(s: &OsStr) -> std::io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "a NUL byte in an argument"))
}

/// The variables of berthd's environment its helpers keep. Some helpers
/// live in a container's PID namespace for a while (a Created container's
/// init, an exec's init), where a container with CAP_SYS_PTRACE reads their
/// environ: berthd's own settings (a proxy's credentials, the service's
/// notify socket) are not theirs to pass on. None of these is secret, and
/// the rest is read by nothing in them. `GLIBC_TUNABLES` carries berthd's
/// malloc settings to them (see `agent/src/memory.rs`).
const HELPER_ENV: &[&str] =
    &["PATH", "GLIBC_TUNABLES", "RUST_BACKTRACE", "RUST_LIB_BACKTRACE", "DBUS_SYSTEM_BUS_ADDRESS", "TZ", "LANG", "LC_ALL"];

/// The environment berth's helpers start with: [`HELPER_ENV`] of this
/// process's.
pub fn helper_env() -> impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)> {
    std::env::vars_os().filter(|(k, _)| HELPER_ENV.iter().any(|n| k.as_bytes() == n.as_bytes()))
}

/// A `Command` for a helper run through std's process API (where
/// [`spawn`] does not fit: piped stdio, tokio): `program` with
/// [`helper_env`] only.
pub fn helper_command(program: &Path) -> std::process::Command {
    let mut command = std::process::Command::new(program);
    command.env_clear().envs(helper_env());
    command
}

/// Starts `program` with `args` and [`helper_env`], each `(fd, n)` of `fds`
/// as the child's fd `n`; stdin, stdout and stderr that `fds` does not name
/// are /dev/null.
pub fn spawn(program: &Path, args: &[&OsStr], fds: &[(BorrowedFd<'_>, RawFd)]) -> std::io::Result<Spawned> {
    let mut argv = vec![cstring(program.as_os_str())?];
    for a in args {
        argv.push(cstring(a)?);
    }
    let envp: Vec<CString> = helper_env()
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    // Every source is first copied above the targets (close-on-exec, in this
    // process), so that no dup2 of the child overwrites a source it still
    // needs, and a source already at its target number is still made
    // inheritable by a real dup2.
    let high: Vec<(OwnedFd, RawFd)> = fds
        .iter()
        .map(|(fd, n)| {
            let copy = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(64))?;
            // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
            Ok((unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(copy) }, *n))
        })
        .collect::<nix::Result<_>>()?;
    let mut actions = PosixSpawnFileActions::init()?;
    let null = c"/dev/null";
    for n in 0..3 {
        if !fds.iter().any(|(_, target)| *target == n) {
            let mode = if n == 0 { nix::fcntl::OFlag::O_RDONLY } else { nix::fcntl::OFlag::O_WRONLY };
            actions.add_open(n, null, mode, nix::sys::stat::Mode::empty())?;
        }
    }
    for (fd, n) in &high {
        actions.add_dup2(fd.as_raw_fd(), *n)?;
    }
    // As std::process::Command: signals unblocked, SIGPIPE back to its
    // default (Rust programs ignore it).
    let mut attr = PosixSpawnAttr::init()?;
    attr.set_sigmask(&SigSet::empty())?;
    let mut default = SigSet::empty();
    default.add(Signal::SIGPIPE);
    attr.set_sigdefault(&default)?;
    attr.set_flags(nix::spawn::PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK | nix::spawn::PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF)?;
    let program = argv[0].clone();
    let pid = posix_spawn(program.as_c_str(), &actions, &attr, &argv, &envp)?;
    drop(high);
    Ok(Spawned { pid })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsFd;

    #[test]
    fn passes_exactly_the_fds_asked_for() {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let (other_r, other_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let script = "echo out >&3; for n in 4 5 6 7 8 9; do test -e /proc/$$/fd/$n && echo leak $n >&3; done; exit 7";
        let child = spawn(Path::new("/bin/sh"), &[OsStr::new("-c"), OsStr::new(script)], &[(w.as_fd(), 3)]).unwrap();
        drop(w);
        let status = child.wait().unwrap();
        assert!(matches!(status, WaitStatus::Exited(_, 7)), "{status:?}");
        let mut out = String::new();
        std::fs::File::from(r).read_to_string(&mut out).unwrap();
        assert_eq!(out, "out\n", "fd 3 is the pipe, nothing else was inherited");
        drop((other_r, other_w));
    }
}

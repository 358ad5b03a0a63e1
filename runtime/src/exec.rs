//! `berth-monitor exec`: runs one command in a running container, as
//! ExecSync wants: the container's namespaces, cgroup, user, env and working
//! directory. It is a short-lived child of berthd, never of the monitor.
//!
//! The helper joins the namespaces, then forks (a PID namespace applies to
//! children only); the child execs the command and dies with the helper
//! (PDEATHSIG), so killing the helper on a timeout kills the command.

use std::os::fd::AsFd;
use std::path::PathBuf;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

use crate::init::{self, InitError, ANN_CGROUP_PROCS, ANN_USER};

/// The line prefix on stderr that marks a failure to start the command
/// (as opposed to the command's own output), followed by an encoded [`InitError`].
pub const ERROR_MARKER: &str = "berth-exec-error\t";
/// The helper's exit code when the command could not be started.
pub const SETUP_FAILED: i32 = 255;

/// Arguments of `berth-monitor exec`.
#[derive(Debug, Clone)]
pub struct ExecArgs {
    /// The container's bundle (its config.json supplies user, env, cwd).
    pub bundle: PathBuf,
    /// The container init's host pid.
    pub pid: i32,
    /// Its start time (from /proc/<pid>/stat), guarding against pid reuse.
    pub start_time: u64,
    /// The command.
    pub args: Vec<String>,
}

/// The start time (clock ticks since boot) of a process, field 22 of its stat.
pub fn proc_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn fail(e: InitError) -> i32 {
    eprintln!("{ERROR_MARKER}{}", e.encode());
    SETUP_FAILED
}

/// Runs the helper; returns its exit code (the command's, or 128 + signal).
pub fn main(args: ExecArgs) -> i32 {
    match run(&args) {
        Ok(code) => code,
        Err(e) => fail(e),
    }
}

fn setup(step: &str, e: impl std::fmt::Display) -> InitError {
    InitError::Setup(format!("{step}: {e}"))
}

fn run(args: &ExecArgs) -> Result<i32, InitError> {
    init::make_non_dumpable();
    let spec: oci_spec::runtime::Spec = std::fs::read(args.bundle.join("config.json"))
        .map_err(|e| setup("reading config.json", e))
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| setup("parsing config.json", e)))?;
    if proc_start_time(args.pid) != Some(args.start_time) {
        return Err(InitError::Setup("the container is not running".into()));
    }
    let annotation = |k: &str| spec.annotations().as_ref().and_then(|a| a.get(k)).cloned().filter(|s| !s.is_empty());
    // Namespace fds first: after the mount namespace switch /proc is the container's.
    let mut fds = Vec::new();
    for (name, flag) in [
        ("ipc", nix::sched::CloneFlags::CLONE_NEWIPC),
        ("uts", nix::sched::CloneFlags::CLONE_NEWUTS),
        ("net", nix::sched::CloneFlags::CLONE_NEWNET),
        ("pid", nix::sched::CloneFlags::CLONE_NEWPID),
        ("cgroup", nix::sched::CloneFlags::CLONE_NEWCGROUP),
        ("mnt", nix::sched::CloneFlags::CLONE_NEWNS),
    ] {
        let path = format!("/proc/{}/ns/{name}", args.pid);
        let fd = nix::fcntl::open(path.as_str(), OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).map_err(|e| setup(&path, e))?;
        fds.push((name, fd, flag));
    }
    if let Some(procs) = annotation(ANN_CGROUP_PROCS) {
        for f in procs.split(':') {
            std::fs::write(f, "0").map_err(|e| setup(&format!("joining cgroup {f}"), e))?;
        }
    }
    for (name, fd, flag) in &fds {
        nix::sched::setns(fd.as_fd(), *flag).map_err(|e| setup(&format!("setns {name}"), e))?;
    }
    drop(fds);
    let process = spec.process().as_ref().ok_or_else(|| InitError::Setup("spec has no process".into()))?;

    // SAFETY: the helper is single-threaded.
    match unsafe { fork() }.map_err(|e| setup("fork", e))? {
        ForkResult::Child => {
            // SAFETY: prctl with integer arguments.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
            let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()).map(crate::security::compile);
            let strict = annotation(init::ANN_GROUPS_STRICT).is_some();
            let e = match seccomp.transpose() {
                Ok(filter) => child(process, annotation(ANN_USER).as_deref(), strict, &args.args, filter.as_ref()),
                Err(e) => e,
            };
            std::process::exit(fail(e));
        }
        ForkResult::Parent { child } => loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(setup("wait", e)),
            }
        },
    }
}

fn child(process: &oci_spec::runtime::Process, user_name: Option<&str>, strict: bool, args: &[String], seccomp: Option<&libseccomp::ScmpFilterContext>) -> InitError {
    if nix::unistd::getppid().as_raw() == 1 {
        return InitError::Setup("helper died".into());
    }
    crate::monitor::reset_signals();
    // The exec'd process is limited like the container's own.
    if let Err(e) = init::set_rlimits_and_oom(process) {
        return e;
    }
    let user = match crate::user::resolve(process.user(), user_name, strict) {
        Ok(u) => u,
        Err(e) => return e,
    };
    let env = process.env().clone().unwrap_or_default();
    let Some(arg0) = args.first() else { return InitError::Setup("no command given".into()) };
    let executable = match init::find_executable(arg0, &env) {
        Ok(p) => p,
        Err(e) => return e,
    };
    if let Err(e) = nix::unistd::chdir(process.cwd()) {
        return InitError::BadCwd(process.cwd().display().to_string(), e.to_string());
    }
    if let Err(e) = init::confine(process, &user, seccomp) {
        return e;
    }
    if let Err(e) = nix::unistd::chdir(process.cwd()) {
        return InitError::BadCwd(process.cwd().display().to_string(), e.to_string());
    }
    nix::sys::stat::umask(Mode::from_bits_truncate(process.user().umask().unwrap_or(0o022)));
    // Dies with the helper: berthd kills the helper on an ExecSync timeout.
    init::exec_final(&executable, args, &env, libc::SIGKILL)
}

#[cfg(test)]
mod tests {
    #[test]
    fn start_time_of_self() {
        assert!(super::proc_start_time(std::process::id() as i32).is_some());
        assert!(super::proc_start_time(i32::MAX).is_none());
    }
}

//! `berth-monitor exec`: runs one command in a running container, as
//! ExecSync wants: the container's namespaces, cgroup, user, env and working
//! directory. It is a short-lived child of berthd, never of the monitor.
//!
//! The helper joins the namespaces, then forks (a PID namespace applies to
//! children only); the child execs the command and dies with the helper
//! (PDEATHSIG), so killing the helper on a timeout kills the command.

use std::os::fd::AsFd;
use std::path::PathBuf;

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
    /// Run it on a pseudo-terminal from the container's devpts; the helper
    /// relays stdin/stdout and reads `cols rows` lines from fd 3 to resize.
    pub tty: bool,
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
    // The pidfd first, then the start-time check: every later step acts on
    // the container's init, never on a process that reused its pid.
    let target =
        crate::process::Process::open(args.pid, args.start_time).map_err(|_| InitError::Setup("the container is not running".into()))?;
    let annotation = |k: &str| spec.annotations().as_ref().and_then(|a| a.get(k)).cloned().filter(|s| !s.is_empty());
    if let Some(procs) = annotation(ANN_CGROUP_PROCS) {
        for f in procs.split(':') {
            std::fs::write(f, "0").map_err(|e| setup(&format!("joining cgroup {f}"), e))?;
        }
    }
    use nix::sched::CloneFlags as F;
    // All at once: after the mount namespace switch /proc is the container's.
    target
        .join(F::CLONE_NEWIPC | F::CLONE_NEWUTS | F::CLONE_NEWNET | F::CLONE_NEWPID | F::CLONE_NEWCGROUP | F::CLONE_NEWNS)
        .map_err(|e| setup("joining the container's namespaces", e))?;
    drop(target);
    let process = spec.process().as_ref().ok_or_else(|| InitError::Setup("spec has no process".into()))?;
    // After the mount namespace switch, /dev/ptmx is the container's own
    // devpts instance: the terminal lives inside the container.
    let pty = if args.tty { Some(crate::tty::open_pty()?) } else { None };

    // SAFETY: the helper is single-threaded.
    match unsafe { fork() }.map_err(|e| setup("fork", e))? {
        ForkResult::Child => {
            if let Some((master, slave_path)) = pty {
                drop(master);
                if let Err(e) = crate::tty::attach_terminal(&slave_path, None) {
                    std::process::exit(fail(e));
                }
            }
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
        ForkResult::Parent { child } => match pty {
            Some((master, _)) => Ok(relay_terminal(child, master)),
            None => loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                    Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                    Ok(_) => continue,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(setup("wait", e)),
                }
            },
        },
    }
}

/// In the helper: copies stdin to the terminal and the terminal to stdout,
/// applies `cols rows` lines from fd 3 as window sizes, and returns the
/// command's exit code once it has exited and its output is drained.
fn relay_terminal(child: nix::unistd::Pid, master: std::os::fd::OwnedFd) -> i32 {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::BorrowedFd;
    // SAFETY: fds 0 and 3 belong to this process for its whole life.
    let (stdin, resize) = unsafe { (BorrowedFd::borrow_raw(0), BorrowedFd::borrow_raw(3)) };
    let resize_ok = nix::fcntl::fcntl(resize, nix::fcntl::FcntlArg::F_GETFD).is_ok();
    let mut stdin_open = true;
    let mut resize_open = resize_ok;
    let mut pending = Vec::new();
    let mut code = None;
    let mut buf = [0u8; 16 * 1024];
    loop {
        if code.is_none() {
            match waitpid(child, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, c)) => code = Some(c),
                Ok(WaitStatus::Signaled(_, sig, _)) => code = Some(128 + sig as i32),
                _ => {}
            }
        }
        let mut fds = vec![PollFd::new(master.as_fd(), PollFlags::POLLIN)];
        if stdin_open {
            fds.push(PollFd::new(stdin, PollFlags::POLLIN));
        }
        if resize_open {
            fds.push(PollFd::new(resize, PollFlags::POLLIN));
        }
        let timeout = if code.is_some() { PollTimeout::from(50u16) } else { PollTimeout::from(200u16) };
        let n = poll(&mut fds, timeout).unwrap_or(0);
        let ready: Vec<bool> = fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect();
        drop(fds);
        if n == 0 && code.is_some() {
            return code.unwrap_or(255);
        }
        if ready[0] {
            match nix::unistd::read(&master, &mut buf) {
                Ok(0) | Err(_) if code.is_some() => return code.unwrap_or(255),
                Ok(0) | Err(_) => {}
                Ok(k) => {
                    if nix::unistd::write(std::io::stdout(), &buf[..k]).is_err() {
                        let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGHUP);
                    }
                }
            }
        }
        let mut i = 1;
        if stdin_open {
            if ready.get(i).copied().unwrap_or(false) {
                match nix::unistd::read(stdin, &mut buf) {
                    Ok(0) | Err(_) => {
                        stdin_open = false;
                        // End of input on a terminal: ^D.
                        let _ = nix::unistd::write(&master, &[4u8]);
                    }
                    Ok(k) => {
                        let _ = nix::unistd::write(&master, &buf[..k]);
                    }
                }
            }
            i += 1;
        }
        if resize_open && ready.get(i).copied().unwrap_or(false) {
            match nix::unistd::read(resize, &mut buf) {
                Ok(0) | Err(_) => resize_open = false,
                Ok(k) => {
                    pending.extend_from_slice(&buf[..k]);
                    while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=pos).collect();
                        let text = String::from_utf8_lossy(&line);
                        let mut it = text.split_whitespace().filter_map(|x| x.parse::<u16>().ok());
                        if let (Some(cols), Some(rows)) = (it.next(), it.next()) {
                            crate::tty::set_window_size(&master, cols, rows);
                        }
                    }
                }
            }
        }
    }
}

fn child(
    process: &oci_spec::runtime::Process,
    user_name: Option<&str>,
    strict: bool,
    args: &[String],
    seccomp: Option<&libseccomp::ScmpFilterContext>,
) -> InitError {
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
    if let Err(e) = init::chdir_inside(process.cwd()) {
        return e;
    }
    if let Err(e) = init::confine(process, &user, seccomp) {
        return e;
    }
    // Again as the final user, whose permissions on the directory count.
    if let Err(e) = init::chdir_inside(process.cwd()) {
        return e;
    }
    nix::sys::stat::umask(Mode::from_bits_truncate(process.user().umask().unwrap_or(0o022)));
    // Dies with the helper: berthd kills the helper on an ExecSync timeout.
    init::exec_final(&executable, args, &env, libc::SIGKILL)
}

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

use super::init;
use crate::annotations;
use crate::channel;
use crate::message::{ExecControl, ExecReport, InitError};

/// The helper's fd on which a failure to start the command is reported
/// ([`ExecReport`]); closed on exec, so EOF means the command ran.
pub const REPORT_FD: i32 = 3;
/// A TTY helper's fd from which window sizes arrive ([`ExecControl`]).
pub const RESIZE_FD: i32 = 4;
/// The helper's exit code when the command could not be started (berthd
/// reads the reason on [`REPORT_FD`]; a command may exit 255 itself).
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
    /// relays stdin/stdout and takes window sizes from [`RESIZE_FD`].
    pub tty: bool,
}

/// Reports why the command could not be started on [`REPORT_FD`]; never on
/// stderr, which is the command's.
fn fail(e: InitError) -> i32 {
    // SAFETY: fd 3 was handed to the helper for this report and stays open
    // for the process's life; ManuallyDrop keeps this borrow from closing it.
    let mut report = std::mem::ManuallyDrop::new(unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(REPORT_FD) });
    let _ = channel::send(&mut *report, &ExecReport::Failed(e));
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
    InitError::setup(step, e)
}

fn run(args: &ExecArgs) -> Result<i32, InitError> {
    init::make_non_dumpable();
    let spec: oci_spec::runtime::Spec = std::fs::read(args.bundle.join("config.json"))
        .map_err(|e| setup("reading config.json", e))
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| setup("parsing config.json", e)))?;
    // The pidfd first, then the start-time check: every later step acts on
    // the container's init, never on a process that reused its pid.
    let target =
        crate::pidfd::Process::open(args.pid, args.start_time).map_err(|_| InitError::Setup("the container is not running".into()))?;
    init::join_cgroup(&spec)?;
    use nix::sched::CloneFlags as F;
    // All at once: after the mount namespace switch /proc is the container's.
    target
        .join(F::CLONE_NEWIPC | F::CLONE_NEWUTS | F::CLONE_NEWNET | F::CLONE_NEWPID | F::CLONE_NEWCGROUP | F::CLONE_NEWNS)
        .map_err(|e| setup("joining the container's namespaces", e))?;
    // The pod's user namespace last, as the init did: the mount namespace
    // belongs to the node's, and joining it needs the node's privileges.
    if crate::rootfs::user_namespace(&spec)?.is_some() {
        crate::userns::enter(target.as_fd()).map_err(|e| setup("joining the pod's user namespace", e))?;
    }
    drop(target);
    let process = spec.process().as_ref().ok_or_else(|| InitError::Setup("spec has no process".into()))?;
    // After the mount namespace switch, /dev/ptmx is the container's own
    // devpts instance: the terminal lives inside the container.
    let pty = if args.tty { Some(super::tty::open_pty()?) } else { None };

    // SAFETY: the helper is single-threaded.
    match unsafe { fork() }.map_err(|e| setup("fork", e))? {
        ForkResult::Child => exec_init(
            &spec,
            process,
            args,
            pty.map(|(master, slave)| {
                drop(master);
                slave
            }),
        ),
        ForkResult::Parent { child } => {
            forward_sigterm_to(child);
            match pty {
                Some((master, _)) => Ok(relay_terminal(child, master)),
                None => loop {
                    match waitpid(child, None) {
                        Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                        Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                        Ok(_) => continue,
                        Err(nix::errno::Errno::EINTR) => forward_pending_sigterm(),
                        Err(e) => return Err(setup("wait", e)),
                    }
                },
            }
        }
    }
}

/// Set by the helper's SIGTERM handler (berthd's "stop this exec").
static SIGTERM_PENDING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// The exec init the helper forwards SIGTERM to.
static EXEC_INIT: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn on_sigterm(_: libc::c_int) {
    SIGTERM_PENDING.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// berthd ends an exec (its timeout) with SIGTERM to the helper, which
/// passes it on to the exec init; the handler interrupts the helper's wait
/// (no SA_RESTART) so it does so at once.
fn forward_sigterm_to(child: nix::unistd::Pid) {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    EXEC_INIT.store(child.as_raw(), std::sync::atomic::Ordering::SeqCst);
    let action = SigAction::new(SigHandler::Handler(on_sigterm), SaFlags::empty(), SigSet::empty());
    // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
    let _ = unsafe { sigaction(Signal::SIGTERM, &action) };
}

/// Forwards a SIGTERM the helper received, once.
fn forward_pending_sigterm() {
    if SIGTERM_PENDING.swap(false, std::sync::atomic::Ordering::SeqCst) {
        let pid = EXEC_INIT.load(std::sync::atomic::Ordering::SeqCst);
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
    }
}

/// The exec init: the first process of the exec in the container's PID
/// namespace, a child subreaper there. It forks the command, then waits:
/// when the command exits it exits with its status; on SIGTERM (from the
/// helper, or as the helper's death signal) it kills every process of the
/// exec's tree — orphans are reparented to it, so none escapes — reaps
/// them, and exits. It keeps only CAP_KILL once the command is forked, and
/// holds none of the command's stdio.
fn exec_init(spec: &oci_spec::runtime::Spec, process: &oci_spec::runtime::Process, args: &ExecArgs, pty_slave: Option<String>) -> ! {
    use nix::sys::signal::{SigSet, Signal};
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1);
    }
    let mut waited = SigSet::empty();
    waited.add(Signal::SIGTERM);
    waited.add(Signal::SIGCHLD);
    let _ = waited.thread_block();
    if nix::unistd::getppid().as_raw() == 1 {
        // The helper died before the death signal was armed.
        std::process::exit(fail(InitError::Setup("helper died".into())));
    }
    // SAFETY: single-threaded.
    let command = match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            if let Some(slave) = pty_slave {
                if let Err(e) = super::tty::attach_terminal(&slave, None) {
                    std::process::exit(fail(e));
                }
            }
            let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()).map(super::security::compile);
            let strict = annotations::get(spec, annotations::GROUPS_STRICT).is_some();
            let e = match seccomp.transpose() {
                Ok(filter) => child(process, annotations::get(spec, annotations::USER), strict, &args.args, filter.as_ref()),
                Err(e) => e,
            };
            std::process::exit(fail(e));
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => std::process::exit(fail(setup("fork", e))),
    };
    for fd in 0..3 {
        let _ = nix::unistd::close(fd);
    }
    // It stays in the container's PID namespace for the exec's life, where
    // a container with CAP_SYS_PTRACE may attach to it: it holds no more
    // than it needs to wait, reap and kill the exec's tree.
    if let Err(e) =
        keep_only_cap_kill().and_then(|()| super::security::load_allow_list(&[super::security::WAIT_AND_REAP, EXEC_INIT_SYSCALLS]))
    {
        let _ = nix::sys::signal::kill(command, nix::sys::signal::Signal::SIGKILL);
        std::process::exit(fail(e));
    }
    // Nor any fd: the report pipe to berthd (the command has its own copy)
    // and a TTY exec's resize pipe are the helper's to use.
    let _ = nix::unistd::close(REPORT_FD);
    let _ = nix::unistd::close(RESIZE_FD);
    loop {
        match waited.wait() {
            Ok(Signal::SIGTERM) => {
                kill_descendants();
                // SAFETY: _exit ends the process without running anything else.
                unsafe { libc::_exit(128 + libc::SIGKILL) }
            }
            _ => loop {
                match waitpid(nix::unistd::Pid::from_raw(-1), Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(pid, code)) if pid == command => unsafe { libc::_exit(code) },
                    Ok(WaitStatus::Signaled(pid, sig, _)) if pid == command => unsafe { libc::_exit(128 + sig as i32) },
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => {}
                }
            },
        }
    }
}

/// The syscalls the exec init makes once the command is forked, beyond
/// waiting and reaping: list /proc, kill, sleep, allocate.
const EXEC_INIT_SYSCALLS: &[&str] = &[
    "kill",
    "getpid",
    "openat",
    "open",
    "getdents64",
    "read",
    "statx",
    "newfstatat",
    "fstat",
    "lseek",
    "clock_nanosleep",
    "nanosleep",
    "mremap",
    "madvise",
    "futex",
    "sched_yield",
];

/// Drops every capability but CAP_KILL (which killing the exec's tree
/// needs), and sets no_new_privs.
fn keep_only_cap_kill() -> Result<(), InitError> {
    use caps::{CapSet, Capability};
    let kill: std::collections::HashSet<Capability> = [Capability::CAP_KILL].into_iter().collect();
    for c in caps::all() {
        if c != Capability::CAP_KILL {
            caps::drop(None, CapSet::Bounding, c).map_err(|e| setup("drop capabilities", e))?;
        }
    }
    caps::clear(None, CapSet::Inheritable).map_err(|e| setup("drop capabilities", e))?;
    caps::clear(None, CapSet::Ambient).map_err(|e| setup("drop capabilities", e))?;
    caps::set(None, CapSet::Effective, &kill).map_err(|e| setup("drop capabilities", e))?;
    caps::set(None, CapSet::Permitted, &kill).map_err(|e| setup("drop capabilities", e))?;
    super::security::no_new_privs()
}

/// Children of this process, from /proc (the PID namespace's own).
fn children() -> Vec<nix::unistd::Pid> {
    let me = nix::unistd::getpid().as_raw();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        // After the command name, which may hold spaces and parentheses:
        // state, then the parent pid.
        let ppid = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().nth(1)).and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(me) {
            out.push(nix::unistd::Pid::from_raw(pid));
        }
    }
    out
}

/// Kills and reaps every descendant: children first; their orphans come to
/// this subreaper and are killed in the next round. Bounded by 5 seconds.
fn kill_descendants() {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let kids = children();
        if kids.is_empty() || std::time::Instant::now() > deadline {
            return;
        }
        for k in kids {
            let _ = nix::sys::signal::kill(k, nix::sys::signal::Signal::SIGKILL);
        }
        while let Ok(s) = waitpid(nix::unistd::Pid::from_raw(-1), Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            if s == WaitStatus::StillAlive {
                break;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// In the helper: copies stdin to the terminal and the terminal to stdout,
/// applies the window sizes arriving on [`RESIZE_FD`], and returns the
/// command's exit code once it has exited and its output is drained.
fn relay_terminal(child: nix::unistd::Pid, master: std::os::fd::OwnedFd) -> i32 {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::BorrowedFd;
    // SAFETY: fds 0 and RESIZE_FD belong to this process for its whole life.
    let (stdin, resize) = unsafe { (BorrowedFd::borrow_raw(0), BorrowedFd::borrow_raw(RESIZE_FD)) };
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
        forward_pending_sigterm();
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
                    loop {
                        match channel::take::<ExecControl>(&mut pending) {
                            Ok(Some(ExecControl::Resize { cols, rows })) => super::tty::set_window_size(&master, cols, rows),
                            Ok(None) => break,
                            // Garbage on a control channel: stop listening to it.
                            Err(_) => {
                                resize_open = false;
                                break;
                            }
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
    let user = match super::user::resolve(process.user(), user_name, strict) {
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

//! `berth-monitor exec`: runs one command in a running container, as
//! ExecSync wants: the container's namespaces, cgroup, user, env and working
//! directory. It is a short-lived child of berthd, never of the monitor.
//!
//! Three processes: the helper joins every namespace but the PID one and
//! prepares what needs the node's privileges (the user, the executable, the
//! seccomp filter, the terminal); a short-lived child of it joins the PID
//! namespace, takes on the container's user, capabilities, no_new_privs and
//! filter, and only then starts the exec's init there as the helper's child
//! (`CLONE_PARENT`). So no process of the exec is ever in the container's
//! PID namespace with more than the container holds: a container that may
//! ptrace can attach to a process the moment it is born there (pids come in
//! order), and would hold whatever it was born with. The exec's init forks
//! the command and dies with the helper (PDEATHSIG), and it kills the
//! command's tree when it does, so killing the helper on a timeout ends the
//! exec.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

use super::init;
use crate::channel;
use crate::message::{ExecControl, ExecReport, ExecStarted, InitError};

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

/// What the helper prepared for the exec, with the node's privileges.
struct Prepared {
    user: super::user::ResolvedUser,
    executable: std::ffi::CString,
    env: Vec<String>,
    seccomp: Option<libseccomp::ScmpFilterContext>,
}

fn run(args: &ExecArgs) -> Result<i32, InitError> {
    init::make_non_dumpable();
    let spec: oci_spec::runtime::Spec = std::fs::read(args.bundle.join("config.json"))
        .map_err(|e| setup("reading config.json", e))
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| setup("parsing config.json", e)))?;
    let process = spec.process().as_ref().ok_or_else(|| InitError::Setup("spec has no process".into()))?;
    // The pidfd first, then the start-time check: every later step acts on
    // the container's init, never on a process that reused its pid.
    let target =
        crate::pidfd::Process::open(args.pid, args.start_time).map_err(|_| InitError::Setup("the container is not running".into()))?;
    // The exec's init sees the helper as its parent only where they share
    // a PID namespace (a container of the node's); elsewhere as pid 0.
    let same_pid_ns = crate::pidfd::pid_namespace_of(args.pid).map_err(|e| setup("the container's PID namespace", e))?
        == crate::pidfd::PidNamespace::Same;
    // Inherited by every process of the exec. Written while /proc is the
    // node's: in the container's /proc the helper has no /proc/self.
    init::set_oom_score_adj(process);
    init::set_apparmor_onexec(process)?;
    let cmdline_area = crate::zygote::arg_area();
    init::join_cgroup(&spec)?;
    // The node's /proc, from which a timed-out exec's tree is ended
    // (end_tree); opened while /proc is still the node's.
    let host_proc = nix::fcntl::open("/proc", OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| setup("open the node's /proc", e))?;
    use nix::sched::CloneFlags as F;
    // All at once: after the mount namespace switch /proc is the container's.
    // Not the PID namespace: the helper's children would be born into it.
    target
        .join(F::CLONE_NEWIPC | F::CLONE_NEWUTS | F::CLONE_NEWNET | F::CLONE_NEWCGROUP | F::CLONE_NEWNS)
        .map_err(|e| setup("joining the container's namespaces", e))?;
    let userns = crate::rootfs::user_namespace(&spec)?;
    let user = super::user::resolve(&spec, process)?;
    let env: Vec<String> = process.env().clone().unwrap_or_default();
    let arg0 = args.args.first().ok_or_else(|| InitError::Setup("no command given".into()))?;
    let executable = init::find_executable(arg0, &env)?;
    let seccomp = super::security::compile_spec(&spec)?;
    let prepared = Prepared { user, executable, env, seccomp };
    // After the mount namespace switch, /dev/ptmx is the container's own
    // devpts instance: the terminal lives inside the container. The slave
    // is opened here, for the command may not be allowed to open it; in a
    // user namespace it belongs to the pod's root, as if that had opened it.
    let pty = match args.tty {
        true => {
            let (master, path) = super::tty::open_pty()?;
            Some((master, super::tty::open_slave(&path, userns.as_ref().map(|m| m.host_root()))?))
        }
        false => None,
    };
    let (pid_r, pid_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| setup("pipe", e))?;
    // SAFETY: the helper is single-threaded.
    let starter = match unsafe { fork() }.map_err(|e| setup("fork", e))? {
        ForkResult::Child => {
            // First: through it lies the node's whole filesystem, and the
            // exec's init, which the container can see, is born from here.
            drop(host_proc);
            drop(pid_r);
            let slave = pty.map(|(master, slave)| {
                drop(master);
                slave
            });
            let helper = nix::unistd::getppid().as_raw();
            let parent = if same_pid_ns { helper } else { 0 };
            let e = start_exec_init(&target, userns.is_some(), process, args, &prepared, slave, pid_w, helper, parent, cmdline_area);
            // SAFETY: _exit in a forked child; the failure is on REPORT_FD.
            unsafe { libc::_exit(fail(e)) }
        }
        ForkResult::Parent { child } => child,
    };
    drop(pid_w);
    drop(target);
    let pty = pty.map(|(master, _)| master);
    // The exec's init holds this pipe's write end from its birth in the
    // container's namespace until its first step: bounded.
    let exec_init = channel::recv_before::<ExecStarted>(pid_r.as_fd(), std::time::Instant::now() + std::time::Duration::from_secs(30));
    let _ = waitpid(starter, None);
    // No pid: the starter failed and reported why on REPORT_FD.
    let Ok(Some(ExecStarted { pid })) = exec_init else { return Ok(SETUP_FAILED) };
    let child = nix::unistd::Pid::from_raw(pid);
    forward_sigterm_to(child, host_proc);
    match pty {
        Some(master) => Ok(relay_terminal(child, master)),
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

/// In the helper's short-lived child: joins the container's PID namespace
/// (and the pod's user namespace), takes on everything the container's
/// process holds, then starts the exec's init as the helper's child and
/// sends its pid on `pid_w`. Returns only on failure. `helper`: the
/// helper's pid; `parent`: the same as the exec's init will see it;
/// `cmdline_area`: the helper's (and so this process's) argument area.
#[allow(clippy::too_many_arguments)]
fn start_exec_init(
    target: &crate::pidfd::Process,
    userns: bool,
    process: &oci_spec::runtime::Process,
    args: &ExecArgs,
    prepared: &Prepared,
    slave: Option<OwnedFd>,
    pid_w: OwnedFd,
    helper: i32,
    parent: i32,
    cmdline_area: Option<(usize, usize)>,
) -> InitError {
    // The exec's init, which the container can see, inherits this; the
    // helper keeps its own, by which a restarted berthd finds it.
    crate::zygote::show_cmdline_as(cmdline_area, &["berth-monitor", "exec"]);
    // Dies with the helper: the exec's init it is about to start takes it
    // for the parent its own death signal watches.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if nix::unistd::getppid().as_raw() != helper {
        return InitError::Setup("helper died".into());
    }
    let confined = (|| {
        target.join(nix::sched::CloneFlags::CLONE_NEWPID).map_err(|e| setup("joining the container's PID namespace", e))?;
        // The pod's user namespace last, as the init did: the PID namespace
        // belongs to the node's, and joining it needs the node's privileges.
        if userns {
            crate::userns::enter(target.as_fd()).map_err(|e| setup("joining the pod's user namespace", e))?;
        }
        init::set_rlimits(process)?;
        init::confine(process, &prepared.user, prepared.seccomp.as_ref())
    })();
    if let Err(e) = confined {
        return e;
    }
    // SAFETY: this process is single-threaded.
    match unsafe { super::clone::fork_for_parent() } {
        Err(e) => setup("starting the exec's init (clone; the container's seccomp profile must allow it)", e),
        Ok(ForkResult::Child) => {
            drop(pid_w);
            exec_init(process, args, prepared, slave, parent)
        }
        Ok(ForkResult::Parent { child }) => match channel::send(&mut std::fs::File::from(pid_w), &ExecStarted { pid: child.as_raw() }) {
            // SAFETY: _exit in a forked child: its work is done.
            Ok(()) => unsafe { libc::_exit(0) },
            Err(e) => setup("reporting the exec's init", e),
        },
    }
}

/// Set by the helper's SIGTERM handler (berthd's "stop this exec").
static SIGTERM_PENDING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// The exec init the helper forwards SIGTERM to.
static EXEC_INIT: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);
/// The node's /proc (an `O_PATH` fd the helper keeps for its life).
static HOST_PROC: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn on_sigterm(_: libc::c_int) {
    SIGTERM_PENDING.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// berthd ends an exec (its timeout) with SIGTERM to the helper, which
/// ends the exec's tree and passes it on to the exec init; the handler
/// interrupts the helper's wait (no SA_RESTART) so it does so at once.
fn forward_sigterm_to(child: nix::unistd::Pid, host_proc: OwnedFd) {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    use std::os::fd::IntoRawFd;
    EXEC_INIT.store(child.as_raw(), std::sync::atomic::Ordering::SeqCst);
    HOST_PROC.store(host_proc.into_raw_fd(), std::sync::atomic::Ordering::SeqCst);
    let action = SigAction::new(SigHandler::Handler(on_sigterm), SaFlags::empty(), SigSet::empty());
    // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
    let _ = unsafe { sigaction(Signal::SIGTERM, &action) };
}

/// Acts on a SIGTERM the helper received, once: ends the exec's tree and
/// passes the signal on to the exec init, which exits. Only while the init
/// is not reaped: its pid could name another process after that.
fn forward_pending_sigterm() {
    if SIGTERM_PENDING.swap(false, std::sync::atomic::Ordering::SeqCst) {
        let pid = nix::unistd::Pid::from_raw(EXEC_INIT.load(std::sync::atomic::Ordering::SeqCst));
        let proc = HOST_PROC.load(std::sync::atomic::Ordering::SeqCst);
        match proc {
            // SAFETY: the fd was stored by forward_sigterm_to and is never closed.
            0.. => end_tree(unsafe { std::os::fd::BorrowedFd::borrow_raw(proc) }, pid),
            _ => drop(nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)),
        }
    }
}

/// Kills every live descendant of the exec init `init`, as the helper:
/// root on the node, so a process of the exec that became another user (a
/// setuid binary without no_new_privs) is not out of reach, as it is of the
/// init's container credentials. The init, a child subreaper, is stopped
/// meanwhile: the orphans of killed processes come to it, not to the
/// container's PID 1, and it cannot exit on its command's death before the
/// rest are dead (it then reaps them all). Rounds until none is left, for
/// up to 2 s. The init is signalled by pid: it is the helper's child, not
/// reaped yet (the caller's part), so its pid is its own. The others by
/// pidfd, checked against the start time listed: a pid that ended and was
/// taken by another process in between is not signalled.
fn end_tree(proc: std::os::fd::BorrowedFd<'_>, init: nix::unistd::Pid) {
    use nix::sys::signal::{kill, Signal};
    let _ = kill(init, Signal::SIGSTOP);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while !matches!(crate::pidfd::state_and_start_time_in(proc, init.as_raw()), Some(('T' | 't' | 'Z' | 'X', _)) | None) {
        if std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    loop {
        let mut live = Vec::new();
        descendants(proc, init.as_raw(), &mut live, 0);
        if live.is_empty() || std::time::Instant::now() > deadline {
            let _ = kill(init, Signal::SIGTERM);
            let _ = kill(init, Signal::SIGCONT);
            return;
        }
        for (pid, started) in live {
            if let Ok(p) = crate::pidfd::Process::open_in(proc, pid, started) {
                let _ = p.signal(Signal::SIGKILL);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Adds `pid`'s descendants that have not exited yet to `out`, as (pid,
/// start time), read from the node's /proc: every thread's `children`.
fn descendants(proc: std::os::fd::BorrowedFd<'_>, pid: i32, out: &mut Vec<(i32, u64)>, depth: usize) {
    // A tree deeper than this is not an exec's; what is left of it is
    // found in the next round, once its parents are gone.
    if depth > 64 {
        return;
    }
    let Ok(tasks) = nix::dir::Dir::openat(proc, format!("{pid}/task").as_str(), OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
    else {
        return;
    };
    let tids: Vec<String> =
        tasks.into_iter().flatten().filter_map(|e| e.file_name().to_str().ok().filter(|n| !n.starts_with('.')).map(String::from)).collect();
    for tid in tids {
        let path = format!("{pid}/task/{tid}/children");
        let Ok(fd) = nix::fcntl::openat(proc, path.as_str(), OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()) else { continue };
        let text = std::io::read_to_string(std::fs::File::from(fd)).unwrap_or_default();
        for child in text.split_whitespace().filter_map(|c| c.parse::<i32>().ok()) {
            match crate::pidfd::state_and_start_time_in(proc, child) {
                Some(('Z', _)) | None => {}
                Some((_, started)) => {
                    out.push((child, started));
                    descendants(proc, child, out, depth + 1);
                }
            }
        }
    }
}

/// The exec init: the first process of the exec in the container's PID
/// namespace, a child subreaper there, born holding what the container's
/// process holds. It forks the command, then waits: when the command exits
/// it exits with its status; on SIGTERM (from the helper, or as the
/// helper's death signal) it kills every process of the exec's tree —
/// orphans are reparented to it, so none escapes — reaps them, and exits.
/// Once the command is forked it keeps at most CAP_KILL, and holds none of
/// the command's stdio. `parent`: the helper's pid as this process sees it.
fn exec_init(process: &oci_spec::runtime::Process, args: &ExecArgs, prepared: &Prepared, slave: Option<OwnedFd>, parent: i32) -> ! {
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
    if nix::unistd::getppid().as_raw() != parent {
        // The helper died before the death signal was armed.
        std::process::exit(fail(InitError::Setup("helper died".into())));
    }
    // The command waits until this process has dropped what it holds
    // beyond its work (EOF on this pipe): from the command's first step on,
    // what the exec's processes hold is settled.
    let (settled_r, settled_w) = match nix::unistd::pipe2(OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => std::process::exit(fail(setup("pipe", e))),
    };
    // SAFETY: single-threaded.
    let command = match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(settled_w);
            let _ = nix::unistd::read(&settled_r, &mut [0u8; 1]);
            drop(settled_r);
            if let Some(slave) = slave {
                if let Err(e) = super::tty::attach_opened_terminal(slave) {
                    std::process::exit(fail(e));
                }
            }
            std::process::exit(fail(child(process, &args.args, prepared)));
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => std::process::exit(fail(setup("fork", e))),
    };
    drop(settled_r);
    drop(slave);
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
    drop(settled_w);
    loop {
        match waited.wait() {
            Ok(Signal::SIGTERM) => {
                kill_descendants();
                // SAFETY: _exit ends the process without running anything else.
                unsafe { libc::_exit(128 + libc::SIGKILL) }
            }
            _ => loop {
                match waitpid(nix::unistd::Pid::from_raw(-1), Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(pid, code)) if pid == command => exit_reaped(code),
                    Ok(WaitStatus::Signaled(pid, sig, _)) if pid == command => exit_reaped(128 + sig as i32),
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

/// Keeps at most CAP_KILL (which killing the exec's tree needs, where the
/// container's process holds it) and sets no_new_privs. The bounding set
/// shrinks where CAP_SETPCAP allows it; this process never execs, so its
/// bounding set bounds nothing.
fn keep_only_cap_kill() -> Result<(), InitError> {
    use caps::{CapSet, Capability};
    let held = caps::has_cap(None, CapSet::Permitted, Capability::CAP_KILL).unwrap_or(false);
    let kill: std::collections::HashSet<Capability> = held.then_some(Capability::CAP_KILL).into_iter().collect();
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        for c in caps::all() {
            if c != Capability::CAP_KILL && caps::has_cap(None, CapSet::Bounding, c).unwrap_or(false) {
                caps::drop(None, CapSet::Bounding, c).map_err(|e| setup("drop capabilities", e))?;
            }
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

/// Exits with `code` once every child that has exited is reaped: left to
/// the container's PID 1, which may not reap, they would stay zombies.
/// Children still running are left running, as the command left them.
fn exit_reaped(code: i32) -> ! {
    while let Ok(s) = waitpid(nix::unistd::Pid::from_raw(-1), Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
        if s == WaitStatus::StillAlive {
            break;
        }
    }
    // SAFETY: _exit ends the process without running anything else.
    unsafe { libc::_exit(code) }
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
        if code.is_none() {
            forward_pending_sigterm();
        }
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

/// The command, born confined as the container's process is: what is left
/// is its own session's terminal (done by the caller), signals, working
/// directory, umask and the exec.
fn child(process: &oci_spec::runtime::Process, args: &[String], prepared: &Prepared) -> InitError {
    if nix::unistd::getppid().as_raw() == 1 {
        return InitError::Setup("helper died".into());
    }
    crate::monitor::reset_signals();
    // As the final user, whose permissions on the directory count.
    if let Err(e) = init::chdir_inside(process.cwd()) {
        return e;
    }
    nix::sys::stat::umask(Mode::from_bits_truncate(process.user().umask().unwrap_or(0o022)));
    // Dies with the exec's init, which the helper's end takes along.
    init::exec_final(&prepared.executable, args, &prepared.env, libc::SIGKILL)
}

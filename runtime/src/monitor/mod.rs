//! The per-container monitor: a small single-threaded process (no async
//! runtime), parent of the container init and a child subreaper, not a child
//! of berthd. It holds the container's stdio (pipes, or a terminal for TTY
//! containers), writes the CRI log ([`log`]), answers typed requests on a
//! filesystem socket in the container's 0700 state dir
//! ([`crate::message::ControlRequest`]), serves attached clients
//! ([`attach`]), and records the exit status ([`exit`]) before it goes.

pub mod attach;
mod events;
pub mod exit;
pub mod handoff;
mod leftovers;
pub mod log;
mod oom;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use nix::fcntl::OFlag;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult};

pub use attach::{attach_frame, take_attach_frame, FRAME_EXIT, FRAME_RESIZE, FRAME_STDERR, FRAME_STDIN, FRAME_STDIN_CLOSE, FRAME_STDOUT};
pub use exit::ExitStatus;

use crate::channel;
use crate::message::{InitError, InitReport, MonitorReport};
use crate::process::init;
use events::Monitor;
use log::{LineSplitter, Stream};

/// The control socket's name in the bundle.
pub const SOCKET: &str = "monitor.sock";
/// The exit status file's name in the bundle.
pub const EXIT_FILE: &str = "exit";

/// How the container's PID namespace is set up before the fork.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PidNamespace {
    /// A new one; the init is its PID 1.
    New,
    /// Join the one of a running process (the pod's init, or a target
    /// container's), named by pid and start time.
    Join {
        /// Host pid.
        pid: i32,
        /// Its start time, so a reused pid is refused.
        start_time: u64,
        /// Where the container's `/proc` comes from.
        proc: JoinProc,
    },
    /// The host's.
    Host,
}

/// Where the `/proc` of a container joining a PID namespace comes from, so
/// that its init can set up outside the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinProc {
    /// A `/proc` of the namespace on the node: the pod's
    /// ([`crate::sandbox::proc_pin_path`]).
    Pinned(PathBuf),
    /// A procfs mounted with `pidns=` (Linux 6.15); before that, a clone of
    /// the `/proc` of the process joined: the target container's, or a
    /// sibling's in a pod started before the pin.
    OfTarget,
    /// A procfs mounted with `pidns=`; before Linux 6.15 the init joins the
    /// namespace and mounts it inside (a pod started before the pin, with
    /// no sibling running).
    Kernel,
}

/// Arguments of `berth-monitor monitor`.
#[derive(Debug, Clone)]
pub struct MonitorArgs {
    /// Container id, for messages.
    pub id: String,
    /// The bundle: config.json, rootfs/, the socket and exit file.
    pub bundle: PathBuf,
    /// The CRI log file, if any.
    pub log: Option<PathBuf>,
    /// PID namespace.
    pub pid_ns: PidNamespace,
    /// Where to report [`MonitorReport`] (then closed).
    pub sync_fd: RawFd,
    /// The overlay rootfs, mounted ahead and detached by berthd
    /// (`crate::rootfs::mount_ahead`), for the init to attach.
    pub rootfs_fd: Option<RawFd>,
    /// The cgroup.procs files the init joins (the spec's
    /// `annotations::CGROUP_PROCS`), `:`-separated: with one file on
    /// cgroup2, the init is forked into its cgroup.
    pub cgroup_procs: Option<String>,
    /// The spec's `annotations::CGROUP_HOLD`: keep the cgroup populated
    /// until its OOM count is read.
    pub cgroup_hold: bool,
    /// The container's stdio.
    pub stdio: StdioOpts,
}

/// How the container's stdio is wired (CRI's `stdin`, `stdin_once`, `tty`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StdioOpts {
    /// Keep stdin open for attach (else it is /dev/null).
    pub stdin: bool,
    /// Close stdin when the first attached client with stdin detaches.
    pub stdin_once: bool,
    /// A terminal is the container's stdin, stdout and stderr.
    pub tty: bool,
}

fn pipe_cloexec() -> nix::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC)
}

/// Runs the monitor; returns the process exit code (only on early failure
/// in the first process; the daemonised monitor exits itself).
pub fn main(args: MonitorArgs) -> i32 {
    // SAFETY: sync_fd was handed to us by berthd and nobody else owns it.
    let mut sync = unsafe { std::fs::File::from_raw_fd(args.sync_fd) };
    // Spawned, leave berthd's process tree: the first process exits at
    // once, the second lives on, reparented to init (or the nearest
    // subreaper). Forked by the zygote, this is out of it already.
    if !crate::zygote::forked() {
        // SAFETY: single-threaded at this point (no threads were started).
        match unsafe { fork() } {
            Ok(ForkResult::Parent { .. }) => return 0,
            Ok(ForkResult::Child) => {}
            Err(e) => {
                let _ = channel::send(&mut sync, &MonitorReport::Failed(InitError::setup("fork monitor", e)));
                return 1;
            }
        }
    }
    let _ = nix::unistd::setsid();
    crate::diag::set_context(format!("container_id={}", args.id));
    match run(&args, &mut sync) {
        Ok(()) => 0,
        Err(e) => {
            crate::diag::log(crate::diag::Level::Error, &format!("monitor failed: {e}"));
            let _ = channel::send(&mut sync, &MonitorReport::Failed(e));
            1
        }
    }
}

pub(super) fn setup_err(step: &str, e: impl std::fmt::Display) -> InitError {
    InitError::Setup(format!("monitor {step}: {e}"))
}

fn run(args: &MonitorArgs, sync: &mut std::fs::File) -> Result<(), InitError> {
    let started = std::time::Instant::now();
    let started_ns = crate::time::monotonic_ns();
    // SAFETY: berthd handed this fd over for the init; nothing else here owns it.
    let rootfs = args.rootfs_fd.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    init::close_on_exec_from(3);
    let socket_path = args.bundle.join(SOCKET);
    let _ = std::fs::remove_file(&socket_path);
    // sun_path holds 108 bytes; the bundle path may be longer, so bind
    // relative to the bundle as the working directory.
    nix::unistd::chdir(&args.bundle).map_err(|e| setup_err("chdir bundle", e))?;
    let listener = UnixListener::bind(SOCKET).map_err(|e| setup_err("bind socket", e))?;
    listener.set_nonblocking(true).map_err(|e| setup_err("socket", e))?;

    let tty = args.stdio.tty;
    // A TTY container's output comes from its terminal, not from pipes.
    let out = if tty { None } else { Some(pipe_cloexec().map_err(|e| setup_err("pipe", e))?) };
    let err = if tty { None } else { Some(pipe_cloexec().map_err(|e| setup_err("pipe", e))?) };
    let stdin = if args.stdio.stdin && !tty { Some(pipe_cloexec().map_err(|e| setup_err("pipe", e))?) } else { None };
    let console = if tty {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        Some(socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC).map_err(|e| setup_err("socketpair", e))?)
    } else {
        None
    };
    let (out_r, out_w) = out.unzip();
    let (err_r, err_w) = err.unzip();
    let (stdin_r, stdin_w) = stdin.unzip();
    let (console_parent, console_child) = console.unzip();
    let (report_r, report_w) = pipe_cloexec().map_err(|e| setup_err("pipe", e))?;
    let (start_r, start_w) = pipe_cloexec().map_err(|e| setup_err("pipe", e))?;
    let null = init::open_null().map_err(|e| setup_err("open /dev/null", e))?;

    // On a pure cgroup v2 node the init is born in its cgroup. The spec is
    // read by the init only: the monitor lives as long as the container,
    // and code and memory it touched once stay counted to it.
    let into = args.cgroup_procs.as_deref().and_then(crate::process::clone::v2_only_dir);
    // Under the systemd driver the cgroup must outlive the container's last
    // process until its OOM count is read (see oom::start_sentinel). It is
    // forked before the PID namespace is entered: a process in the
    // container's namespace would be listed in the container's /proc, and
    // the kernel kills it with the namespace's init, emptying the cgroup
    // before its count is read.
    let sentinel = match (&into, args.cgroup_hold) {
        (Some(dir), true) => match oom::start_sentinel(std::os::fd::AsFd::as_fd(dir)) {
            Ok(w) => Some(w),
            Err(e) => {
                crate::diag::log(crate::diag::Level::Warn, &format!("no cgroup sentinel ({e}): an OOM kill may be reported as Error"));
                None
            }
        },
        _ => None,
    };
    // The kernel ends a container's processes with its init only when the
    // init is PID 1 of a namespace of its own (see leftovers).
    let leftovers = match args.pid_ns {
        PidNamespace::New => None,
        _ => {
            // On a pure v2 node the same directory is open already.
            let dir = match &into {
                Some(d) => d.try_clone().ok(),
                None => args.cgroup_procs.as_deref().and_then(leftovers::open),
            };
            if dir.is_none() {
                crate::diag::log(crate::diag::Level::Warn, "no cgroup to end the container's processes with its init");
            }
            dir
        }
    };
    // Into a PID namespace others are in already, the init sets up outside
    // it: inside, a sibling that may ptrace it could attach to it while it
    // holds the node's privileges. It then starts the container's process
    // there, confined from birth (init::run). That takes a /proc of the
    // namespace made from outside: a clone of the pod's; one the kernel
    // mounts with procfs pidns= (Linux 6.15); or, before that, a clone of
    // the target container's own (or a sibling's, in a pod from before the
    // pod's pin). Only such a pod with no sibling running, on an older
    // kernel, has its init forked into the namespace, as runc's is.
    let mut join_later = None;
    match &args.pid_ns {
        PidNamespace::New => nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID).map_err(|e| setup_err("unshare pid", e))?,
        PidNamespace::Join { pid, start_time, proc } => {
            let target = crate::pidfd::Process::open(*pid, *start_time)
                .map_err(|e| setup_err(&format!("the process {pid} whose PID namespace to join"), e))?;
            let proc = match proc {
                JoinProc::Pinned(pin) => Some(Some(proc_of(tree_at(pin)?, *pid, &format!("the pod's /proc at {}", pin.display()))?)),
                _ if crate::mountapi::procfs_takes_pidns() => Some(None),
                JoinProc::OfTarget => Some(Some(proc_of(tree_of_target(&target)?, *pid, "the target container's /proc")?)),
                JoinProc::Kernel => None,
            };
            match proc {
                Some(proc) => join_later = Some(init::JoinPid { target, proc }),
                None => target.join(nix::sched::CloneFlags::CLONE_NEWPID).map_err(|e| setup_err("setns pid", e))?,
            }
        }
        PidNamespace::Host => {}
    }

    let forking = std::time::Instant::now();
    // SAFETY: the monitor is single-threaded, so the child may allocate.
    let forked = match &into {
        Some(dir) => unsafe { crate::process::clone::fork_into_cgroup(std::os::fd::AsFd::as_fd(dir)) }.map(|r| (r, true)),
        None => Err(nix::errno::Errno::ENOSYS),
    };
    // SAFETY: as above.
    let forked = forked.or_else(|_| unsafe { fork() }.map(|r| (r, false)));
    let child = match forked.map_err(|e| setup_err("fork init", e))? {
        (ForkResult::Child, placed) => {
            drop((out_r, err_r, stdin_w, console_parent, report_r, start_w, listener, into, sentinel, leftovers));
            // Nor berthd's sync channel: the init reports to the monitor
            // only, and a process that may ptrace it could write there.
            // The File owning the fd is the caller's; this child never
            // returns to it, so nothing closes the number twice.
            let _ = nix::unistd::close(sync.as_raw_fd());
            let stdio = [stdin_r, out_w, err_w];
            child_main(args, placed, rootfs, null, stdio, report_w, start_r, console_child, join_later)
        }
        (ForkResult::Parent { child }, _) => child,
    };
    drop(join_later);
    // The init's copy is the one it attaches; this one would only keep the
    // mount referenced after the container is gone.
    drop(rootfs);
    let forked_ns = crate::time::monotonic_ns();
    let us = |d: std::time::Duration| d.as_micros() as u64;
    let (setup_us, fork_us) = (us(forking.duration_since(started)), us(forking.elapsed()));
    drop((out_w, err_w, stdin_r, console_child, report_w, start_r, null));
    // berthd's end of the sync channel goes to whoever reports Created;
    // this function's caller reports to /dev/null from here on.
    let sync = std::mem::replace(sync, std::fs::File::from(init::open_null().map_err(|e| setup_err("null", e))?));
    let serve_args = handoff::Serve {
        id: args.id.clone(),
        bundle: args.bundle.clone(),
        log: args.log.clone(),
        child,
        sync: Some(sync),
        console: console_parent,
        timing: handoff::Timing { started_ns, setup_us, fork_us, forked_ns },
        listener,
        out: out_r.map(std::fs::File::from),
        err: err_r.map(std::fs::File::from),
        pty: None,
        stdin: stdin_w.map(std::fs::File::from),
        stdin_once: args.stdio.stdin_once,
        report: std::fs::File::from(report_r),
        start: std::fs::File::from(start_w),
        cgroup: into,
        sentinel,
        leftovers,
    };
    // The exec overlaps the init's setup, which the monitor only waits for.
    serve(handoff::exec(serve_args))
}

/// A detached clone of the mount at `pin` (the pod's /proc).
fn tree_at(pin: &std::path::Path) -> Result<OwnedFd, InitError> {
    crate::mountapi::clone_tree(pin, false).map_err(|e| setup_err(&format!("the pod's /proc at {} (open_tree)", pin.display()), e))
}

/// A detached clone of the mount at `/proc` in `target`'s mount namespace:
/// a mount is cloned only from the caller's own namespace, so the monitor
/// (single-threaded, as setns of a mount namespace needs) enters the
/// target's for the one `open_tree`, and comes back. A monitor that cannot
/// come back ends at once: every path it would still use is the node's.
fn tree_of_target(target: &crate::pidfd::Process) -> Result<OwnedFd, InitError> {
    let step = |what: &str| format!("the target container's /proc ({what})");
    let home = std::fs::File::open("/proc/self/ns/mnt").map_err(|e| setup_err(&step("open this mount namespace"), e))?;
    let cwd = std::fs::File::open(".").map_err(|e| setup_err(&step("open the working directory"), e))?;
    target.join(nix::sched::CloneFlags::CLONE_NEWNS).map_err(|e| setup_err(&step("setns mnt"), e))?;
    // Resolved from the namespace's root, the container's rootfs; /proc is
    // a mount point there, which the container cannot rename or replace
    // with a link. What was cloned is checked by proc_of.
    let tree = crate::mountapi::clone_tree(std::path::Path::new("/proc"), false);
    let back = nix::sched::setns(&home, nix::sched::CloneFlags::CLONE_NEWNS).and_then(|()| nix::unistd::fchdir(&cwd));
    if let Err(e) = back {
        crate::diag::log(crate::diag::Level::Error, &format!("back from the target container's mount namespace: {e}"));
        // SAFETY: _exit ends the process without running anything else.
        unsafe { libc::_exit(1) }
    }
    tree.map_err(|e| setup_err(&step("open_tree"), e))
}

/// `tree`, checked to be a /proc of the PID namespace of `pid` (whose PID 1
/// it lists as in that namespace): a pin that outlived its namespace, or
/// anything else mounted there, is refused rather than shown to the
/// container as its /proc. `what` names it in errors.
fn proc_of(tree: OwnedFd, pid: i32, what: &str) -> Result<OwnedFd, InitError> {
    let step = |check: &str| format!("{what} ({check})");
    let fs = nix::sys::statfs::fstatfs(&tree).map_err(|e| setup_err(&step("statfs"), e))?;
    if fs.filesystem_type() != nix::sys::statfs::PROC_SUPER_MAGIC {
        return Err(setup_err(&step("check"), "not a procfs"));
    }
    let ns = |st: nix::sys::stat::FileStat| (st.st_dev, st.st_ino);
    let theirs = nix::sys::stat::fstatat(&tree, "1/ns/pid", nix::fcntl::AtFlags::empty())
        .map_err(|e| setup_err(&step("its PID 1's namespace"), e))?;
    let want = crate::pidfd::pid_namespace_id(pid).map_err(|e| setup_err(&step("the namespace to join"), e))?;
    if ns(theirs) != want {
        return Err(setup_err(&step("check"), format!("a /proc of another PID namespace than process {pid}'s")));
    }
    Ok(tree)
}

/// Waits for the init to be ready and reports Created to berthd (or why
/// not: then the init is reaped and the socket removed, and `None` comes
/// back); the terminal of a TTY container comes with the init's Ready.
fn await_init(s: &mut handoff::Serve) -> Option<()> {
    let mut sync = s.sync.take()?;
    let socket = s.bundle.join(SOCKET);
    let init = s.child;
    // Reaps `child`, the init or the process it started.
    let failed = |sync: &mut std::fs::File, child: nix::unistd::Pid, e: InitError| {
        crate::diag::log(crate::diag::Level::Warn, &format!("container setup failed: {e}"));
        let _ = channel::send(sync, &MonitorReport::Failed(e));
        let _ = waitpid(child, None);
        let _ = std::fs::remove_file(&socket);
        None
    };
    // Bounded: in a shared PID namespace the container's process holds the
    // report pipe from its birth, and a sibling that may ptrace can reopen
    // it (see channel::recv_before). berthd gives up after 60 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(55);
    match channel::recv_before::<InitReport>(std::os::fd::AsFd::as_fd(&s.report), deadline) {
        Ok(Some(InitReport::Ready { uid, gid, groups, stages_us: init_stages, process })) => {
            if let Some(pid) = process {
                // The init started the container's process as this one's
                // child, and exits.
                let _ = waitpid(init, None);
                s.child = nix::unistd::Pid::from_raw(pid);
            }
            let child = s.child;
            // A TTY init sent its terminal's master before it reported ready.
            if let Some(console) = s.console.take() {
                match crate::process::tty::recv_fd(&console) {
                    Ok(Some(master)) => s.pty = Some(std::fs::File::from(master)),
                    other => {
                        let why = other.err().map_or("no terminal received".to_string(), |e| e.to_string());
                        let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                        return failed(&mut sync, child, InitError::Setup(format!("container terminal: {why}")));
                    }
                }
            }
            crate::diag::log(crate::diag::Level::Info, &format!("container created, init pid {}", child.as_raw()));
            let t = &s.timing;
            let mut stages_us = vec![("monitor_setup".to_string(), t.setup_us), ("monitor_fork".to_string(), t.fork_us)];
            stages_us.extend(init_stages);
            stages_us.push(("monitor_wait_init".to_string(), crate::time::monotonic_ns().saturating_sub(t.forked_ns) / 1000));
            let created = MonitorReport::Created {
                pid: child.as_raw(),
                monitor_pid: std::process::id() as i32,
                uid,
                gid,
                groups,
                stages_us,
                started_ns: t.started_ns,
            };
            let _ = channel::send(&mut sync, &created);
            Some(())
        }
        Ok(Some(InitReport::Failed(e))) => failed(&mut sync, init, e),
        Ok(None) | Err(_) => failed(&mut sync, init, InitError::Setup("init exited before it was ready".into())),
    }
}

/// Waits for the init and reports Created ([`await_init`]), then runs the
/// event loop until the container is gone, and writes its exit status file.
fn serve(mut s: handoff::Serve) -> Result<(), InitError> {
    if await_init(&mut s).is_none() {
        return Ok(());
    }
    let mut state = Monitor {
        child: s.child,
        log_path: s.log,
        log: None,
        out: s.out,
        err: s.err,
        pty: s.pty,
        stdin: s.stdin,
        stdin_pending: Vec::new(),
        stdin_closing: false,
        stdin_once: s.stdin_once,
        clients: Vec::new(),
        out_split: LineSplitter::new(Stream::Stdout),
        err_split: LineSplitter::new(Stream::Stderr),
        report: Some(s.report),
        start: Some(s.start),
        started_at_ns: None,
        exit: None,
        exited_at: None,
        oom: s.cgroup.map(|dir| oom::OomWatch::new(dir, s.sentinel)),
        leftovers: s.leftovers,
        read_buf: Default::default(),
    };
    state.open_log();
    state.event_loop(&s.listener)?;
    if let Some(status) = &state.exit {
        exit::write_exit_file(&s.bundle, status);
        crate::diag::log(crate::diag::Level::Info, &format!("container exited code={} signal={}", status.code, status.signal));
    }
    let _ = std::fs::remove_file(s.bundle.join(SOCKET));
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn child_main(
    args: &MonitorArgs,
    placed: bool,
    rootfs: Option<OwnedFd>,
    null: OwnedFd,
    stdio: [Option<OwnedFd>; 3],
    report_w: OwnedFd,
    start_r: OwnedFd,
    console: Option<OwnedFd>,
    pid_ns: Option<init::JoinPid>,
) -> ! {
    let mut report = std::fs::File::from(report_w);
    let fail = |report: &mut std::fs::File, e: InitError| -> ! {
        let _ = channel::send(report, &InitReport::Failed(e));
        // SAFETY: _exit in a forked child.
        unsafe { libc::_exit(127) }
    };
    // SAFETY: prctl with integer arguments; dies with the monitor until exec.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // A process in a shared PID namespace (this one, or the one it starts
    // there) is seen by the siblings until it execs: not with the
    // monitor's command line, which names the bundle on the node.
    crate::zygote::show_cmdline_as(crate::zygote::arg_area(), &["berth-monitor", "init"]);
    reset_signals();
    // Missing streams are /dev/null; a TTY init replaces all three later.
    for (target, fd) in stdio.iter().enumerate() {
        let fd = fd.as_ref().map_or(null.as_raw_fd(), |f| f.as_raw_fd());
        if let Err(e) = init::dup_onto(fd, target as RawFd) {
            fail(&mut report, e);
        }
    }
    drop((null, stdio));
    let reading = std::time::Instant::now();
    let spec: oci_spec::runtime::Spec = match std::fs::read(args.bundle.join("config.json"))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(spec) => spec,
        Err(e) => fail(&mut report, InitError::Setup(format!("reading config.json: {e}"))),
    };
    init::run(
        &spec,
        reading.elapsed().as_micros() as u64,
        &args.bundle,
        placed,
        rootfs,
        report,
        std::fs::File::from(start_r),
        console,
        pid_ns,
    )
}

/// Default dispositions and an empty mask: the Rust runtime ignores SIGPIPE,
/// and ignored signals would stay ignored across execve.
pub fn reset_signals() {
    for sig in Signal::iterator() {
        if sig == Signal::SIGKILL || sig == Signal::SIGSTOP {
            continue;
        }
        // SAFETY: installing SIG_DFL is always sound.
        unsafe {
            let _ = nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl);
        }
    }
    let _ = nix::sys::signal::sigprocmask(nix::sys::signal::SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

//! The container init: what the process forked by the monitor does between
//! `fork` and `execve` — join the cgroup and namespaces, build the rootfs
//! ([`crate::rootfs`]), resolve the user, working directory and executable,
//! report ready, wait for start, confine itself and exec. Every failure
//! goes back to the monitor as an [`InitReport::Failed`].
//!
//! This runs in a single-threaded child, so plain allocation is fine.

use std::ffi::CString;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::user::{self, ResolvedUser};
use crate::annotations;
use crate::channel;
use crate::message::{InitCommand, InitError, InitReport};

fn setup_err(step: &str, e: impl std::fmt::Display) -> InitError {
    InitError::setup(step, e)
}

/// Runs the init: never returns. `report` is close-on-exec, so the monitor
/// sees EOF exactly when `execve` succeeded. With a `console` socket (a TTY
/// container) the init opens a terminal in the container's devpts, makes it
/// its stdio and controlling terminal, and sends the master to the monitor.
/// `rootfs`: the overlay rootfs mounted ahead (`crate::rootfs::mount_ahead`).
/// `spec_us`: how long reading the spec took, reported as `init_spec`.
/// `pid_ns`: the PID namespace the container's process joins, where the
/// init sets up outside it (see [`start_in_pid_namespace`]).
#[allow(clippy::too_many_arguments)]
pub fn run(
    spec: &Spec,
    spec_us: u64,
    bundle: &Path,
    placed: bool,
    rootfs: Option<OwnedFd>,
    mut report: std::fs::File,
    mut start: std::fs::File,
    console: Option<OwnedFd>,
    pid_ns: Option<JoinPid>,
) -> ! {
    let result: Result<(), InitError> = prepare(spec, bundle, placed, rootfs, pid_ns).and_then(|prepared| {
        let u = &prepared.user;
        let joining = prepared.joined_pid_ns;
        // Made the controlling terminal by the container's process: here,
        // unless that is forked later.
        let mut slave = None;
        if let Some(console) = console {
            let (master, path) = super::tty::open_pty()?;
            let opened = super::tty::open_slave(&path, Some((u.uid, u.gid)))?;
            if joining {
                slave = Some(opened);
            } else {
                super::tty::attach_opened_terminal(opened)?;
            }
            super::tty::send_fd(&console, &master).map_err(|e| setup_err("sending the terminal to the monitor", e))?;
        }
        let mut stages_us = vec![("init_spec".to_string(), spec_us)];
        stages_us.extend(prepared.stages_us.iter().cloned());
        stages_us.push(("init_tty".into(), prepared.tty_clock.elapsed().as_micros() as u64));
        // A TTY process says when it holds its terminal, so that Ready comes
        // after it or not at all (its failure is its own report). Made
        // before the filter, which may not allow pipe2.
        let attached = match &slave {
            Some(_) if joining => Some(nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| setup_err("pipe", e))?),
            _ => None,
        };
        // Confined before it waits for StartContainer: a process that may
        // ptrace it (a sibling with CAP_SYS_PTRACE in a shared PID
        // namespace) finds no more than the container's process will hold.
        let confining = std::time::Instant::now();
        let process = spec.process().as_ref().ok_or_else(|| InitError::Setup("spec has no process".into()))?;
        confine_for_exec(process, &prepared)?;
        stages_us.push(("init_confine".into(), confining.elapsed().as_micros() as u64));
        let process_pid = match joining {
            true => match start_in_pid_namespace()? {
                Some(pid) => Some(pid),
                None => {
                    // The container's process, born confined in the namespace.
                    if let (Some(slave), Some((r, w))) = (slave.take(), attached) {
                        drop(r);
                        super::tty::attach_opened_terminal(slave)?;
                        nix::unistd::write(&w, b"1").map_err(|e| setup_err("report the terminal attached", e))?;
                    }
                    return Err(wait_for_start_and_exec(&mut start, &prepared, process));
                }
            },
            false => None,
        };
        drop(slave);
        if let Some((r, w)) = attached {
            drop(w);
            if !matches!(nix::unistd::read(&r, &mut [0u8; 1]), Ok(1)) {
                // SAFETY: _exit ends this child; the process reported why it failed.
                unsafe { libc::_exit(127) }
            }
        }
        let ready = InitReport::Ready { uid: u.uid, gid: u.gid, groups: u.groups.clone(), stages_us, process: process_pid };
        channel::send(&mut report, &ready).map_err(|e| setup_err("report ready", e))?;
        if process_pid.is_some() {
            // SAFETY: _exit ends this child; the container's process is the monitor's now.
            unsafe { libc::_exit(0) }
        }
        Err(wait_for_start_and_exec(&mut start, &prepared, process))
    });
    if let Err(e) = result {
        let _ = channel::send(&mut report, &InitReport::Failed(e));
    }
    // SAFETY: _exit is async-signal-safe and ends this child without running
    // the parent's atexit handlers or flushing its stdio buffers twice.
    unsafe { libc::_exit(127) }
}

/// Waits for StartContainer, then execs the container's process.
fn wait_for_start_and_exec(start: &mut std::fs::File, prepared: &Prepared, process: &oci_spec::runtime::Process) -> InitError {
    match channel::recv::<InitCommand>(start) {
        Ok(Some(InitCommand::Start)) => {}
        // The monitor went away or closed the start pipe: do not start.
        _ => std::process::exit(1),
    }
    // The container outlives its monitor's setup phase: no parent-death signal.
    exec_final(&prepared.executable, process.args().as_deref().unwrap_or(&[]), process.env().as_deref().unwrap_or(&[]), 0)
}

/// Starts the container's process in the PID namespace the init joined for
/// its children, as the monitor's child (`CLONE_PARENT`), from the confined
/// init: a sibling that may ptrace finds no process there that ever held
/// more (pids come in order; it can attach to one as it is born). Some(pid)
/// in the init, None in the new process.
fn start_in_pid_namespace() -> Result<Option<i32>, InitError> {
    // SAFETY: the init is single-threaded.
    match unsafe { super::clone::fork_for_parent() } {
        Err(e) => {
            Err(setup_err("starting the container's process in the PID namespace it shares (clone; the seccomp profile must allow it)", e))
        }
        Ok(nix::unistd::ForkResult::Child) => Ok(None),
        Ok(nix::unistd::ForkResult::Parent { child }) => Ok(Some(child.as_raw())),
    }
}

/// What `prepare` resolved for `exec`.
pub struct Prepared {
    user: ResolvedUser,
    /// The init joined a PID namespace for its children only; the
    /// container's process is to be started there.
    joined_pid_ns: bool,
    executable: CString,
    cwd: PathBuf,
    seccomp: Option<libseccomp::ScmpFilterContext>,
    /// `init_*` steps and their µs, for the Ready report.
    stages_us: Vec<(String, u64)>,
    /// Since the last step (the terminal is set up after prepare).
    tty_clock: std::time::Instant,
}

/// Times consecutive steps.
struct Clock {
    last: std::time::Instant,
    done: Vec<(String, u64)>,
}

impl Clock {
    fn new() -> Clock {
        Clock { last: std::time::Instant::now(), done: Vec::new() }
    }

    fn mark(&mut self, step: &str) {
        let now = std::time::Instant::now();
        self.done.push((format!("init_{step}"), now.duration_since(self.last).as_micros() as u64));
        self.last = now;
    }
}

/// The PID namespace a container's process joins, while its init sets up
/// outside it.
pub struct JoinPid {
    /// A process in it: the pod's init, or the target container's process.
    pub target: crate::pidfd::Process,
    /// A detached clone of a `/proc` of it (the pod's,
    /// [`crate::sandbox::proc_pin_path`]), attached as the container's
    /// `/proc`. Without one, `/proc` is mounted with `pidns=` (Linux 6.15).
    pub proc: Option<OwnedFd>,
}

/// Joins the cgroup named by the spec's annotation. The caller must be
/// single-threaded ([`crate::cgroup::join_single_threaded`]): the container's
/// init and the exec helper are, up to their `execve`.
pub fn join_cgroup(spec: &Spec) -> Result<(), InitError> {
    if let Some(procs) = annotations::get(spec, annotations::CGROUP_PROCS) {
        for f in procs.split(':') {
            crate::cgroup::join_single_threaded(Path::new(f)).map_err(|e| setup_err(&format!("joining cgroup {f}"), e))?;
        }
    }
    Ok(())
}

/// Everything up to the point where only `execve` is left. `placed`: the
/// process was born in its cgroup ([`super::clone::fork_into_cgroup`]);
/// `rootfs`: the overlay rootfs, if it was mounted ahead.
/// `pid_ns`: the PID namespace the container's process is to join; the
/// init joins it for its children only.
pub fn prepare(spec: &Spec, bundle: &Path, placed: bool, rootfs: Option<OwnedFd>, pid_ns: Option<JoinPid>) -> Result<Prepared, InitError> {
    let mut clock = Clock::new();
    make_non_dumpable();
    // Modes are given explicitly; the umask of the spec applies at exec.
    nix::sys::stat::umask(Mode::empty());
    if !placed {
        join_cgroup(spec)?;
    }
    clock.mark("cgroup");
    let process = spec.process().as_ref().ok_or_else(|| InitError::Setup("spec has no process".into()))?;
    // Through /proc/self, which an init outside its process's PID namespace
    // does not have once the container's /proc is its /proc; inherited.
    set_oom_score_adj(process);
    set_apparmor_onexec(process)?;
    let (new_uts, userns) = join_namespaces(spec)?;
    let joining_pid_ns = pid_ns.is_some();
    let proc_tree = match pid_ns {
        Some(JoinPid { target, proc }) => {
            target.join(CloneFlags::CLONE_NEWPID).map_err(|e| setup_err("joining the PID namespace for the container's process", e))?;
            proc
        }
        None => None,
    };
    clock.mark("namespaces");
    let userns_for_mounts = match &userns {
        Some(fd) => Some(fd.try_clone().map_err(|e| setup_err("dup the user namespace fd", e))?),
        None => None,
    };
    let mut kernel = crate::rootfs::Kernel::new(&bundle.join("rootfs"))
        .with_userns(userns_for_mounts)
        .with_rootfs_mount(rootfs)
        .with_proc_for_children(joining_pid_ns, proc_tree);
    // Named by where it came from: a copy of the node's costs more the more
    // mounts the node has.
    let from_template = crate::rootfs::new_namespace(spec, &mut kernel)?;
    clock.mark(if from_template { "mountns_template" } else { "mountns_node" });
    crate::rootfs::build(spec, new_uts, from_template, &mut kernel)?;
    clock.mark("rootfs");
    let user = user::resolve(spec, process)?;
    let cwd = process.cwd().clone();
    check_cwd(&cwd)?;
    let env: Vec<String> = process.env().clone().unwrap_or_default();
    let args = process.args().clone().unwrap_or_default();
    let arg0 = args.first().ok_or_else(|| InitError::Setup("no command given".into()))?;
    let executable = find_executable(arg0, &env)?;
    set_rlimits(process)?;
    clock.mark("process");
    let seccomp = super::security::compile_spec(spec)?;
    clock.mark("seccomp");
    // Last: everything above needed the node's privileges; from here on the
    // process is root of the pod's user namespace and nothing outside.
    if let Some(fd) = userns {
        crate::userns::enter(fd).map_err(|e| setup_err("joining the pod's user namespace", e))?;
        clock.mark("userns");
    }
    Ok(Prepared { user, joined_pid_ns: joining_pid_ns, executable, cwd, seccomp, stages_us: clock.done, tty_clock: clock.last })
}

/// setns into namespaces with a path, unshare the new ones (PID is done by
/// the monitor before fork; the mount namespace by
/// [`crate::rootfs::new_namespace`], from the node's or the mount template).
/// Returns whether the UTS namespace is new, and the pod's user namespace,
/// opened but not joined: the rootfs is built with the node's privileges
/// first ([`crate::userns::enter`]).
fn join_namespaces(spec: &Spec) -> Result<(bool, Option<OwnedFd>), InitError> {
    let mut new = CloneFlags::empty();
    let mut new_uts = false;
    let mut userns = None;
    for ns in spec.linux().as_ref().and_then(|l| l.namespaces().clone()).unwrap_or_default() {
        let flag = match ns.typ() {
            LinuxNamespaceType::User => {
                let path = ns.path().as_ref().ok_or_else(|| InitError::Setup("a user namespace must be the pod's (a path)".into()))?;
                let fd = nix::fcntl::open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
                    .map_err(|e| setup_err(&format!("open namespace {}", path.display()), e))?;
                userns = Some(fd);
                continue;
            }
            LinuxNamespaceType::Pid | LinuxNamespaceType::Time => continue,
            LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
            LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
            LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
            LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
            LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        };
        match ns.path() {
            Some(path) => {
                let fd = nix::fcntl::open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())
                    .map_err(|e| setup_err(&format!("open namespace {}", path.display()), e))?;
                nix::sched::setns(fd, flag).map_err(|e| setup_err(&format!("setns {}", path.display()), e))?;
            }
            None => {
                new |= flag;
                new_uts |= flag == CloneFlags::CLONE_NEWUTS;
            }
        }
    }
    if !new.contains(CloneFlags::CLONE_NEWNS) {
        return Err(InitError::Setup("the container needs its own mount namespace".into()));
    }
    let new = new - CloneFlags::CLONE_NEWNS;
    if !new.is_empty() {
        nix::sched::unshare(new).map_err(|e| setup_err("unshare", e))?;
    }
    Ok((new_uts, userns))
}

/// `chdir`, then a check that the new working directory is inside the
/// process's root: a directory reached through an fd from outside (the shape
/// of CVE-2024-21626) has no path from the root, and `getcwd` fails for it
/// (the kernel marks it "(unreachable)", glibc answers ENOENT).
pub fn chdir_inside(cwd: &Path) -> Result<(), InitError> {
    let bad = |why: String| InitError::BadCwd(cwd.display().to_string(), why);
    nix::unistd::chdir(cwd).map_err(|e| bad(e.to_string()))?;
    match nix::unistd::getcwd() {
        Ok(p) if p.is_absolute() => Ok(()),
        Ok(p) => Err(bad(format!("the working directory {} is outside the container", p.display()))),
        Err(e) => Err(bad(format!("the working directory is outside the container ({e})"))),
    }
}

fn check_cwd(cwd: &Path) -> Result<(), InitError> {
    match std::fs::metadata(cwd) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(InitError::BadCwd(cwd.display().to_string(), "not a directory".into())),
        Err(e) => Err(InitError::BadCwd(cwd.display().to_string(), e.to_string())),
    }
}

/// `$PATH` lookup as Go's exec.LookPath does (containerd's error text).
pub fn find_executable(arg0: &str, env: &[String]) -> Result<CString, InitError> {
    let is_exec = |p: &Path| -> Result<bool, ()> {
        match std::fs::metadata(p) {
            Ok(m) if m.is_file() => Ok(std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0),
            Ok(_) => Ok(false),
            Err(_) => Err(()),
        }
    };
    let cstring = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|_| InitError::Setup(format!("NUL in {arg0:?}")));
    if arg0.contains('/') {
        return match is_exec(Path::new(arg0)) {
            Ok(true) => cstring(Path::new(arg0)),
            Ok(false) => Err(InitError::NotExecutable(arg0.into())),
            Err(()) => Err(InitError::NoSuchFile(arg0.into())),
        };
    }
    let path = env.iter().find_map(|e| e.strip_prefix("PATH=")).unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(arg0);
        if let Ok(true) = is_exec(&candidate) {
            return cstring(&candidate);
        }
    }
    Err(InitError::NotInPath(arg0.into()))
}

/// rlimits and oom_score_adj. Without CAP_SYS_RESOURCE a raise above the hard
/// limit or a lower oom_score_adj is refused: clamp and go on, as containerd's
/// restrict_oom_score_adj does.
/// The spec's rlimits; a hard limit above the current one (raising needs
/// CAP_SYS_RESOURCE) is clamped to it.
pub fn set_rlimits(process: &oci_spec::runtime::Process) -> Result<(), InitError> {
    for r in process.rlimits().iter().flatten() {
        let resource = rlimit_resource(r.typ());
        let Some(resource) = resource else { continue };
        let (soft, hard) = (r.soft(), r.hard());
        if nix::sys::resource::setrlimit(resource, soft, hard).is_err() {
            let (_, cur_hard) = nix::sys::resource::getrlimit(resource).map_err(|e| setup_err("getrlimit", e))?;
            let hard = hard.min(cur_hard);
            nix::sys::resource::setrlimit(resource, soft.min(hard), hard).map_err(|e| setup_err("setrlimit", e))?;
        }
    }
    Ok(())
}

/// The spec's oom_score_adj, through /proc/self: only where this process
/// is in the PID namespace of the /proc it sees. Children inherit it.
pub fn set_oom_score_adj(process: &oci_spec::runtime::Process) {
    if let Some(adj) = process.oom_score_adj() {
        if std::fs::write("/proc/self/oom_score_adj", adj.to_string()).is_err() {
            // Lowering needs CAP_SYS_RESOURCE; keep the inherited (higher) value.
            let current: i32 = std::fs::read_to_string("/proc/self/oom_score_adj").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
            let _ = std::fs::write("/proc/self/oom_score_adj", adj.max(current).to_string());
        }
    }
}

fn rlimit_resource(t: oci_spec::runtime::PosixRlimitType) -> Option<nix::sys::resource::Resource> {
    use nix::sys::resource::Resource as R;
    use oci_spec::runtime::PosixRlimitType as T;
    Some(match t {
        T::RlimitCpu => R::RLIMIT_CPU,
        T::RlimitFsize => R::RLIMIT_FSIZE,
        T::RlimitData => R::RLIMIT_DATA,
        T::RlimitStack => R::RLIMIT_STACK,
        T::RlimitCore => R::RLIMIT_CORE,
        T::RlimitRss => R::RLIMIT_RSS,
        T::RlimitNproc => R::RLIMIT_NPROC,
        T::RlimitNofile => R::RLIMIT_NOFILE,
        T::RlimitMemlock => R::RLIMIT_MEMLOCK,
        T::RlimitAs => R::RLIMIT_AS,
        T::RlimitLocks => R::RLIMIT_LOCKS,
        T::RlimitSigpending => R::RLIMIT_SIGPENDING,
        T::RlimitMsgqueue => R::RLIMIT_MSGQUEUE,
        T::RlimitNice => R::RLIMIT_NICE,
        T::RlimitRtprio => R::RLIMIT_RTPRIO,
        T::RlimitRttime => R::RLIMIT_RTTIME,
        #[allow(unreachable_patterns)]
        _ => return None,
    })
}

/// The container process's user, capabilities, no_new_privs, seccomp,
/// working directory and umask, all but the exec itself.
fn confine_for_exec(process: &oci_spec::runtime::Process, prepared: &Prepared) -> Result<(), InitError> {
    confine(process, &prepared.user, prepared.seccomp.as_ref())?;
    // After the switch, so permission on the directory is the user's.
    chdir_inside(&prepared.cwd)?;
    let umask = process.user().umask().unwrap_or(0o022);
    nix::sys::stat::umask(Mode::from_bits_truncate(umask));
    Ok(())
}

/// Until exec, berth's own binary is this process's /proc/<pid>/exe: a
/// process in the container must not be able to open it. Ptrace access
/// checks fail for a non-dumpable process, unless the caller holds
/// CAP_SYS_PTRACE over it. exec of the workload resets it.
pub fn make_non_dumpable() {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0) };
}

/// The AppArmor profile the next exec enters, like runc's
/// aa_change_onexec; through /proc/self, so before the process may lose it,
/// and inherited by a fork (the task's AppArmor context is copied).
pub fn set_apparmor_onexec(process: &oci_spec::runtime::Process) -> Result<(), InitError> {
    if let Some(profile) = process.apparmor_profile() {
        std::fs::write("/proc/self/attr/apparmor/exec", format!("exec {profile}"))
            .or_else(|_| std::fs::write("/proc/self/attr/exec", format!("exec {profile}")))
            .map_err(|e| InitError::Setup(format!("apparmor profile {profile}: {e}")))?;
    }
    Ok(())
}

/// User, capabilities, no_new_privs and seccomp, in the order that lets each
/// step still have the privilege it needs: without no_new_privs the filter
/// is loaded while CAP_SYS_ADMIN is still held.
pub fn confine(
    process: &oci_spec::runtime::Process,
    user: &ResolvedUser,
    seccomp: Option<&libseccomp::ScmpFilterContext>,
) -> Result<(), InitError> {
    let nnp = process.no_new_privileges().unwrap_or(false);
    if let (Some(f), false) = (seccomp, nnp) {
        super::security::load(f)?;
    }
    super::security::switch_user_with_caps(user, process.capabilities().as_ref())?;
    if nnp {
        super::security::no_new_privs()?;
        if let Some(f) = seccomp {
            super::security::load(f)?;
        }
    }
    Ok(())
}

/// Closes every descriptor above stderr on exec, sets the parent-death
/// signal (after the user switch, which clears it), and calls `execve`.
pub fn exec_final(executable: &CString, args: &[String], env: &[String], pdeathsig: i32) -> InitError {
    close_on_exec_from(3);
    let to_c = |v: &[String]| -> Vec<CString> { v.iter().filter_map(|s| CString::new(s.as_bytes()).ok()).collect() };
    let (argv, envp) = (to_c(args), to_c(env));
    let parent = nix::unistd::getppid();
    // SAFETY: prctl with PR_SET_PDEATHSIG and an int argument has no memory effects.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, pdeathsig) };
    if pdeathsig != 0 && nix::unistd::getppid() != parent {
        return InitError::Setup("parent exited before exec".into());
    }
    match nix::unistd::execve(executable, &argv, &envp) {
        Err(Errno::EACCES) => InitError::NotExecutable(args.first().cloned().unwrap_or_default()),
        Err(Errno::ENOENT) => InitError::NoSuchFile(args.first().cloned().unwrap_or_default()),
        Err(e) => setup_err(&format!("exec {:?}", executable), e),
    }
}

/// Marks every fd >= `from` close-on-exec (close_range with CLOEXEC), so
/// nothing of berth's leaks into the container while the report pipe still
/// works until exec.
pub fn close_on_exec_from(from: RawFd) {
    // SAFETY: close_range only changes fd flags; no memory is touched.
    let r = unsafe { libc::syscall(libc::SYS_close_range, from as libc::c_uint, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    if r != 0 {
        // Older kernels: walk /proc/self/fd.
        if let Ok(rd) = std::fs::read_dir("/proc/self/fd") {
            let fds: Vec<RawFd> = rd.flatten().filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok())).collect();
            for fd in fds.into_iter().filter(|&fd| fd >= from) {
                let _ = nix::fcntl::fcntl(unsafe_borrow(fd), nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
            }
        }
    }
}

fn unsafe_borrow(fd: RawFd) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: used only for fcntl on fds listed in /proc/self/fd of this
    // single-threaded process; an fd closed meanwhile makes fcntl fail, harmlessly.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

/// Opens `path` for the child's stdin (host side, before pivot).
pub fn open_null() -> std::io::Result<OwnedFd> {
    let f = std::fs::File::options().read(true).write(true).open("/dev/null")?;
    Ok(OwnedFd::from(f))
}

/// dup2 of `fd` onto `target` (0, 1 or 2).
pub fn dup_onto(fd: RawFd, target: RawFd) -> Result<(), InitError> {
    // SAFETY: dup2 on valid fds has no memory effects.
    if unsafe { libc::dup2(fd, target) } < 0 {
        return Err(setup_err("dup2 stdio", Errno::last()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::mount::{mount, MsFlags};
    use std::os::fd::AsRawFd;

    /// CVE-2024-21626's shape: a working directory reached through an fd to
    /// a directory outside the root. chdir itself succeeds; chdir_inside
    /// refuses it. Runs in a thread of its own, which alone gets the new
    /// mount namespace and root.
    #[test]
    fn chdir_through_an_fd_outside_the_root_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (root, outside) = (dir.path().join("root"), dir.path().join("outside"));
        std::fs::create_dir_all(root.join("proc")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let outcome = std::thread::spawn(move || {
            nix::sched::unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_FS).unwrap();
            mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>).unwrap();
            mount(Some("proc"), &root.join("proc"), Some("proc"), MsFlags::empty(), None::<&str>).unwrap();
            let fd = nix::fcntl::open(&outside, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
            nix::unistd::chroot(&root).unwrap();
            nix::unistd::chdir("/").unwrap();
            let through_fd = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
            let refused = chdir_inside(&through_fd);
            (refused, chdir_inside(Path::new("/proc")))
        })
        .join()
        .unwrap();
        assert!(matches!(outcome.0, Err(InitError::BadCwd(_, ref why)) if why.contains("outside the container")), "{:?}", outcome.0);
        assert!(outcome.1.is_ok(), "{:?}", outcome.1);
    }

    #[test]
    fn executable_lookup() {
        let env = vec!["PATH=/nonexistent:/bin".to_string()];
        assert!(find_executable("sh", &env).is_ok());
        assert_eq!(find_executable("no-such-cmd-x", &env).unwrap_err(), InitError::NotInPath("no-such-cmd-x".into()));
        assert_eq!(find_executable("/no/such", &env).unwrap_err(), InitError::NoSuchFile("/no/such".into()));
        assert_eq!(find_executable("/etc/passwd", &env).unwrap_err(), InitError::NotExecutable("/etc/passwd".into()));
    }
}

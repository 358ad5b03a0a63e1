//! Pod sandboxes without a pause image: the pod's network, IPC and UTS
//! namespaces are created by a short-lived thread and pinned by bind mounts;
//! a PID namespace, which needs a living init, gets berth's own tiny one
//! (`berth-monitor pod-init`).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::{fork, ForkResult};

use crate::channel;
use crate::message::PodInitReport;

/// Sandbox failures.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A namespace step failed.
    #[error("{step}: {errno}")]
    Ns { step: String, errno: nix::errno::Errno },
    /// Starting the pod init failed.
    #[error("pod init: {0}")]
    Init(String),
}

pub(crate) fn ns_err(step: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> SandboxError {
    let step = step.into();
    move |errno| SandboxError::Ns { step, errno }
}

/// Which namespaces the pod gets of its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodNamespaces {
    /// A network namespace (else the host's).
    pub net: bool,
    /// An IPC namespace (else the host's).
    pub ipc: bool,
    /// A UTS namespace (else the host's).
    pub uts: bool,
}

impl PodNamespaces {
    fn kinds(&self) -> Vec<(&'static str, CloneFlags)> {
        [
            ("net", self.net, CloneFlags::CLONE_NEWNET),
            ("ipc", self.ipc, CloneFlags::CLONE_NEWIPC),
            ("uts", self.uts, CloneFlags::CLONE_NEWUTS),
        ]
        .into_iter()
        .filter(|(_, on, _)| *on)
        .map(|(kind, _, flag)| (kind, flag))
        .collect()
    }

    fn flags(&self) -> CloneFlags {
        self.kinds().into_iter().fold(CloneFlags::empty(), |f, (_, flag)| f | flag)
    }
}

/// The pin file of namespace `kind` (`net`, `ipc`, `uts`, `user`) in a pod dir.
pub fn pin_path(dir: &Path, kind: &str) -> PathBuf {
    dir.join(format!("ns-{kind}"))
}

fn io_errno(e: &std::io::Error) -> nix::errno::Errno {
    nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Pins the namespace file `source` (a `/proc/…/ns/<kind>`) at `dir`'s pin.
fn pin(dir: &Path, kind: &str, source: &Path) -> Result<(), SandboxError> {
    pin_at(&pin_path(dir, kind), kind, source)
}

/// Pins the namespace file `source` (of namespace `kind`) at the file `pin`,
/// made for it.
pub(crate) fn pin_at(pin: &Path, kind: &str, source: &Path) -> Result<(), SandboxError> {
    std::fs::File::create(pin).map_err(|e| SandboxError::Ns { step: format!("create {}", pin.display()), errno: io_errno(&e) })?;
    mount(Some(source), pin, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(ns_err(format!("pin {kind} namespace at {}", pin.display())))
}

/// Inside the calling thread's new namespaces: the hostname of a new UTS
/// namespace, `lo` up in a new network namespace, the namespaced sysctls
/// (`/proc/sys/net` and the IPC ones follow the writer's namespaces).
fn configure(want: PodNamespaces, hostname: &str, sysctls: &[(String, String)]) -> Result<(), SandboxError> {
    if want.uts && !hostname.is_empty() {
        nix::unistd::sethostname(hostname).map_err(ns_err("sethostname"))?;
    }
    if want.net {
        loopback_up().map_err(ns_err("bring up lo"))?;
    }
    for (key, value) in sysctls {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        std::fs::write(&path, value).map_err(|e| SandboxError::Ns { step: format!("sysctl {key}={value}"), errno: io_errno(&e) })?;
    }
    Ok(())
}

/// Creates the requested namespaces and pins them under `dir` (`ns-net`,
/// `ns-ipc`, `ns-uts`). In the new UTS namespace the hostname is set; in the
/// new network namespace `lo` is brought up. On failure nothing stays pinned.
pub fn pin_namespaces(dir: &Path, want: PodNamespaces, hostname: &str, sysctls: &[(String, String)]) -> Result<(), SandboxError> {
    let pod_dir = dir.to_path_buf();
    let sysctls = sysctls.to_vec();
    let dir = dir.to_path_buf();
    let hostname = hostname.to_string();
    // A thread of its own: unshare moves only the calling thread, and this
    // one ends right after, so no other work ever runs in these namespaces.
    let handle = std::thread::Builder::new()
        .name("berth-pin-ns".into())
        .spawn(move || -> Result<(), SandboxError> {
            if want.flags().is_empty() {
                return Ok(());
            }
            nix::sched::unshare(want.flags()).map_err(ns_err("unshare pod namespaces"))?;
            configure(want, &hostname, &sysctls)?;
            for (kind, _) in want.kinds() {
                pin(&dir, kind, Path::new(&format!("/proc/thread-self/ns/{kind}")))?;
            }
            Ok(())
        })
        .map_err(|e| SandboxError::Init(format!("thread: {e}")))?;
    let result = handle.join().unwrap_or_else(|_| Err(SandboxError::Init("namespace thread panicked".into())));
    if result.is_err() {
        unpin_namespaces(&pod_dir);
    }
    result
}

/// As [`pin_namespaces`], but inside a new user namespace with `mappings`,
/// which owns the others and is pinned as `ns-user`. A multi-threaded
/// berthd cannot unshare a user namespace, so a helper (`monitor_bin
/// pod-userns`, [`pod_userns_main`]) makes them all in one unshare — the
/// user namespace first, the others owned by it — and sets them up with the
/// capabilities it holds there; berthd then writes the mappings (as the
/// helper's privileged parent, so setgroups stays allowed inside) and pins
/// the namespaces through the helper's /proc entry while it waits.
pub fn pin_namespaces_in_userns(
    monitor_bin: &Path,
    dir: &Path,
    want: PodNamespaces,
    mappings: &crate::userns::Mappings,
    hostname: &str,
    sysctls: &[(String, String)],
) -> Result<(), SandboxError> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(ns_err("pipe"))?;
    let mut cmd = crate::spawn::helper_command(monitor_bin);
    cmd.arg("pod-userns").stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null());
    crate::client::pass_fds(&mut cmd, &[(&w, 3)]);
    let mut child = cmd.spawn().map_err(|e| SandboxError::Init(format!("{}: {e}", monitor_bin.display())))?;
    drop(w);
    let request = crate::message::PodUsernsRequest { want, hostname: hostname.to_string(), sysctls: sysctls.to_vec() };
    let result = (|| {
        let stdin = child.stdin.as_mut().ok_or_else(|| SandboxError::Init("no stdin".into()))?;
        channel::send(stdin, &request).map_err(|e| SandboxError::Init(e.to_string()))?;
        let mut reports = std::fs::File::from(r);
        match channel::recv::<crate::message::PodUsernsReport>(&mut reports) {
            Ok(Some(crate::message::PodUsernsReport::Ready)) => {}
            Ok(Some(crate::message::PodUsernsReport::Failed(why))) => return Err(SandboxError::Init(why)),
            Ok(None) => return Err(SandboxError::Init("the namespace helper exited without a word".into())),
            Err(e) => return Err(SandboxError::Init(e.to_string())),
        }
        // The helper is our unreaped child: its pid cannot name another
        // process until we wait for it.
        let proc_dir = PathBuf::from(format!("/proc/{}", child.id()));
        for (file, text) in [("uid_map", mappings.uid_map()), ("gid_map", mappings.gid_map())] {
            std::fs::write(proc_dir.join(file), text)
                .map_err(|e| SandboxError::Ns { step: format!("write {file} ({})", mappings_text(mappings)), errno: io_errno(&e) })?;
        }
        pin(dir, "user", &proc_dir.join("ns/user"))?;
        for (kind, _) in want.kinds() {
            pin(dir, kind, &proc_dir.join("ns").join(kind))?;
        }
        Ok(())
    })();
    // EOF on its stdin ends the helper; on failure it may still be waiting.
    drop(child.stdin.take());
    if result.is_err() {
        let _ = child.kill();
    }
    let _ = child.wait();
    if result.is_err() {
        unpin_namespaces(dir);
    }
    result
}

fn mappings_text(m: &crate::userns::Mappings) -> String {
    format!("uids {} gids {}", m.uid_map().trim().replace('\n', ", "), m.gid_map().trim().replace('\n', ", "))
}

/// `berth-monitor pod-userns`: reads a [`crate::message::PodUsernsRequest`]
/// on stdin, unshares a user namespace and the requested ones in one call
/// (so they belong to it), sets them up, reports ready on fd 3, and keeps
/// them alive until stdin closes — berthd maps and pins them meanwhile.
pub fn pod_userns_main() -> i32 {
    use crate::message::PodUsernsReport;
    // SAFETY: fd 3 was set up by pin_namespaces_in_userns and is ours alone.
    let mut report = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(3) };
    let mut stdin = std::io::stdin().lock();
    let outcome = (|| -> Result<(), String> {
        let request: crate::message::PodUsernsRequest =
            channel::recv(&mut stdin).map_err(|e| e.to_string())?.ok_or_else(|| "no request".to_string())?;
        nix::sched::unshare(CloneFlags::CLONE_NEWUSER | request.want.flags()).map_err(|e| format!("unshare: {e}"))?;
        configure(request.want, &request.hostname, &request.sysctls).map_err(|e| e.to_string())
    })();
    match outcome {
        Ok(()) => {
            let _ = channel::send(&mut report, &PodUsernsReport::Ready);
            // Wait for EOF: berthd has pinned what it needs.
            let _ = std::io::copy(&mut stdin, &mut std::io::sink());
            0
        }
        Err(why) => {
            let _ = channel::send(&mut report, &PodUsernsReport::Failed(why));
            1
        }
    }
}

/// Whether namespace `kind`'s pin in `dir` still holds a namespace (a
/// bind of an nsfs file, not the empty file it was mounted on).
pub fn is_pinned(dir: &Path, kind: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let nsfs = std::fs::metadata(format!("/proc/self/ns/{kind}")).map(|m| m.dev());
    let pin = std::fs::metadata(pin_path(dir, kind)).map(|m| m.dev());
    matches!((nsfs, pin), (Ok(a), Ok(b)) if a == b)
}

/// Unmounts and removes the pins in `dir`; missing ones are fine.
pub fn unpin_namespaces(dir: &Path) {
    for kind in ["net", "ipc", "uts", "user"] {
        let pin = pin_path(dir, kind);
        if pin.exists() {
            let _ = umount2(&pin, MntFlags::MNT_DETACH);
            let _ = std::fs::remove_file(&pin);
        }
    }
    let proc = proc_pin_path(dir);
    if proc.exists() {
        let _ = umount2(&proc, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&proc);
    }
}

/// Where a shared-PID pod keeps a `/proc` of its PID namespace, mounted by
/// its init ([`pin_proc`]).
pub fn proc_pin_path(dir: &Path) -> PathBuf {
    dir.join("ns-pid-proc")
}

/// Mounts a new procfs of the calling process's PID namespace at `dir`'s
/// [`proc_pin_path`], `nosuid,nodev,noexec`. A container's init that joins
/// the namespace attaches a clone of it as the container's `/proc`, so it
/// can build the rootfs outside the namespace: before Linux 6.15 (procfs
/// `pidns=`) only a process inside a PID namespace can mount a /proc of it.
fn pin_proc(dir: &Path) -> Result<(), String> {
    let at = proc_pin_path(dir);
    std::fs::create_dir(&at).map_err(|e| format!("mkdir {}: {e}", at.display()))?;
    let attrs = libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV | libc::MOUNT_ATTR_NOEXEC;
    let proc = crate::mountapi::new_mount("proc", &[], attrs).map_err(|e| e.to_string())?;
    crate::mountapi::attach(std::os::fd::AsFd::as_fd(&proc), &at).map_err(|e| format!("attach at {}: {e}", at.display()))
}

/// `ip link set lo up` for the calling thread's network namespace, by ioctl.
fn loopback_up() -> Result<(), nix::errno::Errno> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: the socket fd is valid and req is a properly sized ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(nix::errno::Errno::last());
    }
    // SAFETY: reading and writing the flags member of the union set by SIOCGIFFLAGS.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: as above.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(nix::errno::Errno::last());
    }
    Ok(())
}

/// Makes `dir` a private mount of its own — the pods dir (the parent of
/// every pod dir) or the dir of the mount template ([`crate::mntns`]). Of
/// its own: every pod mount (pins, /dev/shm) then sits in one subtree that
/// a container's init detaches from its copy of the node's mounts at once
/// ([`crate::annotations::SET_ASIDE`]). Private: mounts made later beneath
/// it do not propagate into other mount namespaces (and a mount namespace
/// can be pinned there at all: the kernel refuses to propagate its pin); the
/// copies a namespace made of pod mounts before still go when berth removes
/// the pin file or shm dir (the kernel detaches the mounts on a deleted
/// dentry in every namespace). Says whether it was made a mount now, was
/// one already (from an earlier start), or was left alone: no mount but
/// holding mounts, pods of a berthd from before this still run, and a bind
/// over the dir would hide their pins.
pub fn mount_private_dir(dir: &Path) -> Result<PrivateDir, SandboxError> {
    let io = |step: &str, e: std::io::Error| SandboxError::Ns { step: format!("{step} {}", dir.display()), errno: io_errno(&e) };
    let dir = std::fs::canonicalize(dir).map_err(|e| io("resolve", e))?;
    let mounts = crate::mountinfo::read_self().map_err(|e| io("read mountinfo for", e))?;
    if !mounts.iter().any(|m| m.mount_point == dir) {
        if mounts.iter().any(|m| m.mount_point.starts_with(&dir)) {
            return Ok(PrivateDir::LeftAlone);
        }
        mount(Some(&dir), &dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(ns_err(format!("bind {} on itself", dir.display())))?;
        let private = mount(None::<&str>, &dir, None::<&str>, MsFlags::MS_PRIVATE, None::<&str>);
        if let Err(e) = private {
            unmount_private_dir(&dir);
            return Err(ns_err(format!("make {} private", dir.display()))(e));
        }
        return Ok(PrivateDir::Made);
    }
    mount(None::<&str>, &dir, None::<&str>, MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(ns_err(format!("make {} private", dir.display())))?;
    Ok(PrivateDir::Kept)
}

/// What [`mount_private_dir`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrivateDir {
    /// Bound on itself now: a start that fails afterwards unmounts it.
    Made,
    /// A mount of its own already (an earlier berthd's, which may have
    /// pods or the template beneath): kept.
    Kept,
    /// No mount, but holding mounts: left as it was.
    LeftAlone,
}

/// Undoes [`mount_private_dir`] (with every mount beneath); not a mount is fine.
pub fn unmount_private_dir(dir: &Path) {
    let _ = umount2(dir, MntFlags::MNT_DETACH);
}

/// Mounts the pod's shared `/dev/shm` (a tmpfs) at `path`.
pub fn mount_shm(path: &Path, size_bytes: u64) -> Result<(), SandboxError> {
    std::fs::create_dir_all(path).map_err(|e| SandboxError::Init(format!("{}: {e}", path.display())))?;
    let data = format!("mode=1777,size={size_bytes}");
    mount(Some("shm"), path, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC, Some(data.as_str()))
        .map_err(ns_err(format!("mount shm at {}", path.display())))
}

/// Unmounts the pod's `/dev/shm`; not mounted is fine.
pub fn unmount_shm(path: &Path) {
    let _ = umount2(path, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir(path);
}

/// The leaf cgroup, under the pod's, that holds the pod's init (on cgroup v2
/// a cgroup with children may hold no process itself).
pub const INIT_CGROUP: &str = "init";

/// The pod's running PID-namespace init.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodInit {
    /// Host pid.
    pub pid: i32,
    /// Its start time.
    pub start_time: u64,
}

/// What `berth-monitor pod-init` needs.
#[derive(Debug, Clone)]
pub struct PodInitArgs {
    /// The pod id: in the command line, so that a crash leaves it findable.
    pub pod_id: String,
    /// The pod's state dir: its namespace pins; in the init's own mount
    /// namespace an empty tmpfs is mounted here to become its root.
    pub pod_dir: PathBuf,
    /// `cgroup.procs` files to join before anything else.
    pub cgroup_procs: Vec<PathBuf>,
}

/// Starts the pod's PID-namespace init via `monitor_bin pod-init`; returns
/// it once it runs as PID 1 of a new namespace, confined (see
/// [`pod_init_main`]), or the reason it could not be.
pub fn spawn_pod_init(monitor_bin: &Path, args: &PodInitArgs) -> Result<PodInit, SandboxError> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(ns_err("pipe"))?;
    let procs: Vec<String> = args.cgroup_procs.iter().map(|p| p.display().to_string()).collect();
    let procs = procs.join(":");
    let s = std::ffi::OsStr::new;
    let argv = [s("pod-init"), s("--pod"), s(&args.pod_id), s("--pod-dir"), args.pod_dir.as_os_str(), s("--cgroup-procs"), s(&procs)];
    let child = crate::spawn::spawn(monitor_bin, &argv, &[(std::os::fd::AsFd::as_fd(&w), 3)])
        .map_err(|e| SandboxError::Init(format!("{}: {e}", monitor_bin.display())))?;
    drop(w);
    let (pid, ready, failure) = read_pod_init_reports(&mut std::fs::File::from(r));
    let _ = child.wait();
    let why_not = |failure: Option<String>| SandboxError::Init(failure.unwrap_or_else(|| "it exited without a word".into()));
    let Some(pid) = pid else { return Err(why_not(failure)) };
    let start_time = crate::pidfd::start_time(pid);
    match start_time {
        Some(start_time) if ready => Ok(PodInit { pid, start_time }),
        _ => {
            if let Some(t) = start_time {
                if let Ok(p) = crate::pidfd::Process::open(pid, t) {
                    let _ = p.signal(Signal::SIGKILL);
                }
            }
            Err(why_not(failure))
        }
    }
}

/// The pod init's pid, whether it said Ready, and what failed, from its
/// reports. Started comes from the process that forked the init, Ready or
/// what failed from the init itself: two writers on one pipe, so Ready may
/// come first (the init can be done before its parent writes).
fn read_pod_init_reports(r: &mut impl std::io::Read) -> (Option<i32>, bool, Option<String>) {
    let (mut pid, mut ready) = (None, false);
    while !(pid.is_some() && ready) {
        match channel::recv::<PodInitReport>(r) {
            Ok(Some(PodInitReport::Started { pid: p })) => pid = Some(p),
            Ok(Some(PodInitReport::Ready)) => ready = true,
            Ok(Some(PodInitReport::Failed(why))) => return (pid, ready, Some(why)),
            Ok(None) => break,
            Err(e) => return (pid, ready, Some(e.to_string())),
        }
    }
    (pid, ready, None)
}

/// Syscalls the pod init makes once confined, beyond waiting and reaping:
/// report ready, close its fds.
const POD_INIT_SYSCALLS: &[&str] = &[
    "write",
    "close_range",
    // berth-pause: exec'd once through its fd, then PR_SET_DUMPABLE.
    "execveat",
    "prctl",
];

/// `berth-monitor pod-init`: joins the pod's cgroup and namespaces, then
/// becomes PID 1 of a new PID namespace that reaps orphans until it is
/// killed. First it pins a /proc of that namespace on the node
/// ([`proc_pin_path`]). It keeps nothing of the host: its root is an empty read-only
/// tmpfs in a mount namespace of its own, it has no capabilities in any set,
/// runs as 65535 with no_new_privs and a seccomp allow-list, and holds no
/// fd — so a container that may ptrace it (`/proc/1/root`, `/proc/1/fd`)
/// finds nothing there. Reports its host pid, then "ready", on fd 3.
pub fn pod_init_main(args: &PodInitArgs) -> i32 {
    // SAFETY: fd 3 was set up by spawn_pod_init and is ours alone.
    let mut report = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(3) };
    let fail = |report: &mut std::fs::File, step: &str, e: &dyn std::fmt::Display| -> i32 {
        let _ = channel::send(report, &PodInitReport::Failed(format!("{step}: {e}")));
        1
    };
    let _ = nix::unistd::setsid();
    // Into the pod's cgroup first: from here on the process is found by it.
    // Single-threaded, as join_single_threaded needs: nothing here spawns a
    // thread.
    for f in &args.cgroup_procs {
        if let Err(e) = crate::cgroup::join_single_threaded(f) {
            return fail(&mut report, &format!("joining cgroup {}", f.display()), &e);
        }
    }
    for (kind, flag) in [("net", CloneFlags::CLONE_NEWNET), ("ipc", CloneFlags::CLONE_NEWIPC), ("uts", CloneFlags::CLONE_NEWUTS)] {
        let pin = pin_path(&args.pod_dir, kind);
        if !pin.exists() {
            continue;
        }
        let joined =
            std::fs::File::open(&pin).map_err(|e| e.to_string()).and_then(|f| nix::sched::setns(f, flag).map_err(|e| e.to_string()));
        if let Err(e) = joined {
            return fail(&mut report, &format!("joining the pod's {kind} namespace"), &e);
        }
    }
    if let Err(e) = nix::sched::unshare(CloneFlags::CLONE_NEWPID) {
        return fail(&mut report, "unshare pid", &e);
    }
    // SAFETY: single-threaded.
    match unsafe { fork() } {
        Ok(ForkResult::Parent { child }) => {
            let _ = channel::send(&mut report, &PodInitReport::Started { pid: child.as_raw() });
            0
        }
        Ok(ForkResult::Child) => {
            // PID 1 of a namespace containers join: its /proc/1/exe is berth's binary.
            crate::process::init::make_non_dumpable();
            // Alone in the namespace, so nothing can attach to it yet, and
            // still in the node's mount namespace: the one moment a /proc of
            // the pod's namespace can be made and left on the node.
            if let Err(e) = pin_proc(&args.pod_dir) {
                return fail(&mut report, "pinning a /proc of the pod's PID namespace", &e);
            }
            if let Err(e) = nix::sched::unshare(CloneFlags::CLONE_NEWNS) {
                return fail(&mut report, "unshare mount", &e);
            }
            // berth-pause, opened while the host's root is still there; exec'd
            // once confined (a forked berth-monitor keeps ~2 MiB resident,
            // berth-pause a few pages).
            let pause = pause_binary();
            if let Err((step, e)) = confine_pod_init(&args.pod_dir) {
                return fail(&mut report, step, &e);
            }
            let mut all = SigSet::all();
            all.remove(Signal::SIGKILL);
            let _ = all.thread_block();
            let _ = channel::send(&mut report, &PodInitReport::Ready);
            // No fd at all from here on: nothing to find through /proc/1/fd.
            // berth-pause's fd is close-on-exec and goes with the exec.
            match &pause {
                Some(fd) => close_all_but(fd.as_raw_fd()),
                // SAFETY: close_range only closes fds; none is used afterwards.
                None => unsafe {
                    libc::syscall(libc::SYS_close_range, 0, libc::c_uint::MAX, 0);
                },
            }
            if let Some(fd) = pause {
                exec_pause(&fd);
            }
            let mut wait = SigSet::empty();
            wait.add(Signal::SIGCHLD);
            wait.add(Signal::SIGTERM);
            loop {
                match wait.wait() {
                    // SAFETY: _exit ends the process without running anything else.
                    Ok(Signal::SIGTERM) => unsafe { libc::_exit(0) },
                    _ => {
                        while let Ok(s) =
                            nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(-1), Some(nix::sys::wait::WaitPidFlag::WNOHANG))
                        {
                            if s == nix::sys::wait::WaitStatus::StillAlive {
                                break;
                            }
                        }
                    }
                }
            }
        }
        Err(e) => fail(&mut report, "fork", &e),
    }
}

/// berth-pause next to this binary, opened close-on-exec; None when it is
/// not there (the init then waits in berth-monitor itself; berthd warns).
fn pause_binary() -> Option<std::os::fd::OwnedFd> {
    let path = std::env::current_exe().ok()?.with_file_name("berth-pause");
    std::fs::File::open(path).ok().map(std::os::fd::OwnedFd::from)
}

/// Closes every fd but `keep`.
fn close_all_but(keep: std::os::fd::RawFd) {
    let keep = keep as libc::c_uint;
    // SAFETY: close_range only closes fds; the ranges leave `keep` open and
    // no other fd is used afterwards.
    unsafe {
        if keep > 0 {
            libc::syscall(libc::SYS_close_range, 0, keep - 1, 0);
        }
        libc::syscall(libc::SYS_close_range, keep + 1, libc::c_uint::MAX, 0);
    }
}

/// Replaces this process with berth-pause, keeping the command line (start-up
/// GC finds a pod's init by it after a crash). Returns only if the exec failed.
fn exec_pause(fd: &std::os::fd::OwnedFd) {
    let args: Vec<std::ffi::CString> =
        std::env::args_os().filter_map(|a| std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(a.as_os_str())).ok()).collect();
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: argv and envp are null-terminated arrays of pointers to
    // C strings that outlive the call; the empty path with AT_EMPTY_PATH
    // executes the file behind `fd`.
    unsafe {
        libc::syscall(libc::SYS_execveat, fd.as_raw_fd(), c"".as_ptr(), argv.as_ptr(), envp.as_ptr(), libc::AT_EMPTY_PATH);
    }
}

/// The pod init's confinement, in the order each step still has the
/// privilege it needs: an empty read-only root, then capabilities, ids,
/// no_new_privs and the seccomp filter.
fn confine_pod_init(mountpoint: &Path) -> Result<(), (&'static str, String)> {
    let e = |step: &'static str| move |err: nix::errno::Errno| (step, err.to_string());
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>).map_err(e("make / private"))?;
    let hidden = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("pod-init"), mountpoint, Some("tmpfs"), hidden, Some("mode=0555,size=4k")).map_err(e("mount the init's root"))?;
    nix::unistd::chdir(mountpoint).map_err(e("chdir to the init's root"))?;
    nix::unistd::pivot_root(".", ".").map_err(e("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(e("detach the host's root"))?;
    nix::unistd::chdir("/").map_err(e("chdir /"))?;
    mount(None::<&str>, "/", None::<&str>, hidden | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY, None::<&str>)
        .map_err(e("remount the init's root read-only"))?;
    for cap in caps::all() {
        caps::drop(None, caps::CapSet::Bounding, cap).map_err(|err| ("drop the bounding set", err.to_string()))?;
    }
    caps::clear(None, caps::CapSet::Inheritable).map_err(|err| ("clear inheritable capabilities", err.to_string()))?;
    caps::clear(None, caps::CapSet::Ambient).map_err(|err| ("clear ambient capabilities", err.to_string()))?;
    // pause's ids; without keepcaps the switch empties permitted and effective.
    let nobody = nix::unistd::Gid::from_raw(65535);
    nix::unistd::setgroups(&[]).map_err(e("setgroups"))?;
    nix::unistd::setresgid(nobody, nobody, nobody).map_err(e("setresgid"))?;
    let nobody = nix::unistd::Uid::from_raw(65535);
    nix::unistd::setresuid(nobody, nobody, nobody).map_err(e("setresuid"))?;
    crate::process::security::no_new_privs().map_err(|err| ("no_new_privs", err.to_string()))?;
    crate::process::security::load_allow_list(&[crate::process::security::WAIT_AND_REAP, POD_INIT_SYSCALLS])
        .map_err(|err| ("seccomp filter", err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(reports: &[PodInitReport]) -> std::io::Cursor<Vec<u8>> {
        let mut buf = Vec::new();
        for r in reports {
            channel::send(&mut buf, r).unwrap();
        }
        std::io::Cursor::new(buf)
    }

    #[test]
    fn pod_init_reports_are_taken_in_either_order() {
        use PodInitReport::{Failed, Ready, Started};
        assert_eq!(read_pod_init_reports(&mut stream(&[Started { pid: 7 }, Ready])), (Some(7), true, None));
        // The init may be ready before its parent has written Started.
        assert_eq!(read_pod_init_reports(&mut stream(&[Ready, Started { pid: 7 }])), (Some(7), true, None));
        assert_eq!(read_pod_init_reports(&mut stream(&[Started { pid: 7 }, Failed("no".into())])), (Some(7), false, Some("no".into())));
        assert_eq!(read_pod_init_reports(&mut stream(&[Started { pid: 7 }])), (Some(7), false, None));
        assert_eq!(read_pod_init_reports(&mut stream(&[])), (None, false, None));
    }
}

//! Pod sandboxes without a pause image: the pod's network, IPC and UTS
//! namespaces are created by a short-lived thread and pinned by bind mounts;
//! a PID namespace, which needs a living init, gets berth's own tiny one
//! (`berth-monitor pod-init`).

use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::unistd::{fork, ForkResult};

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

fn ns_err(step: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> SandboxError {
    let step = step.into();
    move |errno| SandboxError::Ns { step, errno }
}

/// Which namespaces the pod gets of its own.
#[derive(Debug, Clone, Copy, Default)]
pub struct PodNamespaces {
    /// A network namespace (else the host's).
    pub net: bool,
    /// An IPC namespace (else the host's).
    pub ipc: bool,
    /// A UTS namespace (else the host's).
    pub uts: bool,
}

/// The pin file of namespace `kind` (`net`, `ipc`, `uts`) in a pod dir.
pub fn pin_path(dir: &Path, kind: &str) -> PathBuf {
    dir.join(format!("ns-{kind}"))
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
            let mut flags = CloneFlags::empty();
            let mut kinds = Vec::new();
            if want.net {
                flags |= CloneFlags::CLONE_NEWNET;
                kinds.push("net");
            }
            if want.ipc {
                flags |= CloneFlags::CLONE_NEWIPC;
                kinds.push("ipc");
            }
            if want.uts {
                flags |= CloneFlags::CLONE_NEWUTS;
                kinds.push("uts");
            }
            if flags.is_empty() {
                return Ok(());
            }
            nix::sched::unshare(flags).map_err(ns_err("unshare pod namespaces"))?;
            if want.uts && !hostname.is_empty() {
                nix::unistd::sethostname(&hostname).map_err(ns_err("sethostname"))?;
            }
            if want.net {
                loopback_up().map_err(ns_err("bring up lo"))?;
            }
            // /proc/sys/net and the IPC sysctls follow the writer's (this
            // thread's) namespaces.
            for (key, value) in &sysctls {
                let path = format!("/proc/sys/{}", key.replace('.', "/"));
                std::fs::write(&path, value).map_err(|e| SandboxError::Ns {
                    step: format!("sysctl {key}={value}"),
                    errno: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                })?;
            }
            for kind in kinds {
                let pin = pin_path(&dir, kind);
                let source = format!("/proc/thread-self/ns/{kind}");
                std::fs::File::create(&pin).map_err(|e| SandboxError::Ns {
                    step: format!("create {}", pin.display()),
                    errno: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                })?;
                mount(Some(source.as_str()), &pin, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                    .map_err(ns_err(format!("pin {kind} namespace at {}", pin.display())))?;
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

/// Unmounts and removes the pins in `dir`; missing ones are fine.
pub fn unpin_namespaces(dir: &Path) {
    for kind in ["net", "ipc", "uts"] {
        let pin = pin_path(dir, kind);
        if pin.exists() {
            let _ = umount2(&pin, MntFlags::MNT_DETACH);
            let _ = std::fs::remove_file(&pin);
        }
    }
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

/// Starts the pod's PID-namespace init via `monitor_bin pod-init`; returns
/// its host pid once it runs as PID 1 of a new namespace.
pub fn spawn_pod_init(monitor_bin: &Path) -> Result<i32, SandboxError> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(ns_err("pipe"))?;
    let mut cmd = Command::new(monitor_bin);
    cmd.arg("pod-init").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    crate::client::pass_as_fd3(&mut cmd, &w);
    let mut child = cmd.spawn().map_err(|e| SandboxError::Init(format!("{}: {e}", monitor_bin.display())))?;
    drop(w);
    let mut line = String::new();
    let _ = BufReader::new(std::fs::File::from(r)).read_line(&mut line);
    let _ = child.wait();
    line.trim().parse::<i32>().map_err(|_| SandboxError::Init(format!("unexpected answer {line:?}")))
}

/// `berth-monitor pod-init`: becomes PID 1 of a new PID namespace that
/// reaps orphans until it is killed. Reports its host pid on fd 3.
pub fn pod_init_main() -> i32 {
    // SAFETY: fd 3 was set up by spawn_pod_init and is ours alone.
    let report: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(3) };
    let _ = nix::unistd::setsid();
    if nix::sched::unshare(CloneFlags::CLONE_NEWPID).is_err() {
        return 1;
    }
    // SAFETY: single-threaded.
    match unsafe { fork() } {
        Ok(ForkResult::Parent { child }) => {
            let _ = nix::unistd::write(&report, format!("{}\n", child.as_raw()).as_bytes());
            0
        }
        Ok(ForkResult::Child) => {
            drop(report);
            // PID 1 of a namespace containers join: its /proc/1/exe is berth's binary.
            crate::init::make_non_dumpable();
            crate::init::close_on_exec_from(0);
            let _ = nix::unistd::chdir("/");
            let mut all = SigSet::all();
            all.remove(Signal::SIGKILL);
            let _ = all.thread_block();
            let mut wait = SigSet::empty();
            wait.add(Signal::SIGCHLD);
            wait.add(Signal::SIGTERM);
            loop {
                match wait.wait() {
                    Ok(Signal::SIGTERM) => return 0,
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
        Err(_) => 1,
    }
}

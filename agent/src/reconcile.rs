//! Start-up garbage collection of what no record claims: a crash between a
//! side effect and the record that would have named it leaves processes,
//! cgroups, mounts and directories nobody tracks. Every process berth starts
//! names its pod or container in its command line (`berth-monitor pod-init
//! --pod <id> --pod-dir …`, `berth-monitor monitor --id <id> --bundle …`,
//! `berth-monitor exec … --bundle …`),
//! and every pod berth names a cgroup for lives under its cgroup parent, so
//! all of it can be found here and ended.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use berth_runtime::{cgroup, sandbox};

use crate::node::Node;

/// A berth process found in /proc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stray {
    /// Its pid.
    pub pid: i32,
    /// `pod-init` or `monitor`.
    pub role: String,
    /// The pod or container it names.
    pub id: String,
    /// The pod dir or bundle it names.
    pub dir: PathBuf,
}

/// What a berth-monitor command line names, if it is one.
pub fn parse_cmdline(args: &[String]) -> Option<Stray> {
    let bin = Path::new(args.first()?).file_name()?.to_str()?;
    // A handler may run its own build, named berth-monitor-<something>.
    if !bin.starts_with("berth-monitor") {
        return None;
    }
    let role = args.get(1)?.clone();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let (id, dir) = match role.as_str() {
        "pod-init" => (value("--pod")?, value("--pod-dir")?),
        "monitor" => (value("--id")?, value("--bundle")?),
        // An exec helper names the container by its bundle.
        "exec" => {
            let bundle = value("--bundle")?;
            (Path::new(&bundle).file_name()?.to_str()?.to_string(), bundle)
        }
        _ => return None,
    };
    Some(Stray { pid: 0, role, id, dir: PathBuf::from(dir) })
}

fn berth_processes() -> Vec<Stray> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else { continue };
        let args: Vec<String> = raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if let Some(mut s) = parse_cmdline(&args) {
            s.pid = pid;
            out.push(s);
        }
    }
    out
}

fn kill(pid: i32, why: &str) {
    signal(pid, nix::sys::signal::Signal::SIGKILL, why);
}

fn signal(pid: i32, sig: nix::sys::signal::Signal, why: &str) {
    // Through a pidfd: the pid is the process just read, not a reused one.
    let start = berth_runtime::pidfd::start_time(pid);
    if let Some(start) = start {
        if let Ok(p) = berth_runtime::pidfd::Process::open(pid, start) {
            tracing::warn!(pid, "ending a berth process no record claims: {why}");
            let _ = p.signal(sig);
        }
    }
}

/// Ends berth processes of this node's state dir that no record claims, and
/// removes pod and container directories and cgroups likewise. Blocking.
pub fn collect_strays(node: &Node) {
    let pods: HashSet<String> = node.pods.list().into_iter().map(|p| p.id).collect();
    let containers: HashSet<String> = node.containers.list().into_iter().map(|c| c.id).collect();
    use berth_runtime::pidfd::{pid_namespace_of, PidNamespace};
    for s in berth_processes() {
        // The path alone does not make a process ours: a berthd nested in a
        // container of this node (a kind-style node) may use the same state
        // path inside it. Ours are in this PID namespace (monitors, exec
        // helpers) or PID 1 of a namespace right below it (pod inits).
        let ours = match s.role.as_str() {
            "pod-init" => s.dir == node.pod_dir(&s.id) && pid_namespace_of(s.pid).ok() == Some(PidNamespace::Child),
            _ => s.dir == node.bundle(&s.id) && pid_namespace_of(s.pid).ok() == Some(PidNamespace::Same),
        };
        // No exec is in flight before berthd serves: a helper now belongs to
        // an RPC of the previous berthd, whose client is gone. SIGTERM: the
        // helper has its exec init kill and reap the command's whole tree.
        if ours && s.role == "exec" {
            signal(s.pid, nix::sys::signal::Signal::SIGTERM, &format!("an exec of the previous berthd in container {}", s.id));
            continue;
        }
        if !ours {
            continue;
        }
        match s.role.as_str() {
            "pod-init" if !pods.contains(&s.id) => kill(s.pid, &format!("the init of unknown pod {}", s.id)),
            "monitor" if !containers.contains(&s.id) => kill(s.pid, &format!("the monitor of unknown container {}", s.id)),
            _ => {}
        }
    }
    for (dir, known) in [(node.config.state.join("pods"), &pods), (node.config.state.join("containers"), &containers)] {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            if known.contains(&id) {
                continue;
            }
            tracing::warn!(path = %e.path().display(), "removing a directory no record claims");
            sandbox::unmount_shm(&e.path().join("shm"));
            sandbox::unpin_namespaces(&e.path());
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    for e in std::fs::read_dir(node.containers_dir()).into_iter().flatten().flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        if !containers.contains(&id) && !id.starts_with('.') {
            tracing::warn!(path = %e.path().display(), "removing a writable layer no record claims");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    // Container cgroups under the pods' cgroups, one per container id.
    for pod in node.pods.list() {
        for child in cgroup::children(&pod.cgroup) {
            if node.cgroups.container_id(&child).is_some_and(|id| !containers.contains(&id)) {
                let path = format!("{}/{child}", pod.cgroup);
                tracing::warn!(cgroup = %path, "removing a container cgroup no record claims");
                if let Err(e) = node.cgroups.remove(&path) {
                    tracing::warn!(cgroup = %path, "{e}");
                }
            }
        }
    }
    // Pod cgroups berth named live under its handlers' parents, one per pod id.
    let mut parents: Vec<&str> =
        std::iter::once(&node.default_handler).chain(node.handlers.values()).map(|h| h.cgroup_parent.as_str()).collect();
    parents.sort();
    parents.dedup();
    for parent in parents {
        collect_pod_cgroups(&node.cgroups, parent, &pods);
    }
}

/// Removes the pod cgroups under `parent` that no pod record claims.
fn collect_pod_cgroups(cgroups: &crate::cgroups::Cgroups, parent: &str, pods: &std::collections::HashSet<String>) {
    for child in cgroup::children(parent) {
        if cgroups.own_pod_id(parent, &child).is_some_and(|id| !pods.contains(&id)) {
            let path = format!("{parent}/{child}");
            tracing::warn!(cgroup = %path, "removing a pod cgroup no record claims");
            if let Err(e) = cgroups.remove(&path) {
                tracing::warn!(cgroup = %path, "{e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn monitor_command_lines_name_their_pod_or_container() {
        let s = parse_cmdline(&args("/usr/bin/berth-monitor pod-init --pod abc --pod-dir /s/pods/abc --cgroup-procs /x")).unwrap();
        assert_eq!((s.role.as_str(), s.id.as_str(), s.dir.as_path()), ("pod-init", "abc", Path::new("/s/pods/abc")));
        let s = parse_cmdline(&args("berth-monitor monitor --id c1 --bundle /s/containers/c1 --sync-fd 3")).unwrap();
        assert_eq!((s.role.as_str(), s.id.as_str()), ("monitor", "c1"));
        let s = parse_cmdline(&args("berth-monitor exec --tty false --bundle /s/containers/c2 --pid 1 -- sh")).unwrap();
        assert_eq!((s.role.as_str(), s.id.as_str()), ("exec", "c2"));
        // A monitor once it exec'd its loop (runtime/src/monitor/handoff.rs).
        let s = parse_cmdline(&args(
            "/usr/bin/berth-monitor-loop monitor --id c3 --bundle /s/containers/c3 --child 9 --started-ns 1 --listener 4",
        ))
        .unwrap();
        assert_eq!((s.role.as_str(), s.id.as_str(), s.dir.as_path()), ("monitor", "c3", Path::new("/s/containers/c3")));
        assert!(parse_cmdline(&args("berth-monitor version")).is_none());
        assert!(parse_cmdline(&args("/bin/sleep monitor --id c1 --bundle /b")).is_none());
        assert!(parse_cmdline(&args("berth-monitor monitor --id")).is_none());
    }
}

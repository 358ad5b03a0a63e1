//! Pod sandbox lifecycle: Creating → Ready → NotReady → removed. The intent
//! is recorded before any host resource exists, so start-up can clean up
//! what a crash left half made.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use berth_runtime::{cgroup, sandbox};

use crate::error::{Error, Result};
use crate::node::Node;
use crate::spec::ns_mode;
use crate::store::{PodRecord, PodState};
use crate::util::{now_ns, random_id, Stages};

/// DNS settings for the pod's resolv.conf.
#[derive(Debug, Clone, Default)]
pub struct PodDns {
    /// nameserver lines.
    pub servers: Vec<String>,
    /// search domains.
    pub searches: Vec<String>,
    /// options.
    pub options: Vec<String>,
}

impl PodDns {
    /// resolv.conf text, or None to use the host's.
    pub fn resolv_conf(&self) -> Option<String> {
        if self.servers.is_empty() && self.searches.is_empty() && self.options.is_empty() {
            return None;
        }
        let mut s = String::new();
        if !self.searches.is_empty() {
            s.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        for n in &self.servers {
            s.push_str(&format!("nameserver {n}\n"));
        }
        if !self.options.is_empty() {
            s.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        Some(s)
    }
}

fn internal(what: &str, e: impl std::fmt::Display) -> Error {
    Error::internal(what, e.to_string())
}

/// Finds a pod by id or unique prefix.
pub fn find(node: &Node, id: &str) -> Result<PodRecord> {
    node.pods.find(id)
}

/// The longest hostname the kernel takes (HOST_NAME_MAX).
const HOSTNAME_MAX: usize = 64;

/// Checks a pod hostname before anything is created: at most 64 bytes, dot-
/// separated labels of letters, digits, `-` and `_` (crictl's own examples
/// use `_`), no label empty or starting or ending with `-`.
pub fn check_hostname(h: &str) -> Result<()> {
    let field = "config.hostname";
    if h.len() > HOSTNAME_MAX {
        return Err(Error::invalid(field, format!("{h:?} is {} bytes, longer than {HOSTNAME_MAX}", h.len())));
    }
    for label in h.split('.') {
        let valid = !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(Error::invalid(field, format!("{h:?} is not a valid hostname")));
        }
    }
    Ok(())
}

fn node_hostname() -> Result<String> {
    let node = nix::unistd::gethostname().map_err(|e| internal("the node's hostname", e))?;
    Ok(node.to_string_lossy().into_owned())
}

/// The hostname a pod gets: in a UTS namespace of its own the one asked
/// for (checked), or the node's when none is; on the host's, the node's.
fn pod_hostname(rec: &PodRecord) -> Result<String> {
    if rec.network_mode == ns_mode::NODE || rec.hostname.is_empty() {
        return node_hostname();
    }
    check_hostname(&rec.hostname)?;
    Ok(rec.hostname.clone())
}

/// RunPodSandbox: returns the new pod's id. A retry with the same name key
/// while the first is in flight gets the first one's result.
pub async fn run(node: &Arc<Node>, mut record: PodRecord, dns: PodDns) -> Result<String> {
    record.hostname = pod_hostname(&record)?;
    let key = format!("pod:{}", record.name_key());
    let check_node = node.clone();
    let check_key = record.name_key();
    let check = move || {
        if let Some(p) = check_node.pods.by_name(&check_key) {
            return Err(Error::AlreadyExists(format!("pod sandbox {check_key} already exists as {}", p.id)));
        }
        Ok(())
    };
    let node2 = node.clone();
    node.flights
        .run(key, check, async move {
            record.id = random_id().map_err(|e| internal("pod id from the kernel's random source", e))?;
            record.created_at_ns = now_ns();
            if record.cgroup.is_empty() {
                record.cgroup = node2.cgroups.own_pod_path(&node2.handler_of(&record).cgroup_parent, &record.id);
                record.own_cgroup = true;
            }
            record.state = PodState::Creating;
            node2.pods.put(&record)?;
            crate::fault::point("pod.run.after_intent");
            let a = node2.clone();
            let rec = record.clone();
            let made = tokio::task::spawn_blocking(move || setup_host(&a, rec, &dns)).await?;
            // A Ready record that cannot be written (a full disk) fails the
            // pod like a failed setup, undone now with what setup made (its
            // init's pid included), not left to the next start-up.
            let (rec, outcome) = match made {
                Ok((rec, stages)) => {
                    crate::fault::point("pod.run.after_init");
                    let written = crate::fault::failure("pod.run.ready_record").map_or_else(|| node2.pods.put(&rec), Err);
                    (rec, written.map(|()| stages))
                }
                Err(e) => (record.clone(), Err(e)),
            };
            match outcome {
                Ok(stages) => {
                    crate::telemetry::get().pod_stages(&stages);
                    tracing::info!(pod_id = %rec.id, stages_us = %stages, "pod sandbox ready");
                    Ok(rec.id)
                }
                Err(e) => {
                    tracing::warn!(pod_id = %rec.id, "pod sandbox setup failed: {e}");
                    let a = node2.clone();
                    let _ = tokio::task::spawn_blocking(move || teardown_host(&a, &rec)).await;
                    let _ = node2.pods.delete(&record.id);
                    Err(e)
                }
            }
        })
        .await
}

/// Makes the host side of a pod: pinned namespaces, /dev/shm, files, cgroup,
/// PID-namespace init. On error the caller tears down.
fn setup_host(node: &Node, mut rec: PodRecord, dns: &PodDns) -> Result<(PodRecord, Stages)> {
    let mut stages = Stages::new();
    let dir = node.pod_dir(&rec.id);
    std::fs::create_dir_all(&dir).map_err(|e| internal(&format!("{}", dir.display()), e))?;
    let own_net = rec.network_mode != ns_mode::NODE;
    let want = sandbox::PodNamespaces { net: own_net, ipc: rec.ipc_mode != ns_mode::NODE, uts: own_net };
    let hostname = rec.hostname.clone();
    let sysctls: Vec<(String, String)> = rec.sysctls.clone().into_iter().collect();
    match &rec.userns {
        Some(m) => sandbox::pin_namespaces_in_userns(node.handler_of(&rec).runtime.monitor_bin(), &dir, want, m, &hostname, &sysctls),
        None => sandbox::pin_namespaces(&dir, want, &hostname, &sysctls),
    }
    .map_err(|e| internal("pod namespaces", e))?;
    stages.mark("namespaces");
    crate::fault::point("pod.run.after_namespaces");
    if want.ipc {
        sandbox::mount_shm(&dir.join("shm"), node.config.runtime.shm_size_bytes).map_err(|e| internal("pod /dev/shm", e))?;
        stages.mark("shm");
    }
    if own_net {
        // Only pods with hostPorts can conflict with this one's, and only
        // if it has any: a copy of every record grew this stage with the
        // pod count.
        let others =
            if rec.port_mappings.is_empty() { Vec::new() } else { node.pods.filter(|p| p.id != rec.id && !p.port_mappings.is_empty()) };
        node.network.setup(&node.store, &others, &mut rec, &sandbox::pin_path(&dir, "net"), dns, &mut stages)?;
        stages.mark("network");
        crate::fault::point("pod.run.after_network");
    }
    write_file(&dir.join("hostname"), &format!("{hostname}\n"))?;
    write_file(&dir.join("hosts"), &hosts_file(&hostname, &rec.ips))?;
    let resolv = match dns.resolv_conf() {
        Some(text) => text,
        None => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    };
    write_file(&dir.join("resolv.conf"), &resolv)?;
    if let Some(m) = &rec.userns {
        // Root in the pod owns its /etc files, as it would have written them.
        let (uid, gid) = m.host_root();
        for f in ["hostname", "hosts", "resolv.conf"] {
            let path = dir.join(f);
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(|e| internal(&path.display().to_string(), e))?;
        }
    }
    stages.mark("files");
    node.cgroups.create_pod(&rec.cgroup).map_err(|e| internal("pod cgroup", e))?;
    stages.mark("cgroup");
    if rec.pid_mode == ns_mode::POD {
        let monitor = node.handler_of(&rec).runtime.monitor_bin();
        let path = init_cgroup(node, &rec);
        let pending =
            node.cgroups.create_leaf(&path, &Default::default(), node.cgroup_v2, monitor).map_err(|e| internal("pod init cgroup", e))?;
        let args = sandbox::PodInitArgs { pod_id: rec.id.clone(), pod_dir: dir.clone(), cgroup_procs: pending.procs.clone() };
        let init = sandbox::spawn_pod_init(monitor, &args).map_err(|e| internal("pod PID namespace", e))?;
        pending.joined();
        rec.init_pid = init.pid;
        rec.init_start_time = init.start_time;
        stages.mark("pid_init");
    }
    rec.state = PodState::Ready;
    Ok((rec, stages))
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    let mut f = std::fs::File::create(path).map_err(|e| internal(&path.display().to_string(), e))?;
    f.write_all(text.as_bytes()).map_err(|e| internal(&path.display().to_string(), e))
}

/// /etc/hosts for the pod, as kubelet's default.
pub fn hosts_file(hostname: &str, ips: &[String]) -> String {
    let mut s = String::from(
        "# Kubernetes-managed hosts file (berth).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    for ip in ips {
        s.push_str(&format!("{ip}\t{hostname}\n"));
    }
    s
}

/// The leaf cgroup of the pod's PID-namespace init.
fn init_cgroup(node: &Node, rec: &PodRecord) -> String {
    node.cgroups.init_path(&rec.cgroup, &rec.id)
}

/// Ends the pod's PID-namespace init, if it still is the process recorded.
fn kill_init(rec: &PodRecord) {
    if rec.init_pid > 0 {
        if let Ok(init) = berth_runtime::pidfd::Process::open(rec.init_pid, rec.init_start_time) {
            let _ = init.signal(nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Removes every host resource of a pod (idempotent, best effort, logged).
fn teardown_host(node: &Node, rec: &PodRecord) {
    if let Err(e) = node.network.teardown(&node.store, rec, &sandbox::pin_path(&node.pod_dir(&rec.id), "net")) {
        tracing::warn!(pod_id = %rec.id, "releasing the pod network: {e}");
    }
    kill_init(rec);
    let cgroups = if rec.own_cgroup { vec![rec.cgroup.clone()] } else { vec![init_cgroup(node, rec)] };
    for cg in cgroups {
        if let Err(e) = node.cgroups.remove(&cg) {
            tracing::warn!(pod_id = %rec.id, "removing cgroup {cg}: {e}");
        }
    }
    let dir = node.pod_dir(&rec.id);
    sandbox::unmount_shm(&dir.join("shm"));
    sandbox::unpin_namespaces(&dir);
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(pod_id = %rec.id, "removing {}: {e}", dir.display());
        }
    }
}

/// StopPodSandbox: stops every container (grace, then kill), then records
/// NotReady before it releases anything (so a crash in between leaves a pod
/// that start-up finishes stopping, never one reported Ready without its
/// init or network), ends the PID init and releases the network. Unknown
/// or stopped pods are fine; a stop that was cut short is finished.
pub async fn stop(node: &Arc<Node>, id: &str) -> Result<()> {
    let Some(pod) = node.pods.find_opt(id)? else { return Ok(()) };
    let lock = node.locks.get(&pod.id);
    let _held = lock.lock().await;
    let mut stages = Stages::new();
    let grace = node.config.runtime.pod_stop_grace_seconds as i64;
    for c in node.containers_of(&pod.id) {
        crate::container::stop(node, &c.id, grace).await?;
    }
    stages.mark("containers");
    let Some(mut pod) = node.pods.get(&pod.id) else { return Ok(()) };
    if pod.state == PodState::NotReady && pod.host_released {
        return Ok(());
    }
    pod.state = PodState::NotReady;
    node.pods.put(&pod)?;
    stages.mark("intent_record");
    crate::fault::point("pod.stop.after_intent");
    let a = node.clone();
    let p = pod.clone();
    stages = tokio::task::spawn_blocking(move || release_for_stop(&a, &p, stages)).await??;
    pod.ips.clear();
    pod.host_released = true;
    node.pods.put(&pod)?;
    stages.mark("released_record");
    tracing::info!(pod_id = %pod.id, stages_us = %stages, "pod sandbox stopped");
    Ok(())
}

/// What a stop releases: the PID init (and anything in its cgroup) and the
/// pod network. Idempotent.
fn release_for_stop(node: &Node, pod: &PodRecord, mut stages: Stages) -> Result<Stages> {
    kill_init(pod);
    if pod.pid_mode == ns_mode::POD {
        cgroup::signal_all(&init_cgroup(node, pod), nix::sys::signal::Signal::SIGKILL);
    }
    stages.mark("init");
    crate::fault::point("pod.stop.after_init_killed");
    node.network.teardown(&node.store, pod, &sandbox::pin_path(&node.pod_dir(&pod.id), "net"))?;
    stages.mark("network");
    Ok(stages)
}

/// Whether a Ready pod still has what Ready promises, by the kernel's
/// account: its pinned network namespace with an interface besides lo, its
/// PID-namespace init, and its pinned user namespace (new containers join it).
fn health(node: &Node, pod: &PodRecord) -> std::result::Result<(), String> {
    let init = berth_runtime::pidfd::Process::open(pod.init_pid, pod.init_start_time);
    if pod.pid_mode == ns_mode::POD && !init.is_ok_and(|p| !p.exited()) {
        return Err(format!("its PID-namespace init (pid {}) is gone", pod.init_pid));
    }
    if pod.userns.is_some() && !sandbox::is_pinned(&node.pod_dir(&pod.id), "user") {
        return Err("its user namespace is no longer pinned".into());
    }
    if pod.network_mode != ns_mode::NODE {
        let pin = sandbox::pin_path(&node.pod_dir(&pod.id), "net");
        let dev = berth_network::netlink::in_netns(&pin, || {
            std::fs::read_to_string("/proc/thread-self/net/dev").map_err(|e| berth_network::NetError::Config(e.to_string()))
        })
        .map_err(|e| format!("its network namespace is gone ({e})"))?;
        // eth0: the built-in network's and kubelet's CNI_IFNAME. Other
        // interfaces (tunl0, sit0…) appear in every namespace with their
        // modules and say nothing.
        let eth0 = dev.lines().skip(2).filter_map(|l| l.split_once(':')).any(|(n, _)| n.trim() == "eth0");
        if !eth0 && !pod.ips.is_empty() {
            return Err("its network interface eth0 is gone".into());
        }
    }
    Ok(())
}

/// RemovePodSandbox: removes containers, namespaces, cgroup, dirs and the
/// record. Unknown pods are fine.
pub async fn remove(node: &Arc<Node>, id: &str) -> Result<()> {
    let Some(pod) = node.pods.find_opt(id)? else { return Ok(()) };
    for c in node.containers_of(&pod.id) {
        crate::container::remove(node, &c.id).await?;
    }
    let lock = node.locks.get(&pod.id);
    let _held = lock.lock().await;
    let a = node.clone();
    let rec = pod.clone();
    tokio::task::spawn_blocking(move || teardown_host(&a, &rec)).await?;
    crate::fault::point("pod.remove.after_teardown");
    node.pods.delete(&pod.id)?;
    node.cpu_samples.forget(&pod.cgroup);
    tracing::info!(pod_id = %pod.id, "pod sandbox removed");
    Ok(())
}

/// Start-up: each pod record is checked against the kernel. A pod whose
/// creation a crash interrupted is torn down and forgotten; a stop that was
/// cut short is finished; a Ready pod that lost its init or network is
/// reported NotReady (and what is left of it released), so kubelet makes a
/// new sandbox instead of using a dead one.
pub async fn recover(node: &Arc<Node>) -> Result<()> {
    for pod in node.pods.list() {
        let a = node.clone();
        match pod.state {
            PodState::Creating => {
                tracing::warn!(pod_id = %pod.id, "cleaning up a pod sandbox whose creation was interrupted");
                let rec = pod.clone();
                let _ = tokio::task::spawn_blocking(move || teardown_host(&a, &rec)).await;
                let _ = node.pods.delete(&pod.id);
                continue;
            }
            PodState::NotReady if !pod.host_released => {
                tracing::warn!(pod_id = %pod.id, "finishing a pod sandbox stop that was interrupted");
            }
            PodState::Ready => {
                let p = pod.clone();
                let Err(why) = tokio::task::spawn_blocking(move || health(&a, &p)).await? else { continue };
                tracing::warn!(pod_id = %pod.id, "pod sandbox is not ready any more: {why}");
            }
            PodState::NotReady => continue,
        }
        let mut pod = pod;
        pod.state = PodState::NotReady;
        node.pods.put(&pod)?;
        let a = node.clone();
        let p = pod.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || release_for_stop(&a, &p, Stages::new()).map(drop)).await? {
            tracing::warn!(pod_id = %pod.id, "releasing the pod: {e}");
            continue;
        }
        pod.ips.clear();
        pod.host_released = true;
        node.pods.put(&pod)?;
    }
    let a = node.clone();
    tokio::task::spawn_blocking(move || a.network.collect_garbage(&a.store, &a.pods.list())).await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_from_dns_config() {
        let dns = PodDns {
            servers: vec!["10.0.0.10".into()],
            searches: vec!["ns.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(dns.resolv_conf().unwrap(), "search ns.svc.cluster.local svc.cluster.local\nnameserver 10.0.0.10\noptions ndots:5\n");
        assert!(PodDns::default().resolv_conf().is_none());
    }

    #[test]
    fn hostnames_are_checked() {
        for ok in ["web-0", "crictl_host", "a.b.c", &"x".repeat(64)] {
            assert!(check_hostname(ok).is_ok(), "{ok}");
        }
        for bad in [&"x".repeat(65)[..], "-a", "a-", "a..b", "a b", "a/b", ""] {
            let e = check_hostname(bad).unwrap_err();
            assert!(e.to_string().starts_with("config.hostname:"), "{e}");
        }
    }

    #[test]
    fn hosts_has_localhost_and_pod_ips() {
        let h = hosts_file("web-0", &["10.88.0.5".into()]);
        assert!(h.contains("127.0.0.1\tlocalhost"));
        assert!(h.ends_with("10.88.0.5\tweb-0\n"));
    }
}

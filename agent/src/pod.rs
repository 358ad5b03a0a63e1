//! Pod sandbox lifecycle: Creating → Ready → NotReady → removed. The intent
//! is recorded before any host resource exists, so start-up can clean up
//! what a crash left half made.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_runtime::{cgroup, sandbox};
use tonic::Status;

use crate::cri::Agent;
use crate::spec::ns_mode;
use crate::store::{ContainerRecord, PodRecord, PodState};
use crate::util::{now_ns, random_id, resolve_prefix};

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

fn internal(what: &str, e: impl std::fmt::Display) -> Status {
    Status::internal(format!("{what}: {e}"))
}

/// The pod's state directory.
pub fn pod_dir(agent: &Agent, id: &str) -> PathBuf {
    agent.config.state.join("pods").join(id)
}

/// Finds a pod by id or unique prefix.
pub fn find(agent: &Agent, id: &str) -> Result<PodRecord, Status> {
    let pods = agent.store.list::<PodRecord>().map_err(|e| internal("store", e))?;
    let id = resolve_prefix(pods.iter().map(|p| p.id.as_str()), id, "pod sandbox")?;
    pods.into_iter().find(|p| p.id == id).ok_or_else(|| Status::not_found(format!("pod sandbox {id} not found")))
}

/// Like [`find`], but None when absent (stop/remove are idempotent).
pub fn find_opt(agent: &Agent, id: &str) -> Result<Option<PodRecord>, Status> {
    match find(agent, id) {
        Ok(p) => Ok(Some(p)),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(s),
    }
}

/// RunPodSandbox: returns the new pod's id. A retry with the same name key
/// while the first is in flight gets the first one's result.
pub async fn run(agent: &Arc<Agent>, mut record: PodRecord, dns: PodDns) -> Result<String, Status> {
    let key = format!("pod:{}", record.name_key());
    let check_agent = agent.clone();
    let check_key = record.name_key();
    let check = move || {
        let pods = check_agent.store.list::<PodRecord>().map_err(|e| internal("store", e))?;
        if let Some(p) = pods.iter().find(|p| p.name_key() == check_key) {
            return Err(Status::already_exists(format!("pod sandbox {check_key} already exists as {}", p.id)));
        }
        Ok(())
    };
    let agent2 = agent.clone();
    agent
        .flights
        .run(key, check, async move {
            record.id = random_id().map_err(|e| internal("pod id from the kernel's random source", e))?;
            record.created_at_ns = now_ns();
            if record.cgroup.is_empty() {
                let parent =
                    berth_runtime::cgroup::normalize(&agent2.config.runtime.default_cgroup_parent).map_err(|e| internal("cgroup", e))?;
                record.cgroup = format!("{parent}/{}", record.id);
                record.own_cgroup = true;
            }
            record.state = PodState::Creating;
            agent2.store.put(&record.id, &record).map_err(|e| internal("store", e))?;
            let a = agent2.clone();
            let rec = record.clone();
            let made = tokio::task::spawn_blocking(move || setup_host(&a, rec, &dns)).await.map_err(|e| internal("pod setup task", e))?;
            match made {
                Ok(rec) => {
                    agent2.store.put(&rec.id, &rec).map_err(|e| internal("store", e))?;
                    tracing::info!(pod_id = %rec.id, "pod sandbox ready");
                    Ok(rec.id)
                }
                Err(e) => {
                    tracing::warn!(pod_id = %record.id, "pod sandbox setup failed: {e}");
                    let a = agent2.clone();
                    let rec = record.clone();
                    let _ = tokio::task::spawn_blocking(move || teardown_host(&a, &rec)).await;
                    let _ = agent2.store.delete::<PodRecord>(&record.id);
                    Err(e)
                }
            }
        })
        .await
}

/// Makes the host side of a pod: pinned namespaces, /dev/shm, files, cgroup,
/// PID-namespace init. On error the caller tears down.
fn setup_host(agent: &Agent, mut rec: PodRecord, dns: &PodDns) -> Result<PodRecord, Status> {
    let dir = pod_dir(agent, &rec.id);
    std::fs::create_dir_all(&dir).map_err(|e| internal(&format!("{}", dir.display()), e))?;
    let own_net = rec.network_mode != ns_mode::NODE;
    let want = sandbox::PodNamespaces { net: own_net, ipc: rec.ipc_mode != ns_mode::NODE, uts: own_net };
    let hostname = if own_net {
        rec.hostname.clone()
    } else {
        nix::unistd::gethostname().map(|h| h.to_string_lossy().to_string()).unwrap_or_default()
    };
    rec.hostname = hostname.clone();
    let sysctls: Vec<(String, String)> = rec.sysctls.clone().into_iter().collect();
    sandbox::pin_namespaces(&dir, want, &hostname, &sysctls).map_err(|e| internal("pod namespaces", e))?;
    if want.ipc {
        sandbox::mount_shm(&dir.join("shm"), agent.config.runtime.shm_size_bytes).map_err(|e| internal("pod /dev/shm", e))?;
    }
    if own_net {
        agent.network.setup(&agent.store, &mut rec, &sandbox::pin_path(&dir, "net"), dns)?;
    }
    write_file(&dir.join("hostname"), &format!("{hostname}\n"))?;
    write_file(&dir.join("hosts"), &hosts_file(&hostname, &rec.ips))?;
    let resolv = match dns.resolv_conf() {
        Some(text) => text,
        None => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    };
    write_file(&dir.join("resolv.conf"), &resolv)?;
    cgroup::create(&rec.cgroup).map_err(|e| internal("pod cgroup", e))?;
    if rec.pid_mode == ns_mode::POD {
        let procs = cgroup::create(&init_cgroup(&rec)).map_err(|e| internal("pod init cgroup", e))?;
        let args = sandbox::PodInitArgs { pod_id: rec.id.clone(), pod_dir: dir.clone(), cgroup_procs: procs };
        let init = sandbox::spawn_pod_init(agent.runtime.monitor_bin(), &args).map_err(|e| internal("pod PID namespace", e))?;
        rec.init_pid = init.pid;
        rec.init_start_time = init.start_time;
    }
    rec.state = PodState::Ready;
    Ok(rec)
}

fn write_file(path: &Path, text: &str) -> Result<(), Status> {
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
fn init_cgroup(rec: &PodRecord) -> String {
    format!("{}/{}", rec.cgroup, sandbox::INIT_CGROUP)
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
fn teardown_host(agent: &Agent, rec: &PodRecord) {
    if let Err(e) = agent.network.teardown(&agent.store, rec, &sandbox::pin_path(&pod_dir(agent, &rec.id), "net")) {
        tracing::warn!(pod_id = %rec.id, "releasing the pod network: {}", e.message());
    }
    kill_init(rec);
    let cgroups = if rec.own_cgroup { vec![rec.cgroup.clone()] } else { vec![init_cgroup(rec)] };
    for cg in cgroups {
        if let Err(e) = cgroup::remove(&cg) {
            tracing::warn!(pod_id = %rec.id, "removing cgroup {cg}: {e}");
        }
    }
    let dir = pod_dir(agent, &rec.id);
    sandbox::unmount_shm(&dir.join("shm"));
    sandbox::unpin_namespaces(&dir);
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(pod_id = %rec.id, "removing {}: {e}", dir.display());
        }
    }
}

/// StopPodSandbox: stops every container (grace, then kill), ends the PID
/// init, marks the pod NotReady. Unknown or stopped pods are fine.
pub async fn stop(agent: &Arc<Agent>, id: &str) -> Result<(), Status> {
    let Some(pod) = find_opt(agent, id)? else { return Ok(()) };
    let lock = agent.locks.get(&pod.id);
    let _held = lock.lock().await;
    let grace = agent.config.runtime.pod_stop_grace_seconds as i64;
    for c in containers_of(agent, &pod.id)? {
        crate::container::stop(agent, &c.id, grace).await?;
    }
    let Some(mut pod) = agent.store.get::<PodRecord>(&pod.id).map_err(|e| internal("store", e))? else { return Ok(()) };
    kill_init(&pod);
    if pod.state != PodState::NotReady {
        let a = agent.clone();
        let p = pod.clone();
        let netns = sandbox::pin_path(&pod_dir(agent, &pod.id), "net");
        tokio::task::spawn_blocking(move || a.network.teardown(&a.store, &p, &netns)).await.map_err(|e| internal("network task", e))??;
        pod.state = PodState::NotReady;
        pod.ips.clear();
        agent.store.put(&pod.id, &pod).map_err(|e| internal("store", e))?;
        tracing::info!(pod_id = %pod.id, "pod sandbox stopped");
    }
    Ok(())
}

/// RemovePodSandbox: removes containers, namespaces, cgroup, dirs and the
/// record. Unknown pods are fine.
pub async fn remove(agent: &Arc<Agent>, id: &str) -> Result<(), Status> {
    let Some(pod) = find_opt(agent, id)? else { return Ok(()) };
    for c in containers_of(agent, &pod.id)? {
        crate::container::remove(agent, &c.id).await?;
    }
    let lock = agent.locks.get(&pod.id);
    let _held = lock.lock().await;
    let a = agent.clone();
    let rec = pod.clone();
    tokio::task::spawn_blocking(move || teardown_host(&a, &rec)).await.map_err(|e| internal("teardown task", e))?;
    agent.store.delete::<PodRecord>(&pod.id).map_err(|e| internal("store", e))?;
    agent.cpu_samples.forget(&pod.cgroup);
    tracing::info!(pod_id = %pod.id, "pod sandbox removed");
    Ok(())
}

/// The pod's containers.
pub fn containers_of(agent: &Agent, pod_id: &str) -> Result<Vec<ContainerRecord>, Status> {
    Ok(agent.store.list::<ContainerRecord>().map_err(|e| internal("store", e))?.into_iter().filter(|c| c.pod_id == pod_id).collect())
}

/// Start-up: pods whose creation a crash interrupted are torn down and forgotten.
pub async fn recover(agent: &Arc<Agent>) -> Result<(), Status> {
    let a = agent.clone();
    let gc = async move {
        let a2 = a.clone();
        tokio::task::spawn_blocking(move || a2.network.collect_garbage(&a2.store)).await.map_err(|e| internal("network gc", e))?
    };
    for pod in agent.store.list::<PodRecord>().map_err(|e| internal("store", e))? {
        if pod.state == PodState::Creating {
            tracing::warn!(pod_id = %pod.id, "cleaning up a pod sandbox whose creation was interrupted");
            let a = agent.clone();
            let rec = pod.clone();
            let _ = tokio::task::spawn_blocking(move || teardown_host(&a, &rec)).await;
            let _ = agent.store.delete::<PodRecord>(&pod.id);
        }
    }
    gc.await
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
    fn hosts_has_localhost_and_pod_ips() {
        let h = hosts_file("web-0", &["10.88.0.5".into()]);
        assert!(h.contains("127.0.0.1\tlocalhost"));
        assert!(h.ends_with("10.88.0.5\tweb-0\n"));
    }
}

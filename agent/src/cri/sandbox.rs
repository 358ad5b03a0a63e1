//! Pod sandbox RPCs: RunPodSandbox, StopPodSandbox, RemovePodSandbox,
//! PodSandboxStatus, ListPodSandbox.

use std::collections::HashMap;
use std::sync::Arc;

use berth_proto::cri;
use tonic::{Request, Response, Status};

use super::Agent;
use crate::pod::{self, PodDns};
use crate::spec::ns_mode;
use crate::store::{PodRecord, PodState};

fn pod_state(s: PodState) -> i32 {
    match s {
        PodState::Ready => cri::PodSandboxState::SandboxReady as i32,
        _ => cri::PodSandboxState::SandboxNotready as i32,
    }
}

fn metadata(p: &PodRecord) -> cri::PodSandboxMetadata {
    cri::PodSandboxMetadata { name: p.name.clone(), uid: p.uid.clone(), namespace: p.namespace.clone(), attempt: p.attempt }
}

/// Validates the config into a record (id and times are set by the pod module).
fn record_from(config: cri::PodSandboxConfig, handler: String) -> Result<(PodRecord, PodDns), Status> {
    let meta = config.metadata.ok_or_else(|| Status::invalid_argument("config.metadata: required"))?;
    for (field, value) in [("name", &meta.name), ("namespace", &meta.namespace), ("uid", &meta.uid)] {
        if value.is_empty() {
            return Err(Status::invalid_argument(format!("config.metadata.{field}: must not be empty")));
        }
    }
    if !handler.is_empty() && handler != "berth" && handler != "runc" {
        return Err(Status::invalid_argument(format!("runtime_handler: {handler:?} is not a handler berth offers (use \"\")")));
    }
    let linux = config.linux.unwrap_or_default();
    let ns = linux.security_context.as_ref().and_then(|s| s.namespace_options.clone()).unwrap_or_default();
    for (field, mode) in [("network", ns.network), ("pid", ns.pid), ("ipc", ns.ipc)] {
        if !matches!(mode, ns_mode::POD | ns_mode::CONTAINER | ns_mode::NODE) {
            return Err(Status::invalid_argument(format!("namespace_options.{field}: mode {mode} is not valid for a pod")));
        }
    }
    let cgroup = if linux.cgroup_parent.is_empty() {
        // Filled in with the id by the pod module.
        String::new()
    } else {
        berth_runtime::cgroup::normalize(&linux.cgroup_parent)
            .map_err(|e| Status::invalid_argument(format!("config.linux.cgroup_parent: {e}")))?
    };
    crate::security::check_sysctls(&linux.sysctls, ns.network != ns_mode::NODE, ns.ipc != ns_mode::NODE)?;
    let sysctls = linux.sysctls.clone().into_iter().collect();
    let dns = config.dns_config.map(|d| PodDns { servers: d.servers, searches: d.searches, options: d.options }).unwrap_or_default();
    let mut port_mappings = Vec::new();
    for (i, pm) in config.port_mappings.iter().enumerate() {
        if pm.host_port == 0 {
            continue;
        }
        let field = format!("config.port_mappings[{i}]");
        let protocol = match cri::Protocol::try_from(pm.protocol) {
            Ok(cri::Protocol::Tcp) => berth_network::Protocol::Tcp,
            Ok(cri::Protocol::Udp) => berth_network::Protocol::Udp,
            Ok(cri::Protocol::Sctp) => berth_network::Protocol::Sctp,
            Err(_) => return Err(Status::invalid_argument(format!("{field}.protocol: {} is not TCP, UDP or SCTP", pm.protocol))),
        };
        let port = |v: i32, what: &str| {
            u16::try_from(v).ok().filter(|p| *p > 0).ok_or_else(|| Status::invalid_argument(format!("{field}.{what}: {v} is not a port")))
        };
        let host_ip = match pm.host_ip.as_str() {
            "" | "0.0.0.0" => None,
            ip => Some(
                ip.parse::<std::net::Ipv4Addr>()
                    .map_err(|_| Status::invalid_argument(format!("{field}.host_ip: {ip:?} is not an IPv4 address")))?,
            ),
        };
        port_mappings.push(berth_network::PortMapping {
            protocol,
            container_port: port(pm.container_port, "container_port")?,
            host_port: port(pm.host_port, "host_port")?,
            host_ip,
        });
    }
    let hostname = if config.hostname.is_empty() { meta.name.clone() } else { config.hostname.clone() };
    Ok((
        PodRecord {
            name: meta.name,
            namespace: meta.namespace,
            uid: meta.uid,
            attempt: meta.attempt,
            labels: config.labels.into_iter().collect(),
            annotations: config.annotations.into_iter().collect(),
            hostname,
            log_directory: config.log_directory,
            runtime_handler: handler,
            // CONTAINER means "the pod's own" for a sandbox.
            network_mode: if ns.network == ns_mode::NODE { ns_mode::NODE } else { ns_mode::POD },
            pid_mode: if ns.pid == ns_mode::POD {
                ns_mode::POD
            } else if ns.pid == ns_mode::NODE {
                ns_mode::NODE
            } else {
                ns_mode::CONTAINER
            },
            ipc_mode: if ns.ipc == ns_mode::NODE { ns_mode::NODE } else { ns_mode::POD },
            cgroup,
            port_mappings,
            sysctls,
            ..Default::default()
        },
        dns,
    ))
}

pub(super) async fn run_pod_sandbox(
    agent: &Arc<Agent>,
    r: Request<cri::RunPodSandboxRequest>,
) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
    let req = r.into_inner();
    let config = req.config.ok_or_else(|| Status::invalid_argument("config: required"))?;
    let (record, dns) = record_from(config, req.runtime_handler)?;
    let id = pod::run(agent, record, dns).await?;
    Ok(Response::new(cri::RunPodSandboxResponse { pod_sandbox_id: id }))
}

pub(super) async fn stop_pod_sandbox(
    agent: &Arc<Agent>,
    r: Request<cri::StopPodSandboxRequest>,
) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
    let id = r.into_inner().pod_sandbox_id;
    super::id_field(&id, "pod_sandbox_id")?;
    let agent = agent.clone();
    // Its own task: a client that gives up does not stop the stop half-way.
    tokio::spawn(async move { pod::stop(&agent, &id).await }).await.map_err(|e| Status::internal(e.to_string()))??;
    Ok(Response::new(cri::StopPodSandboxResponse {}))
}

pub(super) async fn remove_pod_sandbox(
    agent: &Arc<Agent>,
    r: Request<cri::RemovePodSandboxRequest>,
) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
    let id = r.into_inner().pod_sandbox_id;
    super::id_field(&id, "pod_sandbox_id")?;
    let agent = agent.clone();
    tokio::spawn(async move { pod::remove(&agent, &id).await }).await.map_err(|e| Status::internal(e.to_string()))??;
    Ok(Response::new(cri::RemovePodSandboxResponse {}))
}

/// The CRI status of a pod record.
pub fn to_status(p: &PodRecord) -> cri::PodSandboxStatus {
    let ns = cri::NamespaceOption { network: p.network_mode, pid: p.pid_mode, ipc: p.ipc_mode, ..Default::default() };
    cri::PodSandboxStatus {
        id: p.id.clone(),
        metadata: Some(metadata(p)),
        state: pod_state(p.state),
        created_at: p.created_at_ns,
        network: Some(cri::PodSandboxNetworkStatus {
            ip: p.ips.first().cloned().unwrap_or_default(),
            additional_ips: p.ips.iter().skip(1).map(|ip| cri::PodIp { ip: ip.clone() }).collect(),
        }),
        linux: Some(cri::LinuxPodSandboxStatus { namespaces: Some(cri::Namespace { options: Some(ns) }) }),
        labels: p.labels.clone().into_iter().collect(),
        annotations: p.annotations.clone().into_iter().collect(),
        runtime_handler: p.runtime_handler.clone(),
    }
}

pub(super) async fn pod_sandbox_status(
    agent: &Arc<Agent>,
    r: Request<cri::PodSandboxStatusRequest>,
) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
    let req = r.into_inner();
    let p = pod::find(agent, &req.pod_sandbox_id)?;
    let mut info = HashMap::new();
    if req.verbose {
        let dir = pod::pod_dir(agent, &p.id);
        let v = serde_json::json!({
            "id": p.id,
            "state": format!("{:?}", p.state),
            "cgroup": p.cgroup,
            "initPid": p.init_pid,
            "stateDir": dir,
            "netns": if p.network_mode == ns_mode::NODE { serde_json::Value::Null } else { berth_runtime::sandbox::pin_path(&dir, "net").display().to_string().into() },
            "hostname": p.hostname,
            "logDirectory": p.log_directory,
        });
        info.insert("info".to_string(), v.to_string());
    }
    Ok(Response::new(cri::PodSandboxStatusResponse {
        status: Some(to_status(&p)),
        info,
        containers_statuses: Vec::new(),
        timestamp: crate::util::now_ns(),
    }))
}

/// True when every `k=v` of the selector is among the labels.
pub fn labels_match(labels: &std::collections::BTreeMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

pub(super) async fn list_pod_sandbox(
    agent: &Arc<Agent>,
    r: Request<cri::ListPodSandboxRequest>,
) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
    let filter = r.into_inner().filter.unwrap_or_default();
    let pods = agent.store.list::<PodRecord>().map_err(|e| Status::internal(e.to_string()))?;
    let items = pods
        .iter()
        .filter(|p| p.state != PodState::Creating)
        .filter(|p| filter.id.is_empty() || p.id.starts_with(&filter.id))
        .filter(|p| filter.state.as_ref().is_none_or(|s| s.state == pod_state(p.state)))
        .filter(|p| labels_match(&p.labels, &filter.label_selector))
        .map(|p| cri::PodSandbox {
            id: p.id.clone(),
            metadata: Some(metadata(p)),
            state: pod_state(p.state),
            created_at: p.created_at_ns,
            labels: p.labels.clone().into_iter().collect(),
            annotations: p.annotations.clone().into_iter().collect(),
            runtime_handler: p.runtime_handler.clone(),
        })
        .collect();
    Ok(Response::new(cri::ListPodSandboxResponse { items }))
}

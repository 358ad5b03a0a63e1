//! Pod sandbox RPCs: RunPodSandbox, StopPodSandbox, RemovePodSandbox,
//! PodSandboxStatus, ListPodSandbox.

use std::collections::HashMap;
use std::sync::Arc;

use berth_proto::cri;

use super::convert::{labels_match, pod_sandbox, pod_state, pod_status};
use super::id_field;
use crate::error::{Error, Result};
use crate::node::Node;
use crate::pod::{self, PodDns};
use crate::spec::ns_mode;
use crate::store::{PodRecord, PodState};

/// Validates the config into a record (id and times are set by the pod module).
fn record_from(node: &Node, config: cri::PodSandboxConfig, handler: String) -> Result<(PodRecord, PodDns)> {
    let meta = config.metadata.ok_or_else(|| Error::invalid("config.metadata", "required"))?;
    for (field, value) in [("name", &meta.name), ("namespace", &meta.namespace), ("uid", &meta.uid)] {
        if value.is_empty() {
            return Err(Error::invalid(format!("config.metadata.{field}"), "must not be empty"));
        }
    }
    let linux = config.linux.unwrap_or_default();
    let ns = linux.security_context.as_ref().and_then(|s| s.namespace_options.clone()).unwrap_or_default();
    let userns_field = "config.linux.security_context.namespace_options.userns_options";
    let userns = match super::convert::user_namespace(userns_field, ns.userns_options.as_ref())? {
        crate::model::UserNamespaceRequest::Pod(m) => Some(m),
        _ => None,
    };
    for (field, mode) in [("network", ns.network), ("pid", ns.pid), ("ipc", ns.ipc)] {
        if !matches!(mode, ns_mode::POD | ns_mode::CONTAINER | ns_mode::NODE) {
            return Err(Error::invalid(format!("namespace_options.{field}"), format!("mode {mode} is not valid for a pod")));
        }
        // As the API server's validation: the node's PID and IPC namespaces
        // belong to the node's users, so hostUsers: false excludes them. The
        // node's network is allowed (kubelet's UserNamespacesHostNetworkSupport):
        // the pod's root holds no capability in it, its user namespace owning
        // only the pod's IPC namespace, and berth mounts the container's /sys
        // with the node's privileges.
        if mode == ns_mode::NODE && userns.is_some() && field != "network" {
            return Err(Error::invalid(
                userns_field,
                format!("a pod in its own user namespace cannot use the node's {field} namespace (namespace_options.{field} is NODE)"),
            ));
        }
    }
    let cgroup = if linux.cgroup_parent.is_empty() {
        // Filled in with the id by the pod module.
        String::new()
    } else {
        node.cgroups.parent_path(&linux.cgroup_parent).map_err(|e| Error::invalid("config.linux.cgroup_parent", e))?
    };
    let sysctls = linux.sysctls.clone().into_iter().collect();
    crate::security::check_sysctls(&sysctls, ns.network != ns_mode::NODE, ns.ipc != ns_mode::NODE)?;
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
            Err(_) => return Err(Error::invalid(format!("{field}.protocol"), format!("{} is not TCP, UDP or SCTP", pm.protocol))),
        };
        let port = |v: i32, what: &str| {
            u16::try_from(v).ok().filter(|p| *p > 0).ok_or_else(|| Error::invalid(format!("{field}.{what}"), format!("{v} is not a port")))
        };
        // Empty or a wildcard: every node address (both families on a dual-stack network).
        let host_ip = match pm.host_ip.as_str() {
            "" | "0.0.0.0" | "::" => None,
            ip => Some(
                ip.parse::<std::net::IpAddr>()
                    .map_err(|_| Error::invalid(format!("{field}.host_ip"), format!("{ip:?} is not an IP address")))?,
            ),
        };
        port_mappings.push(berth_network::PortMapping {
            protocol,
            container_port: port(pm.container_port, "container_port")?,
            host_port: port(pm.host_port, "host_port")?,
            host_ip,
        });
    }
    // Empty: the node's hostname (filled in by the pod module, as containerd does).
    let hostname = config.hostname.clone();
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
            pid_mode: match ns.pid {
                ns_mode::POD => ns_mode::POD,
                ns_mode::NODE => ns_mode::NODE,
                _ => ns_mode::CONTAINER,
            },
            ipc_mode: if ns.ipc == ns_mode::NODE { ns_mode::NODE } else { ns_mode::POD },
            cgroup,
            port_mappings,
            sysctls,
            userns,
            ..Default::default()
        },
        dns,
    ))
}

pub(super) async fn run(node: &Arc<Node>, req: cri::RunPodSandboxRequest) -> Result<cri::RunPodSandboxResponse> {
    let config = req.config.ok_or_else(|| Error::invalid("config", "required"))?;
    node.require_handler("runtime_handler", &req.runtime_handler)?;
    let (record, dns) = record_from(node, config, req.runtime_handler)?;
    if record.userns.is_some() {
        if let Err(why) = node.userns_support() {
            return Err(Error::invalid(
                "config.linux.security_context.namespace_options.userns_options",
                format!("this node cannot run pods in user namespaces: {why}"),
            ));
        }
    }
    // kubelet's bandwidth annotations and the hostPorts' addresses: refused before anything exists.
    crate::net::pod_bandwidth(&record.annotations)?;
    node.network.check_ports(&record.port_mappings)?;
    let id = pod::run(node, record, dns).await?;
    Ok(cri::RunPodSandboxResponse { pod_sandbox_id: id })
}

pub(super) async fn stop(node: &Arc<Node>, req: cri::StopPodSandboxRequest) -> Result<cri::StopPodSandboxResponse> {
    id_field(&req.pod_sandbox_id, "pod_sandbox_id")?;
    let node = node.clone();
    // Its own task: a client that gives up does not stop the stop half-way.
    tokio::spawn(async move { pod::stop(&node, &req.pod_sandbox_id).await }).await??;
    Ok(cri::StopPodSandboxResponse {})
}

pub(super) async fn remove(node: &Arc<Node>, req: cri::RemovePodSandboxRequest) -> Result<cri::RemovePodSandboxResponse> {
    id_field(&req.pod_sandbox_id, "pod_sandbox_id")?;
    let node = node.clone();
    tokio::spawn(async move { pod::remove(&node, &req.pod_sandbox_id).await }).await??;
    Ok(cri::RemovePodSandboxResponse {})
}

pub(super) async fn status(node: &Arc<Node>, req: cri::PodSandboxStatusRequest) -> Result<cri::PodSandboxStatusResponse> {
    // Stamped before anything is read: kubelet's evented PLEG keeps whichever
    // of this answer and the container events is newer, so the stamp must not
    // be later than the state the answer saw.
    let timestamp = crate::util::now_ns();
    let p = pod::find(node, &req.pod_sandbox_id)?;
    let mut info = HashMap::new();
    if req.verbose {
        let dir = node.pod_dir(&p.id);
        let netns = if p.network_mode == ns_mode::NODE {
            serde_json::Value::Null
        } else {
            berth_runtime::sandbox::pin_path(&dir, "net").display().to_string().into()
        };
        let v = serde_json::json!({
            "id": p.id,
            "state": format!("{:?}", p.state),
            "cgroup": p.cgroup,
            "initPid": p.init_pid,
            "stateDir": dir,
            "netns": netns,
            "hostname": p.hostname,
            "logDirectory": p.log_directory,
        });
        info.insert("info".to_string(), v.to_string());
    }
    Ok(cri::PodSandboxStatusResponse {
        status: Some(pod_status(&p)),
        info,
        containers_statuses: super::container::statuses_of_pod(node, &p.id),
        timestamp,
    })
}

pub(super) async fn list(node: &Arc<Node>, req: cri::ListPodSandboxRequest) -> Result<cri::ListPodSandboxResponse> {
    let filter = req.filter.unwrap_or_default();
    let items = node
        .pods
        .filter(|p| {
            p.state != PodState::Creating
                && (filter.id.is_empty() || p.id.starts_with(&filter.id))
                && filter.state.as_ref().is_none_or(|s| s.state == pod_state(p.state))
                && labels_match(&p.labels, &filter.label_selector)
        })
        .iter()
        .map(pod_sandbox)
        .collect();
    Ok(cri::ListPodSandboxResponse { items })
}

/// UpdatePodSandboxResources: kubelet has already resized the pod's cgroup,
/// which it owns. berth keeps no copy of a pod's resources and has no plugins
/// to tell (CRI-O and containerd pass the update to NRI), so it checks that
/// the pod exists and logs the change.
pub(super) async fn update_resources(
    node: &Arc<Node>,
    req: cri::UpdatePodSandboxResourcesRequest,
) -> Result<cri::UpdatePodSandboxResourcesResponse> {
    id_field(&req.pod_sandbox_id, "pod_sandbox_id")?;
    let p = pod::find(node, &req.pod_sandbox_id)?;
    let r = req.resources.unwrap_or_default();
    tracing::info!(
        pod_id = %p.id,
        cpu_shares = r.cpu_shares,
        cpu_quota = r.cpu_quota,
        cpu_period = r.cpu_period,
        memory_limit = r.memory_limit_in_bytes,
        "pod resources updated by kubelet"
    );
    Ok(cri::UpdatePodSandboxResourcesResponse {})
}

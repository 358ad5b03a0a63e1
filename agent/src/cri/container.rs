//! Container RPCs: CreateContainer, StartContainer, StopContainer,
//! RemoveContainer, ListContainers, ContainerStatus, UpdateContainerResources,
//! ExecSync, ReopenContainerLog.

use std::collections::HashMap;
use std::sync::Arc;

use berth_proto::cri;

use super::convert::{self, container_state, labels_match};
use super::id_field;
use crate::container;
use crate::error::{Error, Result};
use crate::node::Node;
use crate::store::ContainerState;

/// Runs a mutating operation as its own task, so a client that gives up
/// does not leave it half done.
async fn detached<T: Send + 'static>(f: impl std::future::Future<Output = Result<T>> + Send + 'static) -> Result<T> {
    tokio::spawn(f).await?
}

pub(super) async fn create(node: &Arc<Node>, req: cri::CreateContainerRequest) -> Result<cri::CreateContainerResponse> {
    id_field(&req.pod_sandbox_id, "pod_sandbox_id")?;
    let config = req.config.ok_or_else(|| Error::invalid("config", "required"))?;
    let request = convert::container_request(config)?;
    let node = node.clone();
    let id = detached(async move { container::create(&node, &req.pod_sandbox_id, request).await }).await?;
    Ok(cri::CreateContainerResponse { container_id: id })
}

pub(super) async fn start(node: &Arc<Node>, req: cri::StartContainerRequest) -> Result<cri::StartContainerResponse> {
    id_field(&req.container_id, "container_id")?;
    let node = node.clone();
    detached(async move { container::start(&node, &req.container_id).await }).await?;
    Ok(cri::StartContainerResponse {})
}

pub(super) async fn stop(node: &Arc<Node>, req: cri::StopContainerRequest) -> Result<cri::StopContainerResponse> {
    id_field(&req.container_id, "container_id")?;
    if req.timeout < 0 {
        return Err(Error::invalid("timeout", format!("{} is negative", req.timeout)));
    }
    let node = node.clone();
    detached(async move { container::stop(&node, &req.container_id, req.timeout).await }).await?;
    Ok(cri::StopContainerResponse {})
}

pub(super) async fn remove(node: &Arc<Node>, req: cri::RemoveContainerRequest) -> Result<cri::RemoveContainerResponse> {
    id_field(&req.container_id, "container_id")?;
    let node = node.clone();
    detached(async move { container::remove(&node, &req.container_id).await }).await?;
    Ok(cri::RemoveContainerResponse {})
}

pub(super) async fn list(node: &Arc<Node>, req: cri::ListContainersRequest) -> Result<cri::ListContainersResponse> {
    let filter = req.filter.unwrap_or_default();
    let picked = node.containers.filter(|c| {
        c.state != ContainerState::Creating
            && (filter.id.is_empty() || c.id.starts_with(&filter.id))
            && (filter.pod_sandbox_id.is_empty() || c.pod_id.starts_with(&filter.pod_sandbox_id))
            && labels_match(&c.labels, &filter.label_selector)
    });
    let mut containers = Vec::new();
    for c in picked {
        let c = container::refresh(node, c)?;
        if filter.state.as_ref().is_some_and(|s| s.state != container_state(c.state)) {
            continue;
        }
        containers.push(convert::container(&c));
    }
    Ok(cri::ListContainersResponse { containers })
}

/// The statuses of a pod's containers as ContainerStatus reports each one,
/// newest first (kubelet's own order). kubelet's evented PLEG takes this list,
/// from PodSandboxStatus and from each container event, as the pod's whole
/// set of containers, so it holds every container ListContainers would list.
/// A record whose exit could not be folded in is reported as recorded.
pub(super) fn statuses_of_pod(node: &Node, pod_id: &str) -> Vec<cri::ContainerStatus> {
    let mut records: Vec<_> = node
        .containers_of(pod_id)
        .into_iter()
        .filter(|c| c.state != ContainerState::Creating)
        .map(|c| {
            container::refresh(node, c.clone()).unwrap_or_else(|e| {
                tracing::warn!(container_id = %c.id, error = %e, "container state not refreshed for the pod's status");
                c
            })
        })
        .collect();
    records.sort_by_key(|c| std::cmp::Reverse(c.created_at_ns));
    records.iter().map(convert::container_status).collect()
}

pub(super) async fn status(node: &Arc<Node>, req: cri::ContainerStatusRequest) -> Result<cri::ContainerStatusResponse> {
    id_field(&req.container_id, "container_id")?;
    let c = container::find(node, &req.container_id)?;
    let mut info = HashMap::new();
    if req.verbose {
        let spec = std::fs::read(node.bundle(&c.id).join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .unwrap_or(serde_json::Value::Null);
        let v = serde_json::json!({
            "pid": c.pid,
            "monitorPid": c.monitor_pid,
            "cgroup": c.cgroup,
            "bundle": node.bundle(&c.id),
            "snapshotChain": c.snapshot_chain,
            "runtimeSpec": spec,
        });
        info.insert("info".to_string(), v.to_string());
    }
    Ok(cri::ContainerStatusResponse { status: Some(convert::container_status(&c)), info })
}

pub(super) async fn exec_sync(node: &Arc<Node>, req: cri::ExecSyncRequest) -> Result<cri::ExecSyncResponse> {
    id_field(&req.container_id, "container_id")?;
    if req.timeout < 0 {
        return Err(Error::invalid("timeout", format!("{} is negative", req.timeout)));
    }
    let out = container::exec_sync(node, &req.container_id, req.cmd, req.timeout).await?;
    Ok(cri::ExecSyncResponse { stdout: out.stdout, stderr: out.stderr, exit_code: out.exit_code })
}

pub(super) async fn reopen_log(node: &Arc<Node>, req: cri::ReopenContainerLogRequest) -> Result<cri::ReopenContainerLogResponse> {
    id_field(&req.container_id, "container_id")?;
    container::reopen_log(node, &req.container_id).await?;
    Ok(cri::ReopenContainerLogResponse {})
}

pub(super) async fn update_resources(
    node: &Arc<Node>,
    req: cri::UpdateContainerResourcesRequest,
) -> Result<cri::UpdateContainerResourcesResponse> {
    id_field(&req.container_id, "container_id")?;
    container::update_resources(node, &req.container_id, convert::resources(req.linux.as_ref())).await?;
    Ok(cri::UpdateContainerResourcesResponse {})
}

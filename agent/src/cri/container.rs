//! Container RPCs: CreateContainer, StartContainer, StopContainer,
//! RemoveContainer, ListContainers, ContainerStatus, ExecSync,
//! ReopenContainerLog.

use std::collections::HashMap;
use std::sync::Arc;

use berth_proto::cri;
use tonic::{Request, Response, Status};

use super::sandbox::labels_match;
use super::{id_field, Agent};
use crate::container;
use crate::store::{ContainerRecord, ContainerState};

fn state_of(s: ContainerState) -> i32 {
    match s {
        ContainerState::Creating | ContainerState::Created => cri::ContainerState::ContainerCreated as i32,
        ContainerState::Running => cri::ContainerState::ContainerRunning as i32,
        ContainerState::Exited => cri::ContainerState::ContainerExited as i32,
    }
}

/// Runs a mutating operation as its own task, so a client that gives up
/// does not leave it half done.
async fn detached<T: Send + 'static>(f: impl std::future::Future<Output = Result<T, Status>> + Send + 'static) -> Result<T, Status> {
    tokio::spawn(f).await.map_err(|e| Status::internal(format!("task: {e}")))?
}

pub(super) async fn create_container(
    agent: &Arc<Agent>,
    r: Request<cri::CreateContainerRequest>,
) -> Result<Response<cri::CreateContainerResponse>, Status> {
    let req = r.into_inner();
    id_field(&req.pod_sandbox_id, "pod_sandbox_id")?;
    let config = req.config.ok_or_else(|| Status::invalid_argument("config: required"))?;
    let agent = agent.clone();
    let id = detached(async move { container::create(&agent, &req.pod_sandbox_id, config).await }).await?;
    Ok(Response::new(cri::CreateContainerResponse { container_id: id }))
}

pub(super) async fn start_container(
    agent: &Arc<Agent>,
    r: Request<cri::StartContainerRequest>,
) -> Result<Response<cri::StartContainerResponse>, Status> {
    let id = r.into_inner().container_id;
    id_field(&id, "container_id")?;
    let agent = agent.clone();
    detached(async move { container::start(&agent, &id).await }).await?;
    Ok(Response::new(cri::StartContainerResponse {}))
}

pub(super) async fn stop_container(
    agent: &Arc<Agent>,
    r: Request<cri::StopContainerRequest>,
) -> Result<Response<cri::StopContainerResponse>, Status> {
    let req = r.into_inner();
    id_field(&req.container_id, "container_id")?;
    if req.timeout < 0 {
        return Err(Status::invalid_argument(format!("timeout: {} is negative", req.timeout)));
    }
    let agent = agent.clone();
    detached(async move { container::stop(&agent, &req.container_id, req.timeout).await }).await?;
    Ok(Response::new(cri::StopContainerResponse {}))
}

pub(super) async fn remove_container(
    agent: &Arc<Agent>,
    r: Request<cri::RemoveContainerRequest>,
) -> Result<Response<cri::RemoveContainerResponse>, Status> {
    let id = r.into_inner().container_id;
    id_field(&id, "container_id")?;
    let agent = agent.clone();
    detached(async move { container::remove(&agent, &id).await }).await?;
    Ok(Response::new(cri::RemoveContainerResponse {}))
}

fn metadata(c: &ContainerRecord) -> cri::ContainerMetadata {
    cri::ContainerMetadata { name: c.name.clone(), attempt: c.attempt }
}

fn image_spec(c: &ContainerRecord) -> cri::ImageSpec {
    cri::ImageSpec { image: c.image.clone(), ..Default::default() }
}

pub(super) async fn list_containers(
    agent: &Arc<Agent>,
    r: Request<cri::ListContainersRequest>,
) -> Result<Response<cri::ListContainersResponse>, Status> {
    let filter = r.into_inner().filter.unwrap_or_default();
    let all = agent.store.list::<ContainerRecord>().map_err(|e| Status::internal(e.to_string()))?;
    let mut containers = Vec::new();
    for c in all {
        if c.state == ContainerState::Creating
            || (!filter.id.is_empty() && !c.id.starts_with(&filter.id))
            || (!filter.pod_sandbox_id.is_empty() && !c.pod_id.starts_with(&filter.pod_sandbox_id))
            || !labels_match(&c.labels, &filter.label_selector)
        {
            continue;
        }
        let c = container::refresh(agent, c)?;
        if filter.state.as_ref().is_some_and(|s| s.state != state_of(c.state)) {
            continue;
        }
        containers.push(cri::Container {
            id: c.id.clone(),
            pod_sandbox_id: c.pod_id.clone(),
            metadata: Some(metadata(&c)),
            image: Some(image_spec(&c)),
            image_ref: c.image_ref.clone(),
            state: state_of(c.state),
            created_at: c.created_at_ns,
            labels: c.labels.clone().into_iter().collect(),
            annotations: c.annotations.clone().into_iter().collect(),
            image_id: c.image_id.clone(),
        });
    }
    Ok(Response::new(cri::ListContainersResponse { containers }))
}

/// The CRI status of a container record.
pub fn to_status(c: &ContainerRecord) -> cri::ContainerStatus {
    cri::ContainerStatus {
        id: c.id.clone(),
        metadata: Some(metadata(c)),
        state: state_of(c.state),
        created_at: c.created_at_ns,
        started_at: c.started_at_ns,
        finished_at: c.finished_at_ns,
        exit_code: c.exit_code,
        image: Some(image_spec(c)),
        image_ref: c.image_ref.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        labels: c.labels.clone().into_iter().collect(),
        annotations: c.annotations.clone().into_iter().collect(),
        mounts: c
            .mounts
            .iter()
            .map(|m| cri::Mount {
                container_path: m.container_path.clone(),
                host_path: m.host_path.clone(),
                readonly: m.readonly,
                propagation: m.propagation,
                ..Default::default()
            })
            .collect(),
        log_path: c.log_path.clone(),
        resources: Some(cri::ContainerResources {
            linux: Some(cri::LinuxContainerResources {
                cpu_period: c.limits.cpu_period as i64,
                cpu_quota: c.limits.cpu_quota,
                cpu_shares: c.limits.cpu_shares as i64,
                memory_limit_in_bytes: c.limits.memory_limit,
                oom_score_adj: c.oom_score_adj,
                cpuset_cpus: c.limits.cpuset_cpus.clone(),
                cpuset_mems: c.limits.cpuset_mems.clone(),
                memory_swap_limit_in_bytes: c.limits.memory_swap,
                unified: c.limits.unified.clone().into_iter().collect(),
                ..Default::default()
            }),
            windows: None,
        }),
        image_id: c.image_id.clone(),
        user: Some(cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser { uid: c.uid, gid: c.gid, supplemental_groups: c.groups.clone() }),
        }),
    }
}

pub(super) async fn container_status(
    agent: &Arc<Agent>,
    r: Request<cri::ContainerStatusRequest>,
) -> Result<Response<cri::ContainerStatusResponse>, Status> {
    let req = r.into_inner();
    id_field(&req.container_id, "container_id")?;
    let c = container::find(agent, &req.container_id)?;
    let mut info = HashMap::new();
    if req.verbose {
        let spec = std::fs::read(container::bundle(agent, &c.id).join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .unwrap_or(serde_json::Value::Null);
        let v = serde_json::json!({
            "pid": c.pid,
            "monitorPid": c.monitor_pid,
            "cgroup": c.cgroup,
            "bundle": container::bundle(agent, &c.id),
            "snapshotChain": c.snapshot_chain,
            "runtimeSpec": spec,
        });
        info.insert("info".to_string(), v.to_string());
    }
    Ok(Response::new(cri::ContainerStatusResponse { status: Some(to_status(&c)), info }))
}

pub(super) async fn exec_sync(agent: &Arc<Agent>, r: Request<cri::ExecSyncRequest>) -> Result<Response<cri::ExecSyncResponse>, Status> {
    let req = r.into_inner();
    id_field(&req.container_id, "container_id")?;
    if req.timeout < 0 {
        return Err(Status::invalid_argument(format!("timeout: {} is negative", req.timeout)));
    }
    Ok(Response::new(container::exec_sync(agent, &req.container_id, req.cmd, req.timeout).await?))
}

pub(super) async fn reopen_container_log(
    agent: &Arc<Agent>,
    r: Request<cri::ReopenContainerLogRequest>,
) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
    let id = r.into_inner().container_id;
    id_field(&id, "container_id")?;
    container::reopen_log(agent, &id).await?;
    Ok(Response::new(cri::ReopenContainerLogResponse {}))
}

pub(super) async fn update_container_resources(
    agent: &Arc<Agent>,
    r: Request<cri::UpdateContainerResourcesRequest>,
) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
    let req = r.into_inner();
    id_field(&req.container_id, "container_id")?;
    container::update_resources(agent, &req.container_id, req.linux).await?;
    Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
}

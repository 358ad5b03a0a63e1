//! Stats RPCs: ContainerStats, ListContainerStats, PodSandboxStats,
//! ListPodSandboxStats, ListMetricDescriptors, ListPodSandboxMetrics.

use std::sync::Arc;

use berth_proto::cri;
use tonic::{Request, Response, Status};

use super::sandbox::labels_match;
use super::Agent;
use crate::stats::{self as st, is_live, METRICS};
use crate::store::{ContainerRecord, PodRecord, PodState};

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(internal)
}

pub(super) async fn container_stats(
    agent: &Arc<Agent>,
    r: Request<cri::ContainerStatsRequest>,
) -> Result<Response<cri::ContainerStatsResponse>, Status> {
    let c = crate::container::find(agent, &r.into_inner().container_id)?;
    let a = agent.clone();
    let stats = blocking(move || st::container_stats(&a, &c)).await?;
    Ok(Response::new(cri::ContainerStatsResponse { stats: Some(stats) }))
}

pub(super) async fn list_container_stats(
    agent: &Arc<Agent>,
    r: Request<cri::ListContainerStatsRequest>,
) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
    let filter = r.into_inner().filter.unwrap_or_default();
    let all = agent.store.list::<ContainerRecord>().map_err(internal)?;
    let picked: Vec<ContainerRecord> = all
        .into_iter()
        .filter(is_live)
        .filter(|c| filter.id.is_empty() || c.id.starts_with(&filter.id))
        .filter(|c| filter.pod_sandbox_id.is_empty() || c.pod_id.starts_with(&filter.pod_sandbox_id))
        .filter(|c| labels_match(&c.labels, &filter.label_selector))
        .collect();
    let a = agent.clone();
    let stats = blocking(move || picked.iter().map(|c| st::container_stats(&a, c)).collect()).await?;
    Ok(Response::new(cri::ListContainerStatsResponse { stats }))
}

pub(super) async fn pod_sandbox_stats(
    agent: &Arc<Agent>,
    r: Request<cri::PodSandboxStatsRequest>,
) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
    let pod = crate::pod::find(agent, &r.into_inner().pod_sandbox_id)?;
    let containers = agent.store.list::<ContainerRecord>().map_err(internal)?;
    let a = agent.clone();
    let stats = blocking(move || st::pod_stats(&a, &pod, &containers)).await?;
    Ok(Response::new(cri::PodSandboxStatsResponse { stats: Some(stats) }))
}

pub(super) async fn list_pod_sandbox_stats(
    agent: &Arc<Agent>,
    r: Request<cri::ListPodSandboxStatsRequest>,
) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
    let filter = r.into_inner().filter.unwrap_or_default();
    let pods: Vec<PodRecord> = agent
        .store
        .list::<PodRecord>()
        .map_err(internal)?
        .into_iter()
        .filter(|p| p.state == PodState::Ready)
        .filter(|p| filter.id.is_empty() || p.id.starts_with(&filter.id))
        .filter(|p| labels_match(&p.labels, &filter.label_selector))
        .collect();
    let containers = agent.store.list::<ContainerRecord>().map_err(internal)?;
    let a = agent.clone();
    let stats = blocking(move || pods.iter().map(|p| st::pod_stats(&a, p, &containers)).collect()).await?;
    Ok(Response::new(cri::ListPodSandboxStatsResponse { stats }))
}

pub(super) async fn list_metric_descriptors(
    _agent: &Arc<Agent>,
    _r: Request<cri::ListMetricDescriptorsRequest>,
) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
    let descriptors = METRICS
        .iter()
        .map(|(name, help, labels)| cri::MetricDescriptor {
            name: name.to_string(),
            help: help.to_string(),
            label_keys: labels.iter().map(|s| s.to_string()).collect(),
        })
        .collect();
    Ok(Response::new(cri::ListMetricDescriptorsResponse { descriptors }))
}

fn metric(name: &str, ts: i64, counter: bool, labels: Vec<String>, value: u64) -> cri::Metric {
    let metric_type = if counter { cri::MetricType::Counter } else { cri::MetricType::Gauge } as i32;
    cri::Metric { name: name.into(), timestamp: ts, metric_type, label_values: labels, value: Some(cri::UInt64Value { value }) }
}

pub(super) async fn list_pod_sandbox_metrics(
    agent: &Arc<Agent>,
    _r: Request<cri::ListPodSandboxMetricsRequest>,
) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
    let pods: Vec<PodRecord> =
        agent.store.list::<PodRecord>().map_err(internal)?.into_iter().filter(|p| p.state == PodState::Ready).collect();
    let containers = agent.store.list::<ContainerRecord>().map_err(internal)?;
    let a = agent.clone();
    let pod_metrics = blocking(move || {
        pods.iter()
            .map(|p| {
                let s = st::pod_stats(&a, p, &containers);
                let linux = s.linux.unwrap_or_default();
                let ts = crate::util::now_ns();
                let mut metrics = Vec::new();
                for i in linux.network.map(|n| n.interfaces).unwrap_or_default() {
                    let labels = vec![i.name.clone(), p.name.clone(), p.namespace.clone()];
                    metrics.push(metric(
                        "container_network_receive_bytes_total",
                        ts,
                        true,
                        labels.clone(),
                        i.rx_bytes.map(|v| v.value).unwrap_or(0),
                    ));
                    metrics.push(metric(
                        "container_network_transmit_bytes_total",
                        ts,
                        true,
                        labels,
                        i.tx_bytes.map(|v| v.value).unwrap_or(0),
                    ));
                }
                let container_metrics = linux
                    .containers
                    .iter()
                    .map(|c| {
                        let name = c.attributes.as_ref().and_then(|a| a.metadata.as_ref()).map(|m| m.name.clone()).unwrap_or_default();
                        let labels = vec![name, p.name.clone(), p.namespace.clone()];
                        let v = |o: Option<cri::UInt64Value>| o.map(|x| x.value).unwrap_or(0);
                        let cpu = c.cpu.unwrap_or_default();
                        let mem = c.memory.unwrap_or_default();
                        cri::ContainerMetrics {
                            container_id: c.attributes.as_ref().map(|a| a.id.clone()).unwrap_or_default(),
                            metrics: vec![
                                metric(
                                    "container_cpu_usage_seconds_total",
                                    ts,
                                    true,
                                    labels.clone(),
                                    v(cpu.usage_core_nano_seconds) / 1_000_000_000,
                                ),
                                metric("container_memory_working_set_bytes", ts, false, labels.clone(), v(mem.working_set_bytes)),
                                metric("container_memory_usage_bytes", ts, false, labels.clone(), v(mem.usage_bytes)),
                                metric("container_memory_rss", ts, false, labels, v(mem.rss_bytes)),
                            ],
                        }
                    })
                    .collect();
                cri::PodSandboxMetrics { pod_sandbox_id: p.id.clone(), metrics, container_metrics }
            })
            .collect()
    })
    .await?;
    Ok(Response::new(cri::ListPodSandboxMetricsResponse { pod_metrics }))
}

//! Stats RPCs: ContainerStats, ListContainerStats, PodSandboxStats,
//! ListPodSandboxStats, ListMetricDescriptors, ListPodSandboxMetrics. The
//! numbers come from [`crate::stats`]; this file shapes them for kubelet.

use std::sync::Arc;

use berth_proto::cri;

use super::convert::{container_metadata, labels_match, pod_metadata};
use crate::error::Result;
use crate::metrics::{self, BASE_LABELS, DESCRIPTORS};
use crate::node::Node;
use crate::stats::{self as st, is_live, Pressure, PressureLine};
use crate::store::PodState;

fn u64v(v: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value: v })
}

/// A pressure file as CRI's PsiStats: totals in nanoseconds.
fn psi(p: &Pressure) -> cri::PsiStats {
    let data = |l: &PressureLine| cri::PsiData { total: l.total_us * 1000, avg10: l.avg10, avg60: l.avg60, avg300: l.avg300 };
    cri::PsiStats { full: p.full.as_ref().map(data), some: Some(data(&p.some)) }
}

/// IO pressure, when the cgroup has it.
fn io(ts: i64, p: Option<&Pressure>) -> Option<cri::IoUsage> {
    p.map(|p| cri::IoUsage { timestamp: ts, psi: Some(psi(p)) })
}

fn cpu(c: &st::CpuStats) -> cri::CpuUsage {
    cri::CpuUsage {
        timestamp: c.ts,
        usage_core_nano_seconds: u64v(c.total_ns),
        usage_nano_cores: u64v(c.nano_cores),
        psi: c.psi.as_ref().map(psi),
    }
}

fn memory(m: &st::MemoryStats) -> cri::MemoryUsage {
    cri::MemoryUsage {
        timestamp: m.ts,
        working_set_bytes: u64v(m.working_set),
        available_bytes: m.available.and_then(u64v),
        usage_bytes: u64v(m.usage),
        rss_bytes: u64v(m.rss),
        page_faults: u64v(m.page_faults),
        major_page_faults: u64v(m.major_page_faults),
        psi: m.psi.as_ref().map(psi),
    }
}

fn container_stats(s: &st::ContainerStats) -> cri::ContainerStats {
    let c = &s.container;
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: c.id.clone(),
            metadata: Some(container_metadata(c)),
            labels: c.labels.clone().into_iter().collect(),
            annotations: c.annotations.clone().into_iter().collect(),
        }),
        cpu: Some(cpu(&s.cpu)),
        memory: Some(memory(&s.memory)),
        writable_layer: Some(cri::FilesystemUsage {
            timestamp: s.fs.ts,
            fs_id: Some(cri::FilesystemIdentifier { mountpoint: s.fs.mountpoint.clone() }),
            used_bytes: u64v(s.fs.bytes),
            inodes_used: u64v(s.fs.inodes),
        }),
        swap: None,
        io: io(s.cpu.ts, s.io.as_ref()),
    }
}

fn interface(i: &st::Interface) -> cri::NetworkInterfaceUsage {
    cri::NetworkInterfaceUsage {
        name: i.name.clone(),
        rx_bytes: u64v(i.rx_bytes),
        rx_errors: u64v(i.rx_errors),
        tx_bytes: u64v(i.tx_bytes),
        tx_errors: u64v(i.tx_errors),
    }
}

fn pod_stats(s: &st::PodStats) -> cri::PodSandboxStats {
    let p = &s.pod;
    let network = s.network.as_ref().map(|ifaces| {
        let interfaces: Vec<cri::NetworkInterfaceUsage> = ifaces.iter().map(interface).collect();
        cri::NetworkUsage { timestamp: s.network_ts, default_interface: interfaces.iter().find(|i| i.name == "eth0").cloned(), interfaces }
    });
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: p.id.clone(),
            metadata: Some(pod_metadata(p)),
            labels: p.labels.clone().into_iter().collect(),
            annotations: p.annotations.clone().into_iter().collect(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: Some(cpu(&s.cpu)),
            memory: Some(memory(&s.memory)),
            network,
            process: Some(cri::ProcessUsage { timestamp: s.cpu.ts, process_count: u64v(s.processes) }),
            containers: s.containers.iter().map(container_stats).collect(),
            io: io(s.cpu.ts, s.io.as_ref()),
        }),
        windows: None,
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    Ok(tokio::task::spawn_blocking(f).await?)
}

pub(super) async fn container_stats_of(node: &Arc<Node>, req: cri::ContainerStatsRequest) -> Result<cri::ContainerStatsResponse> {
    let c = crate::container::find(node, &req.container_id)?;
    let a = node.clone();
    let stats = blocking(move || st::container_stats(&a, &c)).await?;
    Ok(cri::ContainerStatsResponse { stats: Some(container_stats(&stats)) })
}

pub(super) async fn list_container_stats(node: &Arc<Node>, req: cri::ListContainerStatsRequest) -> Result<cri::ListContainerStatsResponse> {
    let filter = req.filter.unwrap_or_default();
    let picked = node.containers.filter(|c| {
        is_live(c)
            && (filter.id.is_empty() || c.id.starts_with(&filter.id))
            && (filter.pod_sandbox_id.is_empty() || c.pod_id.starts_with(&filter.pod_sandbox_id))
            && labels_match(&c.labels, &filter.label_selector)
    });
    let a = node.clone();
    let stats = blocking(move || picked.iter().map(|c| container_stats(&st::container_stats(&a, c))).collect()).await?;
    Ok(cri::ListContainerStatsResponse { stats })
}

pub(super) async fn pod_sandbox_stats(node: &Arc<Node>, req: cri::PodSandboxStatsRequest) -> Result<cri::PodSandboxStatsResponse> {
    let pod = crate::pod::find(node, &req.pod_sandbox_id)?;
    let a = node.clone();
    let stats = blocking(move || pod_stats(&st::pod_stats(&a, &pod))).await?;
    Ok(cri::PodSandboxStatsResponse { stats: Some(stats) })
}

pub(super) async fn list_pod_sandbox_stats(
    node: &Arc<Node>,
    req: cri::ListPodSandboxStatsRequest,
) -> Result<cri::ListPodSandboxStatsResponse> {
    let filter = req.filter.unwrap_or_default();
    let pods = node.pods.filter(|p| {
        p.state == PodState::Ready
            && (filter.id.is_empty() || p.id.starts_with(&filter.id))
            && labels_match(&p.labels, &filter.label_selector)
    });
    let a = node.clone();
    let stats = blocking(move || pods.iter().map(|p| pod_stats(&st::pod_stats(&a, p))).collect()).await?;
    Ok(cri::ListPodSandboxStatsResponse { stats })
}

pub(super) async fn list_metric_descriptors(_req: cri::ListMetricDescriptorsRequest) -> Result<cri::ListMetricDescriptorsResponse> {
    let descriptors = DESCRIPTORS
        .iter()
        .map(|d| cri::MetricDescriptor {
            name: d.name.to_string(),
            help: d.help.to_string(),
            label_keys: BASE_LABELS.iter().chain(d.extra_labels).map(|s| s.to_string()).collect(),
        })
        .collect();
    Ok(cri::ListMetricDescriptorsResponse { descriptors })
}

fn cri_metrics(s: &metrics::Samples) -> Vec<cri::Metric> {
    s.samples
        .iter()
        .map(|x| cri::Metric {
            name: x.descriptor.name.to_string(),
            timestamp: s.ts,
            metric_type: if x.descriptor.counter { cri::MetricType::Counter } else { cri::MetricType::Gauge } as i32,
            label_values: s.base.iter().chain(&x.extra).cloned().collect(),
            value: u64v(x.value),
        })
        .collect()
}

pub(super) async fn list_pod_sandbox_metrics(
    node: &Arc<Node>,
    _req: cri::ListPodSandboxMetricsRequest,
) -> Result<cri::ListPodSandboxMetricsResponse> {
    let pods = node.pods.filter(|p| p.state == PodState::Ready);
    let a = node.clone();
    let pod_metrics = blocking(move || {
        pods.iter()
            .map(|p| {
                let m = metrics::pod_metrics(&a, p);
                cri::PodSandboxMetrics {
                    pod_sandbox_id: m.pod_id,
                    metrics: cri_metrics(&m.pod),
                    container_metrics: m
                        .containers
                        .iter()
                        .map(|(id, s)| cri::ContainerMetrics { container_id: id.clone(), metrics: cri_metrics(s) })
                        .collect(),
                }
            })
            .collect()
    })
    .await?;
    Ok(cri::ListPodSandboxMetricsResponse { pod_metrics })
}

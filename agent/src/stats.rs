//! Container and pod statistics for kubelet's CRI stats provider: CPU
//! (cumulative and rate), memory, writable layer and pod network, read from
//! cgroups, the upper dir and the pod's network namespace.

use std::collections::HashMap;
use std::sync::Mutex;

use berth_proto::cri;
use berth_runtime::cgroup;

use crate::cri::Agent;
use crate::store::{ContainerRecord, ContainerState, PodRecord};
use crate::util::now_ns;

/// The previous CPU sample per cgroup, for usage_nano_cores.
#[derive(Default)]
pub struct CpuSamples {
    last: Mutex<HashMap<String, (i64, u64)>>,
}

impl CpuSamples {
    /// Nano-cores since the previous sample of `key` (None for the first).
    fn rate(&self, key: &str, ts: i64, cpu_ns: u64) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let prev = last.insert(key.to_string(), (ts, cpu_ns));
        let (pts, pcpu) = prev?;
        let dt = (ts - pts) as f64;
        if dt <= 0.0 || cpu_ns < pcpu {
            return None;
        }
        Some(((cpu_ns - pcpu) as f64 * 1e9 / dt) as u64)
    }

    /// Drops samples of cgroups that are gone.
    pub fn forget(&self, key: &str) {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

fn u64v(v: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value: v })
}

fn cpu_memory(agent: &Agent, cgroup_path: &str, ts: i64) -> (cri::CpuUsage, cri::MemoryUsage, u64) {
    let u = cgroup::usage(cgroup_path);
    let cpu = cri::CpuUsage {
        timestamp: ts,
        usage_core_nano_seconds: u64v(u.cpu_ns),
        usage_nano_cores: agent.cpu_samples.rate(cgroup_path, ts, u.cpu_ns).and_then(u64v).or(u64v(0)),
    };
    let memory = cri::MemoryUsage {
        timestamp: ts,
        working_set_bytes: u64v(u.working_set),
        available_bytes: u.limit.map(|l| l.saturating_sub(u.working_set)).and_then(u64v),
        usage_bytes: u64v(u.memory),
        rss_bytes: u64v(u.rss),
        page_faults: u64v(u.page_faults),
        major_page_faults: u64v(u.major_page_faults),
    };
    (cpu, memory, u.processes)
}

/// Stats of one container (blocking: reads cgroup files and walks the upper dir).
pub fn container_stats(agent: &Agent, c: &ContainerRecord) -> cri::ContainerStats {
    let ts = now_ns();
    let (cpu, memory, _) = cpu_memory(agent, &c.cgroup, ts);
    let upper = crate::container::layer_dir(agent, &c.id).join("upper");
    let mut seen = std::collections::HashSet::new();
    let mut usage = crate::image::Usage { path: upper.clone(), ..Default::default() };
    crate::image::du(&upper, &mut seen, &mut usage);
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: c.id.clone(),
            metadata: Some(cri::ContainerMetadata { name: c.name.clone(), attempt: c.attempt }),
            labels: c.labels.clone().into_iter().collect(),
            annotations: c.annotations.clone().into_iter().collect(),
        }),
        cpu: Some(cpu),
        memory: Some(memory),
        writable_layer: Some(cri::FilesystemUsage {
            timestamp: ts,
            fs_id: Some(cri::FilesystemIdentifier { mountpoint: agent.containers_dir().display().to_string() }),
            used_bytes: u64v(usage.bytes),
            inodes_used: u64v(usage.inodes),
        }),
        swap: None,
    }
}

/// Per-interface counters of the pod's network namespace.
fn network(agent: &Agent, pod: &PodRecord, ts: i64) -> Option<cri::NetworkUsage> {
    if pod.network_mode == crate::spec::ns_mode::NODE {
        return None;
    }
    let netns = berth_runtime::sandbox::pin_path(&crate::pod::pod_dir(agent, &pod.id), "net");
    // /proc/thread-self/net follows the reading thread's namespace.
    let text = berth_network::netlink::in_netns(&netns, || {
        std::fs::read_to_string("/proc/thread-self/net/dev").map_err(|e| berth_network::NetError::Config(e.to_string()))
    })
    .ok()?;
    let interfaces: Vec<cri::NetworkInterfaceUsage> = text
        .lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let f: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            Some(cri::NetworkInterfaceUsage {
                name: name.trim().to_string(),
                rx_bytes: u64v(*f.first()?),
                rx_errors: u64v(*f.get(2)?),
                tx_bytes: u64v(*f.get(8)?),
                tx_errors: u64v(*f.get(10)?),
            })
        })
        .filter(|i| i.name != "lo")
        .collect();
    Some(cri::NetworkUsage { timestamp: ts, default_interface: interfaces.iter().find(|i| i.name == "eth0").cloned(), interfaces })
}

/// Stats of a pod and its containers (blocking).
pub fn pod_stats(agent: &Agent, pod: &PodRecord, containers: &[ContainerRecord]) -> cri::PodSandboxStats {
    let ts = now_ns();
    let (cpu, memory, processes) = cpu_memory(agent, &pod.cgroup, ts);
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: pod.id.clone(),
            metadata: Some(cri::PodSandboxMetadata {
                name: pod.name.clone(),
                uid: pod.uid.clone(),
                namespace: pod.namespace.clone(),
                attempt: pod.attempt,
            }),
            labels: pod.labels.clone().into_iter().collect(),
            annotations: pod.annotations.clone().into_iter().collect(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: Some(cpu),
            memory: Some(memory),
            network: network(agent, pod, ts),
            process: Some(cri::ProcessUsage { timestamp: ts, process_count: u64v(processes) }),
            containers: containers.iter().filter(|c| c.pod_id == pod.id && is_live(c)).map(|c| container_stats(agent, c)).collect(),
        }),
        windows: None,
    }
}

/// Containers that have a cgroup worth reading.
pub fn is_live(c: &ContainerRecord) -> bool {
    matches!(c.state, ContainerState::Created | ContainerState::Running)
}

/// cadvisor-compatible metric descriptors kubelet's CRI stats provider knows.
pub const METRICS: &[(&str, &str, &[&str])] = &[
    ("container_cpu_usage_seconds_total", "Cumulative cpu time consumed in seconds.", &["container", "pod", "namespace"]),
    ("container_memory_working_set_bytes", "Current working set in bytes.", &["container", "pod", "namespace"]),
    ("container_memory_usage_bytes", "Current memory usage in bytes.", &["container", "pod", "namespace"]),
    ("container_memory_rss", "Size of RSS in bytes.", &["container", "pod", "namespace"]),
    ("container_network_receive_bytes_total", "Cumulative count of bytes received.", &["interface", "pod", "namespace"]),
    ("container_network_transmit_bytes_total", "Cumulative count of bytes transmitted.", &["interface", "pod", "namespace"]),
];

//! Container and pod statistics for kubelet's CRI stats provider: CPU
//! (cumulative and rate), memory, writable layer and pod network, read from
//! cgroups, the upper dir and the pod's network namespace.

use std::collections::HashMap;
use std::sync::Mutex;

use berth_runtime::cgroup;
/// A cgroup's pressure file and its lines, as the stats carry them.
pub use berth_runtime::cgroup::{Pressure, PressureLine};

use crate::node::Node;
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

/// CPU use at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuStats {
    /// When, ns since the epoch.
    pub ts: i64,
    /// Cumulative CPU time, ns.
    pub total_ns: u64,
    /// Rate since the previous sample, in nano-cores (0 for the first).
    pub nano_cores: u64,
    /// cpu.pressure (cgroup v2 only).
    pub psi: Option<Pressure>,
}

/// Memory use at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryStats {
    /// When, ns since the epoch.
    pub ts: i64,
    /// Usage minus inactive file cache.
    pub working_set: u64,
    /// What is left below the limit, when there is one.
    pub available: Option<u64>,
    /// Usage.
    pub usage: u64,
    /// Anonymous and swap cache memory.
    pub rss: u64,
    /// Page faults.
    pub page_faults: u64,
    /// Major page faults.
    pub major_page_faults: u64,
    /// memory.pressure (cgroup v2 only).
    pub psi: Option<Pressure>,
}

/// Disk use of a writable layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsStats {
    /// When, ns since the epoch.
    pub ts: i64,
    /// The filesystem's mountpoint (the containers directory).
    pub mountpoint: String,
    /// Bytes allocated.
    pub bytes: u64,
    /// Inodes used.
    pub inodes: u64,
}

/// One container's use.
#[derive(Debug, Clone)]
pub struct ContainerStats {
    /// The container.
    pub container: ContainerRecord,
    /// CPU.
    pub cpu: CpuStats,
    /// Memory.
    pub memory: MemoryStats,
    /// Its writable layer.
    pub fs: FsStats,
    /// io.pressure (cgroup v2 only), read with the CPU numbers.
    pub io: Option<Pressure>,
}

/// One network interface's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interface {
    /// Its name in the pod.
    pub name: String,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Packets dropped on receive.
    pub rx_dropped: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Send errors.
    pub tx_errors: u64,
    /// Packets dropped on send.
    pub tx_dropped: u64,
}

/// A pod's use, with its containers'.
#[derive(Debug, Clone)]
pub struct PodStats {
    /// The pod.
    pub pod: PodRecord,
    /// CPU of the pod cgroup.
    pub cpu: CpuStats,
    /// Memory of the pod cgroup.
    pub memory: MemoryStats,
    /// Processes in the pod cgroup.
    pub processes: u64,
    /// io.pressure of the pod cgroup (cgroup v2 only), read with the CPU numbers.
    pub io: Option<Pressure>,
    /// When the network counters were read.
    pub network_ts: i64,
    /// Interfaces of its own network namespace (None on the host's).
    pub network: Option<Vec<Interface>>,
    /// Its live containers.
    pub containers: Vec<ContainerStats>,
}

/// A cgroup's CPU and memory numbers, its processes and its IO pressure.
fn cpu_memory(node: &Node, cgroup_path: &str, ts: i64) -> (CpuStats, MemoryStats, u64, Option<Pressure>) {
    let u = cgroup::usage(cgroup_path);
    let nano_cores = node.cpu_samples.rate(cgroup_path, ts, u.cpu_ns).unwrap_or(0);
    let cpu = CpuStats { ts, total_ns: u.cpu_ns, nano_cores, psi: u.pressure.cpu };
    let memory = MemoryStats {
        ts,
        working_set: u.working_set,
        available: u.limit.map(|l| l.saturating_sub(u.working_set)),
        usage: u.memory,
        rss: u.rss,
        page_faults: u.page_faults,
        major_page_faults: u.major_page_faults,
        psi: u.pressure.memory,
    };
    (cpu, memory, u.processes, u.pressure.io)
}

/// Stats of one container (blocking: reads cgroup files and walks the upper dir).
pub fn container_stats(node: &Node, c: &ContainerRecord) -> ContainerStats {
    let ts = now_ns();
    let (cpu, memory, _, io) = cpu_memory(node, &c.cgroup, ts);
    let upper = node.layer_dir(&c.id).join("upper");
    let mut seen = std::collections::HashSet::new();
    let mut usage = crate::image::Usage { path: upper.clone(), ..Default::default() };
    crate::image::du(&upper, &mut seen, &mut usage);
    let fs = FsStats { ts, mountpoint: node.containers_dir().display().to_string(), bytes: usage.bytes, inodes: usage.inodes };
    ContainerStats { container: c.clone(), cpu, memory, fs, io }
}

/// Per-interface counters of the pod's network namespace.
pub fn network(node: &Node, pod: &PodRecord) -> Option<Vec<Interface>> {
    if pod.network_mode == crate::spec::ns_mode::NODE {
        return None;
    }
    let netns = berth_runtime::sandbox::pin_path(&node.pod_dir(&pod.id), "net");
    // /proc/thread-self/net follows the reading thread's namespace.
    let text = berth_network::netlink::in_netns(&netns, || {
        std::fs::read_to_string("/proc/thread-self/net/dev").map_err(|e| berth_network::NetError::Config(e.to_string()))
    })
    .ok()?;
    let interfaces = text
        .lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let f: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            // /proc/net/dev: receive bytes packets errs drop fifo frame
            // compressed multicast, then transmit bytes packets errs drop …
            Some(Interface {
                name: name.trim().to_string(),
                rx_bytes: *f.first()?,
                rx_packets: *f.get(1)?,
                rx_errors: *f.get(2)?,
                rx_dropped: *f.get(3)?,
                tx_bytes: *f.get(8)?,
                tx_packets: *f.get(9)?,
                tx_errors: *f.get(10)?,
                tx_dropped: *f.get(11)?,
            })
        })
        .filter(|i| i.name != "lo")
        .collect();
    Some(interfaces)
}

/// Stats of a pod and its containers (blocking).
pub fn pod_stats(node: &Node, pod: &PodRecord) -> PodStats {
    let ts = now_ns();
    let (cpu, memory, processes, io) = cpu_memory(node, &pod.cgroup, ts);
    let containers = node.containers_of(&pod.id).iter().filter(|c| is_live(c)).map(|c| container_stats(node, c)).collect();
    PodStats { pod: pod.clone(), cpu, memory, processes, io, network_ts: ts, network: network(node, pod), containers }
}

/// Containers that have a cgroup worth reading.
pub fn is_live(c: &ContainerRecord) -> bool {
    matches!(c.state, ContainerState::Created | ContainerState::Running)
}

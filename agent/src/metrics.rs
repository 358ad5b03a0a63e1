//! The cadvisor container metrics kubelet's CRI stats provider asks for
//! (`ListMetricDescriptors`, `ListPodSandboxMetrics`): what each one is, and
//! their values for a pod and its containers, read from the cgroup, /proc,
//! the writable layer's filesystem and the pod's network namespace.
//!
//! Labels are containerd's: `pod, namespace, container, id, image`, then
//! per family `interface`, `device`, `device, major, minor, operation` or
//! `failure_type, scope`. Values are whole numbers (seconds truncated), as
//! the CRI's `UInt64Value` and containerd have them.

use std::path::Path;

use berth_runtime::cgroup;

use crate::node::Node;
use crate::stats::{is_live, Interface};
use crate::store::{ContainerRecord, PodRecord};
use crate::util::now_ns;

/// The labels every metric has, in order.
pub const BASE_LABELS: [&str; 5] = ["pod", "namespace", "container", "id", "image"];

/// One metric kubelet can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// Its cadvisor name.
    pub name: &'static str,
    /// Its help text.
    pub help: &'static str,
    /// Labels after [`BASE_LABELS`].
    pub extra_labels: &'static [&'static str],
    /// A counter (else a gauge).
    pub counter: bool,
}

const NET: &[&str] = &["interface"];
const DISK: &[&str] = &["device"];
const BLKIO: &[&str] = &["device", "major", "minor", "operation"];
const FAILURES: &[&str] = &["failure_type", "scope"];

const fn d(name: &'static str, counter: bool, extra_labels: &'static [&'static str], help: &'static str) -> Descriptor {
    Descriptor { name, help, extra_labels, counter }
}

/// Every metric berth reports, by name.
pub const DESCRIPTORS: &[Descriptor] = &[
    d("container_cpu_usage_seconds_total", true, &[], "Cumulative cpu time consumed in seconds."),
    d("container_cpu_user_seconds_total", true, &[], "Cumulative user cpu time consumed in seconds."),
    d("container_cpu_system_seconds_total", true, &[], "Cumulative system cpu time consumed in seconds."),
    d("container_cpu_cfs_periods_total", true, &[], "Number of elapsed enforcement period intervals."),
    d("container_cpu_cfs_throttled_periods_total", true, &[], "Number of throttled period intervals."),
    d("container_cpu_cfs_throttled_seconds_total", true, &[], "Total time duration the container has been throttled."),
    d("container_memory_cache", false, &[], "Number of bytes of page cache memory."),
    d("container_memory_rss", false, &[], "Size of RSS in bytes."),
    d("container_memory_kernel_usage", false, &[], "Size of kernel memory allocated in bytes."),
    d("container_memory_mapped_file", false, &[], "Size of memory mapped files in bytes."),
    d("container_memory_swap", false, &[], "Container swap usage in bytes."),
    d("container_memory_failcnt", true, &[], "Number of memory usage hits limits."),
    d(
        "container_memory_usage_bytes",
        false,
        &[],
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
    ),
    d("container_memory_max_usage_bytes", false, &[], "Maximum memory usage recorded in bytes."),
    d("container_memory_working_set_bytes", false, &[], "Current working set in bytes."),
    d("container_memory_failures_total", true, FAILURES, "Cumulative count of memory allocation failures."),
    d("container_oom_events_total", true, &[], "Count of out of memory events observed for the container."),
    d("container_fs_inodes_free", false, DISK, "Number of available Inodes."),
    d("container_fs_inodes_total", false, DISK, "Number of Inodes."),
    d("container_fs_limit_bytes", false, DISK, "Number of bytes that can be consumed by the container on this filesystem."),
    d("container_fs_usage_bytes", false, DISK, "Number of bytes that are consumed by the container on this filesystem."),
    d("container_fs_reads_bytes_total", true, DISK, "Cumulative count of bytes read."),
    d("container_fs_reads_total", true, DISK, "Cumulative count of reads completed."),
    d("container_fs_writes_bytes_total", true, DISK, "Cumulative count of bytes written."),
    d("container_fs_writes_total", true, DISK, "Cumulative count of writes completed."),
    d("container_blkio_device_usage_total", true, BLKIO, "Blkio device bytes usage."),
    d("container_network_receive_bytes_total", true, NET, "Cumulative count of bytes received."),
    d("container_network_receive_errors_total", true, NET, "Cumulative count of errors encountered while receiving."),
    d("container_network_receive_packets_total", true, NET, "Cumulative count of packets received."),
    d("container_network_receive_packets_dropped_total", true, NET, "Cumulative count of packets dropped while receiving."),
    d("container_network_transmit_bytes_total", true, NET, "Cumulative count of bytes transmitted."),
    d("container_network_transmit_errors_total", true, NET, "Cumulative count of errors encountered while transmitting."),
    d("container_network_transmit_packets_total", true, NET, "Cumulative count of packets transmitted."),
    d("container_network_transmit_packets_dropped_total", true, NET, "Cumulative count of packets dropped while transmitting."),
    d("container_processes", false, &[], "Number of processes running inside the container."),
    d("container_file_descriptors", false, &[], "Number of open file descriptors for the container."),
    d("container_sockets", false, &[], "Number of open sockets for the container."),
    d("container_threads", false, &[], "Number of threads running inside the container."),
    d("container_threads_max", false, &[], "Maximum number of threads allowed inside the container, infinity if value is zero."),
    d("container_last_seen", false, &[], "Last time a container was seen by the exporter."),
    d("container_start_time_seconds", false, &[], "Start time of the container since unix epoch in seconds."),
    d("container_spec_cpu_period", false, &[], "CPU period of the container."),
    d("container_spec_cpu_shares", false, &[], "CPU share of the container."),
    d("container_spec_memory_limit_bytes", false, &[], "Memory limit for the container."),
    d("container_spec_memory_swap_limit_bytes", false, &[], "Memory swap limit for the container."),
];

/// The descriptor named `name`.
pub fn descriptor(name: &str) -> Option<&'static Descriptor> {
    DESCRIPTORS.iter().find(|d| d.name == name)
}

/// One value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Its descriptor.
    pub descriptor: &'static Descriptor,
    /// Values of the descriptor's extra labels, in order.
    pub extra: Vec<String>,
    /// The value.
    pub value: u64,
}

/// Values with the base labels they share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Samples {
    /// Values of [`BASE_LABELS`].
    pub base: Vec<String>,
    /// When they were read, ns since the epoch.
    pub ts: i64,
    /// The values.
    pub samples: Vec<Sample>,
}

impl Samples {
    fn new(base: Vec<String>, ts: i64) -> Samples {
        Samples { base, ts, samples: Vec::new() }
    }

    fn push(&mut self, name: &str, extra: &[&str], value: u64) {
        // Every name pushed is in DESCRIPTORS (a unit test walks them all).
        if let Some(descriptor) = descriptor(name) {
            self.samples.push(Sample { descriptor, extra: extra.iter().map(|s| s.to_string()).collect(), value });
        }
    }
}

/// A pod's values: its own (network) and its live containers'.
#[derive(Debug, Clone)]
pub struct PodMetrics {
    /// The pod.
    pub pod_id: String,
    /// Pod-level values (network, with an empty container label).
    pub pod: Samples,
    /// (container id, its values).
    pub containers: Vec<(String, Samples)>,
}

const NS_PER_S: u64 = 1_000_000_000;

/// The node's name for a block device (`/dev/vda`), as cadvisor labels it.
fn device_name(major: u64, minor: u64) -> String {
    let uevent = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent")).unwrap_or_default();
    match uevent.lines().find_map(|l| l.strip_prefix("DEVNAME=")) {
        Some(name) => format!("/dev/{name}"),
        None => format!("{major}:{minor}"),
    }
}

/// Open fds and sockets of `pids`.
fn fds_and_sockets(pids: &[i32]) -> (u64, u64) {
    let (mut fds, mut sockets) = (0, 0);
    for pid in pids {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for e in dir.flatten() {
            fds += 1;
            if std::fs::read_link(e.path()).is_ok_and(|t| t.as_os_str().as_encoded_bytes().starts_with(b"socket:")) {
                sockets += 1;
            }
        }
    }
    (fds, sockets)
}

/// The filesystem that holds `dir`: its device name, size and inodes.
struct FsInfo {
    device: String,
    limit_bytes: u64,
    inodes_total: u64,
    inodes_free: u64,
}

fn fs_info(dir: &Path) -> FsInfo {
    let device = std::fs::canonicalize(dir)
        .ok()
        .and_then(|d| {
            let mounts = berth_runtime::mountinfo::read_self().ok()?;
            berth_runtime::mountinfo::containing(&mounts, &d).map(|m| m.source.clone())
        })
        .unwrap_or_default();
    match nix::sys::statvfs::statvfs(dir) {
        Ok(s) => FsInfo { device, limit_bytes: s.blocks() * s.fragment_size(), inodes_total: s.files(), inodes_free: s.files_available() },
        Err(_) => FsInfo { device, limit_bytes: 0, inodes_total: 0, inodes_free: 0 },
    }
}

fn container_samples(node: &Node, pod: &PodRecord, c: &ContainerRecord, fs: &FsInfo) -> Samples {
    let ts = now_ns();
    let base = vec![pod.name.clone(), pod.namespace.clone(), c.name.clone(), c.id.clone(), c.image.clone()];
    let mut s = Samples::new(base, ts);
    let (m, pids) = cgroup::metrics(&c.cgroup);
    s.push("container_cpu_usage_seconds_total", &[], m.cpu_ns / NS_PER_S);
    s.push("container_cpu_user_seconds_total", &[], m.cpu_user_ns / NS_PER_S);
    s.push("container_cpu_system_seconds_total", &[], m.cpu_system_ns / NS_PER_S);
    s.push("container_cpu_cfs_periods_total", &[], m.cfs_periods);
    s.push("container_cpu_cfs_throttled_periods_total", &[], m.cfs_throttled_periods);
    s.push("container_cpu_cfs_throttled_seconds_total", &[], m.cfs_throttled_ns / NS_PER_S);

    s.push("container_memory_cache", &[], m.cache);
    s.push("container_memory_rss", &[], m.rss);
    s.push("container_memory_kernel_usage", &[], m.kernel);
    s.push("container_memory_mapped_file", &[], m.mapped_file);
    s.push("container_memory_swap", &[], m.swap);
    s.push("container_memory_failcnt", &[], m.failcnt);
    s.push("container_memory_usage_bytes", &[], m.memory_usage);
    s.push("container_memory_max_usage_bytes", &[], m.memory_max_usage);
    s.push("container_memory_working_set_bytes", &[], m.working_set);
    s.push("container_memory_failures_total", &["pgfault", "container"], m.pgfault.0);
    s.push("container_memory_failures_total", &["pgfault", "hierarchy"], m.pgfault.1);
    s.push("container_memory_failures_total", &["pgmajfault", "container"], m.pgmajfault.0);
    s.push("container_memory_failures_total", &["pgmajfault", "hierarchy"], m.pgmajfault.1);
    s.push("container_oom_events_total", &[], m.oom_kills);

    let layer = crate::stats::container_stats(node, c).fs;
    let dev = fs.device.as_str();
    s.push("container_fs_inodes_free", &[dev], fs.inodes_free);
    s.push("container_fs_inodes_total", &[dev], fs.inodes_total);
    s.push("container_fs_limit_bytes", &[dev], fs.limit_bytes);
    s.push("container_fs_usage_bytes", &[dev], layer.bytes);
    for io in &m.io {
        let name = device_name(io.major, io.minor);
        let (major, minor) = (io.major.to_string(), io.minor.to_string());
        s.push("container_fs_reads_bytes_total", &[&name], io.read_bytes);
        s.push("container_fs_reads_total", &[&name], io.reads);
        s.push("container_fs_writes_bytes_total", &[&name], io.write_bytes);
        s.push("container_fs_writes_total", &[&name], io.writes);
        s.push("container_blkio_device_usage_total", &[&name, &major, &minor, "Read"], io.read_bytes);
        s.push("container_blkio_device_usage_total", &[&name, &major, &minor, "Write"], io.write_bytes);
    }

    let (fds, sockets) = fds_and_sockets(&pids);
    s.push("container_processes", &[], pids.len() as u64);
    s.push("container_file_descriptors", &[], fds);
    s.push("container_sockets", &[], sockets);
    s.push("container_threads", &[], m.tasks);
    s.push("container_threads_max", &[], m.tasks_max);

    s.push("container_last_seen", &[], (ts as u64) / NS_PER_S);
    s.push("container_start_time_seconds", &[], c.started_at_ns.max(0) as u64 / NS_PER_S);
    s.push("container_spec_cpu_period", &[], m.spec_cpu_period);
    s.push("container_spec_cpu_shares", &[], m.spec_cpu_shares);
    s.push("container_spec_memory_limit_bytes", &[], m.spec_memory_limit);
    s.push("container_spec_memory_swap_limit_bytes", &[], m.spec_swap_limit);
    s
}

fn network_samples(pod: &PodRecord, interfaces: &[Interface], ts: i64) -> Samples {
    let base = vec![pod.name.clone(), pod.namespace.clone(), String::new(), pod.id.clone(), String::new()];
    let mut s = Samples::new(base, ts);
    for i in interfaces {
        let n = [i.name.as_str()];
        s.push("container_network_receive_bytes_total", &n, i.rx_bytes);
        s.push("container_network_receive_errors_total", &n, i.rx_errors);
        s.push("container_network_receive_packets_total", &n, i.rx_packets);
        s.push("container_network_receive_packets_dropped_total", &n, i.rx_dropped);
        s.push("container_network_transmit_bytes_total", &n, i.tx_bytes);
        s.push("container_network_transmit_errors_total", &n, i.tx_errors);
        s.push("container_network_transmit_packets_total", &n, i.tx_packets);
        s.push("container_network_transmit_packets_dropped_total", &n, i.tx_dropped);
    }
    s
}

/// The metrics of `pod` and its live containers (blocking: reads cgroup
/// files, /proc and the writable layers).
pub fn pod_metrics(node: &Node, pod: &PodRecord) -> PodMetrics {
    let ts = now_ns();
    let interfaces = crate::stats::network(node, pod).unwrap_or_default();
    let fs = fs_info(&node.containers_dir());
    let containers =
        node.containers_of(&pod.id).iter().filter(|c| is_live(c)).map(|c| (c.id.clone(), container_samples(node, pod, c, &fs))).collect();
    PodMetrics { pod_id: pod.id.clone(), pod: network_samples(pod, &interfaces, ts), containers }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pushed_name_is_described_once_and_the_labels_fit() {
        let mut names: Vec<&str> = DESCRIPTORS.iter().map(|d| d.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "a descriptor is listed twice");
        // Every name this file pushes has a descriptor: a name missing from
        // DESCRIPTORS would be dropped silently by Samples::push.
        let source = include_str!("metrics.rs");
        for pushed in source.split("s.push(\"").skip(1).filter_map(|rest| rest.split('"').next()) {
            assert!(descriptor(pushed).is_some(), "{pushed} has no descriptor");
        }
        let pod = PodRecord { name: "p".into(), namespace: "ns".into(), id: "id".into(), ..Default::default() };
        let s = network_samples(&pod, &[Interface { name: "eth0".into(), rx_bytes: 5, ..Default::default() }], 1);
        assert_eq!(s.samples.len(), 8);
        assert!(s.samples.iter().all(|x| x.extra.len() == x.descriptor.extra_labels.len()));
        assert_eq!(s.base.len(), BASE_LABELS.len());
    }
}

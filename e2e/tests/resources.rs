//! Resource limits in the container cgroup: applied at create, updated live,
//! OOM kills reported as OOMKilled, bad values refused.

use std::time::Duration;

use berth_e2e::{cri, Fixture};
use tonic::Code;

async fn cgroup_of(f: &mut Fixture, id: &str) -> String {
    let r =
        f.cri.runtime.container_status(cri::ContainerStatusRequest { container_id: id.into(), verbose: true }).await.unwrap().into_inner();
    let info: serde_json::Value = serde_json::from_str(&r.info["info"]).unwrap();
    info["cgroup"].as_str().unwrap().to_string()
}

/// Reads a cgroup file from whichever hierarchy has it.
fn knob(cgroup: &str, file: &str) -> String {
    for m in berth_e2e::cgroup_mounts() {
        let p = m.join(cgroup).join(file);
        if let Ok(t) = std::fs::read_to_string(&p) {
            return t.trim().to_string();
        }
    }
    panic!("no hierarchy has {file} for {cgroup}")
}

fn resources(f: impl FnOnce(&mut cri::LinuxContainerResources)) -> cri::LinuxContainerResources {
    let mut r = cri::LinuxContainerResources::default();
    f(&mut r);
    r
}

fn v2() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().any(|l| l.contains(" /sys/fs/cgroup ") && l.contains("cgroup2"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_apply_update_live_and_oom_is_reported() {
    let mut f = Fixture::start().await;
    let cfg = f.pod("res");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let mut c = f.container("limited", &["sleep", "1000"]);
    c.linux.as_mut().unwrap().resources = Some(resources(|r| {
        r.cpu_quota = 50_000;
        r.cpu_period = 100_000;
        r.cpu_shares = 512;
        r.memory_limit_in_bytes = 64 << 20;
        r.oom_score_adj = 500;
    }));
    let id = f.cri.run(&pod, c, &cfg).await;
    let cg = cgroup_of(&mut f, &id).await;
    if v2() {
        assert_eq!(knob(&cg, "cpu.max"), "50000 100000");
        assert_eq!(knob(&cg, "memory.max"), (64u64 << 20).to_string());
    } else {
        assert_eq!(knob(&cg, "cpu.cfs_quota_us"), "50000");
        assert_eq!(knob(&cg, "cpu.shares"), "512");
        assert_eq!(knob(&cg, "memory.limit_in_bytes"), (64u64 << 20).to_string());
    }
    assert_eq!(f.cri.sh(&id, "cat /proc/self/oom_score_adj").await.trim(), "500");
    let st = f.cri.status(&id).await;
    assert_eq!(st.resources.unwrap().linux.unwrap().memory_limit_in_bytes, 64 << 20);

    // Live update.
    let update = cri::UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(resources(|r| {
            r.cpu_quota = 20_000;
            r.cpu_period = 100_000;
            r.memory_limit_in_bytes = 128 << 20;
        })),
        ..Default::default()
    };
    f.cri.runtime.update_container_resources(update).await.unwrap();
    let (quota, mem) = if v2() { ("cpu.max", "memory.max") } else { ("cpu.cfs_quota_us", "memory.limit_in_bytes") };
    assert!(knob(&cg, quota).starts_with("20000"));
    assert_eq!(knob(&cg, mem), (128u64 << 20).to_string());

    // Bad values: refused, nothing changed or created.
    let bad = cri::UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(resources(|r| r.memory_limit_in_bytes = -5)),
        ..Default::default()
    };
    let e = f.cri.runtime.update_container_resources(bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("memory_limit_in_bytes"), "{}", e.message());
    let mut c = f.container("absurd", &["true"]);
    c.linux.as_mut().unwrap().resources = Some(resources(|r| r.cpu_quota = 10));
    let e = f.cri.create(&pod, c, &cfg).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("cpu_quota"), "{}", e.message());

    // An OOM kill is reported as OOMKilled with 137.
    let mut c = f.container("hog", &["dd", "if=/dev/zero", "of=/dev/null", "bs=96M", "count=1"]);
    c.linux.as_mut().unwrap().resources = Some(resources(|r| r.memory_limit_in_bytes = 32 << 20));
    let hog = f.cri.run(&pod, c, &cfg).await;
    let s = f.cri.wait_exited(&hog, Duration::from_secs(20)).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (137, "OOMKilled"));
    f.cri.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_are_plausible() {
    let mut f = Fixture::start().await;
    let cfg = f.pod("stats");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let busy = f.cri.run(&pod, f.container("busy", &["sh", "-c", "while true; do :; done"]), &cfg).await;
    let mem = f
        .cri
        .run(
            &pod,
            f.container(
                "mem",
                &[
                    "sh",
                    "-c",
                    "head -c 20000000 /dev/zero > /dev/shm/buf.tmp; mv /dev/shm/buf.tmp /dev/shm/buf; nc -ll -p 8080 -e echo stats",
                ],
            ),
            &cfg,
        )
        .await;
    // The 20 MB are written (slow under emulation, as in the v2 VM).
    let written = f.cri.wait_file(&mem, "/dev/shm/buf", 300, Duration::from_millis(100)).await;
    assert!(written, "the container never wrote its 20 MB");
    let get = |r: cri::ContainerStatsResponse| r.stats.unwrap();
    let s1 = get(f.cri.runtime.container_stats(cri::ContainerStatsRequest { container_id: busy.clone() }).await.unwrap().into_inner());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s2 = get(f.cri.runtime.container_stats(cri::ContainerStatsRequest { container_id: busy.clone() }).await.unwrap().into_inner());
    let cpu = |s: &cri::ContainerStats| s.cpu.as_ref().unwrap().usage_core_nano_seconds.unwrap().value;
    assert!(cpu(&s2) > cpu(&s1), "cpu grows while busy: {} -> {}", cpu(&s1), cpu(&s2));
    let cores = s2.cpu.unwrap().usage_nano_cores.unwrap().value;
    assert!(cores > 200_000_000, "a busy loop uses most of a core, got {cores} nano-cores");

    let m = get(f.cri.runtime.container_stats(cri::ContainerStatsRequest { container_id: mem.clone() }).await.unwrap().into_inner());
    let usage = m.memory.as_ref().unwrap();
    assert!(usage.usage_bytes.unwrap().value >= 20_000_000, "memory {usage:?}");
    assert!(usage.working_set_bytes.unwrap().value >= 20_000_000, "memory {usage:?}");
    assert!(m.writable_layer.unwrap().inodes_used.unwrap().value >= 1);

    let list = f
        .cri
        .runtime
        .list_container_stats(cri::ListContainerStatsRequest {
            filter: Some(cri::ContainerStatsFilter { pod_sandbox_id: pod.clone(), ..Default::default() }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.stats.len(), 2);

    // Pod stats carry the network counters of the pod's namespace.
    let ip = f.cri.pod_ip(&pod).await;
    for _ in 0..100 {
        if let Ok(mut s) = std::net::TcpStream::connect_timeout(&format!("{ip}:8080").parse().unwrap(), Duration::from_secs(1)) {
            let mut out = String::new();
            let _ = std::io::Read::read_to_string(&mut s, &mut out);
            if !out.is_empty() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ps = f
        .cri
        .runtime
        .pod_sandbox_stats(cri::PodSandboxStatsRequest { pod_sandbox_id: pod.clone() })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    let linux = ps.linux.unwrap();
    let eth0 = linux.network.unwrap().default_interface.unwrap();
    assert!(eth0.rx_bytes.unwrap().value > 0 && eth0.tx_bytes.unwrap().value > 0, "{eth0:?}");
    assert_eq!(linux.containers.len(), 2);
    assert!(linux.memory.unwrap().usage_bytes.unwrap().value >= 20_000_000);
    let all = f.cri.runtime.list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest::default()).await.unwrap().into_inner();
    assert_eq!(all.stats.len(), 1);
    f.cri.remove_pod(&pod).await;
}

/// The cadvisor metrics kubelet's CRI stats provider asks for.
const METRICS: &[&str] = &[
    "container_blkio_device_usage_total",
    "container_cpu_cfs_periods_total",
    "container_cpu_cfs_throttled_periods_total",
    "container_cpu_cfs_throttled_seconds_total",
    "container_cpu_system_seconds_total",
    "container_cpu_usage_seconds_total",
    "container_cpu_user_seconds_total",
    "container_file_descriptors",
    "container_fs_inodes_free",
    "container_fs_inodes_total",
    "container_fs_limit_bytes",
    "container_fs_reads_bytes_total",
    "container_fs_reads_total",
    "container_fs_usage_bytes",
    "container_fs_writes_bytes_total",
    "container_fs_writes_total",
    "container_last_seen",
    "container_memory_cache",
    "container_memory_failcnt",
    "container_memory_failures_total",
    "container_memory_kernel_usage",
    "container_memory_mapped_file",
    "container_memory_max_usage_bytes",
    "container_memory_rss",
    "container_memory_swap",
    "container_memory_usage_bytes",
    "container_memory_working_set_bytes",
    "container_network_receive_bytes_total",
    "container_network_receive_errors_total",
    "container_network_receive_packets_dropped_total",
    "container_network_receive_packets_total",
    "container_network_transmit_bytes_total",
    "container_network_transmit_errors_total",
    "container_network_transmit_packets_dropped_total",
    "container_network_transmit_packets_total",
    "container_oom_events_total",
    "container_processes",
    "container_sockets",
    "container_spec_cpu_period",
    "container_spec_cpu_shares",
    "container_spec_memory_limit_bytes",
    "container_spec_memory_swap_limit_bytes",
    "container_start_time_seconds",
    "container_threads",
    "container_threads_max",
];

/// Where the kernel may give nothing (no block I/O on a tmpfs or page cache).
const MAYBE_EMPTY: &[&str] = &[
    "container_blkio_device_usage_total",
    "container_fs_reads_bytes_total",
    "container_fs_reads_total",
    "container_fs_writes_bytes_total",
    "container_fs_writes_total",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cadvisor_metrics_for_every_container() {
    use std::collections::HashMap;
    let mut f = Fixture::start().await;
    let cfg = f.pod("metrics");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let mut busy = f.container("busy", &["sh", "-c", "while :; do :; done"]);
    busy.linux.as_mut().unwrap().resources = Some(resources(|r| {
        r.cpu_quota = 20_000;
        r.cpu_period = 100_000;
        r.memory_limit_in_bytes = 64 << 20;
    }));
    let busy = f.cri.run(&pod, busy, &cfg).await;
    let server = f
        .cri
        .run(&pod, f.container("server", &["sh", "-c", "head -c 20000000 /dev/zero > /dev/shm/buf; exec nc -ll -p 8080 -e echo hi"]), &cfg)
        .await;
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let ip = f.cri.pod_ip(&pod).await;
    let mut talked = false;
    for _ in 0..100 {
        if let Ok(mut s) = std::net::TcpStream::connect_timeout(&format!("{ip}:8080").parse().unwrap(), Duration::from_secs(1)) {
            let mut out = String::new();
            let _ = std::io::Read::read_to_string(&mut s, &mut out);
            if !out.is_empty() {
                talked = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(talked, "the server never answered");
    // Long enough for the quota to throttle the busy loop.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let d = f.cri.runtime.list_metric_descriptors(cri::ListMetricDescriptorsRequest {}).await.unwrap().into_inner();
    let keys: HashMap<&str, &[String]> = d.descriptors.iter().map(|m| (m.name.as_str(), m.label_keys.as_slice())).collect();
    for name in METRICS {
        let k = keys.get(name).unwrap_or_else(|| panic!("{name} is not described"));
        assert_eq!(k[..5], ["pod", "namespace", "container", "id", "image"], "{name}");
    }

    let pm = f.cri.runtime.list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {}).await.unwrap().into_inner();
    assert_eq!(pm.pod_metrics.len(), 1);
    let p = &pm.pod_metrics[0];
    assert_eq!(p.pod_sandbox_id, pod);
    // Labels fit their descriptors, everywhere.
    let all = p.metrics.iter().chain(p.container_metrics.iter().flat_map(|c| &c.metrics));
    for m in all {
        assert_eq!(m.label_values.len(), keys[m.name.as_str()].len(), "{m:?}");
    }
    // The pod's network, on eth0.
    let rx = p.metrics.iter().find(|m| m.name == "container_network_receive_bytes_total" && m.label_values[5] == "eth0").expect("eth0 rx");
    assert!(rx.value.unwrap().value > 0, "{rx:?}");
    let net: Vec<&str> = p.metrics.iter().map(|m| m.name.as_str()).collect();

    assert_eq!(p.container_metrics.len(), 2);
    let of = |id: &str| -> HashMap<String, Vec<(Vec<String>, u64)>> {
        let c = p.container_metrics.iter().find(|c| c.container_id == id).expect("container metrics");
        let mut by: HashMap<String, Vec<(Vec<String>, u64)>> = HashMap::new();
        for m in &c.metrics {
            by.entry(m.name.clone()).or_default().push((m.label_values.clone(), m.value.unwrap().value));
        }
        by
    };
    for (id, name) in [(&busy, "busy"), (&server, "server")] {
        let by = of(id);
        for metric in METRICS.iter().filter(|m| !MAYBE_EMPTY.contains(m) && !m.starts_with("container_network_")) {
            let series = by.get(*metric).unwrap_or_else(|| panic!("{name}: no {metric}"));
            assert_eq!(series[0].0[2..4], [name.to_string(), id.to_string()], "{metric}");
        }
        let one = |m: &str| by[m][0].1;
        assert!(one("container_processes") >= 1 && one("container_threads") >= 1, "{name}");
        assert!(one("container_file_descriptors") >= 3, "{name}");
        assert!(one("container_fs_limit_bytes") > 0 && one("container_fs_inodes_total") > 0, "{name}");
        assert!(one("container_start_time_seconds").abs_diff(started) < 30, "{name}");
        assert!(one("container_last_seen") >= one("container_start_time_seconds"), "{name}");
        assert_eq!(by["container_memory_failures_total"].len(), 4, "pgfault and pgmajfault, container and hierarchy");
    }
    for m in net.iter().filter(|n| n.starts_with("container_network_")) {
        assert!(METRICS.contains(m), "{m}");
    }
    let busy_m = of(&busy);
    let server_m = of(&server);
    assert!(busy_m["container_cpu_cfs_periods_total"][0].1 > 0);
    assert!(busy_m["container_cpu_cfs_throttled_periods_total"][0].1 > 0, "a 20% quota throttles a busy loop");
    assert_eq!(busy_m["container_spec_cpu_period"][0].1, 100_000);
    assert_eq!(busy_m["container_spec_memory_limit_bytes"][0].1, 64 << 20);
    assert!(server_m["container_memory_usage_bytes"][0].1 >= 20_000_000);
    assert!(server_m["container_sockets"][0].1 >= 1, "nc listens");
    f.cri.remove_pod(&pod).await;
}

/// What a JVM, Go's GOMAXPROCS or a monitoring agent reads to size itself:
/// the container's own cgroup at /sys/fs/cgroup, its limits as set and as
/// later updated, read-only unless privileged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_container_sees_its_own_cgroup_and_limits() {
    let mut f = Fixture::start().await;
    let cfg = f.pod("cgview");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let mut c = f.container("limited", &["sleep", "1000"]);
    c.linux.as_mut().unwrap().resources = Some(resources(|r| {
        r.cpu_quota = 50_000;
        r.cpu_period = 100_000;
        r.memory_limit_in_bytes = 64 << 20;
    }));
    let id = f.cri.run(&pod, c, &cfg).await;
    let (memory, cpu, procs) = if v2() {
        ("/sys/fs/cgroup/memory.max", "cat /sys/fs/cgroup/cpu.max", "/sys/fs/cgroup/cgroup.procs")
    } else {
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "echo $(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)",
            "/sys/fs/cgroup/memory/cgroup.procs",
        )
    };
    assert_eq!(f.cri.sh(&id, &format!("cat {memory}")).await.trim(), (64u64 << 20).to_string());
    assert_eq!(f.cri.sh(&id, cpu).await.trim(), "50000 100000");
    // Its own cgroup, not a parent's: PID 1 (as the container sees it) is in it.
    assert!(f.cri.sh(&id, &format!("cat {procs}")).await.lines().any(|l| l == "1"));
    let mounts: Vec<String> = f.cri.sh(&id, "grep /sys/fs/cgroup /proc/self/mountinfo").await.lines().map(str::to_string).collect();
    assert!(!mounts.is_empty() && mounts.iter().all(|l| l.split(' ').nth(5).is_some_and(|o| o.starts_with("ro"))), "{mounts:#?}");
    let write = f.cri.sh(&id, &format!("(echo 1 > {memory}) 2>&1; echo rc=$?")).await;
    assert!(write.contains("Read-only file system") && !write.contains("rc=0"), "{write}");

    let update = cri::UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(resources(|r| {
            r.cpu_quota = 20_000;
            r.cpu_period = 100_000;
            r.memory_limit_in_bytes = 96 << 20;
        })),
        ..Default::default()
    };
    f.cri.runtime.update_container_resources(update).await.unwrap();
    assert_eq!(f.cri.sh(&id, &format!("cat {memory}")).await.trim(), (96u64 << 20).to_string());
    assert_eq!(f.cri.sh(&id, cpu).await.trim(), "20000 100000");

    // Privileged: the same view, writable.
    let mut c = f.container("privileged", &["sleep", "1000"]);
    c.linux = berth_e2e::security(|s| s.privileged = true);
    let p = f.cri.run(&pod, c, &cfg).await;
    let mounts: Vec<String> = f.cri.sh(&p, "grep /sys/fs/cgroup /proc/self/mountinfo").await.lines().map(str::to_string).collect();
    assert!(!mounts.is_empty() && mounts.iter().all(|l| l.split(' ').nth(5).is_some_and(|o| o.starts_with("rw"))), "{mounts:#?}");
    f.cri.remove_pod(&pod).await;
}

/// KEP-4205: on a cgroup v2 node a container's and a pod's stats carry their
/// cgroup's CPU, memory and IO pressure, and the CPU pressure grows while two
/// busy loops share one CPU. A v1 node has no per-cgroup pressure files, and
/// no pressure is reported there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_carry_the_cgroups_pressure_on_v2() {
    let mut f = Fixture::start().await;
    let cfg = f.pod("psi");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let mut c = f.container("two", &["sh", "-c", "while :; do :; done & while :; do :; done"]);
    c.linux.as_mut().unwrap().resources = Some(resources(|r| r.cpuset_cpus = "0".into()));
    let id = f.cri.run(&pod, c, &cfg).await;
    let stats = async |f: &mut Fixture| {
        let c = f
            .cri
            .runtime
            .container_stats(cri::ContainerStatsRequest { container_id: id.clone() })
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap();
        let p = f.cri.runtime.pod_sandbox_stats(cri::PodSandboxStatsRequest { pod_sandbox_id: pod.clone() }).await.unwrap().into_inner();
        (c, p.stats.unwrap().linux.unwrap())
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (c1, p1) = stats(&mut f).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (c2, p2) = stats(&mut f).await;
    let cpu_waited = |cpu: &Option<cri::CpuUsage>| cpu.as_ref().unwrap().psi.as_ref().map(|p| p.some.as_ref().expect("a some line").total);
    if v2() {
        let (before, after) = (cpu_waited(&c1.cpu).expect("cpu pressure"), cpu_waited(&c2.cpu).expect("cpu pressure"));
        // Two loops on one CPU: each waits about half the time, 0.5 s of the 1 s.
        assert!(after > before + 100_000_000, "the container's cpu pressure total went {before} -> {after} ns");
        assert!(cpu_waited(&p2.cpu).expect("the pod's cpu pressure") > cpu_waited(&p1.cpu).unwrap());
        assert!(c2.memory.as_ref().unwrap().psi.is_some() && p2.memory.as_ref().unwrap().psi.is_some(), "memory pressure");
        assert!(c2.io.as_ref().and_then(|io| io.psi.as_ref()).is_some(), "the container's io pressure");
        assert!(p2.io.as_ref().and_then(|io| io.psi.as_ref()).is_some(), "the pod's io pressure");
    } else {
        assert_eq!(cpu_waited(&c2.cpu), None);
        assert_eq!(cpu_waited(&p2.cpu), None);
        assert!(c2.memory.unwrap().psi.is_none() && c2.io.is_none() && p2.io.is_none());
    }
    f.cri.remove_pod(&pod).await;
}

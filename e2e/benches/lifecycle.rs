//! Pod and container lifecycle: medians of RunPodSandbox, CreateContainer,
//! StartContainer, StopContainer (timeout 0), RemovePodSandbox, and the
//! resident memory of the per-container monitor and of berthd.
//! `cargo bench -p berth-e2e --bench lifecycle`; `BENCH_PODS=200` runs
//! more pods (default 20) and shows whether the cost per pod stays flat;
//! `BENCH_PID=pod` gives each pod one PID namespace its container joins.

use std::time::{Duration, Instant};

use berth_e2e::{cri, Fixture};

/// How many pods, from `BENCH_PODS` (default 20).
fn pods() -> usize {
    std::env::var("BENCH_PODS").ok().and_then(|v| v.parse().ok()).filter(|n| *n >= 2).unwrap_or(20)
}

/// Whether the containers join their pod's PID namespace (`BENCH_PID=pod`).
fn shared_pid() -> bool {
    std::env::var("BENCH_PID").is_ok_and(|v| v == "pod")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn rss_kib(pid: i64) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// Proportional set size: shared pages (libc, the binary) split among the
/// processes mapping them — the per-container cost when many monitors run.
fn pss_kib(pid: i64) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    s.lines().find_map(|l| l.strip_prefix("Pss:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(f64::NAN)
}

/// The `name=µs` stages of berthd's log lines with `marker` ("container
/// created": its own `stages_us` and the monitor's and init's
/// `runtime_us`; "pod sandbox ready"), one map per line, in order.
fn stages_of(log: &str, marker: &str) -> Vec<Vec<(String, f64)>> {
    log.lines()
        .filter(|l| l.contains(marker))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|token| {
                    let parts: Vec<&str> = token.split('=').collect();
                    let value = parts.last()?.parse::<f64>().ok()?;
                    (parts.len() >= 2).then(|| (parts[parts.len() - 2].to_string(), value))
                })
                .collect()
        })
        .collect()
}

/// Median of each stage over `lines`, in the order of the first line's stages.
fn stage_medians(lines: &[Vec<(String, f64)>]) -> String {
    let Some(first) = lines.first() else { return String::new() };
    first
        .iter()
        .map(|(name, _)| {
            let v: Vec<f64> = lines.iter().filter_map(|l| l.iter().find(|(n, _)| n == name).map(|(_, us)| *us / 1e3)).collect();
            format!("{name} {:.2}", median(v))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    berth_e2e::bench::main(run())
}

async fn run() {
    let pod_count = pods();
    let mut f = Fixture::start().await;
    let berthd_idle = rss_kib(f.berthd.pid() as i64);
    let (mut runp, mut create, mut start, mut stop, mut rmp, mut monitor_rss, mut monitor_pss) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut pods = Vec::new();
    for i in 0..pod_count {
        let name = format!("bench{i}");
        let cfg = if shared_pid() { f.pod_with_pid(&name, cri::NamespaceMode::Pod) } else { f.pod(&name) };
        let t = Instant::now();
        let pod = f.cri.run_pod(cfg.clone()).await.expect("RunPodSandbox");
        runp.push(ms(t.elapsed()));
        let mut config = f.container("sleeper", &["sleep", "1000"]);
        if shared_pid() {
            config.linux = berth_e2e::security(|s| {
                s.namespace_options = Some(cri::NamespaceOption { pid: cri::NamespaceMode::Pod as i32, ..Default::default() })
            });
        }
        let t = Instant::now();
        let c = f.cri.create(&pod, config, &cfg).await.expect("CreateContainer");
        create.push(ms(t.elapsed()));
        let t = Instant::now();
        f.cri.start(&c).await.expect("StartContainer");
        start.push(ms(t.elapsed()));
        pods.push((pod, c));
    }
    // Let the monitors settle, then read their resident memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (_, c) in &pods {
        let r = f
            .cri
            .runtime
            .container_status(cri::ContainerStatusRequest { container_id: c.clone(), verbose: true })
            .await
            .unwrap()
            .into_inner();
        let info: serde_json::Value = serde_json::from_str(&r.info["info"]).unwrap();
        monitor_rss.push(rss_kib(info["monitorPid"].as_i64().unwrap()));
        monitor_pss.push(pss_kib(info["monitorPid"].as_i64().unwrap()));
    }
    let berthd_loaded = rss_kib(f.berthd.pid() as i64);
    let mut stats_ms = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let n = f.cri.runtime.list_container_stats(cri::ListContainerStatsRequest::default()).await.unwrap().into_inner().stats.len();
        assert_eq!(n, pod_count);
        stats_ms.push(ms(t.elapsed()));
    }
    for (pod, c) in &pods {
        let t = Instant::now();
        f.cri.stop(c, 0).await.expect("StopContainer");
        stop.push(ms(t.elapsed()));
        let t = Instant::now();
        f.cri.remove_pod(pod).await;
        rmp.push(ms(t.elapsed()));
    }
    let tenth = (pod_count / 10).max(1);
    let up: Vec<f64> = runp.iter().zip(&create).zip(&start).map(|((a, b), c)| a + b + c).collect();
    let pid = if shared_pid() { ", sharing its pod's PID namespace" } else { "" };
    println!("pod and container lifecycle, {pod_count} pods with one busybox `sleep` container each{pid} (medians)");
    println!("  RunPodSandbox       {:8.2} ms", median(runp.clone()));
    println!("  CreateContainer     {:8.2} ms", median(create.clone()));
    println!("  StartContainer      {:8.2} ms", median(start.clone()));
    println!("  pod ready + create + start {:8.2} ms", median(up.clone()));
    let first_last = |v: &[f64]| (median(v[..tenth].to_vec()), median(v[pod_count - tenth..].to_vec()));
    let (up_first, up_last) = first_last(&up);
    let (pod_first, pod_last) = first_last(&runp);
    let (create_first, create_last) = first_last(&create);
    println!(
        "  … of the first {tenth} pods {up_first:.2} ms, of the last {tenth} {up_last:.2} ms \
         (RunPodSandbox {pod_first:.2} / {pod_last:.2}, CreateContainer {create_first:.2} / {create_last:.2})"
    );
    let log = f.berthd.log();
    for (rpc, marker) in [("RunPodSandbox", "pod sandbox ready"), ("CreateContainer", "container created")] {
        let stages = stages_of(&log, marker);
        if stages.len() == pod_count {
            println!("  {rpc}'s stages in ms, first {tenth}: {}", stage_medians(&stages[..tenth]));
            println!("  {rpc}'s stages in ms, last {tenth}: {}", stage_medians(&stages[pod_count - tenth..]));
        }
    }
    println!("  StopContainer (0s)  {:8.2} ms", median(stop));
    println!("  Stop+RemovePodSandbox {:6.2} ms", median(rmp));
    let stages = stages_of(&f.berthd.log(), "pod sandbox stopped");
    if stages.len() == pod_count {
        println!("  StopPodSandbox's stages in ms: {}", stage_medians(&stages));
    }
    println!("  ListContainerStats ({pod_count} containers) {:6.2} ms", median(stats_ms));
    println!("  monitor RSS         {:8.0} KiB per container (target <= 1024 KiB)", median(monitor_rss));
    println!(
        "  monitor PSS         {:8.0} KiB per container (target <= 256 KiB; shared pages split among {pod_count} monitors)",
        median(monitor_pss)
    );
    println!("  berthd RSS          {:8.0} KiB idle, {:.0} KiB with {pod_count} pods", berthd_idle, berthd_loaded);
}

//! berth and containerd side by side, in one run, driven by the same CRI
//! client code with the same registry, images and pod specs, alternating
//! A B A B: the lifecycle step by step, exec, parallel and loaded pod
//! starts, cost per pod as pods accumulate, stats at 200 containers, memory
//! of the daemons and of every monitor/shim/pause; the kernel's own floor;
//! CPU and memory work in a container against the host; a noisy neighbour.
//! Prints a Markdown table and writes JSON (target/bench-compare.json).
//!
//! `bash deploy/deps.sh --bench && cargo bench -p berth-e2e --bench compare`
//! (`COMPARE_RUNS=30` iterations per step after warm-up; `COMPARE_QUICK=1`
//! skips the 200-pod and noisy-neighbour parts; `COMPARE_ONLY=noisy,floor`
//! runs only the parts named: lifecycle, pull, parallel, loaded, scale,
//! init, floor, host, noisy; `NOISY_ONLY=cpu,mem,fork` keeps only the
//! noisy neighbours named busy, the others sleep; `NOISY_SERVER=forking` or
//! `one-process` keeps one quiet server; `NOISY_FIRST=containerd` runs
//! containerd before berth in each noisy pair, to tell an order effect from
//! a runtime's.)

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_e2e::containerd::{push_pause, Containerd};
use berth_e2e::{cri, Cri, Fixture};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[((s.len() - 1) as f64 * p).round() as usize]
}

fn status_kib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix(field)).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(f64::NAN)
}

fn pss_kib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    s.lines().find_map(|l| l.strip_prefix("Pss:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(f64::NAN)
}

/// Processes whose command line contains all of `needles`.
fn pids_with(needles: &[&str]) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let cmd = berth_e2e::cmdline(pid).join(" ");
        if needles.iter().all(|n| cmd.contains(n)) {
            out.push(pid);
        }
    }
    out
}

/// One runtime under test.
struct Rt {
    name: &'static str,
    cri: Cri,
    pid: u32,
    /// Its pods' cgroup parent (kubelet's role).
    cgroup: String,
    image: String,
    logs: std::path::PathBuf,
    /// Command-line markers of its per-container processes.
    monitor: Vec<String>,
    seq: usize,
}

impl Rt {
    fn pod(&mut self, tag: &str) -> cri::PodSandboxConfig {
        self.seq += 1;
        let name = format!("{tag}-{}", self.seq);
        let mut cfg = berth_e2e::pod_config(&name, &self.logs);
        cfg.metadata.as_mut().unwrap().uid = format!("{}-{name}", self.name);
        cfg.linux.as_mut().unwrap().cgroup_parent = format!("/{}/{}-{name}", self.cgroup, self.name);
        cfg
    }

    fn container(&self, name: &str, cmd: &[&str]) -> cri::ContainerConfig {
        berth_e2e::container_config(name, &self.image, cmd)
    }

    /// RunPodSandbox + one sleeping container, started.
    async fn pod_up(&mut self, tag: &str) -> (String, String) {
        let cfg = self.pod(tag);
        let pod = self.cri.run_pod(cfg.clone()).await.expect("RunPodSandbox");
        let c = self.cri.run(&pod, self.container("c", &["sleep", "100000"]), &cfg).await;
        (pod, c)
    }

    async fn pod_down(&mut self, pod: &str) {
        self.cri.runtime.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.into() }).await.expect("StopPodSandbox");
        self.cri.runtime.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.into() }).await.expect("RemovePodSandbox");
    }
}

/// Samples per row, per runtime.
#[derive(Default)]
struct Table {
    rows: Vec<String>,
    values: BTreeMap<(String, &'static str), Vec<f64>>,
    units: BTreeMap<String, &'static str>,
}

impl Table {
    fn add(&mut self, row: &str, rt: &'static str, unit: &'static str, v: f64) {
        if !self.rows.iter().any(|r| r == row) {
            self.rows.push(row.to_string());
        }
        self.units.insert(row.to_string(), unit);
        self.values.entry((row.to_string(), rt)).or_default().push(v);
    }

    fn print(&self) -> serde_json::Value {
        println!("\n| step | unit | berth p50 | berth p90 | containerd p50 | containerd p90 | berth/containerd |");
        println!("|---|---|---|---|---|---|---|");
        let mut json = Vec::new();
        for row in &self.rows {
            let get = |rt: &'static str| self.values.get(&(row.clone(), rt)).cloned().unwrap_or_default();
            let (b, c) = (get("berth"), get("containerd"));
            let (b50, c50) = (pct(&b, 0.5), pct(&c, 0.5));
            let ratio = if c.is_empty() || c50 == 0.0 { String::from("–") } else { format!("{:.2}", b50 / c50) };
            let f = |v: f64| if v.is_nan() { "–".to_string() } else { format!("{v:.2}") };
            println!("| {row} | {} | {} | {} | {} | {} | {ratio} |", self.units[row], f(b50), f(pct(&b, 0.9)), f(c50), f(pct(&c, 0.9)));
            json.push(serde_json::json!({"step": row, "unit": self.units[row], "berth": b, "containerd": c,
                "berth_p50": b50, "containerd_p50": c50}));
        }
        serde_json::Value::Array(json)
    }
}

/// The single-pod lifecycle, step by step, plus ExecSync `true`.
async fn lifecycle(rt: &mut Rt, t: &mut Table, record: bool) {
    let cfg = rt.pod("life");
    let s = Instant::now();
    let pod = rt.cri.run_pod(cfg.clone()).await.expect("RunPodSandbox");
    let runp = ms(s.elapsed());
    let s = Instant::now();
    let c = rt.cri.create(&pod, rt.container("c", &["sleep", "100000"]), &cfg).await.expect("CreateContainer");
    let create = ms(s.elapsed());
    let s = Instant::now();
    rt.cri.start(&c).await.expect("StartContainer");
    let start = ms(s.elapsed());
    let s = Instant::now();
    let r = rt.cri.exec(&c, &["true"], 10).await.expect("ExecSync");
    assert_eq!(r.exit_code, 0);
    let exec = ms(s.elapsed());
    let s = Instant::now();
    rt.cri.stop(&c, 0).await.expect("StopContainer");
    let stop = ms(s.elapsed());
    let s = Instant::now();
    rt.cri.runtime.remove_container(cri::RemoveContainerRequest { container_id: c.clone() }).await.expect("RemoveContainer");
    let rm = ms(s.elapsed());
    let s = Instant::now();
    rt.cri.runtime.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.expect("StopPodSandbox");
    let stopp = ms(s.elapsed());
    let s = Instant::now();
    rt.cri.runtime.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await.expect("RemovePodSandbox");
    let rmp = ms(s.elapsed());
    if record {
        let n = rt.name;
        for (row, v) in [
            ("RunPodSandbox (with network)", runp),
            ("CreateContainer", create),
            ("StartContainer", start),
            ("ExecSync `true`", exec),
            ("StopContainer (timeout 0)", stop),
            ("RemoveContainer", rm),
            ("StopPodSandbox", stopp),
            ("RemovePodSandbox", rmp),
            ("whole lifecycle", runp + create + start + stop + rm + stopp + rmp),
            ("create + start", create + start),
        ] {
            t.add(row, n, "ms", v);
        }
    }
}

/// `n` pods (pod + one container) started at once; wall time to all up.
async fn parallel(rt: &mut Rt, n: usize) -> (f64, Vec<String>) {
    let mut cfgs = Vec::new();
    for _ in 0..n {
        cfgs.push(rt.pod("par"));
    }
    let s = Instant::now();
    let tasks: Vec<_> = cfgs
        .into_iter()
        .map(|cfg| {
            let mut cri = rt.cri.clone();
            let c = rt.container("c", &["sleep", "100000"]);
            tokio::spawn(async move {
                let pod = cri.run_pod(cfg.clone()).await.expect("RunPodSandbox");
                cri.run(&pod, c, &cfg).await;
                pod
            })
        })
        .collect();
    let mut pods = Vec::new();
    for t in tasks {
        pods.push(t.await.expect("task"));
    }
    (ms(s.elapsed()), pods)
}

/// 100 pods × 2 containers from 8 clients: up, an exec in each, down.
async fn loaded(rt: &mut Rt, t: &mut Table) {
    let (pods, clients) = (100, 8);
    let mut cfgs: Vec<cri::PodSandboxConfig> = (0..pods).map(|_| rt.pod("load")).collect();
    let per = pods / clients;
    let phase = |rt: &Rt, work: Vec<Vec<cri::PodSandboxConfig>>| {
        work.into_iter()
            .map(|chunk| {
                let mut cri = rt.cri.clone();
                let (a, b) = (rt.container("a", &["sleep", "100000"]), rt.container("b", &["sleep", "100000"]));
                tokio::spawn(async move {
                    let mut lat: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
                    let mut made = Vec::new();
                    for cfg in chunk {
                        let s = Instant::now();
                        let pod = cri.run_pod(cfg.clone()).await.expect("RunPodSandbox");
                        lat.entry("RunPodSandbox").or_default().push(ms(s.elapsed()));
                        let mut ids = Vec::new();
                        for c in [a.clone(), b.clone()] {
                            let s = Instant::now();
                            let id = cri.create(&pod, c, &cfg).await.expect("CreateContainer");
                            lat.entry("CreateContainer").or_default().push(ms(s.elapsed()));
                            let s = Instant::now();
                            cri.start(&id).await.expect("StartContainer");
                            lat.entry("StartContainer").or_default().push(ms(s.elapsed()));
                            ids.push(id);
                        }
                        made.push((pod, ids));
                    }
                    (made, lat)
                })
            })
            .collect::<Vec<_>>()
    };
    let chunks: Vec<Vec<cri::PodSandboxConfig>> = (0..clients).map(|_| cfgs.drain(..per.min(cfgs.len())).collect()).collect();
    let s = Instant::now();
    let tasks = phase(rt, chunks);
    let mut all = Vec::new();
    let mut lat: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for task in tasks {
        let (made, l) = task.await.expect("client");
        all.push(made);
        for (k, v) in l {
            lat.entry(k).or_default().extend(v);
        }
    }
    t.add("100 pods × 2 containers up, 8 clients", rt.name, "s", s.elapsed().as_secs_f64());
    for (k, v) in lat {
        t.add(&format!("… {k} p50 under that load"), rt.name, "ms", pct(&v, 0.5));
    }
    // An exec in every container, 8 clients.
    let s = Instant::now();
    let execs: Vec<_> = all
        .iter()
        .map(|made| {
            let mut cri = rt.cri.clone();
            let ids: Vec<String> = made.iter().flat_map(|(_, ids)| ids.clone()).collect();
            tokio::spawn(async move {
                for id in ids {
                    assert_eq!(cri.exec(&id, &["true"], 30).await.expect("ExecSync").exit_code, 0);
                }
            })
        })
        .collect();
    for e in execs {
        e.await.expect("exec client");
    }
    t.add("… an ExecSync in each of the 200, 8 clients", rt.name, "s", s.elapsed().as_secs_f64());
    let s = Instant::now();
    let downs: Vec<_> = all
        .into_iter()
        .map(|made| {
            let mut cri = rt.cri.clone();
            tokio::spawn(async move {
                for (pod, _) in made {
                    cri.runtime.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.expect("StopPodSandbox");
                    cri.runtime.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod }).await.expect("RemovePodSandbox");
                }
            })
        })
        .collect();
    for d in downs {
        d.await.expect("down client");
    }
    t.add("… and down (stop + remove), 8 clients", rt.name, "s", s.elapsed().as_secs_f64());
}

/// Pods accumulate to 10, 50, 200: the cost of 5 more at each level; at
/// 200, stats calls and memory; then all down and memory once idle.
async fn scale(rt: &mut Rt, t: &mut Table, levels: &[usize], monitors: &dyn Fn() -> Vec<u32>) {
    let mut pods = Vec::new();
    let idle = status_kib(rt.pid, "VmRSS:") / 1024.0;
    t.add("daemon RSS idle, before", rt.name, "MiB", idle);
    // Eleven pods timed at each level, after a pause for what filling up
    // left in flight (write-back, deferred deletes): five made it swing
    // 22-41 ms at 50 pods between runs.
    const TIMED: usize = 11;
    for &level in levels {
        while pods.len() + TIMED < level {
            pods.push(rt.pod_up("scale").await.0);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut cost = Vec::new();
        for _ in 0..TIMED {
            let s = Instant::now();
            pods.push(rt.pod_up("scale").await.0);
            cost.push(ms(s.elapsed()));
        }
        t.add(&format!("pod + container start with {level} pods"), rt.name, "ms", pct(&cost, 0.5));
    }
    let n = pods.len();
    for _ in 0..5 {
        // kubelet's relist, every second: every pod and every container.
        let s = Instant::now();
        rt.cri.runtime.list_pod_sandbox(cri::ListPodSandboxRequest::default()).await.expect("ListPodSandbox");
        rt.cri.runtime.list_containers(cri::ListContainersRequest::default()).await.expect("ListContainers");
        t.add(&format!("kubelet's relist (ListPodSandbox + ListContainers) at {n} containers"), rt.name, "ms", ms(s.elapsed()));
        let s = Instant::now();
        rt.cri.runtime.list_container_stats(cri::ListContainerStatsRequest::default()).await.expect("ListContainerStats");
        t.add(&format!("ListContainerStats at {n} containers"), rt.name, "ms", ms(s.elapsed()));
        let s = Instant::now();
        rt.cri.runtime.list_pod_sandbox_stats(cri::ListPodSandboxStatsRequest::default()).await.expect("ListPodSandboxStats");
        t.add(&format!("ListPodSandboxStats at {n} pods"), rt.name, "ms", ms(s.elapsed()));
    }
    t.add(&format!("daemon RSS at {n} containers"), rt.name, "MiB", status_kib(rt.pid, "VmRSS:") / 1024.0);
    let procs = monitors();
    let rss: f64 = procs.iter().map(|p| status_kib(*p, "VmRSS:")).sum::<f64>() / 1024.0;
    let pss: f64 = procs.iter().map(|p| pss_kib(*p)).sum::<f64>() / 1024.0;
    t.add(&format!("per-container processes at {n} (RSS), per container"), rt.name, "MiB", rss / n as f64);
    t.add(&format!("per-container processes at {n} (PSS), per container"), rt.name, "MiB", pss / n as f64);
    // berth's monitor zygote: one per node (per monitor binary), berthd's child.
    let helpers = berth_e2e::zygotes(rt.pid);
    if !helpers.is_empty() {
        let rss: f64 = helpers.iter().map(|p| status_kib(*p, "VmRSS:")).sum::<f64>() / 1024.0;
        let pss: f64 = helpers.iter().map(|p| pss_kib(*p)).sum::<f64>() / 1024.0;
        t.add("the node's monitor zygote (RSS)", rt.name, "MiB", rss);
        t.add("the node's monitor zygote (PSS)", rt.name, "MiB", pss);
    }
    for p in pods {
        rt.pod_down(&p).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    t.add("daemon RSS idle, after", rt.name, "MiB", status_kib(rt.pid, "VmRSS:") / 1024.0);
    // What the RSS is: file pages (the binary's code as it got touched,
    // reclaimable) or anonymous memory (heap, stacks) — different remedies.
    t.add("… of which file-backed (code)", rt.name, "MiB", status_kib(rt.pid, "RssFile:") / 1024.0);
    t.add("… of which anonymous (heap, stacks)", rt.name, "MiB", status_kib(rt.pid, "RssAnon:") / 1024.0);
}

/// The kernel's own cost: unshare of a pod's namespaces + `true`; a netns
/// with a veth pair into it.
fn floor(t: &mut Table, runs: usize) {
    for _ in 0..runs {
        let s = Instant::now();
        let st = Command::new("unshare").args(["--mount", "--uts", "--ipc", "--net", "--pid", "--fork", "true"]).status().expect("unshare");
        assert!(st.success());
        t.add("floor: unshare mnt,uts,ipc,net,pid + true", "berth", "ms", ms(s.elapsed()));
        let ns = format!("bf{}", std::process::id());
        let s = Instant::now();
        let ok = Command::new("ip").args(["netns", "add", &ns]).status().expect("ip").success()
            && Command::new("ip")
                .args(["link", "add", &format!("{ns}a"), "type", "veth", "peer", "name", "eth0", "netns", &ns])
                .status()
                .expect("ip")
                .success();
        let elapsed = ms(s.elapsed());
        let _ = Command::new("ip").args(["link", "del", &format!("{ns}a")]).status();
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        assert!(ok, "netns + veth");
        t.add("floor: netns + veth pair into it", "berth", "ms", elapsed);
    }
}

/// CPU and memory work on the host and in a berth container, with and
/// without a CPU limit above the need.
async fn host_vs_container(rt: &mut Rt, t: &mut Table, runs: usize) {
    // User space only: a loop in busybox awk. The sha256 pipeline adds
    // the kernel's pipe copies, which a container's memory cgroup charges.
    let user = "busybox awk 'BEGIN { for (i = 0; i < 5000000; i++) s += i * i % 7 }'";
    let cpu = "head -c 400000000 /dev/zero | sha256sum >/dev/null";
    let mem = "dd if=/dev/zero of=/dev/null bs=4M count=12000 2>/dev/null";
    let cfg = rt.pod("work");
    let pod = rt.cri.run_pod(cfg.clone()).await.expect("RunPodSandbox");
    let free = rt.cri.run(&pod, rt.container("free", &["sleep", "100000"]), &cfg).await;
    let mut limited = rt.container("limited", &["sleep", "100000"]);
    limited.linux.as_mut().unwrap().resources =
        Some(cri::LinuxContainerResources { cpu_quota: 300_000, cpu_period: 100_000, ..Default::default() });
    let limited = rt.cri.run(&pod, limited, &cfg).await;
    for round in 0..runs {
        for (what, script) in [
            ("CPU, user space (an awk loop)", user),
            ("CPU (sha256 of 400 MB from a pipe)", cpu),
            ("memory (dd 48 GB through /dev/zero)", mem),
        ] {
            // The host twice, around the containers: how far apart two runs
            // of the same thing are here is as close as the others can be
            // told apart.
            let on_host = |label: &str, t: &mut Table| {
                let s = Instant::now();
                assert!(Command::new("/bin/busybox").args(["sh", "-c", script]).status().expect("busybox").success());
                let took = s.elapsed().as_secs_f64();
                t.add(&format!("{what}: {label}"), "berth", "s", took);
                took
            };
            let before = on_host("host", t);
            let mut inside = Vec::new();
            // Each container first in every other round: the run right
            // after the host's measured up to 3 % slower, whichever it was.
            let mut order = [(&free, "in a container"), (&limited, "in a container, limit 3 CPUs")];
            if round % 2 == 1 {
                order.reverse();
            }
            for (id, label) in order {
                let s = Instant::now();
                assert_eq!(rt.cri.exec(id, &["sh", "-c", script], 600).await.expect("ExecSync").exit_code, 0);
                let took = s.elapsed().as_secs_f64();
                t.add(&format!("{what}: {label}"), "berth", "s", took);
                inside.push((label, took));
            }
            let host = (before + on_host("host, again", t)) / 2.0;
            // Paired, round by round: the machine's speed drifts between
            // rounds more than 1 %, the target, and a ratio of medians
            // would carry that drift.
            for (label, took) in inside {
                t.add(&format!("{what}: {label}, against the host runs around it"), "berth", "%", (took / host - 1.0) * 100.0);
            }
        }
    }
    rt.pod_down(&pod).await;
}

/// What kubelet writes into a pod's own cgroup (berth and containerd leave
/// the pod level to it): cpu.shares from the pod's CPU requests — 2 for a pod
/// with none, as kubelet's BestEffort and request-less Burstable pods get —
/// and, if given, podPidsLimit's pids.max.
fn kubelet_pod_cgroup(parent: &str, shares: u64, pids: Option<u64>) {
    // cgroup v2's weight from shares, as kubelet and runc convert it.
    let weight = 1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142;
    let mut cpu = false;
    for m in berth_e2e::cgroup_mounts() {
        let dir = m.join(parent.trim_start_matches('/'));
        for (file, value) in [("cpu.shares", shares.to_string()), ("cpu.weight", weight.to_string())] {
            if dir.join(file).exists() {
                std::fs::write(dir.join(file), value).unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()));
                cpu = true;
            }
        }
        if let (Some(n), true) = (pids, dir.join("pids.max").exists()) {
            std::fs::write(dir.join("pids.max"), n.to_string()).unwrap_or_else(|e| panic!("pids.max: {e}"));
        }
    }
    assert!(cpu, "no cpu controller for the pod cgroup {parent}");
}

/// A number from `file` of the cgroup `dir` (in whichever hierarchy has
/// the file), and of its child cgroups too when `children`: the whole file,
/// or the value after `key` in a flat-keyed one.
fn cgroup_number(dir: &str, file: &str, key: Option<&str>, children: bool) -> Option<f64> {
    let read = |dir: &Path| -> Option<f64> {
        let text = std::fs::read_to_string(dir.join(file)).ok()?;
        match key {
            None => text.trim().parse().ok(),
            Some(k) => text.lines().find_map(|l| l.strip_prefix(k)?.trim().parse().ok()),
        }
    };
    berth_e2e::cgroup_mounts().iter().find_map(|m| {
        let dir = m.join(dir.trim_start_matches('/'));
        let own = read(&dir)?;
        let subs = std::fs::read_dir(&dir).into_iter().flatten().flatten().filter(|e| children && e.path().is_dir());
        Some(own + subs.filter_map(|e| read(&e.path())).sum::<f64>())
    })
}

/// The CPU seconds used in cgroup `dir` and below (counted up the tree
/// already, in v1 and v2).
fn cgroup_cpu_seconds(dir: &str) -> Option<f64> {
    cgroup_number(dir, "cpuacct.usage", None, false)
        .map(|ns| ns / 1e9)
        .or_else(|| cgroup_number(dir, "cpu.stat", Some("usage_usec "), false).map(|us| us / 1e6))
}

/// What the three neighbours have done so far, so the report shows they
/// were at their limits: CPU seconds of the CPU hog (counted up the tree
/// already), OOM kills in the memory hog's pod and forks the fork bomb was
/// refused (limits are on the pod's cgroup or its container's). OOM kills,
/// not `memory.failcnt`: with runc's swap limit beside the memory limit,
/// failcnt stays 0 through every kill. Both files count each cgroup's own
/// kills only (`.local` in v2), so the pod's and its containers' add up.
fn neighbour_counters(pods: &[String]) -> [f64; 3] {
    let cpu = cgroup_cpu_seconds(&pods[0]);
    let mem = cgroup_number(&pods[1], "memory.oom_control", Some("oom_kill "), true)
        .or_else(|| cgroup_number(&pods[1], "memory.events.local", Some("oom_kill "), true));
    let forks = cgroup_number(&pods[2], "pids.events", Some("max "), true);
    [cpu, mem, forks].map(|v| v.unwrap_or(f64::NAN))
}

/// The quiet pod's server in the noisy-neighbour part.
#[derive(Clone, Copy)]
enum Server {
    /// A fork and an exec per request.
    Forking,
    /// One process for every request.
    OneProcess,
}

/// Requests timed per noisy-neighbour sample: a p99 of 1,000 was the
/// tenth-worst and moved by a tenth between runs.
const SAMPLES: usize = 3000;

/// p99 of a small request loop (TCP to a pod) idle, then with neighbours at
/// their CPU limit, their memory limit and their pids limit. The pods are
/// set up as kubelet would for their QoS classes: the quiet pod Guaranteed
/// with 1 CPU (cpu.shares 1024, a quota of 1 CPU), the CPU hog with half a
/// CPU (512, a quota of half a CPU, so that on a 2-CPU node the others
/// still get to run when the quiet pod has a CPU of its own), the memory
/// hog Burstable with a memory limit and no CPU request, the fork bomb
/// BestEffort under a pids limit (both cpu.shares 2). With `own_cpu`, the
/// quiet pod gets the last CPU to itself and the neighbours the others, as
/// kubelet's static CPU manager places a Guaranteed pod of whole CPUs;
/// without, all share every CPU (kubelet's default policy).
///
/// The quiet pod's server is `server`: either busybox `nc -ll -e`, which
/// forks and execs `echo` for every request, or the probe's `serve`, one
/// process answering every request (the image `probe_image`).
async fn noisy_neighbour(rt: &mut Rt, t: &mut Table, own_cpu: bool, server: Server, probe_image: &str) {
    let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let (quiet_cpus, shared_cpus) = if own_cpu { (format!("{}", n - 1), format!("0-{}", n.saturating_sub(2))) } else { Default::default() };
    let label = match (own_cpu, server) {
        (false, Server::Forking) => "noisy neighbour, CPUs shared",
        (true, Server::Forking) => "noisy neighbour, the quiet pod on a CPU of its own",
        (false, Server::OneProcess) => "noisy neighbour, one-process server, CPUs shared",
        (true, Server::OneProcess) => "noisy neighbour, one-process server, the quiet pod on a CPU of its own",
    };
    let one_cpu = || cri::LinuxContainerResources { cpu_shares: 1024, cpu_quota: 100_000, cpu_period: 100_000, ..Default::default() };
    let cfg = rt.pod("quiet");
    let pod = rt.cri.run_pod(cfg.clone()).await.expect("RunPodSandbox");
    kubelet_pod_cgroup(&cfg.linux.as_ref().unwrap().cgroup_parent, 1024, None);
    let mut server = match server {
        Server::Forking => rt.container("server", &["nc", "-ll", "-p", "8080", "-e", "echo", "ok"]),
        Server::OneProcess => berth_e2e::container_config("server", probe_image, &["/bin/probe", "serve", "8080"]),
    };
    server.linux.as_mut().unwrap().resources = Some(cri::LinuxContainerResources { cpuset_cpus: quiet_cpus, ..one_cpu() });
    rt.cri.run(&pod, server, &cfg).await;
    let ip = rt.cri.pod_ip(&pod).await;
    // The request loop plays the quiet pod's own client: with a CPU of its
    // own, it runs there too (unpinned, it could land on the neighbours' CPUs
    // and measure them instead). A thread of its own, so no pool thread
    // stays pinned.
    let quiet_cpu = own_cpu.then_some(n - 1);
    let sample = move |ip: String| {
        std::thread::spawn(move || {
            if let Some(cpu) = quiet_cpu {
                let mut set = nix::sched::CpuSet::new();
                set.set(cpu).expect("a CPU number below the count");
                nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("sched_setaffinity");
            }
            let addr: std::net::SocketAddr = format!("{ip}:8080").parse().unwrap();
            let mut lat = Vec::new();
            for _ in 0..SAMPLES {
                let s = Instant::now();
                if let Ok(mut c) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                    let mut out = String::new();
                    let _ = std::io::Read::read_to_string(&mut c, &mut out);
                }
                lat.push(ms(s.elapsed()));
            }
            lat
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = {
        let ip = ip.clone();
        tokio::task::spawn_blocking(move || sample(ip).join().unwrap()).await.unwrap()
    };
    let mut noisy = Vec::new();
    let mut parents = Vec::new();
    for (name, cmd, res, pod_shares, pids) in [
        (
            "cpu",
            vec!["sh", "-c", "while :; do :; done"],
            cri::LinuxContainerResources { cpu_shares: 512, cpu_quota: 50_000, cpu_period: 100_000, ..Default::default() },
            512,
            None,
        ),
        (
            "mem",
            // tail holds 60 MB and is OOM-killed at the 48 MiB limit, again and again.
            vec!["sh", "-c", "while :; do head -c 60000000 /dev/zero | tail -c 60000000 >/dev/null; done"],
            cri::LinuxContainerResources { cpu_shares: 2, memory_limit_in_bytes: 48 << 20, ..Default::default() },
            2,
            None,
        ),
        (
            "fork",
            // The inner shell forks until refused, which ends it (ash gives up
            // on a failed fork); the outer one, which waited for it, gets its
            // pid back and starts another.
            vec!["sh", "-c", "while :; do sh -c 'while :; do sleep 5 & done' 2>/dev/null; done"],
            cri::LinuxContainerResources { cpu_shares: 2, ..Default::default() },
            2,
            Some(64),
        ),
    ] {
        let cfg = rt.pod(&format!("noisy-{name}"));
        let p = rt.cri.run_pod(cfg.clone()).await.expect("RunPodSandbox");
        kubelet_pod_cgroup(&cfg.linux.as_ref().unwrap().cgroup_parent, pod_shares, pids);
        parents.push(cfg.linux.as_ref().unwrap().cgroup_parent.clone());
        let mut c = rt.container(name, &cmd.iter().map(|s| &**s).collect::<Vec<_>>());
        c.linux.as_mut().unwrap().resources = Some(cri::LinuxContainerResources { cpuset_cpus: shared_cpus.clone(), ..res });
        if std::env::var("NOISY_ONLY").is_ok_and(|o| !o.contains(name)) {
            c.command = vec!["sleep".into(), "100000".into()];
        }
        rt.cri.run(&p, c, &cfg).await;
        noisy.push(p);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ip = rt.cri.pod_ip(&pod).await;
    let (before, t0) = (neighbour_counters(&parents), Instant::now());
    let loaded = tokio::task::spawn_blocking(move || sample(ip).join().unwrap()).await.unwrap();
    let (after, secs) = (neighbour_counters(&parents), t0.elapsed().as_secs_f64());
    let rows: [(&str, &str, f64); 7] = [
        ("the CPU hog's use meanwhile (limit 0.5)", "CPUs", (after[0] - before[0]) / secs),
        ("OOM kills in the memory hog's pod meanwhile", "kills", after[1] - before[1]),
        ("forks refused to the fork bomb meanwhile", "forks", after[2] - before[2]),
        ("request p50, idle", "ms", pct(&idle, 0.5)),
        ("request p50, neighbours busy", "ms", pct(&loaded, 0.5)),
        ("request p99, idle", "ms", pct(&idle, 0.99)),
        ("request p99, neighbours at CPU/memory/pids limits", "ms", pct(&loaded, 0.99)),
    ];
    for (row, unit, v) in rows {
        t.add(&format!("{label}: {row}"), rt.name, unit, v);
    }
    for p in noisy {
        rt.pod_down(&p).await;
    }
    rt.pod_down(&pod).await;
}

fn main() {
    berth_e2e::bench::main(run())
}

async fn run() {
    let runs = env("COMPARE_RUNS", 30);
    let quick = std::env::var("COMPARE_QUICK").is_ok();
    let only = std::env::var("COMPARE_ONLY").ok();
    let part = |name: &str| only.as_deref().is_none_or(|o| o.split(',').any(|p| p.trim() == name));
    // At its default log level, as containerd runs here.
    berth_e2e::set_log_level("info");
    let f = Fixture::start().await;
    let pause = push_pause(&f.registry).await;
    let subnet = format!("10.201.{}.0/24", std::process::id() % 250);
    let ctrd = Containerd::start(&f.registry, &pause, &subnet).await;
    let mut ccri = ctrd.cri().await;
    ccri.pull(&f.busybox).await.expect("containerd pulls busybox");
    ccri.pull(&pause).await.expect("containerd pulls pause");
    let cgroup = format!("berthbench-{}", std::process::id());
    let logs = f.logs.clone();
    let mut berth = Rt {
        name: "berth",
        cri: f.cri.clone(),
        pid: f.berthd.pid(),
        cgroup: cgroup.clone(),
        image: f.busybox.clone(),
        logs: logs.clone(),
        monitor: vec!["berth-monitor".into(), " monitor --id ".into(), f.berthd.paths.state.display().to_string()],
        seq: 0,
    };
    let mut containerd = Rt {
        name: "containerd",
        cri: ccri,
        pid: ctrd.pid(),
        cgroup: cgroup.clone(),
        image: f.busybox.clone(),
        logs,
        monitor: vec!["containerd-shim-runc-v2".into(), ctrd.dir().display().to_string()],
        seq: 0,
    };
    let mut t = Table::default();
    // One pod first, to fail with containerd's own words if it cannot.
    {
        let cfg = containerd.pod("probe");
        match containerd.cri.run_pod(cfg).await {
            Ok(pod) => containerd.pod_down(&pod).await,
            Err(e) => panic!("containerd cannot run a pod: {e}\n{}", ctrd.log()),
        }
    }

    if part("lifecycle") {
        println!("lifecycle, {runs} runs each, alternating");
        for i in 0..runs + 3 {
            lifecycle(&mut berth, &mut t, i >= 3).await;
            lifecycle(&mut containerd, &mut t, i >= 3).await;
        }
    }
    if !quick && part("pull") {
        println!("pull + unpack, {} runs, a fresh daemon each", runs.min(5));
        let big = berth_e2e::oci::big_image();
        f.registry.push("bench/big", "1", &big).await;
        let reference = f.registry.reference("bench/big", "1");
        let mb: usize = big.layers.iter().map(|l| l.blob.bytes.len()).sum();
        let row = format!("pull + unpack, {:.0} MB in {} layers", mb as f64 / 1e6, big.layers.len());
        let synced = format!("{row}, then sync(2)");
        // Each pull starts with the disk clean: otherwise the write-back of
        // the run before (the other runtime's) is charged to this one. The
        // second row adds the wait until what the pull wrote is on disk.
        let clean = || nix::unistd::sync();
        // Every daemon and its files stay until all runs are done: where
        // the bench disk could not be made and the temp dir is an ext4
        // without a journal (this VM's root), a new inode skips over each
        // one deleted in the last seconds (see `berth_e2e::bench`), and the
        // 4,000 files the run before left would be what is measured.
        let mut done = Vec::new();
        for _ in 0..runs.min(5) {
            let b = berth_e2e::Berthd::start().await;
            let mut c = b.cri().await;
            clean();
            let t0 = Instant::now();
            c.pull(&reference).await.expect("berth pull");
            t.add(&row, "berth", "ms", ms(t0.elapsed()));
            clean();
            t.add(&synced, "berth", "ms", ms(t0.elapsed()));
            drop(c);
            let other = Containerd::start(&f.registry, &pause, &format!("10.202.{}.0/24", std::process::id() % 250)).await;
            let mut c = other.cri().await;
            clean();
            let t0 = Instant::now();
            c.pull(&reference).await.expect("containerd pull");
            t.add(&row, "containerd", "ms", ms(t0.elapsed()));
            clean();
            t.add(&synced, "containerd", "ms", ms(t0.elapsed()));
            drop(c);
            done.push((b, other));
        }
        drop(done);
    }
    if part("parallel") {
        println!("20 pods in parallel");
        for _ in 0..5 {
            for rt in [&mut berth, &mut containerd] {
                let (wall, pods) = parallel(rt, 20).await;
                t.add("20 pods (+ container) started in parallel", rt.name, "ms", wall);
                for p in pods {
                    rt.pod_down(&p).await;
                }
            }
        }
    }
    if part("loaded") {
        println!("100 pods × 2 containers, 8 clients");
        loaded(&mut berth, &mut t).await;
        loaded(&mut containerd, &mut t).await;
    }
    let levels: &[usize] = if quick { &[10, 50] } else { &[10, 50, 200] };
    if part("scale") {
        for rt in [&mut berth, &mut containerd] {
            println!("scale: {} to {} pods", rt.name, levels[levels.len() - 1]);
            let markers = rt.monitor.clone();
            let monitors = move || {
                let m: Vec<&str> = markers.iter().map(String::as_str).collect();
                pids_with(&m)
            };
            scale(rt, &mut t, levels, &monitors).await;
        }
    }
    // The pod's PID-namespace init: berth's (a shared-PID pod) and pause.
    if part("init") {
        let mut cfg = berth.pod("init");
        cfg.linux.as_mut().unwrap().security_context.as_mut().unwrap().namespace_options.as_mut().unwrap().pid = 0;
        let pod = berth.cri.run_pod(cfg).await.expect("RunPodSandbox");
        // As for pause below: the steady state, not the moment between the
        // init's "ready" and its exec of berth-pause.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let init = pids_with(&["berth-monitor pod-init", &pod]);
        t.add("the pod's init process (RSS)", "berth", "MiB", init.iter().map(|p| status_kib(*p, "VmRSS:")).sum::<f64>() / 1024.0);
        berth.pod_down(&pod).await;
        let cfg = containerd.pod("init");
        let pod = containerd.cri.run_pod(cfg).await.expect("RunPodSandbox");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pause = pids_with(&["/catatonit", "-P"]);
        let rss: Vec<f64> = pause.iter().map(|p| status_kib(*p, "VmRSS:") / 1024.0).collect();
        t.add("the pod's init process (RSS)", "containerd", "MiB", pct(&rss, 0.5));
        containerd.pod_down(&pod).await;
    }
    if part("floor") {
        println!("floor");
        floor(&mut t, runs);
    }
    if part("host") {
        println!("host vs container");
        host_vs_container(&mut berth, &mut t, 8).await;
    }
    if !quick && part("noisy") {
        println!("noisy neighbour");
        // Both runtimes under the same neighbours: what the kernel's
        // scheduling costs the quiet pod is then told apart from what the
        // runtime adds.
        // A server that forks per request also measures fork and exec beside
        // a fork bomb and where the kernel places a new task; the
        // one-process server measures the wake-ups alone.
        let mut layer = berth_e2e::oci::LayerBuilder::new();
        layer.busybox().file("bin/probe", berth_e2e::oci::probe_binary(), 0o755);
        let probe = berth_e2e::oci::image(vec![layer.build(berth_e2e::oci::Compression::Gzip)], &Default::default());
        f.registry.push("probe", "latest", &probe).await;
        let probe = f.registry.reference("probe", "latest");
        berth.cri.pull(&probe).await.expect("pulling the probe image into berth");
        containerd.cri.pull(&probe).await.expect("pulling the probe image into containerd");
        let pinned = std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2);
        let servers = match std::env::var("NOISY_SERVER").as_deref() {
            Ok("forking") => vec![Server::Forking],
            Ok("one-process") => vec![Server::OneProcess],
            _ => vec![Server::Forking, Server::OneProcess],
        };
        let containerd_first = std::env::var("NOISY_FIRST").is_ok_and(|v| v == "containerd");
        for server in servers {
            for own_cpu in [false, true].into_iter().filter(|own| !own || pinned) {
                let pair = if containerd_first { [&mut containerd, &mut berth] } else { [&mut berth, &mut containerd] };
                for rt in pair {
                    noisy_neighbour(rt, &mut t, own_cpu, server, &probe).await;
                }
            }
        }
    }

    let json = t.print();
    println!("\nberth's own stage timings (last lines of its log, µs):");
    let log = f.berthd.log();
    let staged: Vec<&str> = log.lines().filter(|l| l.contains("stages_us")).collect();
    for l in staged.iter().rev().take(4).rev() {
        println!("  {}", l.split("stages_us=").nth(1).unwrap_or(l));
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-compare.json");
    let _ = std::fs::write(&out, serde_json::to_string_pretty(&json).unwrap_or_default());
    println!("\nJSON: {}", out.display());
    drop(ctrd);
    drop(f);
    // kubelet's part: the pods' parent cgroups are the caller's to remove.
    // Processes of a daemon just stopped may still be exiting: this kills
    // what is left and waits for each rmdir.
    berth_e2e::remove_cgroup_everywhere(&cgroup);
}

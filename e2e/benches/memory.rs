//! berthd's memory after large outputs: RSS at start, right after 10
//! ExecSyncs that each print 10–40 MB (berth keeps the first 8 MiB − 32 KiB
//! of each stream), and once idle again; then the same after a mixed round
//! of pods and containers, one at a time and then from 8 clients at once.
//! Medians of repeated rounds, each on a fresh berthd.
//! `cargo bench -p berth-e2e --bench memory`

use std::time::Duration;

use berth_e2e::Fixture;

const ROUNDS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// (RSS, its anonymous part) in MiB: the rest is the binary's pages.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> f64 {
        status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("RssAnon:"))
}

fn row(label: &str, v: &[(f64, f64)]) {
    println!("  {label:<38} {:6.1} {:6.1}", median(v.iter().map(|x| x.0).collect()), median(v.iter().map(|x| x.1).collect()));
}

fn main() {
    berth_e2e::bench::main(run())
}

async fn run() {
    let (mut start, mut after_exec, mut idle_exec, mut idle_pods) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut busy_clients, mut idle_clients) = (Vec::new(), Vec::new());
    let mut monitors = Vec::new();
    for _ in 0..ROUNDS {
        let mut f = Fixture::start().await;
        let pid = f.berthd.pid();
        tokio::time::sleep(Duration::from_secs(1)).await;
        start.push(rss_mib(pid));
        let cfg = f.pod("bench-mem");
        let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
        let c = f.cri.run(&pod, f.container("t", &["sleep", "100000"]), &cfg).await;
        for i in 0..10 {
            let mb = 10 + (i * 30) / 9;
            let script = format!("head -c {}000000 /dev/zero | tr '\\0' x", mb);
            let r = f.cri.exec(&c, &["sh", "-c", &script], 60).await.unwrap();
            assert_eq!(r.exit_code, 0);
        }
        after_exec.push(rss_mib(pid));
        tokio::time::sleep(Duration::from_secs(5)).await;
        idle_exec.push(rss_mib(pid));
        // A mixed round: 20 pods with a container each, up and down.
        let mut pods = Vec::new();
        for i in 0..20 {
            let cfg = f.pod(&format!("bench-mem-{i}"));
            let p = f.cri.run_pod(cfg.clone()).await.unwrap();
            f.cri.run(&p, f.container("c", &["sleep", "100000"]), &cfg).await;
            pods.push(p);
        }
        monitors.push(monitor_breakdown(&f));
        for p in pods {
            f.cri.remove_pod(&p).await;
        }
        f.cri.remove_pod(&pod).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        idle_pods.push(rss_mib(pid));
        // 8 clients, 12 pods with a container each, up then down.
        let mut clients = Vec::new();
        for k in 0..8 {
            let mut cri = f.berthd.cri().await;
            let pods: Vec<_> = (0..12).map(|i| f.pod(&format!("bench-mem-{k}-{i}"))).collect();
            let container = f.container("c", &["sleep", "100000"]);
            clients.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                for cfg in pods {
                    let p = cri.run_pod(cfg.clone()).await.unwrap();
                    cri.run(&p, container.clone(), &cfg).await;
                    ids.push(p);
                }
                for p in ids {
                    cri.remove_pod(&p).await;
                }
            }));
        }
        for c in clients {
            c.await.unwrap();
        }
        busy_clients.push(rss_mib(pid));
        tokio::time::sleep(Duration::from_secs(5)).await;
        idle_clients.push(rss_mib(pid));
    }
    println!("berthd memory, {ROUNDS} rounds on fresh daemons (medians, MiB)");
    println!("  {:<38} {:>6} {:>6}", "", "RSS", "anon");
    row("just started (an image pulled)", &start);
    row("after 10 ExecSync of 10-40 MB", &after_exec);
    row("idle 5 s later", &idle_exec);
    row("idle after 20 pods up and down", &idle_pods);
    row("right after 96 more from 8 clients", &busy_clients);
    row("idle 5 s later", &idle_clients);
    println!("a container's monitor, with 20 containers up (medians over monitors and rounds, KiB)");
    println!("  {:<38} {:>6} {:>6}", "", "RSS", "PSS");
    for (i, label) in PARTS.iter().enumerate() {
        let rss = median(monitors.iter().flatten().map(|m: &[(f64, f64); PARTS.len()]| m[i].0).collect());
        let pss = median(monitors.iter().flatten().map(|m: &[(f64, f64); PARTS.len()]| m[i].1).collect());
        println!("  {label:<38} {rss:6.0} {pss:6.0}");
    }
}

/// The parts of a monitor's memory the breakdown names, the total last.
const PARTS: [&str; 7] = [
    "monitor binary, file pages",
    "libc and ld.so, file pages",
    "anonymous: heap",
    "anonymous: stack",
    "anonymous: other",
    "other",
    "total",
];

/// (RSS, PSS) in KiB of each part of every container monitor of `f`'s
/// berthd, from its smaps.
fn monitor_breakdown(f: &Fixture) -> Vec<[(f64, f64); PARTS.len()]> {
    let mut out = Vec::new();
    for (pid, cmd) in berth_e2e::truth::processes(f) {
        // berth-monitor, or berth-monitor-loop once the init is forked.
        if !cmd.contains(" monitor --id ") {
            continue;
        }
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
        let mut parts = [(0.0, 0.0); PARTS.len()];
        let mut name = String::new();
        for line in smaps.lines() {
            let mut words = line.split_whitespace();
            let first = words.next().unwrap_or_default();
            if first.contains('-') && !first.ends_with(':') {
                // A mapping's header: range perms offset dev inode [path].
                name = words.nth(4).unwrap_or_default().to_string();
                continue;
            }
            let kib = || -> f64 { line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0.0) };
            let (anon, file) = (first == "Anonymous:", first == "Rss:");
            let part = match name.as_str() {
                n if n.contains("/berth-monitor") => 0,
                n if n.contains("/libc.so") || n.contains("/ld-linux") => 1,
                "[heap]" => 2,
                "[stack]" => 3,
                "" => 4,
                _ => 5,
            };
            if file {
                // Rss of a file mapping counts its anonymous (copied on
                // write) pages too; they go to "anonymous: other".
                let rss = kib();
                parts[part].0 += rss;
                parts[6].0 += rss;
            } else if first == "Pss:" {
                parts[part].1 += kib();
                parts[6].1 += kib();
            } else if anon && part < 2 {
                parts[part].0 -= kib();
                parts[4].0 += kib();
            }
        }
        out.push(parts);
    }
    out
}

//! The kill -9 soak: four clients run the pod and container lifecycle (with
//! exec and pulls) against berthd while it is SIGKILLed at random moments
//! and restarted; after each restart, with the clients held, what berth
//! reports is checked against the kernel; at the end everything is removed
//! and nothing may be left. Ignored by default (minutes):
//!
//! ```sh
//! SOAK_ROUNDS=150 SOAK_SECONDS=1200 cargo test --release -p berth-e2e --test soak -- --ignored --nocapture
//! ```

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_e2e::truth::{remove_all_and_check_clean, reports_the_truth};
use berth_e2e::{connect, cri, Fixture};
use tokio::sync::RwLock;

/// xorshift64*, seeded from the clock (printed, to replay a failing run).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// What the clients share.
#[derive(Clone)]
struct Workload {
    socket: std::path::PathBuf,
    pod: cri::PodSandboxConfig,
    container: cri::ContainerConfig,
    images: Vec<String>,
    /// Read per iteration; the killer writes to check berth at rest.
    gate: Arc<RwLock<()>>,
    done: Arc<AtomicBool>,
    pods_started: Arc<AtomicUsize>,
}

/// StopPodSandbox + RemovePodSandbox; whether the pod is gone.
async fn remove_pod(cri: &mut berth_e2e::Cri, id: &str) -> bool {
    let _ = cri.runtime.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id.into() }).await;
    cri.runtime.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id.into() }).await.is_ok()
}

/// One client: the lifecycle over and over; every error is fine (berthd
/// may be down), what matters is what berth reports afterwards.
async fn client(n: usize, w: Workload) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (n as u64 + 1));
    let mut i = 0u64;
    // Pods this client left running: at most a few, so the node stays the
    // size of a real one and each round's check stays short.
    let mut kept: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    while !w.done.load(Ordering::SeqCst) {
        let Ok(mut cri) = connect(&w.socket).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        i += 1;
        let _held = w.gate.read().await;
        let mut cfg = w.pod.clone();
        cfg.metadata.as_mut().unwrap().name = format!("soak-{n}-{i}");
        cfg.metadata.as_mut().unwrap().uid = format!("uid-{n}-{i}");
        let Ok(pod) = cri.run_pod(cfg.clone()).await else { continue };
        w.pods_started.fetch_add(1, Ordering::SeqCst);
        if rng.below(4) == 0 {
            let _ = cri.pull(&w.images[rng.below(w.images.len() as u64) as usize]).await;
        }
        if let Ok(id) = cri.create(&pod, w.container.clone(), &cfg).await {
            if cri.start(&id).await.is_ok() {
                let _ = cri.exec(&id, &["sh", "-c", "echo soak"], 10).await;
            }
            if rng.below(2) == 0 {
                let _ = cri.stop(&id, 1).await;
                let _ = cri.runtime.remove_container(cri::RemoveContainerRequest { container_id: id }).await;
            }
        }
        // Two in three pods stay a while; the others go at once.
        let keep = rng.below(3) != 0;
        if i.is_multiple_of(10) {
            // As kubelet does: a pod this client started but never heard of
            // (berthd died before answering) is found by name and removed.
            let prefix = format!("soak-{n}-");
            if let Ok(list) = cri.runtime.list_pod_sandbox(cri::ListPodSandboxRequest::default()).await {
                for p in list.into_inner().items {
                    let name = p.metadata.map(|m| m.name).unwrap_or_default();
                    if name.starts_with(&prefix) && p.id != pod && !kept.contains(&p.id) {
                        kept.push_front(p.id);
                    }
                }
            }
        }
        if keep || !remove_pod(&mut cri, &pod).await {
            kept.push_back(pod);
        }
        while kept.len() > 3 || (!kept.is_empty() && rng.below(3) != 0) {
            let Some(old) = kept.pop_front() else { break };
            if !remove_pod(&mut cri, &old).await {
                kept.push_front(old);
                break;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "minutes of SIGKILLs: SOAK_ROUNDS=150 cargo test --release -p berth-e2e --test soak -- --ignored --nocapture"]
async fn kill9_soak_under_four_clients() {
    let rounds = env("SOAK_ROUNDS", 150);
    let budget = Duration::from_secs(env("SOAK_SECONDS", 1200));
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let mut rng = Rng(env("SOAK_SEED", seed));
    println!("soak: {rounds} rounds, seed {}", rng.0);
    let mut f = Fixture::start().await;
    let mut images = Vec::new();
    for tag in ["a", "b"] {
        let img = berth_e2e::oci::busybox_image(&berth_e2e::oci::ImageSettings { env: vec![format!("TAG={tag}")], ..Default::default() });
        f.registry.push("soak", tag, &img).await;
        images.push(f.registry.reference("soak", tag));
    }
    let mut pod_cfg = f.pod("soak");
    pod_cfg.linux.as_mut().unwrap().security_context.as_mut().unwrap().namespace_options.as_mut().unwrap().pid = 0; // shared PID: the init too
    let mut ctr = f.container("c", &["sleep", "100000"]);
    ctr.linux.as_mut().unwrap().security_context.as_mut().unwrap().namespace_options.as_mut().unwrap().pid = 0;

    let w = Workload {
        socket: f.berthd.paths.socket.clone(),
        pod: pod_cfg,
        container: ctr,
        images,
        gate: Arc::new(RwLock::new(())),
        done: Arc::new(AtomicBool::new(false)),
        pods_started: Arc::new(AtomicUsize::new(0)),
    };
    let clients: Vec<_> = (0..4).map(|n| tokio::spawn(client(n, w.clone()))).collect();

    let started = Instant::now();
    let mut restarts = Vec::new();
    let mut done_rounds = 0;
    for round in 0..rounds {
        if started.elapsed() > budget {
            println!("soak: time budget reached after {round} rounds");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20 + rng.below(400))).await;
        f.berthd.kill9();
        let t = Instant::now();
        f.berthd.restart().await;
        restarts.push(t.elapsed().as_secs_f64() * 1e3);
        if t.elapsed() > Duration::from_secs(1) && std::env::var("SOAK_VERBOSE").is_ok() {
            let log = f.berthd.log();
            let tail: Vec<&str> = log.lines().rev().take(25).collect();
            println!("slow restart ({:?}):\n{}", t.elapsed(), tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        f.cri = f.berthd.cri().await;
        // Clients held: the check sees berth at rest.
        let _quiet = w.gate.write().await;
        reports_the_truth(&mut f, &format!("round {round}")).await;
        done_rounds = round + 1;
    }
    w.done.store(true, Ordering::SeqCst);
    for c in clients {
        let _ = c.await;
    }
    remove_all_and_check_clean(&mut f, "after the soak").await;
    restarts.sort_by(|a, b| a.total_cmp(b));
    let med = restarts.get(restarts.len() / 2).copied().unwrap_or(0.0);
    let p90 = restarts.get(restarts.len() * 9 / 10).copied().unwrap_or(0.0);
    println!(
        "soak: {done_rounds} SIGKILL rounds in {:.0} s, {} pods started by the clients; restart to serving: median {med:.0} ms, p90 {p90:.0} ms; no inconsistency, nothing left",
        started.elapsed().as_secs_f64(),
        w.pods_started.load(Ordering::SeqCst)
    );
}

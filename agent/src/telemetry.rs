//! berthd's own metrics for Prometheus: RPCs, pulls, start stages, objects
//! by state, monitors. Served as OpenMetrics text on `[metrics] address`
//! (off unless set). Not to be confused with [`crate::metrics`], the
//! container metrics kubelet reads through CRI.

use std::sync::{OnceLock, Weak};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::node::Node;
use crate::store::{ContainerState, PodState};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Rpc {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Method {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Stage {
    stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    state: String,
}

fn seconds_buckets() -> Histogram {
    // 0.5 ms .. ~65 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

/// The counters and histograms; gauges are read at scrape time.
pub struct Telemetry {
    registry: Registry,
    rpcs: Family<Rpc, Counter>,
    rpc_seconds: Family<Method, Histogram, fn() -> Histogram>,
    pulls: Family<Outcome, Counter>,
    pull_bytes: Counter,
    pull_seconds: Histogram,
    pod_stages: Family<Stage, Histogram, fn() -> Histogram>,
    container_stages: Family<Stage, Histogram, fn() -> Histogram>,
    pods: Family<State, Gauge>,
    containers: Family<State, Gauge>,
    monitors: Gauge,
    monitor_rss: Gauge,
    daemon_rss: Gauge,
}

/// The process's metrics (one registry per berthd, as Prometheus clients keep).
pub fn get() -> &'static Telemetry {
    static T: OnceLock<Telemetry> = OnceLock::new();
    T.get_or_init(Telemetry::new)
}

impl Telemetry {
    fn new() -> Telemetry {
        let mut registry = Registry::with_prefix("berth");
        let t = Telemetry {
            rpcs: Family::default(),
            rpc_seconds: Family::new_with_constructor(seconds_buckets),
            pulls: Family::default(),
            pull_bytes: Counter::default(),
            pull_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            pod_stages: Family::new_with_constructor(seconds_buckets),
            container_stages: Family::new_with_constructor(seconds_buckets),
            pods: Family::default(),
            containers: Family::default(),
            monitors: Gauge::default(),
            monitor_rss: Gauge::default(),
            daemon_rss: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("grpc_requests", "CRI RPCs served, by method and gRPC status code", t.rpcs.clone());
        registry.register("grpc_request_duration_seconds", "CRI RPC latency, to the response", t.rpc_seconds.clone());
        registry.register("image_pulls", "PullImage outcomes (success, failure)", t.pulls.clone());
        registry.register("image_pull_bytes", "Bytes of images pulled (their compressed size)", t.pull_bytes.clone());
        registry.register("image_pull_duration_seconds", "Duration of successful pulls", t.pull_seconds.clone());
        registry.register("pod_start_stage_duration_seconds", "RunPodSandbox, per stage", t.pod_stages.clone());
        registry.register("container_create_stage_duration_seconds", "CreateContainer, per stage", t.container_stages.clone());
        registry.register("pods", "Pods by state", t.pods.clone());
        registry.register("containers", "Containers by state", t.containers.clone());
        registry.register("monitors", "berth-monitor processes alive", t.monitors.clone());
        registry.register("monitor_resident_memory_bytes", "RSS of all berth-monitor processes", t.monitor_rss.clone());
        registry.register("daemon_resident_memory_bytes", "RSS of berthd", t.daemon_rss.clone());
        Telemetry { registry, ..t }
    }

    /// One RPC answered (`code`: the gRPC status code's name, e.g. "Ok", "NotFound").
    pub fn rpc(&self, method: &str, code: &str, took: Duration) {
        self.rpcs.get_or_create(&Rpc { method: method.into(), code: code.into() }).inc();
        self.rpc_seconds.get_or_create(&Method { method: method.into() }).observe(took.as_secs_f64());
    }

    /// One pull ended; `bytes` of a successful one.
    pub fn pull(&self, ok: bool, bytes: u64, took: Duration) {
        self.pulls.get_or_create(&Outcome { result: if ok { "success" } else { "failure" }.into() }).inc();
        if ok {
            self.pull_bytes.inc_by(bytes);
            self.pull_seconds.observe(took.as_secs_f64());
        }
    }

    /// The stages of one pod start.
    pub fn pod_stages(&self, stages: &crate::util::Stages) {
        for (name, took) in stages.iter() {
            self.pod_stages.get_or_create(&Stage { stage: name.into() }).observe(took.as_secs_f64());
        }
    }

    /// The stages of one container creation.
    pub fn container_stages(&self, stages: &crate::util::Stages) {
        for (name, took) in stages.iter() {
            self.container_stages.get_or_create(&Stage { stage: name.into() }).observe(took.as_secs_f64());
        }
    }

    /// OpenMetrics text, with the gauges read from `node` and /proc now.
    pub fn render(&self, node: &Node) -> String {
        self.pods.clear();
        for p in node.pods.list() {
            let s = match p.state {
                PodState::Creating => "creating",
                PodState::Ready => "ready",
                PodState::NotReady => "notready",
            };
            self.pods.get_or_create(&State { state: s.into() }).inc();
        }
        self.containers.clear();
        let (mut monitors, mut rss) = (0, 0);
        for c in node.containers.list() {
            let s = match c.state {
                ContainerState::Creating => "creating",
                ContainerState::Created => "created",
                ContainerState::Running => "running",
                ContainerState::Exited => "exited",
            };
            self.containers.get_or_create(&State { state: s.into() }).inc();
            if c.monitor_pid > 0 {
                if let Some(bytes) = rss_of(c.monitor_pid) {
                    monitors += 1;
                    rss += bytes;
                }
            }
        }
        self.monitors.set(monitors);
        self.monitor_rss.set(rss);
        self.daemon_rss.set(rss_of(std::process::id() as i32).unwrap_or(0));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!("encoding metrics: {e}");
        }
        out
    }
}

/// VmRSS of a process, in bytes; None when it is gone.
fn rss_of(pid: i32) -> Option<i64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: i64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    Some(kb * 1024)
}

/// Binds the metrics listener (checked at start-up: a taken port stops berthd).
pub async fn bind(address: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

/// Serves `GET /metrics` (anything else: 404) until berthd exits.
pub fn serve(listener: TcpListener, node: Weak<Node>) {
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { continue };
            let node = node.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut len = 0;
                // Reads the request head (bounded); a body is not expected.
                let head_done = loop {
                    let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf[len..])).await else { return };
                    if n == 0 {
                        return;
                    }
                    len += n;
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        break true;
                    }
                    if len == buf.len() {
                        break false;
                    }
                };
                let mut headers = [httparse::EMPTY_HEADER; 32];
                let mut req = httparse::Request::new(&mut headers);
                let path = match (head_done, req.parse(&buf[..len])) {
                    (true, Ok(httparse::Status::Complete(_))) => req.path.unwrap_or_default().to_string(),
                    _ => String::new(),
                };
                let (status, ctype, body) = match (req.method, path.split('?').next()) {
                    (Some("GET"), Some("/metrics")) => match node.upgrade() {
                        Some(node) => {
                            let body = get().render(&node);
                            ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", body)
                        }
                        None => ("503 Service Unavailable", "text/plain", "stopping\n".to_string()),
                    },
                    _ => ("404 Not Found", "text/plain", "only GET /metrics\n".to_string()),
                };
                let head =
                    format!("HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(body.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
}

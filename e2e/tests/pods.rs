//! Pod sandboxes and containers through CRI: namespaces, logs, exit codes,
//! ExecSync, cleanup and restarts.

use std::time::{Duration, Instant};

use berth_e2e::{cri, Fixture};
use tonic::Code;

const RUNNING: i32 = cri::ContainerState::ContainerRunning as i32;
const EXITED: i32 = cri::ContainerState::ContainerExited as i32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_runs_logs_and_exits() {
    let mut f = Fixture::start().await;
    let pod_cfg = f.pod("smoke");
    let pod = f.cri.run_pod(pod_cfg.clone()).await.unwrap();
    let c = f.cri.run(&pod, f.container("hello", &["sh", "-c", "echo out; echo err >&2; exit 3"]), &pod_cfg).await;
    let s = f.cri.wait_exited(&c, Duration::from_secs(10)).await;
    assert_eq!(s.exit_code, 3);
    assert_eq!(s.reason, "Error");
    let log = std::fs::read_to_string(f.logs.join("smoke/hello.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(lines.iter().any(|l| l.ends_with(" stdout F out")), "{log}");
    assert!(lines.iter().any(|l| l.ends_with(" stderr F err")), "{log}");
    f.cri.remove_pod(&pod).await;
}

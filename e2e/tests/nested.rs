//! berth as kind and minikube run their runtime: berthd from this build
//! inside a privileged "node" container of an outer berthd, with the node's
//! own network namespace, its store on a volume (overlayfs cannot stack on
//! the node's overlay rootfs), its cgroups nested under the node
//! container's, and — as two berths on one machine would have it — the
//! same state path as the outer berthd, inside the node.

use std::path::Path;
use std::time::{Duration, Instant};

use berth_e2e::{cri, Fixture, OutsideHost};

fn volume(host: &Path, container: &str, readonly: bool) -> cri::Mount {
    cri::Mount { host_path: host.display().to_string(), container_path: container.into(), readonly, ..Default::default() }
}

fn file_or_empty(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berthd_runs_nested_in_a_privileged_node_container() {
    let mut f = Fixture::start().await;
    let bin_dir = berth_e2e::berthd_bin().parent().unwrap().to_path_buf();
    let node_dir = tempfile::Builder::new().prefix("berth-node-").tempdir().unwrap();
    let nd = node_dir.path();
    for d in ["root", "state", "run", "logs"] {
        std::fs::create_dir_all(nd.join(d)).unwrap();
    }
    let outer_state = f.berthd.paths.state.clone();
    let inner = berth_e2e::NetNames::new();
    std::fs::write(
        nd.join("config.toml"),
        format!(
            "[runtime]\ndefault_cgroup_parent = \"inner-pods\"\n[network]\nbridge = \"{}\"\nsubnet = \"10.77.0.0/24\"\nnft_table = \"{}\"\n",
            inner.bridge, inner.table
        ),
    )
    .unwrap();
    // A registry inside the node, serving the outer one's storage on the
    // node's own 127.0.0.1.
    std::fs::write(
        nd.join("registry.yml"),
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: /registry\nhttp:\n  addr: 127.0.0.1:5000\n",
    )
    .unwrap();
    let script = format!(
        "docker-registry serve /node/registry.yml >/node/logs/registry.log 2>&1 & \
         exec /berth/berthd --config /node/config.toml --root /node/root --state {} --socket /node/run/berth.sock --log-level debug >/node/logs/berthd.log 2>&1",
        outer_state.display()
    );

    let cfg = f.pod("kind-node");
    let node_pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let mut node = f.container("node", &["sh", "-c", &script]);
    node.linux = berth_e2e::security(|s| s.privileged = true);
    node.mounts = vec![
        volume(&bin_dir, "/berth", true),
        volume(Path::new("/usr"), "/usr", true),
        volume(Path::new("/lib"), "/lib", true),
        volume(Path::new("/lib64"), "/lib64", true),
        // A node image has CA certificates; berthd's registry client wants them.
        volume(Path::new("/etc/ssl/certs"), "/etc/ssl/certs", true),
        volume(nd, "/node", false),
        volume(&nd.join("state"), outer_state.to_str().unwrap(), false),
        volume(&f.registry.storage(), "/registry", true),
    ];
    let node_ctr = f.cri.run(&node_pod, node, &cfg).await;

    // The inner berthd serves on a socket the test reaches through the volume.
    let socket = nd.join("run/berth.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut icri = loop {
        if let Ok(mut c) = berth_e2e::connect(&socket).await {
            if c.runtime.version(cri::VersionRequest::default()).await.is_ok() {
                break c;
            }
        }
        assert!(Instant::now() < deadline, "the inner berthd did not serve:\n{}", file_or_empty(&nd.join("logs/berthd.log")));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let image = "127.0.0.1:5000/busybox:latest";
    icri.pull(image).await.unwrap_or_else(|e| panic!("inner pull: {e}\n{}", file_or_empty(&nd.join("logs/registry.log"))));

    // An inner pod reaching a host outside both nodes: masqueraded twice,
    // the outside sees the machine's address.
    let outside = OutsideHost::create();
    let server = outside.serve_once(9000, "hello-from-outside\n");
    let icfg = berth_e2e::pod_config("inner", Path::new("/node/logs"));
    let ipod =
        icri.run_pod(icfg.clone()).await.unwrap_or_else(|e| panic!("inner pod: {e}\n{}", file_or_empty(&nd.join("logs/berthd.log"))));
    let ictr = icri.run(&ipod, berth_e2e::container_config("app", image, &["sleep", "1000"]), &icfg).await;
    let got = icri.sh(&ictr, &format!("nc {} 9000 </dev/null", outside.ip)).await;
    assert_eq!(got.trim(), "hello-from-outside");
    assert_eq!(server.join().unwrap(), outside.node_ip.to_string());

    // Its cgroups are the node container's children.
    let nested = berth_e2e::cgroups_named(&ictr);
    assert!(!nested.is_empty() && nested.iter().all(|p| p.to_string_lossy().contains(&node_ctr)), "{nested:?}");
    // Its bridge and table are the node's, not the machine's.
    let links = std::process::Command::new("ip").args(["-br", "link"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains(&inner.bridge));

    // The outer berthd restarts: the inner monitors carry the same state
    // path in their command lines, yet they are the inner berthd's.
    f.berthd.restart().await;
    f.cri = f.berthd.cri().await;
    assert_eq!(icri.sh(&ictr, "echo alive").await, "alive\n", "outer log:\n{}", f.berthd.log());
    assert_eq!(f.cri.status(&node_ctr).await.state, cri::ContainerState::ContainerRunning as i32);

    icri.remove_pod(&ipod).await;
    drop(icri);
    f.cri.remove_pod(&node_pod).await;
    assert!(berth_e2e::cgroups_named(&node_ctr).is_empty(), "the node's cgroups, nested ones included, are gone");
}

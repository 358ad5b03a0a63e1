//! berth as an operator meets it: drop-in config and what `config show`
//! says set each key, SIGHUP reload, readiness notification to a service
//! manager.

use std::time::{Duration, Instant};

use berth_e2e::{oci, registry, run_berthd, Berthd};

/// Waits (bounded) until berthd's log has a line containing all of `needles`.
async fn wait_log_line(berthd: &Berthd, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = berthd.log();
        if let Some(line) = log.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return line.to_string();
        }
        assert!(Instant::now() < deadline, "no log line with {needles:?}\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sighup(berthd: &Berthd) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(berthd.pid() as i32), nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
}

#[test]
fn dropins_merge_in_order_and_config_show_names_what_set_each_key() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("config.toml");
    std::fs::write(&main, "shutdown_timeout_seconds = 7\n[log]\nlevel = \"warn\"\n[stream]\ntoken_ttl_seconds = 30\n").unwrap();
    let d = dir.path().join("config.d");
    std::fs::create_dir(&d).unwrap();
    std::fs::write(
        d.join("50-mirrors.toml"),
        "[registry.mirrors]\n\"docker.io\" = [\"mirror.lan:5000\"]\n[stream]\ntoken_ttl_seconds = 45\n",
    )
    .unwrap();
    std::fs::write(d.join("10-log.toml"), "[log]\nlevel = \"debug\"\nformat = \"json\"\n[stream]\ntoken_ttl_seconds = 40\n").unwrap();
    std::fs::write(d.join("README"), "not a drop-in").unwrap();
    let main_s = main.display().to_string();
    let (status, out, err) = run_berthd(&["--config", &main_s, "--log-format", "text", "config", "show"]);
    assert!(status.success(), "{err}");
    let line = |key: &str| out.lines().find(|l| l.starts_with(&format!("{key} = "))).unwrap_or_else(|| panic!("no {key} in\n{out}"));
    let d10 = d.join("10-log.toml").display().to_string();
    let d50 = d.join("50-mirrors.toml").display().to_string();
    assert!(line("level").starts_with("level = \"debug\"") && line("level").ends_with(&format!("# {d10}")), "{out}");
    assert!(line("format").starts_with("format = \"text\"") && line("format").ends_with("# flag --log-format"), "{out}");
    assert!(line("token_ttl_seconds").starts_with("token_ttl_seconds = 45") && line("token_ttl_seconds").ends_with(&d50), "{out}");
    assert!(line("shutdown_timeout_seconds").ends_with(&format!("# {main_s}")), "{out}");
    assert!(line("\"docker.io\"").contains("mirror.lan:5000") && line("\"docker.io\"").ends_with(&d50), "{out}");
    assert!(!line("root").contains('#'), "a default names no source: {out}");
    let files: Vec<&str> = out.lines().take_while(|l| l.starts_with('#')).collect();
    assert_eq!(
        files,
        vec!["# files, in the order applied:".to_string(), format!("#   {main_s}"), format!("#   {d10}"), format!("#   {d50}")]
    );

    // A bad drop-in stops berthd with its file and line named.
    std::fs::write(d.join("60-typo.toml"), "[image]\nmax_concurrent_downloads = 3\nunpack_device_node = true\n").unwrap();
    let (status, _, err) = run_berthd(&["--config", &main_s, "config", "show"]);
    assert!(!status.success());
    assert!(err.contains("60-typo.toml") && err.contains("line 3") && err.contains("unpack_device_node"), "{err}");
    // And a bad value names the drop-in that set it.
    std::fs::write(d.join("60-typo.toml"), "[image]\nmax_concurrent_downloads = 0\n").unwrap();
    let (status, _, err) = run_berthd(&["--config", &main_s, "config", "show"]);
    assert!(!status.success());
    assert!(err.contains("60-typo.toml") && err.contains("image.max_concurrent_downloads"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_registry_mirrors_and_log_format_live() {
    let registry = registry::Registry::start().await;
    registry.push("busybox", "latest", &oci::busybox_image(&oci::ImageSettings::default())).await;
    let mirror = registry.reference("busybox", "latest").split('/').next().unwrap().to_string();
    // A registry nobody serves (a closed port on loopback); only its mirror can answer.
    let absent = format!("127.0.0.1:{}", registry::free_port());
    let image = format!("{absent}/busybox:latest");

    let mut berthd = Berthd::start().await;
    let mut cri = berthd.cri().await;
    let e = cri.pull(&image).await.expect_err("no mirror yet");
    assert!(e.message().contains(&absent), "{e:?}");

    let dropins = berthd.paths.config.parent().unwrap().join("config.d");
    std::fs::create_dir_all(&dropins).unwrap();
    std::fs::write(
        dropins.join("20-mirror.toml"),
        format!("[registry.mirrors]\n\"{absent}\" = [\"{mirror}\"]\n[log]\nformat = \"json\"\n[runtime]\nshm_size_bytes = 1048576\n"),
    )
    .unwrap();
    sighup(&berthd);
    let reloaded = wait_log_line(&berthd, &["config reloaded", "registry.mirrors"]).await;
    assert!(reloaded.starts_with('{'), "the new format applies at once: {reloaded}");
    let restart = wait_log_line(&berthd, &["restart", "runtime.shm_size_bytes"]).await;
    assert!(restart.starts_with('{'), "{restart}");
    cri.pull(&image).await.expect("pull through the mirror added by the reload");
    assert!(registry.log().contains("/v2/busybox/manifests/latest"), "the mirror served it");

    // Status shows the config in effect: the new mirror, the old shm size.
    let s = cri.runtime.status(berth_e2e::cri::StatusRequest { verbose: true }).await.unwrap().into_inner();
    let config: serde_json::Value = serde_json::from_str(&s.info["config"]).unwrap();
    assert_eq!(config["registry"]["mirrors"][&absent][0], mirror.as_str());
    assert_eq!(config["runtime"]["shm_size_bytes"], 67108864, "needs a restart, so not in effect");

    // A config that does not load changes nothing and berthd keeps serving.
    std::fs::write(dropins.join("30-broken.toml"), "[registry\n").unwrap();
    sighup(&berthd);
    wait_log_line(&berthd, &["config not reloaded", "30-broken.toml"]).await;
    cri.runtime.version(berth_e2e::cri::VersionRequest::default()).await.expect("still serving");
    std::fs::remove_file(dropins.join("30-broken.toml")).unwrap();
    berthd.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_stopping_reach_the_service_manager() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let path_s = path.display().to_string();
    let mut berthd = Berthd::start_with_env("", &[("NOTIFY_SOCKET", &path_s)]).await;
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a notification");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
    assert!(msg.lines().any(|l| l.starts_with("STATUS=serving CRI v1 on ")), "{msg}");
    // Ready means served: kubelet, started after systemd saw READY=1, finds the socket answering.
    berthd.cri().await.runtime.version(berth_e2e::cri::VersionRequest::default()).await.expect("served");

    sighup(&berthd);
    let n = sock.recv(&mut buf).expect("reload status");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STATUS=serving CRI v1; config reloaded"));

    berthd.stop();
    let n = sock.recv(&mut buf).expect("stopping");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.lines().any(|l| l == "STOPPING=1"), "{msg}");
}

/// Every path under `dir` with its contents (directories as "dir").
fn tree(dir: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    fn walk(base: &std::path::Path, d: &std::path::Path, out: &mut std::collections::BTreeMap<String, String>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            if p.is_dir() {
                out.insert(rel, "dir".into());
                walk(base, &p, out);
            } else {
                out.insert(rel, String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn install_into_a_prefix_and_uninstall_back_to_as_before() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    // What an operator had before: a tool of their own, an /etc with other things.
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::write(root.join("usr/bin/theirs"), "#!/bin/sh\n").unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
    let before = tree(root);

    let bins = berth_e2e::berthd_bin().parent().unwrap().display().to_string();
    let script = berth_e2e::workspace_dir().join("deploy/install.sh");
    let run = |extra: &[&str]| {
        let mut args = vec![
            script.display().to_string(),
            "--prefix".into(),
            root.join("usr").display().to_string(),
            "--etc".into(),
            root.join("etc/berth").display().to_string(),
            "--systemd-dir".into(),
            root.join("lib/systemd/system").display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = std::process::Command::new("bash").args(&args).output().expect("bash");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "install.sh {extra:?}: {text}");
        text
    };

    let out = run(&["--binaries", &bins]);
    assert!(out.contains("namespaces:") && out.contains("cgroups:"), "the check runs after installing: {out}");
    let installed = tree(root);
    assert!(
        ["berthd", "berth-monitor", "berth-monitor-loop", "berth-pause"].iter().all(|b| installed.contains_key(&format!("usr/bin/{b}"))),
        "{:?}",
        installed.keys()
    );
    assert!(installed.contains_key("etc/berth/config.d"));
    let (_, default, _) = run_berthd(&["config", "default"]);
    assert_eq!(installed["etc/berth/config.toml"], default);
    let unit = &installed["lib/systemd/system/berthd.service"];
    assert!(unit.contains("Type=notify") && unit.contains("KillMode=process") && unit.contains("Delegate=yes"), "{unit}");
    let exec = format!("ExecStart={} --config {}", root.join("usr/bin/berthd").display(), root.join("etc/berth/config.toml").display());
    assert!(unit.contains(&exec), "{unit}");
    // Installing again (an upgrade) keeps one record per file.
    run(&["--binaries", &bins]);

    run(&["--uninstall"]);
    assert_eq!(tree(root), before, "uninstall leaves what was there and nothing else");

    // A config the operator edited stays, and uninstall says so.
    run(&["--binaries", &bins]);
    std::fs::write(root.join("etc/berth/config.toml"), "[log]\nlevel = \"debug\"\n").unwrap();
    let out = run(&["--uninstall"]);
    assert!(out.contains("kept") && out.contains("config.toml"), "{out}");
    let after = tree(root);
    assert_eq!(after.get("etc/berth/config.toml").map(String::as_str), Some("[log]\nlevel = \"debug\"\n"));
    assert!(!after.contains_key("usr/bin/berthd") && !after.contains_key("lib/systemd/system/berthd.service"));
}

#[test]
fn check_names_each_prerequisite_on_a_line() {
    let (status, out, err) = run_berthd(&["--config", "/nonexistent-berth-config.toml", "check"]);
    // An explicit config that does not exist is an error, not a silent default.
    assert!(!status.success() && err.contains("nonexistent-berth-config.toml"), "{out}{err}");
    let (status, out, _) = run_berthd(&["check"]);
    let names: Vec<&str> = out.lines().filter_map(|l| l.split_whitespace().nth(1)).collect();
    assert_eq!(names, vec!["namespaces:", "overlayfs:", "cgroups:", "user_namespaces:", "nftables:", "ip_forward:"], "{out}");
    assert!(out.contains("user_namespaces: allowed"), "this kernel (6.x) allows them: {out}");
    // This machine runs every other test, so it has what berth needs.
    assert!(status.success() && out.lines().all(|l| l.starts_with("ok ")), "{out}");
}

/// GET /metrics, parsed by the Prometheus project's own OpenMetrics parser
/// (Debian's python3-prometheus-client): every sample as (name, labels, value).
fn scrape(address: &str) -> Vec<(String, std::collections::BTreeMap<String, String>, f64)> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(address).expect("metrics endpoint");
    write!(conn, "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    conn.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("Content-Type: application/openmetrics-text"), "{head}");
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the parser refused the text: {}\n{body}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("parser output")
}

fn sample(samples: &[(String, std::collections::BTreeMap<String, String>, f64)], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
        .map(|(_, _, v)| *v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_parses_and_moves_with_rpcs() {
    let address = format!("127.0.0.1:{}", registry::free_port());
    let mut f = berth_e2e::Fixture::start_with_config(&format!("[metrics]\naddress = \"{address}\"\n")).await;
    let before = scrape(&address);
    assert_eq!(sample(&before, "berth_image_pulls_total", &[("result", "success")]), 1.0, "the fixture's pull");
    assert!(sample(&before, "berth_image_pull_bytes_total", &[]) > 100_000.0, "busybox's size");
    let versions = sample(&before, "berth_grpc_requests_total", &[("method", "Version"), ("code", "Ok")]);

    let pod_config = f.pod("metrics");
    let pod = f.cri.run_pod(pod_config.clone()).await.unwrap();
    let c = f.cri.run(&pod, f.container("sleeper", &["sleep", "600"]), &pod_config).await;
    let missing =
        f.cri.runtime.container_status(berth_e2e::cri::ContainerStatusRequest { container_id: "nope".into(), verbose: false }).await;
    assert_eq!(missing.unwrap_err().code(), tonic::Code::NotFound);
    f.cri.runtime.version(berth_e2e::cri::VersionRequest::default()).await.unwrap();

    let after = scrape(&address);
    assert_eq!(sample(&after, "berth_grpc_requests_total", &[("method", "Version"), ("code", "Ok")]), versions + 1.0);
    assert_eq!(sample(&after, "berth_grpc_requests_total", &[("method", "RunPodSandbox"), ("code", "Ok")]), 1.0);
    assert_eq!(sample(&after, "berth_grpc_requests_total", &[("method", "ContainerStatus"), ("code", "NotFound")]), 1.0);
    assert_eq!(sample(&after, "berth_grpc_request_duration_seconds_count", &[("method", "CreateContainer")]), 1.0);
    assert!(sample(&after, "berth_grpc_request_duration_seconds_sum", &[("method", "CreateContainer")]) > 0.0);
    assert_eq!(sample(&after, "berth_pods", &[("state", "ready")]), 1.0);
    assert_eq!(sample(&after, "berth_containers", &[("state", "running")]), 1.0);
    assert_eq!(sample(&after, "berth_monitors", &[]), 1.0);
    assert!(sample(&after, "berth_monitor_resident_memory_bytes", &[]) > 100_000.0);
    assert!(sample(&after, "berth_daemon_resident_memory_bytes", &[]) > 1_000_000.0);
    assert_eq!(sample(&after, "berth_pod_start_stage_duration_seconds_count", &[("stage", "network")]), 1.0);
    assert_eq!(sample(&after, "berth_pod_start_stage_duration_seconds_count", &[("stage", "network_lease")]), 1.0);
    assert_eq!(sample(&after, "berth_container_create_stage_duration_seconds_count", &[("stage", "monitor_and_rootfs")]), 1.0, "{after:?}");
    // The log breaks monitor_and_rootfs down as the monitor and init measured it.
    let log = f.berthd.log();
    let created = log.lines().find(|l| l.contains("container created")).expect("a container created line");
    let steps: Vec<&str> =
        created.split("runtime_us=").nth(1).unwrap_or("").split_whitespace().filter_map(|kv| kv.split('=').next()).collect();
    for step in [
        "monitor_start",
        "monitor_setup",
        "monitor_fork",
        "init_spec",
        "init_cgroup",
        "init_namespaces",
        "init_rootfs",
        "init_process",
        "init_seccomp",
        "init_tty",
        "init_confine",
        "monitor_wait_init",
    ] {
        assert!(steps.contains(&step), "{step} missing from {created}");
    }

    f.cri.runtime.stop_container(berth_e2e::cri::StopContainerRequest { container_id: c.clone(), timeout: 0 }).await.unwrap();
    let stopped = scrape(&address);
    assert_eq!(sample(&stopped, "berth_containers", &[("state", "running")]), 0.0);
    assert_eq!(sample(&stopped, "berth_containers", &[("state", "exited")]), 1.0);

    // Only /metrics is served.
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(&address).unwrap();
    write!(conn, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut resp = String::new();
    conn.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
    f.cri.remove_pod(&pod).await;
}

/// The executable of the berth-monitor watching container `id`.
fn monitor_exe(id: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let args = berth_e2e::cmdline(pid);
        if args.get(1).map(String::as_str) == Some("monitor") && args.windows(2).any(|w| w[0] == "--id" && w[1] == id) {
            return std::fs::read_link(e.path().join("exe")).ok();
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_handlers_from_config_apply_to_their_pods() {
    let bin_dir = tempfile::tempdir().unwrap();
    let monitor = bin_dir.path().join("berth-monitor-strict");
    std::fs::copy(berth_e2e::berthd_bin().with_file_name("berth-monitor"), &monitor).unwrap();
    // The handler's cgroup parent, unique to this run and removed however the test ends.
    struct Cgroup(String);
    impl Drop for Cgroup {
        fn drop(&mut self) {
            berth_e2e::remove_cgroup_everywhere(&self.0);
        }
    }
    let top = Cgroup(format!("berth-e2e-{}", berth_e2e::NetNames::new().bridge));
    let parent = format!("{}/strict", top.0);
    let config = format!(
        "[runtimes.strict]\ndefault_seccomp = \"runtime-default\"\ncgroup_parent = \"{parent}\"\nmonitor_path = \"{}\"\n",
        monitor.display()
    );
    let mut f = berth_e2e::Fixture::start_with_config(&config).await;

    let s = f.cri.runtime.status(berth_e2e::cri::StatusRequest { verbose: false }).await.unwrap().into_inner();
    let names: Vec<&str> = s.runtime_handlers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, vec!["", "strict"]);

    let logs = f.logs.clone();
    let run = |handler: &str, name: &str| berth_e2e::cri::RunPodSandboxRequest {
        config: Some(berth_e2e::pod_config(name, &logs)),
        runtime_handler: handler.into(),
    };
    let e = f.cri.runtime.run_pod_sandbox(run("gvisor", "unknown")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(e.message().contains("\"gvisor\"") && e.message().contains("\"strict\""), "{e:?}");
    // A pull for a handler (kubelet's RuntimeClassInImageCriApi): the node's
    // handlers pull, an unknown one is refused naming the field.
    let pull = |handler: &str| berth_e2e::cri::PullImageRequest {
        image: Some(berth_e2e::cri::ImageSpec { runtime_handler: handler.into(), ..berth_e2e::image_spec(&f.busybox) }),
        ..Default::default()
    };
    let e = f.cri.image.pull_image(pull("gvisor")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(e.message().contains("image.runtime_handler \"gvisor\""), "{e:?}");
    for handler in ["strict", ""] {
        f.cri.image.pull_image(pull(handler)).await.unwrap_or_else(|e| panic!("a pull for {handler:?}: {e:?}"));
    }

    let mut results = Vec::new();
    for (handler, name) in [("strict", "strict-pod"), ("", "default-pod"), ("runc", "runc-pod")] {
        let req = run(handler, name);
        let pod_config = req.config.clone().unwrap();
        let container = berth_e2e::container_config("c", &f.busybox, &["sleep", "600"]);
        let pod = f.cri.runtime.run_pod_sandbox(req).await.unwrap().into_inner().pod_sandbox_id;
        let status = f
            .cri
            .runtime
            .pod_sandbox_status(berth_e2e::cri::PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: false })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        assert_eq!(status.runtime_handler, handler);
        let c = f.cri.run(&pod, container, &pod_config).await;
        let out = f.cri.exec(&c, &["cat", "/proc/1/status"], 10).await.unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let seccomp = text.lines().find_map(|l| l.strip_prefix("Seccomp:")).map(|v| v.trim().to_string()).unwrap_or_default();
        let cgroups = berth_e2e::cgroups_named(&pod);
        results.push((handler, seccomp, cgroups, monitor_exe(&c), pod));
    }
    let (_, seccomp, cgroups, exe, _) = &results[0];
    assert_eq!(seccomp, "2", "strict: RuntimeDefault for a container that asked for nothing");
    assert!(!cgroups.is_empty() && cgroups.iter().all(|p| p.display().to_string().contains(&format!("/{parent}/"))), "{cgroups:?}");
    let state = &f.berthd.paths.state;
    assert!(exe.as_deref().is_some_and(|e| berth_e2e::runs_through_bind(e, &monitor, state)), "strict's own monitor binary: {exe:?}");
    for (handler, seccomp, cgroups, exe, _) in &results[1..] {
        assert_eq!(seccomp, "0", "{handler:?}: unconfined as asked");
        assert!(cgroups.iter().all(|p| !p.display().to_string().contains("/strict/")), "{cgroups:?}");
        assert!(!exe.as_deref().is_some_and(|e| berth_e2e::runs_through_bind(e, &monitor, state)), "{exe:?}");
    }
    for (_, _, _, _, pod) in &results {
        f.cri.remove_pod(pod).await;
    }
    drop(f);
    drop(top);
}

/// A TCP proxy on 127.0.0.1 to `upstream` that forwards at most `budget`
/// bytes of answers in all, then holds its connections open and silent: a
/// registry that stalls in the middle of a blob.
async fn stalling_proxy(upstream: String, budget: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let left = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(budget));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else { continue };
            let left = left.clone();
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move { tokio::io::copy(&mut cr, &mut sw).await });
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let Ok(n) = sr.read(&mut buf).await else { return };
                    if n == 0 {
                        return;
                    }
                    let take = left
                        .fetch_update(std::sync::atomic::Ordering::SeqCst, std::sync::atomic::Ordering::SeqCst, |l| {
                            Some(l.saturating_sub(n))
                        })
                        .unwrap()
                        .min(n);
                    if cw.write_all(&buf[..take]).await.is_err() {
                        return;
                    }
                    if take < n {
                        // Stalled: keep the connection, send nothing more.
                        std::future::pending::<()>().await;
                    }
                }
            });
        }
    });
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_pull_is_cancelled_with_progress_logged_and_pinned_images_are_reported() {
    let registry = registry::Registry::start().await;
    // busybox's layer is about 1 MB compressed: the stall lands inside it.
    registry.push("busybox", "latest", &oci::busybox_image(&oci::ImageSettings::default())).await;
    let direct = registry.reference("busybox", "latest");
    let upstream = direct.split('/').next().unwrap().to_string();
    let proxy = stalling_proxy(upstream, 256 * 1024).await;
    let through_proxy = format!("{proxy}/busybox:latest");

    let mut berthd = Berthd::start_with_config(&format!("[image]\npull_progress_timeout_seconds = 6\npinned = [\"{direct}\"]\n")).await;
    let mut cri = berthd.cri().await;
    let started = Instant::now();
    let e = cri.pull(&through_proxy).await.expect_err("the proxy stalls");
    let took = started.elapsed();
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e:?}");
    assert!(e.message().contains("no progress for 6s"), "{e:?}");
    assert!(took >= Duration::from_secs(6) && took < Duration::from_secs(30), "cancelled after {took:?}");
    let progress = wait_log_line(&berthd, &["pull progress", "bytes="]).await;
    assert!(!progress.contains("bytes=0 "), "bytes had arrived before the stall: {progress}");
    let ingest = berthd.paths.root.join("content/ingest");
    assert_eq!(std::fs::read_dir(&ingest).unwrap().count(), 0, "no partial blob");
    // The layer was being unpacked as it arrived: what it made goes once the
    // unpack sees the download end.
    let snapshots = berthd.paths.root.join("snapshots");
    let left = || std::fs::read_dir(&snapshots).unwrap().map(|e| e.unwrap().file_name()).collect::<Vec<_>>();
    for _ in 0..50 {
        if left().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(left().is_empty(), "the partial unpack is dropped: {:?}", left());

    // The same image straight from the registry: pulled, and pinned by the config.
    cri.pull(&direct).await.expect("direct pull");
    let status = cri.image_status(&direct).await.unwrap().expect("image");
    assert!(status.pinned, "{status:?}");
    // A reload that unpins it is seen at once.
    std::fs::create_dir_all(berthd.paths.config.with_file_name("config.d")).unwrap();
    std::fs::write(berthd.paths.config.with_file_name("config.d").join("10-unpin.toml"), "[image]\npinned = []\n").unwrap();
    sighup(&berthd);
    wait_log_line(&berthd, &["config reloaded", "image.pinned"]).await;
    assert!(!cri.image_status(&direct).await.unwrap().expect("image").pinned);
    berthd.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diag_writes_one_report_without_secrets() {
    use std::os::unix::fs::PermissionsExt;
    let config = "[registry.auths.\"127.0.0.1:1\"]\nusername = \"u\"\npassword = \"diag-s3cret\"\n";
    let mut f = berth_e2e::Fixture::start_with_config(config).await;
    let pod_config = f.pod("diag");
    let pod = f.cri.run_pod(pod_config.clone()).await.unwrap();
    let c = f.cri.run(&pod, f.container("c", &["sleep", "600"]), &pod_config).await;
    // Something worth a warning: a registry that is not there.
    let absent = format!("127.0.0.1:{}/nothing:1", registry::free_port());
    f.cri.pull(&absent).await.expect_err("no registry");

    let out = f.berthd.dir().join("diag.txt");
    // The running berthd's own flags (config, root, state, socket), then the subcommand.
    let base = f.berthd.args();
    let args = |out: &std::path::Path| {
        let mut a = base.clone();
        a.extend(["diag".to_string(), "--out".into(), out.display().to_string()]);
        a
    };
    let a = args(&out);
    let (status, stdout, err) = run_berthd(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(status.success(), "{err}");
    assert_eq!(stdout.trim(), out.display().to_string());
    assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
    let report = std::fs::read_to_string(&out).unwrap();
    for needle in [
        "=== versions ===",
        "=== prerequisites (berthd check) ===",
        "=== pods ===",
        pod.as_str(),
        c.as_str(),
        &f.busybox,
        "registry endpoint failed",
        &f.berthd.net.bridge,
        &format!("table inet {}", f.berthd.net.table),
        "condition RuntimeReady = true",
        "<redacted>",
    ] {
        assert!(report.contains(needle), "no {needle:?} in the report:\n{report}");
    }
    assert!(!report.contains("diag-s3cret"), "a secret in the report:\n{report}");

    // With berthd down the report still comes, and says so.
    f.cri.remove_pod(&pod).await;
    f.berthd.stop();
    let out2 = f.berthd.dir().join("diag2.txt");
    let a = args(&out2);
    let (status, _, err) = run_berthd(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(status.success(), "{err}");
    let report = std::fs::read_to_string(&out2).unwrap();
    assert!(report.contains("berthd not reachable"), "{report}");
    f.berthd.restart().await;
}

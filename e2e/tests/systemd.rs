//! The systemd cgroup driver (`runtime.cgroup_driver = "systemd"`), as a
//! kubeadm node runs it: kubelet's pod cgroups are slices, every container a
//! transient scope systemd made, with the limits as unit properties so that
//! systemd's own rewrites (`daemon-reload`) keep them.
//!
//! The whole test needs systemd as PID 1: the cgroup v2 VM boots it
//! (`CGV2VM_SYSTEMD=1`) and runs this with `BERTH_E2E_SYSTEMD=1`. Elsewhere
//! it checks that berthd refuses the driver with a clear error.

use std::process::Command;
use std::time::Duration;

use berth_e2e::{cri, Fixture};
use tonic::Code;

fn systemd_expected() -> bool {
    std::env::var("BERTH_E2E_SYSTEMD").is_ok_and(|v| v == "1")
}

/// A name unique to this test process, usable in a slice name (no dashes).
fn tag() -> String {
    format!("e2e{}", std::process::id())
}

/// `systemctl show -p <prop> --value <unit>`.
fn show(unit: &str, prop: &str) -> String {
    let out = Command::new("systemctl").args(["--no-ask-password", "show", "-p", prop, "--value", unit]).output().expect("systemctl");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Waits (bounded) until systemd has forgotten the unit: a stopped
/// transient unit is collected on systemd's next pass.
async fn assert_gone(unit: &str) {
    for _ in 0..100 {
        if show(unit, "LoadState") == "not-found" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{unit} is still known to systemd: {} {}", show(unit, "LoadState"), show(unit, "ActiveState"));
}

/// The kernel's log lines about OOM kills so far (read from /dev/kmsg
/// without blocking), for a failure message.
fn kernel_oom_lines() -> String {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let Ok(mut kmsg) = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open("/dev/kmsg") else {
        return "no /dev/kmsg".into();
    };
    let mut lines = Vec::new();
    let mut rec = [0u8; 8192];
    // One record per read; EAGAIN at the end, EPIPE for records overwritten.
    loop {
        match kmsg.read(&mut rec) {
            Ok(0) => break,
            Ok(n) => {
                let text = String::from_utf8_lossy(&rec[..n]);
                let msg = text.split_once(';').map_or(&*text, |(_, m)| m).lines().next().unwrap_or("").to_string();
                if ["oom", "Killed process", "reaper"].iter().any(|k| msg.contains(k)) {
                    lines.push(msg);
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(_) => break,
        }
    }
    lines.join("\n")
}

fn daemon_reload() {
    let s = Command::new("systemctl").args(["--no-ask-password", "daemon-reload"]).status().expect("systemctl");
    assert!(s.success());
}

fn file(cgroup: &str, name: &str) -> String {
    std::fs::read_to_string(format!("/sys/fs/cgroup/{cgroup}/{name}")).unwrap_or_else(|e| panic!("{cgroup}/{name}: {e}")).trim().to_string()
}

/// `berthd check`'s output for a config file.
fn check(config: &std::path::Path) -> String {
    berth_e2e::run_berthd(&["--config", &config.display().to_string(), "check"]).1
}

fn info(r: &cri::ContainerStatusResponse) -> serde_json::Value {
    serde_json::from_str(&r.info["info"]).unwrap()
}

async fn verbose(f: &mut Fixture, id: &str) -> serde_json::Value {
    let r = f.cri.runtime.container_status(cri::ContainerStatusRequest { container_id: id.into(), verbose: true }).await.unwrap();
    info(&r.into_inner())
}

fn resources(memory: i64, quota: i64) -> cri::LinuxContainerResources {
    cri::LinuxContainerResources {
        cpu_quota: quota,
        cpu_period: 100_000,
        cpu_shares: 512,
        memory_limit_in_bytes: memory,
        ..Default::default()
    }
}

fn config(parent: &str) -> String {
    format!("[runtime]\ncgroup_driver = \"systemd\"\ndefault_cgroup_parent = \"{parent}\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_driver_refused_without_systemd() {
    if systemd_expected() {
        return;
    }
    assert!(!std::path::Path::new("/run/systemd/private").exists(), "systemd runs here: run this test with BERTH_E2E_SYSTEMD=1");
    let dir = tempfile::tempdir().unwrap();
    let net = berth_e2e::NetNames::new();
    let cfg = dir.path().join("config.toml");
    let text = format!(
        "{}[network]\nbridge = \"{}\"\nsubnet = \"{}\"\nnft_table = \"{}\"\n",
        config("berth.slice"),
        net.bridge,
        net.subnet,
        net.table
    );
    std::fs::write(&cfg, text).unwrap();
    let arg = |sub: &str| dir.path().join(sub).display().to_string();
    let (status, _, err) = berth_e2e::run_berthd(&[
        "--config",
        &arg("config.toml"),
        "--root",
        &arg("root"),
        "--state",
        &arg("state"),
        "--socket",
        &arg("berth.sock"),
    ]);
    assert!(!status.success(), "berthd started without systemd:\n{err}");
    assert!(err.contains("runtime.cgroup_driver") && err.contains("cannot reach systemd"), "{err}");
    assert!(!std::path::Path::new(&format!("/sys/class/net/{}", net.bridge)).exists(), "nothing was set up");
    assert!(check(&cfg).contains("MISSING cgroup_driver: cannot reach systemd"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_are_systemd_scopes() {
    if !systemd_expected() {
        return;
    }
    let t = tag();
    let mut f = Fixture::start_with_config(&config(&format!("berth_{t}.slice"))).await;
    let rc = f.cri.runtime.runtime_config(cri::RuntimeConfigRequest {}).await.unwrap().into_inner();
    assert_eq!(rc.linux.unwrap().cgroup_driver, cri::CgroupDriver::Systemd as i32, "kubelet learns the driver here");
    let checked = check(&f.berthd.dir().join("config.toml"));
    assert!(checked.contains("ok      cgroup_driver: systemd answers"), "{checked}");

    // A cgroupfs path is refused, naming the field.
    let mut cfg = f.pod("fspath");
    cfg.linux.as_mut().unwrap().cgroup_parent = "/kubepods/burstable/podx".into();
    let e = f.cri.run_pod(cfg).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("config.linux.cgroup_parent") && e.message().contains("slice"), "{}", e.message());

    // As kubelet sends it: the pod's slice.
    let pod_slice = format!("kubepods_{t}-burstable-pod{t}.slice");
    let pod_path = format!("kubepods_{t}.slice/kubepods_{t}-burstable.slice/{pod_slice}");
    let mut cfg = f.pod("scoped");
    cfg.linux.as_mut().unwrap().cgroup_parent = pod_slice.clone();
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    assert_eq!(show(&pod_slice, "ActiveState"), "active");
    let mut c = f.container("limited", &["sleep", "1000"]);
    c.linux.as_mut().unwrap().resources = Some(resources(64 << 20, 50_000));
    let id = f.cri.run(&pod, c, &cfg).await;
    let scope = format!("berth-{id}.scope");
    let cg = format!("{pod_path}/{scope}");
    assert_eq!(show(&scope, "ActiveState"), "active");
    assert_eq!(show(&scope, "ControlGroup"), format!("/{cg}"));
    assert_eq!(show(&scope, "Slice"), pod_slice);
    assert_eq!(show(&scope, "Delegate"), "yes");
    assert_eq!(show(&scope, "MemoryMax"), (64u64 << 20).to_string());
    assert_eq!(show(&scope, "CPUQuotaPerSecUSec"), "500ms");
    let v = verbose(&mut f, &id).await;
    assert_eq!(v["cgroup"].as_str().unwrap(), cg);
    let pid = v["pid"].as_i64().unwrap();
    let on_node = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert_eq!(on_node.trim(), format!("0::/{cg}"));
    assert_eq!(f.cri.sh(&id, "cat /proc/self/cgroup").await.trim(), "0::/", "the scope is the container's cgroup namespace root");
    // The process that held the scope while it was made has left; besides
    // the container, only the monitor's sentinel (its child, which keeps
    // the cgroup until the monitor has read the OOM count) is there.
    let procs: Vec<String> = file(&cg, "cgroup.procs").lines().map(str::to_string).collect();
    assert!(procs.contains(&pid.to_string()), "{procs:?}");
    assert_eq!(procs.len(), 2, "{procs:?}");
    for p in &procs {
        let cmdline = std::fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default().replace('\0', " ");
        assert!(!cmdline.contains(" hold"), "the holder is still in the scope: {cmdline}");
    }

    // The sentinel lives in the node's PID namespace, not the container's:
    // the kernel kills every process of a PID namespace with its init, and
    // could empty the cgroup before the monitor has read its OOM count.
    let sentinel = procs.iter().find(|p| **p != pid.to_string()).unwrap();
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/pid")).unwrap();
    assert_eq!(ns(sentinel), ns("self"), "the sentinel is in the container's PID namespace");
    assert_ne!(ns(&pid.to_string()), ns("self"));

    // systemd rewrites a unit's cgroup files from its properties; berth's
    // limits are those properties, so they survive.
    daemon_reload();
    assert_eq!(file(&cg, "memory.max"), (64u64 << 20).to_string());
    assert_eq!(file(&cg, "cpu.max"), "50000 100000");
    assert_eq!(file(&cg, "cpu.weight"), "20");

    let update =
        cri::UpdateContainerResourcesRequest { container_id: id.clone(), linux: Some(resources(128 << 20, 20_000)), ..Default::default() };
    f.cri.runtime.update_container_resources(update).await.unwrap();
    assert_eq!(show(&scope, "MemoryMax"), (128u64 << 20).to_string());
    daemon_reload();
    assert_eq!(file(&cg, "memory.max"), (128u64 << 20).to_string());
    assert_eq!(file(&cg, "cpu.max"), "20000 100000");

    // An OOM kill: systemd ends the scope (and, on systemd < 253, marks it
    // failed with result oom-kill); the container is OOMKilled all the same.
    let mut c = f.container("hog", &["dd", "if=/dev/zero", "of=/dev/null", "bs=96M", "count=1"]);
    c.linux.as_mut().unwrap().resources = Some(resources(32 << 20, 0));
    let hog = f.cri.run(&pod, c, &cfg).await;
    let s = f.cri.wait_exited(&hog, Duration::from_secs(60)).await;
    let bundle = f.berthd.paths.state.join("containers").join(&hog);
    let why = || {
        let unit = format!("berth-{hog}.scope");
        format!(
            "exit file {:?}; monitor log {:?}; unit {} {}; kernel:\n{}",
            std::fs::read_to_string(bundle.join("exit")).unwrap_or_default(),
            std::fs::read_to_string(bundle.join("monitor.log")).unwrap_or_default(),
            show(&unit, "ActiveState"),
            show(&unit, "Result"),
            kernel_oom_lines()
        )
    };
    assert_eq!((s.exit_code, s.reason.as_str()), (137, "OOMKilled"), "{}", why());

    // Removal leaves no unit behind, failed or not.
    f.cri.remove_pod(&pod).await;
    for unit in [&scope, &format!("berth-{hog}.scope")] {
        assert_gone(unit).await;
    }
    assert!(!std::path::Path::new(&format!("/sys/fs/cgroup/{cg}")).exists());
    // kubelet's slice stays kubelet's.
    assert_eq!(show(&pod_slice, "ActiveState"), "active");
    let _ = Command::new("systemctl").args(["--no-ask-password", "stop", &format!("kubepods_{t}.slice")]).status();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_pod_slices_survive_restart_and_strays_are_collected() {
    if !systemd_expected() {
        return;
    }
    let t = tag();
    let parent = format!("berthown_{t}.slice");
    let mut f = Fixture::start_with_config(&config(&parent)).await;
    // No cgroup parent and a shared PID namespace: berth's own slice for the
    // pod, a scope for its PID-namespace init.
    let mut cfg = f.pod("own");
    cfg.linux.as_mut().unwrap().security_context.as_mut().unwrap().namespace_options.as_mut().unwrap().pid = 0;
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let pod_slice = format!("berthown_{t}-{pod}.slice");
    assert_eq!(show(&pod_slice, "ActiveState"), "active");
    assert_eq!(show(&pod_slice, "ControlGroup"), format!("/{parent}/{pod_slice}"));
    assert_eq!(show(&format!("berth-init-{pod}.scope"), "ActiveState"), "active");
    let id = f.cri.run(&pod, f.container("app", &["sleep", "1000"]), &cfg).await;
    let scope = format!("berth-{id}.scope");
    assert_eq!(show(&scope, "Slice"), pod_slice);

    // A scope of a container berth has no record of, as a crash between
    // making the scope and recording the container would leave.
    let stray_id = "f".repeat(64);
    let stray = format!("berth-{stray_id}.scope");
    let mut holder = Command::new("systemd-run")
        .args(["--scope", "--quiet", "--unit", &stray, "--slice", &pod_slice, "sleep", "1000"])
        .spawn()
        .expect("systemd-run");
    let mut up = false;
    for _ in 0..200 {
        if show(&stray, "ActiveState") == "active" {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "the stray scope never started");

    f.berthd.restart().await;
    f.cri = f.berthd.cri().await;
    assert_eq!(show(&scope, "ActiveState"), "active", "a restart leaves running containers where they are");
    assert_eq!(f.cri.sh(&id, "echo alive").await.trim(), "alive");
    assert_gone(&stray).await;
    let status = holder.wait().expect("systemd-run");
    assert!(!status.success(), "its process was killed");

    f.cri.remove_pod(&pod).await;
    for unit in [&scope, &format!("berth-init-{pod}.scope")] {
        assert_gone(unit).await;
    }
    // systemd makes up any slice it is asked about, so "gone" is: inactive,
    // and no cgroup.
    assert_eq!(show(&pod_slice, "ActiveState"), "inactive");
    assert!(!std::path::Path::new(&format!("/sys/fs/cgroup/{parent}/{pod_slice}")).exists());
    let _ = Command::new("systemctl").args(["--no-ask-password", "stop", &parent]).status();
}

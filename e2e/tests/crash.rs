//! Crash consistency: berthd is SIGKILLed at each kill point of each
//! mutating RPC (`BERTH_KILL_POINT`, see agent/src/fault.rs), restarted, and
//! then what it reports is checked against the kernel — processes, network
//! namespaces, veths, cgroups, mounts — a retry of the interrupted RPC must
//! work, and removing everything must leave nothing behind. A store write
//! that fails instead (`BERTH_FAIL_POINT`) must leave nothing at once.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use berth_e2e::truth::{processes, remove_all_and_check_clean, reports_the_truth};
use berth_e2e::{cri, Fixture};
use tonic::Code;

/// A pod that shares its PID namespace, so that the pod's init is part of
/// every scenario.
fn shared_pid_pod(f: &Fixture, name: &str) -> cri::PodSandboxConfig {
    let mut cfg = f.pod(name);
    cfg.linux.as_mut().unwrap().security_context.as_mut().unwrap().namespace_options.as_mut().unwrap().pid = 0; // POD
    cfg
}

fn container(f: &Fixture, name: &str, cmd: &[&str]) -> cri::ContainerConfig {
    let mut c = f.container(name, cmd);
    c.linux.as_mut().unwrap().security_context.as_mut().unwrap().namespace_options.as_mut().unwrap().pid = 0; // POD
    c
}

/// Restarts berthd with `key` set to `value` (unset for None).
async fn restart_with(f: &mut Fixture, key: &str, value: Option<&str>) {
    f.berthd.set_env(key, value);
    f.berthd.restart().await;
    f.cri = f.berthd.cri().await;
}

/// Restarts berthd armed with `point`.
async fn arm(f: &mut Fixture, point: &str) {
    restart_with(f, "BERTH_KILL_POINT", Some(point)).await;
}

/// After the armed RPC: berthd died by SIGKILL at the point; start it again
/// unarmed.
async fn died_and_restart(f: &mut Fixture, point: &str, rpc_failed: bool) {
    assert!(rpc_failed, "{point}: the RPC succeeded; the kill point was not reached");
    let status = f.berthd.wait_dead(Duration::from_secs(20)).await.unwrap_or_else(|| panic!("{point}: berthd is still alive"));
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{point}: {status}\n{}", f.berthd.log());
    assert!(f.berthd.log().contains(&format!("point={point}")) || f.berthd.log().contains(point), "{point}: not the point that fired");
    restart_with(f, "BERTH_KILL_POINT", None).await;
}

/// A pod with a running container.
async fn pod_with_container(f: &mut Fixture, name: &str) -> (String, cri::PodSandboxConfig, String) {
    let cfg = shared_pid_pod(f, name);
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let c = f.cri.run(&pod, container(f, "c", &["sleep", "100000"]), &cfg).await;
    (pod, cfg, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_run_pod_sandbox() {
    let mut f = Fixture::start().await;
    for point in ["pod.run.after_intent", "pod.run.after_namespaces", "pod.run.after_network", "pod.run.after_init"] {
        arm(&mut f, point).await;
        let cfg = shared_pid_pod(&f, "crash-runp");
        let failed = f.cri.run_pod(cfg.clone()).await.is_err();
        died_and_restart(&mut f, point, failed).await;
        reports_the_truth(&mut f, point).await;
        let pods = f.cri.runtime.list_pod_sandbox(cri::ListPodSandboxRequest::default()).await.unwrap().into_inner().items;
        assert!(pods.is_empty(), "{point}: an interrupted RunPodSandbox left {pods:?}");
        assert!(processes(&f).is_empty(), "{point}: {:?}", processes(&f));
        // kubelet retries: it works, and the pod runs containers.
        let pod = f.cri.run_pod(cfg.clone()).await.unwrap_or_else(|e| panic!("{point}: retry: {e}"));
        let c = f.cri.run(&pod, container(&f, "c", &["sleep", "100000"]), &cfg).await;
        assert_eq!(f.cri.exec(&c, &["true"], 10).await.unwrap().exit_code, 0);
        reports_the_truth(&mut f, point).await;
        remove_all_and_check_clean(&mut f, point).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_container_create_and_start() {
    let mut f = Fixture::start().await;
    for point in ["container.create.after_intent", "container.create.after_monitor", "container.start.after_start"] {
        let cfg = shared_pid_pod(&f, "crash-ctr");
        let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
        let created = if point == "container.start.after_start" {
            Some(f.cri.create(&pod, container(&f, "c", &["sleep", "100000"]), &cfg).await.unwrap())
        } else {
            None
        };
        arm(&mut f, point).await;
        let failed = match &created {
            Some(id) => f.cri.start(id).await.is_err(),
            None => f.cri.create(&pod, container(&f, "c", &["sleep", "100000"]), &cfg).await.is_err(),
        };
        died_and_restart(&mut f, point, failed).await;
        reports_the_truth(&mut f, point).await;
        let st = f.cri.pod_status(&pod, false).await.status.unwrap();
        assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32, "{point}: the pod is fine");
        match created {
            // The process runs: so says berth now.
            Some(id) => {
                let s = f.cri.status(&id).await;
                assert_eq!(s.state, cri::ContainerState::ContainerRunning as i32, "{point}: {s:?}");
                assert!(s.started_at > 0);
                let e = f.cri.start(&id).await.unwrap_err();
                assert_eq!(e.code(), Code::FailedPrecondition, "{point}: {}", e.message());
            }
            // The half-made container is gone; a retry works.
            None => {
                let list = f.cri.runtime.list_containers(cri::ListContainersRequest::default()).await.unwrap().into_inner().containers;
                assert!(list.is_empty(), "{point}: {list:?}");
                let id = f.cri.run(&pod, container(&f, "c", &["sleep", "100000"]), &cfg).await;
                assert_eq!(f.cri.exec(&id, &["true"], 10).await.unwrap().exit_code, 0);
            }
        }
        remove_all_and_check_clean(&mut f, point).await;
    }
}

/// The last durable write of RunPodSandbox and of CreateContainer fails
/// after the kernel work it records is done, as a write to a full disk
/// would (`BERTH_FAIL_POINT`): the RPC fails, and what it made is gone when
/// it returns — not left until berthd's next start-up — while berthd goes
/// on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_record_that_cannot_be_written_undoes_the_rpc() {
    let mut f = Fixture::start().await;
    let point = "pod.run.ready_record";
    restart_with(&mut f, "BERTH_FAIL_POINT", Some(point)).await;
    let cfg = shared_pid_pod(&f, "fail-runp");
    let e = f.cri.run_pod(cfg.clone()).await.unwrap_err();
    assert!(e.message().contains("injected failure"), "{point}: {e:?}");
    let pods = f.cri.runtime.list_pod_sandbox(cri::ListPodSandboxRequest::default()).await.unwrap().into_inner().items;
    assert!(pods.is_empty(), "{point}: {pods:?}");
    assert!(processes(&f).is_empty(), "{point}: the pod's init is left: {:?}", processes(&f));
    // No pod to remove: this checks that no mount, veth or cgroup is left.
    remove_all_and_check_clean(&mut f, point).await;

    let point = "container.create.created_record";
    restart_with(&mut f, "BERTH_FAIL_POINT", Some(point)).await;
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let e = f.cri.create(&pod, container(&f, "c", &["sleep", "100000"]), &cfg).await.unwrap_err();
    assert!(e.message().contains("injected failure"), "{point}: {e:?}");
    let list = f.cri.runtime.list_containers(cri::ListContainersRequest::default()).await.unwrap().into_inner().containers;
    assert!(list.is_empty(), "{point}: {list:?}");
    // The monitor exits once its init is killed, a moment after the reply.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let monitors = || processes(&f).into_iter().filter(|(_, cmd)| cmd.contains(" monitor ")).collect::<Vec<_>>();
    while !monitors().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(monitors().is_empty(), "{point}: the container's monitor is left: {:?}", monitors());
    let st = f.cri.pod_status(&pod, false).await.status.unwrap();
    assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32, "{point}: the pod is fine");
    // kubelet retries once the disk has room again: it works.
    restart_with(&mut f, "BERTH_FAIL_POINT", None).await;
    let id = f.cri.run(&pod, container(&f, "c", &["sleep", "100000"]), &cfg).await;
    assert_eq!(f.cri.exec(&id, &["true"], 10).await.unwrap().exit_code, 0);
    remove_all_and_check_clean(&mut f, point).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_stops_and_removes() {
    let mut f = Fixture::start().await;
    for point in [
        "container.stop.after_signal",
        "container.remove.after_teardown",
        "pod.stop.after_intent",
        "pod.stop.after_init_killed",
        "pod.remove.after_teardown",
    ] {
        let (pod, _cfg, c) = pod_with_container(&mut f, "crash-stop").await;
        if point == "container.remove.after_teardown" {
            f.cri.stop(&c, 0).await.unwrap();
        }
        if point == "pod.remove.after_teardown" {
            f.cri.runtime.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
        }
        arm(&mut f, point).await;
        let failed = match point {
            "container.stop.after_signal" => f.cri.stop(&c, 30).await.is_err(),
            "container.remove.after_teardown" => {
                f.cri.runtime.remove_container(cri::RemoveContainerRequest { container_id: c.clone() }).await.is_err()
            }
            "pod.remove.after_teardown" => {
                f.cri.runtime.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await.is_err()
            }
            _ => f.cri.runtime.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.is_err(),
        };
        died_and_restart(&mut f, point, failed).await;
        reports_the_truth(&mut f, point).await;
        if point.starts_with("pod.stop") {
            let st = f.cri.pod_status(&pod, false).await.status.unwrap();
            assert_eq!(st.state, cri::PodSandboxState::SandboxNotready as i32, "{point}: a stop that began is a stopped pod");
        }
        // The retry works.
        let retried = match point {
            "container.stop.after_signal" => f.cri.stop(&c, 1).await,
            "container.remove.after_teardown" => {
                f.cri.runtime.remove_container(cri::RemoveContainerRequest { container_id: c.clone() }).await.map(drop)
            }
            "pod.remove.after_teardown" => {
                f.cri.runtime.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await.map(drop)
            }
            _ => f.cri.runtime.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.map(drop),
        };
        retried.unwrap_or_else(|e| panic!("{point}: retry: {e}"));
        reports_the_truth(&mut f, point).await;
        remove_all_and_check_clean(&mut f, point).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_a_pull_and_an_image_removal() {
    use berth_e2e::oci::{self, Compression, ImageSettings, LayerBuilder};
    let mut f = Fixture::start().await;
    let layers: Vec<_> = (0..3)
        .map(|i| {
            let mut l = LayerBuilder::new();
            l.file(&format!("layer{i}"), &vec![b'x'; 200_000], 0o644);
            l.build(Compression::Gzip)
        })
        .collect();
    let image = oci::image(layers, &ImageSettings::default());
    f.registry.push("three", "v1", &image).await;
    let reference = f.registry.reference("three", "v1");
    let snapshots = |f: &Fixture| std::fs::read_dir(f.berthd.paths.root.join("snapshots")).unwrap().count();
    let before = snapshots(&f);
    let point = "image.pull.after_layer";
    arm(&mut f, point).await;
    let failed = f.cri.pull(&reference).await.is_err();
    died_and_restart(&mut f, point, failed).await;
    assert!(f.cri.image_status(&reference).await.unwrap().is_none(), "an interrupted pull is no image");
    assert_eq!(snapshots(&f), before, "start-up collected the interrupted pull's layers");
    assert_eq!(f.cri.pull(&reference).await.unwrap(), image.id());
    f.cri.remove_image(&reference).await.unwrap();
    assert_eq!(snapshots(&f), before);

    // RemoveImage cut short between its record and its content: the image
    // is gone, and start-up collects what only it used.
    let blobs = |f: &Fixture| std::fs::read_dir(f.berthd.paths.root.join("content/blobs/sha256")).unwrap().count();
    let blobs_before = blobs(&f);
    f.cri.pull(&reference).await.unwrap();
    assert!(snapshots(&f) > before && blobs(&f) > blobs_before);
    let point = "image.remove.after_record";
    arm(&mut f, point).await;
    let failed = f.cri.remove_image(&reference).await.is_err();
    died_and_restart(&mut f, point, failed).await;
    assert!(f.cri.image_status(&reference).await.unwrap().is_none(), "the removal was recorded");
    assert_eq!(snapshots(&f), before, "start-up collected the removed image's layers");
    assert_eq!(blobs(&f), blobs_before, "and its blobs");
    f.cri.remove_image(&reference).await.expect("a repeated RemoveImage is fine");
}

/// What the kernel lost while berthd was down is what berthd reports: a pod
/// whose init was killed, or whose veth was deleted, is NOTREADY after the
/// restart (kubelet then makes a new sandbox), and removing it leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_lost_its_init_or_veth_is_not_ready_after_restart() {
    let mut f = Fixture::start().await;
    let (lost_init, _, _) = pod_with_container(&mut f, "lost-init").await;
    let (lost_veth, _, _) = pod_with_container(&mut f, "lost-veth").await;
    let (fine, _, _) = pod_with_container(&mut f, "fine").await;
    f.berthd.kill9();
    let init = processes(&f).into_iter().find(|(_, c)| c.contains("pod-init") && c.contains(&lost_init)).expect("the pod's init").0;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(init), nix::sys::signal::Signal::SIGKILL).unwrap();
    // PID 1 of a namespace finishes exiting once the namespace is empty.
    let dead = || std::fs::read_to_string(format!("/proc/{init}/stat")).map(|s| s.contains(") Z ")).unwrap_or(true);
    for _ in 0..250 {
        if dead() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(dead(), "the pod's init did not die");
    let veth = format!("bv{}", &lost_veth[..12]);
    assert!(std::process::Command::new("ip").args(["link", "del", &veth]).status().unwrap().success());
    f.berthd.restart().await;
    f.cri = f.berthd.cri().await;
    for (pod, want) in [
        (&lost_init, cri::PodSandboxState::SandboxNotready),
        (&lost_veth, cri::PodSandboxState::SandboxNotready),
        (&fine, cri::PodSandboxState::SandboxReady),
    ] {
        let st = f.cri.pod_status(pod, false).await.status.unwrap();
        assert_eq!(st.state, want as i32, "{pod}");
    }
    reports_the_truth(&mut f, "lost").await;
    remove_all_and_check_clean(&mut f, "lost").await;
}

/// An ExecSync in flight when berthd dies: its client is gone, so the
/// restarted berthd ends the command and everything it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_exec_sync() {
    let mut f = Fixture::start().await;
    let (_pod, _, c) = pod_with_container(&mut f, "crash-exec").await;
    let mut cri = f.cri.clone();
    let id = c.clone();
    let exec = tokio::spawn(async move { cri.exec(&id, &["sh", "-c", "sleep 4321 & sleep 4322"], 600).await });
    let running = |out: &str| out.lines().filter(|l| l.trim_start().starts_with("sleep 432")).count();
    let mut seen = 0;
    for _ in 0..100 {
        seen = running(&f.cri.sh(&c, "ps -o args").await);
        if seen == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, 2, "the exec runs");
    f.berthd.kill9();
    assert!(exec.await.unwrap().is_err());
    f.berthd.restart().await;
    f.cri = f.berthd.cri().await;
    let mut left = usize::MAX;
    for _ in 0..100 {
        left = running(&f.cri.sh(&c, "ps -o args").await);
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, 0, "the previous berthd's exec is still running");
    reports_the_truth(&mut f, "exec").await;
    remove_all_and_check_clean(&mut f, "exec").await;
}

/// UpdateContainerResources cut short between its record and the cgroup:
/// after the restart the kernel holds what ContainerStatus reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_update_container_resources() {
    let mut f = Fixture::start().await;
    let (_pod, _, c) = pod_with_container(&mut f, "crash-update").await;
    let point = "container.update.after_record";
    arm(&mut f, point).await;
    let update = cri::UpdateContainerResourcesRequest {
        container_id: c.clone(),
        linux: Some(cri::LinuxContainerResources { memory_limit_in_bytes: 96 << 20, ..Default::default() }),
        ..Default::default()
    };
    let failed = f.cri.runtime.update_container_resources(update).await.is_err();
    died_and_restart(&mut f, point, failed).await;
    let reported = f.cri.status(&c).await.resources.unwrap().linux.unwrap().memory_limit_in_bytes;
    let v2 =
        std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().any(|l| l.contains(" /sys/fs/cgroup ") && l.contains("cgroup2"));
    let file = if v2 { "/sys/fs/cgroup/memory.max" } else { "/sys/fs/cgroup/memory/memory.limit_in_bytes" };
    let in_kernel: i64 = f.cri.sh(&c, &format!("cat {file}")).await.trim().parse().unwrap();
    assert_eq!((reported, in_kernel), (96 << 20, 96 << 20), "{point}");
    reports_the_truth(&mut f, point).await;
    remove_all_and_check_clean(&mut f, point).await;
}

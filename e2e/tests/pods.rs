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
    // berthd mounted the overlay rootfs and made the mount destinations
    // (/etc/hosts and the like, which this image lacks) ahead, beside its
    // other work, and the init attached and used them.
    let daemon = f.berthd.log();
    let created = daemon.lines().find(|l| l.contains("container created") && l.contains(&c)).expect("a created line");
    assert!(created.contains("rootfs_ahead=") && created.contains("targets_ahead="), "{created}");
    assert!(!daemon.contains("left to the init"), "{daemon}");
    f.cri.remove_pod(&pod).await;
}

/// readlink of /proc/self/ns/<kind> inside a container.
async fn ns_of(f: &mut Fixture, id: &str, kind: &str) -> String {
    f.cri.sh(id, &format!("readlink /proc/self/ns/{kind}")).await.trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_containers_share_network_ipc_uts_but_not_processes() {
    let mut f = Fixture::start().await;
    let cfg = f.pod("shared");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let server = f
        .cri
        .run(
            &pod,
            f.container(
                "server",
                &["sh", "-c", "echo data > /dev/shm/marker; while true; do echo hello-from-server | nc -l -p 8080; done"],
            ),
            &cfg,
        )
        .await;
    let client = f.cri.run(&pod, f.container("client", &["sleep", "1000"]), &cfg).await;

    // localhost is shared: the client reaches the server on 127.0.0.1.
    let got = f.cri.sh(&client, "for i in $(seq 100); do out=$(nc 127.0.0.1 8080 </dev/null) && [ -n \"$out\" ] && echo $out && exit 0; sleep 0.1; done; exit 1").await;
    assert_eq!(got.trim(), "hello-from-server");
    // POSIX shm (/dev/shm) and the IPC, network and UTS namespaces are the pod's.
    assert_eq!(f.cri.sh(&client, "cat /dev/shm/marker").await.trim(), "data");
    for kind in ["net", "ipc", "uts"] {
        assert_eq!(ns_of(&mut f, &server, kind).await, ns_of(&mut f, &client, kind).await, "{kind} namespace");
    }
    assert_eq!(f.cri.sh(&client, "hostname").await.trim(), "shared");
    assert!(f.cri.sh(&client, "cat /etc/hosts").await.contains("localhost"));
    // Without a shared PID namespace, each container sees only its own processes.
    assert_ne!(ns_of(&mut f, &server, "pid").await, ns_of(&mut f, &client, "pid").await);
    let ps = f.cri.sh(&client, "ps -o pid,args").await;
    assert!(!ps.contains("nc -l"), "client sees the server's processes:\n{ps}");

    // A second pod sees neither the first pod's shm nor its processes nor its network.
    let cfg2 = f.pod("other");
    let pod2 = f.cri.run_pod(cfg2.clone()).await.unwrap();
    let stranger = f.cri.run(&pod2, f.container("stranger", &["sleep", "1000"]), &cfg2).await;
    assert_eq!(f.cri.sh(&stranger, "ls /dev/shm").await.trim(), "");
    for kind in ["net", "ipc", "uts", "pid"] {
        assert_ne!(ns_of(&mut f, &server, kind).await, ns_of(&mut f, &stranger, kind).await, "{kind} namespace");
    }
    assert_eq!(f.cri.sh(&stranger, "hostname").await.trim(), "other");
    let r = f.cri.exec(&stranger, &["nc", "-w", "1", "127.0.0.1", "8080"], 10).await.unwrap();
    assert_ne!(r.exit_code, 0, "the other pod's localhost must not reach the server");
    f.cri.remove_pod(&pod).await;
    f.cri.remove_pod(&pod2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_pid_namespace_sees_sibling_processes() {
    let mut f = Fixture::start().await;
    let cfg = f.pod_with_pid("pidshare", cri::NamespaceMode::Pod);
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let mut a_cfg = f.container("a", &["sleep", "1001"]);
    let mut b_cfg = f.container("b", &["sleep", "1002"]);
    for c in [&mut a_cfg, &mut b_cfg] {
        c.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(cri::NamespaceOption { pid: 0, ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let a = f.cri.run(&pod, a_cfg, &cfg).await;
    let b = f.cri.run(&pod, b_cfg, &cfg).await;
    let ps = f.cri.sh(&b, "ps -o args").await;
    assert!(ps.contains("sleep 1001") && ps.contains("sleep 1002"), "{ps}");
    assert_eq!(ns_of(&mut f, &a, "pid").await, ns_of(&mut f, &b, "pid").await);
    // PID 1 is berth's pod init, not a container's process.
    assert!(!f.cri.sh(&a, "cat /proc/1/cmdline").await.contains("sleep"));
    // A TTY container of another user there (its process is started into
    // the namespace by its init, which sets up outside it): its terminal is
    // its own, from its devpts, and its controlling terminal, in a session
    // of its own.
    let script = "tty; stat -c owner=%u $(tty); set -- $(cat /proc/$$/stat); echo pid=$1 session=$6 tty_nr=$7; sleep 1003";
    let mut t = f.container("t", &["sh", "-c", script]);
    t.tty = true;
    t.linux = berth_e2e::security(|s| {
        s.namespace_options = Some(cri::NamespaceOption { pid: 0, ..Default::default() });
        s.run_as_user = Some(cri::Int64Value { value: 1000 });
    });
    f.cri.run(&pod, t, &cfg).await;
    let log = f.logs.join("pidshare").join("t.log");
    let text = berth_e2e::read_until(&log, 100, Duration::from_millis(50), |t| t.contains("tty_nr=")).await;
    assert!(text.contains("/dev/pts/0") && text.contains("owner=1000"), "{text}");
    let field = |k: &str| text.split_whitespace().find_map(|w| w.strip_prefix(k)).unwrap_or("?").to_string();
    assert_eq!(field("session="), field("pid="), "the shell leads its own session: {text}");
    assert_ne!(field("tty_nr="), "0", "the terminal is the controlling one: {text}");
    assert!(f.cri.sh(&b, "ps -o args").await.contains("sleep 1003"), "the sibling sees it");
    // The /proc the containers' come from: the pod's, on the node while
    // the pod is, and gone with it.
    let pin = f.berthd.paths.state.join("pods").join(&pod).join("ns-pid-proc");
    assert!(std::fs::read_to_string(pin.join("1/cmdline")).unwrap().contains("pod-init"), "{} is the pod's /proc", pin.display());
    f.cri.remove_pod(&pod).await;
    assert!(berth_e2e::mounts_under(&pin).is_empty() && !pin.exists(), "{} is left", pin.display());
}

/// A TTY container in a shared PID namespace takes its terminal in its own
/// process, which its init starts there. Where it cannot (here its seccomp
/// profile refuses TIOCSCTTY), CreateContainer fails saying so: the init
/// reports ready only once the process holds its terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_pid_tty_container_that_cannot_take_its_terminal_is_not_created() {
    let mut f = Fixture::start().await;
    let cfg = f.pod_with_pid("ttyfail", cri::NamespaceMode::Pod);
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let profile = f.berthd.dir().join("no-ctty.json");
    // TIOCSCTTY is 0x540e.
    let rule = r#"{"names":["ioctl"],"action":"SCMP_ACT_ERRNO","errnoRet":1,"args":[{"index":1,"value":21518,"op":"SCMP_CMP_EQ"}]}"#;
    let text = format!(r#"{{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86"],"syscalls":[{rule}]}}"#);
    std::fs::write(&profile, text).unwrap();
    let mut c = f.container("t", &["sh", "-c", "sleep 1000"]);
    c.tty = true;
    let p = profile.display().to_string();
    c.linux = berth_e2e::security(|s| {
        s.namespace_options = Some(cri::NamespaceOption { pid: 0, ..Default::default() });
        s.seccomp = Some(cri::SecurityProfile { profile_type: cri::security_profile::ProfileType::Localhost as i32, localhost_ref: p });
    });
    for _ in 0..3 {
        let e = f.cri.create(&pod, c.clone(), &cfg).await.unwrap_err();
        assert!(e.message().contains("TIOCSCTTY"), "{}", e.message());
    }
    let listed = f.cri.runtime.list_containers(cri::ListContainersRequest::default()).await.unwrap().into_inner().containers;
    assert!(listed.is_empty(), "{listed:?}");
    f.cri.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_use_the_cri_format_split_long_lines_and_reopen() {
    let mut f = Fixture::start().await;
    let cfg = f.pod("logs");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let script = "echo first; echo oops >&2; head -c 40000 /dev/zero | tr '\\0' x; echo; printf 'no-newline'";
    let c = f.cri.run(&pod, f.container("writer", &["sh", "-c", script]), &cfg).await;
    let s = f.cri.wait_exited(&c, Duration::from_secs(10)).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));
    assert_eq!(s.log_path, f.logs.join("logs/writer.log").display().to_string());
    let log = std::fs::read_to_string(&s.log_path).unwrap();
    let mut records: Vec<(String, String, String)> = Vec::new();
    for line in log.lines() {
        let mut parts = line.splitn(4, ' ');
        let (ts, stream, tag, text) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap_or(""));
        // 2026-11-25T17:38:47.123456789Z
        assert_eq!(ts.len(), 30, "timestamp {ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T' && ts.as_bytes()[19] == b'.', "timestamp {ts}");
        records.push((stream.into(), tag.into(), text.into()));
    }
    let stdout: Vec<_> = records.iter().filter(|r| r.0 == "stdout").collect();
    assert_eq!((stdout[0].1.as_str(), stdout[0].2.as_str()), ("F", "first"));
    assert!(records.iter().any(|r| r.0 == "stderr" && r.1 == "F" && r.2 == "oops"));
    // 40000 bytes: 16 KiB partial, 16 KiB partial, then the rest as full.
    assert_eq!((stdout[1].1.as_str(), stdout[1].2.len()), ("P", 16384));
    assert_eq!((stdout[2].1.as_str(), stdout[2].2.len()), ("P", 16384));
    assert_eq!((stdout[3].1.as_str(), stdout[3].2.len()), ("F", 40000 - 2 * 16384));
    assert_eq!((stdout[4].1.as_str(), stdout[4].2.as_str()), ("P", "no-newline"));

    // ReopenContainerLog: after a rename, new output lands in a new file.
    let ticker =
        f.cri.run(&pod, f.container("ticker", &["sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.05; done"]), &cfg).await;
    let path = f.logs.join("logs/ticker.log");
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::rename(&path, f.logs.join("logs/ticker.log.1")).unwrap();
    f.cri.runtime.reopen_container_log(cri::ReopenContainerLogRequest { container_id: ticker.clone() }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fresh = std::fs::read_to_string(&path).expect("new log file after reopen");
    assert!(fresh.lines().count() >= 2 && fresh.contains("stdout F tick"), "{fresh}");
    // Reopen on an exited container is refused.
    let e = f.cri.runtime.reopen_container_log(cri::ReopenContainerLogRequest { container_id: c.clone() }).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    f.cri.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_stop_timeouts_and_bad_entrypoints() {
    let mut f = Fixture::start().await;
    let cfg = f.pod("exits");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let ok = f.cri.run(&pod, f.container("ok", &["true"]), &cfg).await;
    let s = f.cri.wait_exited(&ok, Duration::from_secs(10)).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));
    assert!(s.started_at > 0 && s.finished_at >= s.started_at && s.created_at <= s.started_at);

    // SIGKILL after the stop timeout: PID 1 ignores SIGTERM without a handler.
    let stubborn = f.cri.run(&pod, f.container("stubborn", &["sleep", "1000"]), &cfg).await;
    assert_eq!(f.cri.status(&stubborn).await.state, RUNNING);
    let t = Instant::now();
    f.cri.stop(&stubborn, 2).await.unwrap();
    assert!(t.elapsed() >= Duration::from_secs(2), "the stop timeout was not honoured");
    let s = f.cri.status(&stubborn).await;
    assert_eq!((s.state, s.exit_code, s.reason.as_str()), (EXITED, 137, "Error"));
    // Stopping again, and stopping an unknown id, are fine.
    f.cri.stop(&stubborn, 2).await.unwrap();
    f.cri.stop(&"f".repeat(64), 2).await.unwrap();

    // A process that handles SIGTERM exits with its own code before the timeout.
    let polite = f.cri.run(&pod, f.container("polite", &["sh", "-c", "trap 'exit 42' TERM; while true; do sleep 0.05; done"]), &cfg).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    f.cri.stop(&polite, 30).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(f.cri.status(&polite).await.exit_code, 42);

    // Missing entrypoints fail CreateContainer with containerd's message, leaving nothing.
    let before = f.cri.runtime.list_containers(cri::ListContainersRequest::default()).await.unwrap().into_inner().containers.len();
    let e = f.cri.create(&pod, f.container("missing", &["no-such-command"]), &cfg).await.unwrap_err();
    assert!(e.message().contains("exec: \"no-such-command\": executable file not found in $PATH"), "{}", e.message());
    let e = f.cri.create(&pod, f.container("missing2", &["/bin/nope"]), &cfg).await.unwrap_err();
    assert!(e.message().contains("exec: \"/bin/nope\""), "{}", e.message());
    let mut bad_cwd = f.container("badcwd", &["true"]);
    bad_cwd.working_dir = "/does/not/exist".into();
    let e = f.cri.create(&pod, bad_cwd, &cfg).await.unwrap_err();
    assert!(e.message().contains("/does/not/exist"), "{}", e.message());
    let after = f.cri.runtime.list_containers(cri::ListContainersRequest::default()).await.unwrap().into_inner().containers.len();
    assert_eq!(before, after, "failed creations leave no container");
    let bundles = std::fs::read_dir(f.berthd.paths.state.join("containers")).unwrap().count();
    assert_eq!(bundles, after, "failed creations leave no bundle");

    // The same name again while the first exists: AlreadyExists naming it.
    let e = f.cri.create(&pod, f.container("ok", &["true"]), &cfg).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    assert!(e.message().contains(&ok), "{}", e.message());
    f.cri.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sync_output_exit_codes_and_timeouts() {
    let mut f = Fixture::start().await;
    let cfg = f.pod("exec");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let mut ccfg = f.container("target", &["sleep", "1000"]);
    ccfg.envs.push(cri::KeyValue { key: "GREETING".into(), value: "hi there".into() });
    ccfg.working_dir = "/tmp".into();
    let c = f.cri.run(&pod, ccfg, &cfg).await;

    let r = f.cri.exec(&c, &["echo", "hi"], 10).await.unwrap();
    assert_eq!((r.stdout.as_slice(), r.exit_code), (b"hi\n".as_slice(), 0));
    let r = f.cri.exec(&c, &["sh", "-c", "echo to-err >&2; echo $GREETING; pwd; exit 7"], 10).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&r.stdout), "hi there\n/tmp\n");
    assert_eq!(r.stderr, b"to-err\n");
    assert_eq!(r.exit_code, 7);
    // The exec runs in the container's PID namespace and cgroup.
    let pid_ns = f.cri.sh(&c, "readlink /proc/self/ns/pid").await;
    assert_eq!(pid_ns, f.cri.sh(&c, "readlink /proc/1/ns/pid").await);
    let cgroup = f.cri.sh(&c, "cat /proc/self/cgroup").await;
    assert_eq!(cgroup, f.cri.sh(&c, "cat /proc/1/cgroup").await);

    let t = Instant::now();
    let e = f.cri.exec(&c, &["sleep", "30"], 1).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded);
    assert!(t.elapsed() < Duration::from_secs(10));
    // The timed-out command is gone.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!f.cri.sh(&c, "ps -o args").await.contains("sleep 30"));

    let e = f.cri.exec(&c, &["no-such-command"], 10).await.unwrap_err();
    assert!(e.message().contains("executable file not found"), "{}", e.message());
    // Large output is returned whole (below the 16 MiB cap).
    let r = f.cri.exec(&c, &["sh", "-c", "head -c 3000000 /dev/zero"], 30).await.unwrap();
    assert_eq!(r.stdout.len(), 3_000_000);

    f.cri.stop(&c, 0).await.unwrap();
    let e = f.cri.exec(&c, &["true"], 10).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    f.cri.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_user_and_status_fields() {
    let mut f = Fixture::start().await;
    let image = berth_e2e::oci::busybox_image(&berth_e2e::oci::ImageSettings { user: "user".into(), ..Default::default() });
    f.registry.push("busybox", "user", &image).await;
    let user_ref = f.registry.reference("busybox", "user");
    f.cri.pull(&user_ref).await.unwrap();
    let cfg = f.pod("users");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let mut ccfg = berth_e2e::container_config("named", &user_ref, &["sleep", "1000"]);
    ccfg.labels.insert("app".into(), "web".into());
    ccfg.annotations.insert("note".into(), "x".into());
    let c = f.cri.run(&pod, ccfg, &cfg).await;
    assert_eq!(f.cri.sh(&c, "id").await.trim(), "uid=1000(user) gid=1000(user) groups=1000(user),2000(extra)");
    let s = f.cri.status(&c).await;
    assert_eq!(s.state, RUNNING);
    assert_eq!(s.image.as_ref().unwrap().image, user_ref);
    assert_eq!(s.image_id, image.id());
    assert!(s.image_ref.contains("@sha256:"), "{}", s.image_ref);
    assert_eq!(s.labels["app"], "web");
    assert_eq!(s.annotations["note"], "x");
    let user = s.user.unwrap().linux.unwrap();
    assert_eq!((user.uid, user.gid, user.supplemental_groups), (1000, 1000, vec![1000, 2000]));
    assert_eq!(s.metadata.unwrap().name, "named");

    // Lists with filters.
    let list = |filter: cri::ContainerFilter| cri::ListContainersRequest { filter: Some(filter) };
    let by_label = f
        .cri
        .runtime
        .list_containers(list(cri::ContainerFilter {
            label_selector: [("app".to_string(), "web".to_string())].into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_label.containers.len(), 1);
    let by_prefix =
        f.cri.runtime.list_containers(list(cri::ContainerFilter { id: c[..10].into(), ..Default::default() })).await.unwrap().into_inner();
    assert_eq!(by_prefix.containers[0].id, c);
    let exited = f
        .cri
        .runtime
        .list_containers(list(cri::ContainerFilter { state: Some(cri::ContainerStateValue { state: EXITED }), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert!(exited.containers.is_empty());
    // Prefix ids work on every RPC.
    assert_eq!(f.cri.status(&c[..12]).await.id, c);
    let pods = f
        .cri
        .runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: Some(cri::PodSandboxFilter { id: pod[..8].into(), ..Default::default() }) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pods.items.len(), 1);
    let ps = f
        .cri
        .runtime
        .pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: true })
        .await
        .unwrap()
        .into_inner();
    let st = ps.status.unwrap();
    assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(st.metadata.unwrap().name, "users");
    assert!(ps.info["info"].contains("netns"));

    // Removing the image while the container uses it keeps its layers.
    f.cri.remove_image(&user_ref).await.unwrap();
    assert_eq!(f.cri.sh(&c, "echo still-here").await.trim(), "still-here");
    f.cri.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_removal_leaves_nothing_behind() {
    let mut f = Fixture::start().await;
    let cfg = f.pod("tidy");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let c1 = f.cri.run(&pod, f.container("one", &["sleep", "1000"]), &cfg).await;
    let c2 = f.cri.run(&pod, f.container("two", &["sh", "-c", "sleep 1000 & sleep 1000"]), &cfg).await;
    let _created = f.cri.create(&pod, f.container("never-started", &["true"]), &cfg).await.unwrap();
    let pids: Vec<i32> = {
        let mut v = Vec::new();
        for c in [&c1, &c2] {
            v.push(verbose_info(&mut f, c).await["pid"].as_i64().unwrap() as i32);
        }
        v
    };
    assert!(!berth_e2e::cgroups_named(&pod).is_empty(), "the pod has cgroups while it runs");
    f.cri.runtime.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    let st = f
        .cri
        .runtime
        .pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.status.unwrap().state, cri::PodSandboxState::SandboxNotready as i32);
    assert_eq!(f.cri.status(&c1).await.state, EXITED);
    f.cri.runtime.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();

    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(&pod), "pod mounts left:\n{mountinfo}");
    assert!(berth_e2e::cgroups_named(&pod).is_empty(), "pod cgroups left: {:?}", berth_e2e::cgroups_named(&pod));
    for pid in pids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "process {pid} left");
    }
    for dir in [f.berthd.paths.state.join("pods"), f.berthd.paths.state.join("containers"), f.berthd.paths.root.join("containers")] {
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "{} not empty", dir.display());
    }
    // What the removals moved to the trash is deleted soon after.
    let deadline = Instant::now() + Duration::from_secs(10);
    for trash in [f.berthd.paths.state.join("trash"), f.berthd.paths.root.join("trash")] {
        while std::fs::read_dir(&trash).unwrap().count() > 0 {
            assert!(Instant::now() < deadline, "{} not emptied", trash.display());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let containers = f.cri.runtime.list_containers(cri::ListContainersRequest::default()).await.unwrap().into_inner().containers;
    assert!(containers.is_empty());
    // Idempotent: again, and for ids never seen.
    f.cri.runtime.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    f.cri.runtime.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await.unwrap();
    f.cri.runtime.remove_container(cri::RemoveContainerRequest { container_id: "a".repeat(64) }).await.unwrap();
    let e =
        f.cri.runtime.pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: pod.clone(), verbose: false }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

/// Ends the process it holds, by its pid, however the test ends.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// berth keeps every pod mount (namespace pins, /dev/shm) in its pods dir,
/// a private mount of its own, so that a container's init can set them all
/// aside at once. A mount namespace made from the node's while a pod runs
/// (a service's private /tmp, an `unshare -m`) still copies them; removing
/// the pod must reach those copies too, or a copy keeps the pod's network
/// namespace alive with nothing left that would ever remove it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_pod_reaches_the_copies_of_its_mounts_in_other_mount_namespaces() {
    let mut f = Fixture::start().await;
    let cfg = f.pod("copied");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let c = f.cri.run(&pod, f.container("sleeper", &["sleep", "1000"]), &cfg).await;
    let netns = ns_of(&mut f, &c, "net").await;
    assert!(netns.starts_with("net:["), "{netns}");
    let copy = Reaped(
        std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "unchanged", "sleep", "1000"])
            .spawn()
            .expect("unshare from util-linux"),
    );
    let copy_mounts = format!("/proc/{}/mountinfo", copy.0.id());
    let own_ns = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_link(format!("/proc/{}/ns/mnt", copy.0.id())).ok().is_none_or(|ns| ns == own_ns) {
        assert!(Instant::now() < deadline, "unshare never made its mount namespace");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pods_dir = std::fs::canonicalize(f.berthd.paths.state.join("pods")).unwrap().display().to_string();
    let node_mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let pods_mount = node_mounts.lines().find(|l| l.split(' ').nth(4) == Some(pods_dir.as_str()));
    assert!(
        pods_mount.is_some_and(|l| !l.contains("shared:") && !l.contains("master:")),
        "{pods_dir} should be a private mount of its own:\n{node_mounts}"
    );
    let held = std::fs::read_to_string(&copy_mounts).unwrap();
    assert!(held.contains(&pod) && held.contains(&netns), "the copy should hold the pod's pins while it runs:\n{held}");

    f.cri.remove_pod(&pod).await;
    let left: Vec<String> = std::fs::read_to_string(&copy_mounts)
        .unwrap()
        .lines()
        .filter(|l| l.contains(&pod) || l.contains(&netns))
        .map(str::to_string)
        .collect();
    assert!(left.is_empty(), "the pod's mounts stayed in the other mount namespace, holding {netns}:\n{}", left.join("\n"));
    let own = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!own.contains(&netns) && !own.contains(&pod), "pod mounts left on the node:\n{own}");
}

/// ContainerStatus's verbose `info` of container `id`.
async fn verbose_info(f: &mut Fixture, id: &str) -> serde_json::Value {
    let r = f
        .cri
        .runtime
        .container_status(cri::ContainerStatusRequest { container_id: id.to_string(), verbose: true })
        .await
        .unwrap()
        .into_inner();
    serde_json::from_str(&r.info["info"]).unwrap()
}

async fn run_pod_with_handler(f: &mut Fixture, cfg: &cri::PodSandboxConfig, handler: &str) -> String {
    let req = cri::RunPodSandboxRequest { config: Some(cfg.clone()), runtime_handler: handler.into() };
    f.cri.runtime.run_pod_sandbox(req).await.unwrap().into_inner().pod_sandbox_id
}

async fn monitor_pid(f: &mut Fixture, id: &str) -> u32 {
    verbose_info(f, id).await["monitorPid"].as_i64().unwrap() as u32
}

/// Monitors forked by the zygote (the default) are what spawned ones were:
/// the same command line (start-up garbage collection and operators find a
/// container's monitor by it), the same binary, not berthd's children (a
/// forked one is the zygote's, and leaves no zombie when it ends); a zygote
/// that died is replaced at the next create. With `monitor_zygote =
/// false` there is none and each monitor is spawned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitors_forked_by_the_zygote_are_what_spawned_ones_were() {
    for zygote in [true, false] {
        let mut f = Fixture::start_with_config(&format!("[runtime]\nmonitor_zygote = {zygote}\n")).await;
        let cfg = f.pod("zygote");
        let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
        let c1 = f.cri.run(&pod, f.container("one", &["sleep", "1000"]), &cfg).await;
        let monitor = monitor_pid(&mut f, &c1).await;
        let args = berth_e2e::cmdline(monitor);
        let bundle = f.berthd.paths.state.join("containers").join(&c1).display().to_string();
        // Once the init is forked, the monitor runs its loop in the small
        // binary next to berth-monitor (runtime/src/monitor/handoff.rs).
        assert!(args.first().is_some_and(|a| a.ends_with("/berth-monitor-loop")), "zygote={zygote}: {args:?}");
        assert_eq!(args[1..6], ["monitor", "--id", c1.as_str(), "--bundle", bundle.as_str()], "zygote={zygote}");
        let exe = std::fs::read_link(format!("/proc/{monitor}/exe")).unwrap();
        let built = berth_e2e::berthd_bin().with_file_name("berth-monitor-loop");
        assert!(berth_e2e::runs_through_bind(&exe, &built, &f.berthd.paths.state), "{exe:?}");
        assert!(!berth_e2e::child_pids(f.berthd.pid()).contains(&monitor), "the monitor left berthd's process tree");
        let zygotes = berth_e2e::zygotes(f.berthd.pid());
        assert_eq!(zygotes.len(), usize::from(zygote), "zygote={zygote}: {zygotes:?}");
        assert_eq!(f.cri.sh(&c1, "echo through-exec").await.trim(), "through-exec");
        if zygote {
            // Fault injection: the zygote dies; the next create starts another.
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(zygotes[0] as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
            let c2 = f.cri.run(&pod, f.container("two", &["sleep", "1000"]), &cfg).await;
            assert_eq!(f.cri.status(&c2).await.state, RUNNING);
            assert_eq!(berth_e2e::cmdline(monitor_pid(&mut f, &c2).await)[1..4], ["monitor", "--id", c2.as_str()]);
            let now = berth_e2e::zygotes(f.berthd.pid());
            assert!(now.len() == 1 && now[0] != zygotes[0], "a new zygote: {now:?} (the old one was {})", zygotes[0]);
            let log = f.berthd.log();
            assert!(!log.contains("spawned instead"), "the retry with a new zygote should have served the create:\n{log}");
            // A forked monitor is the zygote's child, and reaped once it ends:
            // no zombie stays behind while the zygote lives.
            let m2 = monitor_pid(&mut f, &c2).await;
            assert!(berth_e2e::child_pids(now[0]).contains(&m2), "the second monitor is the zygote {}'s child", now[0]);
            f.cri.remove_pod(&pod).await;
            let gone = std::time::Instant::now();
            while std::path::Path::new(&format!("/proc/{m2}")).exists() {
                let stat = std::fs::read_to_string(format!("/proc/{m2}/stat")).unwrap_or_default();
                assert!(gone.elapsed() < Duration::from_secs(10), "monitor {m2} not reaped after its container went: {stat}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            continue;
        }
        f.cri.remove_pod(&pod).await;
    }
}

/// A container's monitor killed without a word: the container is reported
/// EXITED with reason Unknown, by the exit watcher and without a listing
/// first, and its status says why; a running neighbour stays RUNNING, as
/// read from its monitor's life without asking the monitor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_whose_monitor_is_killed_is_reported_lost() {
    let mut f = Fixture::start().await;
    let cfg = f.pod("lostmonitor");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let victim = f.cri.run(&pod, f.container("victim", &["sleep", "1000"]), &cfg).await;
    let neighbour = f.cri.run(&pod, f.container("neighbour", &["sleep", "1000"]), &cfg).await;
    let monitor = monitor_pid(&mut f, &victim).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(monitor as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    // Only the events stream and PodSandboxStatus are read: the watcher must
    // have folded the loss in by itself.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let answer = f.cri.pod_status(&pod, false).await;
        let s = answer.containers_statuses.iter().find(|s| s.id == victim).cloned().expect("the victim is the pod's");
        if s.state == cri::ContainerState::ContainerExited as i32 {
            break s;
        }
        assert!(Instant::now() < deadline, "the killed monitor's container is still {}", s.state);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((status.exit_code, status.reason.as_str()), (255, "Unknown"));
    assert!(status.message.contains("monitor exited without recording a status"), "{}", status.message);
    assert_eq!(f.cri.status(&neighbour).await.state, RUNNING);
    assert_eq!(f.cri.sh(&neighbour, "echo alive").await.trim(), "alive");
    f.cri.remove_pod(&pod).await;
}

/// An operator installs a new build over the monitor binary while berthd
/// runs (a new inode, as install(1) and package managers do): the next
/// container's monitor is the new build, from a new zygote, as a spawned one
/// would be; running monitors keep the build they started with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_binary_installed_anew_serves_the_next_create() {
    let bin_dir = tempfile::tempdir().unwrap();
    let monitor = bin_dir.path().join("berth-monitor-copy");
    let built = berth_e2e::berthd_bin().with_file_name("berth-monitor");
    std::fs::copy(&built, &monitor).unwrap();
    let config = format!("[runtimes.copy]\nmonitor_path = \"{}\"\n", monitor.display());
    let mut f = Fixture::start_with_config(&config).await;
    let cfg = f.pod("reinstalled");
    let pod = run_pod_with_handler(&mut f, &cfg, "copy").await;
    let c1 = f.cri.run(&pod, f.container("one", &["sleep", "1000"]), &cfg).await;
    let first = berth_e2e::zygotes(f.berthd.pid());
    assert_eq!(first.len(), 1, "{first:?}");
    let m1 = monitor_pid(&mut f, &c1).await;
    let state = f.berthd.paths.state.clone();
    assert!(berth_e2e::runs_through_bind(&std::fs::read_link(format!("/proc/{m1}/exe")).unwrap(), &monitor, &state));

    let staged = bin_dir.path().join("berth-monitor-copy.new");
    std::fs::copy(&built, &staged).unwrap();
    std::fs::rename(&staged, &monitor).unwrap();
    let c2 = f.cri.run(&pod, f.container("two", &["sleep", "1000"]), &cfg).await;
    let m2 = monitor_pid(&mut f, &c2).await;
    assert!(berth_e2e::runs_through_bind(&std::fs::read_link(format!("/proc/{m2}/exe")).unwrap(), &monitor, &state), "the new build");
    let old = std::fs::read_link(format!("/proc/{m1}/exe")).unwrap().display().to_string();
    assert!(old.ends_with(" (deleted)"), "the first monitor keeps its build: {old}");
    let now = berth_e2e::zygotes(f.berthd.pid());
    assert!(now.len() == 1 && now[0] != first[0], "one new zygote: {now:?} (was {first:?})");
    f.cri.remove_pod(&pod).await;
}

/// The monitor's loop binary fails as soon as it runs (a build that does
/// not match berth-monitor's, a broken install): CreateContainer fails with
/// what the loop said, and neither a monitor nor the container's init is
/// left behind (the init dies with its monitor); the pod takes no harm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_loop_that_fails_at_once_fails_the_create_and_leaves_no_process() {
    use std::os::unix::fs::PermissionsExt;
    let bin_dir = tempfile::tempdir().unwrap();
    let monitor = bin_dir.path().join("berth-monitor");
    std::fs::copy(berth_e2e::berthd_bin().with_file_name("berth-monitor"), &monitor).unwrap();
    let broken = bin_dir.path().join("berth-monitor-loop");
    std::fs::write(&broken, "#!/bin/sh\necho 'loop refused its command line' >&2\nexit 2\n").unwrap();
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = format!("[runtimes.broken]\nmonitor_path = \"{}\"\n", monitor.display());
    let mut f = Fixture::start_with_config(&config).await;
    let cfg = f.pod("broken-loop");
    let pod = run_pod_with_handler(&mut f, &cfg, "broken").await;
    let e = f.cri.create(&pod, f.container("c", &["sleep", "1000"]), &cfg).await.unwrap_err();
    assert!(e.message().contains("loop refused its command line"), "{e:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        // The init is a fork of the monitor, with its command line.
        let left: Vec<String> =
            berth_e2e::truth::processes(&f).into_iter().map(|(_, cmd)| cmd).filter(|c| c.contains(" monitor --id ")).collect();
        if left.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "left behind: {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed = f.cri.runtime.list_containers(cri::ListContainersRequest::default()).await.unwrap().into_inner().containers;
    assert!(listed.is_empty(), "{listed:?}");
    f.cri.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_pods_and_bad_requests() {
    let mut f = Fixture::start().await;
    let cfg = f.pod("dup");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let e = f.cri.run_pod(cfg.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    assert!(e.message().contains(&pod), "{}", e.message());
    // A new attempt is a new sandbox.
    let mut next = cfg.clone();
    next.metadata.as_mut().unwrap().attempt = 1;
    let pod2 = f.cri.run_pod(next).await.unwrap();
    assert_ne!(pod, pod2);

    let mut no_name = cfg.clone();
    no_name.metadata.as_mut().unwrap().name.clear();
    let e = f.cri.run_pod(no_name).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("metadata.name"), "{}", e.message());

    let e = f.cri.create(&"0".repeat(64), f.container("x", &["true"]), &cfg).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = f.cri.create(&pod, berth_e2e::container_config("x", "not-pulled:1", &["true"]), &cfg).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let mut bad_mount = f.container("badmount", &["true"]);
    bad_mount.mounts.push(cri::Mount { container_path: "/data".into(), host_path: "/definitely/not/here".into(), ..Default::default() });
    let e = f.cri.create(&pod, bad_mount, &cfg).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("mounts[0].host_path"), "{}", e.message());
    let e = f.cri.runtime.container_status(cri::ContainerStatusRequest { container_id: String::new(), verbose: false }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    f.cri.remove_pod(&pod).await;
    f.cri.remove_pod(&pod2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_survive_a_berthd_crash() {
    let mut f = Fixture::start().await;
    let cfg = f.pod("survivor");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let long = f.cri.run(&pod, f.container("long", &["sh", "-c", "echo started; sleep 1000"]), &cfg).await;
    let short = f.cri.run(&pod, f.container("short", &["sh", "-c", "sleep 1; echo bye; exit 5"]), &cfg).await;
    f.berthd.kill9();
    // While berthd is away, "short" exits.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    f.berthd.restart().await;
    f.cri = f.berthd.cri().await;
    assert_eq!(f.cri.status(&long).await.state, RUNNING);
    let s = f.cri.status(&short).await;
    assert_eq!((s.state, s.exit_code, s.reason.as_str()), (EXITED, 5, "Error"));
    let log = std::fs::read_to_string(&s.log_path).unwrap();
    assert!(log.contains("stdout F bye"), "{log}");
    // The running one is still fully manageable.
    assert_eq!(f.cri.sh(&long, "echo alive").await.trim(), "alive");
    f.cri.stop(&long, 1).await.unwrap();
    assert_eq!(f.cri.status(&long).await.state, EXITED);
    f.cri.remove_pod(&pod).await;
}

/// A container's mount namespace starts from berth's mount template, not
/// from a copy of every mount of the node (each pod's pins and /dev/shm
/// among them, so that a start got slower the more pods ran): the init
/// names the stage after where its namespace came from, and the template,
/// pinned in berth's state dir, is found again by a berthd restarted after
/// a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_start_from_the_mount_template() {
    let mut f = Fixture::start().await;
    let cfg = f.pod("template");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let last_created = |f: &Fixture| f.berthd.log().lines().rev().find(|l| l.contains("container created")).unwrap_or_default().to_string();
    let a = f.cri.run(&pod, f.container("a", &["sh", "-c", "echo here > /dev/shm/a; sleep 1000"]), &cfg).await;
    let line = last_created(&f);
    assert!(line.contains("init_mountns_template=") && !line.contains("init_mountns_node="), "{line}");
    let pin = f.berthd.paths.state.join("mntns").join("template");
    let ino = |p: &std::path::Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let pinned = ino(&pin);
    f.berthd.kill9();
    f.berthd.restart().await;
    f.cri = f.berthd.cri().await;
    assert_eq!(ino(&pin), pinned, "the restarted berthd made a template anew");
    let b = f.cri.run(&pod, f.container("b", &["sleep", "1000"]), &cfg).await;
    let line = last_created(&f);
    assert!(line.contains("init_mountns_template="), "{line}");
    // What came along works as it did from the node's copy: the pod's
    // /dev/shm is shared, the spec's files are bound.
    assert_eq!(f.cri.sh(&b, "cat /dev/shm/a; grep -c . /etc/hosts >/dev/null && echo hosts").await, "here\nhosts\n");
    assert_eq!(f.cri.sh(&a, "echo alive").await.trim(), "alive");
    f.cri.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_events_stream_the_lifecycle() {
    use futures::StreamExt;
    let mut f = Fixture::start().await;
    let mut events = f.cri.runtime.get_container_events(cri::GetEventsRequest {}).await.unwrap().into_inner();
    let cfg = f.pod("events");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let c = f.cri.run(&pod, f.container("ev", &["sleep", "1000"]), &cfg).await;
    f.cri.stop(&c, 0).await.unwrap();
    f.cri.runtime.remove_container(cri::RemoveContainerRequest { container_id: c.clone() }).await.unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 4 {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.next()).await.expect("event").unwrap().unwrap();
        assert_eq!(ev.container_id, c);
        assert_eq!(ev.pod_sandbox_status.as_ref().unwrap().id, pod);
        kinds.push(ev.container_event_type);
    }
    use cri::ContainerEventType as T;
    assert_eq!(
        kinds,
        vec![
            T::ContainerCreatedEvent as i32,
            T::ContainerStartedEvent as i32,
            T::ContainerStoppedEvent as i32,
            T::ContainerDeletedEvent as i32
        ]
    );
    f.cri.remove_pod(&pod).await;
}

/// Polls (bounded) until `holds` does; false if it never did.
async fn eventually(mut holds: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..100 {
        if holds().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// A container without a PID namespace of its own (the pod's shared one, or
/// the node's): when its main process exits, what it left running goes too,
/// as the kernel does for a namespace's init and containerd for these.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_sharing_a_pid_namespace_leaves_no_process_when_it_exits() {
    let mut f = Fixture::start().await;
    let with_pid = |mode: cri::NamespaceMode| {
        berth_e2e::security(|s| s.namespace_options = Some(cri::NamespaceOption { pid: mode as i32, ..Default::default() }))
    };
    // A unique duration names the leftover on the node.
    let secs = 100_000 + std::process::id() % 100_000;

    // The pod's shared namespace: a sibling sees what the exited one left.
    let cfg = f.pod_with_pid("pidleft", cri::NamespaceMode::Pod);
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let mut watcher = f.container("watcher", &["sleep", "1000"]);
    watcher.linux = with_pid(cri::NamespaceMode::Pod);
    let watcher = f.cri.run(&pod, watcher, &cfg).await;
    // The parent ends when the test says so.
    let wait_go = "until [ -e /tmp/go ]; do sleep 0.05; done";
    let mut parent = f.container("parent", &["sh", "-c", &format!("sleep {secs} & {wait_go}; exit 3")]);
    parent.linux = with_pid(cri::NamespaceMode::Pod);
    let parent = f.cri.run(&pod, parent, &cfg).await;
    // The shell forks the child once it runs, after StartContainer answered.
    let child = format!("sleep {secs}");
    assert!(eventually(async || f.cri.sh(&watcher, "ps -o args").await.contains(&child)).await, "the child runs while its parent does");
    // The exec is a process of the container too, and may be killed with
    // the rest before it reports: its exit code is not checked.
    let _ = f.cri.exec(&parent, &["touch", "/tmp/go"], 10).await;
    let s = f.cri.wait_exited(&parent, Duration::from_secs(10)).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (3, "Error"));
    assert!(
        f.cri.wait_process_gone(&watcher, &child).await,
        "the exited container's child still runs: {}",
        f.cri.sh(&watcher, "ps -o pid,args").await
    );
    assert!(f.cri.sh(&watcher, "ps -o args").await.contains("sleep 1000"), "a sibling container is not touched");
    // The monitor says so in its log, with the container's id.
    let log = std::fs::read_to_string(f.berthd.paths.state.join("containers").join(&parent).join("monitor.log")).unwrap();
    assert!(log.contains("processes left in the container's cgroup") && log.contains("cgroup empty: true"), "{log}");
    f.cri.remove_pod(&pod).await;

    // The node's namespace: the leftover would be a process of the node.
    let cfg = f.pod_with_pid("hostleft", cri::NamespaceMode::Node);
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let mut parent = f.container("parent", &["sh", "-c", &format!("sleep {} & {wait_go}", secs + 1)]);
    parent.linux = with_pid(cri::NamespaceMode::Node);
    let parent = f.cri.run(&pod, parent, &cfg).await;
    let on_node = || {
        let want = ["sleep".to_string(), (secs + 1).to_string()];
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
            .any(|pid| berth_e2e::cmdline(pid) == want)
    };
    assert!(eventually(async || on_node()).await, "the child runs on the node while its parent does");
    let _ = f.cri.exec(&parent, &["touch", "/tmp/go"], 10).await;
    let s = f.cri.wait_exited(&parent, Duration::from_secs(10)).await;
    assert_eq!(s.exit_code, 0);
    assert!(eventually(async || !on_node()).await, "the exited container's child still runs on the node");
    f.cri.remove_pod(&pod).await;
}

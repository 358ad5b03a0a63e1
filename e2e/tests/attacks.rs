//! What a hostile tenant tries on a node, performed against a real berthd
//! with the security contexts kubelet sends by default. Each test is the
//! attack itself and fails if it works; each failed on berth before the fix
//! it guards.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_e2e::oci::{self, Compression, ImageSettings, LayerBuilder};
use berth_e2e::{cri, Fixture};

/// The image an attacker ships: world-usable device nodes (loop0, fuse), a
/// copy of busybox (as `grep`) with every capability inheritable in its
/// file capabilities, and the syscall probe.
async fn push_attack_image(f: &Fixture) -> String {
    let busybox = std::fs::read(oci::BUSYBOX).expect("busybox");
    let caps = oci::file_caps(0, 0xff_ffff_ffff);
    let mut layer = LayerBuilder::new();
    layer
        .busybox()
        .dir("attack", 0o755)
        .block_device("attack/loop0", 7, 0, 0o666)
        .char_device("attack/fuse", 10, 229)
        .dir("opt", 0o755)
        .dir("opt/caps", 0o755)
        .file_with_xattrs("opt/caps/grep", &busybox, 0o755, &[("security.capability", &caps)])
        .file("bin/probe", oci::probe_binary(), 0o755)
        .file("bin/suprobe", oci::probe_binary(), 0o4755);
    let image = oci::image(vec![layer.build(Compression::Gzip)], &ImageSettings::default());
    f.registry.push("attack", "v1", &image).await;
    let reference = f.registry.reference("attack", "v1");
    f.cri.clone().pull(&reference).await.expect("pull the attack image");
    reference
}

/// The container's cgroup (relative), from the verbose status.
async fn cgroup_of(f: &mut Fixture, id: &str) -> String {
    let req = cri::ContainerStatusRequest { container_id: id.into(), verbose: true };
    let info = f.cri.runtime.container_status(req).await.expect("ContainerStatus").into_inner().info;
    let v: serde_json::Value = serde_json::from_str(&info["info"]).expect("info");
    v["cgroup"].as_str().expect("cgroup").to_string()
}

/// The v1 device controller's list for a container, when this node has one.
async fn devices_list(f: &mut Fixture, id: &str) -> Option<String> {
    let cg = cgroup_of(f, id).await;
    let mount = berth_e2e::cgroup_mounts().into_iter().find(|m| m.join("devices.list").exists())?;
    Some(std::fs::read_to_string(mount.join(cg).join("devices.list")).expect("devices.list"))
}

/// Runs `script` in the container; stdout and stderr together.
async fn run(f: &mut Fixture, id: &str, script: &str) -> String {
    let r = f.cri.exec(id, &["sh", "-c", script], 30).await.expect("ExecSync");
    format!("{}{}", String::from_utf8_lossy(&r.stdout), String::from_utf8_lossy(&r.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_cgroup_denies_what_a_container_was_not_given() {
    let mut f = Fixture::start().await;
    let cfg = f.pod("devices");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let root = f.cri.run(&pod, f.container("root", &["sleep", "1000"]), &cfg).await;

    // A root container may make nodes (CAP_MKNOD, as on containerd) but not
    // open one it was not given: loop0 would be a host disk on a real node.
    for (node, kind, major, minor) in [("loop0", "b", 7, 0), ("fuse", "c", 10, 229)] {
        let out = run(&mut f, &root, &format!("mknod /dev/{node} {kind} {major} {minor} && exec 3</dev/{node} && echo opened")).await;
        assert!(!out.contains("opened") && out.contains("not permitted"), "{node}: {out}");
    }
    // The nodes it was given still work.
    assert_eq!(run(&mut f, &root, "head -c 3 /dev/zero | wc -c; echo x > /dev/null && echo null-ok").await, "3\nnull-ok\n");
    // A node made on the rootfs cannot be used at all: it is mounted nodev.
    let out = run(&mut f, &root, "mknod /tmp/null c 1 3 && echo x > /tmp/null && echo wrote").await;
    assert!(!out.contains("wrote") && out.contains("denied"), "{out}");
    if let Some(list) = devices_list(&mut f, &root).await {
        assert!(!list.contains("a *:* rwm") && list.contains("c 1:3 rwm") && list.contains("b *:* m"), "{list}");
    }

    // Privileged: every device, as containerd gives it.
    let mut c = f.container("priv", &["sleep", "1000"]);
    c.linux = berth_e2e::security(|s| s.privileged = true);
    let privileged = f.cri.run(&pod, c, &cfg).await;
    if let Some(list) = devices_list(&mut f, &privileged).await {
        assert_eq!(list.trim(), "a *:* rwm");
    }
    assert!(run(&mut f, &privileged, "mknod /tmp/n c 1 3 && echo x > /tmp/n && echo wrote").await.contains("wrote"));
    f.cri.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_device_nodes_reach_neither_containers_nor_host_users() {
    for unpack_nodes in [false, true] {
        // The default first, then a node that allows unpacking them.
        let config = if unpack_nodes { "[image]\nunpack_device_nodes = true\n" } else { "" };
        let mut f = Fixture::start_with_config(config).await;
        let image = push_attack_image(&f).await;
        // The stores are root's alone.
        let root = f.berthd.paths.root.clone();
        for dir in [root.clone(), root.join("snapshots"), root.join("content"), root.join("containers")] {
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", dir.display());
        }
        // The node as unpacked on the host: absent by default; where the
        // node allows them, no local user reaches it.
        let nodes = find_named(&root.join("snapshots"), "loop0");
        if unpack_nodes {
            assert_eq!(nodes.len(), 1, "{nodes:?}");
            let out =
                std::process::Command::new(oci::BUSYBOX).args(["head", "-c", "1"]).arg(&nodes[0]).uid(65534).gid(65534).output().unwrap();
            assert!(!out.status.success(), "a host user opened the image's node");
            assert!(String::from_utf8_lossy(&out.stderr).contains("denied"), "{}", String::from_utf8_lossy(&out.stderr));
        } else {
            assert!(nodes.is_empty(), "{nodes:?}");
        }
        // A non-root container with every capability dropped cannot use it either.
        let cfg = f.pod("imgdev");
        let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
        let mut c = berth_e2e::container_config("user", &image, &["sleep", "1000"]);
        c.linux = berth_e2e::security(|s| {
            s.run_as_user = Some(cri::Int64Value { value: 1000 });
            s.capabilities = Some(cri::Capability { drop_capabilities: vec!["ALL".into()], ..Default::default() });
        });
        let user = f.cri.run(&pod, c, &cfg).await;
        for node in ["loop0", "fuse"] {
            let out = run(&mut f, &user, &format!("exec 3</attack/{node} && echo opened")).await;
            assert!(!out.contains("opened"), "{node}: {out}");
        }
        f.cri.remove_pod(&pod).await;
    }
}

fn find_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let t = e.file_type().unwrap();
        if e.file_name() == name {
            out.push(e.path());
        } else if t.is_dir() {
            out.extend(find_named(&e.path(), name));
        }
    }
    out
}

/// A field of a process status inside the container.
async fn status_field(f: &mut Fixture, id: &str, file: &str, field: &str) -> String {
    let out = f.cri.sh(id, &format!("grep '^{field}:' {file}")).await;
    out.split_whitespace().nth(1).unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inheritable_capabilities_are_empty_so_file_capabilities_give_nothing() {
    let mut f = Fixture::start().await;
    let image = push_attack_image(&f).await;
    let cfg = f.pod("capinh");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let root = f.cri.run(&pod, berth_e2e::container_config("root", &image, &["sleep", "1000"]), &cfg).await;
    assert_eq!(status_field(&mut f, &root, "/proc/self/status", "CapInh").await, "0000000000000000");
    let mut c = berth_e2e::container_config("user", &image, &["sleep", "1000"]);
    c.linux = berth_e2e::security(|s| s.run_as_user = Some(cri::Int64Value { value: 1000 }));
    let user = f.cri.run(&pod, c, &cfg).await;
    assert_eq!(status_field(&mut f, &user, "/proc/self/status", "CapInh").await, "0000000000000000");
    // CVE-2022-24769: a binary whose file capabilities are all inheritable
    // gets permitted what the process has inheritable: nothing.
    let out = f.cri.sh(&user, "/opt/caps/grep -E '^Cap(Prm|Eff):' /proc/self/status").await;
    assert_eq!(out, "CapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n");
    f.cri.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_pid_init_shows_nothing_of_the_host() {
    let mut f = Fixture::start().await;
    let marker = f.berthd.dir().join("host-marker");
    std::fs::write(&marker, "host secret\n").unwrap();
    let cfg = f.pod_with_pid("pidinit", cri::NamespaceMode::Pod);
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let mut c = f.container("tracer", &["sleep", "1000"]);
    c.linux = berth_e2e::security(|s| {
        s.namespace_options = Some(cri::NamespaceOption { pid: 0, ..Default::default() });
        s.capabilities = Some(cri::Capability { add_capabilities: vec!["SYS_PTRACE".into()], ..Default::default() });
    });
    let tracer = f.cri.run(&pod, c, &cfg).await;
    assert!(f.cri.sh(&tracer, "cat /proc/1/cmdline | tr '\\0' ' '").await.contains("pod-init"));
    let out = run(&mut f, &tracer, &format!("cat /proc/1/root{}", marker.display())).await;
    assert!(!out.contains("host secret"), "the host's file through /proc/1/root: {out}");
    assert_eq!(run(&mut f, &tracer, "ls -A /proc/1/root/ /proc/1/fd/").await, "/proc/1/fd/:\n\n/proc/1/root/:\n");
    for (field, want) in [
        ("CapEff", "0000000000000000"),
        ("CapPrm", "0000000000000000"),
        ("CapBnd", "0000000000000000"),
        ("NoNewPrivs", "1"),
        ("Seccomp", "2"),
    ] {
        assert_eq!(status_field(&mut f, &tracer, "/proc/1/status", field).await, want, "{field}");
    }
    assert_eq!(status_field(&mut f, &tracer, "/proc/1/status", "Uid").await, "65535");
    // What runs as PID 1 is berth-pause: a few pages, not a forked berth-monitor.
    assert!(run(&mut f, &tracer, "readlink /proc/1/exe").await.trim().ends_with("/berth-pause"), "pod init exe");
    let rss_kb: u64 = status_field(&mut f, &tracer, "/proc/1/status", "VmRSS").await.trim_end_matches("kB").trim().parse().unwrap();
    assert!(rss_kb < 256, "the pod init holds {rss_kb} kB");
    f.cri.remove_pod(&pod).await;
}

/// The RuntimeDefault seccomp profile.
fn runtime_default() -> Option<cri::SecurityProfile> {
    Some(cri::SecurityProfile { profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32, ..Default::default() })
}

/// The privilege fields of a /proc/<pid>/status text.
fn privileges(status: &str) -> Vec<String> {
    let fields = ["Uid", "Gid", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"];
    status
        .lines()
        .filter(|l| fields.iter().any(|f| l.starts_with(&format!("{f}:"))))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// A sibling allowed to ptrace (CAP_SYS_PTRACE, a shared PID namespace) can
/// attach to a Created container's init: that init must hold no more than
/// the container's own process will (user, capabilities, no_new_privs,
/// seccomp), or the sibling borrows the rest before StartContainer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_containers_init_holds_no_more_than_its_workload() {
    let mut f = Fixture::start().await;
    let cfg = f.pod_with_pid("created", cri::NamespaceMode::Pod);
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let shared = || cri::NamespaceOption { pid: cri::NamespaceMode::Pod as i32, ..Default::default() };
    let mut c = f.container("tracer", &["sleep", "1000"]);
    c.linux = berth_e2e::security(|s| {
        s.namespace_options = Some(shared());
        s.capabilities = Some(cri::Capability { add_capabilities: vec!["SYS_PTRACE".into()], ..Default::default() });
    });
    let tracer = f.cri.run(&pod, c, &cfg).await;
    let mut c = f.container("victim", &["sleep", "1001"]);
    c.linux = berth_e2e::security(|s| {
        s.namespace_options = Some(shared());
        s.run_as_user = Some(cri::Int64Value { value: 1000 });
        s.seccomp = runtime_default();
    });
    let victim = f.cri.create(&pod, c, &cfg).await.unwrap();
    // The Created init, as the sibling finds it: by its pid in the pod's
    // namespace (the last of NSpid on the node).
    let host = host_pid(&mut f, &victim).await;
    let status = std::fs::read_to_string(format!("/proc/{host}/status")).unwrap();
    let pid = status.lines().find_map(|l| l.strip_prefix("NSpid:")).and_then(|l| l.split_whitespace().last()).unwrap().to_string();
    // Its command line, which needs no ptrace access to read, names nothing
    // of the node (berth-monitor's own names the bundle's path).
    let cmdline = run(&mut f, &tracer, &format!("tr '\\0' ' ' </proc/{pid}/cmdline")).await;
    assert!(cmdline.starts_with("berth-monitor"), "the sibling sees the Created init: {cmdline}");
    let state = f.berthd.paths.state.display().to_string();
    assert!(!cmdline.contains(&state) && !cmdline.contains(&victim), "the Created init's command line: {cmdline}");
    // Ptrace access, as the sibling has it: environ is read under the same
    // check (PTRACE_MODE_READ) that attaching passes.
    let r = f.cri.exec(&tracer, &["sh", "-c", &format!("cat /proc/{pid}/environ >/dev/null")], 30).await.unwrap();
    assert_eq!(r.exit_code, 0, "the sibling can ptrace the Created init: {}", String::from_utf8_lossy(&r.stderr));
    // It holds its stdio and its two pipes to its monitor (the report and
    // the start), nothing of berthd's.
    let fds = run(&mut f, &tracer, &format!("ls /proc/{pid}/fd/")).await;
    assert_eq!(fds.lines().count(), 5, "the Created init's fds: {fds}");
    let created = privileges(&run(&mut f, &tracer, &format!("cat /proc/{pid}/status")).await);
    f.cri.runtime.start_container(cri::StartContainerRequest { container_id: victim.clone() }).await.unwrap();
    let started = privileges(&f.cri.sh(&victim, "cat /proc/self/status").await);
    assert_eq!(started.len(), 9, "{started:?}");
    assert_eq!(created, started, "the Created init holds more than the container's process");
    f.cri.remove_pod(&pod).await;
}

/// An exec's init stays in the container's PID namespace while the exec
/// runs, as the exec's parent; a container with CAP_SYS_PTRACE may attach
/// to it. It holds only CAP_KILL, no_new_privs and a seccomp allow-list,
/// so attaching gains no call the container's own filter refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_execs_init_holds_only_what_it_needs() {
    // A setting of berthd's own, as an operator's proxy credentials are.
    let secret = format!("hunter2-{}", std::process::id());
    let mut f = Fixture::start_with_env("", &[("BERTH_E2E_SECRET", &secret)]).await;
    let environ = |pid: &str| std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(String::from_utf8_lossy(&environ(&f.berthd.pid().to_string())).contains(&secret), "berthd has it");
    let image = push_attack_image(&f).await;
    let cfg = f.pod("execinit");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let mut c = berth_e2e::container_config("tracer", &image, &["sleep", "1000"]);
    c.linux = berth_e2e::security(|s| {
        s.capabilities = Some(cri::Capability { add_capabilities: vec!["SYS_PTRACE".into()], ..Default::default() });
        s.seccomp = runtime_default();
    });
    let tracer = f.cri.run(&pod, c, &cfg).await;
    // The exec's shell reads its parent, the exec's init; environ passes
    // the same access check as attaching.
    let out = f.cri.sh(&tracer, "cat /proc/$PPID/comm; cat /proc/$PPID/environ >/dev/null && echo traceable; cat /proc/$PPID/status").await;
    assert!(out.starts_with("berth-monitor\ntraceable\n"), "{out}");
    // Nor does its command line name the node's paths or pids.
    let cmdline = f.cri.sh(&tracer, "tr '\\0' ' ' </proc/$PPID/cmdline").await;
    let state = f.berthd.paths.state.display().to_string();
    assert!(cmdline.starts_with("berth-monitor exec") && !cmdline.contains(&state) && !cmdline.contains("--pid"), "{cmdline}");
    // What it could read there is not berthd's environment, nor is the
    // monitor's (forked by the zygote) or a Created init's (the monitor's).
    assert_eq!(f.cri.sh(&tracer, "ls /proc/$PPID/fd/").await, "", "the exec's init holds an fd");
    let seen = f.cri.sh(&tracer, "tr '\\0' '\\n' </proc/$PPID/environ").await;
    assert!(!seen.contains(&secret) && !seen.contains("NOTIFY_SOCKET"), "berthd's environment reached the exec's init: {seen}");
    let monitor = {
        let r = f.cri.runtime.container_status(cri::ContainerStatusRequest { container_id: tracer.clone(), verbose: true }).await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&r.into_inner().info["info"]).unwrap();
        v["monitorPid"].as_i64().unwrap().to_string()
    };
    assert!(!String::from_utf8_lossy(&environ(&monitor)).contains(&secret), "berthd's environment reached the monitor");
    let p = privileges(&out);
    for want in ["CapEff: 0000000000000020", "CapPrm: 0000000000000020", "CapBnd: 0000000000000020", "NoNewPrivs: 1", "Seccomp: 2"] {
        assert!(p.iter().any(|l| l == want), "{want} not in {p:?}");
    }
    // Its binary is berth-monitor, which berthd runs as root: opened through
    // /proc, it cannot be rewritten, now or once no berth-monitor runs
    // (writes to a running binary are refused only while it runs). An open
    // that truncates asks the mount before the running binary, so a
    // read-only mount answers EROFS even while berth-monitor runs.
    let out = f.cri.sh(&tracer, "exec 3</proc/$PPID/exe; { printf '' >/proc/self/fd/3; printf '' >/proc/$PPID/exe; } 2>&1; true").await;
    assert_eq!(out.matches("Read-only file system").count(), 2, "{out}");
    // It still ends the exec's tree at the timeout, under its filter.
    let r = f.cri.exec(&tracer, &["sh", "-c", "sleep 1000 & sleep 1000"], 1).await;
    assert!(r.is_err() || r.as_ref().is_ok_and(|r| r.exit_code != 0), "{r:?}");
    let left = f.cri.sh(&tracer, "ps -o args | grep -c '^sleep 1000$' || true").await;
    assert_eq!(left.trim(), "1", "only the container's own sleep is left");
    f.cri.remove_pod(&pod).await;
}

/// The host pid of a container's process, from its verbose status.
async fn host_pid(f: &mut Fixture, id: &str) -> i64 {
    let r = f.cri.runtime.container_status(cri::ContainerStatusRequest { container_id: id.into(), verbose: true }).await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&r.into_inner().info["info"]).unwrap();
    v["pid"].as_i64().unwrap()
}

/// Waits until `probe seize` in the container whose process is `pid` has
/// taken its first pid and says so in `file`.
async fn seize_ready(pid: i64, file: &str) {
    let path = PathBuf::from(format!("/proc/{pid}/root{file}"));
    let text = berth_e2e::read_until(&path, 200, Duration::from_millis(20), |t| t.starts_with("ready")).await;
    assert!(text.starts_with("ready"), "probe seize never got ready: {text:?}");
}

/// Runs `probe seize ARGS` in a container "tracer" of `pod` that may ptrace
/// (CAP_SYS_PTRACE, RuntimeDefault seccomp, the image's user: root), with
/// `pid` its PID namespace mode; returns its id and host pid once the probe
/// is ready. Its report goes to /tmp/seen; `then` runs after it.
async fn start_tracer(
    f: &mut Fixture,
    (pod, cfg): (&str, &cri::PodSandboxConfig),
    image: &str,
    args: &str,
    pid: Option<cri::NamespaceMode>,
    then: &str,
) -> (String, i64) {
    let script = format!("probe seize {args} >/tmp/seen 2>&1{then}");
    let mut c = berth_e2e::container_config("tracer", image, &["sh", "-c", &script]);
    c.linux = berth_e2e::security(|s| {
        s.namespace_options = pid.map(|mode| cri::NamespaceOption { pid: mode as i32, ..Default::default() });
        s.capabilities = Some(cri::Capability { add_capabilities: vec!["SYS_PTRACE".into()], ..Default::default() });
        s.seccomp = runtime_default();
    });
    let tracer = f.cri.run(pod, c, cfg).await;
    let host = host_pid(f, &tracer).await;
    seize_ready(host, "/tmp/seen").await;
    (tracer, host)
}

/// What `probe seize` printed into `file` of the container whose process
/// is `pid`, once it is done; read through the node's /proc, for an exec
/// into the container would be caught too.
async fn seized(pid: i64, file: &str) -> String {
    let path = PathBuf::from(format!("/proc/{pid}/root{file}"));
    let text = berth_e2e::read_until(&path, 200, Duration::from_millis(50), |t| t.ends_with("done\n")).await;
    assert!(text.ends_with("done\n"), "probe seize never finished: {text:?}");
    text
}

/// The privilege lines `probe seize` printed, per pid caught.
fn caught(out: &str) -> Vec<(String, Vec<String>)> {
    let mut by_pid: Vec<(String, Vec<String>)> = Vec::new();
    for line in out.lines() {
        let Some((pid, rest)) = line.split_once(' ') else { continue };
        if pid.parse::<u32>().is_err() || rest == "gone" {
            continue;
        }
        match by_pid.last_mut() {
            Some((p, lines)) if p == pid => lines.push(rest.to_string()),
            _ => by_pid.push((pid.to_string(), vec![rest.to_string()])),
        }
    }
    by_pid.into_iter().map(|(pid, lines)| (pid, privileges(&lines.join("\n")))).collect()
}

/// Whether the privilege lines `seen` ([`privileges`]) grant nothing
/// `limit`'s do not: the same user and group, no capability outside each of
/// its sets, no_new_privs and a seccomp mode at least as strict.
fn no_more_than(seen: &[String], limit: &[String]) -> Result<(), String> {
    let field = |lines: &[String], name: &str| -> String {
        lines.iter().find_map(|l| l.strip_prefix(&format!("{name}: "))).unwrap_or_default().to_string()
    };
    let hex = |s: String| u64::from_str_radix(&s, 16).unwrap_or(u64::MAX);
    let num = |s: String| s.parse::<u64>().unwrap_or(0);
    for f in ["Uid", "Gid"] {
        if field(seen, f) != field(limit, f) {
            return Err(format!("{f} {} where the container has {}", field(seen, f), field(limit, f)));
        }
    }
    for f in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        let extra = hex(field(seen, f)) & !hex(field(limit, f));
        if extra != 0 {
            return Err(format!("{f} has {extra:#x} beyond the container's {}", field(limit, f)));
        }
    }
    for f in ["NoNewPrivs", "Seccomp"] {
        if num(field(seen, f)) < num(field(limit, f)) {
            return Err(format!("{f} {} where the container has {}", field(seen, f), field(limit, f)));
        }
    }
    Ok(())
}

/// An exec into a container puts berth's processes into the container's
/// PID namespace, where a container with CAP_SYS_PTRACE can attach to each
/// the moment it is born (pids come in order) and stop it before it runs
/// a step: whatever it was born holding, the tracer then holds. Every
/// process an exec brings must be born with no more than the container's
/// own process has (user, capabilities, no_new_privs, seccomp).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_brings_no_process_born_with_more_than_the_container() {
    let mut f = Fixture::start().await;
    let image = push_attack_image(&f).await;
    let cfg = f.pod("execbirth");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    // The exec's init and its command: two processes born into the namespace.
    let (tracer, pid) = start_tracer(&mut f, (&pod, &cfg), &image, "2", None, "; sleep 1000").await;
    // The container's own process, for comparison.
    let own = privileges(&std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap());
    assert_eq!(own.len(), 9, "{own:?}");
    // Long enough that the command is still there to be caught, if not as
    // it was born (under load the tracer may come late to it).
    let r = f.cri.exec(&tracer, &["sleep", "0.3"], 30).await.expect("ExecSync");
    assert_eq!(r.exit_code, 0, "the exec still runs with a tracer about: {}", String::from_utf8_lossy(&r.stderr));
    let out = seized(pid, "/tmp/seen").await;
    let caught = caught(&out);
    // The exec's init lives as long as the exec: it is always caught.
    assert!(!caught.is_empty() && out.lines().nth(1).is_some_and(|l| l.ends_with("berth-monitor")), "{out}");
    for (p, privileges) in &caught {
        if let Err(more) = no_more_than(privileges, &own) {
            panic!("process {p}, caught as it was born, holds more than the container: {more}\n{out}");
        }
    }
    f.cri.remove_pod(&pod).await;
}

/// The exec's init is born holding the exec's report pipe to berthd (it
/// passes it to the command, which reports there if it cannot be started).
/// A container that may ptrace can open it through `/proc/<pid>/fd/3` and
/// keep it open after the exec: berthd then reads the report once the exec
/// is over and must not wait for a writer the container holds. ExecSync
/// answers, also the next one, and berthd still serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_holding_an_execs_report_pipe_holds_up_nothing() {
    let mut f = Fixture::start().await;
    let image = push_attack_image(&f).await;
    let cfg = f.pod("execpipe");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let (tracer, pid) = start_tracer(&mut f, (&pod, &cfg), &image, "40 3", None, "").await;
    // Under load the probe may come to a process only once it has closed
    // the pipe: execs until it has held one (each exec brings two
    // processes), then one more with it held.
    let seen = PathBuf::from(format!("/proc/{pid}/root/tmp/seen"));
    let mut held = 0;
    for _ in 0..12 {
        let exec = tokio::time::timeout(Duration::from_secs(20), f.cri.exec(&tracer, &["true"], 10)).await;
        let r = exec.expect("ExecSync did not answer: berthd waits on a report pipe the container holds").expect("ExecSync");
        assert_eq!(r.exit_code, 0, "{}", String::from_utf8_lossy(&r.stderr));
        if held > 0 {
            break;
        }
        held = std::fs::read_to_string(&seen).unwrap_or_default().matches("held fd 3").count();
    }
    let out = std::fs::read_to_string(&seen).unwrap_or_default();
    assert!(held > 0, "the probe held no report pipe in 12 execs, so this test shows nothing: {out}");
    let version = tokio::time::timeout(Duration::from_secs(5), f.cri.runtime.version(cri::VersionRequest::default())).await;
    assert!(version.is_ok_and(|v| v.is_ok()), "berthd no longer answers");
    f.cri.remove_pod(&pod).await;
}

/// A container joining a shared PID namespace waits there for
/// StartContainer holding the pipes its monitor reads. A sibling that may
/// ptrace can reopen them through `/proc/<pid>/fd` and keep them open: the
/// monitor must not wait for an EOF the sibling withholds. The container
/// starts, and its monitor still answers: it stops it and reports its exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sibling_holding_a_containers_pipes_holds_up_no_monitor() {
    let mut f = Fixture::start().await;
    let image = push_attack_image(&f).await;
    let cfg = f.pod_with_pid("pipeholder", cri::NamespaceMode::Pod);
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let (_, pid) = start_tracer(&mut f, (&pod, &cfg), &image, "1 all", Some(cri::NamespaceMode::Pod), "").await;
    let mut c = berth_e2e::container_config("victim", &image, &["sleep", "1001"]);
    c.linux = berth_e2e::security(|s| {
        s.namespace_options = Some(cri::NamespaceOption { pid: cri::NamespaceMode::Pod as i32, ..Default::default() })
    });
    let victim = f.cri.create(&pod, c, &cfg).await.expect("CreateContainer");
    let out = seized(pid, "/tmp/seen").await;
    assert!(out.contains("held fd"), "the sibling held none of the container's fds, so this test shows nothing: {out}");
    let started = tokio::time::timeout(Duration::from_secs(25), f.cri.start(&victim)).await;
    started.expect("StartContainer did not answer").expect("StartContainer");
    assert_eq!(f.cri.status(&victim).await.state, cri::ContainerState::ContainerRunning as i32);
    let stopped = tokio::time::timeout(Duration::from_secs(15), f.cri.stop(&victim, 5)).await;
    stopped.expect("StopContainer did not answer").expect("StopContainer");
    let st = f.cri.status(&victim).await;
    assert_eq!((st.state, st.exit_code), (cri::ContainerState::ContainerExited as i32, 143), "ended by its SIGTERM: {st:?}");
    f.cri.remove_pod(&pod).await;
}

/// An exec's timeout ends every process of the exec, also one that made
/// itself another user: here a setuid-root program (allowed, as
/// no_new_privs is off, kubelet's default) that took root as its real uid
/// too. The exec's init runs as the container's user, without CAP_KILL
/// here, and cannot signal it; berth ends it all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_timeout_ends_a_process_that_became_root() {
    let mut f = Fixture::start().await;
    let image = push_attack_image(&f).await;
    let cfg = f.pod("execroot");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let mut c = berth_e2e::container_config("c", &image, &["sleep", "1000"]);
    c.linux = berth_e2e::security(|s| {
        s.run_as_user = Some(cri::Int64Value { value: 1000 });
        s.capabilities = Some(cri::Capability { drop_capabilities: vec!["KILL".into()], ..Default::default() });
    });
    let id = f.cri.run(&pod, c, &cfg).await;
    let mut cri = f.cri.clone();
    let exec_id = id.clone();
    let exec = tokio::spawn(async move { cri.exec(&exec_id, &["sh", "-c", "suprobe setuid-pause; echo"], 3).await });
    // Its real uid, as the container sees it.
    let uid = "for p in /proc/[0-9]*; do [ \"$(cat $p/comm 2>/dev/null)\" = suprobe ] && awk '/^Uid/ {print $2}' $p/status; done; true";
    let mut seen = String::new();
    for _ in 0..100 {
        seen = f.cri.sh(&id, uid).await;
        if !seen.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen.trim(), "0", "the exec's program did not become root, so this test shows nothing");
    let e = exec.await.unwrap().unwrap_err();
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{}", e.message());
    // Nor is it left a zombie for a PID 1 that does not reap.
    assert_eq!(f.cri.sh(&id, uid).await, "", "a process of the timed-out exec lives on as root");
    f.cri.remove_pod(&pod).await;
}

/// In a pod of one PID namespace, CreateContainer brings a process into the
/// namespace the siblings are in. A sibling with CAP_SYS_PTRACE can attach
/// to it as it is born there (pids come in order) and hold what it was born
/// with; the container's setup (mounts, pivot_root) needs the node's
/// privileges, so it must happen before any process of it is there. The
/// first process the sibling catches holds no more than the container's.
/// On every kernel: the container's /proc is a clone of the pod's, made by
/// the pod's init when it was alone in the namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sibling_catches_no_process_born_with_more_than_its_container() {
    sibling_catches_nothing(cri::NamespaceMode::Pod, false).await;
}

/// As above, in a pod as a berthd from before the pod's /proc pin left it
/// (the pin is unmounted here): the container's /proc is then a clone of a
/// running sibling's, the tracer's, made from outside the namespace. This
/// matters before Linux 6.15, where the kernel cannot mount it from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sibling_catches_no_process_born_in_a_pod_without_its_proc_pin() {
    sibling_catches_nothing(cri::NamespaceMode::Pod, true).await;
}

/// As above, for a container joining another container's PID namespace
/// (`pid: TARGET`, as kubelet's debug containers do), where the /proc comes
/// from procfs `pidns=` (Linux 6.15), or before that is a clone of the
/// target's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_catches_no_process_born_with_more_than_its_debugger() {
    sibling_catches_nothing(cri::NamespaceMode::Target, false).await;
}

/// The tracer runs `probe seize 1` in the PID namespace `mode` makes the
/// victim join: the pod's (`Pod`), or the tracer's own (`Target`). With
/// `unpin`, the pod's /proc pin is taken away before the victim is created.
async fn sibling_catches_nothing(mode: cri::NamespaceMode, unpin: bool) {
    let mut f = Fixture::start().await;
    let image = push_attack_image(&f).await;
    let pod_mode = if mode == cri::NamespaceMode::Pod { mode } else { cri::NamespaceMode::Container };
    let cfg = f.pod_with_pid("siblingbirth", pod_mode);
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let ns = |mode: cri::NamespaceMode, target_id: &str| cri::NamespaceOption {
        pid: mode as i32,
        target_id: target_id.to_string(),
        ..Default::default()
    };
    let (tracer, pid) = start_tracer(&mut f, (&pod, &cfg), &image, "1", Some(pod_mode), "; sleep 1000").await;
    if unpin {
        let pin = f.berthd.paths.state.join("pods").join(&pod).join("ns-pid-proc");
        nix::mount::umount2(&pin, nix::mount::MntFlags::MNT_DETACH).expect("unmount the pod's /proc pin");
        std::fs::remove_dir(&pin).expect("remove the pin's dir");
    }
    let mut c = berth_e2e::container_config("victim", &image, &["sleep", "1001"]);
    let target = if mode == cri::NamespaceMode::Target { tracer.as_str() } else { "" };
    c.linux = berth_e2e::security(|s| {
        s.namespace_options = Some(ns(mode, target));
        s.run_as_user = Some(cri::Int64Value { value: 1000 });
        s.seccomp = runtime_default();
    });
    let victim = f.cri.run(&pod, c, &cfg).await;
    let out = seized(pid, "/tmp/seen").await;
    let caught = caught(&out);
    assert_eq!(caught.len(), 1, "{out}");
    let victim_pid = host_pid(&mut f, &victim).await;
    let own = privileges(&std::fs::read_to_string(format!("/proc/{victim_pid}/status")).unwrap());
    if let Err(more) = no_more_than(&caught[0].1, &own) {
        panic!("process {}, caught as it was born, holds more than the container: {more}\n{out}", caught[0].0);
    }
    // And it is the container's process, which the sibling let go on, in
    // the namespace it shares with the sibling.
    assert_eq!(f.cri.sh(&victim, "id -u").await.trim(), "1000");
    let seen = f.cri.sh(&victim, "cat /proc/[0-9]*/cmdline | tr '\\0' ' '").await;
    assert!(seen.contains("sleep 1000"), "the victim's /proc does not show the tracer's sleep: {seen}");
    f.cri.remove_pod(&pod).await;
}

/// Packets and bytes the berth table's loopback-guard rule has dropped.
fn loopback_drops(table: &str) -> u64 {
    let out = std::process::Command::new("nft").args(["-j", "list", "chain", "inet", table, "input"]).output().expect("nft");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut packets = 0;
    for item in v["nftables"].as_array().into_iter().flatten() {
        for expr in item["rule"]["expr"].as_array().into_iter().flatten() {
            packets += expr["counter"]["packets"].as_u64().unwrap_or(0);
        }
    }
    packets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_cannot_reach_the_node_loopback() {
    let mut f = Fixture::start().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cfg = f.pod("loopback");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let pod_ip: std::net::Ipv4Addr = f.cri.pod_ip(&pod).await.parse().unwrap();
    let netns = f.cri.pod_netns(&pod).await;
    let gw_mac = oci_mac(&f.berthd.net.bridge);
    let before = loopback_drops(&f.berthd.net.table);
    // The node has talked to the pod (as kubelet's probes do), so it knows
    // the pod's MAC and a reply could find its way back.
    let udp = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    udp.send_to(b"hello", (pod_ip, 9)).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // What a container with NET_RAW (a default capability) can send: a SYN
    // to 127.0.0.1, addressed to the gateway's MAC.
    let replies = berth_e2e::in_netns(&netns, move || {
        let frame =
            berth_e2e::rawnet::syn_frame(gw_mac, berth_e2e::rawnet::mac_of("eth0"), pod_ip, std::net::Ipv4Addr::LOCALHOST, 40123, port);
        berth_e2e::rawnet::send_and_watch("eth0", &frame, std::net::Ipv4Addr::LOCALHOST, port, Duration::from_secs(2))
    })
    .join()
    .unwrap();
    assert!(replies.is_empty(), "the node's 127.0.0.1:{port} answered the pod (TCP flags {replies:x?})");
    // The packet did reach the node and was dropped by berth's rule, so the
    // silence above is the rule's doing.
    assert!(loopback_drops(&f.berthd.net.table) > before, "the loopback guard never saw the packet");
    drop(listener);
    f.cri.remove_pod(&pod).await;
}

fn oci_mac(ifname: &str) -> [u8; 6] {
    berth_e2e::rawnet::parse_mac(&std::fs::read_to_string(format!("/sys/class/net/{ifname}/address")).expect("bridge MAC"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_at_dev_is_not_written_into_and_masks_cannot_be_redirected() {
    let mut f = Fixture::start().await;
    // A host directory mounted at /dev whose `null` is a link to a file the
    // container may not write (CVE-2025-31133's shape: masks bound from it
    // would expose that file writable at a masked path).
    let host_dev = f.berthd.dir().join("host-dev");
    std::fs::create_dir(&host_dev).unwrap();
    std::os::unix::fs::symlink("/proc/sys/kernel/domainname", host_dev.join("null")).unwrap();
    std::fs::write(host_dev.join("keep"), "keep").unwrap();
    let listing = |d: &Path| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| {
                (
                    e.file_name().to_string_lossy().to_string(),
                    std::fs::read_link(e.path()).map(|t| t.display().to_string()).unwrap_or_default(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let before = listing(&host_dev);
    let cfg = f.pod("devvol");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let mut c = f.container("c", &["sleep", "1000"]);
    c.mounts = vec![cri::Mount { container_path: "/dev".into(), host_path: host_dev.display().to_string(), ..Default::default() }];
    let id = f.cri.run(&pod, c, &cfg).await;
    assert_eq!(listing(&host_dev), before, "berth wrote into the host directory mounted at /dev");
    // Masked files (/proc/keys here; /proc/kcore where the kernel has it) are
    // masked by the null device berth made, not by what the volume's `null`
    // points at.
    assert_eq!(f.cri.sh(&id, "stat -c %t:%T /proc/keys").await.trim(), "1:3");
    let out = run(&mut f, &id, "echo pwned > /proc/keys; cat /proc/sys/kernel/domainname").await;
    assert!(!out.contains("pwned"), "{out}");
    f.cri.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_default_seccomp_is_an_allow_list() {
    let mut f = Fixture::start().await;
    let image = push_attack_image(&f).await;
    let cfg = f.pod("seccomp");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let mut c = berth_e2e::container_config("confined", &image, &["sleep", "1000"]);
    c.linux = berth_e2e::security(|s| s.seccomp = runtime_default());
    let confined = f.cri.run(&pod, c, &cfg).await;
    let unconfined = f.cri.run(&pod, berth_e2e::container_config("free", &image, &["sleep", "1000"]), &cfg).await;
    // Each blocked only by the filter: the kernel itself allows it to root
    // without CAP_SYS_ADMIN (io_uring, a user namespace, keyrings) or answers
    // differently (clone3 with size 0 is EINVAL; the filter says ENOSYS).
    let eperm = "errno 1";
    for (probe, confined_answer) in [
        ("io_uring_setup", eperm),
        ("unshare-user", eperm),
        ("keyctl", eperm),
        ("add_key", eperm),
        ("clone3", "errno 38"),
        ("personality 0040000", eperm),
        ("socket 40", eperm),
        ("socket 38", eperm),
        ("personality ffffffff", "ok"),
        ("socket 2", "ok"),
    ] {
        assert_eq!(f.cri.sh(&confined, &format!("probe {probe}")).await.trim(), confined_answer, "{probe} under RuntimeDefault");
    }
    for probe in ["io_uring_setup", "unshare-user", "keyctl"] {
        assert_eq!(f.cri.sh(&unconfined, &format!("probe {probe}")).await.trim(), "ok", "{probe} unconfined");
    }
    f.cri.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_sync_output_always_fits_the_reply() {
    let mut f = Fixture::start().await;
    let cfg = f.pod("bigexec");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let id = f.cri.run(&pod, f.container("c", &["sleep", "1000"]), &cfg).await;
    // 16 MiB on each stream: more than one CRI message holds.
    let r = f
        .cri
        .exec(&id, &["sh", "-c", "head -c 16777216 /dev/zero; head -c 16777216 /dev/zero >&2"], 60)
        .await
        .expect("ExecSync truncates instead of failing");
    let cap = (8 << 20) - (32 << 10);
    assert_eq!((r.stdout.len(), r.stderr.len(), r.exit_code), (cap, cap, 0));
    f.cri.remove_pod(&pod).await;
}

//! User namespaces as kubelet asks for them (`hostUsers: false`, KEP-127):
//! `userns_options` POD with its uid and gid mappings on the pod and each
//! container, and the same mappings on each volume it wants id-mapped.

use std::os::unix::fs::MetadataExt;

use berth_e2e::{cri, Fixture};
use tonic::Code;

/// A host range of its own per test process (kubelet hands out multiples of 65536).
fn host_base() -> u32 {
    65_536 * (16 + std::process::id() % 4096)
}

fn mapping(host: u32) -> cri::IdMapping {
    cri::IdMapping { host_id: host, container_id: 0, length: 65_536 }
}

fn userns(mode: i32, maps: Vec<cri::IdMapping>) -> cri::UserNamespace {
    cri::UserNamespace { mode, uids: maps.clone(), gids: maps }
}

/// Whether this machine's berthd should offer user namespaces: yes, unless
/// the runner says its store cannot take id-mapped mounts
/// (`BERTH_E2E_USERNS=0`: the cgroup v2 VM keeps it on tmpfs, Linux 6.1).
fn userns_expected() -> bool {
    std::env::var("BERTH_E2E_USERNS").map(|v| v != "0").unwrap_or(true)
}

const POD: i32 = 0;
const NODE: i32 = 2;

/// `cfg` with `userns_options` on the pod.
fn with_userns(mut cfg: cri::PodSandboxConfig, u: cri::UserNamespace) -> cri::PodSandboxConfig {
    let opts = cfg.linux.as_mut().unwrap().security_context.as_mut().unwrap().namespace_options.as_mut().unwrap();
    opts.userns_options = Some(u);
    cfg
}

/// `c` with `userns_options` on the container, as kubelet repeats the pod's.
fn container_userns(mut c: cri::ContainerConfig, u: cri::UserNamespace) -> cri::ContainerConfig {
    c.linux.as_mut().unwrap().security_context.as_mut().unwrap().namespace_options.as_mut().unwrap().userns_options = Some(u);
    c
}

fn volume(container_path: &str, host: &std::path::Path, maps: Vec<cri::IdMapping>) -> cri::Mount {
    cri::Mount {
        container_path: container_path.into(),
        host_path: host.display().to_string(),
        uid_mappings: maps.clone(),
        gid_mappings: maps,
        ..Default::default()
    }
}

fn host_pid(info: &std::collections::HashMap<String, String>) -> i64 {
    let v: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
    v["pid"].as_i64().unwrap()
}

/// The pod runs in a user namespace with kubelet's mappings: root inside is
/// the mapped id outside, the image and the id-mapped volume show their
/// owners as the pod sees them, a plain volume gets the mapped ids, the
/// node's root-only file stays closed, and root in the pod may bind port 80
/// (its network namespace belongs to its user namespace). The same container
/// in an ordinary pod reads that file: the difference is the namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_in_its_own_user_namespace() {
    let mut f = Fixture::start().await;
    let st = f.cri.runtime.status(cri::StatusRequest { verbose: false }).await.unwrap().into_inner();
    let offered: Vec<bool> = st.runtime_handlers.iter().map(|h| h.features.as_ref().unwrap().user_namespaces).collect();
    assert!(offered.iter().all(|o| *o == userns_expected()), "{:?}", st.runtime_handlers);
    let host = host_base();
    if !userns_expected() {
        // Refused, naming the field and why, never run with the node's ids.
        let cfg = with_userns(f.pod("userns"), userns(POD, vec![mapping(host)]));
        let e = f.cri.run_pod(cfg).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        assert!(e.message().contains("cannot run pods in user namespaces") && e.message().contains("userns_options"), "{}", e.message());
        let pods = f.cri.runtime.list_pod_sandbox(cri::ListPodSandboxRequest::default()).await.unwrap().into_inner().items;
        assert!(pods.is_empty(), "{pods:?}");
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let (plain, mapped, secret) = (dir.path().join("plain"), dir.path().join("mapped"), dir.path().join("secret"));
    std::fs::create_dir(&plain).unwrap();
    // World-writable, as kubelet makes an emptyDir: the node's root owns it.
    std::fs::set_permissions(&plain, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    std::fs::create_dir(&mapped).unwrap();
    std::fs::write(&secret, "node secret\n").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    let cfg = with_userns(f.pod("userns"), userns(POD, vec![mapping(host)]));
    let pod = f.cri.run_pod(cfg.clone()).await.expect("a pod in its own user namespace");
    let status = f.cri.pod_status(&pod, false).await.status.unwrap();
    let shown = status.linux.unwrap().namespaces.unwrap().options.unwrap().userns_options.unwrap();
    assert_eq!(shown, userns(POD, vec![mapping(host)]), "kubelet reads the mappings back");

    let mut c = container_userns(f.container("c", &["sleep", "1000"]), userns(POD, vec![mapping(host)]));
    c.mounts = vec![volume("/plain", &plain, vec![]), volume("/mapped", &mapped, vec![mapping(host)]), volume("/secret", &secret, vec![])];
    let id = f.cri.run(&pod, c.clone(), &cfg).await;

    let maps = f.cri.sh(&id, "cat /proc/self/uid_map /proc/self/gid_map").await;
    let maps: Vec<String> = maps.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
    assert_eq!(maps, [format!("0 {host} 65536"), format!("0 {host} 65536")]);
    let inside = f.cri.sh(&id, "id -u; id -g; stat -c %u:%g / /bin/busybox /etc/hosts /dev").await;
    assert_eq!(inside, "0\n0\n0:0\n0:0\n0:0\n0:0\n", "root inside, and the image's files, /etc and /dev its own");
    let verbose =
        f.cri.runtime.container_status(cri::ContainerStatusRequest { container_id: id.clone(), verbose: true }).await.unwrap().into_inner();
    let proc_status = std::fs::read_to_string(format!("/proc/{}/status", host_pid(&verbose.info))).unwrap();
    let uid_line = proc_status.lines().find(|l| l.starts_with("Uid:")).unwrap().to_string();
    assert_eq!(uid_line.split_whitespace().skip(1).collect::<Vec<_>>(), vec![host.to_string(); 4], "{uid_line}");

    let wrote = f.cri.sh(&id, "touch /plain/p /mapped/m /written && echo ok").await;
    assert_eq!(wrote, "ok\n");
    let owner = |p: std::path::PathBuf| {
        let m = std::fs::metadata(&p).unwrap();
        (m.uid(), m.gid())
    };
    assert_eq!(owner(plain.join("p")), (host, host), "a plain volume gets the node's ids of root inside");
    assert_eq!(owner(mapped.join("m")), (0, 0), "an id-mapped volume stores the ids the pod sees");

    let denied = f.cri.sh(&id, "(cat /secret) 2>&1; echo rc=$?").await;
    assert!(denied.contains("Permission denied") && !denied.contains("node secret"), "{denied}");
    // busybox nc listens on a dual-stack socket: tcp6 when the kernel has IPv6.
    let tcp = f.cri.sh(&id, "nc -l -p 80 & sleep 0.5; cat /proc/net/tcp /proc/net/tcp6 2>/dev/null; kill $!").await;
    let listening =
        |l: &str| l.split_whitespace().nth(1).is_some_and(|a| a.ends_with(":0050")) && l.split_whitespace().nth(3) == Some("0A");
    assert!(tcp.lines().any(listening), "root in the pod binds port 80: {tcp}");

    // A TTY container: its terminal comes from its own devpts, owned by root inside.
    let mut t =
        container_userns(f.container("t", &["sh", "-c", "tty; stat -c %u:%g $(tty); sleep 1000"]), userns(POD, vec![mapping(host)]));
    t.tty = true;
    f.cri.run(&pod, t, &cfg).await;
    let log = f.logs.join("userns").join("t.log");
    // Both lines: the timestamp of the first (…T18:16:03…) may hold ":0".
    let both = |t: &str| t.contains("/dev/pts/0") && t.contains(" 0:0");
    let text = berth_e2e::read_until(&log, 100, std::time::Duration::from_millis(50), both).await;
    assert!(text.contains("/dev/pts/0") && text.contains(" 0:0"), "{text}");

    // An exec joins the user namespace too.
    let exec = f.cri.exec(&id, &["cat", "/proc/self/uid_map"], 10).await.unwrap();
    assert!(String::from_utf8_lossy(&exec.stdout).contains(&host.to_string()));

    // berthd restarts: the pod and its container carry on, exec included.
    f.berthd.restart().await;
    f.cri = f.berthd.cri().await;
    let after = f.cri.exec(&id, &["cat", "/proc/self/uid_map"], 10).await.unwrap();
    assert!(String::from_utf8_lossy(&after.stdout).contains(&host.to_string()));
    assert_eq!(f.cri.pod_status(&pod, false).await.status.unwrap().state, cri::PodSandboxState::SandboxReady as i32);

    // The control: the same container, volumes and all, in an ordinary pod.
    let plain_cfg = f.pod("hostusers");
    let other = f.cri.run_pod(plain_cfg.clone()).await.unwrap();
    let mut c2 = f.container("c", &["sleep", "1000"]);
    c2.mounts = vec![volume("/secret", &secret, vec![])];
    let id2 = f.cri.run(&other, c2, &plain_cfg).await;
    assert_eq!(f.cri.sh(&id2, "cat /secret").await, "node secret\n");

    // A pod whose user namespace is no longer pinned cannot take new
    // containers: after a restart it is NotReady, by the kernel's account.
    let pin = f.berthd.paths.state.join("pods").join(&pod).join("ns-user");
    nix::mount::umount2(&pin, nix::mount::MntFlags::MNT_DETACH).unwrap();
    f.berthd.restart().await;
    f.cri = f.berthd.cri().await;
    assert_eq!(f.cri.pod_status(&pod, false).await.status.unwrap().state, cri::PodSandboxState::SandboxNotready as i32);
    assert!(f.berthd.log().contains("its user namespace is no longer pinned"));

    f.cri.remove_pod(&pod).await;
    f.cri.remove_pod(&other).await;
    let left: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&pod) || l.contains(&id))
        .map(str::to_string)
        .collect();
    assert!(left.is_empty(), "mounts left behind: {left:?}");
}

/// What berth cannot honour is refused with InvalidArgument naming the
/// field, before anything exists — never run with the node's ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_namespace_requests_that_cannot_be_honoured_are_refused() {
    let mut f = Fixture::start().await;
    let host = host_base();
    let refused = |e: tonic::Status, needle: &str| {
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        assert!(e.message().contains(needle), "wanted {needle:?}: {}", e.message());
    };
    let field = "namespace_options.userns_options";
    for (u, needle) in [
        (userns(POD, vec![cri::IdMapping { host_id: 0, container_id: 0, length: 65_536 }]), "node's id 0"),
        (userns(POD, vec![]), "no uid mapping"),
        (userns(POD, vec![cri::IdMapping { host_id: host, container_id: 1, length: 10 }]), "0 inside is not mapped"),
        (userns(NODE, vec![mapping(host)]), "mode NODE"),
        (userns(1, vec![mapping(host)]), "userns_options.mode"),
    ] {
        refused(f.cri.run_pod(with_userns(f.pod("bad"), u)).await.unwrap_err(), needle);
    }
    let mut host_ipc = with_userns(f.pod("hostipc"), userns(POD, vec![mapping(host)]));
    host_ipc.linux.as_mut().unwrap().security_context.as_mut().unwrap().namespace_options.as_mut().unwrap().ipc = NODE;
    refused(f.cri.run_pod(host_ipc).await.unwrap_err(), "node's ipc namespace");
    let pods = f.cri.runtime.list_pod_sandbox(cri::ListPodSandboxRequest::default()).await.unwrap().into_inner().items;
    assert!(pods.is_empty(), "{pods:?}");
    if !userns_expected() {
        return;
    }

    // A shared PID namespace too: berth's pod init stays the node's, confined.
    let mut cfg = with_userns(f.pod("userns"), userns(POD, vec![mapping(host)]));
    cfg.linux.as_mut().unwrap().security_context.as_mut().unwrap().namespace_options.as_mut().unwrap().pid = POD;
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let mut ok = f.container("ok", &["sleep", "1000"]);
    ok.linux.as_mut().unwrap().security_context.as_mut().unwrap().namespace_options.as_mut().unwrap().pid = POD;
    let ok = f.cri.run(&pod, ok, &cfg).await;
    assert_eq!(f.cri.sh(&ok, "id -u; cat /proc/self/uid_map | wc -l; pidof sleep").await, "0\n1\n2\n");
    let dir = tempfile::tempdir().unwrap();
    let mut privileged = f.container("priv", &["sleep", "1000"]);
    privileged.linux.as_mut().unwrap().security_context.as_mut().unwrap().privileged = true;
    refused(f.cri.create(&pod, privileged, &cfg).await.unwrap_err(), "privileged");
    let mut other_map = f.container("othermap", &["sleep", "1000"]);
    other_map.mounts = vec![volume("/v", dir.path(), vec![mapping(host + 65_536)])];
    refused(f.cri.create(&pod, other_map, &cfg).await.unwrap_err(), "config.mounts[0].uid_mappings");
    let node_users = container_userns(f.container("nodeusers", &["sleep", "1000"]), userns(NODE, vec![]));
    refused(f.cri.create(&pod, node_users, &cfg).await.unwrap_err(), field);
    f.cri.remove_pod(&pod).await;

    // hostUsers: true (NODE) runs as before; a container cannot ask for more.
    let cfg = with_userns(f.pod("hostusers"), userns(NODE, vec![]));
    let pod = f.cri.run_pod(cfg.clone()).await.expect("hostUsers: true runs");
    let c = container_userns(f.container("c", &["sleep", "1000"]), userns(POD, vec![mapping(host)]));
    refused(f.cri.create(&pod, c, &cfg).await.unwrap_err(), field);
    let mut mapped = f.container("mapped", &["sleep", "1000"]);
    mapped.mounts = vec![volume("/v", dir.path(), vec![mapping(host)])];
    refused(f.cri.create(&pod, mapped, &cfg).await.unwrap_err(), "own user namespace");
    f.cri.remove_pod(&pod).await;
}

/// kubelet's UserNamespacesHostNetworkSupport: a pod with `hostUsers: false`
/// and `hostNetwork: true` runs in a user namespace of its own on the node's
/// network and UTS namespaces, where its root holds no capability.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_in_its_own_user_namespace_on_the_nodes_network() {
    let mut f = Fixture::start().await;
    let status = f.cri.runtime.status(cri::StatusRequest { verbose: false }).await.unwrap().into_inner();
    let advertised = status.features.unwrap().user_namespaces_host_network;
    assert_eq!(advertised, userns_expected(), "RuntimeFeatures.user_namespaces_host_network");
    if !userns_expected() {
        return;
    }
    let host = host_base();
    let mut cfg = with_userns(f.pod("usernshostnet"), userns(POD, vec![mapping(host)]));
    cfg.linux.as_mut().unwrap().security_context.as_mut().unwrap().namespace_options.as_mut().unwrap().network = NODE;
    let pod = f.cri.run_pod(cfg.clone()).await.expect("a pod in its own user namespace on the node's network");
    let c = f.cri.run(&pod, f.container("c", &["sleep", "1000"]), &cfg).await;

    let ns = |kind: &str| std::fs::read_link(format!("/proc/self/ns/{kind}")).unwrap().display().to_string();
    let inside = f.cri.sh(&c, "id -u; for n in net uts user; do readlink /proc/self/ns/$n; done; head -1 /proc/self/uid_map").await;
    let lines: Vec<&str> = inside.lines().collect();
    assert_eq!(lines[0], "0", "root in the pod");
    assert_eq!((lines[1], lines[2]), (ns("net").as_str(), ns("uts").as_str()), "the node's network and UTS namespaces");
    assert_ne!(lines[3], ns("user"), "a user namespace of its own");
    assert_eq!(lines[4].split_whitespace().collect::<Vec<_>>(), vec!["0", &host.to_string(), "65536"]);

    // Its /sys shows the node's network devices: those there both before
    // and after it looked, and none the node did not have at one of those
    // times (tests running beside this one add and remove links).
    let node_links = || -> std::collections::BTreeSet<String> {
        std::fs::read_dir("/sys/class/net").unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect()
    };
    let before = node_links();
    let pod_links: std::collections::BTreeSet<String> =
        f.cri.sh(&c, "ls /sys/class/net").await.split_whitespace().map(str::to_string).collect();
    let after = node_links();
    assert!(before.intersection(&after).all(|l| pod_links.contains(l)), "{pod_links:?} lacks some of {before:?} and {after:?}");
    assert!(pod_links.iter().all(|l| before.contains(l) || after.contains(l)), "{pod_links:?} is not the node's {before:?} / {after:?}");

    // Root in the pod cannot change the node's network: setting loopback's
    // MTU to the value it has already needs CAP_NET_ADMIN over the node's
    // network namespace, and is refused before anything changes.
    let mtu = std::fs::read_to_string("/sys/class/net/lo/mtu").unwrap();
    let r = f.cri.exec(&c, &["ip", "link", "set", "lo", "mtu", mtu.trim()], 10).await.unwrap();
    assert_ne!(r.exit_code, 0, "root in the pod changed the node's loopback");
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(stderr.contains("not permitted"), "{stderr}");

    // berthd restarts: the pod, with no network namespace of its own to
    // check, is still Ready and takes new containers in its user namespace.
    f.berthd.restart().await;
    f.cri = f.berthd.cri().await;
    assert_eq!(f.cri.pod_status(&pod, false).await.status.unwrap().state, cri::PodSandboxState::SandboxReady as i32);
    let d = f.cri.run(&pod, f.container("d", &["sleep", "1000"]), &cfg).await;
    let ns_of = |out: String| out.trim().to_string();
    let user_c = ns_of(f.cri.sh(&c, "readlink /proc/self/ns/user").await);
    assert_eq!(ns_of(f.cri.sh(&d, "readlink /proc/self/ns/user").await), user_c, "the pod's user namespace");
    assert_eq!(ns_of(f.cri.sh(&d, "readlink /proc/self/ns/net").await), ns("net"));

    f.cri.remove_pod(&pod).await;
    let left: Vec<String> =
        std::fs::read_to_string("/proc/self/mountinfo").unwrap().lines().filter(|l| l.contains(&pod)).map(str::to_string).collect();
    assert!(left.is_empty(), "mounts left behind: {left:?}");
}

/// A pod in its own user namespace that shares one PID namespace
/// (`shareProcessNamespace` with `hostUsers: false`): each container sees
/// the other's processes, its /proc is the pod's (a clone of the one the
/// pod's init mounted), and root inside is still the mapped id outside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_namespaced_pod_shares_one_pid_namespace() {
    let mut f = Fixture::start().await;
    if !userns_expected() {
        eprintln!("skipped: this machine's berthd offers no user namespaces");
        return;
    }
    let host = host_base() + 65_536;
    let maps = || userns(POD, vec![mapping(host)]);
    let cfg = with_userns(f.pod_with_pid("usernspid", cri::NamespaceMode::Pod), maps());
    let pod = f.cri.run_pod(cfg.clone()).await.expect("a user-namespaced pod of one PID namespace");
    let shared = |mut c: cri::ContainerConfig| {
        c.linux.as_mut().unwrap().security_context.as_mut().unwrap().namespace_options.as_mut().unwrap().pid =
            cri::NamespaceMode::Pod as i32;
        container_userns(c, maps())
    };
    let a = f.cri.run(&pod, shared(f.container("a", &["sleep", "1000"])), &cfg).await;
    let b = f.cri.run(&pod, shared(f.container("b", &["sleep", "1001"])), &cfg).await;
    let seen = f.cri.sh(&b, "cat /proc/[0-9]*/cmdline | tr '\\0' ' '; echo; id -u").await;
    assert!(seen.contains("sleep 1000") && seen.contains("sleep 1001"), "b sees a's process and its own: {seen}");
    assert!(seen.ends_with("\n0\n"), "root inside: {seen}");
    let verbose =
        f.cri.runtime.container_status(cri::ContainerStatusRequest { container_id: a.clone(), verbose: true }).await.unwrap().into_inner();
    let proc_status = std::fs::read_to_string(format!("/proc/{}/status", host_pid(&verbose.info))).unwrap();
    let uid_line = proc_status.lines().find(|l| l.starts_with("Uid:")).unwrap().to_string();
    assert_eq!(uid_line.split_whitespace().skip(1).collect::<Vec<_>>(), vec![host.to_string(); 4], "{uid_line}");
    f.cri.remove_pod(&pod).await;
}

//! What berth reports, checked against the kernel: every READY pod has its
//! network namespace with eth0, its veth, its PID-namespace init and the
//! /proc of that namespace pinned on the node; every
//! RUNNING container runs, CREATED ones have their monitor, EXITED ones do
//! not; and once everything is removed, no process, mount, veth, cgroup,
//! state directory or lease is left. Used by the crash tests and the soak.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use crate::{cri, in_netns, Fixture};

/// The berth processes of this berthd (its state dir in their command line).
pub fn processes(f: &Fixture) -> Vec<(i32, String)> {
    let state = f.berthd.paths.state.display().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let cmd = crate::cmdline(pid).join(" ");
        // The zygote is berthd's, not a pod's: it runs from the state
        // dir's bind of the binaries, and its command line names no more.
        if cmd.contains("berth-monitor") && cmd.contains(&state) && crate::cmdline(pid).get(1).map(String::as_str) != Some("zygote") {
            out.push((pid as i32, cmd));
        }
    }
    out
}

/// Interfaces of a network namespace other than lo.
pub fn interfaces(netns: &Path) -> Option<Vec<String>> {
    let ns = netns.to_path_buf();
    in_netns(&ns, || {
        let dev = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap_or_default();
        dev.lines().skip(2).filter_map(|l| l.split_once(':').map(|(n, _)| n.trim().to_string())).filter(|n| n != "lo").collect::<Vec<_>>()
    })
    .join()
    .ok()
}

pub fn host_link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Everything berth reports is true of the kernel.
pub async fn reports_the_truth(f: &mut Fixture, point: &str) {
    let pods = f.cri.runtime.list_pod_sandbox(cri::ListPodSandboxRequest::default()).await.unwrap().into_inner().items;
    let procs = processes(f);
    for p in &pods {
        if p.state != cri::PodSandboxState::SandboxReady as i32 {
            continue;
        }
        let netns = f.cri.pod_netns(&p.id).await;
        let ifs = interfaces(&netns);
        assert!(ifs.as_ref().is_some_and(|i| i.iter().any(|n| n == "eth0")), "{point}: pod {} is READY without a network: {ifs:?}", p.id);
        assert!(host_link_exists(&format!("bv{}", &p.id[..12])), "{point}: pod {} is READY without its veth", p.id);
        let init = procs.iter().find(|(_, c)| c.contains("pod-init") && c.contains(&p.id));
        let Some((init, _)) = init else { panic!("{point}: pod {} is READY without its PID-namespace init", p.id) };
        // And with the /proc its joining containers get, of its namespace.
        let pin = f.berthd.paths.state.join("pods").join(&p.id).join("ns-pid-proc");
        let ns = |link: &Path| std::fs::metadata(link).ok().map(|m| (m.dev(), m.ino()));
        let pinned = ns(&pin.join("1/ns/pid"));
        assert!(
            pinned.is_some() && pinned == ns(Path::new(&format!("/proc/{init}/ns/pid"))),
            "{point}: pod {} is READY without its /proc pin",
            p.id
        );
    }
    let containers = f.cri.runtime.list_containers(cri::ListContainersRequest::default()).await.unwrap().into_inner().containers;
    for c in &containers {
        let monitor = procs.iter().any(|(_, cmd)| cmd.contains(" monitor ") && cmd.contains(&c.id));
        match cri::ContainerState::try_from(c.state) {
            Ok(cri::ContainerState::ContainerRunning) => {
                // Either it runs, or it has just exited and berth says so
                // as soon as its monitor is gone (any runtime has that window).
                let r = f.cri.exec(&c.id, &["true"], 10).await;
                if !r.is_ok_and(|r| r.exit_code == 0) {
                    let exited = f.cri.wait_exited(&c.id, Duration::from_secs(3)).await;
                    assert_eq!(
                        exited.state,
                        cri::ContainerState::ContainerExited as i32,
                        "{point}: container {} is RUNNING but cannot exec",
                        c.id
                    );
                }
            }
            Ok(cri::ContainerState::ContainerCreated) => assert!(monitor, "{point}: container {} is CREATED without its monitor", c.id),
            Ok(cri::ContainerState::ContainerExited) => assert!(!monitor, "{point}: container {} is EXITED but its monitor runs", c.id),
            other => panic!("{point}: container {} in state {other:?}", c.id),
        }
    }
}

/// Removes every pod and image but busybox; then nothing of them is left.
pub async fn remove_all_and_check_clean(f: &mut Fixture, point: &str) {
    let pods = f.cri.runtime.list_pod_sandbox(cri::ListPodSandboxRequest::default()).await.unwrap().into_inner().items;
    for p in pods {
        f.cri.runtime.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: p.id.clone() }).await.unwrap();
        f.cri.remove_pod(&p.id).await;
    }
    let left = processes(f);
    assert!(left.is_empty(), "{point}: processes left: {left:?}");
    let dir = f.berthd.dir().display().to_string();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    // The pods dir is a mount of its own for as long as the state dir is
    // there, and so is the mount template's dir with its pin; only what is
    // beneath the pods dir belongs to pods.
    let state = &f.berthd.paths.state;
    let node_mounts = [state.join("pods"), state.join("mntns"), state.join("mntns").join("template")].map(|p| p.display().to_string());
    // And the read-only binds berth's binaries run from.
    let bins = state.join("bin");
    let mounts: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&dir) && !node_mounts.iter().any(|n| n == m) && !Path::new(m).starts_with(&bins))
        .collect();
    assert!(mounts.is_empty(), "{point}: mounts left: {mounts:?}");
    let veths: Vec<String> = std::fs::read_dir(format!("/sys/class/net/{}/brif", f.berthd.net.bridge))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(veths.is_empty(), "{point}: veths left on the bridge: {veths:?}");
    let nested: Vec<_> = crate::cgroups_named(&f.berthd.cgroup_parent)
        .iter()
        .flat_map(|p| std::fs::read_dir(p).into_iter().flatten().flatten())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    assert!(nested.is_empty(), "{point}: cgroups left: {nested:?}");
    for sub in ["pods", "containers"] {
        let d = f.berthd.paths.state.join(sub);
        let n = std::fs::read_dir(&d).map(|d| d.count()).unwrap_or(0);
        assert_eq!(n, 0, "{point}: {} not empty", d.display());
    }
    let st = f.cri.runtime.status(cri::StatusRequest { verbose: true }).await.unwrap().into_inner();
    let net: serde_json::Value = serde_json::from_str(&st.info["network"]).unwrap();
    assert_eq!(net["leases"], 0, "{point}: leases left: {net}");
}

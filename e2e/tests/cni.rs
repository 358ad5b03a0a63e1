//! CNI mode with Debian's containernetworking-plugins (bridge, host-local,
//! portmap): readiness follows the config directory, pods get addresses and
//! talk, hostPorts work, DEL cleans up, and bad configs are named.

use std::io::Read;
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use berth_e2e::{cri, Fixture, NetNames};
use tonic::Code;

const CNI_BIN: &str = "/usr/lib/cni";

fn conflist(net: &NetNames, data_dir: &Path) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"berth-e2e","plugins":[
  {{"type":"bridge","bridge":"{bridge}","isGateway":true,"ipMasq":false,"hairpinMode":true,
    "ipam":{{"type":"host-local","dataDir":"{data}","ranges":[[{{"subnet":"{subnet}"}}]],"routes":[{{"dst":"0.0.0.0/0"}}]}}}},
  {{"type":"portmap","capabilities":{{"portMappings":true}},"snat":true}}
]}}"#,
        bridge = net.bridge,
        data = data_dir.display(),
        subnet = net.subnet
    )
}

fn network_ready(status: &cri::StatusResponse) -> cri::RuntimeCondition {
    status.status.as_ref().unwrap().conditions.iter().find(|c| c.r#type == "NetworkReady").unwrap().clone()
}

async fn read_retry(addr: &str) -> String {
    for _ in 0..100 {
        if let Ok(mut s) = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut out = String::new();
            if s.read_to_string(&mut out).is_ok() && !out.is_empty() {
                return out;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no answer from {addr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_plugins_network_pods_and_readiness_follows_the_config_dir() {
    assert!(Path::new(CNI_BIN).join("bridge").exists(), "install containernetworking-plugins");
    let tmp = tempfile::tempdir().unwrap();
    let conf_dir = tmp.path().join("net.d");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let net = NetNames::new();
    let config = format!("[network]\nmode = \"cni\"\ncni_conf_dir = \"{}\"\ncni_bin_dirs = [\"{CNI_BIN}\"]\n", conf_dir.display());
    let mut f = Fixture::start_with_config(&config).await;

    // No config yet: not ready, with a reason; a pod cannot be networked.
    let st = f.cri.runtime.status(cri::StatusRequest { verbose: false }).await.unwrap().into_inner();
    let nr = network_ready(&st);
    assert!(!nr.status && nr.reason == "NetworkPluginNotReady" && nr.message.contains(&conf_dir.display().to_string()), "{nr:?}");
    let e = f.cri.run_pod(f.pod("early")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert!(f.cri.runtime.list_pod_sandbox(cri::ListPodSandboxRequest::default()).await.unwrap().into_inner().items.is_empty());

    // A malformed config is named.
    std::fs::write(conf_dir.join("05-broken.conflist"), "{ not json").unwrap();
    let nr = network_ready(&f.cri.runtime.status(cri::StatusRequest { verbose: false }).await.unwrap().into_inner());
    assert!(!nr.status && nr.message.contains("05-broken.conflist"), "{nr:?}");
    std::fs::remove_file(conf_dir.join("05-broken.conflist")).unwrap();

    // A config that appears later is picked up.
    std::fs::write(conf_dir.join("10-berth.conflist"), conflist(&net, &tmp.path().join("ipam"))).unwrap();
    let nr = network_ready(&f.cri.runtime.status(cri::StatusRequest { verbose: false }).await.unwrap().into_inner());
    assert!(nr.status, "{nr:?}");

    let hp = 21000 + (std::process::id() % 20000) as i32;
    let mut cfg_a = f.pod("cni-a");
    cfg_a.port_mappings =
        vec![cri::PortMapping { protocol: cri::Protocol::Tcp as i32, container_port: 80, host_port: hp, host_ip: String::new() }];
    let a = f.cri.run_pod(cfg_a.clone()).await.unwrap();
    f.cri.run(&a, f.container("srv", &["nc", "-ll", "-p", "80", "-e", "echo", "cni-hello"]), &cfg_a).await;
    let cfg_b = f.pod("cni-b");
    let b = f.cri.run_pod(cfg_b.clone()).await.unwrap();
    let cli = f.cri.run(&b, f.container("cli", &["sleep", "1000"]), &cfg_b).await;
    let ip_a = f.cri.pod_ip(&a).await;
    assert!(ip_a.starts_with(net.subnet.trim_end_matches("0/24")), "{ip_a} not from host-local's {}", net.subnet);
    // Pod to pod, node to pod, and the hostPort from the node's localhost.
    let got = f.cri.sh(&cli, &format!("for i in $(seq 100); do out=$(nc {ip_a} 80 </dev/null) && [ -n \"$out\" ] && echo $out && exit 0; sleep 0.05; done; exit 1")).await;
    assert_eq!(got.trim(), "cni-hello");
    assert_eq!(read_retry(&format!("{ip_a}:80")).await.trim(), "cni-hello");
    assert_eq!(read_retry(&format!("127.0.0.1:{hp}")).await.trim(), "cni-hello");
    assert!(f.berthd.paths.state.join("cni").join(format!("{a}.json")).exists(), "ADD result cached for DEL");

    f.cri.remove_pod(&a).await;
    f.cri.remove_pod(&b).await;
    let ports = std::process::Command::new("ip").args(["-br", "link", "show", "master", &net.bridge]).output().unwrap();
    assert!(String::from_utf8_lossy(&ports.stdout).trim().is_empty(), "veths left: {}", String::from_utf8_lossy(&ports.stdout));
    assert!(!f.berthd.paths.state.join("cni").join(format!("{a}.json")).exists());

    // A missing plugin binary is named, and the pod is not left half made.
    std::fs::write(conf_dir.join("10-berth.conflist"), r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"no-such-plugin"}]}"#)
        .unwrap();
    let e = f.cri.run_pod(f.pod("missing")).await.unwrap_err();
    assert!(e.message().contains("no-such-plugin") && e.message().contains("not found"), "{}", e.message());
    assert!(f.cri.runtime.list_pod_sandbox(cri::ListPodSandboxRequest::default()).await.unwrap().into_inner().items.is_empty());
    net.remove();
    remove_portmap_chains();
}

/// portmap leaves its shared chains behind (as in a cluster); the test
/// removes them, and the iptables-nft tables only if nothing else is in them.
fn remove_portmap_chains() {
    let ipt = |bin: &str, args: &[&str]| {
        let _ = std::process::Command::new(bin).args(args).stderr(std::process::Stdio::null()).status();
    };
    for bin in ["iptables", "ip6tables"] {
        ipt(bin, &["-t", "nat", "-D", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "CNI-HOSTPORT-DNAT"]);
        ipt(bin, &["-t", "nat", "-D", "OUTPUT", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "CNI-HOSTPORT-DNAT"]);
        ipt(
            bin,
            &[
                "-t",
                "nat",
                "-D",
                "POSTROUTING",
                "-m",
                "comment",
                "--comment",
                "CNI portfwd requiring masquerade",
                "-j",
                "CNI-HOSTPORT-MASQ",
            ],
        );
        for chain in ["CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-MASQ", "CNI-HOSTPORT-SETMARK"] {
            ipt(bin, &["-t", "nat", "-F", chain]);
            ipt(bin, &["-t", "nat", "-X", chain]);
        }
    }
    for family in ["ip", "ip6"] {
        let out = std::process::Command::new("nft").args(["list", "table", family, "nat"]).output();
        let Ok(out) = out else { continue };
        let text = String::from_utf8_lossy(&out.stdout);
        let has_rules = text.lines().any(|l| {
            let l = l.trim();
            !(l.is_empty() || l.starts_with("table") || l.starts_with("chain") || l.starts_with("type") || l == "}")
        });
        if out.status.success() && !has_rules {
            let _ = std::process::Command::new("nft").args(["delete", "table", family, "nat"]).status();
        }
    }
}

/// kubelet's bandwidth annotations go to a CNI bandwidth plugin as
/// runtimeConfig (its `bandwidth` capability), as containerd passes them:
/// the rate into the pod becomes a tbf qdisc on the pod's host-side veth.
/// (Egress needs an ifb device, which this machine's kernel lacks.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_annotations_reach_the_bandwidth_plugin() {
    assert!(Path::new(CNI_BIN).join("bandwidth").exists(), "install containernetworking-plugins");
    let tmp = tempfile::tempdir().unwrap();
    let conf_dir = tmp.path().join("net.d");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let net = NetNames::new();
    let conflist = format!(
        r#"{{"cniVersion":"1.0.0","name":"berth-e2e-bw","plugins":[
  {{"type":"bridge","bridge":"{bridge}","isGateway":true,"ipMasq":false,
    "ipam":{{"type":"host-local","dataDir":"{data}","ranges":[[{{"subnet":"{subnet}"}}]]}}}},
  {{"type":"bandwidth","capabilities":{{"bandwidth":true}}}}
]}}"#,
        bridge = net.bridge,
        data = tmp.path().join("ipam").display(),
        subnet = net.subnet
    );
    std::fs::write(conf_dir.join("10-bw.conflist"), conflist).unwrap();
    let config = format!("[network]\nmode = \"cni\"\ncni_conf_dir = \"{}\"\ncni_bin_dirs = [\"{CNI_BIN}\"]\n", conf_dir.display());
    let mut f = Fixture::start_with_config(&config).await;

    // A bad annotation is refused before anything is made.
    let mut bad = f.pod("bw-bad");
    bad.annotations.insert("kubernetes.io/ingress-bandwidth".into(), "fast".into());
    let e = f.cri.run_pod(bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("kubernetes.io/ingress-bandwidth"), "{}", e.message());
    assert!(f.cri.runtime.list_pod_sandbox(cri::ListPodSandboxRequest::default()).await.unwrap().into_inner().items.is_empty());

    let mut cfg = f.pod("bw");
    cfg.annotations.insert("kubernetes.io/ingress-bandwidth".into(), "1M".into());
    let pod = f.cri.run_pod(cfg).await.unwrap();
    let ports = std::process::Command::new("ip").args(["-br", "link", "show", "master", &net.bridge]).output().unwrap();
    let ports = String::from_utf8_lossy(&ports.stdout).to_string();
    let veth = ports.split_whitespace().next().expect("the pod's veth on the bridge").split('@').next().unwrap().to_string();
    let qdisc = std::process::Command::new("tc").args(["qdisc", "show", "dev", &veth]).output().unwrap();
    let qdisc = String::from_utf8_lossy(&qdisc.stdout).to_string();
    assert!(qdisc.contains("tbf") && qdisc.contains("rate 1Mbit"), "{veth}: {qdisc}");

    f.cri.remove_pod(&pod).await;
    let left = std::process::Command::new("ip").args(["-br", "link", "show", "master", &net.bridge]).output().unwrap();
    assert!(String::from_utf8_lossy(&left.stdout).trim().is_empty(), "veths left");
    net.remove();
}

/// CNI 1.1's STATUS: for a 1.1 config berth asks every plugin before it
/// calls the network ready, and says why not (the plugin's message and
/// code); a 1.0 config has no STATUS and its plugins are not asked. Debian's
/// plugins (1.1.1) speak spec 1.0 at most, so the plugin here is a small
/// script that follows the 1.1 spec for VERSION and STATUS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_1_1_status_decides_network_readiness() {
    let tmp = tempfile::tempdir().unwrap();
    let (conf_dir, bin_dir) = (tmp.path().join("net.d"), tmp.path().join("bin"));
    std::fs::create_dir_all(&conf_dir).unwrap();
    std::fs::create_dir_all(&bin_dir).unwrap();
    let (calls, unavailable) = (tmp.path().join("calls"), tmp.path().join("unavailable"));
    let plugin = bin_dir.join("status-probe");
    std::fs::write(
        &plugin,
        format!(
            r#"#!/bin/sh
echo "$CNI_COMMAND ${{CNI_CONTAINERID:-none}}" >> {calls}
case "$CNI_COMMAND" in
VERSION) echo '{{"cniVersion":"1.1.0","supportedVersions":["1.0.0","1.1.0"]}}' ;;
STATUS)
  if [ -e {unavailable} ]; then
    echo '{{"cniVersion":"1.1.0","code":50,"msg":"the overlay is not up yet","details":"waiting for its agent"}}'
    exit 1
  fi ;;
*) echo '{{"cniVersion":"1.1.0","code":4,"msg":"not in this test"}}'; exit 1 ;;
esac
"#,
            calls = calls.display(),
            unavailable = unavailable.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let write_conf = |version: &str| {
        std::fs::write(
            conf_dir.join("10-probe.conflist"),
            format!(r#"{{"cniVersion":"{version}","name":"probe","plugins":[{{"type":"status-probe"}}]}}"#),
        )
        .unwrap()
    };
    write_conf("1.1.0");
    let config =
        format!("[network]\nmode = \"cni\"\ncni_conf_dir = \"{}\"\ncni_bin_dirs = [\"{}\"]\n", conf_dir.display(), bin_dir.display());
    let mut f = Fixture::start_with_config(&config).await;
    let mut ready = async || network_ready(&f.cri.runtime.status(cri::StatusRequest { verbose: false }).await.unwrap().into_inner());

    let nr = ready().await;
    assert!(nr.status, "{nr:?}");
    let asked = std::fs::read_to_string(&calls).unwrap_or_default();
    assert!(asked.lines().any(|l| l == "STATUS none"), "STATUS, without a container: {asked:?}");

    std::fs::write(&unavailable, "").unwrap();
    let nr = ready().await;
    assert!(!nr.status && nr.reason == "NetworkPluginNotReady", "{nr:?}");
    assert!(nr.message.contains("the overlay is not up yet") && nr.message.contains("code 50"), "{nr:?}");
    std::fs::remove_file(&unavailable).unwrap();
    assert!(ready().await.status);

    // A 1.0 config: nothing to ask, ready as long as it loads.
    write_conf("1.0.0");
    std::fs::write(&unavailable, "").unwrap();
    std::fs::write(&calls, "").unwrap();
    let nr = ready().await;
    assert!(nr.status, "{nr:?}");
    assert_eq!(std::fs::read_to_string(&calls).unwrap(), "", "a 1.0 plugin is not asked for STATUS");
}

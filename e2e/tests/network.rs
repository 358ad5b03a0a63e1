//! The built-in pod network: pod-to-pod, node-to-pod, NAT egress, hostPorts
//! (TCP, UDP, localhost, node address, conflicts), cleanup and restarts.
//! Traffic goes only to 127.0.0.1 and to namespaces the tests create.

use std::io::Read;
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

use berth_e2e::{cri, Fixture, OutsideHost};
use tonic::Code;

/// A busybox TCP server answering `text` on `port` to every connection.
fn server(f: &Fixture, name: &str, port: u16, text: &str) -> cri::ContainerConfig {
    f.container(name, &["nc", "-ll", "-p", &port.to_string(), "-e", "echo", text])
}

fn tcp_read(addr: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Retries while the server in the container comes up.
async fn tcp_read_retry(addr: &str) -> String {
    for _ in 0..100 {
        if let Ok(s) = tcp_read(addr) {
            if !s.is_empty() {
                return s;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no answer from {addr}");
}

fn port_mapping(protocol: cri::Protocol, container_port: i32, host_port: i32) -> cri::PortMapping {
    cri::PortMapping { protocol: protocol as i32, container_port, host_port, host_ip: String::new() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_talk_to_each_other_and_to_the_node() {
    let mut f = Fixture::start().await;
    let cfg_a = f.pod("net-a");
    let a = f.cri.run_pod(cfg_a.clone()).await.unwrap();
    f.cri.run(&a, server(&f, "srv", 8080, "from-a"), &cfg_a).await;
    let cfg_b = f.pod("net-b");
    let b = f.cri.run_pod(cfg_b.clone()).await.unwrap();
    let client = f.cri.run(&b, f.container("cli", &["sleep", "1000"]), &cfg_b).await;
    let (ip_a, ip_b) = (f.cri.pod_ip(&a).await, f.cri.pod_ip(&b).await);
    assert!(!ip_a.is_empty() && ip_a != ip_b);
    let subnet = f.berthd.net.subnet.trim_end_matches("0/24").to_string();
    assert!(ip_a.starts_with(&subnet), "{ip_a} not in {}", f.berthd.net.subnet);
    // Pod to pod.
    let got = f.cri.sh(&client, &format!("for i in $(seq 100); do out=$(nc {ip_a} 8080 </dev/null) && [ -n \"$out\" ] && echo $out && exit 0; sleep 0.05; done; exit 1")).await;
    assert_eq!(got.trim(), "from-a");
    // eth0 and the default route inside the pod.
    let ip_out = f.cri.sh(&client, "ip -4 addr show eth0; ip route").await;
    assert!(ip_out.contains(&ip_b) && ip_out.contains("default via"), "{ip_out}");
    // Node to pod.
    assert_eq!(tcp_read_retry(&format!("{ip_a}:8080")).await.trim(), "from-a");
    // Status reports the IP and Status says the network is ready.
    let st = f.cri.runtime.status(cri::StatusRequest { verbose: false }).await.unwrap().into_inner();
    assert!(st.status.unwrap().conditions.iter().any(|c| c.r#type == "NetworkReady" && c.status));
    f.cri.remove_pod(&a).await;
    f.cri.remove_pod(&b).await;
}

/// Dual-stack built-in network (`network.subnet6`): each pod also gets an
/// IPv6 address from the /64 — in PodSandboxStatus's additional_ips, on
/// eth0, in /etc/hosts — and an IPv6 default route; pods and the node reach
/// each other over IPv6; addresses go back to the pool with the pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_pods_get_an_ipv6_address_too() {
    let mut f = berth_e2e::Fixture::start_with_options("", true).await;
    let prefix = f.berthd.net.subnet6.trim_end_matches(":/64").to_string();
    let gateway6 = format!("{prefix}:1");
    // hostPorts on both families: every address, and the IPv6 gateway alone.
    let (hp, hp6) = (21000 + (std::process::id() % 9000) as i32, 31000 + (std::process::id() % 9000) as i32);
    let mut cfg_a = f.pod("v6-a");
    cfg_a.port_mappings = vec![
        port_mapping(cri::Protocol::Tcp, 8080, hp),
        cri::PortMapping { host_ip: gateway6.clone(), ..port_mapping(cri::Protocol::Tcp, 8080, hp6) },
    ];
    let a = f.cri.run_pod(cfg_a.clone()).await.unwrap();
    f.cri.run(&a, server(&f, "srv", 8080, "from-a-v6"), &cfg_a).await;
    let cfg_b = f.pod("v6-b");
    let b = f.cri.run_pod(cfg_b.clone()).await.unwrap();
    let client = f.cri.run(&b, f.container("cli", &["sleep", "1000"]), &cfg_b).await;
    let v6_of = |st: cri::PodSandboxStatusResponse| {
        let net = st.status.unwrap().network.unwrap();
        assert!(net.ip.contains('.'), "the primary stays IPv4: {}", net.ip);
        assert_eq!(net.additional_ips.len(), 1, "{net:?}");
        net.additional_ips[0].ip.clone()
    };
    let v6_a = v6_of(f.cri.pod_status(&a, false).await);
    let v6_b = v6_of(f.cri.pod_status(&b, false).await);
    assert!(v6_a.starts_with(&prefix) && v6_b.starts_with(&prefix) && v6_a != v6_b, "{v6_a} {v6_b} in {prefix}");

    let inside = f.cri.sh(&client, "ip -6 addr show eth0; ip -6 route; cat /etc/hosts").await;
    assert!(inside.contains(&format!("{v6_b}/64")), "{inside}");
    assert!(inside.contains(&format!("default via {prefix}:1")), "{inside}");
    assert!(inside.lines().any(|l| l.starts_with(&v6_b) && l.contains("v6-b")), "{inside}");
    // Pod to pod, and node to pod, over IPv6.
    let got = f
        .cri
        .sh(&client, &format!("for i in $(seq 100); do out=$(nc {v6_a} 8080 </dev/null) && [ -n \"$out\" ] && echo $out && exit 0; sleep 0.05; done; exit 1"))
        .await;
    assert_eq!(got.trim(), "from-a-v6");
    assert_eq!(tcp_read_retry(&format!("[{v6_a}]:8080")).await.trim(), "from-a-v6");
    // hostPorts: to the pod's IPv6 address through a node IPv6 address, and
    // still to its IPv4 one through 127.0.0.1.
    assert_eq!(tcp_read_retry(&format!("[{gateway6}]:{hp}")).await.trim(), "from-a-v6");
    assert_eq!(tcp_read_retry(&format!("[{gateway6}]:{hp6}")).await.trim(), "from-a-v6");
    assert_eq!(tcp_read_retry(&format!("127.0.0.1:{hp}")).await.trim(), "from-a-v6");
    assert!(tcp_read(&format!("127.0.0.1:{hp6}")).is_err(), "the IPv6-only mapping is not on IPv4");
    let st = f.cri.runtime.status(cri::StatusRequest { verbose: false }).await.unwrap().into_inner();
    let ready = st.status.unwrap().conditions.into_iter().find(|c| c.r#type == "NetworkReady").unwrap();
    assert!(ready.status && ready.message.contains(&f.berthd.net.subnet6), "{ready:?}");

    // Released with the pod: a new pod gets a fresh lease, and both of B's are gone.
    f.cri.remove_pod(&a).await;
    f.cri.remove_pod(&b).await;
    let cfg_c = f.pod("v6-c");
    let c = f.cri.run_pod(cfg_c).await.unwrap();
    let v6_c = v6_of(f.cri.pod_status(&c, false).await);
    assert!(v6_c.starts_with(&prefix), "{v6_c}");
    f.cri.remove_pod(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_is_masqueraded_to_an_outside_host() {
    let mut f = Fixture::start().await;
    let outside = OutsideHost::create();
    // The "outside" server reports the source address it sees.
    let server = outside.serve_once(9000, "hello-outside\n");
    let cfg = f.pod("egress");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    let c = f.cri.run(&pod, f.container("cli", &["sleep", "1000"]), &cfg).await;
    let got = f.cri.sh(&c, &format!("nc {} 9000 </dev/null", outside.ip)).await;
    assert_eq!(got.trim(), "hello-outside");
    let seen = server.join().unwrap();
    assert_eq!(seen, outside.node_ip.to_string(), "the outside host must see the node's address, not the pod's");
    f.cri.remove_pod(&pod).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_ports_tcp_udp_localhost_node_address_and_conflicts() {
    let mut f = Fixture::start().await;
    let outside = OutsideHost::create();
    let hp = 20000 + (std::process::id() % 20000) as i32;
    let mut cfg = f.pod("hostport");
    cfg.port_mappings = vec![port_mapping(cri::Protocol::Tcp, 80, hp), port_mapping(cri::Protocol::Udp, 53, hp)];
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    f.cri.run(&pod, server(&f, "web", 80, "via-hostport"), &cfg).await;
    // From the node itself over localhost, and at the node's own address.
    assert_eq!(tcp_read_retry(&format!("127.0.0.1:{hp}")).await.trim(), "via-hostport");
    assert_eq!(tcp_read_retry(&format!("{}:{hp}", outside.node_ip)).await.trim(), "via-hostport");
    // From another host (the outside namespace) at the node's address.
    let target = format!("{}:{hp}", outside.node_ip);
    let remote = berth_e2e::in_netns(&outside.netns(), move || tcp_read(&target)).join().unwrap().unwrap();
    assert_eq!(remote.trim(), "via-hostport");
    // Hairpin: the pod reaches its own hostPort through the node.
    let cli = f.cri.run(&pod, f.container("cli", &["sleep", "1000"]), &cfg).await;
    let hairpin = f.cri.sh(&cli, &format!("nc {} {hp} </dev/null", outside.node_ip)).await;
    assert_eq!(hairpin.trim(), "via-hostport");

    // UDP: an echo server in the pod's namespace (busybox has no UDP server).
    let netns = f.cri.pod_netns(&pod).await;
    let echo = berth_e2e::in_netns(&netns, || {
        let s = UdpSocket::bind("0.0.0.0:53").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 64];
        let (n, peer) = s.recv_from(&mut buf).unwrap();
        s.send_to(&buf[..n], peer).unwrap();
    });
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut reply = [0u8; 64];
    let mut got = None;
    for _ in 0..30 {
        client.send_to(b"ping-udp", ("127.0.0.1", hp as u16)).unwrap();
        if let Ok((n, _)) = client.recv_from(&mut reply) {
            got = Some(reply[..n].to_vec());
            break;
        }
    }
    echo.join().unwrap();
    assert_eq!(got.as_deref(), Some(b"ping-udp".as_slice()));

    // The same hostPort for a second pod: refused, and nothing of it stays.
    let veths_before = bridge_ports(&f.berthd.net.bridge);
    let mut cfg2 = f.pod("hostport-2");
    cfg2.port_mappings = vec![port_mapping(cri::Protocol::Tcp, 8080, hp)];
    let e = f.cri.run_pod(cfg2).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{}", e.message());
    assert!(e.message().contains(&format!("tcp/{hp}")) && e.message().contains(&pod), "{}", e.message());
    assert_eq!(bridge_ports(&f.berthd.net.bridge), veths_before);
    let pods = f.cri.runtime.list_pod_sandbox(cri::ListPodSandboxRequest::default()).await.unwrap().into_inner().items;
    assert_eq!(pods.len(), 1);
    f.cri.remove_pod(&pod).await;
    assert!(tcp_read(&format!("127.0.0.1:{hp}")).is_err(), "hostPort still answers after removal");
    assert!(hostport_rules(&f.berthd.net.table).is_empty());
}

fn bridge_ports(bridge: &str) -> Vec<String> {
    let out = std::process::Command::new("ip").args(["-br", "link", "show", "master", bridge]).output().unwrap();
    let mut v: Vec<String> =
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.split(['@', ' ']).next().map(String::from)).collect();
    v.sort();
    v
}

fn hostport_rules(table: &str) -> Vec<String> {
    let out = std::process::Command::new("nft").args(["list", "chain", "inet", table, "hostports"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains("dnat")).map(String::from).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_pods_leave_no_veths_rules_or_leases_and_restart_keeps_connectivity() {
    let mut f = Fixture::start().await;
    let mut pods = Vec::new();
    for i in 0..50 {
        let mut cfg = f.pod(&format!("many{i}"));
        cfg.port_mappings = vec![port_mapping(cri::Protocol::Tcp, 80, 30000 + i)];
        pods.push(f.cri.run_pod(cfg).await.unwrap());
    }
    let mut ips: Vec<String> = Vec::new();
    for p in &pods {
        ips.push(f.cri.pod_ip(p).await);
    }
    let mut unique = ips.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 50, "an address was handed out twice");
    assert_eq!(bridge_ports(&f.berthd.net.bridge).len(), 50);
    assert_eq!(hostport_rules(&f.berthd.net.table).len(), 50);

    // Restart: leases and wiring are kept.
    let cfg = f.pod("keeper");
    let keeper = f.cri.run_pod(cfg.clone()).await.unwrap();
    f.cri.run(&keeper, server(&f, "srv", 8080, "still-here"), &cfg).await;
    let keeper_ip = f.cri.pod_ip(&keeper).await;
    assert_eq!(tcp_read_retry(&format!("{keeper_ip}:8080")).await.trim(), "still-here");
    f.berthd.restart().await;
    f.cri = f.berthd.cri().await;
    assert_eq!(f.cri.pod_ip(&keeper).await, keeper_ip);
    assert_eq!(tcp_read_retry(&format!("{keeper_ip}:8080")).await.trim(), "still-here");
    let fresh = f.cri.run_pod(f.pod("fresh")).await.unwrap();
    let fresh_ip = f.cri.pod_ip(&fresh).await;
    assert!(!ips.contains(&fresh_ip) && fresh_ip != keeper_ip, "{fresh_ip} was leased twice");

    for p in pods.iter().chain([&keeper, &fresh]) {
        f.cri.remove_pod(p).await;
    }
    assert!(bridge_ports(&f.berthd.net.bridge).is_empty(), "{:?}", bridge_ports(&f.berthd.net.bridge));
    assert!(hostport_rules(&f.berthd.net.table).is_empty());
    // Leases: none held, also after a restart.
    for _ in 0..2 {
        let st = f.cri.runtime.status(cri::StatusRequest { verbose: true }).await.unwrap().into_inner();
        let net: serde_json::Value = serde_json::from_str(&st.info["network"]).unwrap();
        assert_eq!(net["leases"], 0, "leases left: {net}");
        f.berthd.restart().await;
        f.cri = f.berthd.cri().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_network_config_is_refused_clearly() {
    let dir = berth_e2e::RunDir::new();
    let net = berth_e2e::NetNames::new();
    // What each failed start left mounted (its pods dir, say): nothing.
    let left = std::cell::RefCell::new(Vec::new());
    let run = |network: &str| {
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, format!("[network]\n{network}\n")).unwrap();
        let out = berth_e2e::run_berthd(&[
            "--config",
            &cfg.display().to_string(),
            "--root",
            &dir.path().join("root").display().to_string(),
            "--state",
            &dir.path().join("state").display().to_string(),
            "--socket",
            &dir.path().join("s.sock").display().to_string(),
        ]);
        left.borrow_mut().extend(berth_e2e::mounts_under(dir.path()));
        berth_e2e::unmount_under(dir.path());
        out
    };
    let (st, _, err) = run(&format!("bridge = \"{}\"\nsubnet = \"10.1.2.3/33\"\nnft_table = \"{}\"", net.bridge, net.table));
    assert!(!st.success() && err.contains("network.subnet"), "{err}");
    let (st, _, err) = run(&format!("bridge = \"{}\"\nsubnet6 = \"fd00::1/64\"\nnft_table = \"{}\"", net.bridge, net.table));
    assert!(!st.success() && err.contains("network.subnet6") && err.contains("host bits"), "{err}");
    // A link of another kind (a veth) under the bridge's name.
    let dummy = format!("bd{}", &net.bridge[2..]);
    let peer = format!("be{}", &net.bridge[2..]);
    assert!(std::process::Command::new("ip")
        .args(["link", "add", &dummy, "type", "veth", "peer", "name", &peer])
        .status()
        .unwrap()
        .success());
    let (st, _, err) = run(&format!("bridge = \"{dummy}\"\nsubnet = \"{}\"\nnft_table = \"{}\"", net.subnet, net.table));
    // An overlapping subnet: that link holds an address inside it.
    let other = berth_e2e::NetNames::new();
    let inside = other.subnet.replace("0/24", "9/24");
    assert!(std::process::Command::new("ip").args(["addr", "add", &inside, "dev", &dummy]).status().unwrap().success());
    let (st2, _, err2) = run(&format!("bridge = \"{}\"\nsubnet = \"{}\"\nnft_table = \"{}\"", net.bridge, other.subnet, net.table));
    let _ = std::process::Command::new("ip").args(["link", "delete", &dummy]).status();
    net.remove();
    assert!(!st.success() && err.contains(&dummy) && err.contains("not a bridge"), "{err}");
    assert!(!st2.success() && err2.contains("overlaps") && err2.contains(&dummy), "{err2}");
    assert!(left.borrow().is_empty(), "failed starts left mounts: {:?}", left.borrow());
}

/// On an IPv4-only network, a hostPort bound to an IPv6 node address is
/// refused naming the mapping, before anything is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_host_ip_needs_a_dual_stack_network() {
    let mut f = Fixture::start().await;
    let mut cfg = f.pod("v6-hostip");
    cfg.port_mappings = vec![cri::PortMapping { host_ip: "fd00::1".into(), ..port_mapping(cri::Protocol::Tcp, 80, 18080) }];
    let e = f.cri.run_pod(cfg).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(e.message().contains("config.port_mappings") && e.message().contains("[fd00::1]:18080"), "{}", e.message());
    let pods = f.cri.runtime.list_pod_sandbox(cri::ListPodSandboxRequest::default()).await.unwrap().into_inner().items;
    assert!(pods.is_empty(), "{pods:?}");
}

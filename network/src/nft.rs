//! berth's nftables table: masquerade of pod egress, hostPort DNAT (from
//! other hosts, from the node itself via 127.0.0.1, and hairpin), and
//! forwarding to and from the bridge. Only berth's own table is ever
//! touched. Rules are written in the nft language and loaded atomically with
//! `nft -f -`; per-pod rules carry the pod id as their comment so teardown
//! and garbage collection find them.

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::{NetError, PortMapping, Protocol};

const NFT: &str = "nft";

/// Runs an nft script atomically.
pub fn apply(script: &str) -> Result<(), NetError> {
    let mut child = Command::new(NFT)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetError::Nft(format!("running {NFT}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(|e| NetError::Nft(format!("writing to {NFT}: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| NetError::Nft(format!("{NFT}: {e}")))?;
    if !out.status.success() {
        return Err(NetError::Nft(String::from_utf8_lossy(&out.stderr).trim().replace('\n', "; ")));
    }
    Ok(())
}

fn list_json(args: &[&str]) -> Result<serde_json::Value, NetError> {
    let out = Command::new(NFT).arg("-j").args(args).output().map_err(|e| NetError::Nft(format!("running {NFT}: {e}")))?;
    if !out.status.success() {
        return Err(NetError::Nft(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| NetError::Nft(format!("{NFT} -j output: {e}")))
}

/// Creates the table and base chains if missing and (re)writes the static
/// rules; the per-pod `hostports` chain keeps its rules across restarts.
///
/// `route_localnet` is on for the bridge (hostPort via 127.0.0.1 needs it),
/// which also lets a packet from a pod to 127.0.0.0/8 reach the node's
/// loopback services; the input rule drops every such packet that does not
/// belong to a connection the node made (CVE-2020-8558, as kube-proxy does).
pub fn ensure_table(table: &str, bridge: &str, subnet: Ipv4Net, subnet6: Option<Ipv6Net>) -> Result<(), NetError> {
    let mut script = format!(
        r#"add table inet {table}
add chain inet {table} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
add chain inet {table} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}
add chain inet {table} output {{ type nat hook output priority -100; policy accept; }}
add chain inet {table} forward {{ type filter hook forward priority filter; policy accept; }}
add chain inet {table} input {{ type filter hook input priority filter; policy accept; }}
add chain inet {table} hostports
flush chain inet {table} postrouting
flush chain inet {table} prerouting
flush chain inet {table} output
flush chain inet {table} forward
flush chain inet {table} input
add rule inet {table} postrouting ip saddr {subnet} oifname != "{bridge}" masquerade comment "pod egress"
add rule inet {table} postrouting oifname "{bridge}" ct status dnat ip saddr 127.0.0.0/8 masquerade comment "hostPort from localhost"
add rule inet {table} postrouting oifname "{bridge}" ct status dnat ip saddr {subnet} masquerade comment "hostPort hairpin"
add rule inet {table} prerouting fib daddr type local jump hostports
add rule inet {table} output fib daddr type local jump hostports
add rule inet {table} forward iifname "{bridge}" accept
add rule inet {table} forward oifname "{bridge}" ct state established,related accept
add rule inet {table} forward oifname "{bridge}" ct status dnat accept
add rule inet {table} input iifname "{bridge}" ip daddr 127.0.0.0/8 ct state != {{ established, related }} counter drop comment "pods never reach the node's loopback"
"#
    );
    if let Some(net6) = subnet6 {
        // IPv6 egress and hostPort hairpin of a dual-stack network.
        script.push_str(&format!(
            "add rule inet {table} postrouting ip6 saddr {net6} oifname != \"{bridge}\" masquerade comment \"pod egress (IPv6)\"\n"
        ));
        script.push_str(&format!(
            "add rule inet {table} postrouting oifname \"{bridge}\" ct status dnat ip6 saddr {net6} masquerade comment \"hostPort hairpin (IPv6)\"\n"
        ));
    }
    apply(&script)
}

/// Removes the whole table, if there is one (`berthd cleanup`; never while
/// serving). The add makes the delete succeed on a node without the table.
pub fn delete_table(table: &str) -> Result<(), NetError> {
    apply(&format!("add table inet {table}\ndelete table inet {table}\n"))
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// DNAT rules for a pod's hostPorts, tagged with the pod id: to its IPv4
/// address, and to its IPv6 address on a dual-stack network (a mapping
/// with a node address goes to the pod address of the same family).
pub fn add_hostports(table: &str, pod_id: &str, ips: crate::PodIps, ports: &[PortMapping]) -> Result<(), NetError> {
    if ports.is_empty() {
        return Ok(());
    }
    let mut script = String::new();
    for p in ports {
        let rule = |family: &str, daddr: String, to: String| {
            format!(
                "add rule inet {table} hostports meta nfproto {family} {daddr}{proto} dport {hp} dnat {ipf} to {to}:{cp} comment \"{pod_id}\"\n",
                ipf = if family == "ipv4" { "ip" } else { "ip6" },
                proto = proto(p.protocol),
                hp = p.host_port,
                cp = p.container_port,
            )
        };
        let v4 = |daddr: String| rule("ipv4", daddr, ips.v4.to_string());
        let v6 = |daddr: String, pod: std::net::Ipv6Addr| rule("ipv6", daddr, format!("[{pod}]"));
        match (p.host_ip, ips.v6) {
            (None, pod6) => {
                script.push_str(&v4(String::new()));
                if let Some(pod6) = pod6 {
                    script.push_str(&v6(String::new(), pod6));
                }
            }
            (Some(IpAddr::V4(ip)), _) => script.push_str(&v4(format!("ip daddr {ip} "))),
            (Some(IpAddr::V6(ip)), Some(pod6)) => script.push_str(&v6(format!("ip6 daddr {ip} "), pod6)),
            (Some(IpAddr::V6(ip)), None) => {
                return Err(NetError::Config(format!(
                    "hostPort {}: node address {ip} is IPv6 and the pod has no IPv6 address",
                    p.host_port
                )))
            }
        }
    }
    apply(&script)
}

/// Handles of the hostport rules, with the pod id each carries.
pub fn hostport_rules(table: &str) -> Result<Vec<(u64, String)>, NetError> {
    let v = list_json(&["list", "chain", "inet", table, "hostports"])?;
    let mut out = Vec::new();
    for item in v["nftables"].as_array().into_iter().flatten() {
        if let Some(rule) = item.get("rule") {
            if let (Some(handle), Some(comment)) = (rule["handle"].as_u64(), rule["comment"].as_str()) {
                out.push((handle, comment.to_string()));
            }
        }
    }
    Ok(out)
}

/// Deletes every hostport rule whose pod id satisfies `gone`.
pub fn remove_hostports(table: &str, gone: impl Fn(&str) -> bool) -> Result<usize, NetError> {
    let rules = hostport_rules(table)?;
    let mut script = String::new();
    let mut n = 0;
    for (handle, pod) in rules {
        if gone(&pod) {
            script.push_str(&format!("delete rule inet {table} hostports handle {handle}\n"));
            n += 1;
        }
    }
    if n > 0 {
        apply(&script)?;
    }
    Ok(n)
}

//! berth's pod network: a bridge, a veth pair per pod, NAT and hostPort in
//! berth's own nftables table (built-in mode), or the cluster's CNI plugins.
//! It knows nothing of gRPC or CRI: its inputs are a pinned netns path, a pod
//! id, the address the agent leased, and port mappings.

pub mod cni;
pub mod ipam;
pub mod netlink;
pub mod nft;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::{Ipv4Net, Ipv6Net};

/// Network failures; each names the thing at fault.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A configuration value is unusable.
    #[error("{0}")]
    Config(String),
    /// A netlink request failed.
    #[error("{step}: {reason}")]
    Netlink { step: String, reason: String },
    /// The pod's network namespace could not be entered.
    #[error("network namespace {path}: {reason}")]
    Netns { path: PathBuf, reason: String },
    /// nftables refused.
    #[error("nftables: {0}")]
    Nft(String),
    /// A CNI plugin failed or is missing.
    #[error("CNI: {0}")]
    Cni(String),
    /// The address pool is used up.
    #[error("no free address left in {0}")]
    Exhausted(String),
    /// A hostPort is taken.
    #[error("hostPort {0} is already used by pod {1}")]
    PortInUse(String, String),
}

/// A hostPort protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

/// One hostPort mapping.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortMapping {
    /// Protocol.
    pub protocol: Protocol,
    /// Port in the pod.
    pub container_port: u16,
    /// Port on the node.
    pub host_port: u16,
    /// Only this node address, if set (else every address, of both
    /// families on a dual-stack network).
    pub host_ip: Option<IpAddr>,
}

impl PortMapping {
    /// True when both claim the same node port.
    pub fn conflicts(&self, other: &PortMapping) -> bool {
        self.protocol == other.protocol
            && self.host_port == other.host_port
            && (self.host_ip.is_none() || other.host_ip.is_none() || self.host_ip == other.host_ip)
    }

    /// `tcp/8080` or `tcp/127.0.0.1:8080`, for messages.
    pub fn describe(&self) -> String {
        let p = format!("{:?}", self.protocol).to_lowercase();
        match self.host_ip {
            Some(IpAddr::V6(ip)) => format!("{p}/[{ip}]:{}", self.host_port),
            Some(ip) => format!("{p}/{ip}:{}", self.host_port),
            None => format!("{p}/{}", self.host_port),
        }
    }
}

/// Built-in mode settings.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// Bridge name.
    pub bridge: String,
    /// Pod subnet.
    pub subnet: Ipv4Net,
    /// Gateway (the bridge's address).
    pub gateway: Ipv4Addr,
    /// nftables table name (family inet).
    pub table: String,
    /// The IPv6 pod subnet and gateway of a dual-stack network.
    pub v6: Option<(Ipv6Net, Ipv6Addr)>,
}

/// A pod's addresses on the bridge: IPv4, and IPv6 on a dual-stack network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodIps {
    /// The IPv4 address (primary).
    pub v4: Ipv4Addr,
    /// The IPv6 address.
    pub v6: Option<Ipv6Addr>,
}

impl BridgeConfig {
    /// Validates bridge name, subnet and gateway.
    pub fn new(bridge: &str, subnet: &str, gateway: &str, table: &str) -> Result<BridgeConfig, NetError> {
        if bridge.is_empty() || bridge.len() > 15 || bridge.contains(['/', ' ', '\0']) {
            return Err(NetError::Config(format!("network.bridge: {bridge:?} is not a valid interface name (1 to 15 characters)")));
        }
        let subnet: Ipv4Net = subnet.parse().map_err(|_| NetError::Config(format!("network.subnet: {subnet:?} is not an IPv4 CIDR")))?;
        if subnet.prefix_len() > 30 {
            return Err(NetError::Config(format!("network.subnet: {subnet} is too small for pods (at most /30)")));
        }
        if subnet.network() != subnet.addr() {
            return Err(NetError::Config(format!("network.subnet: {subnet} has host bits set (did you mean {}?)", subnet.trunc())));
        }
        let gateway = if gateway.is_empty() {
            ipam::nth(subnet, 1)
        } else {
            let g: Ipv4Addr =
                gateway.parse().map_err(|_| NetError::Config(format!("network.gateway: {gateway:?} is not an IPv4 address")))?;
            if !subnet.contains(&g) || g == subnet.network() || g == subnet.broadcast() {
                return Err(NetError::Config(format!("network.gateway: {g} is not a host address of {subnet}")));
            }
            g
        };
        if table.is_empty() || !table.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(NetError::Config(format!("network.nft_table: {table:?} is not a valid table name")));
        }
        Ok(BridgeConfig { bridge: bridge.into(), subnet, gateway, table: table.into(), v6: None })
    }

    /// Makes the network dual-stack with the IPv6 `subnet` (`""`: IPv4
    /// only); its gateway is the subnet's first host address.
    pub fn with_ipv6(mut self, subnet: &str) -> Result<BridgeConfig, NetError> {
        if subnet.is_empty() {
            self.v6 = None;
            return Ok(self);
        }
        let net: Ipv6Net = subnet.parse().map_err(|_| NetError::Config(format!("network.subnet6: {subnet:?} is not an IPv6 CIDR")))?;
        if net.prefix_len() > 120 {
            return Err(NetError::Config(format!("network.subnet6: {net} is too small for pods (at most /120)")));
        }
        if net.network() != net.addr() {
            return Err(NetError::Config(format!("network.subnet6: {net} has host bits set (did you mean {}?)", net.trunc())));
        }
        self.v6 = Some((net, ipam::nth6(net, 1)));
        Ok(self)
    }

    /// The host end of a pod's veth: `bv` + 12 characters of the pod id.
    pub fn host_veth(pod_id: &str) -> String {
        format!("bv{}", &pod_id[..pod_id.len().min(12)])
    }

    /// Start-up: the bridge (checked not to clash with the host's networks),
    /// forwarding, route_localnet on the bridge, and the nftables table.
    pub fn ensure_host(&self) -> Result<(), NetError> {
        let cfg = self.clone();
        netlink::with_handle(async move |h| {
            for (link, ip, prefix) in netlink::host_addresses(&h).await? {
                if link == cfg.bridge {
                    continue;
                }
                let overlap = match (ip, cfg.v6) {
                    (IpAddr::V4(ip), _) => {
                        let theirs = Ipv4Net::new(ip, prefix).map(|n| n.trunc()).unwrap_or(cfg.subnet);
                        (cfg.subnet.contains(&ip) || theirs.contains(&cfg.subnet.network())).then_some("network.subnet")
                    }
                    (IpAddr::V6(ip), Some((net, _))) => {
                        let theirs = Ipv6Net::new(ip, prefix).map(|n| n.trunc()).unwrap_or(net);
                        (net.contains(&ip) || theirs.contains(&net.network())).then_some("network.subnet6")
                    }
                    (IpAddr::V6(_), None) => None,
                };
                if let Some(key) = overlap {
                    return Err(NetError::Config(format!("{key}: overlaps {link}'s {ip}/{prefix}")));
                }
            }
            let index = netlink::ensure_bridge(&h, &cfg.bridge, cfg.gateway, cfg.subnet.prefix_len()).await?;
            if let Some((net, gateway)) = cfg.v6 {
                netlink::add_address(&h, index, gateway.into(), net.prefix_len(), &cfg.bridge).await?;
            }
            Ok(())
        })?;
        sysctl("net/ipv4/ip_forward", "1")?;
        sysctl(&format!("net/ipv4/conf/{}/route_localnet", self.bridge), "1")?;
        if self.v6.is_some() {
            // Routing between the bridge and the node's uplinks, as for IPv4.
            sysctl("net/ipv6/conf/all/forwarding", "1")?;
        }
        nft::ensure_table(&self.table, &self.bridge, self.subnet, self.v6.map(|(net, _)| net))
    }

    /// Connects a pod: veth on the bridge, `eth0` with `ip` in the pod,
    /// default route, hostPort rules. On error nothing of it stays.
    pub fn setup_pod(&self, pod_id: &str, netns: &Path, ip: PodIps, ports: &[PortMapping]) -> Result<(), NetError> {
        let r = self.setup_pod_inner(pod_id, netns, ip, ports);
        if r.is_err() {
            let _ = self.teardown_pod(pod_id, !ports.is_empty());
        }
        r
    }

    fn setup_pod_inner(&self, pod_id: &str, netns: &Path, ip: PodIps, ports: &[PortMapping]) -> Result<(), NetError> {
        let host = Self::host_veth(pod_id);
        let ns_file = std::fs::File::open(netns).map_err(|e| NetError::Netns { path: netns.into(), reason: e.to_string() })?;
        let bridge = self.bridge.clone();
        let h2 = host.clone();
        netlink::with_handle(async move |h| {
            let (bridge_idx, _, _) =
                netlink::link_by_name(&h, &bridge).await?.ok_or_else(|| NetError::Config(format!("bridge {bridge} is missing")))?;
            netlink::create_veth(&h, &h2, bridge_idx, &ns_file).await
        })?;
        // Hairpin: a pod reaching its own hostPort comes back through its port.
        let _ = std::fs::write(format!("/sys/class/net/{host}/brport/hairpin_mode"), "1");
        let (prefix, gateway) = (self.subnet.prefix_len(), self.gateway);
        let v6 = match (ip.v6, self.v6) {
            (Some(addr), Some((net, gateway))) => Some((addr, net.prefix_len(), gateway)),
            _ => None,
        };
        netlink::in_netns(netns, move || {
            netlink::with_handle(async move |h| netlink::configure_pod_side(&h, ip.v4, prefix, gateway, v6).await)
        })?;
        nft::add_hostports(&self.table, pod_id, ip, ports)
    }

    /// Disconnects a pod (idempotent): its hostPort rules (when it has any)
    /// and veth.
    pub fn teardown_pod(&self, pod_id: &str, had_ports: bool) -> Result<(), NetError> {
        if had_ports {
            nft::remove_hostports(&self.table, |p| p == pod_id)?;
        }
        let host = Self::host_veth(pod_id);
        netlink::with_handle(async move |h| netlink::delete_link(&h, &host).await)
    }

    /// Removes the bridge (its veths go with it) and the nftables table.
    pub fn remove_host(&self) -> Result<(), NetError> {
        let bridge = self.bridge.clone();
        netlink::with_handle(async move |h| netlink::delete_link(&h, &bridge).await)?;
        nft::delete_table(&self.table)
    }

    /// Start-up garbage collection: veths on our bridge and hostPort rules of
    /// pods that `alive` does not know.
    pub fn collect_garbage(&self, alive: &dyn Fn(&str) -> bool) -> Result<(usize, usize), NetError> {
        let bridge = self.bridge.clone();
        let ports = netlink::with_handle(async move |h| {
            let Some((idx, _, _)) = netlink::link_by_name(&h, &bridge).await? else { return Ok(Vec::new()) };
            netlink::bridge_ports(&h, idx).await
        })?;
        let mut veths = 0;
        for name in ports {
            let Some(prefix) = name.strip_prefix("bv") else { continue };
            if !alive(prefix) {
                let n = name.clone();
                netlink::with_handle(async move |h| netlink::delete_link(&h, &n).await)?;
                veths += 1;
            }
        }
        let rules = nft::remove_hostports(&self.table, |pod| !alive(&pod[..pod.len().min(12)]))?;
        Ok((veths, rules))
    }
}

/// Writes a sysctl under /proc/sys, logging when it changes.
pub fn sysctl(key: &str, value: &str) -> Result<(), NetError> {
    let path = Path::new("/proc/sys").join(key);
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if current.trim() == value {
        return Ok(());
    }
    std::fs::write(&path, value).map_err(|e| NetError::Config(format!("sysctl {}: {e}", key.replace('/', "."))))?;
    tracing::info!(sysctl = %key.replace('/', "."), value, "set for the pod network");
    Ok(())
}

/// The IPs a pod got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodAddresses {
    /// All of them, primary first.
    pub ips: Vec<IpAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation() {
        let c = BridgeConfig::new("berth0", "10.88.0.0/16", "", "berth").unwrap();
        assert_eq!(c.gateway, Ipv4Addr::new(10, 88, 0, 1));
        let d = c.clone().with_ipv6("fd00:88::/64").unwrap();
        assert_eq!(d.v6.map(|(n, g)| (n.to_string(), g.to_string())), Some(("fd00:88::/64".into(), "fd00:88::1".into())));
        assert!(c.clone().with_ipv6("").unwrap().v6.is_none());
        assert!(c.clone().with_ipv6("fd00:88::1/64").unwrap_err().to_string().contains("host bits"));
        assert!(c.clone().with_ipv6("fd00:88::/124").unwrap_err().to_string().contains("at most /120"));
        assert!(c.clone().with_ipv6("10.0.0.0/8").unwrap_err().to_string().contains("network.subnet6"));
        assert!(BridgeConfig::new("berth0", "10.88.0.0/31", "", "berth").is_err());
        assert!(BridgeConfig::new("berth0", "10.88.0.1/16", "", "berth").unwrap_err().to_string().contains("host bits"));
        assert!(BridgeConfig::new("berth0", "nope", "", "berth").unwrap_err().to_string().contains("network.subnet"));
        assert!(BridgeConfig::new("a-very-long-bridge-name", "10.88.0.0/16", "", "berth").is_err());
        assert!(BridgeConfig::new("berth0", "10.88.0.0/16", "10.99.0.1", "berth").unwrap_err().to_string().contains("network.gateway"));
        assert!(BridgeConfig::new("berth0", "10.88.0.0/16", "", "bad table").is_err());
    }

    #[test]
    fn port_conflicts() {
        let m = |p, port, ip: Option<IpAddr>| PortMapping { protocol: p, container_port: 80, host_port: port, host_ip: ip };
        let local: IpAddr = Ipv4Addr::LOCALHOST.into();
        assert!(m(Protocol::Tcp, 80, None).conflicts(&m(Protocol::Tcp, 80, None)));
        assert!(!m(Protocol::Tcp, 80, None).conflicts(&m(Protocol::Udp, 80, None)));
        assert!(m(Protocol::Tcp, 80, Some(local)).conflicts(&m(Protocol::Tcp, 80, None)));
        assert!(!m(Protocol::Tcp, 80, Some(local)).conflicts(&m(Protocol::Tcp, 80, Some(Ipv4Addr::new(10, 0, 0, 1).into()))));
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert!(m(Protocol::Tcp, 80, Some(v6)).conflicts(&m(Protocol::Tcp, 80, None)));
        assert!(!m(Protocol::Tcp, 80, Some(v6)).conflicts(&m(Protocol::Tcp, 80, Some(local))));
        assert_eq!(m(Protocol::Tcp, 80, Some(v6)).describe(), "tcp/[fd00::1]:80");
    }
}

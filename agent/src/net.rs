//! The agent's side of the pod network: picks the mode, leases addresses in
//! the store (never twice, also across restarts), checks hostPort conflicts,
//! and calls into `berth-network` to wire pods up and down.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::RwLock;

use berth_network::cni::{Cni, CniPod};
use berth_network::{ipam, BridgeConfig, NetError, PodIps};

use crate::config::{Config, NetworkMode};
use crate::error::{Error, Result};
use crate::store::{LeaseRecord, PodRecord, PodState, Store};

/// The store setting holding the last address handed out (round robin).
const LAST_IP: &str = "ipam_last_ip";
/// The same for IPv6.
const LAST_IP6: &str = "ipam_last_ip6";

/// The pod network as the agent runs it.
pub struct Network {
    builtin: Option<RwLock<BridgeConfig>>,
    cni: Option<Cni>,
}

impl From<NetError> for Error {
    fn from(e: NetError) -> Error {
        match e {
            NetError::PortInUse(..) => Error::AlreadyExists(e.to_string()),
            NetError::Exhausted(_) => Error::ResourceExhausted(e.to_string()),
            NetError::Config(_) | NetError::Cni(_) => Error::FailedPrecondition(e.to_string()),
            e => Error::internal("pod network", e),
        }
    }
}

fn cni_of(config: &Config) -> Cni {
    let n = &config.network;
    Cni { conf_dir: n.cni_conf_dir.clone(), bin_dirs: n.cni_bin_dirs.clone(), cache_dir: config.state.join("cni") }
}

/// Whether the configured mode networks pods through CNI (auto: when a
/// config exists, or one that does not load).
fn uses_cni(config: &Config, cni: &Cni) -> bool {
    match config.network.mode {
        NetworkMode::Cni => true,
        NetworkMode::Builtin => false,
        NetworkMode::Auto => matches!(cni.load(), Ok(Some(_)) | Err(_)),
    }
}

impl Network {
    /// Removes what start-up makes on the host for the built-in network (the
    /// bridge and the nftables table, by their configured names), for
    /// `berthd cleanup`; works without a state dir (a reboot wipes /run) and
    /// is idempotent. CNI plugins own what they made. Blocking.
    pub fn remove_host(config: &Config) -> Result<()> {
        if uses_cni(config, &cni_of(config)) {
            return Ok(());
        }
        let n = &config.network;
        let bridge = BridgeConfig::new(&n.bridge, &n.subnet, &n.gateway, &n.nft_table).map_err(Error::from)?;
        bridge.remove_host().map_err(Error::from)
    }

    /// Sets up the host side of the configured mode. `pod_cidr` (from
    /// UpdateRuntimeConfig) replaces the configured subnet.
    pub fn open(config: &Config, pod_cidr: Option<&str>) -> Result<Network> {
        let n = &config.network;
        let cni = cni_of(config);
        if uses_cni(config, &cni) {
            match cni.load() {
                Ok(Some(l)) => tracing::info!(config = %l.path.display(), "pod network: CNI"),
                Ok(None) => {
                    tracing::warn!(dir = %cni.conf_dir.display(), "pod network: CNI, but no config yet (NetworkReady=false until one appears)")
                }
                Err(e) => tracing::warn!("pod network: CNI: {e}"),
            }
            return Ok(Network { builtin: None, cni: Some(cni) });
        }
        let subnet = pod_cidr.and_then(|c| cidr_part(c, false)).unwrap_or(&n.subnet);
        let gateway = if subnet == n.subnet { n.gateway.as_str() } else { "" };
        let subnet6 = pod_cidr.and_then(|c| cidr_part(c, true)).unwrap_or(&n.subnet6);
        let bridge = BridgeConfig::new(&n.bridge, subnet, gateway, &n.nft_table)?.with_ipv6(subnet6)?;
        bridge.ensure_host()?;
        Ok(Network { builtin: Some(RwLock::new(bridge)), cni: None })
    }

    fn bridge(&self) -> Option<BridgeConfig> {
        self.builtin.as_ref().map(|b| b.read().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// NetworkReady's status, reason and message.
    pub fn ready(&self) -> (bool, String, String) {
        if let Some(cni) = &self.cni {
            return match cni.load() {
                // CNI 1.1's STATUS, for configs that have it.
                Ok(Some(l)) => match cni.status(&l) {
                    Ok(()) => (true, String::new(), format!("CNI config {}", l.path.display())),
                    Err(e) => (false, "NetworkPluginNotReady".into(), format!("CNI config {}: {e}", l.path.display())),
                },
                Ok(None) => (false, "NetworkPluginNotReady".into(), format!("no CNI network config in {}", cni.conf_dir.display())),
                Err(e) => (false, "NetworkPluginNotReady".into(), e.to_string()),
            };
        }
        match self.bridge() {
            Some(b) => {
                let v6 = b.v6.map(|(net, _)| format!(" and {net}")).unwrap_or_default();
                (true, String::new(), format!("built-in bridge {} on {}{v6}", b.bridge, b.subnet))
            }
            None => (false, "NetworkPluginNotReady".into(), "no pod network is configured".into()),
        }
    }

    /// Switches new pods to kubelet's pod CIDR (built-in mode).
    pub fn set_pod_cidr(&self, config: &Config, cidr: &str) -> Result<()> {
        let Some(lock) = &self.builtin else { return Ok(()) };
        let Some(v4) = cidr_part(cidr, false) else { return Ok(()) };
        let n = &config.network;
        // A dual-stack node's CIDR is "v4,v6"; without a v6 part the configured one stays.
        let v6 = cidr_part(cidr, true).unwrap_or(&n.subnet6);
        let field = "runtime_config.network_config.pod_cidr";
        let next =
            BridgeConfig::new(&n.bridge, v4, "", &n.nft_table).and_then(|b| b.with_ipv6(v6)).map_err(|e| Error::invalid(field, e))?;
        let current = lock.read().unwrap_or_else(|p| p.into_inner()).clone();
        if (current.subnet, current.v6) == (next.subnet, next.v6) {
            return Ok(());
        }
        next.ensure_host().map_err(Error::from)?;
        *lock.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    /// Checks a pod's hostPorts against the network before anything is
    /// made: a node address of IPv6 needs a dual-stack built-in network
    /// (CNI plugins judge their own).
    pub fn check_ports(&self, ports: &[berth_network::PortMapping]) -> Result<()> {
        let Some(bridge) = self.bridge() else { return Ok(()) };
        match ports.iter().find(|p| p.host_ip.is_some_and(|ip| ip.is_ipv6())) {
            Some(p) if bridge.v6.is_none() => Err(Error::invalid(
                "config.port_mappings",
                format!("{}: an IPv6 node address, but the pod network is IPv4 only (network.subnet6 is empty)", p.describe()),
            )),
            _ => Ok(()),
        }
    }

    /// Leases an address and wires the pod (blocking). Fills `pod.ips`.
    /// `others`: the node's other pods with hostPorts, for conflicts with
    /// this pod's (none needed when it has none). The built-in network
    /// marks `network_lease` in `stages` once the address is leased.
    pub fn setup(
        &self,
        store: &Store,
        others: &[PodRecord],
        pod: &mut PodRecord,
        netns: &std::path::Path,
        dns: &crate::pod::PodDns,
        stages: &mut crate::util::Stages,
    ) -> Result<()> {
        if let Some(cni) = &self.cni {
            let list = cni.load().map_err(Error::from)?.ok_or_else(|| {
                Error::FailedPrecondition(format!("no CNI network config in {}: the network is not ready", cni.conf_dir.display()))
            })?;
            let ips = cni.add(&list, &cni_pod(pod, netns, dns)).map_err(Error::from)?;
            pod.ips = ips.iter().map(|ip| ip.to_string()).collect();
            return Ok(());
        }
        let Some(bridge) = self.bridge() else { return Ok(()) };
        if pod_bandwidth(&pod.annotations).is_ok_and(|b| b != berth_network::cni::Bandwidth::default()) {
            tracing::warn!(pod_id = %pod.id, "bandwidth annotations are applied by a CNI bandwidth plugin; the built-in network does not shape traffic");
        }
        let ips = lease(store, others, pod, &bridge)?;
        stages.mark("network_lease");
        bridge.setup_pod(&pod.id, netns, ips, &pod.port_mappings).map_err(|e| {
            let _ = release(store, &pod.id);
            Error::from(e)
        })?;
        pod.ips = std::iter::once(ips.v4.to_string()).chain(ips.v6.map(|ip| ip.to_string())).collect();
        Ok(())
    }

    /// Unwires the pod and releases its lease (idempotent, blocking).
    pub fn teardown(&self, store: &Store, pod: &PodRecord, netns: &std::path::Path) -> Result<()> {
        if pod.network_mode == crate::spec::ns_mode::NODE {
            return Ok(());
        }
        if let Some(cni) = &self.cni {
            return cni.del(&cni_pod(pod, netns, &crate::pod::PodDns::default())).map_err(Error::from);
        }
        if let Some(bridge) = self.bridge() {
            bridge.teardown_pod(&pod.id, !pod.port_mappings.is_empty()).map_err(Error::from)?;
        }
        release(store, &pod.id)
    }

    /// Start-up: removes veths, rules and leases of pods that no longer hold a network.
    pub fn collect_garbage(&self, store: &Store, pods: &[PodRecord]) -> Result<()> {
        let live: Vec<String> = pods.iter().filter(|p| p.state == PodState::Ready && !p.ips.is_empty()).map(|p| p.id.clone()).collect();
        let stale: Vec<LeaseRecord> = store.list::<LeaseRecord>()?.into_iter().filter(|l| !live.contains(&l.pod_id)).collect();
        for l in &stale {
            store.delete::<LeaseRecord>(&l.ip)?;
        }
        if let Some(bridge) = self.bridge() {
            let alive = |prefix: &str| live.iter().any(|id| id.starts_with(prefix));
            let (veths, rules) = bridge.collect_garbage(&alive).map_err(Error::from)?;
            if veths + rules + stale.len() > 0 {
                tracing::info!(veths, rules, leases = stale.len(), "pod network garbage collected");
            }
        }
        Ok(())
    }
}

/// The IPv4 (`v6` false) or IPv6 part of a pod CIDR list ("10.1.0.0/24,fd00::/64").
fn cidr_part(cidrs: &str, v6: bool) -> Option<&str> {
    cidrs.split(',').map(str::trim).find(|c| !c.is_empty() && c.contains(':') == v6)
}

/// The pod annotations kubelet sets from a pod's bandwidth annotations.
pub const INGRESS_BANDWIDTH: &str = "kubernetes.io/ingress-bandwidth";
/// See [`INGRESS_BANDWIDTH`].
pub const EGRESS_BANDWIDTH: &str = "kubernetes.io/egress-bandwidth";

/// The pod's bandwidth limits from its annotations, checked as kubelet
/// checks them (a quantity of bits per second between 1k and 1P).
pub fn pod_bandwidth(annotations: &std::collections::BTreeMap<String, String>) -> Result<berth_network::cni::Bandwidth> {
    let get = |key: &str| -> Result<Option<u64>> {
        let Some(v) = annotations.get(key) else { return Ok(None) };
        let bps = parse_quantity(v).ok_or_else(|| Error::invalid(format!("annotations[{key}]"), format!("{v:?} is not a quantity")))?;
        if !(1_000..=1_000_000_000_000_000).contains(&bps) {
            return Err(Error::invalid(format!("annotations[{key}]"), format!("{v:?} is not between 1k and 1P bits per second")));
        }
        Ok(Some(bps))
    };
    Ok(berth_network::cni::Bandwidth { ingress_bps: get(INGRESS_BANDWIDTH)?, egress_bps: get(EGRESS_BANDWIDTH)? })
}

/// A Kubernetes quantity ("10M", "1.5Gi", "100k", "2e6", "500m") as a whole
/// number, rounded up as resource.Quantity.Value() does.
pub fn parse_quantity(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+')).unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    if num.is_empty() || num.starts_with('.') && num.len() == 1 {
        return None;
    }
    let (mut exp10, pow2): (i32, u32) = match suffix {
        "" => (0, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        e if e.starts_with(['e', 'E']) => (e[1..].parse().ok()?, 0),
        _ => return None,
    };
    let num = num.trim_start_matches('+');
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // digits * 10^(exp10 - len(frac)) * 2^pow2, exactly, then rounded up.
    let digits: u128 = format!("{int}{frac}").parse().ok()?;
    exp10 -= frac.len() as i32;
    let mut value = digits.checked_mul(1u128.checked_shl(pow2)?)?;
    if exp10 >= 0 {
        value = value.checked_mul(10u128.checked_pow(exp10 as u32)?)?;
    } else {
        let d = 10u128.checked_pow((-exp10) as u32)?;
        value = value.div_ceil(d);
    }
    u64::try_from(value).ok()
}

fn cni_pod<'a>(pod: &'a PodRecord, netns: &'a std::path::Path, dns: &'a crate::pod::PodDns) -> CniPod<'a> {
    CniPod {
        id: &pod.id,
        netns,
        namespace: &pod.namespace,
        name: &pod.name,
        uid: &pod.uid,
        ports: &pod.port_mappings,
        dns: (&dns.servers, &dns.searches, &dns.options),
        // Checked at RunPodSandbox; a record from before that check shapes nothing.
        bandwidth: pod_bandwidth(&pod.annotations).unwrap_or_default(),
    }
}

/// Leases the pod's addresses (IPv4, and IPv6 on a dual-stack network) in
/// one transaction, refusing hostPorts held by pods that already have a
/// lease. A pod that holds leases (a retried setup) keeps them.
fn lease(store: &Store, others: &[PodRecord], pod: &PodRecord, bridge: &BridgeConfig) -> Result<PodIps> {
    let mut failure: Option<NetError> = None;
    let ips = store.write(|tx| {
        let leases = tx.list::<LeaseRecord>()?;
        let mine: Vec<std::net::IpAddr> = leases.iter().filter(|l| l.pod_id == pod.id).filter_map(|l| l.ip.parse().ok()).collect();
        let mine4 = mine.iter().find_map(|ip| match ip {
            std::net::IpAddr::V4(v4) => Some(*v4),
            _ => None,
        });
        let mine6 = mine.iter().find_map(|ip| match ip {
            std::net::IpAddr::V6(v6) => Some(*v6),
            _ => None,
        });
        if mine4.is_none() {
            let holders: HashSet<&str> = leases.iter().map(|l| l.pod_id.as_str()).collect();
            for other in others {
                if other.id == pod.id || !holders.contains(other.id.as_str()) {
                    continue;
                }
                if let Some(p) = pod.port_mappings.iter().find(|p| other.port_mappings.iter().any(|o| o.conflicts(p))) {
                    failure = Some(NetError::PortInUse(p.describe(), other.id.clone()));
                    return Ok(None);
                }
            }
        }
        let v4 = match mine4 {
            Some(ip) => ip,
            None => {
                let used: HashSet<Ipv4Addr> = leases.iter().filter_map(|l| l.ip.parse().ok()).collect();
                let after = tx.setting(LAST_IP)?.and_then(|s| s.parse().ok());
                let Some(ip) = ipam::allocate(bridge.subnet, bridge.gateway, &used, after) else {
                    failure = Some(NetError::Exhausted(bridge.subnet.to_string()));
                    return Ok(None);
                };
                tx.put(&ip.to_string(), &LeaseRecord { ip: ip.to_string(), pod_id: pod.id.clone() })?;
                tx.set_setting(LAST_IP, &ip.to_string())?;
                ip
            }
        };
        let v6 = match (bridge.v6, mine6) {
            (None, _) => None,
            (Some((net, _)), Some(ip)) if net.contains(&ip) => Some(ip),
            (Some((net, gateway)), _) => {
                let used: HashSet<Ipv6Addr> = leases.iter().filter_map(|l| l.ip.parse().ok()).collect();
                let after = tx.setting(LAST_IP6)?.and_then(|s| s.parse().ok());
                let Some(ip) = ipam::allocate6(net, gateway, &used, after) else {
                    failure = Some(NetError::Exhausted(net.to_string()));
                    return Ok(None);
                };
                tx.put(&ip.to_string(), &LeaseRecord { ip: ip.to_string(), pod_id: pod.id.clone() })?;
                tx.set_setting(LAST_IP6, &ip.to_string())?;
                Some(ip)
            }
        };
        Ok(Some(PodIps { v4, v6 }))
    })?;
    match (ips, failure) {
        (Some(ips), _) => Ok(ips),
        (None, Some(e)) => Err(e.into()),
        (None, None) => Err(Error::internal("lease", "no address and no reason")),
    }
}

/// Drops every lease of a pod.
fn release(store: &Store, pod_id: &str) -> Result<()> {
    Ok(store.write(|tx| {
        for l in tx.list::<LeaseRecord>()? {
            if l.pod_id == pod_id {
                tx.delete::<LeaseRecord>(&l.ip)?;
            }
        }
        Ok(())
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_as_kubernetes_reads_them() {
        for (q, v) in [
            ("1M", 1_000_000),
            ("10M", 10_000_000),
            ("1.5M", 1_500_000),
            ("1Ki", 1024),
            ("2Mi", 2 << 20),
            ("100k", 100_000),
            ("2e6", 2_000_000),
            ("1500m", 2),
            ("1000", 1000),
            ("0.5k", 500),
            ("1P", 1_000_000_000_000_000),
        ] {
            assert_eq!(parse_quantity(q), Some(v), "{q}");
        }
        for bad in ["", "M", "1X", "1.2.3", "-1M", "abc", ".", "1e"] {
            assert_eq!(parse_quantity(bad), None, "{bad}");
        }
    }

    #[test]
    fn bandwidth_annotations_are_checked() {
        let mut a = std::collections::BTreeMap::new();
        assert_eq!(pod_bandwidth(&a).unwrap(), berth_network::cni::Bandwidth::default());
        a.insert(INGRESS_BANDWIDTH.to_string(), "1M".to_string());
        assert_eq!(pod_bandwidth(&a).unwrap().ingress_bps, Some(1_000_000));
        a.insert(EGRESS_BANDWIDTH.to_string(), "10".to_string());
        let e = pod_bandwidth(&a).unwrap_err().to_string();
        assert!(e.contains("kubernetes.io/egress-bandwidth") && e.contains("1k"), "{e}");
        a.insert(EGRESS_BANDWIDTH.to_string(), "lots".to_string());
        assert!(pod_bandwidth(&a).unwrap_err().to_string().contains("not a quantity"));
    }
}

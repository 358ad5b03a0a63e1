//! The agent's side of the pod network: picks the mode, leases addresses in
//! the store (never twice, also across restarts), checks hostPort conflicts,
//! and calls into `berth-network` to wire pods up and down.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Mutex, MutexGuard, RwLock};

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
    /// The store's leases, indexed; see [`Leases`].
    leases: Mutex<Leases>,
}

/// The built-in network's leases as the store holds them, by pod and by
/// address, so that a lease or a release finds a pod's addresses and the
/// free ones without decoding every lease record in its write transaction
/// (each RunPodSandbox did, which grew with the pods on the node). Loaded
/// from the store on first use, under [`Network::leases`]'s lock, which
/// every change of the lease table holds; changed only after the
/// transaction that changed the store has committed.
#[derive(Debug, Default)]
struct Leases {
    loaded: bool,
    /// Pod id → the keys (the addresses as text) of its lease records.
    by_pod: HashMap<String, Vec<String>>,
    used4: HashSet<Ipv4Addr>,
    used6: HashSet<Ipv6Addr>,
}

impl Leases {
    fn insert(&mut self, ip: String, pod_id: String) {
        self.mark_used(&ip, true);
        self.by_pod.entry(pod_id).or_default().push(ip);
    }

    /// Deletes every lease of `pods` from the store in one transaction (none
    /// when they hold none), then from the index; returns how many went.
    fn forget(&mut self, store: &Store, pods: &[String]) -> Result<usize> {
        let keys: Vec<&String> = pods.iter().filter_map(|id| self.by_pod.get(id)).flatten().collect();
        if !keys.is_empty() {
            store.write(|tx| keys.iter().try_for_each(|ip| tx.delete::<LeaseRecord>(ip).map(drop)))?;
        }
        let n = keys.len();
        for id in pods {
            for ip in self.by_pod.remove(id).unwrap_or_default() {
                self.mark_used(&ip, false);
            }
        }
        Ok(n)
    }

    /// A key that is no address (none is written so) stays in `by_pod`, so
    /// that a release deletes it, and holds no address.
    fn mark_used(&mut self, ip: &str, used: bool) {
        match (ip.parse(), used) {
            (Ok(std::net::IpAddr::V4(v4)), true) => self.used4.insert(v4),
            (Ok(std::net::IpAddr::V4(v4)), false) => self.used4.remove(&v4),
            (Ok(std::net::IpAddr::V6(v6)), true) => self.used6.insert(v6),
            (Ok(std::net::IpAddr::V6(v6)), false) => self.used6.remove(&v6),
            (Err(_), _) => false,
        };
    }

    /// The pod's addresses of each family, if it holds any.
    fn of(&self, pod_id: &str) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
        let (mut v4, mut v6) = (None, None);
        for ip in self.by_pod.get(pod_id).into_iter().flatten().filter_map(|ip| ip.parse().ok()) {
            match ip {
                std::net::IpAddr::V4(ip) => v4 = v4.or(Some(ip)),
                std::net::IpAddr::V6(ip) => v6 = v6.or(Some(ip)),
            }
        }
        (v4, v6)
    }
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
            return Ok(Network { builtin: None, cni: Some(cni), leases: Mutex::default() });
        }
        let subnet = pod_cidr.and_then(|c| cidr_part(c, false)).unwrap_or(&n.subnet);
        let gateway = if subnet == n.subnet { n.gateway.as_str() } else { "" };
        let subnet6 = pod_cidr.and_then(|c| cidr_part(c, true)).unwrap_or(&n.subnet6);
        let bridge = BridgeConfig::new(&n.bridge, subnet, gateway, &n.nft_table)?.with_ipv6(subnet6)?;
        bridge.ensure_host()?;
        Ok(Network { builtin: Some(RwLock::new(bridge)), cni: None, leases: Mutex::default() })
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
        let ips = self.lease(store, others, pod, &bridge)?;
        stages.mark("network_lease");
        bridge.setup_pod(&pod.id, netns, ips, &pod.port_mappings).map_err(|e| {
            let _ = self.release(store, &pod.id);
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
        self.release(store, &pod.id)
    }

    /// Start-up: removes veths, rules and leases of pods that no longer hold a network.
    pub fn collect_garbage(&self, store: &Store, pods: &[PodRecord]) -> Result<()> {
        let live: Vec<String> = pods.iter().filter(|p| p.state == PodState::Ready && !p.ips.is_empty()).map(|p| p.id.clone()).collect();
        let stale = {
            let mut leases = self.leases(store)?;
            let gone: Vec<String> = leases.by_pod.keys().filter(|id| !live.contains(id)).cloned().collect();
            leases.forget(store, &gone)?
        };
        if let Some(bridge) = self.bridge() {
            let alive = |prefix: &str| live.iter().any(|id| id.starts_with(prefix));
            let (veths, rules) = bridge.collect_garbage(&alive).map_err(Error::from)?;
            if veths + rules + stale > 0 {
                tracing::info!(veths, rules, leases = stale, "pod network garbage collected");
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

impl Network {
    /// The lease index, loaded from the store if it is not yet; the guard
    /// holds it for the caller's whole change of the lease table.
    fn leases(&self, store: &Store) -> Result<MutexGuard<'_, Leases>> {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        if !leases.loaded {
            for l in store.list::<LeaseRecord>()? {
                leases.insert(l.ip, l.pod_id);
            }
            leases.loaded = true;
        }
        Ok(leases)
    }

    /// Leases the pod's addresses (IPv4, and IPv6 on a dual-stack network)
    /// in one transaction, refusing hostPorts held by pods that already have
    /// a lease. A pod that holds leases (a retried setup) keeps them.
    fn lease(&self, store: &Store, others: &[PodRecord], pod: &PodRecord, bridge: &BridgeConfig) -> Result<PodIps> {
        let mut leases = self.leases(store)?;
        let (mine4, mine6) = leases.of(&pod.id);
        if mine4.is_none() {
            for other in others {
                if other.id == pod.id || !leases.by_pod.contains_key(&other.id) {
                    continue;
                }
                if let Some(p) = pod.port_mappings.iter().find(|p| other.port_mappings.iter().any(|o| o.conflicts(p))) {
                    return Err(NetError::PortInUse(p.describe(), other.id.clone()).into());
                }
            }
        }
        let v4 = match mine4 {
            Some(ip) => ip,
            None => {
                let after = store.setting(LAST_IP)?.and_then(|s| s.parse().ok());
                ipam::allocate(bridge.subnet, bridge.gateway, &leases.used4, after)
                    .ok_or_else(|| NetError::Exhausted(bridge.subnet.to_string()))?
            }
        };
        let v6 = match (bridge.v6, mine6) {
            (None, _) => None,
            (Some((net, _)), Some(ip)) if net.contains(&ip) => Some(ip),
            (Some((net, gateway)), _) => {
                let after = store.setting(LAST_IP6)?.and_then(|s| s.parse().ok());
                Some(ipam::allocate6(net, gateway, &leases.used6, after).ok_or_else(|| NetError::Exhausted(net.to_string()))?)
            }
        };
        // The addresses this call leased, each with the setting that
        // remembers the family's last one (round robin).
        let new: Vec<(String, &str)> =
            [mine4.is_none().then(|| (v4.to_string(), LAST_IP)), v6.filter(|ip| mine6 != Some(*ip)).map(|ip| (ip.to_string(), LAST_IP6))]
                .into_iter()
                .flatten()
                .collect();
        if !new.is_empty() {
            store.write(|tx| {
                for (ip, last) in &new {
                    tx.put(ip, &LeaseRecord { ip: ip.clone(), pod_id: pod.id.clone() })?;
                    tx.set_setting(last, ip)?;
                }
                Ok(())
            })?;
        }
        for (ip, _) in new {
            leases.insert(ip, pod.id.clone());
        }
        Ok(PodIps { v4, v6 })
    }

    /// Drops every lease of a pod.
    fn release(&self, store: &Store, pod_id: &str) -> Result<()> {
        self.leases(store)?.forget(store, &[pod_id.to_string()]).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(id: &str, host_port: Option<u16>) -> PodRecord {
        let port_mappings = host_port
            .map(|hp| berth_network::PortMapping {
                protocol: berth_network::Protocol::Tcp,
                container_port: 80,
                host_port: hp,
                host_ip: None,
            })
            .into_iter()
            .collect();
        PodRecord { id: id.into(), port_mappings, ..Default::default() }
    }

    fn network() -> Network {
        Network { builtin: None, cni: None, leases: Mutex::default() }
    }

    fn stored(store: &Store) -> Vec<(String, String)> {
        let mut v: Vec<_> = store.list::<LeaseRecord>().unwrap().into_iter().map(|l| (l.pod_id, l.ip)).collect();
        v.sort();
        v
    }

    #[test]
    fn leases_are_kept_in_the_store_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let bridge = BridgeConfig::new("berth0", "10.88.0.0/29", "", "berth").unwrap().with_ipv6("fd00:88::/120").unwrap();
        let net = network();
        let a = net.lease(&store, &[], &pod("a", Some(8080)), &bridge).unwrap();
        let b = net.lease(&store, &[], &pod("b", None), &bridge).unwrap();
        assert_ne!(a.v4, b.v4);
        assert_ne!(a.v6, b.v6);
        assert!(a.v6.is_some() && b.v6.is_some());
        // A retried setup keeps its addresses.
        assert_eq!(net.lease(&store, &[], &pod("a", Some(8080)), &bridge).unwrap(), a);
        assert_eq!(stored(&store).len(), 4);

        // berthd restarts: a new index, loaded from the store.
        let net = network();
        assert_eq!(net.lease(&store, &[], &pod("a", Some(8080)), &bridge).unwrap(), a);
        let err = net.lease(&store, &[pod("a", Some(8080))], &pod("c", Some(8080)), &bridge).unwrap_err();
        assert!(err.to_string().contains("tcp/8080"), "{err}");
        let c = net.lease(&store, &[pod("a", Some(8080))], &pod("c", None), &bridge).unwrap();
        assert!(![a.v4, b.v4].contains(&c.v4));
        // /29: .1 is the gateway, so .2 to .6 are five pods' addresses.
        for id in ["d", "e"] {
            net.lease(&store, &[], &pod(id, None), &bridge).unwrap();
        }
        let err = net.lease(&store, &[], &pod("f", None), &bridge).unwrap_err();
        assert!(err.to_string().contains("10.88.0.0/29"), "{err}");
        assert!(!stored(&store).iter().any(|(id, _)| id == "f"));

        // A release frees the addresses in the store and for the next pod.
        net.release(&store, "a").unwrap();
        assert!(!stored(&store).iter().any(|(id, _)| id == "a"));
        assert_eq!(net.lease(&store, &[], &pod("f", None), &bridge).unwrap().v4, a.v4);
        net.release(&store, "nobody").unwrap();

        // Start-up garbage collection drops the leases of pods not running.
        let live = |id: &str| PodRecord { state: PodState::Ready, ips: vec!["x".into()], ..pod(id, None) };
        net.collect_garbage(&store, &[live("b"), live("c")]).unwrap();
        let ids: HashSet<String> = stored(&store).into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, HashSet::from(["b".to_string(), "c".to_string()]));
        // And the index agrees: the freed addresses are handed out again.
        for id in ["g", "h", "i"] {
            net.lease(&store, &[], &pod(id, None), &bridge).unwrap();
        }
        assert!(net.lease(&store, &[], &pod("j", None), &bridge).is_err());
    }

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

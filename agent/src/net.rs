//! The agent's side of the pod network: picks the mode, leases addresses in
//! the store (never twice, also across restarts), checks hostPort conflicts,
//! and calls into `berth-network` to wire pods up and down.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::RwLock;

use berth_network::cni::{Cni, CniPod};
use berth_network::{ipam, BridgeConfig, NetError};

use crate::config::{Config, NetworkMode};
use crate::error::{Error, Result};
use crate::store::{LeaseRecord, PodRecord, PodState, Store};

/// The store setting holding the last address handed out (round robin).
const LAST_IP: &str = "ipam_last_ip";

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

impl Network {
    /// Sets up the host side of the configured mode. `pod_cidr` (from
    /// UpdateRuntimeConfig) replaces the configured subnet.
    pub fn open(config: &Config, pod_cidr: Option<&str>) -> Result<Network> {
        let n = &config.network;
        let cni = Cni { conf_dir: n.cni_conf_dir.clone(), bin_dirs: n.cni_bin_dirs.clone(), cache_dir: config.state.join("cni") };
        let use_cni = match n.mode {
            NetworkMode::Cni => true,
            NetworkMode::Builtin => false,
            NetworkMode::Auto => matches!(cni.load(), Ok(Some(_)) | Err(_)),
        };
        if use_cni {
            match cni.load() {
                Ok(Some(l)) => tracing::info!(config = %l.path.display(), "pod network: CNI"),
                Ok(None) => {
                    tracing::warn!(dir = %cni.conf_dir.display(), "pod network: CNI, but no config yet (NetworkReady=false until one appears)")
                }
                Err(e) => tracing::warn!("pod network: CNI: {e}"),
            }
            return Ok(Network { builtin: None, cni: Some(cni) });
        }
        let subnet = pod_cidr.and_then(|c| c.split(',').map(str::trim).find(|c| c.contains('.'))).unwrap_or(&n.subnet);
        let gateway = if subnet == n.subnet { n.gateway.as_str() } else { "" };
        let bridge = BridgeConfig::new(&n.bridge, subnet, gateway, &n.nft_table)?;
        bridge.ensure_host()?;
        Ok(Network { builtin: Some(RwLock::new(bridge)), cni: None })
    }

    fn bridge(&self) -> Option<BridgeConfig> {
        self.builtin.as_ref().map(|b| b.read().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Removes what start-up makes on the host for the built-in network (the
    /// bridge and the nftables table), for `berthd cleanup`. CNI plugins own
    /// what they made.
    pub fn remove_host(&self) -> Result<()> {
        let Some(bridge) = self.bridge() else { return Ok(()) };
        bridge.remove_host().map_err(Error::from)
    }

    /// NetworkReady's status, reason and message.
    pub fn ready(&self) -> (bool, String, String) {
        if let Some(cni) = &self.cni {
            return match cni.load() {
                Ok(Some(l)) => (true, String::new(), format!("CNI config {}", l.path.display())),
                Ok(None) => (false, "NetworkPluginNotReady".into(), format!("no CNI network config in {}", cni.conf_dir.display())),
                Err(e) => (false, "NetworkPluginNotReady".into(), e.to_string()),
            };
        }
        match self.bridge() {
            Some(b) => (true, String::new(), format!("built-in bridge {} on {}", b.bridge, b.subnet)),
            None => (false, "NetworkPluginNotReady".into(), "no pod network is configured".into()),
        }
    }

    /// Switches new pods to kubelet's pod CIDR (built-in mode).
    pub fn set_pod_cidr(&self, config: &Config, cidr: &str) -> Result<()> {
        let Some(lock) = &self.builtin else { return Ok(()) };
        let Some(v4) = cidr.split(',').map(str::trim).find(|c| c.contains('.')) else { return Ok(()) };
        let n = &config.network;
        let next =
            BridgeConfig::new(&n.bridge, v4, "", &n.nft_table).map_err(|e| Error::invalid("runtime_config.network_config.pod_cidr", e))?;
        if lock.read().unwrap_or_else(|p| p.into_inner()).subnet == next.subnet {
            return Ok(());
        }
        next.ensure_host().map_err(Error::from)?;
        *lock.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    /// Leases an address and wires the pod (blocking). Fills `pod.ips`.
    /// `others` are the node's other pods (for hostPort conflicts).
    pub fn setup(
        &self,
        store: &Store,
        others: &[PodRecord],
        pod: &mut PodRecord,
        netns: &std::path::Path,
        dns: &crate::pod::PodDns,
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
        let ip = lease(store, others, pod, &bridge)?;
        bridge.setup_pod(&pod.id, netns, ip, &pod.port_mappings).map_err(|e| {
            let _ = release(store, &pod.id);
            Error::from(e)
        })?;
        pod.ips = vec![ip.to_string()];
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

fn cni_pod<'a>(pod: &'a PodRecord, netns: &'a std::path::Path, dns: &'a crate::pod::PodDns) -> CniPod<'a> {
    CniPod {
        id: &pod.id,
        netns,
        namespace: &pod.namespace,
        name: &pod.name,
        uid: &pod.uid,
        ports: &pod.port_mappings,
        dns: (&dns.servers, &dns.searches, &dns.options),
    }
}

/// Leases an address for `pod` in one transaction, refusing hostPorts held
/// by pods that already have a lease.
fn lease(store: &Store, others: &[PodRecord], pod: &PodRecord, bridge: &BridgeConfig) -> Result<Ipv4Addr> {
    let mut failure: Option<NetError> = None;
    let ip = store.write(|tx| {
        let leases = tx.list::<LeaseRecord>()?;
        if let Some(mine) = leases.iter().find(|l| l.pod_id == pod.id).and_then(|l| l.ip.parse().ok()) {
            return Ok(Some(mine));
        }
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
        let used: HashSet<Ipv4Addr> = leases.iter().filter_map(|l| l.ip.parse().ok()).collect();
        let after = tx.setting(LAST_IP)?.and_then(|s| s.parse().ok());
        let Some(ip) = ipam::allocate(bridge.subnet, bridge.gateway, &used, after) else {
            failure = Some(NetError::Exhausted(bridge.subnet));
            return Ok(None);
        };
        tx.put(&ip.to_string(), &LeaseRecord { ip: ip.to_string(), pod_id: pod.id.clone() })?;
        tx.set_setting(LAST_IP, &ip.to_string())?;
        Ok(Some(ip))
    })?;
    match (ip, failure) {
        (Some(ip), _) => Ok(ip),
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

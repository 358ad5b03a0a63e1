//! Version, Status, RuntimeConfig and UpdateRuntimeConfig.

use std::net::IpAddr;
use std::sync::Arc;

use berth_proto::cri;

use crate::error::{Error, Result};
use crate::node::{Node, POD_CIDR_SETTING};

/// The kubelet-facing CRI API version string of `VersionResponse.version`.
const KUBELET_API_VERSION: &str = "0.1.0";

pub(super) async fn version(_node: &Node, _req: cri::VersionRequest) -> Result<cri::VersionResponse> {
    Ok(cri::VersionResponse {
        version: KUBELET_API_VERSION.into(),
        runtime_name: "berth".into(),
        runtime_version: env!("CARGO_PKG_VERSION").into(),
        runtime_api_version: "v1".into(),
    })
}

pub(super) async fn status(node: &Node, req: cri::StatusRequest) -> Result<cri::StatusResponse> {
    let runtime_ready =
        cri::RuntimeCondition { r#type: "RuntimeReady".into(), status: true, reason: String::new(), message: String::new() };
    let (ready, reason, message) = node.network.ready();
    let network_ready = cri::RuntimeCondition { r#type: "NetworkReady".into(), status: ready, reason, message };
    let mut info = std::collections::HashMap::new();
    if req.verbose {
        let config = serde_json::to_string(&node.live_config().redacted()).map_err(Error::internal_fn("config as JSON"))?;
        info.insert("config".to_string(), config);
        let pod_cidr = node.store.setting(POD_CIDR_SETTING)?;
        info.insert("podCIDR".to_string(), pod_cidr.unwrap_or_default());
        info.insert("apparmor".to_string(), crate::security::apparmor::status_line());
        let leases = node.store.list::<crate::store::LeaseRecord>()?.len();
        let mode = format!("{:?}", node.config.network.mode).to_lowercase();
        info.insert("recentErrors".to_string(), serde_json::to_string(&crate::logging::recent_errors()).unwrap_or_default());
        info.insert("network".to_string(), serde_json::json!({ "mode": mode, "leases": leases }).to_string());
    }
    Ok(cri::StatusResponse {
        status: Some(cri::RuntimeStatus { conditions: vec![runtime_ready, network_ready] }),
        info,
        // Every handler has the same features: only what works here
        // (recursive read-only needs mount_setattr, Linux 5.12; user
        // namespaces id-mapped overlay layers, 5.19, on a store that takes
        // them — probed at start-up).
        runtime_handlers: std::iter::once(String::new())
            .chain(node.handlers.keys().cloned())
            .map(|name| cri::RuntimeHandler {
                name,
                features: Some(cri::RuntimeHandlerFeatures {
                    recursive_read_only_mounts: berth_runtime::mountapi::supported(),
                    user_namespaces: node.userns_support().is_ok(),
                }),
            })
            .collect(),
        // A pod in its own user namespace may use the node's network: it
        // holds no capability there (the node's user namespace owns it).
        // Claimed only where such pods run at all.
        features: Some(cri::RuntimeFeatures {
            supplemental_groups_policy: true,
            user_namespaces_host_network: node.userns_support().is_ok(),
        }),
    })
}

/// kubelet (≥ 1.28, KubeletCgroupDriverFromCRI) takes its cgroup driver from here.
pub(super) async fn runtime_config(node: &Node, _req: cri::RuntimeConfigRequest) -> Result<cri::RuntimeConfigResponse> {
    let driver = if node.cgroups.is_systemd() { cri::CgroupDriver::Systemd } else { cri::CgroupDriver::Cgroupfs };
    Ok(cri::RuntimeConfigResponse { linux: Some(cri::LinuxRuntimeConfiguration { cgroup_driver: driver as i32 }) })
}

pub(super) async fn update_runtime_config(
    node: &Arc<Node>,
    req: cri::UpdateRuntimeConfigRequest,
) -> Result<cri::UpdateRuntimeConfigResponse> {
    let cidr = req.runtime_config.and_then(|c| c.network_config).map(|n| n.pod_cidr).unwrap_or_default();
    // kubelet sends an empty CIDR when the node has none: nothing to record.
    if cidr.is_empty() {
        return Ok(cri::UpdateRuntimeConfigResponse {});
    }
    for part in cidr.split(',') {
        if let Err(reason) = check_cidr(part.trim()) {
            return Err(Error::invalid("runtime_config.network_config.pod_cidr", format!("{part:?}: {reason}")));
        }
    }
    let (a, c) = (node.clone(), cidr.clone());
    tokio::task::spawn_blocking(move || a.network.set_pod_cidr(&a.config, &c)).await??;
    node.store.set_setting(POD_CIDR_SETTING, &cidr)?;
    tracing::info!(pod_cidr = %cidr, "pod CIDR updated");
    Ok(cri::UpdateRuntimeConfigResponse {})
}

/// Checks `a.b.c.d/n` or an IPv6 prefix.
pub fn check_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (addr, len) = s.split_once('/').ok_or("not a CIDR: no /prefix")?;
    let addr: IpAddr = addr.parse().map_err(|_| format!("{addr:?} is not an IP address"))?;
    let len: u8 = len.parse().map_err(|_| format!("{len:?} is not a prefix length"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(format!("prefix length {len} exceeds {max}"));
    }
    Ok((addr, len))
}

#[cfg(test)]
mod tests {
    use super::check_cidr;

    #[test]
    fn cidrs() {
        assert!(check_cidr("10.244.0.0/16").is_ok());
        assert!(check_cidr("fd00::/64").is_ok());
        assert!(check_cidr("10.244.0.0").is_err());
        assert!(check_cidr("10.244.0.0/33").is_err());
        assert!(check_cidr("nonsense/8").is_err());
    }
}

//! Version, Status, RuntimeConfig and UpdateRuntimeConfig.

use std::net::IpAddr;
use std::sync::Arc;

use berth_proto::cri;
use tonic::{Request, Response, Status};

use super::Agent;

/// The kubelet-facing CRI API version string of `VersionResponse.version`.
const KUBELET_API_VERSION: &str = "0.1.0";
/// The store setting holding the pod CIDR from `UpdateRuntimeConfig`.
pub const POD_CIDR_SETTING: &str = "pod_cidr";

pub(super) async fn version(_agent: &Agent, _r: Request<cri::VersionRequest>) -> Result<Response<cri::VersionResponse>, Status> {
    Ok(Response::new(cri::VersionResponse {
        version: KUBELET_API_VERSION.into(),
        runtime_name: "berth".into(),
        runtime_version: env!("CARGO_PKG_VERSION").into(),
        runtime_api_version: "v1".into(),
    }))
}

pub(super) async fn status(agent: &Agent, r: Request<cri::StatusRequest>) -> Result<Response<cri::StatusResponse>, Status> {
    let runtime_ready =
        cri::RuntimeCondition { r#type: "RuntimeReady".into(), status: true, reason: String::new(), message: String::new() };
    let (ready, reason, message) = agent.network.ready();
    let network_ready = cri::RuntimeCondition { r#type: "NetworkReady".into(), status: ready, reason, message };
    let mut info = std::collections::HashMap::new();
    if r.get_ref().verbose {
        let config = serde_json::to_string(&agent.config).map_err(|e| Status::internal(format!("config as JSON: {e}")))?;
        info.insert("config".to_string(), config);
        let pod_cidr = agent.store.setting(POD_CIDR_SETTING).map_err(|e| Status::internal(e.to_string()))?;
        info.insert("podCIDR".to_string(), pod_cidr.unwrap_or_default());
        info.insert("apparmor".to_string(), crate::security::apparmor::status_line());
        let leases = agent.store.list::<crate::store::LeaseRecord>().map_err(|e| Status::internal(e.to_string()))?.len();
        info.insert(
            "network".to_string(),
            serde_json::json!({ "mode": format!("{:?}", agent.config.network.mode).to_lowercase(), "leases": leases }).to_string(),
        );
    }
    Ok(Response::new(cri::StatusResponse {
        status: Some(cri::RuntimeStatus { conditions: vec![runtime_ready, network_ready] }),
        info,
        runtime_handlers: vec![cri::RuntimeHandler {
            name: String::new(),
            features: Some(cri::RuntimeHandlerFeatures { recursive_read_only_mounts: false, user_namespaces: false }),
        }],
        features: Some(cri::RuntimeFeatures { supplemental_groups_policy: true }),
    }))
}

pub(super) async fn runtime_config(
    _agent: &Agent,
    _r: Request<cri::RuntimeConfigRequest>,
) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
    Ok(Response::new(cri::RuntimeConfigResponse {
        linux: Some(cri::LinuxRuntimeConfiguration { cgroup_driver: cri::CgroupDriver::Cgroupfs as i32 }),
    }))
}

pub(super) async fn update_runtime_config(
    agent: &Arc<Agent>,
    r: Request<cri::UpdateRuntimeConfigRequest>,
) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
    let cidr = r.into_inner().runtime_config.and_then(|c| c.network_config).map(|n| n.pod_cidr).unwrap_or_default();
    // kubelet sends an empty CIDR when the node has none: nothing to record.
    if cidr.is_empty() {
        return Ok(Response::new(cri::UpdateRuntimeConfigResponse {}));
    }
    for part in cidr.split(',') {
        if let Err(reason) = check_cidr(part.trim()) {
            return Err(Status::invalid_argument(format!("runtime_config.network_config.pod_cidr: {part:?}: {reason}")));
        }
    }
    let (a, c) = (agent.clone(), cidr.clone());
    tokio::task::spawn_blocking(move || a.network.set_pod_cidr(&a.config, &c)).await.map_err(|e| Status::internal(e.to_string()))??;
    agent.store.set_setting(POD_CIDR_SETTING, &cidr).map_err(|e| Status::internal(e.to_string()))?;
    tracing::info!(pod_cidr = %cidr, "pod CIDR updated");
    Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
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

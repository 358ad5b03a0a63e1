//! Security context → OCI spec: capabilities (containerd's defaults, add and
//! drop, `ALL`), privileged mode, seccomp profiles (RuntimeDefault,
//! Unconfined, Localhost) and namespaced sysctls.

use std::collections::HashSet;
use std::str::FromStr;

use berth_proto::cri;
use oci_spec::runtime::{Capability, LinuxCapabilities, LinuxCapabilitiesBuilder, LinuxSeccomp};

pub mod apparmor;
pub mod seccomp_default;
use tonic::Status;

/// containerd's default capability set.
pub const DEFAULT_CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

fn parse_cap(name: &str, field: &str) -> Result<Capability, Status> {
    let bare = name.trim().trim_start_matches("CAP_").to_uppercase();
    Capability::from_str(&bare).map_err(|_| Status::invalid_argument(format!("{field}: unknown capability {name:?}")))
}

fn all_caps() -> HashSet<Capability> {
    // Every capability the kernel and oci-spec know.
    (0..64).filter_map(|i| caps_name(i).and_then(|n| Capability::from_str(n.trim_start_matches("CAP_")).ok())).collect()
}

fn caps_name(i: u8) -> Option<String> {
    caps::all().into_iter().find(|c| c.index() == i).map(|c| c.to_string())
}

/// The capability sets for a container. Root gets the set in bounding,
/// effective and permitted; a non-root user keeps it in bounding only, and
/// the caps it explicitly adds in effective, permitted and ambient
/// (Kubernetes' expectation that added capabilities work for non-root
/// users). Inheritable holds only those ambient caps (the kernel wants
/// ambient within inheritable) and is otherwise empty: an inheritable set
/// would turn a binary's inheritable file capabilities into permitted ones
/// on exec (CVE-2022-24769).
pub fn capabilities(sc: Option<&cri::LinuxContainerSecurityContext>, privileged: bool, root: bool) -> Result<LinuxCapabilities, Status> {
    let mut set: HashSet<Capability> =
        if privileged { all_caps() } else { DEFAULT_CAPS.iter().map(|c| parse_cap(c, "default")).collect::<Result<_, _>>()? };
    let mut added = HashSet::new();
    if let Some(c) = sc.and_then(|s| s.capabilities.as_ref()) {
        for name in &c.drop_capabilities {
            if name.eq_ignore_ascii_case("ALL") {
                set.clear();
            } else {
                set.remove(&parse_cap(name, "capabilities.drop_capabilities")?);
            }
        }
        for name in &c.add_capabilities {
            if name.eq_ignore_ascii_case("ALL") {
                let all = all_caps();
                added.extend(all.iter().copied());
                set.extend(all);
            } else {
                let cap = parse_cap(name, "capabilities.add_capabilities")?;
                added.insert(cap);
                set.insert(cap);
            }
        }
        for name in &c.add_ambient_capabilities {
            let cap = parse_cap(name, "capabilities.add_ambient_capabilities")?;
            added.insert(cap);
            set.insert(cap);
        }
    }
    let (eff, amb) = if root {
        (set.clone(), HashSet::new())
    } else {
        (added.intersection(&set).copied().collect(), added.intersection(&set).copied().collect())
    };
    LinuxCapabilitiesBuilder::default()
        .bounding(set.clone())
        .inheritable(amb.clone())
        .effective(eff.clone())
        .permitted(eff)
        .ambient(amb)
        .build()
        .map_err(|e| Status::internal(format!("capabilities: {e}")))
}

/// The seccomp profile a container asked for (None: unconfined).
/// `caps` are the container's capabilities: the built-in RuntimeDefault
/// profile allows the privileged syscalls its bounding set covers.
pub fn seccomp(
    profile: Option<&cri::SecurityProfile>,
    legacy_path: &str,
    privileged: bool,
    caps: &LinuxCapabilities,
) -> Result<Option<LinuxSeccomp>, Status> {
    if privileged {
        return Ok(None);
    }
    let (kind, localhost) = match profile {
        Some(p) => (p.profile_type, p.localhost_ref.clone()),
        None => match legacy_path {
            "" | "unconfined" => (cri::security_profile::ProfileType::Unconfined as i32, String::new()),
            "runtime/default" | "docker/default" => (cri::security_profile::ProfileType::RuntimeDefault as i32, String::new()),
            p if p.starts_with("localhost/") => {
                (cri::security_profile::ProfileType::Localhost as i32, p.trim_start_matches("localhost").to_string())
            }
            p => {
                return Err(Status::invalid_argument(format!(
                    "seccomp_profile_path: {p:?} is not runtime/default, unconfined or localhost/<path>"
                )))
            }
        },
    };
    match cri::security_profile::ProfileType::try_from(kind) {
        Ok(cri::security_profile::ProfileType::RuntimeDefault) => {
            Ok(Some(seccomp_default::profile(caps).map_err(|e| Status::internal(format!("seccomp: {e}")))?))
        }
        Ok(cri::security_profile::ProfileType::Unconfined) => Ok(None),
        Ok(cri::security_profile::ProfileType::Localhost) => {
            let field = "seccomp.localhost_ref";
            if !localhost.starts_with('/') {
                return Err(Status::invalid_argument(format!("{field}: {localhost:?} is not an absolute path")));
            }
            let text = std::fs::read_to_string(&localhost).map_err(|e| Status::invalid_argument(format!("{field}: {localhost}: {e}")))?;
            let profile: LinuxSeccomp = serde_json::from_str(&text)
                .map_err(|e| Status::invalid_argument(format!("{field}: {localhost}: not an OCI seccomp profile: {e}")))?;
            // Compile once here, so a profile libseccomp refuses fails CreateContainer cleanly.
            berth_runtime::process::security::compile(&profile)
                .map_err(|e| Status::invalid_argument(format!("{field}: {localhost}: {e}")))?;
            Ok(Some(profile))
        }
        Err(_) => Err(Status::invalid_argument(format!("seccomp.profile_type: {kind} is not a profile type"))),
    }
}

/// Checks pod sysctls: only namespaced ones, and only for namespaces the
/// pod has of its own.
pub fn check_sysctls(sysctls: &std::collections::HashMap<String, String>, own_net: bool, own_ipc: bool) -> Result<(), Status> {
    for (key, value) in sysctls {
        let field = format!("sysctls[{key:?}]");
        let ipc = key.starts_with("kernel.shm") || key.starts_with("kernel.msg") || key == "kernel.sem" || key.starts_with("fs.mqueue.");
        let net = key.starts_with("net.");
        if !(ipc || net) {
            return Err(Status::invalid_argument(format!("{field}: not a namespaced sysctl")));
        }
        if (net && !own_net) || (ipc && !own_ipc) {
            return Err(Status::invalid_argument(format!("{field}: the pod shares the host's namespace for it")));
        }
        if key.contains('/') || key.contains("..") || !std::path::Path::new("/proc/sys").join(key.replace('.', "/")).exists() {
            return Err(Status::invalid_argument(format!("{field}: unknown sysctl")));
        }
        if value.contains('\n') {
            return Err(Status::invalid_argument(format!("{field}: value contains a newline")));
        }
    }
    Ok(())
}

/// The AppArmor profile to run the container under (None: unconfined, or
/// RuntimeDefault on a node without AppArmor). `state_dir` is where the
/// built-in profile is written before it is loaded.
pub fn apparmor(profile: Option<&cri::SecurityProfile>, privileged: bool, state_dir: &std::path::Path) -> Result<Option<String>, Status> {
    let Some(p) = profile else { return Ok(None) };
    match cri::security_profile::ProfileType::try_from(p.profile_type) {
        Ok(cri::security_profile::ProfileType::Unconfined) => Ok(None),
        Ok(cri::security_profile::ProfileType::RuntimeDefault) => {
            if privileged || !apparmor::enabled() {
                return Ok(None);
            }
            apparmor::ensure_default(state_dir)
                .map(|name| Some(name.to_string()))
                .map_err(|e| Status::failed_precondition(format!("apparmor: the RuntimeDefault profile cannot be loaded: {e}")))
        }
        Ok(cri::security_profile::ProfileType::Localhost) => {
            if privileged {
                return Ok(None);
            }
            if !apparmor::enabled() {
                return Err(Status::invalid_argument(format!(
                    "apparmor.localhost_ref: profile {:?} asked for, but AppArmor is not enabled on this node",
                    p.localhost_ref
                )));
            }
            let name = p.localhost_ref.trim_start_matches("localhost/");
            if name.is_empty() || name.contains('\n') {
                return Err(Status::invalid_argument("apparmor.localhost_ref: empty or invalid profile name"));
            }
            Ok(Some(name.to_string()))
        }
        Err(_) => Err(Status::invalid_argument(format!("apparmor.profile_type: {} is not a profile type", p.profile_type))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sc(add: &[&str], drop: &[&str]) -> cri::LinuxContainerSecurityContext {
        cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                add_capabilities: add.iter().map(|s| s.to_string()).collect(),
                drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
                add_ambient_capabilities: vec![],
            }),
            ..Default::default()
        }
    }

    #[test]
    fn caps_default_add_drop_all() {
        let c = capabilities(None, false, true).unwrap();
        assert_eq!(c.bounding().as_ref().unwrap().len(), DEFAULT_CAPS.len());
        let c = capabilities(Some(&sc(&["NET_ADMIN"], &["KILL"])), false, true).unwrap();
        let b = c.bounding().clone().unwrap();
        assert!(b.contains(&Capability::NetAdmin) && !b.contains(&Capability::Kill));
        let c = capabilities(Some(&sc(&["CAP_SYS_TIME"], &["ALL"])), false, true).unwrap();
        assert_eq!(c.bounding().clone().unwrap(), [Capability::SysTime].into_iter().collect());
        let c = capabilities(Some(&sc(&["NET_BIND_SERVICE"], &["ALL"])), false, false).unwrap();
        assert_eq!(c.ambient().clone().unwrap(), [Capability::NetBindService].into_iter().collect());
        assert_eq!(c.inheritable().clone().unwrap(), [Capability::NetBindService].into_iter().collect());
        // Nothing inheritable unless added for a non-root user.
        for root in [true, false] {
            assert!(capabilities(None, false, root).unwrap().inheritable().as_ref().unwrap().is_empty());
            assert!(capabilities(Some(&sc(&["NET_ADMIN"], &[])), false, root).unwrap().inheritable().as_ref().unwrap().is_empty() == root);
        }
        assert!(capabilities(Some(&sc(&["NOT_A_CAP"], &[])), false, true).unwrap_err().message().contains("NOT_A_CAP"));
        assert!(capabilities(None, true, true).unwrap().bounding().as_ref().unwrap().len() > 30);
    }

    #[test]
    fn sysctls_must_be_namespaced_and_known() {
        let m = |k: &str| [(k.to_string(), "1".to_string())].into_iter().collect();
        assert!(check_sysctls(&m("net.ipv4.ip_unprivileged_port_start"), true, true).is_ok());
        assert!(check_sysctls(&m("kernel.shmmax"), true, true).is_ok());
        assert!(check_sysctls(&m("vm.swappiness"), true, true).unwrap_err().message().contains("not a namespaced"));
        assert!(check_sysctls(&m("net.ipv4.no_such_thing"), true, true).unwrap_err().message().contains("unknown"));
        assert!(check_sysctls(&m("net.ipv4.ip_forward"), false, true).is_err());
    }
}

//! Security context → OCI spec: capabilities (containerd's defaults, add and
//! drop, `ALL`), privileged mode, seccomp profiles (RuntimeDefault,
//! Unconfined, Localhost) and namespaced sysctls.

use std::collections::HashSet;
use std::str::FromStr;

use oci_spec::runtime::{Capability, LinuxCapabilities, LinuxCapabilitiesBuilder, LinuxSeccomp};

use crate::error::{Error, Result};
use crate::model::{Profile, SecurityRequest};

pub mod apparmor;
pub mod seccomp_default;

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

fn parse_cap(name: &str, field: &str) -> Result<Capability> {
    let bare = name.trim().trim_start_matches("CAP_").to_uppercase();
    Capability::from_str(&bare).map_err(|_| Error::invalid(field, format!("unknown capability {name:?}")))
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
pub fn capabilities(sc: &SecurityRequest, root: bool) -> Result<LinuxCapabilities> {
    let mut set: HashSet<Capability> =
        if sc.privileged { all_caps() } else { DEFAULT_CAPS.iter().map(|c| parse_cap(c, "default")).collect::<Result<_>>()? };
    let mut added = HashSet::new();
    for name in &sc.drop_capabilities {
        if name.eq_ignore_ascii_case("ALL") {
            set.clear();
        } else {
            set.remove(&parse_cap(name, "capabilities.drop_capabilities")?);
        }
    }
    for name in &sc.add_capabilities {
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
    for name in &sc.add_ambient_capabilities {
        let cap = parse_cap(name, "capabilities.add_ambient_capabilities")?;
        added.insert(cap);
        set.insert(cap);
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
        .map_err(Error::internal_fn("capabilities"))
}

/// The seccomp profile a container asked for (None: unconfined).
/// `caps` are the container's capabilities: the built-in RuntimeDefault
/// profile allows the privileged syscalls its bounding set covers.
pub fn seccomp(profile: &Profile, privileged: bool, caps: &LinuxCapabilities) -> Result<Option<LinuxSeccomp>> {
    if privileged {
        return Ok(None);
    }
    match profile {
        Profile::RuntimeDefault => Ok(Some(seccomp_default::profile(caps).map_err(Error::internal_fn("seccomp"))?)),
        Profile::Unset | Profile::Unconfined => Ok(None),
        Profile::Localhost(path) => {
            let field = "seccomp.localhost_ref";
            if !path.starts_with('/') {
                return Err(Error::invalid(field, format!("{path:?} is not an absolute path")));
            }
            let text = std::fs::read_to_string(path).map_err(|e| Error::invalid(field, format!("{path}: {e}")))?;
            let profile: LinuxSeccomp =
                serde_json::from_str(&text).map_err(|e| Error::invalid(field, format!("{path}: not an OCI seccomp profile: {e}")))?;
            // Compile once here, so a profile libseccomp refuses fails CreateContainer cleanly.
            berth_runtime::process::security::compile(&profile).map_err(|e| Error::invalid(field, format!("{path}: {e}")))?;
            Ok(Some(profile))
        }
    }
}

/// Checks pod sysctls: only namespaced ones, and only for namespaces the
/// pod has of its own.
pub fn check_sysctls(sysctls: &std::collections::BTreeMap<String, String>, own_net: bool, own_ipc: bool) -> Result<()> {
    for (key, value) in sysctls {
        let field = format!("sysctls[{key:?}]");
        let ipc = key.starts_with("kernel.shm") || key.starts_with("kernel.msg") || key == "kernel.sem" || key.starts_with("fs.mqueue.");
        let net = key.starts_with("net.");
        if !(ipc || net) {
            return Err(Error::invalid(field, "not a namespaced sysctl"));
        }
        if (net && !own_net) || (ipc && !own_ipc) {
            return Err(Error::invalid(field, "the pod shares the host's namespace for it"));
        }
        if key.contains('/') || key.contains("..") || !std::path::Path::new("/proc/sys").join(key.replace('.', "/")).exists() {
            return Err(Error::invalid(field, "unknown sysctl"));
        }
        if value.contains('\n') {
            return Err(Error::invalid(field, "value contains a newline"));
        }
    }
    Ok(())
}

/// The AppArmor profile to run the container under (None: unconfined, or
/// RuntimeDefault on a node without AppArmor). `state_dir` is where the
/// built-in profile is written before it is loaded.
pub fn apparmor(profile: &Profile, privileged: bool, state_dir: &std::path::Path) -> Result<Option<String>> {
    match profile {
        Profile::Unset | Profile::Unconfined => Ok(None),
        Profile::RuntimeDefault => {
            if privileged || !apparmor::enabled() {
                return Ok(None);
            }
            apparmor::ensure_default(state_dir)
                .map(|name| Some(name.to_string()))
                .map_err(|e| Error::FailedPrecondition(format!("apparmor: the RuntimeDefault profile cannot be loaded: {e}")))
        }
        Profile::Localhost(name) => {
            if privileged {
                return Ok(None);
            }
            if !apparmor::enabled() {
                return Err(Error::invalid(
                    "apparmor.localhost_ref",
                    format!("profile {name:?} asked for, but AppArmor is not enabled on this node"),
                ));
            }
            let name = name.trim_start_matches("localhost/");
            if name.is_empty() || name.contains('\n') {
                return Err(Error::invalid("apparmor.localhost_ref", "empty or invalid profile name"));
            }
            Ok(Some(name.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sc(add: &[&str], drop: &[&str]) -> SecurityRequest {
        SecurityRequest {
            add_capabilities: add.iter().map(|s| s.to_string()).collect(),
            drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn caps_default_add_drop_all() {
        let none = SecurityRequest::default();
        let c = capabilities(&none, true).unwrap();
        assert_eq!(c.bounding().as_ref().unwrap().len(), DEFAULT_CAPS.len());
        let c = capabilities(&sc(&["NET_ADMIN"], &["KILL"]), true).unwrap();
        let b = c.bounding().clone().unwrap();
        assert!(b.contains(&Capability::NetAdmin) && !b.contains(&Capability::Kill));
        let c = capabilities(&sc(&["CAP_SYS_TIME"], &["ALL"]), true).unwrap();
        assert_eq!(c.bounding().clone().unwrap(), [Capability::SysTime].into_iter().collect());
        let c = capabilities(&sc(&["NET_BIND_SERVICE"], &["ALL"]), false).unwrap();
        assert_eq!(c.ambient().clone().unwrap(), [Capability::NetBindService].into_iter().collect());
        assert_eq!(c.inheritable().clone().unwrap(), [Capability::NetBindService].into_iter().collect());
        // Nothing inheritable unless added for a non-root user.
        for root in [true, false] {
            assert!(capabilities(&none, root).unwrap().inheritable().as_ref().unwrap().is_empty());
            assert!(capabilities(&sc(&["NET_ADMIN"], &[]), root).unwrap().inheritable().as_ref().unwrap().is_empty() == root);
        }
        assert!(capabilities(&sc(&["NOT_A_CAP"], &[]), true).unwrap_err().to_string().contains("NOT_A_CAP"));
        let privileged = SecurityRequest { privileged: true, ..Default::default() };
        assert!(capabilities(&privileged, true).unwrap().bounding().as_ref().unwrap().len() > 30);
    }

    #[test]
    fn sysctls_must_be_namespaced_and_known() {
        let m = |k: &str| [(k.to_string(), "1".to_string())].into_iter().collect();
        assert!(check_sysctls(&m("net.ipv4.ip_unprivileged_port_start"), true, true).is_ok());
        assert!(check_sysctls(&m("kernel.shmmax"), true, true).is_ok());
        assert!(check_sysctls(&m("vm.swappiness"), true, true).unwrap_err().to_string().contains("not a namespaced"));
        assert!(check_sysctls(&m("net.ipv4.no_such_thing"), true, true).unwrap_err().to_string().contains("unknown"));
        assert!(check_sysctls(&m("net.ipv4.ip_forward"), false, true).is_err());
    }
}

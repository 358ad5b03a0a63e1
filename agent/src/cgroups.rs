//! The node's cgroup driver: how a pod's and a container's cgroup is named,
//! made, changed and removed. `cgroupfs`: berth makes the directories.
//! `systemd`: systemd makes them, as transient units — a pod without a
//! cgroup parent gets a slice, a container (and a pod's PID-namespace init) a
//! scope with `Delegate=yes` — and berth writes the limits into both the
//! unit's properties and its files, so systemd and the kernel agree.
//! Everything else (stats, OOM, device rules, removal of the processes)
//! reads and writes the same cgroup files under either driver.

use std::path::Path;

use berth_runtime::cgroup::{self, systemd, Limits};

use crate::config::CgroupDriver;

/// A cgroup made for a process that does not exist yet: under systemd, the
/// scope's holder process, to be released once the process has joined.
pub struct Pending {
    held: Option<systemd::HeldScope>,
    /// The `cgroup.procs` files a process writes to join the cgroup.
    pub procs: Vec<std::path::PathBuf>,
}

impl Pending {
    /// The new process is in its cgroup: the scope no longer needs holding.
    pub fn joined(self) {
        if let Some(h) = self.held {
            h.release();
        }
    }
}

/// The driver and, for systemd, the connection to it.
pub enum Cgroups {
    /// berth makes the cgroups itself.
    Fs,
    /// systemd makes them.
    Systemd(systemd::Systemd),
}

impl Cgroups {
    /// The configured driver; systemd must answer now.
    pub fn open(driver: CgroupDriver) -> Result<Cgroups, String> {
        match driver {
            CgroupDriver::Cgroupfs => Ok(Cgroups::Fs),
            CgroupDriver::Systemd => systemd::Systemd::connect().map(Cgroups::Systemd).map_err(|e| e.to_string()),
        }
    }

    /// Whether systemd makes the cgroups.
    pub fn is_systemd(&self) -> bool {
        matches!(self, Cgroups::Systemd(_))
    }

    /// The cgroup path of a parent as kubelet or the config names it:
    /// `/kubepods/burstable/pod1` for cgroupfs, a slice
    /// (`kubepods-burstable-pod1.slice`) for systemd.
    pub fn parent_path(&self, parent: &str) -> Result<String, String> {
        parent_path(self.is_systemd(), parent)
    }

    /// The cgroup of a pod that has none from kubelet, under `parent` (a path).
    pub fn own_pod_path(&self, parent: &str, pod_id: &str) -> String {
        format!("{parent}/{}", self.own_pod_name(parent, pod_id))
    }

    fn own_pod_name(&self, parent: &str, pod_id: &str) -> String {
        match self {
            Cgroups::Fs => pod_id.to_string(),
            Cgroups::Systemd(_) => {
                let stem = systemd::unit_of(parent).and_then(|u| u.strip_suffix(".slice")).filter(|s| *s != "-").unwrap_or("");
                if stem.is_empty() {
                    format!("{pod_id}.slice")
                } else {
                    format!("{stem}-{pod_id}.slice")
                }
            }
        }
    }

    /// The pod id of a child cgroup of `parent` that berth named for a pod.
    pub fn own_pod_id(&self, parent: &str, child: &str) -> Option<String> {
        let id = match self {
            Cgroups::Fs => child,
            Cgroups::Systemd(_) => {
                let name = self.own_pod_name(parent, "");
                let (prefix, suffix) = name.split_at(name.len() - ".slice".len());
                child.strip_prefix(prefix)?.strip_suffix(suffix)?
            }
        };
        is_id(id).then(|| id.to_string())
    }

    /// A container's cgroup in its pod's.
    pub fn container_path(&self, pod_cgroup: &str, id: &str) -> String {
        match self {
            Cgroups::Fs => format!("{pod_cgroup}/{id}"),
            Cgroups::Systemd(_) => format!("{pod_cgroup}/berth-{id}.scope"),
        }
    }

    /// The container id of a child cgroup of a pod's that berth named for one.
    pub fn container_id(&self, child: &str) -> Option<String> {
        let id = match self {
            Cgroups::Fs => child,
            Cgroups::Systemd(_) => child.strip_prefix("berth-")?.strip_suffix(".scope")?,
        };
        is_id(id).then(|| id.to_string())
    }

    /// The leaf cgroup of a pod's PID-namespace init.
    pub fn init_path(&self, pod_cgroup: &str, pod_id: &str) -> String {
        match self {
            Cgroups::Fs => format!("{pod_cgroup}/{}", berth_runtime::sandbox::INIT_CGROUP),
            Cgroups::Systemd(_) => format!("{pod_cgroup}/berth-init-{pod_id}.scope"),
        }
    }

    /// Makes a pod's cgroup (a slice under systemd; kubelet's own pod slices
    /// exist already and are only started if they do not).
    pub fn create_pod(&self, path: &str) -> Result<(), String> {
        if let (Cgroups::Systemd(sd), Some(unit)) = (self, systemd::unit_of(path)) {
            sd.start_slice(unit).map_err(|e| e.to_string())?;
        }
        cgroup::create(path).map(drop).map_err(|e| e.to_string())
    }

    /// Makes the leaf cgroup of a process about to be started, with `limits`
    /// (under systemd: a scope, started with them as properties). Keep the
    /// returned value until the process has joined.
    pub fn create_leaf(&self, path: &str, limits: &Limits, v2: bool, monitor_bin: &Path) -> Result<Pending, String> {
        let held = match self {
            Cgroups::Fs => None,
            Cgroups::Systemd(sd) => {
                let (parent, unit) = path.rsplit_once('/').ok_or_else(|| format!("{path}: a scope needs a slice above it"))?;
                let slice = systemd::unit_of(parent).ok_or_else(|| format!("{parent} is not a slice"))?;
                let mut holder = berth_runtime::spawn::helper_command(monitor_bin);
                holder.arg("hold");
                Some(sd.start_scope(unit, slice, holder, systemd::limit_properties(limits, v2)).map_err(|e| e.to_string())?)
            }
        };
        let procs = cgroup::create(path).map_err(|e| e.to_string())?;
        Ok(Pending { held, procs })
    }

    /// Changes a container's limits (unit properties first, then the files).
    pub fn update(&self, path: &str, limits: &Limits, v2: bool) -> Result<(), String> {
        if let (Cgroups::Systemd(sd), Some(unit)) = (self, systemd::unit_of(path)) {
            sd.set_properties(unit, systemd::limit_properties(limits, v2)).map_err(|e| e.to_string())?;
        }
        cgroup::apply(path, limits).map_err(|e| e.to_string())
    }

    /// Kills what is left in the cgroup and removes it, and under systemd
    /// stops (and forgets) the units of it and beneath it.
    pub fn remove(&self, path: &str) -> Result<(), String> {
        let units = match self {
            Cgroups::Fs => Vec::new(),
            Cgroups::Systemd(_) => units_beneath(path),
        };
        let removed = cgroup::remove(path).map_err(|e| e.to_string());
        if let Cgroups::Systemd(sd) = self {
            for unit in units.iter().rev() {
                if let Err(e) = sd.stop(unit) {
                    tracing::warn!(unit = %unit, "stopping the unit: {e}");
                }
            }
        }
        removed
    }

    /// Whether the kernel OOM-killed a process of the cgroup, read after the
    /// fact (the monitor's live count comes first, see the caller). Under
    /// systemd the cgroup of a scope is gone once it is empty; systemd may
    /// still hold the kill as the failed scope's result (252 does when it
    /// saw the event before the scope emptied).
    pub fn oom_killed(&self, path: &str) -> bool {
        if cgroup::oom_killed(path) {
            return true;
        }
        match (self, systemd::unit_of(path)) {
            (Cgroups::Systemd(sd), Some(unit)) => sd.result(unit).as_deref() == Some("oom-kill"),
            _ => false,
        }
    }
}

/// See [`Cgroups::parent_path`].
pub fn parent_path(systemd: bool, parent: &str) -> Result<String, String> {
    if !systemd {
        return cgroup::normalize(parent).map_err(|e| e.to_string());
    }
    // "berth" (the built-in default) is berth.slice.
    let slice = if !parent.contains('/') && !parent.ends_with(".slice") { format!("{parent}.slice") } else { parent.to_string() };
    systemd::expand_slice(&slice).map_err(|_| {
        format!("{parent:?} is not a systemd slice name (like kubepods-burstable-pod1.slice): the node uses the systemd cgroup driver")
    })
}

/// The unit names of the cgroups from `path` down, parents first.
fn units_beneath(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(u) = systemd::unit_of(path) {
        out.push(u.to_string());
    }
    for child in cgroup::children(path) {
        out.extend(units_beneath(&format!("{path}/{child}")));
    }
    out
}

/// A berth id: 64 hex digits.
pub fn is_id(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn names_under_each_driver() {
        let fs = Cgroups::Fs;
        assert_eq!(fs.parent_path("/kubepods/burstable/pod1").unwrap(), "kubepods/burstable/pod1");
        assert_eq!(fs.own_pod_path("berth", ID), format!("berth/{ID}"));
        assert_eq!(fs.own_pod_id("berth", ID).as_deref(), Some(ID));
        assert_eq!(fs.container_path("p", ID), format!("p/{ID}"));
        assert_eq!(fs.container_id(ID).as_deref(), Some(ID));
        assert_eq!(fs.container_id("init"), None);

        let sd = Cgroups::Systemd(systemd::Systemd::default());
        assert_eq!(
            sd.parent_path("kubepods-burstable-pod1.slice").unwrap(),
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice"
        );
        assert_eq!(sd.parent_path("berth").unwrap(), "berth.slice");
        let err = sd.parent_path("/kubepods/burstable").unwrap_err();
        assert!(err.contains("not a systemd slice name"), "{err}");
        assert_eq!(sd.own_pod_path("berth.slice", ID), format!("berth.slice/berth-{ID}.slice"));
        assert_eq!(sd.own_pod_id("berth.slice", &format!("berth-{ID}.slice")).as_deref(), Some(ID));
        assert_eq!(sd.own_pod_id("berth.slice", ID), None);
        let nested = sd.parent_path("kubepods-besteffort.slice").unwrap();
        assert_eq!(sd.own_pod_path(&nested, ID), format!("{nested}/kubepods-besteffort-{ID}.slice"));
        assert_eq!(sd.container_path("p.slice", ID), format!("p.slice/berth-{ID}.scope"));
        assert_eq!(sd.container_id(&format!("berth-{ID}.scope")).as_deref(), Some(ID));
        assert_eq!(sd.container_id(&format!("berth-init-{ID}.scope")), None);
        // The pod's own slice expands to where systemd puts it.
        let own = sd.own_pod_path("berth.slice", ID);
        let unit = own.rsplit('/').next().unwrap();
        assert_eq!(systemd::expand_slice(unit).unwrap(), own);
    }
}

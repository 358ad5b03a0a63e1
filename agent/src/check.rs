//! `berthd check`: the kernel and host features berthd needs, one line
//! each, so that an operator installing berth learns what is missing
//! before kubelet does.

use std::path::Path;

use crate::config::{Config, NetworkMode};

/// One prerequisite and how this host meets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Short name (`namespaces`, `overlayfs`, …).
    pub name: &'static str,
    /// Met.
    pub ok: bool,
    /// What was found, or what is missing and how to get it.
    pub detail: String,
}

fn check(name: &'static str, ok: bool, detail: impl Into<String>) -> Check {
    Check { name, ok, detail: detail.into() }
}

/// Every prerequisite for `config`, read from `/proc` and `/sys` (and
/// `PATH` for nft).
pub fn run(config: &Config) -> Vec<Check> {
    let mut out = Vec::new();
    let kinds = ["mnt", "uts", "ipc", "pid", "net", "cgroup", "user"];
    let missing: Vec<&str> = kinds.iter().copied().filter(|k| !Path::new(&format!("/proc/self/ns/{k}")).exists()).collect();
    out.push(if missing.is_empty() {
        check("namespaces", true, kinds.join(" "))
    } else {
        check("namespaces", false, format!("missing: {} (kernel built without CONFIG_*_NS)", missing.join(" ")))
    });

    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let has_fs = |fs: &str| filesystems.lines().any(|l| l.split_whitespace().last() == Some(fs));
    let overlay_module = Path::new(&format!("/lib/modules/{}/kernel/fs/overlayfs", kernel_release())).exists();
    out.push(match (has_fs("overlay"), overlay_module) {
        (true, _) => check("overlayfs", true, "in /proc/filesystems"),
        (false, true) => check("overlayfs", true, "module present, loaded on first mount"),
        (false, false) => {
            check("overlayfs", false, "not in /proc/filesystems and no module: modprobe overlay, or a kernel with CONFIG_OVERLAY_FS")
        }
    });

    out.push(cgroups());
    if config.runtime.cgroup_driver == crate::config::CgroupDriver::Systemd {
        out.push(match berth_runtime::cgroup::systemd::Systemd::connect() {
            Ok(_) => check("cgroup_driver", true, "systemd answers on the system bus"),
            Err(e) => check("cgroup_driver", false, format!("{e} (runtime.cgroup_driver = \"systemd\" needs systemd and dbus running)")),
        });
    }

    // Optional: without them only pods with hostUsers: false are refused.
    out.push(if berth_runtime::userns::supported() {
        check("user_namespaces", true, "allowed (Linux >= 5.19); berthd probes id-mapped mounts of its store at start")
    } else {
        check(
            "user_namespaces",
            true,
            "optional, unavailable (needs Linux >= 5.19 and user.max_user_namespaces > 0): pods with hostUsers: false are refused",
        )
    });

    let nft = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join("nft").is_file())).unwrap_or(false);
    let builtin = config.network.mode != NetworkMode::Cni;
    out.push(match (nft, builtin) {
        (true, _) => check("nftables", true, "nft found"),
        (false, true) => check("nftables", false, "no nft in PATH: apt-get install nftables (built-in networking uses it)"),
        (false, false) => check("nftables", true, "no nft, not needed in cni mode"),
    });

    let forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
    out.push(match (forward.trim() == "1", builtin) {
        (true, _) => check("ip_forward", true, "net.ipv4.ip_forward = 1"),
        (false, true) => check("ip_forward", true, "0 now; berthd sets it to 1 for built-in networking"),
        (false, false) => check("ip_forward", false, "net.ipv4.ip_forward = 0: CNI bridges need it (sysctl -w net.ipv4.ip_forward=1)"),
    });
    if !builtin {
        let br = Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists();
        out.push(if br {
            check("br_netfilter", true, "loaded")
        } else {
            check("br_netfilter", false, "not loaded: modprobe br_netfilter (kube-proxy needs it with CNI bridges)")
        });
    }
    out
}

fn cgroups() -> Check {
    let v2 = berth_runtime::cgroup::version() == berth_runtime::cgroup::Version::V2;
    let wanted = ["cpu", "memory", "pids"];
    if v2 {
        let have = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
        let missing: Vec<&str> = wanted.iter().copied().filter(|c| !have.split_whitespace().any(|h| h == *c)).collect();
        return if missing.is_empty() {
            check("cgroups", true, format!("v2 with {have}").trim().to_string())
        } else {
            check("cgroups", false, format!("v2 without controllers: {}", missing.join(" ")))
        };
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mounted = |c: &str| {
        mounts.lines().any(|l| {
            l.split_once(" - ").is_some_and(|(_, post)| {
                let mut f = post.split_whitespace();
                f.next() == Some("cgroup") && f.nth(1).is_some_and(|opts| opts.split(',').any(|o| o == c))
            })
        })
    };
    let missing: Vec<&str> = wanted.iter().copied().filter(|c| !mounted(c)).collect();
    if missing.is_empty() {
        check("cgroups", true, "v1 with cpu memory pids")
    } else {
        check("cgroups", false, format!("v1 without mounted controllers: {}", missing.join(" ")))
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string()
}

/// The report, one line per check: `ok   name: detail` or `MISSING name: detail`.
pub fn report(checks: &[Check]) -> String {
    checks.iter().map(|c| format!("{:<7} {}: {}\n", if c.ok { "ok" } else { "MISSING" }, c.name, c.detail)).collect()
}

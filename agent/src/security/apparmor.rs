//! AppArmor: the built-in RuntimeDefault profile `berth-default`, loaded with
//! `apparmor_parser` the first time a container asks for it on a node whose
//! kernel has AppArmor. On a node without AppArmor, RuntimeDefault runs
//! unconfined by AppArmor (as containerd does there) and `Status` says so.

use std::path::Path;
use std::sync::OnceLock;

/// The name of the built-in profile.
pub const DEFAULT_PROFILE: &str = "berth-default";

/// True when the kernel has AppArmor enabled.
pub fn enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled").map(|v| v.trim() == "Y").unwrap_or(false)
}

/// One line for `Status` about AppArmor on this node.
pub fn status_line() -> String {
    if enabled() {
        format!("enabled: RuntimeDefault containers run under the {DEFAULT_PROFILE} profile")
    } else {
        "not available: the kernel has no AppArmor, so RuntimeDefault and Localhost AppArmor profiles cannot be applied".to_string()
    }
}

/// The profile's text: the container may use the network, capabilities (the
/// bounding set decides which) and files, but never mount, write the
/// kernel's tunables under /proc and /sys, or read the host's secrets there;
/// it may trace and signal only its own kind.
pub fn profile_text() -> String {
    format!(
        r#"#include <tunables/global>

profile {DEFAULT_PROFILE} flags=(attach_disconnected,mediate_deleted) {{
  #include <abstractions/base>

  network,
  capability,
  file,
  umount,

  # The host (unconfined) may signal containers; containers signal their own kind.
  signal (receive) peer=unconfined,
  signal (send,receive) peer={DEFAULT_PROFILE},

  deny @{{PROC}}/* w,
  deny @{{PROC}}/{{[^1-9],[^1-9][^0-9],[^1-9s][^0-9y][^0-9s],[^1-9][^0-9][^0-9][^0-9/]*}}/** w,
  deny @{{PROC}}/sys/[^k]** w,
  deny @{{PROC}}/sys/kernel/{{?,??,[^s][^h][^m]**}} w,
  deny @{{PROC}}/sysrq-trigger rwklx,
  deny @{{PROC}}/kcore rwklx,

  deny mount,

  deny /sys/[^f]*/** wklx,
  deny /sys/f[^s]*/** wklx,
  deny /sys/fs/[^c]*/** wklx,
  deny /sys/fs/c[^g]*/** wklx,
  deny /sys/fs/cg[^r]*/** wklx,
  deny /sys/firmware/** rwklx,
  deny /sys/devices/virtual/powercap/** rwklx,
  deny /sys/kernel/security/** rwklx,

  ptrace (trace,read,tracedby,readby) peer={DEFAULT_PROFILE},
}}
"#
    )
}

/// True when the kernel has the profile loaded.
fn loaded() -> bool {
    std::fs::read_to_string("/sys/kernel/security/apparmor/profiles")
        .map(|t| t.lines().any(|l| l.split_whitespace().next() == Some(DEFAULT_PROFILE)))
        .unwrap_or(false)
}

/// Loads `berth-default` once (replacing an older text of it), writing the
/// profile into `state_dir`. The outcome is remembered: a node without
/// `apparmor_parser` says so on every RuntimeDefault request.
pub fn ensure_default(state_dir: &Path) -> Result<&'static str, String> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    let outcome = LOADED.get_or_init(|| {
        if loaded() {
            return Ok(());
        }
        let file = state_dir.join("apparmor-berth-default");
        std::fs::write(&file, profile_text()).map_err(|e| format!("{}: {e}", file.display()))?;
        let out = std::process::Command::new("apparmor_parser")
            .arg("-Kr")
            .arg(&file)
            .output()
            .map_err(|e| format!("apparmor_parser (install the apparmor package): {e}"))?;
        if !out.status.success() {
            return Err(format!("apparmor_parser: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(())
    });
    outcome.clone().map(|()| DEFAULT_PROFILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_names_itself_and_denies_mounts() {
        let t = profile_text();
        assert!(t.contains("profile berth-default flags=(attach_disconnected,mediate_deleted) {"));
        assert!(t.contains("deny mount,"));
        assert!(t.contains("deny @{PROC}/sysrq-trigger rwklx,"));
        // Balanced braces: apparmor_parser would refuse the profile otherwise.
        assert_eq!(t.matches('{').count(), t.matches('}').count());
    }
}

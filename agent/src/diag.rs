//! `berthd diag`: one file for a bug report — versions, prerequisites, the
//! config (secrets redacted) and what set each key, what the running berthd
//! reports over CRI (status with its recent warnings and errors, pods,
//! containers, images), the node's network and cgroup state as the kernel
//! has it. Works with berthd down too (the CRI sections then say so).

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::Context as _;

use crate::config::{Config, Sources};

/// Writes the report to `out` (mode 0600).
pub fn run(config: &Config, sources: &Sources, out: &Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
    let mut r = String::new();
    section(&mut r, "versions");
    let _ = writeln!(r, "berthd {}", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(r, "kernel {}", read("/proc/sys/kernel/osrelease").trim());
    let os = read("/etc/os-release");
    let _ = writeln!(r, "os {}", os.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=")).unwrap_or("?").trim_matches('"'));
    let _ = writeln!(r, "cgroup {:?}", berth_runtime::cgroup::version());

    section(&mut r, "prerequisites (berthd check)");
    r.push_str(&crate::check::report(&crate::check::run(config)));

    section(&mut r, "config (secrets redacted)");
    r.push_str(&config.show(sources).unwrap_or_else(|e| format!("cannot print: {e}\n")));

    runtime.block_on(crate::cri::report::running_berthd(&mut r, &config.socket));

    section(&mut r, "network");
    for (what, args) in [
        ("bridge", vec!["-d", "addr", "show", "dev", config.network.bridge.as_str()]),
        ("routes", vec!["route", "show"]),
        ("links", vec!["-br", "link", "show"]),
    ] {
        let _ = writeln!(r, "--- {what}: ip {}", args.join(" "));
        r.push_str(&command("ip", &args));
    }
    let _ = writeln!(r, "--- nft list table inet {}", config.network.nft_table);
    r.push_str(&command("nft", &["list", "table", "inet", &config.network.nft_table]));
    let _ = writeln!(r, "--- sysctl net.ipv4.ip_forward = {}", read("/proc/sys/net/ipv4/ip_forward").trim());

    section(&mut r, "cgroups");
    let mut parents = vec![config.runtime.default_cgroup_parent.clone()];
    parents.extend(config.runtimes.values().map(|h| h.cgroup_parent.clone()).filter(|p| !p.is_empty()));
    let systemd = config.runtime.cgroup_driver == crate::config::CgroupDriver::Systemd;
    let _ = writeln!(r, "driver {:?}", config.runtime.cgroup_driver);
    for p in parents {
        let Ok(parent) = crate::cgroups::parent_path(systemd, &p) else { continue };
        let _ = writeln!(r, "{parent}:");
        for pod in berth_runtime::cgroup::children(&parent) {
            let path = format!("{parent}/{pod}");
            let _ = writeln!(
                r,
                "  {pod}: {} processes, containers {:?}",
                berth_runtime::cgroup::pids(&path).len(),
                berth_runtime::cgroup::children(&path)
            );
        }
    }

    section(&mut r, "state directory");
    for sub in ["pods", "containers"] {
        let dir = config.state.join(sub);
        let mut names: Vec<String> =
            std::fs::read_dir(&dir).into_iter().flatten().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        let _ = writeln!(r, "{}: {}", dir.display(), if names.is_empty() { "(empty)".to_string() } else { names.join(" ") });
    }

    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("creating {}", out.display()))?;
    f.write_all(r.as_bytes()).with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// Starts a section of the report.
pub(crate) fn section(r: &mut String, name: &str) {
    let _ = writeln!(r, "\n=== {name} ===");
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A command's output, or why there is none.
fn command(bin: &str, args: &[&str]) -> String {
    match Command::new(bin).args(args).output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => format!("({bin} exited {}: {})\n", o.status, String::from_utf8_lossy(&o.stderr).trim()),
        Err(e) => format!("({bin}: {e})\n"),
    }
}

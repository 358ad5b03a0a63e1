//! The device nodes a container's /dev gets: the OCI defaults plus the
//! spec's devices, and the standard links. Decided here; made by
//! [`super::RootfsOps::populate_dev`].

use std::path::{Path, PathBuf};

use nix::sys::stat::SFlag;
use oci_spec::runtime::Spec;

use crate::message::InitError;

/// One node under /dev.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    /// Path relative to /dev (`null`, `net/tun`).
    pub rel: PathBuf,
    /// Character, block or FIFO.
    pub kind: SFlag,
    /// Major number.
    pub major: u64,
    /// Minor number.
    pub minor: u64,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// The OCI default devices every container gets.
pub const DEFAULTS: [(&str, u64, u64); 6] =
    [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)];

/// The standard links of /dev.
pub const LINKS: [(&str, &str); 6] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
    ("core", "/proc/kcore"),
];

/// The defaults, then the spec's devices (which may replace a default).
pub fn nodes(spec: &Spec) -> Result<Vec<DeviceNode>, InitError> {
    let mut out: Vec<DeviceNode> = DEFAULTS
        .iter()
        .map(|(n, major, minor)| DeviceNode {
            rel: PathBuf::from(n),
            kind: SFlag::S_IFCHR,
            major: *major,
            minor: *minor,
            mode: 0o666,
            uid: 0,
            gid: 0,
        })
        .collect();
    for d in spec.linux().as_ref().and_then(|l| l.devices().as_ref()).into_iter().flatten() {
        let rel = d
            .path()
            .strip_prefix("/dev")
            .ok()
            .map(crate::fs::clean_relative)
            .and_then(Result::ok)
            .filter(|r| r != Path::new(""))
            .ok_or_else(|| InitError::Setup(format!("device {} is not under /dev", d.path().display())))?;
        let kind = match d.typ() {
            oci_spec::runtime::LinuxDeviceType::B => SFlag::S_IFBLK,
            oci_spec::runtime::LinuxDeviceType::P => SFlag::S_IFIFO,
            _ => SFlag::S_IFCHR,
        };
        out.retain(|n| n.rel != rel);
        out.push(DeviceNode {
            rel,
            kind,
            major: d.major() as u64,
            minor: d.minor() as u64,
            mode: d.file_mode().unwrap_or(0o666),
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxBuilder, LinuxDeviceBuilder, LinuxDeviceType, SpecBuilder};

    fn spec_with(devices: Vec<oci_spec::runtime::LinuxDevice>) -> Spec {
        SpecBuilder::default().linux(LinuxBuilder::default().devices(devices).build().unwrap()).build().unwrap()
    }

    #[test]
    fn defaults_then_the_specs_own() {
        let tun = LinuxDeviceBuilder::default().path("/dev/net/tun").typ(LinuxDeviceType::C).major(10).minor(200).build().unwrap();
        let n = nodes(&spec_with(vec![tun])).unwrap();
        assert_eq!(n.len(), 7);
        assert_eq!(n[0].rel, PathBuf::from("null"));
        assert_eq!((n[6].rel.clone(), n[6].major, n[6].minor), (PathBuf::from("net/tun"), 10, 200));
        let outside = LinuxDeviceBuilder::default().path("/etc/evil").typ(LinuxDeviceType::C).major(1).minor(1).build().unwrap();
        assert!(nodes(&spec_with(vec![outside])).is_err());
        let climbing = LinuxDeviceBuilder::default().path("/dev/../etc/x").typ(LinuxDeviceType::C).major(1).minor(1).build().unwrap();
        assert!(nodes(&spec_with(vec![climbing])).is_err());
    }
}

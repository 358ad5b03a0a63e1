//! The device cgroup: which device nodes a container may create (`m`), read
//! (`r`) and write (`w`). The rules are OCI's `linux.resources.devices`,
//! applied in order, a later rule overriding an earlier one.
//!
//! cgroup v1 has a `devices` controller: a `devices.deny` of `a` empties the
//! allow list, then each allowed rule is written to `devices.allow`. cgroup v2
//! has none: the kernel asks an eBPF program of type
//! `BPF_PROG_TYPE_CGROUP_DEVICE` attached to the cgroup (see [`super::bpf`]),
//! which is compiled here from the same rules.

use super::bpf::{self, Insn};

/// Device types a rule can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// Every type (`a`).
    All,
    /// Character devices (`c`).
    Char,
    /// Block devices (`b`).
    Block,
}

/// Access bits, as the kernel's BPF device context numbers them.
pub mod access {
    /// `m`: mknod.
    pub const MKNOD: u32 = 1;
    /// `r`: open for reading.
    pub const READ: u32 = 2;
    /// `w`: open for writing.
    pub const WRITE: u32 = 4;
    /// `rwm`.
    pub const ALL: u32 = MKNOD | READ | WRITE;
}

/// One rule of the device cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRule {
    /// Allow (true) or deny what the rule matches.
    pub allow: bool,
    /// Which device type.
    pub kind: DeviceKind,
    /// The major number; None matches all.
    pub major: Option<u32>,
    /// The minor number; None matches all.
    pub minor: Option<u32>,
    /// [`access`] bits.
    pub access: u32,
}

/// A rule that cannot be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("device rule {rule:?}: {reason}")]
pub struct RuleError {
    /// The rule as given.
    pub rule: String,
    /// Why not.
    pub reason: &'static str,
}

impl DeviceRule {
    /// Everything, allowed or denied.
    pub fn all(allow: bool) -> DeviceRule {
        DeviceRule { allow, kind: DeviceKind::All, major: None, minor: None, access: access::ALL }
    }

    /// An OCI rule in berth's terms. A missing type means all types, a
    /// missing access all of `rwm`, as runc reads them.
    pub fn from_oci(r: &oci_spec::runtime::LinuxDeviceCgroup) -> Result<DeviceRule, RuleError> {
        use oci_spec::runtime::LinuxDeviceType as T;
        let err = |reason| RuleError { rule: r.to_string(), reason };
        let kind = match r.typ() {
            None | Some(T::A) => DeviceKind::All,
            Some(T::C) | Some(T::U) => DeviceKind::Char,
            Some(T::B) => DeviceKind::Block,
            Some(T::P) => return Err(err("a FIFO is not a device the cgroup controls")),
        };
        let number = |n: Option<i64>| n.map(|n| u32::try_from(n).map_err(|_| err("major/minor out of range"))).transpose();
        let mut bits = 0;
        for c in r.access().as_deref().unwrap_or("rwm").chars() {
            bits |= match c {
                'r' => access::READ,
                'w' => access::WRITE,
                'm' => access::MKNOD,
                _ => return Err(err("access may only contain r, w and m")),
            };
        }
        if bits == 0 {
            bits = access::ALL;
        }
        Ok(DeviceRule { allow: r.allow(), kind, major: number(r.major())?, minor: number(r.minor())?, access: bits })
    }

    /// The rule in the v1 files' syntax: `c 1:3 rwm`.
    pub fn v1_line(&self) -> String {
        let kind = match self.kind {
            DeviceKind::All => 'a',
            DeviceKind::Char => 'c',
            DeviceKind::Block => 'b',
        };
        let num = |n: Option<u32>| n.map_or_else(|| "*".to_string(), |n| n.to_string());
        let mut acc = String::new();
        for (bit, c) in [(access::READ, 'r'), (access::WRITE, 'w'), (access::MKNOD, 'm')] {
            if self.access & bit != 0 {
                acc.push(c);
            }
        }
        format!("{kind} {}:{} {acc}", num(self.major), num(self.minor))
    }

    /// True for a rule that matches every device with every access.
    fn is_everything(&self) -> bool {
        self.kind == DeviceKind::All && self.major.is_none() && self.minor.is_none() && self.access == access::ALL
    }
}

/// The rules reduced to what a filter needs: a default and the exceptions
/// after the last rule that covers everything, in order (later wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reduced {
    /// What happens to a device no exception matches.
    pub default_allow: bool,
    /// Exceptions, the last matching one deciding.
    pub exceptions: Vec<DeviceRule>,
}

/// Reduces `rules`. With no rule at all, everything is allowed (a cgroup
/// nobody restricted).
pub fn reduce(rules: &[DeviceRule]) -> Reduced {
    let mut out = Reduced { default_allow: true, exceptions: Vec::new() };
    for r in rules {
        if r.is_everything() {
            out = Reduced { default_allow: r.allow, exceptions: Vec::new() };
        } else if r.allow != out.default_allow {
            out.exceptions.push(r.clone());
        } else {
            // Same as the default: it only undoes earlier exceptions it covers.
            out.exceptions.retain(|e| !covers(r, e));
        }
    }
    out
}

/// True when `outer` matches every request `inner` matches.
fn covers(outer: &DeviceRule, inner: &DeviceRule) -> bool {
    (outer.kind == DeviceKind::All || outer.kind == inner.kind)
        && (outer.major.is_none() || outer.major == inner.major)
        && (outer.minor.is_none() || outer.minor == inner.minor)
        && inner.access & !outer.access == 0
}

/// True when a device request passes the rules (the kernel's decision, for
/// tests of the program against the rules).
pub fn allows(rules: &Reduced, kind: DeviceKind, major: u32, minor: u32, acc: u32) -> bool {
    for r in rules.exceptions.iter().rev() {
        let kind_ok = r.kind == DeviceKind::All || r.kind == kind;
        if kind_ok && r.major.is_none_or(|m| m == major) && r.minor.is_none_or(|m| m == minor) && acc & !r.access == 0 {
            return r.allow;
        }
    }
    rules.default_allow
}

/// The BPF device-type numbers of `struct bpf_cgroup_dev_ctx`.
const BPF_DEVCG_DEV_BLOCK: i32 = 1;
const BPF_DEVCG_DEV_CHAR: i32 = 2;

/// Compiles the rules into a `BPF_PROG_TYPE_CGROUP_DEVICE` program: load the
/// request (type, access, major, minor), try the exceptions from the last to
/// the first, return the first match's verdict, else the default.
pub fn program(rules: &Reduced) -> Vec<Insn> {
    use bpf::Reg::*;
    let mut p = vec![
        // struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }:
        // access_type is (access << 16) | type.
        Insn::ldx_w(R2, R1, 0),
        Insn::and32_imm(R2, 0xffff),
        Insn::ldx_w(R3, R1, 0),
        Insn::rsh32_imm(R3, 16),
        Insn::ldx_w(R4, R1, 4),
        Insn::ldx_w(R5, R1, 8),
    ];
    for r in rules.exceptions.iter().rev() {
        // Each check jumps past the rest of this rule's block on mismatch;
        // the jump offsets are patched once the block's length is known.
        let mut block: Vec<Insn> = Vec::new();
        let mut jumps = Vec::new();
        match r.kind {
            DeviceKind::All => {}
            DeviceKind::Char => {
                jumps.push(block.len());
                block.push(Insn::jne_imm(R2, BPF_DEVCG_DEV_CHAR, 0));
            }
            DeviceKind::Block => {
                jumps.push(block.len());
                block.push(Insn::jne_imm(R2, BPF_DEVCG_DEV_BLOCK, 0));
            }
        }
        if r.access != access::ALL {
            // The request must ask for nothing outside the rule's access.
            block.push(Insn::mov64_reg(R1, R3));
            block.push(Insn::and32_imm(R1, (!r.access & access::ALL) as i32));
            jumps.push(block.len());
            block.push(Insn::jne_imm(R1, 0, 0));
        }
        for (n, reg) in [(r.major, R4), (r.minor, R5)] {
            if let Some(n) = n {
                jumps.push(block.len());
                block.push(Insn::jne_imm(reg, n as i32, 0));
            }
        }
        block.push(Insn::mov64_imm(R0, i32::from(r.allow)));
        block.push(Insn::exit());
        let len = block.len();
        for j in jumps {
            block[j].off = (len - j - 1) as i16;
        }
        p.extend(block);
    }
    p.push(Insn::mov64_imm(R0, i32::from(rules.default_allow)));
    p.push(Insn::exit());
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(allow: bool, kind: DeviceKind, major: Option<u32>, minor: Option<u32>, acc: u32) -> DeviceRule {
        DeviceRule { allow, kind, major, minor, access: acc }
    }

    #[test]
    fn oci_rules_parse_and_print_in_v1_syntax() {
        let r = oci_spec::runtime::LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(oci_spec::runtime::LinuxDeviceType::C)
            .major(1)
            .minor(3)
            .access("rwm")
            .build()
            .unwrap();
        let parsed = DeviceRule::from_oci(&r).unwrap();
        assert_eq!(parsed.v1_line(), "c 1:3 rwm");
        let all = oci_spec::runtime::LinuxDeviceCgroupBuilder::default().allow(false).access("rwm").build().unwrap();
        assert_eq!(DeviceRule::from_oci(&all).unwrap(), DeviceRule::all(false));
        let bad = oci_spec::runtime::LinuxDeviceCgroupBuilder::default().access("rwx").build().unwrap();
        assert!(DeviceRule::from_oci(&bad).is_err());
        assert_eq!(rule(true, DeviceKind::Block, None, Some(0), access::MKNOD).v1_line(), "b *:0 m");
    }

    #[test]
    fn deny_all_then_allow_reduces_to_exceptions() {
        let rules = [
            DeviceRule::all(false),
            rule(true, DeviceKind::Char, Some(1), Some(3), access::ALL),
            rule(true, DeviceKind::Char, None, None, access::MKNOD),
            rule(true, DeviceKind::Char, Some(136), None, access::ALL),
        ];
        let r = reduce(&rules);
        assert!(!r.default_allow);
        assert_eq!(r.exceptions.len(), 3);
        assert!(allows(&r, DeviceKind::Char, 1, 3, access::READ | access::WRITE));
        assert!(allows(&r, DeviceKind::Char, 10, 229, access::MKNOD), "mknod of any char device");
        assert!(!allows(&r, DeviceKind::Char, 10, 229, access::READ), "but not opening it");
        assert!(!allows(&r, DeviceKind::Block, 7, 0, access::READ));
        assert!(allows(&r, DeviceKind::Char, 136, 4, access::WRITE));
        // A later allow-all resets everything; a later deny undoes an allow.
        let r = reduce(&[rules[0].clone(), rules[1].clone(), DeviceRule::all(true)]);
        assert!(r.default_allow && r.exceptions.is_empty());
        let r = reduce(&[rules[0].clone(), rules[1].clone(), rule(false, DeviceKind::Char, Some(1), Some(3), access::ALL)]);
        assert!(r.exceptions.is_empty() && !allows(&r, DeviceKind::Char, 1, 3, access::READ));
        assert!(reduce(&[]).default_allow);
    }

    #[test]
    fn program_shape() {
        let r = reduce(&[DeviceRule::all(false), rule(true, DeviceKind::Char, Some(1), Some(3), access::READ | access::WRITE)]);
        let p = program(&r);
        // 6 loads, then: type check, access (mov, and, jne), major, minor, verdict (2), then the default (2).
        assert_eq!(p.len(), 6 + 1 + 3 + 2 + 2 + 2);
        // Every jump of the rule lands on the default verdict.
        for (i, insn) in p.iter().enumerate().take(p.len() - 4).skip(6) {
            if insn.code == bpf::JNE_IMM {
                assert_eq!(i + 1 + insn.off as usize, p.len() - 2, "jump at {i}");
            }
        }
        assert_eq!(p[p.len() - 2], Insn::mov64_imm(bpf::Reg::R0, 0));
    }
}

//! The last confinement steps before exec: capability sets, no_new_privs and
//! the seccomp filter, compiled from the OCI profile by libseccomp (which
//! handles every architecture the profile lists, unlike seccompiler).

use std::collections::HashSet;

use caps::{CapSet, Capability};
use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
use oci_spec::runtime::{Arch, LinuxCapabilities, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};

use super::user::ResolvedUser;
use crate::message::InitError;

fn err(step: &str, e: impl std::fmt::Display) -> InitError {
    InitError::Setup(format!("{step}: {e}"))
}

fn to_caps(set: &Option<oci_spec::runtime::Capabilities>) -> HashSet<Capability> {
    set.iter()
        .flatten()
        .filter_map(|c| {
            // oci-spec and caps spell the same kernel names: CAP_CHOWN…
            let name = format!("CAP_{}", c.to_string().trim_start_matches("CAP_").to_uppercase());
            name.parse::<Capability>().ok()
        })
        .collect()
}

/// Switches to the final user keeping exactly the spec's capabilities.
/// Bounding is reduced first (needs CAP_SETPCAP), then ids change with
/// keepcaps, then the other sets are set.
pub fn switch_user_with_caps(user: &ResolvedUser, caps: Option<&LinuxCapabilities>) -> Result<(), InitError> {
    let Some(caps) = caps else { return user.switch() };
    // What this node lets us hand out at all (no CAP_SYS_RESOURCE in some
    // sandboxes): every set is clamped to it rather than failing the pod.
    let available: HashSet<Capability> = caps::read(None, CapSet::Bounding).unwrap_or_default();
    let to_caps =
        |set: &Option<oci_spec::runtime::Capabilities>| -> HashSet<Capability> { to_caps(set).intersection(&available).copied().collect() };
    let bounding = to_caps(caps.bounding());
    for c in caps::all() {
        if !bounding.contains(&c) && caps::has_cap(None, CapSet::Bounding, c).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, c).map_err(|e| err(&format!("drop {c} from bounding"), e))?;
        }
    }
    // Inheritable while CAP_SETPCAP is still effective; the kernel checks
    // new sets against the current ones, so effective shrinks before permitted.
    caps::set(None, CapSet::Inheritable, &to_caps(caps.inheritable())).map_err(|e| err("set inheritable capabilities", e))?;
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1) };
    user.switch()?;
    // SAFETY: as above.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0) };
    caps::set(None, CapSet::Effective, &to_caps(caps.effective())).map_err(|e| err("set effective capabilities", e))?;
    caps::set(None, CapSet::Permitted, &to_caps(caps.permitted())).map_err(|e| err("set permitted capabilities", e))?;
    caps::clear(None, CapSet::Ambient).ok();
    for c in to_caps(caps.ambient()) {
        caps::raise(None, CapSet::Ambient, c).map_err(|e| err(&format!("raise ambient {c}"), e))?;
    }
    Ok(())
}

/// Sets no_new_privs.
pub fn no_new_privs() -> Result<(), InitError> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(err("no_new_privs", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> ScmpAction {
    match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => ScmpAction::KillThread,
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => ScmpAction::Errno(errno.unwrap_or(libc::EPERM as u32) as i32),
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(errno.unwrap_or(libc::EPERM as u32) as u16),
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActNotify => ScmpAction::Notify,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
    }
}

fn arch(a: Arch) -> Option<ScmpArch> {
    Some(match a {
        Arch::ScmpArchNative => ScmpArch::Native,
        Arch::ScmpArchX86 => ScmpArch::X86,
        Arch::ScmpArchX86_64 => ScmpArch::X8664,
        Arch::ScmpArchX32 => ScmpArch::X32,
        Arch::ScmpArchArm => ScmpArch::Arm,
        Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
        Arch::ScmpArchMips => ScmpArch::Mips,
        Arch::ScmpArchMips64 => ScmpArch::Mips64,
        Arch::ScmpArchMips64n32 => ScmpArch::Mips64N32,
        Arch::ScmpArchMipsel => ScmpArch::Mipsel,
        Arch::ScmpArchMipsel64 => ScmpArch::Mipsel64,
        Arch::ScmpArchMipsel64n32 => ScmpArch::Mipsel64N32,
        Arch::ScmpArchPpc => ScmpArch::Ppc,
        Arch::ScmpArchPpc64 => ScmpArch::Ppc64,
        Arch::ScmpArchPpc64le => ScmpArch::Ppc64Le,
        Arch::ScmpArchS390 => ScmpArch::S390,
        Arch::ScmpArchS390x => ScmpArch::S390X,
        #[allow(unreachable_patterns)]
        _ => return None,
    })
}

/// The spec's seccomp filter, compiled ([`compile`]), if it has a profile.
pub fn compile_spec(spec: &oci_spec::runtime::Spec) -> Result<Option<ScmpFilterContext>, InitError> {
    spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()).map(compile).transpose()
}

/// Compiles an OCI seccomp profile into a filter (not loaded). Syscalls the
/// kernel's libseccomp does not know are skipped, as runc does.
pub fn compile(profile: &LinuxSeccomp) -> Result<ScmpFilterContext, InitError> {
    let default = action(profile.default_action(), profile.default_errno_ret());
    let mut filter = ScmpFilterContext::new(default).map_err(|e| err("seccomp filter", e))?;
    for a in profile.architectures().iter().flatten().filter_map(|a| arch(*a)) {
        if a != ScmpArch::Native {
            filter.add_arch(a).map_err(|e| err(&format!("seccomp arch {a:?}"), e))?;
        }
    }
    for rule in profile.syscalls().iter().flatten() {
        let act = action(rule.action(), rule.errno_ret());
        if act == default {
            continue;
        }
        let conds: Vec<ScmpArgCompare> = rule
            .args()
            .iter()
            .flatten()
            .map(|a| {
                let op = match a.op() {
                    LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
                    LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
                    LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
                    LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
                    LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
                    LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
                    LinuxSeccompOperator::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(a.value()),
                };
                let value = if matches!(a.op(), LinuxSeccompOperator::ScmpCmpMaskedEq) { a.value_two().unwrap_or(0) } else { a.value() };
                ScmpArgCompare::new(a.index() as u32, op, value)
            })
            .collect();
        for name in rule.names() {
            let Ok(sc) = ScmpSyscall::from_name(name) else { continue };
            let r = if conds.is_empty() { filter.add_rule(act, sc) } else { filter.add_rule_conditional(act, sc, &conds) };
            r.map_err(|e| err(&format!("seccomp rule for {name}"), e))?;
        }
    }
    Ok(filter)
}

/// What a process that waits for signals and reaps children calls, and
/// what any process needs to allocate, close and exit.
pub const WAIT_AND_REAP: &[&str] = &[
    "rt_sigtimedwait",
    "rt_sigprocmask",
    "rt_sigreturn",
    "restart_syscall",
    "wait4",
    "waitid",
    "close",
    "brk",
    "mmap",
    "munmap",
    "exit",
    "exit_group",
];

/// Loads a filter that allows only `syscalls` and answers every other with
/// EPERM: for berth's own processes that stay in a container's namespaces
/// (the pod init, an exec's init), so that one a container may ptrace
/// makes no call the container could not. Needs no_new_privs or
/// CAP_SYS_ADMIN. Names this libseccomp does not know are skipped.
pub fn load_allow_list(syscalls: &[&[&str]]) -> Result<(), InitError> {
    let mut filter = ScmpFilterContext::new(ScmpAction::Errno(libc::EPERM)).map_err(|e| err("seccomp filter", e))?;
    for name in syscalls.iter().copied().flatten() {
        if let Ok(sc) = ScmpSyscall::from_name(name) {
            filter.add_rule(ScmpAction::Allow, sc).map_err(|e| err(&format!("seccomp rule for {name}"), e))?;
        }
    }
    load(&filter)
}

/// Loads the filter into the calling thread (last step before exec).
pub fn load(filter: &ScmpFilterContext) -> Result<(), InitError> {
    filter.load().map_err(|e| err("load seccomp filter", e))
}

//! Just enough eBPF for the cgroup v2 device controller: the instructions
//! [`super::devices::program`] emits, and the `bpf(2)` commands that load a
//! `BPF_PROG_TYPE_CGROUP_DEVICE` program and attach it to a cgroup.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// `BPF_PROG_TYPE_CGROUP_DEVICE`.
const PROG_TYPE_CGROUP_DEVICE: u32 = 15;
/// `BPF_CGROUP_DEVICE`, the attach type.
const ATTACH_CGROUP_DEVICE: u32 = 6;
/// `BPF_F_ALLOW_MULTI`: several programs per cgroup, all must allow.
const F_ALLOW_MULTI: u32 = 2;
const CMD_PROG_LOAD: libc::c_long = 5;
const CMD_PROG_ATTACH: libc::c_long = 8;
const CMD_PROG_DETACH: libc::c_long = 9;
const CMD_PROG_GET_FD_BY_ID: libc::c_long = 13;
const CMD_PROG_QUERY: libc::c_long = 16;

/// Registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reg {
    /// Return value.
    R0 = 0,
    /// The context pointer on entry.
    R1 = 1,
    /// Scratch.
    R2 = 2,
    /// Scratch.
    R3 = 3,
    /// Scratch.
    R4 = 4,
    /// Scratch.
    R5 = 5,
}

/// `BPF_LDX | BPF_MEM | BPF_W`.
pub const LDX_W: u8 = 0x61;
/// `BPF_ALU | BPF_AND | BPF_K` (32-bit).
pub const AND32_IMM: u8 = 0x54;
/// `BPF_ALU | BPF_RSH | BPF_K` (32-bit).
pub const RSH32_IMM: u8 = 0x74;
/// `BPF_ALU64 | BPF_MOV | BPF_X`.
pub const MOV64_REG: u8 = 0xbf;
/// `BPF_ALU64 | BPF_MOV | BPF_K`.
pub const MOV64_IMM: u8 = 0xb7;
/// `BPF_JMP | BPF_JNE | BPF_K`.
pub const JNE_IMM: u8 = 0x55;
/// `BPF_JMP | BPF_EXIT`.
pub const EXIT: u8 = 0x95;

/// One `struct bpf_insn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    /// Opcode.
    pub code: u8,
    /// dst (low nibble) and src (high nibble) registers.
    pub regs: u8,
    /// Offset: of a memory access, or instructions to skip for a jump.
    pub off: i16,
    /// Immediate.
    pub imm: i32,
}

impl Insn {
    fn new(code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> Insn {
        Insn { code, regs: (dst as u8) | ((src as u8) << 4), off, imm }
    }
    /// `dst = *(u32 *)(src + off)`.
    pub fn ldx_w(dst: Reg, src: Reg, off: i16) -> Insn {
        Insn::new(LDX_W, dst, src, off, 0)
    }
    /// `dst &= imm` (32-bit).
    pub fn and32_imm(dst: Reg, imm: i32) -> Insn {
        Insn::new(AND32_IMM, dst, Reg::R0, 0, imm)
    }
    /// `dst >>= imm` (32-bit).
    pub fn rsh32_imm(dst: Reg, imm: i32) -> Insn {
        Insn::new(RSH32_IMM, dst, Reg::R0, 0, imm)
    }
    /// `dst = src`.
    pub fn mov64_reg(dst: Reg, src: Reg) -> Insn {
        Insn::new(MOV64_REG, dst, src, 0, 0)
    }
    /// `dst = imm`.
    pub fn mov64_imm(dst: Reg, imm: i32) -> Insn {
        Insn::new(MOV64_IMM, dst, Reg::R0, 0, imm)
    }
    /// `if dst != imm goto +off`.
    pub fn jne_imm(dst: Reg, imm: i32, off: i16) -> Insn {
        Insn::new(JNE_IMM, dst, Reg::R0, off, imm)
    }
    /// `return r0`.
    pub fn exit() -> Insn {
        Insn::new(EXIT, Reg::R0, Reg::R0, 0, 0)
    }
}

/// The `BPF_PROG_LOAD` part of `union bpf_attr`, up to `expected_attach_type`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The `BPF_PROG_ATTACH`/`BPF_PROG_DETACH` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// The `BPF_PROG_QUERY` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
}

/// The `BPF_PROG_GET_FD_BY_ID` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct GetFdAttr {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

/// `bpf(cmd, attr, sizeof attr)`.
fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: attr is a live, properly laid out prefix of union bpf_attr and
    // its size is passed; the kernel zero-extends a shorter attr and writes
    // only within the given size. Pointers inside it point at live buffers
    // that outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T as *mut libc::c_void, std::mem::size_of::<T>()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

/// Loads a device program; the verifier's log is the error on refusal.
pub fn load_device_program(insns: &[Insn]) -> std::io::Result<OwnedFd> {
    let license = CString::new("Apache-2.0").unwrap_or_default();
    let mut log = vec![0u8; 64 * 1024];
    let mut name = [0u8; 16];
    name[..11].copy_from_slice(b"berth_devcg");
    let mut attr = ProgLoadAttr {
        prog_type: PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name: name,
        expected_attach_type: ATTACH_CGROUP_DEVICE,
        ..Default::default()
    };
    match sys_bpf(CMD_PROG_LOAD, &mut attr) {
        // SAFETY: BPF_PROG_LOAD returned a new fd that nobody else owns.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(e) => {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]).trim().replace('\n', "; ");
            Err(std::io::Error::new(e.kind(), format!("BPF_PROG_LOAD: {e}: {text}")))
        }
    }
}

/// Ids of the device programs attached to the cgroup directory `dir`.
fn attached(dir: &OwnedFd) -> std::io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    let mut attr = QueryAttr {
        target_fd: dir.as_raw_fd() as u32,
        attach_type: ATTACH_CGROUP_DEVICE,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..Default::default()
    };
    sys_bpf(CMD_PROG_QUERY, &mut attr)?;
    ids.truncate(attr.prog_cnt as usize);
    Ok(ids)
}

/// Attaches `prog` to the cgroup directory `cgroup_dir` and detaches the
/// device programs that were attached there before, so that re-applying
/// rules replaces them. The program stays attached after this process exits,
/// until the cgroup is removed.
pub fn attach_device_program(cgroup_dir: &Path, prog: &OwnedFd) -> std::io::Result<()> {
    let dir = OwnedFd::from(std::fs::File::open(cgroup_dir)?);
    let before = attached(&dir).unwrap_or_default();
    let mut attr = AttachAttr {
        target_fd: dir.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: ATTACH_CGROUP_DEVICE,
        attach_flags: F_ALLOW_MULTI,
        ..Default::default()
    };
    sys_bpf(CMD_PROG_ATTACH, &mut attr).map_err(|e| std::io::Error::new(e.kind(), format!("BPF_PROG_ATTACH: {e}")))?;
    for id in before {
        let mut get = GetFdAttr { prog_id: id, ..Default::default() };
        let Ok(fd) = sys_bpf(CMD_PROG_GET_FD_BY_ID, &mut get) else { continue };
        // SAFETY: BPF_PROG_GET_FD_BY_ID returned a new fd that nobody else owns.
        let old = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let mut detach = AttachAttr {
            target_fd: dir.as_raw_fd() as u32,
            attach_bpf_fd: old.as_raw_fd() as u32,
            attach_type: ATTACH_CGROUP_DEVICE,
            ..Default::default()
        };
        sys_bpf(CMD_PROG_DETACH, &mut detach).map_err(|e| std::io::Error::new(e.kind(), format!("BPF_PROG_DETACH: {e}")))?;
    }
    Ok(())
}

/// How many device programs are attached to `cgroup_dir` (for tests and status).
pub fn attached_count(cgroup_dir: &Path) -> std::io::Result<usize> {
    let dir = OwnedFd::from(std::fs::File::open(cgroup_dir)?);
    attached(&dir).map(|v| v.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_encode_like_the_kernel_headers() {
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        let i = Insn::ldx_w(Reg::R4, Reg::R1, 4);
        assert_eq!((i.code, i.regs, i.off), (0x61, 0x14, 4));
        assert_eq!(std::mem::size_of::<ProgLoadAttr>(), 72);
        assert_eq!(std::mem::size_of::<AttachAttr>(), 20);
    }
}

#[cfg(test)]
mod root_tests {
    /// The verifier accepts what devices::program emits (root, any cgroup mode).
    #[test]
    fn verifier_accepts_device_programs() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        use crate::cgroup::devices::{self, access, DeviceKind, DeviceRule};
        let rules = [
            DeviceRule::all(false),
            DeviceRule { allow: true, kind: DeviceKind::Char, major: Some(1), minor: Some(3), access: access::ALL },
            DeviceRule { allow: true, kind: DeviceKind::Block, major: None, minor: None, access: access::MKNOD },
            DeviceRule { allow: false, kind: DeviceKind::All, major: Some(7), minor: None, access: access::READ },
        ];
        super::load_device_program(&devices::program(&devices::reduce(&rules))).unwrap();
    }
}

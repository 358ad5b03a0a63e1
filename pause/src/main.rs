//! berth-pause: PID 1 of a pod's shared PID namespace. berth-monitor
//! `pod-init` has already joined the pod's cgroup and namespaces, emptied
//! the root, dropped every capability, switched to 65535, set no_new_privs
//! and loaded a seccomp allow-list, blocked every signal, and closed every
//! fd; then it exec'd this. What is left to do: stay non-dumpable (exec
//! made the process dumpable again), reap whatever is re-parented to it,
//! and exit on SIGTERM. Raw syscalls only, so that the process is a few
//! pages and nothing else.

#![no_std]
#![no_main]

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("berth-pause has syscall numbers for x86_64 and aarch64 only");

mod sys {
    #[cfg(target_arch = "x86_64")]
    pub mod nr {
        pub const WAIT4: usize = 61;
        pub const EXIT_GROUP: usize = 231;
        pub const PRCTL: usize = 157;
        pub const RT_SIGTIMEDWAIT: usize = 128;
    }
    #[cfg(target_arch = "aarch64")]
    pub mod nr {
        pub const WAIT4: usize = 260;
        pub const EXIT_GROUP: usize = 94;
        pub const PRCTL: usize = 167;
        pub const RT_SIGTIMEDWAIT: usize = 137;
    }

    /// SAFETY (for callers): the arguments must be valid for syscall `n`;
    /// pointers must point to memory of the size the kernel expects.
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn syscall4(n: usize, a: usize, b: usize, c: usize, d: usize) -> isize {
        let ret: isize;
        // SAFETY: the x86_64 syscall ABI: number in rax, arguments in rdi,
        // rsi, rdx, r10; rcx and r11 are clobbered.
        unsafe {
            core::arch::asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a, in("rsi") b, in("rdx") c, in("r10") d,
                lateout("rcx") _, lateout("r11") _, options(nostack));
        }
        ret
    }

    #[cfg(target_arch = "aarch64")]
    pub unsafe fn syscall4(n: usize, a: usize, b: usize, c: usize, d: usize) -> isize {
        let ret: isize;
        // SAFETY: the aarch64 syscall ABI: number in x8, arguments in x0..x3.
        unsafe {
            core::arch::asm!("svc 0", in("x8") n, inlateout("x0") a as isize => ret, in("x1") b, in("x2") c, in("x3") d, options(nostack));
        }
        ret
    }
}

const SIGCHLD: u32 = 17;
const SIGTERM: u32 = 15;
const WNOHANG: usize = 1;
const PR_SET_DUMPABLE: usize = 4;

fn exit(code: usize) -> ! {
    loop {
        // SAFETY: exit_group takes a plain integer; it does not return.
        unsafe { sys::syscall4(sys::nr::EXIT_GROUP, code, 0, 0, 0) };
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    exit(2)
}

#[no_mangle]
pub extern "C" fn _start() -> ! {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes integers only.
    if unsafe { sys::syscall4(sys::nr::PRCTL, PR_SET_DUMPABLE, 0, 0, 0) } != 0 {
        exit(1);
    }
    // The mask berth-monitor set survives exec: every signal is blocked, so
    // SIGCHLD and SIGTERM wait here instead of being delivered.
    let set: u64 = (1 << (SIGCHLD - 1)) | (1 << (SIGTERM - 1));
    loop {
        // SAFETY: `set` is a valid 8-byte sigset_t for the call's duration;
        // no siginfo or timeout is asked for.
        let sig = unsafe { sys::syscall4(sys::nr::RT_SIGTIMEDWAIT, &set as *const u64 as usize, 0, 0, 8) };
        if sig == SIGTERM as isize {
            exit(0);
        }
        // SIGCHLD (or an interruption): reap every exited child.
        // SAFETY: wait4 with null status and rusage pointers.
        while unsafe { sys::syscall4(sys::nr::WAIT4, usize::MAX, 0, WNOHANG, 0) } > 0 {}
    }
}

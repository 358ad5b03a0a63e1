//! cgroup v2 for real: run inside the throwaway VM of `e2e/cgroupv2-vm/`,
//! where the only hierarchy is cgroup v2 (`bash e2e/cgroupv2-vm/run-tests.sh`).
//! On a v1 host these tests are ignored by default and refuse to run.

use std::process::Command;
use std::time::Duration;

use berth_runtime::cgroup::{self, Limits, Version};

/// The VM's delegated subtree (see run-in-vm.sh).
fn base() -> String {
    let root = std::env::var("CGV2VM_CGROUP").expect("run inside the cgroup v2 VM (CGV2VM_CGROUP)");
    root.trim_start_matches("/sys/fs/cgroup/").to_string()
}

fn file(path: &str, name: &str) -> String {
    std::fs::read_to_string(format!("/sys/fs/cgroup/{path}/{name}")).unwrap().trim().to_string()
}

#[test]
#[ignore = "needs the cgroup v2 VM: bash e2e/cgroupv2-vm/run-tests.sh"]
fn v2_limits_usage_oom_and_removal() {
    assert_eq!(cgroup::version(), Version::V2, "not a cgroup v2 host");
    let pod = format!("{}/berth-pod", base());
    let ctr = format!("{pod}/ctr");
    cgroup::create(&pod).unwrap();
    let procs = cgroup::create(&ctr).unwrap();
    assert_eq!(procs, vec![std::path::PathBuf::from(format!("/sys/fs/cgroup/{ctr}/cgroup.procs"))]);

    let limits = Limits {
        cpu_shares: 512,
        cpu_quota: 50_000,
        cpu_period: 100_000,
        memory_limit: 32 << 20,
        memory_swap: 32 << 20,
        unified: [("pids.max".to_string(), "16".to_string())].into(),
        ..Default::default()
    };
    limits.validate(true).unwrap();
    cgroup::apply(&ctr, &limits).unwrap();
    assert_eq!(file(&ctr, "cpu.max"), "50000 100000");
    assert_eq!(file(&ctr, "cpu.weight"), (1 + (510 * 9999) / 262_142).to_string());
    assert_eq!(file(&ctr, "memory.max"), (32u64 << 20).to_string());
    assert_eq!(file(&ctr, "memory.swap.max"), "0");
    assert_eq!(file(&ctr, "pids.max"), "16");

    // A pids limit makes fork fail.
    let procs_file = format!("/sys/fs/cgroup/{ctr}/cgroup.procs");
    let _ = Command::new("sh")
        .args(["-c", &format!("echo $$ > {procs_file}; for i in $(seq 40); do sleep 2 & done 2>/dev/null; wait")])
        .status()
        .unwrap();
    let events = file(&ctr, "pids.events");
    assert!(events.contains("max ") && !events.ends_with("max 0"), "pids.events: {events}");

    // Live update, lifting the pids limit (dash may have left sleeps behind).
    let update = Limits {
        memory_limit: 48 << 20,
        cpu_quota: 20_000,
        cpu_period: 100_000,
        unified: [("pids.max".to_string(), "max".to_string())].into(),
        ..Default::default()
    };
    cgroup::apply(&ctr, &update).unwrap();
    assert_eq!(file(&ctr, "memory.max"), (48u64 << 20).to_string());
    assert_eq!(file(&ctr, "cpu.max"), "20000 100000");
    assert_eq!(file(&ctr, "pids.max"), "max");

    // Memory beyond the limit: OOM killed, and seen as such.
    let hog = Command::new("sh")
        .args(["-c", &format!("echo $$ > {procs_file}; x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo ${{#x}}")])
        .output()
        .unwrap();
    let mut oom = false;
    for _ in 0..50 {
        if cgroup::oom_killed(&ctr) {
            oom = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(oom, "memory.events: {}; hog: {:?}", file(&ctr, "memory.events"), hog);
    let usage = cgroup::usage(&ctr);
    assert!(usage.cpu_ns > 0, "{usage:?}");

    cgroup::remove(&ctr).unwrap();
    cgroup::remove(&pod).unwrap();
    assert!(!std::path::Path::new(&format!("/sys/fs/cgroup/{pod}")).exists());
}

#[test]
#[ignore = "needs the cgroup v2 VM: bash e2e/cgroupv2-vm/run-tests.sh"]
fn v2_device_cgroup_is_an_ebpf_program() {
    use berth_runtime::cgroup::devices::{access, DeviceKind};
    use berth_runtime::cgroup::DeviceRule;
    assert_eq!(cgroup::version(), Version::V2, "not a cgroup v2 host");
    let ctr = format!("{}/berth-devices", base());
    cgroup::create(&ctr).unwrap();
    let rule = |kind, major, minor, access| DeviceRule { allow: true, kind, major, minor, access };
    // What berth gives an ordinary container: nothing, then the basic nodes
    // and mknod (but not open) of any node.
    let rules = [
        DeviceRule::all(false),
        rule(DeviceKind::Char, None, None, access::MKNOD),
        rule(DeviceKind::Block, None, None, access::MKNOD),
        rule(DeviceKind::Char, Some(1), Some(3), access::ALL),
        rule(DeviceKind::Char, Some(1), Some(5), access::ALL),
    ];
    cgroup::apply_devices(&ctr, &rules).unwrap();
    // Re-applying replaces the program instead of stacking another.
    cgroup::apply_devices(&ctr, &rules).unwrap();
    let dir = std::path::PathBuf::from(format!("/sys/fs/cgroup/{ctr}"));
    assert_eq!(cgroup::bpf::attached_count(&dir).unwrap(), 1);
    let procs_file = format!("/sys/fs/cgroup/{ctr}/cgroup.procs");
    let tmp = tempfile::tempdir().unwrap();
    let script = format!(
        "echo $$ > {procs_file}
         try() {{ if (exec 3<\"$1\") 2>/dev/null; then echo \"$2 opened\"; else echo \"$2 denied\"; fi; }}
         try /dev/null null; try /dev/zero zero; try /dev/loop-control loop-control; try /dev/fuse fuse
         mknod {t}/loop0 b 7 0 && echo mknod-ok; try {t}/loop0 loop0",
        t = tmp.path().display()
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for want in ["null opened", "zero opened", "loop-control denied", "fuse denied", "mknod-ok", "loop0 denied"] {
        assert!(text.contains(want), "{want}: {text} {}", String::from_utf8_lossy(&out.stderr));
    }
    // Outside the cgroup the same node opens: the program is what refused.
    let out = Command::new("sh").args(["-c", "(exec 3</dev/loop-control) && echo opened"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "opened");
    cgroup::remove(&ctr).unwrap();
}

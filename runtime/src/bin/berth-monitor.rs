//! berth-monitor: the per-container monitor (`monitor`), the ExecSync helper
//! (`exec`), the pod PID-namespace init (`pod-init`) and the maker of a
//! pod's user namespace (`pod-userns`), and the zygote that forks monitors
//! (`zygote`, see `berth_runtime::zygote`). Started by berthd
//! only; its arguments are not a user interface.

use std::path::PathBuf;

use berth_runtime::flags::{get, parse as flags};
use berth_runtime::monitor::{JoinProc, MonitorArgs, PidNamespace, StdioOpts};
use berth_runtime::process::exec::ExecArgs;

fn usage(msg: &str) -> i32 {
    eprintln!("berth-monitor: {msg}\nusage: berth-monitor monitor --id ID --bundle DIR --sync-fd N [--rootfs-fd N] [--cgroup-procs FILE[:FILE...]] [--cgroup-hold true] [--log PATH] [--pid-ns new|host|pid:PID:START [--pid-ns-proc DIR|target]] [--stdin true] [--stdin-once true] [--tty true]\n       berth-monitor exec --bundle DIR --pid PID --start-time T -- CMD...\n       berth-monitor pod-init --pod ID --pod-dir DIR --cgroup-procs FILE[:FILE...]\n       berth-monitor pod-userns  (request on stdin, report on fd 3)");
    2
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        // Forks monitors for berthd; each child runs `dispatch`.
        Some("zygote") => berth_runtime::zygote::main(dispatch),
        _ => dispatch(&args),
    };
    std::process::exit(code);
}

/// Runs the mode `args` names.
fn dispatch(args: &[String]) -> i32 {
    match args.first().map(String::as_str) {
        Some("monitor") => monitor(&args[1..]),
        Some("exec") => exec(&args[1..]),
        Some("pod-init") => pod_init(&args[1..]),
        Some("pod-userns") => berth_runtime::sandbox::pod_userns_main(),
        Some("hold") => berth_runtime::cgroup::systemd::hold_main(),
        _ => usage("unknown mode"),
    }
}

fn monitor(args: &[String]) -> i32 {
    let (f, _) = match flags(args) {
        Ok(v) => v,
        Err(e) => return usage(&e),
    };
    let (Some(id), Some(bundle), Some(sync)) = (get(&f, "id"), get(&f, "bundle"), get(&f, "sync-fd")) else {
        return usage("monitor needs --id, --bundle and --sync-fd");
    };
    let Ok(sync_fd) = sync.parse() else { return usage("bad --sync-fd") };
    let rootfs_fd = match get(&f, "rootfs-fd").map(str::parse) {
        None => None,
        Some(Ok(fd)) => Some(fd),
        Some(Err(_)) => return usage("bad --rootfs-fd"),
    };
    let pid_ns = match get(&f, "pid-ns") {
        None | Some("new") => PidNamespace::New,
        Some("host") => PidNamespace::Host,
        Some(other) => {
            let parsed = other.strip_prefix("pid:").and_then(|p| p.split_once(':'));
            match parsed.and_then(|(pid, start)| Some((pid.parse().ok()?, start.parse().ok()?))) {
                Some((pid, start_time)) => {
                    let proc = match get(&f, "pid-ns-proc") {
                        None => JoinProc::Kernel,
                        Some("target") => JoinProc::OfTarget,
                        Some(dir) if dir.starts_with('/') => JoinProc::Pinned(PathBuf::from(dir)),
                        Some(_) => return usage("bad --pid-ns-proc"),
                    };
                    PidNamespace::Join { pid, start_time, proc }
                }
                None => return usage("bad --pid-ns"),
            }
        }
    };
    berth_runtime::monitor::main(MonitorArgs {
        id: id.to_string(),
        bundle: PathBuf::from(bundle),
        log: get(&f, "log").map(PathBuf::from),
        pid_ns,
        sync_fd,
        rootfs_fd,
        cgroup_procs: get(&f, "cgroup-procs").map(str::to_string),
        cgroup_hold: get(&f, "cgroup-hold") == Some("true"),
        stdio: StdioOpts {
            stdin: get(&f, "stdin") == Some("true"),
            stdin_once: get(&f, "stdin-once") == Some("true"),
            tty: get(&f, "tty") == Some("true"),
        },
    })
}

fn exec(args: &[String]) -> i32 {
    let (f, cmd) = match flags(args) {
        Ok(v) => v,
        Err(e) => return usage(&e),
    };
    let (Some(bundle), Some(pid), Some(start)) = (get(&f, "bundle"), get(&f, "pid"), get(&f, "start-time")) else {
        return usage("exec needs --bundle, --pid and --start-time");
    };
    let (Ok(pid), Ok(start_time)) = (pid.parse(), start.parse()) else { return usage("bad --pid or --start-time") };
    let tty = get(&f, "tty") == Some("true");
    berth_runtime::process::exec::main(ExecArgs { bundle: PathBuf::from(bundle), pid, start_time, args: cmd, tty })
}

fn pod_init(args: &[String]) -> i32 {
    let (f, _) = match flags(args) {
        Ok(v) => v,
        Err(e) => return usage(&e),
    };
    let (Some(pod_id), Some(pod_dir), Some(procs)) = (get(&f, "pod"), get(&f, "pod-dir"), get(&f, "cgroup-procs")) else {
        return usage("pod-init needs --pod, --pod-dir and --cgroup-procs");
    };
    berth_runtime::sandbox::pod_init_main(&berth_runtime::sandbox::PodInitArgs {
        pod_id: pod_id.to_string(),
        pod_dir: PathBuf::from(pod_dir),
        cgroup_procs: procs.split(':').filter(|p| !p.is_empty()).map(PathBuf::from).collect(),
    })
}

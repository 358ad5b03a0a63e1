//! berthd's foundation: serving CRI on the socket, the runtime-info RPCs,
//! start-up errors, restarts and the store.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use berth_e2e::{cri, run_berthd, Berthd};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_names_berth_and_v1() {
    let berthd = Berthd::start().await;
    let v = berthd.cri().await.runtime.version(cri::VersionRequest { version: "0.1.0".into() }).await.unwrap().into_inner();
    assert_eq!(v.runtime_name, "berth");
    assert_eq!(v.runtime_api_version, "v1");
    assert_eq!(v.version, "0.1.0");
    assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));

    // berthd runs as the same process, re-executed with glibc's tcache off
    // (memory.rs says why), and its arguments intact.
    let environ = std::fs::read(format!("/proc/{}/environ", berthd.pid())).unwrap();
    let tunables = environ.split(|b| *b == 0).find_map(|v| v.strip_prefix(b"GLIBC_TUNABLES=")).map(String::from_utf8_lossy);
    assert_eq!(tunables.as_deref(), Some("glibc.malloc.tcache_count=0"));
    assert_eq!(std::fs::read_to_string(format!("/proc/{}/comm", berthd.pid())).unwrap(), "berthd\n");
    let cmdline = std::fs::read_to_string(format!("/proc/{}/cmdline", berthd.pid())).unwrap();
    assert!(cmdline.contains(&berthd.paths.socket.display().to_string()), "{cmdline:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_is_0660_and_removed_on_sigterm() {
    let mut berthd = Berthd::start().await;
    let meta = std::fs::metadata(&berthd.paths.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    berthd.stop();
    assert!(!berthd.paths.socket.exists(), "socket left behind after SIGTERM");
    berthd.restart().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_runtime_and_network_conditions() {
    let berthd = Berthd::start().await;
    let mut cri = berthd.cri().await;
    let s = cri.runtime.status(cri::StatusRequest { verbose: false }).await.unwrap().into_inner();
    let conditions = s.status.unwrap().conditions;
    let runtime = conditions.iter().find(|c| c.r#type == "RuntimeReady").expect("RuntimeReady");
    assert!(runtime.status);
    let network = conditions.iter().find(|c| c.r#type == "NetworkReady").expect("NetworkReady");
    // The built-in bridge is up.
    assert!(network.status, "{network:?}");
    assert!(network.message.contains(&berthd.net.bridge), "{network:?}");
    assert!(s.info.is_empty(), "info only when verbose");

    let s = cri.runtime.status(cri::StatusRequest { verbose: true }).await.unwrap().into_inner();
    let config: serde_json::Value = serde_json::from_str(&s.info["config"]).expect("config is JSON");
    assert_eq!(config["root"], berthd.paths.root.display().to_string());
    assert_eq!(config["socket"], berthd.paths.socket.display().to_string());
    assert_eq!(config["log"]["format"], "text");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_config_reports_cgroupfs() {
    let berthd = Berthd::start().await;
    let r = berthd.cri().await.runtime.runtime_config(cri::RuntimeConfigRequest {}).await.unwrap().into_inner();
    assert_eq!(r.linux.unwrap().cgroup_driver, cri::CgroupDriver::Cgroupfs as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbuilt_rpcs_answer_unimplemented_with_their_name() {
    let berthd = Berthd::start().await;
    let mut cri = berthd.cri().await;
    let e = cri.runtime.checkpoint_container(cri::CheckpointContainerRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    assert!(e.message().contains("CheckpointContainer"), "{}", e.message());
    // Attach is built: an empty request is a bad argument, not Unimplemented.
    let e = cri.runtime.attach(cri::AttachRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("container_id"), "{}", e.message());
}

/// A lock held for a moment (a child of a berthd killed a moment ago,
/// between fork and exec) is waited for; one held on is refused, naming the
/// process that holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_briefly_held_lock_is_waited_for() {
    let mut berthd = Berthd::start().await;
    berthd.stop();
    let lock = berthd.paths.state.join("berthd.lock");
    let hold = |secs: &str| {
        std::process::Command::new("flock").args(["-x", "-o"]).arg(&lock).args(["sleep", secs]).spawn().expect("flock (util-linux)")
    };
    let mut brief = hold("1");
    std::thread::sleep(std::time::Duration::from_millis(200));
    berthd.restart().await;
    let _ = brief.wait();
    berthd.stop();

    let mut long = hold("8");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let p = &berthd.paths;
    let (status, _, err) = run_berthd(&[
        "--root",
        &p.root.display().to_string(),
        "--state",
        &p.state.display().to_string(),
        "--socket",
        &p.socket.display().to_string(),
    ]);
    // flock -o holds the lock itself (its sleep child does not).
    let _ = long.kill();
    let _ = long.wait();
    assert!(!status.success());
    assert!(err.contains(&format!("pid {} (flock)", long.id())), "{err}");
    berthd.restart().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_cidr_is_validated_and_survives_restart() {
    let mut berthd = Berthd::start().await;
    let update = |cidr: &str| cri::UpdateRuntimeConfigRequest {
        runtime_config: Some(cri::RuntimeConfig { network_config: Some(cri::NetworkConfig { pod_cidr: cidr.into() }) }),
    };
    let mut cri = berthd.cri().await;
    let e = cri.runtime.update_runtime_config(update("10.244.0.0")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("pod_cidr"), "{}", e.message());
    cri.runtime.update_runtime_config(update("10.244.1.0/24")).await.unwrap();

    berthd.restart().await;
    let s = berthd.cri().await.runtime.status(cri::StatusRequest { verbose: true }).await.unwrap().into_inner();
    assert_eq!(s.info["podCIDR"], "10.244.1.0/24");

    // And after a crash, too: the write was committed before the RPC answered.
    berthd.kill9();
    berthd.restart().await;
    let s = berthd.cri().await.runtime.status(cri::StatusRequest { verbose: true }).await.unwrap().into_inner();
    assert_eq!(s.info["podCIDR"], "10.244.1.0/24");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_berthd_is_refused_and_first_keeps_serving() {
    let berthd = Berthd::start().await;
    let p = &berthd.paths;
    let other = berthd.dir().join("other");

    // Same state directory: the lock says who holds it.
    let (status, _, err) = run_berthd(&[
        "--root",
        &other.join("root").display().to_string(),
        "--state",
        &p.state.display().to_string(),
        "--socket",
        &other.join("s.sock").display().to_string(),
    ]);
    assert!(!status.success());
    assert!(err.contains("another berthd") && err.contains(&berthd.pid().to_string()), "{err}");
    assert!(err.contains(&format!("pid {} (berthd)", berthd.pid())), "the holder, from /proc/locks: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    // Same socket, other state: the live socket is not taken over.
    let (status, _, err) = run_berthd(&[
        "--root",
        &other.join("root").display().to_string(),
        "--state",
        &other.join("state").display().to_string(),
        "--socket",
        &p.socket.display().to_string(),
    ]);
    assert!(!status.success());
    assert!(err.contains("in use"), "{err}");

    let mut cri = berthd.cri().await;
    cri.runtime.version(cri::VersionRequest::default()).await.expect("first berthd still serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_socket_from_a_dead_process_is_replaced() {
    let dir = berth_e2e::RunDir::new();
    let socket = dir.path().join("run/berth.sock");
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    // Binding and dropping leaves the socket file with nobody listening.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let net = berth_e2e::NetNames::new();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!("[network]\nbridge = \"{}\"\nsubnet = \"{}\"\nnft_table = \"{}\"\n", net.bridge, net.subnet, net.table),
    )
    .unwrap();
    let mut child = std::process::Command::new(berth_e2e::berthd_bin())
        .args([
            "--config",
            &config.display().to_string(),
            "--root",
            &dir.path().join("root").display().to_string(),
            "--state",
            &dir.path().join("state").display().to_string(),
            "--socket",
            &socket.display().to_string(),
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut ok = false;
    for _ in 0..200 {
        if let Ok(mut cri) = berth_e2e::connect(&socket).await {
            if cri.runtime.version(cri::VersionRequest::default()).await.is_ok() {
                ok = true;
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    net.remove();
    assert!(ok, "berthd did not serve on the stale socket's path");
    assert!(status.success());
}

/// Runs berthd with a config file and flags into `dir`, expecting it to fail.
fn expect_startup_failure(dir: &Path, config: Option<&str>, extra: &[&str]) -> String {
    let mut flags: Vec<(String, String)> = vec![
        ("--root".into(), dir.join("root").display().to_string()),
        ("--state".into(), dir.join("state").display().to_string()),
        ("--socket".into(), dir.join("run/berth.sock").display().to_string()),
    ];
    if let Some(text) = config {
        let path = dir.join("config.toml");
        std::fs::write(&path, text).unwrap();
        flags.push(("--config".into(), path.display().to_string()));
    }
    // `extra` is flag/value pairs that replace the defaults above.
    for pair in extra.chunks(2) {
        flags.retain(|(f, _)| f != pair[0]);
        flags.push((pair[0].to_string(), pair[1].to_string()));
    }
    let args: Vec<String> = flags.into_iter().flat_map(|(f, v)| [f, v]).collect();
    let before = listing(dir);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, _, err) = run_berthd(&argv);
    assert!(!status.success(), "berthd accepted {config:?} {extra:?}");
    assert_eq!(err.trim().lines().count(), 1, "one line expected, got: {err}");
    assert_eq!(listing(dir), before, "berthd left something behind: {err}");
    err
}

fn listing(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = walk(dir).into_iter().map(|p| p.strip_prefix(dir).unwrap().display().to_string()).collect();
    out.sort();
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        out.push(e.path());
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.extend(walk(&e.path()));
        }
    }
    out
}

#[test]
fn config_errors_name_the_file_or_key_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = d.join("config.toml").display().to_string();

    let err = expect_startup_failure(d, Some("root = \"/x\"\n[log\n"), &[]);
    assert!(err.contains(&cfg) && err.contains("line 2"), "{err}");

    let err = expect_startup_failure(d, Some("root = \"/x\"\nsockets = \"/y\"\n"), &[]);
    assert!(err.contains(&cfg) && err.contains("sockets"), "{err}");

    let err = expect_startup_failure(d, Some("[log]\nformat = 7\n"), &[]);
    assert!(err.contains(&cfg) && err.contains("format"), "{err}");

    let err = expect_startup_failure(d, Some("[log]\nlevel = \"loud[\"\n"), &[]);
    assert!(err.contains("log.level"), "{err}");

    let err = expect_startup_failure(d, None, &["--config", &d.join("missing.toml").display().to_string()]);
    assert!(err.contains("missing.toml"), "{err}");

    // TLS for the streaming server: both files or neither, and they must load.
    let err = expect_startup_failure(d, Some("[stream]\ntls_cert_file = \"/etc/hostname\"\n"), &[]);
    assert!(err.contains("stream.tls_cert_file"), "{err}");
    let err =
        expect_startup_failure(d, Some("[stream]\ntls_cert_file = \"/nonexistent/c.pem\"\ntls_key_file = \"/nonexistent/k.pem\"\n"), &[]);
    assert!(err.contains("/nonexistent/c.pem"), "{err}");

    // A socket whose parent cannot be created: a regular file is in the way.
    std::fs::write(d.join("plainfile"), "").unwrap();
    let bad_socket = d.join("plainfile/run/berth.sock").display().to_string();
    let err = expect_startup_failure(d, None, &["--socket", &bad_socket]);
    assert!(err.contains("plainfile"), "{err}");
}

/// A listen address that is taken fails the start before the node is
/// opened: no pods-dir mount, no bridge, nothing in the dirs.
#[test]
fn a_taken_listen_address_fails_the_start_and_leaves_nothing() {
    /// Removes the test's bridge and table also when an assertion fails.
    struct Net(berth_e2e::NetNames);
    impl Drop for Net {
        fn drop(&mut self) {
            self.0.remove();
        }
    }
    let dir = berth_e2e::RunDir::new();
    let net = Net(berth_e2e::NetNames::new());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let network = format!("[network]\nbridge = \"{}\"\nsubnet = \"{}\"\nnft_table = \"{}\"\n", net.0.bridge, net.0.subnet, net.0.table);
    for (table, key) in [
        (format!("[metrics]\naddress = \"127.0.0.1:{port}\"\n"), "metrics.address"),
        (format!("[stream]\nport = {port}\n"), "stream.address"),
    ] {
        let err = expect_startup_failure(dir.path(), Some(&format!("{network}{table}")), &[]);
        assert!(err.contains(key) && err.contains(&port.to_string()), "{err}");
        assert!(berth_e2e::mounts_under(dir.path()).is_empty(), "{:?}", berth_e2e::mounts_under(dir.path()));
        assert!(!Path::new("/sys/class/net").join(&net.0.bridge).exists(), "the start made the bridge");
    }
}

/// Unmounts on drop, so a failing test leaves no mount behind.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn root_on_a_read_only_filesystem_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    nix::mount::mount(Some("tmpfs"), &ro, Some("tmpfs"), nix::mount::MsFlags::MS_RDONLY, Some("size=1m"))
        .expect("mounting a read-only tmpfs (the e2e tests run as root)");
    let _guard = Mounted(ro.clone());
    let root = ro.join("berth").display().to_string();
    let err = expect_startup_failure(dir.path(), None, &["--root", &root]);
    assert!(err.contains(&root) && err.contains("Read-only"), "{err}");
}

#[test]
fn config_default_prints_a_config_berthd_accepts() {
    let (status, out, _) = run_berthd(&["config", "default"]);
    assert!(status.success());
    assert!(out.contains("root = \"/var/lib/berth\""));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, &out).unwrap();
    let (status, shown, err) = run_berthd(&["--config", &path.display().to_string(), "--root", "/srv/berth", "config", "show"]);
    assert!(status.success(), "{err}");
    assert!(shown.contains("root = \"/srv/berth\""), "flags win over the file: {shown}");
    assert!(shown.contains("socket = \"/run/berth/berth.sock\""), "{shown}");
}

#[test]
fn help_documents_every_flag() {
    let (status, out, _) = run_berthd(&["--help"]);
    assert!(status.success());
    for flag in ["--config", "--root", "--state", "--socket", "--log-level", "--log-format"] {
        assert!(out.contains(flag), "--help lacks {flag}");
    }
}

/// `berthd cleanup`: what a graceful stop leaves by design (the bridge, the
/// nftables table, cgroups, state) goes, and pods left running too; refused
/// while berthd runs; the root (images) only with `--all`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_removes_what_berth_left_on_the_node() {
    let mut f = berth_e2e::Fixture::start().await;
    let cfg = f.pod("cleanup");
    let pod = f.cri.run_pod(cfg.clone()).await.unwrap();
    f.cri.run(&pod, f.container("c", &["sleep", "100000"]), &cfg).await;
    let mut args: Vec<String> = f.berthd.args().into_iter().filter(|a| a != "--log-level" && a != "debug").collect();
    args.push("cleanup".into());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, _, err) = run_berthd(&argv);
    assert!(!status.success() && err.contains("stop it"), "refused while berthd runs: {err}");

    f.berthd.stop();
    let bridge = Path::new("/sys/class/net").join(&f.berthd.net.bridge);
    assert!(bridge.exists(), "a graceful stop leaves the bridge by design");
    let (status, out, err) = run_berthd(&argv);
    assert!(status.success(), "{out}{err}");
    assert!(!bridge.exists(), "bridge left");
    let nft = std::process::Command::new("nft").args(["list", "table", "inet", &f.berthd.net.table]).output().unwrap();
    assert!(!nft.status.success(), "nft table left");
    assert!(berth_e2e::cgroups_named(&f.berthd.cgroup_parent).is_empty(), "cgroups left");
    assert!(!f.berthd.paths.state.exists(), "state left");
    let state = f.berthd.paths.state.display().to_string();
    let procs: Vec<_> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&state))
        .collect();
    assert!(procs.is_empty(), "processes left: {procs:?}");
    let dir = f.berthd.dir().display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.lines().any(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&dir))), "mounts left");
    assert!(f.berthd.paths.root.join("snapshots").exists(), "images stay without --all");
    args.push("--all".into());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, out, err) = run_berthd(&argv);
    assert!(status.success(), "{out}{err}");
    assert!(!f.berthd.paths.root.exists(), "root left with --all");

    // The state gone (a reboot wipes /run) but the bridge and table still
    // there: cleanup removes them by their configured names.
    f.berthd.restart().await;
    f.berthd.stop();
    assert!(bridge.exists());
    // As a reboot: the mounts under the state dir (its pods dir) go with it.
    berth_e2e::unmount_under(&f.berthd.paths.state);
    std::fs::remove_dir_all(&f.berthd.paths.state).unwrap();
    let (status, out, err) = run_berthd(&argv);
    assert!(status.success(), "{out}{err}");
    assert!(!bridge.exists(), "bridge left without a state dir");
    let nft = std::process::Command::new("nft").args(["list", "table", "inet", &f.berthd.net.table]).output().unwrap();
    assert!(!nft.status.success(), "nft table left without a state dir");
    f.berthd.restart().await;
}

//! Debian's containerd (1.6, with runc and the CNI plugins) as a child
//! process with its own root, state, socket, config and CNI network, for
//! benchmarks side by side with berthd. Its pause image is built from
//! Debian's static `catatonit` and pushed to the test registry, which is
//! containerd's mirror for itself. Everything lives in a temp dir and is
//! removed on drop, with the cgroups and the bridge it made.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::oci::{self, Compression, ImageSettings, LayerBuilder};
use crate::registry::Registry;
use crate::{connect, Cri};

/// The packages it needs (`deploy/deps.sh --bench` installs them).
pub const PACKAGES: &[&str] = &["containerd", "runc", "catatonit", "containernetworking-plugins"];

/// A running containerd.
pub struct Containerd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Its CRI socket.
    pub socket: PathBuf,
    /// Its CNI bridge.
    pub bridge: String,
}

/// The pause image: catatonit as PID 1 in pause mode.
pub async fn push_pause(registry: &Registry) -> String {
    let bin = std::fs::read("/usr/bin/catatonit").expect("catatonit (Debian's package) is installed");
    let mut l = LayerBuilder::new();
    l.file("catatonit", &bin, 0o755);
    let settings = ImageSettings { entrypoint: vec!["/catatonit".into(), "-P".into()], ..Default::default() };
    let image = oci::image(vec![l.build(Compression::Gzip)], &settings);
    registry.push("pause", "3.9", &image).await;
    registry.reference("pause", "3.9")
}

impl Containerd {
    /// Starts containerd using `registry` (plain HTTP on 127.0.0.1) and the
    /// pause image `pause`; its pods get `subnet` (a /24) on its own bridge.
    pub async fn start(registry: &Registry, pause: &str, subnet: &str) -> Containerd {
        for p in ["/usr/bin/containerd", "/usr/sbin/runc", "/usr/bin/containerd-shim-runc-v2"] {
            assert!(Path::new(p).exists(), "{p} missing: run deploy/deps.sh --bench");
        }
        let dir = tempfile::Builder::new().prefix("ctrd-bench-").tempdir().expect("tempdir");
        let d = dir.path();
        // Unique per instance: a bench may run a second containerd.
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let bridge = format!("cb{}x{n}", std::process::id() % 100_000);
        for sub in ["root", "state", "cni", "ipam", "opt"] {
            std::fs::create_dir_all(d.join(sub)).expect("dirs");
        }
        let cni = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": bridge,
            "plugins": [
                {"type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": false,
                 "ipam": {"type": "host-local", "dataDir": d.join("ipam"), "ranges": [[{"subnet": subnet}]]}},
            ]
        });
        std::fs::write(d.join("cni/10-bench.conflist"), cni.to_string()).expect("cni config");
        let host = &registry.host;
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.internal.v1.tracing", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{sock}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # Root here lacks CAP_SYS_RESOURCE: the pause's -998 would fail runc.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "/usr/sbin/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{host}"]
    endpoint = ["http://{host}"]
"#,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("containerd.sock").display(),
            opt = d.join("opt").display(),
            cni = d.join("cni").display(),
        );
        std::fs::write(d.join("config.toml"), config).expect("config");
        let log = std::fs::File::create(d.join("containerd.log")).expect("log");
        let child = Command::new("/usr/bin/containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawning containerd");
        let socket = d.join("containerd.sock");
        let mut c = Containerd { dir, child: Some(child), socket, bridge };
        c.wait_ready().await;
        c
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("containerd exited with {status}\n{}", self.log());
            }
            if let Ok(mut cri) = connect(&self.socket).await {
                if cri.runtime.version(crate::cri::VersionRequest::default()).await.is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "containerd not ready\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A client.
    pub async fn cri(&self) -> Cri {
        connect(&self.socket).await.expect("connecting to containerd")
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// The dir holding everything of it.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::signal(child.id(), nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).stderr(Stdio::null()).status();
        // Mounts left under the root (snapshots of pods still running).
        crate::unmount_under(self.dir.path());
    }
}

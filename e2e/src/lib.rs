//! The e2e harness: a real `berthd` child process with its own temp root,
//! state and socket, and a real tonic CRI client over the unix socket.
//!
//! `Berthd` sends SIGTERM on drop and fails the test unless berthd exits 0, so
//! a crash anywhere in a test's RPCs shows up as a failure of that test.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use berth_proto::cri::image_service_client::ImageServiceClient;
use berth_proto::cri::runtime_service_client::RuntimeServiceClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

pub use berth_proto::cri;

pub mod oci;
pub mod registry;

/// How long berthd may take to answer its first `Version`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long berthd may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// The berthd binary: `$BERTHD` if set, else built once per test process
/// with the cargo that runs the tests.
pub fn berthd_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("BERTHD") {
            return PathBuf::from(p);
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        // Benchmarks run from target/release and measure a release berthd.
        let release = target_dir().ends_with("release");
        let mut args = vec!["build", "--quiet", "-p", "berth-agent", "--bin", "berthd"];
        if release {
            args.push("--release");
        }
        let status = Command::new(cargo)
            .args(&args)
            .current_dir(workspace_dir())
            .status()
            .expect("running cargo build for berthd");
        assert!(status.success(), "cargo build of berthd failed");
        target_dir().join("berthd")
    })
}

/// The workspace root (this crate's parent directory).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("e2e has a parent").to_path_buf()
}

/// `target/<profile>`: the test executable lives in its `deps/`.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent().and_then(Path::parent).expect("test exe in target/<profile>/deps").to_path_buf()
}

/// The CRI clients of one berthd.
#[derive(Clone)]
pub struct Cri {
    /// RuntimeService.
    pub runtime: RuntimeServiceClient<Channel>,
    /// ImageService.
    pub image: ImageServiceClient<Channel>,
}

/// Connects both CRI services over a unix socket.
pub async fn connect(socket: &Path) -> Result<Cri, tonic::transport::Error> {
    let socket = socket.to_path_buf();
    // The URI is ignored: every connection goes to the socket.
    let channel = Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(socket).await?)) }
        }))
        .await?;
    Ok(Cri {
        runtime: RuntimeServiceClient::new(channel.clone()).max_decoding_message_size(16 << 20),
        image: ImageServiceClient::new(channel).max_decoding_message_size(16 << 20),
    })
}

/// Paths of one berthd instance; they outlive restarts.
#[derive(Debug, Clone)]
pub struct Paths {
    /// `--root`
    pub root: PathBuf,
    /// `--state`
    pub state: PathBuf,
    /// `--socket`
    pub socket: PathBuf,
    /// `--config`
    pub config: PathBuf,
    /// berthd's stderr, appended across restarts.
    pub log: PathBuf,
}

impl Paths {
    fn in_dir(dir: &Path) -> Paths {
        Paths {
            root: dir.join("root"),
            state: dir.join("state"),
            socket: dir.join("run/berth.sock"),
            config: dir.join("config.toml"),
            log: dir.join("berthd.log"),
        }
    }
}

/// A running berthd child process.
pub struct Berthd {
    /// Keeps the temp dir alive for the instance's life.
    dir: tempfile::TempDir,
    /// Its paths.
    pub paths: Paths,
    child: Option<Child>,
    extra_args: Vec<String>,
}

impl Berthd {
    /// Starts berthd with built-in defaults and temp paths.
    pub async fn start() -> Berthd {
        Self::start_with_config("").await
    }

    /// Starts berthd with `config` (TOML) as its config file.
    pub async fn start_with_config(config: &str) -> Berthd {
        let dir = tempfile::Builder::new().prefix("berth-e2e-").tempdir().expect("tempdir");
        let paths = Paths::in_dir(dir.path());
        std::fs::write(&paths.config, config).expect("writing config");
        let mut b = Berthd { dir, paths, child: None, extra_args: vec!["--log-level".into(), "debug".into()] };
        b.spawn().await;
        b
    }

    /// The temp directory holding everything of this instance.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The arguments berthd runs with.
    pub fn args(&self) -> Vec<String> {
        let p = &self.paths;
        let mut args: Vec<String> = vec![
            "--config".into(), p.config.display().to_string(),
            "--root".into(), p.root.display().to_string(),
            "--state".into(), p.state.display().to_string(),
            "--socket".into(), p.socket.display().to_string(),
        ];
        args.extend(self.extra_args.iter().cloned());
        args
    }

    async fn spawn(&mut self) {
        let log = File::options().create(true).append(true).open(&self.paths.log).expect("log file");
        let child = Command::new(berthd_bin())
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawning berthd");
        self.child = Some(child);
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("berthd exited during start-up with {status}\n{}", self.log());
            }
            if let Ok(mut cri) = connect(&self.paths.socket).await {
                if cri.runtime.version(cri::VersionRequest::default()).await.is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "berthd not ready after {READY_TIMEOUT:?}\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A fresh client pair.
    pub async fn cri(&self) -> Cri {
        connect(&self.paths.socket).await.expect("connecting to berthd")
    }

    /// berthd's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("berthd is running").id()
    }

    /// Everything berthd has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.paths.log).unwrap_or_default()
    }

    /// SIGTERM, and the exit status (panics if berthd does not exit in time).
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("berthd is running");
        signal(child.id(), nix::sys::signal::Signal::SIGTERM);
        wait_timeout(&mut child, STOP_TIMEOUT).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!("berthd did not exit within {STOP_TIMEOUT:?} of SIGTERM\n{}", self.log())
        })
    }

    /// SIGTERM, asserting a clean exit.
    pub fn stop(&mut self) {
        let status = self.terminate();
        assert!(status.success(), "berthd exited with {status} after SIGTERM\n{}", self.log());
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("berthd is running");
        signal(child.id(), nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait();
    }

    /// Starts berthd again on the same root, state and socket.
    pub async fn restart(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        self.spawn().await;
    }
}

impl Drop for Berthd {
    fn drop(&mut self) {
        if self.child.is_none() {
            return;
        }
        let status = self.terminate();
        if !status.success() {
            let msg = format!("berthd exited with {status} after SIGTERM\n{}", self.log());
            if std::thread::panicking() {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
            }
        } else if std::thread::panicking() {
            eprintln!("--- berthd log ---\n{}", self.log());
        }
    }
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs berthd to completion with `args` (for start-up errors and subcommands),
/// giving up after 20 s.
pub fn run_berthd(args: &[&str]) -> (ExitStatus, String, String) {
    let mut child = Command::new(berthd_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning berthd");
    let status = wait_timeout(&mut child, Duration::from_secs(20)).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("berthd {args:?} did not finish within 20 s")
    });
    let out = child.wait_with_output().expect("berthd output");
    (status, String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// An `ImageSpec` naming `image`.
pub fn image_spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec { image: image.to_string(), ..Default::default() }
}

impl Cri {
    /// PullImage without credentials.
    pub async fn pull(&mut self, image: &str) -> Result<String, tonic::Status> {
        self.pull_with(image, None).await
    }

    /// PullImage with credentials.
    pub async fn pull_with(&mut self, image: &str, auth: Option<cri::AuthConfig>) -> Result<String, tonic::Status> {
        let req = cri::PullImageRequest { image: Some(image_spec(image)), auth, sandbox_config: None };
        Ok(self.image.pull_image(req).await?.into_inner().image_ref)
    }

    /// ImageStatus (not verbose); None when berthd does not know the image.
    pub async fn image_status(&mut self, image: &str) -> Result<Option<cri::Image>, tonic::Status> {
        let req = cri::ImageStatusRequest { image: Some(image_spec(image)), verbose: false };
        Ok(self.image.image_status(req).await?.into_inner().image)
    }

    /// ListImages without a filter.
    pub async fn list_images(&mut self) -> Vec<cri::Image> {
        self.image.list_images(cri::ListImagesRequest { filter: None }).await.expect("ListImages").into_inner().images
    }

    /// RemoveImage.
    pub async fn remove_image(&mut self, image: &str) -> Result<(), tonic::Status> {
        self.image.remove_image(cri::RemoveImageRequest { image: Some(image_spec(image)) }).await.map(drop)
    }
}

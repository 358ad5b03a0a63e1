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

pub mod bench;
pub mod containerd;
pub mod interop;
pub mod oci;
pub mod rawnet;
pub mod registry;
pub mod spdy;
pub mod tls;
pub mod truth;

/// How long berthd may take to answer its first `Version`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long berthd may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Reads the node's file `path` up to `tries` times, `every` apart, until
/// `done` holds of its text; the last text read (empty where it could not
/// be read), whether `done` held or not.
pub async fn read_until(path: &Path, tries: u32, every: Duration, done: impl Fn(&str) -> bool) -> String {
    let mut text = String::new();
    for _ in 0..tries {
        text = std::fs::read_to_string(path).unwrap_or_default();
        if done(&text) {
            break;
        }
        tokio::time::sleep(every).await;
    }
    text
}

/// The berthd binary: `$BERTHD` if set, else built once per test process
/// with the cargo that runs the tests.
pub fn berthd_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("BERTHD") {
            return PathBuf::from(p);
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        // Benchmarks run from target/release and measure a release berthd,
        // as shipped; tests get the kill points of the crash tests (inert
        // unless BERTH_KILL_POINT is set).
        let release = target_dir().ends_with("release");
        let mut args = vec!["build", "--quiet", "-p", "berth-agent", "-p", "berth-runtime", "--bins"];
        if release {
            args.push("--release");
        } else {
            args.extend(["--features", "berth-agent/fault-injection"]);
        }
        let status = Command::new(&cargo).args(&args).current_dir(workspace_dir()).status().expect("running cargo build for berthd");
        assert!(status.success(), "cargo build of berthd failed");
        // berth-pause is a crate of its own (it needs panic = abort); built
        // into the same target directory, so it lands next to berth-monitor.
        let target = target_dir().parent().map(Path::to_path_buf).unwrap_or_else(|| workspace_dir().join("target"));
        let mut pause = vec!["build", "--quiet", "--manifest-path", "pause/Cargo.toml", "--target-dir"];
        pause.push(target.to_str().expect("a UTF-8 target dir"));
        if release {
            pause.push("--release");
        }
        let status = Command::new(&cargo).args(&pause).current_dir(workspace_dir()).status().expect("running cargo build for berth-pause");
        assert!(status.success(), "cargo build of berth-pause failed");
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
    /// Environment variables set for berthd.
    env: Vec<(String, String)>,
    /// The instance's default cgroup parent (one path component).
    pub cgroup_parent: String,
    /// The instance's bridge, subnet and nftables table.
    pub net: NetNames,
}

/// Network names unique to one berthd of the test run.
#[derive(Debug, Clone)]
pub struct NetNames {
    /// Bridge name.
    pub bridge: String,
    /// /24 pod subnet in 10.200.0.0/13.
    pub subnet: String,
    /// nftables table.
    pub table: String,
    /// /64 IPv6 pod subnet in fd00:b7::/32 (used by dual-stack instances).
    pub subnet6: String,
}

impl NetNames {
    /// Fresh names from the pid, a counter and the clock, with an IPv4
    /// subnet no route of the host covers yet: tests run side by side, and
    /// one of the 2,048 subnets drawn twice made a berthd refuse to start
    /// ("network.subnet: overlaps ..."). Nor one this process drew before:
    /// a route shows only once a berthd has given its bridge an address, and
    /// the tests of one binary start side by side. A host whose routes cover
    /// them all (a 10.0.0.0/8 route) gets the last draw, and berthd's own words.
    pub fn new() -> NetNames {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        static DRAWN: std::sync::Mutex<Vec<std::net::Ipv4Addr>> = std::sync::Mutex::new(Vec::new());
        let taken = ipv4_routes();
        let mut drawn = DRAWN.lock().unwrap_or_else(|e| e.into_inner());
        let mut attempts = 0;
        loop {
            attempts += 1;
            let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
            let x = (std::process::id().wrapping_mul(2654435761)) ^ nanos ^ n.wrapping_mul(40503);
            let net = std::net::Ipv4Addr::new(10, 200 + ((x >> 24) % 8) as u8, ((x >> 8) & 0xff) as u8, 0);
            if (overlaps(net, &taken) || drawn.contains(&net)) && attempts < 256 {
                continue;
            }
            drawn.push(net);
            let tag = format!("{:06x}", x & 0xffffff);
            return NetNames {
                bridge: format!("bt{tag}"),
                subnet: format!("{net}/24"),
                table: format!("berth_t{tag}"),
                subnet6: format!("fd00:b7:{:x}:{:x}::/64", (x >> 16) & 0xffff, x & 0xffff),
            };
        }
    }

    /// Removes the bridge and table (they outlive berthd by design).
    pub fn remove(&self) {
        let _ = Command::new("ip").args(["link", "delete", &self.bridge]).stderr(Stdio::null()).status();
        let _ = Command::new("nft").args(["delete", "table", "inet", &self.table]).stderr(Stdio::null()).status();
    }
}

/// The host's IPv4 routes but the default one, as (destination, mask) in
/// host order, the mask cut to /24 at most: a /24 overlaps a route when both
/// agree under the shorter of their masks.
fn ipv4_routes() -> Vec<(u32, u32)> {
    parse_routes(&std::fs::read_to_string("/proc/net/route").unwrap_or_default())
}

/// [`ipv4_routes`] from the text of `/proc/net/route`.
fn parse_routes(text: &str) -> Vec<(u32, u32)> {
    // The kernel prints each address as the hex of its network-order bytes
    // read as a native u32.
    let addr = |hex: &str| u32::from_str_radix(hex, 16).ok().map(|v| u32::from_be_bytes(v.to_ne_bytes()));
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((addr(f.get(1)?)?, addr(f.get(7)?)?))
        })
        .filter(|&(_, mask)| mask != 0)
        .map(|(dest, mask)| (dest, mask & 0xffff_ff00))
        .collect()
}

/// Whether the /24 at `net` overlaps one of `routes` (see [`ipv4_routes`]).
fn overlaps(net: std::net::Ipv4Addr, routes: &[(u32, u32)]) -> bool {
    routes.iter().any(|&(dest, mask)| u32::from(net) & mask == dest & mask)
}

impl Default for NetNames {
    fn default() -> Self {
        Self::new()
    }
}

/// The `--log-level` of every berthd started from then on: `debug`, whose
/// log the tests print when they fail, unless a benchmark sets `info` (the
/// default an operator runs with, as the containerd it is compared with).
static LOG_LEVEL: std::sync::RwLock<&str> = std::sync::RwLock::new("debug");

/// Sets the log level of the berthd instances started from now on.
pub fn set_log_level(level: &'static str) {
    *LOG_LEVEL.write().unwrap_or_else(|e| e.into_inner()) = level;
}

impl Berthd {
    /// Starts berthd with built-in defaults and temp paths.
    pub async fn start() -> Berthd {
        Self::start_with_config("").await
    }

    /// Starts berthd with `config` (TOML) as its config file. Pods without a
    /// cgroup parent go under a cgroup unique to this instance, removed on drop.
    pub async fn start_with_config(config: &str) -> Berthd {
        Self::start_with_env(config, &[]).await
    }

    /// Same, with environment variables for berthd.
    pub async fn start_with_env(config: &str, env: &[(&str, &str)]) -> Berthd {
        Self::start_with_options(config, env, false).await
    }

    /// Same, with a dual-stack pod network (its own IPv6 /64) when `dual_stack`.
    pub async fn start_with_options(config: &str, env: &[(&str, &str)], dual_stack: bool) -> Berthd {
        let dir = tempfile::Builder::new().prefix("berth-e2e-").tempdir().expect("tempdir");
        let paths = Paths::in_dir(dir.path());
        let cgroup_parent =
            format!("berth-e2e-{}", dir.path().file_name().unwrap_or_default().to_string_lossy().trim_start_matches("berth-e2e-"));
        let mut config = config.to_string();
        // Pods without a parent go under this run's own cgroup, which the
        // sweep removes, also when the test's config has a [runtime] table.
        let parent_line = format!("default_cgroup_parent = \"{cgroup_parent}\"\n");
        if !config.contains("[runtime]") {
            config.push_str(&format!("\n[runtime]\n{parent_line}"));
        } else if !config.contains("default_cgroup_parent") {
            config = config.replacen("[runtime]\n", &format!("[runtime]\n{parent_line}"), 1);
        }
        let net = NetNames::new();
        if !config.contains("[network]") {
            config.push_str(&format!(
                "\n[network]\nbridge = \"{}\"\nsubnet = \"{}\"\nnft_table = \"{}\"\n",
                net.bridge, net.subnet, net.table
            ));
            if dual_stack {
                config.push_str(&format!("subnet6 = \"{}\"\n", net.subnet6));
            }
        }
        std::fs::write(&paths.config, config).expect("writing config");
        let mut b = Berthd {
            dir,
            paths,
            child: None,
            extra_args: vec!["--log-level".into(), LOG_LEVEL.read().unwrap_or_else(|e| e.into_inner()).to_string()],
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            cgroup_parent,
            net,
        };
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
            "--config".into(),
            p.config.display().to_string(),
            "--root".into(),
            p.root.display().to_string(),
            "--state".into(),
            p.state.display().to_string(),
            "--socket".into(),
            p.socket.display().to_string(),
        ];
        args.extend(self.extra_args.iter().cloned());
        args
    }

    async fn spawn(&mut self) {
        let log = File::options().create(true).append(true).open(&self.paths.log).expect("log file");
        let child = Command::new(berthd_bin())
            .args(self.args())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
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

    /// Sets (or with None removes) an environment variable for the next
    /// start of berthd.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            self.env.push((key.to_string(), v.to_string()));
        }
    }

    /// The process, if berthd runs (for waiting on a kill point).
    pub fn child_mut(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    /// Waits (bounded) for berthd to die by itself; its exit status.
    pub async fn wait_dead(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Starts berthd again on the same root, state and socket.
    pub async fn restart(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        self.spawn().await;
    }
}

impl Berthd {
    /// What a failed test may leave: containers (killed through their
    /// cgroups, which also ends their monitors) and mounts under the temp dir.
    fn sweep(&self) {
        remove_cgroup_everywhere(&self.cgroup_parent);
        self.net.remove();
        unmount_under(self.dir.path());
    }
}

/// Whether `run` is `file` run through berthd's read-only bind of its
/// directory (`<state>/bin/<n>/`, agent/src/binaries.rs): the same inode
/// under the bind.
pub fn runs_through_bind(run: &Path, file: &Path, state: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let same = match (std::fs::metadata(run), std::fs::metadata(file)) {
        (Ok(x), Ok(y)) => (x.dev(), x.ino()) == (y.dev(), y.ino()),
        _ => false,
    };
    same && run.starts_with(state.join("bin")) && run.file_name() == file.file_name()
}

/// A process's command line, split at its NULs (trailing ones dropped);
/// empty once it is gone.
pub fn cmdline(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let mut args: Vec<String> = raw.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    while args.last().is_some_and(String::is_empty) {
        args.pop();
    }
    args
}

/// The live children of `pid` (zombies are not), from all its threads.
pub fn child_pids(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let list = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        out.extend(list.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
    }
    out.retain(|p| {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z'))
    });
    out
}

/// The monitor zygotes (`berth-monitor zygote`) of the berthd `pid`: its
/// children.
pub fn zygotes(berthd: u32) -> Vec<u32> {
    child_pids(berthd).into_iter().filter(|p| cmdline(*p).get(1).map(String::as_str) == Some("zygote")).collect()
}

/// A temp dir for a berthd a test runs by hand: whatever berthd left
/// mounted under it (the pods dir stays a mount after a clean stop, for
/// the next berthd) is detached before the dir is removed, also when the
/// test fails.
pub struct RunDir(tempfile::TempDir);

impl RunDir {
    /// A fresh, empty dir.
    pub fn new() -> RunDir {
        RunDir(tempfile::Builder::new().prefix("berth-e2e-run-").tempdir().expect("tempdir"))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Default for RunDir {
    fn default() -> Self {
        RunDir::new()
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        unmount_under(self.0.path());
    }
}

/// The mount points under `dir` (and `dir` itself), in mount order.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines().filter_map(|l| l.split_whitespace().nth(4)).filter(|m| m.starts_with(&dir)).map(String::from).collect()
}

/// Detaches every mount under `dir`, deepest (latest) first.
pub fn unmount_under(dir: &Path) {
    for m in mounts_under(dir).iter().rev() {
        let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
}

impl Drop for Berthd {
    fn drop(&mut self) {
        if self.child.is_none() {
            self.sweep();
            return;
        }
        let status = self.terminate();
        self.sweep();
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

/// Every cgroup hierarchy mounted on this machine (v1 controllers and v2).
pub fn cgroup_mounts() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let fstype = post.split_whitespace().next()?;
            let mountpoint = pre.split_whitespace().nth(4)?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(mountpoint))
        })
        .collect()
}

/// Paths of cgroup directories (in any hierarchy) whose name contains `needle`.
pub fn cgroups_named(needle: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, needle: &str, out: &mut Vec<PathBuf>, depth: usize) {
        if depth > 8 {
            return;
        }
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                if e.file_name().to_string_lossy().contains(needle) {
                    out.push(e.path());
                }
                walk(&e.path(), needle, out, depth + 1);
            }
        }
    }
    let mut out = Vec::new();
    for m in cgroup_mounts() {
        walk(&m, needle, &mut out, 0);
    }
    out
}

/// Kills what is left in the top-level cgroup `name` and removes it from every hierarchy.
pub fn remove_cgroup_everywhere(name: &str) {
    fn rm(dir: &Path) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                rm(&e.path());
            }
        }
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
        for _ in 0..100 {
            if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    if name.is_empty() {
        return;
    }
    for m in cgroup_mounts() {
        let d = m.join(name);
        if d.exists() {
            rm(&d);
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

/// CRI NamespaceMode CONTAINER: what kubelet sends for PID unless the pod
/// shares its process namespace (the proto default, 0, means POD).
pub const NS_CONTAINER: i32 = 1;

/// Namespace options as kubelet sends them for an ordinary pod.
pub fn kubelet_namespaces() -> cri::NamespaceOption {
    cri::NamespaceOption { network: 0, pid: NS_CONTAINER, ipc: 0, ..Default::default() }
}

/// A pod config with a unique uid, namespaces as kubelet sets them; logs go to `log_dir`.
pub fn pod_config(name: &str, log_dir: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(kubelet_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}-{}", std::process::id()),
            namespace: "e2e".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.join(name).display().to_string(),
        ..Default::default()
    }
}

/// A container's Linux config with kubelet's namespaces and the security
/// context `f` makes.
pub fn security(f: impl FnOnce(&mut cri::LinuxContainerSecurityContext)) -> Option<cri::LinuxContainerConfig> {
    let mut s = cri::LinuxContainerSecurityContext { namespace_options: Some(kubelet_namespaces()), ..Default::default() };
    f(&mut s);
    Some(cri::LinuxContainerConfig { security_context: Some(s), ..Default::default() })
}

/// A container config running `cmd` from `image`, logging to `<name>.log`.
pub fn container_config(name: &str, image: &str, cmd: &[&str]) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(image_spec(image)),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(kubelet_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl Cri {
    /// RunPodSandbox.
    pub async fn run_pod(&mut self, config: cri::PodSandboxConfig) -> Result<String, tonic::Status> {
        let req = cri::RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() };
        Ok(self.runtime.run_pod_sandbox(req).await?.into_inner().pod_sandbox_id)
    }

    /// CreateContainer.
    pub async fn create(
        &mut self,
        pod: &str,
        config: cri::ContainerConfig,
        pod_config: &cri::PodSandboxConfig,
    ) -> Result<String, tonic::Status> {
        let req =
            cri::CreateContainerRequest { pod_sandbox_id: pod.into(), config: Some(config), sandbox_config: Some(pod_config.clone()) };
        Ok(self.runtime.create_container(req).await?.into_inner().container_id)
    }

    /// StartContainer.
    pub async fn start(&mut self, id: &str) -> Result<(), tonic::Status> {
        self.runtime.start_container(cri::StartContainerRequest { container_id: id.into() }).await.map(drop)
    }

    /// CreateContainer then StartContainer.
    pub async fn run(&mut self, pod: &str, config: cri::ContainerConfig, pod_config: &cri::PodSandboxConfig) -> String {
        let id = self.create(pod, config, pod_config).await.expect("CreateContainer");
        self.start(&id).await.expect("StartContainer");
        id
    }

    /// StopContainer.
    pub async fn stop(&mut self, id: &str, timeout: i64) -> Result<(), tonic::Status> {
        self.runtime.stop_container(cri::StopContainerRequest { container_id: id.into(), timeout }).await.map(drop)
    }

    /// ContainerStatus.
    pub async fn status(&mut self, id: &str) -> cri::ContainerStatus {
        let req = cri::ContainerStatusRequest { container_id: id.into(), verbose: false };
        self.runtime.container_status(req).await.expect("ContainerStatus").into_inner().status.expect("status")
    }

    /// ExecSync with a timeout in seconds (0: none).
    pub async fn exec(&mut self, id: &str, cmd: &[&str], timeout: i64) -> Result<cri::ExecSyncResponse, tonic::Status> {
        let req = cri::ExecSyncRequest { container_id: id.into(), cmd: cmd.iter().map(|s| s.to_string()).collect(), timeout };
        Ok(self.runtime.exec_sync(req).await?.into_inner())
    }

    /// ExecSync that must succeed; returns stdout as text.
    pub async fn sh(&mut self, id: &str, script: &str) -> String {
        let r = self.exec(id, &["sh", "-c", script], 30).await.expect("ExecSync");
        assert_eq!(r.exit_code, 0, "{script}: stderr {}", String::from_utf8_lossy(&r.stderr));
        String::from_utf8_lossy(&r.stdout).to_string()
    }

    /// Looks up to `tries` times, `every` apart, for `path` in the container;
    /// false if it never appeared.
    pub async fn wait_file(&mut self, id: &str, path: &str, tries: u32, every: Duration) -> bool {
        let script = format!("test -e {path} && echo yes || true");
        for _ in 0..tries {
            if self.sh(id, &script).await.trim() == "yes" {
                return true;
            }
            tokio::time::sleep(every).await;
        }
        false
    }

    /// Waits up to 5 s until no process in the container has `needle` in its
    /// command line; false if one still does.
    pub async fn wait_process_gone(&mut self, id: &str, needle: &str) -> bool {
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if !self.sh(id, "ps -o args").await.contains(needle) {
                return true;
            }
        }
        false
    }

    /// Waits until the container has exited; returns its status.
    pub async fn wait_exited(&mut self, id: &str, timeout: Duration) -> cri::ContainerStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status(id).await;
            if s.state == cri::ContainerState::ContainerExited as i32 {
                return s;
            }
            assert!(Instant::now() < deadline, "container {id} still {} after {timeout:?}", s.state);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// StopPodSandbox + RemovePodSandbox.
    pub async fn remove_pod(&mut self, id: &str) {
        self.runtime.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id.into() }).await.expect("StopPodSandbox");
        self.runtime.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id.into() }).await.expect("RemovePodSandbox");
    }
}

/// A registry serving busybox images, and a berthd that pulled them.
pub struct Fixture {
    /// The registry (kept alive).
    pub registry: registry::Registry,
    /// berthd.
    pub berthd: Berthd,
    /// A client.
    pub cri: Cri,
    /// The busybox image reference.
    pub busybox: String,
    /// Where pods' logs go.
    pub logs: PathBuf,
}

impl Fixture {
    /// Starts everything with a pulled busybox image.
    pub async fn start() -> Fixture {
        Self::start_with_config("").await
    }

    /// Same, with a berthd config.
    pub async fn start_with_config(config: &str) -> Fixture {
        Self::start_with_options(config, false).await
    }

    /// Same, with a dual-stack pod network when `dual_stack`.
    pub async fn start_with_options(config: &str, dual_stack: bool) -> Fixture {
        Self::start_with_everything(config, &[], dual_stack).await
    }

    /// Same, with `env` added to berthd's environment.
    pub async fn start_with_env(config: &str, env: &[(&str, &str)]) -> Fixture {
        Self::start_with_everything(config, env, false).await
    }

    async fn start_with_everything(config: &str, env: &[(&str, &str)], dual_stack: bool) -> Fixture {
        let registry = registry::Registry::start().await;
        let image = oci::busybox_image(&oci::ImageSettings::default());
        registry.push("busybox", "latest", &image).await;
        let berthd = Berthd::start_with_options(config, env, dual_stack).await;
        let mut cri = berthd.cri().await;
        let busybox = registry.reference("busybox", "latest");
        cri.pull(&busybox).await.expect("pull busybox");
        let logs = berthd.dir().join("logs");
        Fixture { registry, berthd, cri, busybox, logs }
    }

    /// A pod config logging under this fixture.
    pub fn pod(&self, name: &str) -> cri::PodSandboxConfig {
        pod_config(name, &self.logs)
    }

    /// A pod config whose PID namespace is `mode` (`Pod`: one shared by its
    /// containers; `Node`: the node's).
    pub fn pod_with_pid(&self, name: &str, mode: cri::NamespaceMode) -> cri::PodSandboxConfig {
        let mut cfg = self.pod(name);
        cfg.linux = Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption { pid: mode as i32, ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        });
        cfg
    }

    /// A container config from busybox.
    pub fn container(&self, name: &str, cmd: &[&str]) -> cri::ContainerConfig {
        container_config(name, &self.busybox, cmd)
    }
}

/// Runs `f` on a thread of its own inside the network namespace at `netns`.
pub fn in_netns<T: Send + 'static>(netns: &Path, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    let file = File::open(netns).expect("open netns");
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// An "outside" host for egress tests: a network namespace the test makes,
/// linked to the node by a veth pair on a /30 of its own. Removed on drop.
pub struct OutsideHost {
    /// Namespace name (under /run/netns).
    pub name: String,
    /// The node's end of the link.
    pub node_ip: std::net::Ipv4Addr,
    /// The outside host's address.
    pub ip: std::net::Ipv4Addr,
    veth: String,
}

impl OutsideHost {
    /// Creates it with `ip netns` and `ip link` (test tooling, not berth's path).
    pub fn create() -> OutsideHost {
        let tag = NetNames::new().bridge.trim_start_matches("bt").to_string();
        let x = u32::from_str_radix(&tag, 16).unwrap_or(1);
        let base = std::net::Ipv4Addr::new(10, 216 + ((x >> 16) % 8) as u8, (x >> 8) as u8, (x as u8) & 0xfc);
        let node_ip = std::net::Ipv4Addr::from(u32::from(base) + 1);
        let ip = std::net::Ipv4Addr::from(u32::from(base) + 2);
        let name = format!("berth-out-{tag}");
        let veth = format!("bo{tag}");
        let run = |args: &[&str]| {
            let s = Command::new("ip").args(args).status().expect("ip");
            assert!(s.success(), "ip {args:?} failed");
        };
        run(&["netns", "add", &name]);
        let out = OutsideHost { name: name.clone(), node_ip, ip, veth: veth.clone() };
        run(&["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &name]);
        run(&["addr", "add", &format!("{node_ip}/30"), "dev", &veth]);
        run(&["link", "set", &veth, "up"]);
        run(&["-n", &name, "addr", "add", &format!("{ip}/30"), "dev", "eth0"]);
        run(&["-n", &name, "link", "set", "eth0", "up"]);
        run(&["-n", &name, "link", "set", "lo", "up"]);
        out
    }

    /// The namespace's path.
    pub fn netns(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A TCP server on `port` of the outside host that answers `text` to
    /// one connection; joining it gives the source address it saw.
    pub fn serve_once(&self, port: u16, text: &'static str) -> std::thread::JoinHandle<String> {
        let ip = self.ip;
        let listener = in_netns(&self.netns(), move || std::net::TcpListener::bind((ip, port)).expect("bind in the outside host"))
            .join()
            .expect("listener thread");
        std::thread::spawn(move || {
            let (mut conn, peer) = listener.accept().expect("accept");
            let _ = std::io::Write::write_all(&mut conn, text.as_bytes());
            peer.ip().to_string()
        })
    }
}

impl Drop for OutsideHost {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "delete", &self.veth]).stderr(Stdio::null()).status();
        let _ = Command::new("ip").args(["netns", "delete", &self.name]).stderr(Stdio::null()).status();
    }
}

impl Cri {
    /// PodSandboxStatus.
    pub async fn pod_status(&mut self, pod: &str, verbose: bool) -> cri::PodSandboxStatusResponse {
        self.runtime
            .pod_sandbox_status(cri::PodSandboxStatusRequest { pod_sandbox_id: pod.into(), verbose })
            .await
            .expect("PodSandboxStatus")
            .into_inner()
    }

    /// The pod's primary IP.
    pub async fn pod_ip(&mut self, pod: &str) -> String {
        let st = self.pod_status(pod, false).await;
        st.status.and_then(|s| s.network).map(|n| n.ip).unwrap_or_default()
    }

    /// The pod's netns pin, from the verbose status.
    pub async fn pod_netns(&mut self, pod: &str) -> PathBuf {
        let st = self.pod_status(pod, true).await;
        let info: serde_json::Value = serde_json::from_str(&st.info["info"]).expect("info");
        PathBuf::from(info["netns"].as_str().expect("netns"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subnet_is_taken_when_a_host_route_covers_it() {
        let text = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n\
                    eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                    bt1\t00C6CE0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                    bt2\t0000CA0A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
                    bt3\t05C9CB0A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n";
        let routes = parse_routes(text);
        // The default route is left out: it covers everything.
        assert_eq!(routes.len(), 3, "{routes:x?}");
        let net = |s: &str| s.parse::<std::net::Ipv4Addr>().unwrap();
        assert!(overlaps(net("10.206.198.0"), &routes), "the same /24");
        assert!(overlaps(net("10.202.7.0"), &routes), "inside a /16");
        assert!(overlaps(net("10.203.201.0"), &routes), "holds a host route");
        assert!(!overlaps(net("10.206.199.0"), &routes));
        assert!(!overlaps(net("10.203.200.0"), &routes));
    }

    #[test]
    fn one_process_never_draws_a_subnet_twice() {
        // 300 draws from 2,048 subnets: at random, two would almost surely
        // (over 99.99 %) be the same, as two tests starting side by side did.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..300 {
            let n = NetNames::new();
            assert!(seen.insert(n.subnet.clone()), "{} drawn twice", n.subnet);
        }
    }
}

//! berthd's life: take the lock, open the store, serve CRI on the socket, and
//! shut down cleanly on SIGTERM/SIGINT.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use nix::fcntl::{Flock, FlockArg};
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_stream::wrappers::UnixListenerStream;

use crate::config::Config;
use crate::cri;
use crate::node::Node;
use crate::store::Store;

/// The lock file under `--state` that makes one berthd per state dir.
pub const LOCK_FILE: &str = "berthd.lock";

/// glibc malloc, set for a daemon whose big buffers (ExecSync output, gRPC
/// messages) are short-lived: by default the mmap threshold rises after a
/// large free, so later big buffers come from the heap and their pages stay
/// with the process, and every thread may grow an arena of its own. A fixed
/// threshold sends big buffers to mmap (returned on free), two arenas bound
/// the fragmentation, and a low trim threshold gives back the heap's top.
/// Measured with `cargo bench -p berth-e2e --bench memory` (README).
fn tune_malloc() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters; it runs before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 * 1024);
    }
}

/// Reads the configuration again (files and flags), for SIGHUP.
pub type Reload = Box<dyn Fn() -> Result<Config, crate::config::ConfigError> + Send + Sync>;

/// Tells the service manager (systemd's `NOTIFY_SOCKET`, when set) how
/// berthd is; without one this does nothing. A failure is only logged:
/// berthd serves kubelet either way.
fn notify(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("sd_notify: {e}");
    }
}

/// Runs berthd until SIGTERM/SIGINT; SIGHUP reloads the config through
/// `reload`. Errors before serving leave nothing behind.
pub fn run(config: Config, reload: Option<Reload>) -> anyhow::Result<()> {
    tune_malloc();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Blocking-pool threads end 1 s after their last task (tokio's
        // default is 10 s): their stacks and per-thread malloc caches are
        // gone before the idle trim (memory.rs) runs. Memory bench, idle 5 s
        // after 96 pods from 8 clients: 14.7 MiB RSS (3.3 anon) against
        // 15.4 (3.9); a new thread costs tens of µs when work returns.
        .thread_keep_alive(std::time::Duration::from_secs(1))
        .thread_name("berthd")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config, reload))
}

async fn serve(config: Config, reload: Option<Reload>) -> anyhow::Result<()> {
    // Checked first: a bad certificate must not leave a half-started node.
    let tls = match (&config.stream.tls_cert_file, &config.stream.tls_key_file) {
        (Some(cert), Some(key)) => Some(crate::stream::tls_acceptor(cert, key).map_err(|e| anyhow!(e))?),
        _ => None,
    };
    let mut created = CreatedPaths::default();
    let mut stages = crate::util::Stages::new();
    let started = prepare(&config, &mut created, &mut stages);
    let (store, lock, listener) = match started {
        Ok(v) => v,
        Err(e) => {
            created.remove_all();
            return Err(e);
        }
    };
    // The listeners are bound before the node opens, so that opening it
    // (the pods dir's mount, the host network) is the last step that can
    // fail: a failure here has made nothing but the paths `created` undoes.
    let stream_cfg = &config.stream;
    let ttl = Duration::from_secs(stream_cfg.token_ttl_seconds);
    let (streams, stream_listener) = match crate::stream::Streams::bind(&stream_cfg.address, stream_cfg.port, ttl, tls).await {
        Ok(bound) => bound,
        Err(e) => {
            created.remove_all();
            bail!("stream.address {}:{}: {e}", stream_cfg.address, stream_cfg.port);
        }
    };
    let metrics_listener = match config.metrics.address.as_str() {
        "" => None,
        address => match crate::telemetry::bind(address).await {
            Ok(listener) => Some(listener),
            Err(e) => {
                created.remove_all();
                bail!("metrics.address {address}: {e}");
            }
        },
    };
    // Opening sets up the host network with blocking netlink calls.
    let cfg = config.clone();
    let opened = tokio::task::spawn_blocking(move || Node::open(cfg, store)).await.context("start-up task")?;
    stages.mark("node");
    let agent = match opened {
        Ok(a) => Arc::new(a),
        Err(e) => {
            created.remove_all();
            return Err(e.into());
        }
    };
    let _ = agent.streams.set(streams.clone());
    let backend: std::sync::Weak<dyn crate::stream::Backend> = Arc::downgrade(&agent) as std::sync::Weak<dyn crate::stream::Backend>;
    crate::stream::serve(streams, stream_listener, backend);
    if let Some(listener) = metrics_listener {
        tracing::info!(address = %config.metrics.address, "serving metrics at /metrics");
        crate::telemetry::serve(listener, Arc::downgrade(&agent));
    }
    // The user namespace probe runs beside recovery (a helper process and
    // a mount, a few ms) and is awaited before serving: Status must not
    // answer before it knows.
    let a = agent.clone();
    let userns_probe = tokio::task::spawn_blocking(move || a.probe_userns());
    // Records against the kernel first, then what no record claims, then
    // image content no image or container needs (an interrupted pull).
    if let Err(e) = crate::pod::recover(&agent).await.and(crate::container::recover(&agent).await) {
        tracing::warn!("start-up recovery: {e}");
    }
    stages.mark("recover");
    let a = agent.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || crate::reconcile::collect_strays(&a)).await {
        tracing::warn!("start-up garbage collection: {e}");
    }
    stages.mark("strays");
    if let Err(e) = agent.images.collect_garbage().await {
        tracing::warn!("start-up image garbage collection: {e}");
    }
    stages.mark("image_gc");
    let _ = userns_probe.await;
    stages.mark("userns_probe");
    tracing::info!(socket = %config.socket.display(), root = %config.root.display(), stages_us = %stages,
        state = %config.state.display(), version = env!("CARGO_PKG_VERSION"), "berthd serving CRI v1");

    let trim = tokio::spawn(crate::memory::trim_when_idle());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = cri::server(agent.clone()).serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
        let _ = stop_rx.await;
    });
    tokio::pin!(server);

    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    // The socket is listening: a connection made from now on is served.
    let status = format!("serving CRI v1 on {}", config.socket.display());
    notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&status)]);
    let mut stop_tx = Some(stop_tx);
    let result = loop {
        let signal = tokio::select! {
            r = &mut server => break r.map_err(|e| anyhow!("CRI server failed: {e}")),
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
            _ = sighup.recv() => {
                reload_config(&agent, reload.as_deref());
                continue;
            }
        };
        notify(&[sd_notify::NotifyState::Stopping, sd_notify::NotifyState::Status(&format!("{signal}: stopping"))]);
        let Some(stop) = stop_tx.take() else { continue };
        break graceful(&mut server, signal, config.shutdown_timeout_seconds, stop).await;
    };

    trim.abort();
    // The store closes when the last reference goes; in-flight RPCs are done.
    drop(agent);
    if let Err(e) = std::fs::remove_file(&config.socket) {
        tracing::warn!(socket = %config.socket.display(), "removing the socket: {e}");
    }
    drop(lock);
    tracing::info!("berthd stopped");
    result
}

/// SIGHUP: a config that does not load is logged and changes nothing.
fn reload_config(node: &Node, reload: Option<&(dyn Fn() -> Result<Config, crate::config::ConfigError> + Send + Sync)>) {
    let Some(reload) = reload else {
        tracing::info!("SIGHUP: no config source to reload from");
        return;
    };
    match reload() {
        Ok(config) => {
            crate::reload::apply(node, config);
            notify(&[sd_notify::NotifyState::Status("serving CRI v1; config reloaded")]);
        }
        Err(e) => {
            tracing::error!("SIGHUP: config not reloaded, the running one stays: {e}");
            notify(&[sd_notify::NotifyState::Status("serving CRI v1; last config reload failed")]);
        }
    }
}

/// Stops accepting, lets in-flight RPCs finish within `timeout_s`, then returns.
async fn graceful<F>(
    server: &mut std::pin::Pin<&mut F>,
    signal: &str,
    timeout_s: u64,
    stop: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<()>
where
    F: std::future::Future<Output = Result<(), tonic::transport::Error>>,
{
    tracing::info!("{signal} received: finishing in-flight RPCs (up to {timeout_s}s)");
    let _ = stop.send(());
    match tokio::time::timeout(Duration::from_secs(timeout_s), server.as_mut()).await {
        Ok(r) => r.map_err(|e| anyhow!("CRI server failed while stopping: {e}")),
        Err(_) => {
            tracing::warn!("in-flight RPCs did not finish within {timeout_s}s; exiting anyway");
            Ok(())
        }
    }
}

/// `berthd cleanup`: for an operator uninstalling berth. With berthd
/// stopped (the lock proves it), removes every pod and container, the
/// bridge, the nftables table, berth's cgroup parent and the state
/// directory; with `all`, the root (images, metadata) too.
pub fn cleanup(config: Config, all: bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(async move {
        let mut created = CreatedPaths::default();
        if config.state.exists() {
            let lock =
                take_lock(&config.state.join(LOCK_FILE), &mut created).context("berthd seems to be running: stop it before cleaning up")?;
            if Store::path_in(&config.root).exists() {
                let store = Store::open(&config.root)?;
                let cfg = config.clone();
                let node = Arc::new(tokio::task::spawn_blocking(move || Node::open(cfg, store)).await??);
                for pod in node.pods.list() {
                    let _ = crate::pod::stop(&node, &pod.id).await;
                    if let Err(e) = crate::pod::remove(&node, &pod.id).await {
                        eprintln!("berthd cleanup: pod {}: {e}", pod.id);
                    }
                }
                for c in node.containers.list() {
                    if let Err(e) = crate::container::remove(&node, &c.id).await {
                        eprintln!("berthd cleanup: container {}: {e}", c.id);
                    }
                }
                let n = node.clone();
                tokio::task::spawn_blocking(move || crate::reconcile::collect_strays(&n)).await?;
            }
            drop(lock);
            // The pods dir, the template's dir and the binaries' binds are
            // mounts of their own (Node::open): with them mounted the
            // directory cannot go.
            berth_runtime::sandbox::unmount_private_dir(&config.state.join("pods"));
            berth_runtime::mntns::remove(&config.state.join("mntns"));
            crate::binaries::release(&config.state);
            std::fs::remove_dir_all(&config.state).with_context(|| format!("removing {}", config.state.display()))?;
        }
        // With or without a state dir: by the configured names.
        let cfg = config.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || crate::net::Network::remove_host(&cfg)).await? {
            eprintln!("berthd cleanup: network: {e}");
        }
        let systemd = config.runtime.cgroup_driver == crate::config::CgroupDriver::Systemd;
        if let Ok(parent) = crate::cgroups::parent_path(systemd, &config.runtime.default_cgroup_parent) {
            let removed = crate::cgroups::Cgroups::open(config.runtime.cgroup_driver).and_then(|c| c.remove(&parent));
            if let Err(e) = removed {
                eprintln!("berthd cleanup: cgroup {parent}: {e}");
            }
        }
        let _ = std::fs::remove_file(&config.socket);
        if all && config.root.exists() {
            std::fs::remove_dir_all(&config.root).with_context(|| format!("removing {}", config.root.display()))?;
        }
        Ok(())
    })
}

/// Creates the directories, takes the lock, opens the store and binds the socket.
fn prepare(
    config: &Config,
    created: &mut CreatedPaths,
    stages: &mut crate::util::Stages,
) -> anyhow::Result<(Store, Flock<File>, UnixListener)> {
    // The lock comes first, so a second berthd is told exactly that.
    created.dir(&config.state, 0o711).with_context(|| format!("state {}", config.state.display()))?;
    let lock = take_lock(&config.state.join(LOCK_FILE), created)?;
    stages.mark("lock");

    created.dir(&config.root, 0o700).with_context(|| format!("root {}", config.root.display()))?;
    std::fs::set_permissions(&config.root, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod 0700 root {}", config.root.display()))?;
    let store_path = Store::path_in(&config.root);
    if !store_path.exists() {
        created.files.push(store_path.clone());
    }
    let store = Store::open(&config.root)?;
    stages.mark("store");

    let socket_dir = config.socket.parent().unwrap_or(Path::new("/"));
    created.dir(socket_dir, 0o711).with_context(|| format!("socket directory {}", socket_dir.display()))?;
    clear_stale_socket(&config.socket)?;
    let listener = bind_private(&config.socket)?;
    created.files.push(config.socket.clone());
    Ok((store, lock, listener))
}

/// Binds the CRI socket so that it never exists at its path with a wider
/// mode than 0660: bound inside a fresh 0700 directory next to it, given its
/// mode there, then renamed into place (a unix socket is found by its inode,
/// so the listener keeps working under the new name).
fn bind_private(path: &Path) -> anyhow::Result<UnixListener> {
    let dir = path.parent().unwrap_or(Path::new("/")).join(format!(".berthd-bind-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new().mode(0o700).create(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join("s");
    let bound = UnixListener::bind(&tmp).with_context(|| format!("binding socket {}", path.display())).and_then(|l| {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660)).with_context(|| format!("chmod 0660 {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("moving the socket to {}", path.display()))?;
        Ok(l)
    });
    let _ = std::fs::remove_file(&tmp);
    let _ = std::fs::remove_dir(&dir);
    bound
}

/// Takes an exclusive, non-blocking lock and writes our pid into the file.
fn take_lock(path: &Path, created: &mut CreatedPaths) -> anyhow::Result<Flock<File>> {
    let existed = path.exists();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("lock file {}", path.display()))?;
    if !existed {
        created.files.push(path.to_path_buf());
    }
    // A berthd killed a moment ago may leave the lock held briefly by a
    // child between fork and exec (the fd is O_CLOEXEC, so exec drops it):
    // retry for a while before refusing, and then say who holds it.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut file = file;
    let mut lock = loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => break l,
            Err((f, nix::errno::Errno::EWOULDBLOCK)) if std::time::Instant::now() < deadline => {
                file = f;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err((mut f, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut pid = String::new();
                let _ = f.read_to_string(&mut pid);
                let holders = lock_holders(&f);
                bail!(
                    "another berthd (pid {} by the lock file; holding it now: {}) holds {}: refusing to start a second one on the same state",
                    pid.trim(),
                    if holders.is_empty() { "unknown".to_string() } else { holders.join(", ") },
                    path.display()
                );
            }
            Err((_, e)) => bail!("locking {}: {e}", path.display()),
        }
    };
    lock.set_len(0)
        .and_then(|_| lock.rewind())
        .and_then(|_| writeln!(lock, "{}", std::process::id()))
        .with_context(|| format!("writing pid to {}", path.display()))?;
    Ok(lock)
}

/// Who holds a flock on `file`, from /proc/locks: "pid (command)".
fn lock_holders(file: &File) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = file.metadata() else { return Vec::new() };
    let (dev, ino) = (meta.dev(), meta.ino());
    let want = format!("{:02x}:{:02x}:{ino}", nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    locks
        .lines()
        .filter(|l| l.contains(" FLOCK ") && l.split_whitespace().nth(5) == Some(want.as_str()))
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            format!("pid {pid} ({})", comm.trim())
        })
        .collect()
}

/// Removes a socket left by a dead process; refuses one that still answers.
fn clear_stale_socket(path: &Path) -> anyhow::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => bail!("socket {}: {e}", path.display()),
    };
    if !meta.file_type().is_socket() {
        bail!("socket {} exists and is not a socket; not touching it", path.display());
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!("socket {} is in use by a live process; refusing to replace it", path.display());
    }
    tracing::info!(socket = %path.display(), "replacing stale socket");
    std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))
}

/// What start-up created, so that a failed start removes exactly that.
#[derive(Default)]
struct CreatedPaths {
    dirs: Vec<PathBuf>,
    files: Vec<PathBuf>,
}

impl CreatedPaths {
    /// `mkdir -p` with `mode` for each missing component, remembering which were made.
    fn dir(&mut self, path: &Path, mode: u32) -> std::io::Result<()> {
        let mut missing = Vec::new();
        let mut p = Some(path);
        while let Some(d) = p {
            if d.exists() {
                break;
            }
            missing.push(d.to_path_buf());
            p = d.parent();
        }
        for d in missing.into_iter().rev() {
            std::fs::DirBuilder::new().mode(mode).create(&d)?;
            self.dirs.push(d);
        }
        Ok(())
    }

    fn remove_all(&mut self) {
        for f in self.files.drain(..).rev() {
            let _ = std::fs::remove_file(f);
        }
        for d in self.dirs.drain(..).rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

//! Container lifecycle: Creating → Created → Running → Exited → removed.
//! The executor does the kernel work; this module keeps the records right,
//! folds exit statuses in as monitors report them, and serialises the
//! operations on one container.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_runtime::{cgroup, JoinProc, MonitorState, PidNamespace, RuntimeError};
use tokio::io::AsyncReadExt;

use crate::error::{Error, Result};
use crate::events::EventKind;
use crate::image::ImageRecord;
use crate::model::{ContainerRequest, ExecOutput, Resources};
use crate::node::Node;
use crate::spec::{self, ns_mode, SpecPaths};
use crate::store::{ContainerRecord, ContainerState, PodRecord, PodState};
use crate::util::{now_ns, random_id, Stages};

/// ExecSync keeps at most this much of each stream: both together, with
/// the reply's framing, stay within the 16 MiB CRI message kubelet accepts,
/// so a chatty command gets truncated output rather than a failed RPC.
pub const EXEC_OUTPUT_CAP: usize = (8 << 20) - (32 << 10);

fn internal(what: &str, e: impl std::fmt::Display) -> Error {
    Error::internal(what, e.to_string())
}

impl From<RuntimeError> for Error {
    fn from(e: RuntimeError) -> Error {
        match e {
            RuntimeError::Init(init) => Error::FailedPrecondition(init.to_string()),
            RuntimeError::NotRunning(id) => Error::FailedPrecondition(format!("container {id} is not running")),
            other => Error::internal("executor", other),
        }
    }
}

/// Finds a container by id or unique prefix, with its exit status folded in.
pub fn find(node: &Node, id: &str) -> Result<ContainerRecord> {
    let rec = node.containers.find(id)?;
    refresh(node, rec)
}

/// Like [`find`], None when absent (stop and remove are idempotent).
fn find_opt(node: &Node, id: &str) -> Result<Option<ContainerRecord>> {
    node.containers.find_opt(id)?.map(|rec| refresh(node, rec)).transpose()
}

/// Like [`find`], for operations that need the container running.
pub fn find_running(node: &Node, id: &str) -> Result<ContainerRecord> {
    let rec = find(node, id)?;
    if rec.state != ContainerState::Running {
        return Err(Error::FailedPrecondition(format!("container {} is not running", rec.id)));
    }
    Ok(rec)
}

/// ExecSync's and Exec's command: a program must be named.
pub fn check_cmd(cmd: &[String]) -> Result<()> {
    if cmd.first().is_none_or(|c| c.is_empty()) {
        return Err(Error::invalid("cmd", "must not be empty"));
    }
    Ok(())
}

/// How a container ended, as its monitor (or its absence) tells.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ended {
    code: i32,
    finished_ns: i64,
    reason: &'static str,
    /// The monitor went without recording anything.
    lost: bool,
}

/// The state change an end makes: Created or Running becomes Exited with
/// the status; any other state stays. True when the record changed.
fn fold_exit(cur: &mut ContainerRecord, end: &Ended) -> bool {
    if !matches!(cur.state, ContainerState::Created | ContainerState::Running) {
        return false;
    }
    cur.state = ContainerState::Exited;
    cur.exit_code = end.code;
    cur.finished_at_ns = end.finished_ns;
    cur.reason = end.reason.into();
    if end.lost {
        cur.message = "the container's monitor exited without recording a status".into();
    }
    true
}

/// Folds a recorded exit status into the record if the monitor wrote one
/// (or vanished) since we last looked.
pub fn refresh(node: &Node, rec: ContainerRecord) -> Result<ContainerRecord> {
    if !matches!(rec.state, ContainerState::Created | ContainerState::Running) {
        return Ok(rec);
    }
    // A Created container's monitor is asked whether it started (berthd may
    // have missed recording it). A Running one's monitor is not woken: while
    // the pidfd its watcher waits on is not readable, the monitor lives, and
    // it writes the exit file only as it ends; otherwise the exit file and
    // the monitor's pidfd and start time say whether it still runs.
    let state = match rec.state {
        ContainerState::Running if node.watchers.monitor_lives(&rec.id) => MonitorState::Running(None),
        ContainerState::Running => node.runtime.state_of_started(&node.bundle(&rec.id), rec.monitor_pid, rec.monitor_start_time),
        _ => node.runtime.state(&node.bundle(&rec.id)),
    };
    let end = match state {
        MonitorState::Running(None) => return Ok(rec),
        MonitorState::Running(Some(started_at_ns)) => return fold_start(node, rec, started_at_ns),
        MonitorState::Exited(s) => {
            let oom = s.signal == libc::SIGKILL && (s.oom || node.cgroups.oom_killed(&rec.cgroup));
            let reason = if oom {
                "OOMKilled"
            } else if s.code == 0 {
                "Completed"
            } else {
                "Error"
            };
            Ended { code: s.code, finished_ns: s.finished_ns, reason, lost: false }
        }
        MonitorState::Lost => Ended { code: 255, finished_ns: now_ns(), reason: "Unknown", lost: true },
    };
    // Re-read under the table's writer lock: a concurrent fold may have won.
    let mut stopped = false;
    let updated = node.containers.update(&rec.id, |cur| {
        stopped = fold_exit(cur, &end);
        stopped
    })?;
    if let (true, Some(c)) = (stopped, &updated) {
        tracing::info!(container_id = %c.id, exit_code = end.code, "container exited");
        node.events.emit(&c.id, &c.pod_id, EventKind::Stopped);
    }
    Ok(updated.unwrap_or(rec))
}

/// A container the monitor started but the record still calls Created (a
/// crash between the two): the kernel's word wins.
fn fold_start(node: &Node, rec: ContainerRecord, started_at_ns: i64) -> Result<ContainerRecord> {
    if rec.state != ContainerState::Created {
        return Ok(rec);
    }
    let mut changed = false;
    let updated = node.containers.update(&rec.id, |cur| {
        changed = cur.state == ContainerState::Created;
        if changed {
            cur.state = ContainerState::Running;
            cur.started_at_ns = started_at_ns;
        }
        changed
    })?;
    if let (true, Some(c)) = (changed, &updated) {
        tracing::warn!(container_id = %c.id, "container was started but not recorded as such (berthd stopped in between): now RUNNING");
        node.events.emit(&c.id, &c.pod_id, EventKind::Started);
    }
    Ok(updated.unwrap_or(rec))
}

/// The monitors' pidfds the watchers wait on, by container id, shared with
/// [`refresh`]: a pidfd that is not readable is the kernel's word that the
/// monitor still lives.
#[derive(Default)]
pub struct Watchers(std::sync::Mutex<std::collections::HashMap<String, Arc<OwnedFd>>>);

impl Watchers {
    fn map(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Arc<OwnedFd>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a watcher waits on the monitor of container `id` and that
    /// monitor has not ended: its pidfd polls not readable.
    pub fn monitor_lives(&self, id: &str) -> bool {
        let Some(fd) = self.map().get(id).cloned() else { return false };
        berth_runtime::pidfd::readable(&*fd).is_ok_and(|ended| !ended)
    }
}

/// A pidfd shared by a watcher's AsyncFd and [`Watchers`].
struct SharedFd(Arc<OwnedFd>);

impl std::os::fd::AsRawFd for SharedFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// Watches the container's monitor process and folds the exit in as soon
/// as it goes. The pidfd is taken here, checked against the monitor's start
/// time when the record has it, so the watch is armed before this returns.
pub fn watch(node: &Arc<Node>, rec: &ContainerRecord) {
    let fd = match rec.monitor_start_time {
        0 => berth_runtime::pidfd::pidfd_open(rec.monitor_pid),
        started => berth_runtime::pidfd::pidfd_open_checked(rec.monitor_pid, started),
    };
    let (node, id) = (node.clone(), rec.id.clone());
    let fd = fd.ok().map(Arc::new);
    if let Some(fd) = &fd {
        node.watchers.map().insert(id.clone(), fd.clone());
    }
    tokio::spawn(async move {
        if let Some(fd) = fd {
            wait_fd(SharedFd(fd)).await;
            node.watchers.map().remove(&id);
        }
        if let Some(rec) = node.containers.get(&id) {
            let _ = refresh(&node, rec);
        }
    });
}

async fn wait_fd<F: std::os::fd::AsRawFd>(fd: F) {
    // SAFETY: the AsyncFd owns `fd` (an OwnedFd, or an Arc of one), which
    // keeps the descriptor open and the same until the AsyncFd is dropped.
    if let Ok(afd) = unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) } {
        let _ = afd.readable().await;
    }
}

/// Waits (bounded) for the monitor of `rec` to finish; true if it did.
async fn wait_exit(node: &Node, rec: &ContainerRecord, timeout: Duration) -> bool {
    let fd = match berth_runtime::pidfd::pidfd_open(rec.monitor_pid) {
        Ok(fd) => fd,
        // Already gone.
        Err(_) => return true,
    };
    let done = tokio::time::timeout(timeout, wait_fd(fd)).await.is_ok();
    done || !matches!(node.runtime.state(&node.bundle(&rec.id)), MonitorState::Running(_))
}

/// CreateContainer: validates, records the intent, builds the bundle and
/// starts the monitor; the init then waits for StartContainer. A retry with
/// the same name while the first is in flight gets the first one's result.
pub async fn create(node: &Arc<Node>, pod_id: &str, config: ContainerRequest) -> Result<String> {
    // Timed from the request: the stages of the log line cover all of it.
    let stages = Stages::new();
    let pod = node.pods.find(pod_id)?;
    if pod.state != PodState::Ready {
        return Err(Error::FailedPrecondition(format!("pod sandbox {} is not ready", pod.id)));
    }
    if config.name.is_empty() {
        return Err(Error::invalid("config.metadata.name", "must not be empty"));
    }
    if config.image.is_empty() {
        return Err(Error::invalid("config.image.image", "must name an image"));
    }
    let image = node
        .images
        .resolve(&config.image)
        .map_err(Error::from)?
        .ok_or_else(|| Error::NotFound(format!("image {:?} not found: pull it first", config.image)))?;
    let volumes = image_volumes(node, &config)?;
    let name_key = format!("{}/{}/{}", pod.id, config.name, config.attempt);
    let check_node = node.clone();
    let check_key = name_key.clone();
    let check = move || {
        if let Some(c) = check_node.containers.by_name(&check_key) {
            return Err(Error::AlreadyExists(format!("container {check_key} already exists as {}", c.id)));
        }
        Ok(())
    };
    let node2 = node.clone();
    node.flights
        .run(format!("ctr:{name_key}"), check, async move {
            let id = random_id().map_err(|e| internal("container id from the kernel's random source", e))?;
            let span = tracing::info_span!("container", container_id = %id, pod_id = %pod.id, name = %config.name);
            tracing::Instrument::instrument(create_inner(node2, pod, config, image, volumes, id, stages), span).await
        })
        .await
}

/// RemoveImage: refused while a live container has the image mounted as a
/// volume (its rootfs image may go: the snapshots stay while it exists).
pub async fn remove_image(node: &Arc<Node>, image: &str) -> Result<()> {
    if let Some(record) = node.images.resolve(image).map_err(Error::from)? {
        let users = node.containers.filter(|c| {
            matches!(c.state, ContainerState::Created | ContainerState::Running) && c.mounts.iter().any(|m| m.image_id == record.id)
        });
        if let Some(c) = users.first() {
            return Err(Error::FailedPrecondition(format!(
                "image {} is mounted as a volume by container {} ({} in all); remove those containers first",
                record.id,
                c.id,
                users.len()
            )));
        }
    }
    Ok(node.images.remove(image).await?)
}

/// The images of the request's image volumes, by mount index; kubelet pulls
/// them before it creates the container.
fn image_volumes(node: &Node, config: &ContainerRequest) -> Result<Vec<(usize, ImageRecord)>> {
    let mut out = Vec::new();
    for (i, m) in config.mounts.iter().enumerate().filter(|(_, m)| !m.image.is_empty()) {
        let image = node
            .images
            .resolve(&m.image)
            .map_err(Error::from)?
            .ok_or_else(|| Error::NotFound(format!("config.mounts[{i}].image: image {:?} not found: pull it first", m.image)))?;
        out.push((i, image));
    }
    Ok(out)
}

/// A running container of `pod` in the pod's PID namespace, as the kernel
/// has it (the namespace of the pod's init), and still the process its
/// record names: a pod started by a berthd before the pod's /proc pin can
/// give a new container a clone of this one's /proc instead.
fn sibling_in_pid_namespace(node: &Node, pod: &PodRecord) -> Option<ContainerRecord> {
    let ns = |pid: i32| berth_runtime::pidfd::pid_namespace_id(pid).ok();
    let pods = ns(pod.init_pid).filter(|_| berth_runtime::pidfd::start_time(pod.init_pid) == Some(pod.init_start_time))?;
    node.containers
        .filter(|c| c.pod_id == pod.id && c.state == ContainerState::Running && c.pid > 0)
        .into_iter()
        .find(|c| ns(c.pid) == Some(pods) && berth_runtime::pidfd::start_time(c.pid) == Some(c.start_time))
}

async fn create_inner(
    node: Arc<Node>,
    pod: PodRecord,
    config: ContainerRequest,
    image: ImageRecord,
    volumes: Vec<(usize, ImageRecord)>,
    id: String,
    mut stages: Stages,
) -> Result<String> {
    let mut image_volumes = std::collections::HashMap::new();
    for (i, v) in &volumes {
        image_volumes.insert(*i, (v.id.clone(), node.images.lower_dirs(v).map_err(Error::from)?));
    }
    let layer = node.layer_dir(&id);
    let cgroup_path = node.cgroups.container_path(&pod.cgroup, &id);
    let paths = SpecPaths {
        state: node.config.state.clone(),
        pod_dir: node.pod_dir(&pod.id),
        lower_dirs: node.images.lower_dirs(&image).map_err(Error::from)?,
        upper: layer.join("upper"),
        work: layer.join("work"),
        cgroup_procs: cgroup::procs_files_of(&cgroup_path),
        cgroup: cgroup_path.clone(),
        cgroup_v2: node.cgroup_v2,
        cgroup_hold: node.cgroups.is_systemd(),
        set_aside: node.pods_mount.clone(),
        mount_template: node.mount_template.clone(),
        image_volumes,
    };
    let limits = config.resources.limits.clone();
    limits.validate(node.cgroup_v2).map_err(|e| crate::error::limits_error("config.linux.resources", &e))?;
    let mut config = config;
    if node.handler_of(&pod).default_seccomp == crate::config::DefaultSeccomp::RuntimeDefault
        && matches!(config.security.seccomp, crate::model::Profile::Unset | crate::model::Profile::Unconfined)
    {
        config.security.seccomp = crate::model::Profile::RuntimeDefault;
    }
    let built = spec::build(&config, &pod, &image, &paths)?;
    let pid_ns = match built.pid_mode {
        ns_mode::NODE => PidNamespace::Host,
        ns_mode::POD if pod.init_pid > 0 => {
            let pin = berth_runtime::sandbox::proc_pin_path(&node.pod_dir(&pod.id));
            if pin.is_dir() {
                PidNamespace::Join { pid: pod.init_pid, start_time: pod.init_start_time, proc: JoinProc::Pinned(pin) }
            } else if let Some(sibling) = sibling_in_pid_namespace(&node, &pod) {
                // A pod started by a berthd before the pin has none: the
                // /proc then comes from a running sibling, as for TARGET.
                tracing::info!(pod_id = %pod.id, sibling = %sibling.id, "no /proc pin in the pod: the container's /proc comes from a sibling's");
                PidNamespace::Join { pid: sibling.pid, start_time: sibling.start_time, proc: JoinProc::OfTarget }
            } else {
                tracing::warn!(
                    pod_id = %pod.id,
                    "no /proc pin in the pod and no running container in its PID namespace: before Linux 6.15 the container's init starts inside the namespace"
                );
                PidNamespace::Join { pid: pod.init_pid, start_time: pod.init_start_time, proc: JoinProc::Kernel }
            }
        }
        ns_mode::TARGET => {
            let target = find(&node, &built.pid_target)?;
            if target.state != ContainerState::Running && target.state != ContainerState::Created {
                return Err(Error::FailedPrecondition(format!("target container {} is not running", target.id)));
            }
            PidNamespace::Join { pid: target.pid, start_time: target.start_time, proc: JoinProc::OfTarget }
        }
        _ => PidNamespace::New,
    };
    let log_path = if pod.log_directory.is_empty() || config.log_path.is_empty() {
        String::new()
    } else {
        if berth_runtime::fs::clean_relative(std::path::Path::new(&config.log_path)).is_err() {
            return Err(Error::invalid("config.log_path", format!("{:?} leaves the pod's log directory", config.log_path)));
        }
        PathBuf::from(&pod.log_directory).join(&config.log_path).display().to_string()
    };
    let mut rec = ContainerRecord {
        id: id.clone(),
        pod_id: pod.id.clone(),
        name: config.name.clone(),
        attempt: config.attempt,
        state: ContainerState::Creating,
        created_at_ns: now_ns(),
        labels: config.labels.clone(),
        annotations: config.annotations.clone(),
        image: shown_image(&config, &image),
        user_image: config.user_image.clone(),
        image_id: image.id.clone(),
        image_ref: image.repo_digests.first().cloned().unwrap_or_else(|| image.id.clone()),
        // Image GC keeps what the rootfs and the image volumes stack.
        snapshot_chain: image.layers.iter().chain(volumes.iter().flat_map(|(_, v)| &v.layers)).map(|l| l.chain_id.clone()).collect(),
        log_path: log_path.clone(),
        mounts: built.mounts.clone(),
        cgroup: cgroup_path.clone(),
        stop_signal: built.stop_signal,
        limits: limits.clone(),
        oom_score_adj: config.resources.oom_score_adj,
        stdin: config.stdin,
        stdin_once: config.stdin_once,
        tty: config.tty,
        ..Default::default()
    };
    let stdio = berth_runtime::monitor::StdioOpts { stdin: config.stdin, stdin_once: config.stdin_once, tty: config.tty };
    let device_rules = spec_device_rules(&built.spec)?;
    stages.mark("prepare");
    // The writable layer's dirs with the overlay rootfs mounted ahead, the
    // cgroup, and the bundle are made on three threads beside the intent
    // record's write: a crash before the record is on disk leaves them to
    // start-up GC, which removes writable layers, bundles and container
    // cgroups no record claims (the detached overlay goes with the process).
    let ahead = rootfs_ahead(&built.spec);
    let upper_owner = pod.userns.as_ref().map(|m| m.host_root());
    let layer_dir = layer.clone();
    let layer_task = tokio::task::spawn_blocking(move || layer_dirs_and_rootfs(&layer_dir, upper_owner, ahead));
    let a = node.clone();
    let pod_rec = pod.clone();
    let (cg, lim) = (cgroup_path.clone(), limits.clone());
    let cgroup_task = tokio::task::spawn_blocking(move || cgroup_with_limits(&a, &pod_rec, &cg, &lim, &device_rules));
    let (bundle_dir, spec) = (node.bundle(&id), built.spec);
    let bundle_task = tokio::task::spawn_blocking(move || {
        let t = std::time::Instant::now();
        let bundle = berth_runtime::Runtime::write_bundle(&bundle_dir, &spec).map_err(Error::from);
        bundle.map(|b| (b, t.elapsed()))
    });
    // The intent record does not wait for the disk (the created record
    // that follows does, and takes it along): a crash before that leaves
    // either a Creating record, which start-up cleans up, or none, and then
    // start-up GC removes what no record claims — the monitor (found by its
    // command line), the bundle, the writable layer, the container cgroup.
    // Nothing is left either way, which is what the record is for.
    let intent = node.containers.put_volatile(&rec);
    stages.mark("intent_record");
    let layer_made = layer_task.await.map_err(Error::from).and_then(|made| made);
    let cgroup_made = cgroup_task.await.map_err(Error::from).and_then(|made| made);
    let bundle_made = bundle_task.await.map_err(Error::from).and_then(|made| made);
    stages.mark("dirs_and_cgroup_wait");
    let (rootfs_fd, pending, bundle) = match (intent, layer_made, cgroup_made, bundle_made) {
        (Ok(()), Ok((rootfs_fd, layer_took)), Ok((pending, cgroup_took)), Ok((bundle, bundle_took))) => {
            for (name, took) in layer_took.into_iter().chain(cgroup_took).chain([("bundle", bundle_took)]) {
                stages.beside(name, took);
            }
            (rootfs_fd, pending, bundle)
        }
        (Err(e), ..) | (_, Err(e), ..) | (_, _, Err(e), _) | (.., Err(e)) => return Err(abandon(&node, &rec, e).await),
    };
    crate::fault::point("container.create.after_intent");

    let a = node.clone();
    let pod_rec = pod.clone();
    let made = tokio::task::spawn_blocking(move || -> Result<(berth_runtime::Created, Stages)> {
        stages.mark("to_blocking");
        let log = if log_path.is_empty() { None } else { Some(PathBuf::from(&log_path)) };
        let created = a.handler_of(&pod_rec).runtime.create(&id, bundle, log.as_deref(), &pid_ns, stdio, rootfs_fd)?;
        pending.joined();
        stages.mark("monitor_and_rootfs");
        Ok((created, stages))
    })
    .await?;
    match made {
        Ok((created, mut stages)) => {
            crate::fault::point("container.create.after_monitor");
            rec.state = ContainerState::Created;
            rec.pid = created.pid;
            rec.start_time = created.start_time;
            rec.monitor_pid = created.monitor_pid;
            rec.monitor_start_time = created.monitor_start_time;
            rec.uid = created.uid as i64;
            rec.gid = created.gid as i64;
            rec.groups = created.groups.iter().map(|g| *g as i64).collect();
            // A Created record that cannot be written (a full disk) fails
            // the create, undone now as start-up would undo it.
            if let Err(e) = crate::fault::failure("container.create.created_record").map_or_else(|| node.containers.put(&rec), Err) {
                return Err(abandon(&node, &rec, e).await);
            }
            stages.mark("created_record");
            watch(&node, &rec);
            node.events.emit(&rec.id, &rec.pod_id, EventKind::Created);
            crate::telemetry::get().container_stages(&stages);
            // monitor_and_rootfs, step by step, as the monitor and init measured it.
            let runtime_us: Vec<String> = created.stages_us.iter().map(|(step, us)| format!("{step}={us}")).collect();
            if let Some(why) = &created.zygote_error {
                tracing::warn!(error = %why, "the monitor zygote could not fork this container's monitor: it was spawned instead");
            }
            tracing::info!(stages_us = %stages, runtime_us = %runtime_us.join(" "), "container created");
            Ok(rec.id)
        }
        Err(e) => Err(abandon(&node, &rec, e).await),
    }
}

/// A creation that failed: what it made goes, and its record; returns `e`.
async fn abandon(node: &Arc<Node>, rec: &ContainerRecord, e: Error) -> Error {
    tracing::warn!("container creation failed: {e}");
    undo_creation(node, rec).await;
    e
}

/// Undoes a creation that did not finish, whether it failed or a crash cut
/// it short: the monitor, if the record has one, kills the init; then the
/// cgroup, the files and the record go.
async fn undo_creation(node: &Arc<Node>, rec: &ContainerRecord) {
    if rec.monitor_pid > 0 {
        let _ = node.runtime.signal(&rec.id, &node.bundle(&rec.id), libc::SIGKILL);
    }
    let a = node.clone();
    let r = rec.clone();
    let _ = tokio::task::spawn_blocking(move || teardown(&a, &r)).await;
    let _ = node.containers.delete(&rec.id);
}

/// The overlay rootfs berthd can mount ahead for the init (see
/// `berth_runtime::rootfs::mount_ahead`): its layers and whether it is
/// `nodev`, from the spec as the init would read them; None for a
/// user-namespaced container (the init id-maps its layers) or a spec the
/// init will refuse with its own words.
fn rootfs_ahead(spec: &oci_spec::runtime::Spec) -> Option<RootfsAhead> {
    use berth_runtime::rootfs;
    if rootfs::user_namespace(spec).ok()?.is_some() {
        return None;
    }
    Some(RootfsAhead {
        layers: rootfs::layers(spec).ok()?,
        nodev: rootfs::devices_restricted(spec).ok()?,
        targets: rootfs::targets_on_rootfs(spec),
    })
}

/// What [`layer_dirs_and_rootfs`] needs to mount the rootfs ahead and make
/// the mount destinations on it.
struct RootfsAhead {
    layers: berth_runtime::rootfs::Layers,
    nodev: bool,
    targets: Vec<(PathBuf, bool)>,
}

/// The container's writable layer dirs (the upper dir owned by
/// `upper_owner`, the host ids of a user-namespaced pod's root), then, when
/// `ahead` asks, the overlay rootfs mounted ahead with the mount
/// destinations made on it; with how long each took. What cannot be done
/// ahead is left to the init, which does it itself and reports why not in
/// its own words.
#[allow(clippy::type_complexity)]
fn layer_dirs_and_rootfs(
    layer: &std::path::Path,
    upper_owner: Option<(u32, u32)>,
    ahead: Option<RootfsAhead>,
) -> Result<(Option<std::os::fd::OwnedFd>, Vec<(&'static str, std::time::Duration)>)> {
    let mut took = Vec::new();
    let t = std::time::Instant::now();
    for d in [layer.to_path_buf(), layer.join("upper"), layer.join("work")] {
        std::fs::create_dir_all(&d).map_err(|e| internal(&d.display().to_string(), e))?;
    }
    if let Some((uid, gid)) = upper_owner {
        // The upper dir is the rootfs's /: its root's, as the id-mapped
        // layers below show theirs.
        let upper = layer.join("upper");
        std::os::unix::fs::chown(&upper, Some(uid), Some(gid)).map_err(|e| internal(&upper.display().to_string(), e))?;
    }
    took.push(("layer_dirs", t.elapsed()));
    let Some(ahead) = ahead else { return Ok((None, took)) };
    let t = std::time::Instant::now();
    let fd = berth_runtime::rootfs::mount_ahead(&ahead.layers, ahead.nodev)
        .inspect_err(|e| tracing::debug!("the overlay rootfs is left to the init: {e}"))
        .ok();
    took.push(("rootfs_ahead", t.elapsed()));
    if let Some(fd) = &fd {
        let t = std::time::Instant::now();
        if let Err(e) = berth_runtime::rootfs::Kernel::make_targets(fd.as_fd(), &ahead.targets) {
            tracing::debug!("mount destinations are left to the init: {e}");
        }
        took.push(("targets_ahead", t.elapsed()));
    }
    Ok((fd, took))
}

/// The container's cgroup with limits and device rules; with how long each
/// step took.
fn cgroup_with_limits(
    node: &Node,
    pod: &PodRecord,
    cgroup_path: &str,
    limits: &cgroup::Limits,
    device_rules: &[cgroup::DeviceRule],
) -> Result<(crate::cgroups::Pending, Vec<(&'static str, std::time::Duration)>)> {
    let mut took = Vec::new();
    let t = std::time::Instant::now();
    let monitor = node.handler_of(pod).runtime.monitor_bin();
    let pending = node.cgroups.create_leaf(cgroup_path, limits, node.cgroup_v2, monitor).map_err(|e| internal("container cgroup", e))?;
    took.push(("cgroup_create", t.elapsed()));
    let t = std::time::Instant::now();
    cgroup::apply(cgroup_path, limits).map_err(|e| Error::invalid("config.linux.resources", e))?;
    cgroup::apply_devices(cgroup_path, device_rules).map_err(|e| internal("container device cgroup", e))?;
    took.push(("cgroup_limits", t.elapsed()));
    Ok((pending, took))
}

/// The device cgroup rules of a spec, in the executor's terms.
fn spec_device_rules(spec: &oci_spec::runtime::Spec) -> Result<Vec<cgroup::DeviceRule>> {
    let rules = spec.linux().as_ref().and_then(|l| l.resources().as_ref()).and_then(|r| r.devices().clone()).unwrap_or_default();
    rules.iter().map(|r| cgroup::DeviceRule::from_oci(r).map_err(|e| internal("device rules", e))).collect()
}

/// Removes every host resource of a container (idempotent).
fn teardown(node: &Node, rec: &ContainerRecord) {
    if !rec.cgroup.is_empty() {
        if let Err(e) = node.cgroups.remove(&rec.cgroup) {
            tracing::warn!(container_id = %rec.id, "removing cgroup: {e}");
        }
    }
    for dir in [node.bundle(&rec.id), node.layer_dir(&rec.id)] {
        if let Err(e) = node.trash.discard(&dir) {
            tracing::warn!(container_id = %rec.id, "removing {}: {e}", dir.display());
        }
    }
}

/// StartContainer.
pub async fn start(node: &Arc<Node>, id: &str) -> Result<()> {
    let rec = find(node, id)?;
    let lock = node.locks.get(&rec.id);
    let _held = lock.lock().await;
    let mut rec = find(node, &rec.id)?;
    match rec.state {
        ContainerState::Created => {}
        ContainerState::Running => return Err(Error::FailedPrecondition(format!("container {} is already running", rec.id))),
        s => return Err(Error::FailedPrecondition(format!("container {} is {s:?}, not created", rec.id))),
    }
    let a = node.clone();
    let (cid, bdir) = (rec.id.clone(), node.bundle(&rec.id));
    let started = tokio::task::spawn_blocking(move || a.runtime.start(&cid, &bdir)).await?;
    match started {
        Ok(()) => {
            crate::fault::point("container.start.after_start");
            rec.state = ContainerState::Running;
            rec.started_at_ns = now_ns();
            // Without waiting for the disk: a crash before the next durable
            // write leaves the record at Created, and start-up asks the
            // monitor, which knows the container started (see `refresh`).
            node.containers.put_volatile(&rec)?;
            node.events.emit(&rec.id, &rec.pod_id, EventKind::Started);
            tracing::info!(container_id = %rec.id, "container started");
            Ok(())
        }
        Err(e) => {
            let e = Error::from(e);
            rec.message = e.to_string();
            rec.started_at_ns = now_ns();
            node.containers.put(&rec)?;
            // The init exits; its monitor records the status shortly.
            let _ = wait_exit(node, &rec, Duration::from_secs(5)).await;
            let _ = refresh(node, rec);
            Err(e)
        }
    }
}

/// StopContainer: the stop signal, `timeout` seconds, then SIGKILL to every
/// process of the container. Stopped or unknown containers are fine.
pub async fn stop(node: &Arc<Node>, id: &str, timeout_s: i64) -> Result<()> {
    let Some(rec) = find_opt(node, id)? else { return Ok(()) };
    let lock = node.locks.get(&rec.id);
    let _held = lock.lock().await;
    let Some(rec) = find_opt(node, &rec.id)? else { return Ok(()) };
    if !matches!(rec.state, ContainerState::Created | ContainerState::Running) {
        return Ok(());
    }
    let bdir = node.bundle(&rec.id);
    if rec.state == ContainerState::Running && timeout_s > 0 {
        let _ = node.runtime.signal(&rec.id, &bdir, rec.stop_signal);
        crate::fault::point("container.stop.after_signal");
        if wait_exit(node, &rec, Duration::from_secs(timeout_s as u64)).await {
            refresh(node, rec)?;
            return Ok(());
        }
        tracing::info!(container_id = %rec.id, "stop timeout of {timeout_s}s passed: killing");
    }
    let _ = node.runtime.signal(&rec.id, &bdir, libc::SIGKILL);
    let cg = rec.cgroup.clone();
    let _ = tokio::task::spawn_blocking(move || cgroup::signal_all(&cg, nix::sys::signal::Signal::SIGKILL)).await;
    if !wait_exit(node, &rec, Duration::from_secs(10)).await {
        return Err(Error::DeadlineExceeded(format!("container {} did not exit after SIGKILL", rec.id)));
    }
    refresh(node, rec)?;
    Ok(())
}

/// RemoveContainer: force-stops a running container, then removes it.
/// Unknown containers are fine.
pub async fn remove(node: &Arc<Node>, id: &str) -> Result<()> {
    let Some(rec) = find_opt(node, id)? else { return Ok(()) };
    let mut stages = Stages::new();
    stop(node, &rec.id, 0).await?;
    let lock = node.locks.get(&rec.id);
    let _held = lock.lock().await;
    stages.mark("stop");
    // The cgroup, bundle and writable layer go on a blocking thread while
    // the record's deletion waits for its fsync. A crash in between leaves
    // one of two states, both of which start-up and a retried remove handle:
    // the record of a stopped container whose files are gone (the retry
    // tears down nothing and deletes it), or files and a cgroup no record
    // claims (start-up GC removes them).
    let a = node.clone();
    let r = rec.clone();
    let teardown = tokio::task::spawn_blocking(move || {
        let t = std::time::Instant::now();
        teardown(&a, &r);
        crate::fault::point("container.remove.after_teardown");
        t.elapsed()
    });
    let deleted = node.containers.delete(&rec.id);
    stages.mark("record");
    let took = teardown.await?;
    stages.mark("teardown_wait");
    stages.beside("teardown", took);
    deleted?;
    node.cpu_samples.forget(&rec.cgroup);
    node.events.emit(&rec.id, &rec.pod_id, EventKind::Deleted);
    tracing::info!(container_id = %rec.id, stages_us = %stages, "container removed");
    Ok(())
}

/// ReopenContainerLog.
pub async fn reopen_log(node: &Arc<Node>, id: &str) -> Result<()> {
    let rec = find_running(node, id)?;
    let a = node.clone();
    let bdir = node.bundle(&rec.id);
    Ok(tokio::task::spawn_blocking(move || a.runtime.reopen_log(&rec.id, &bdir)).await??)
}

/// ExecSync: runs `cmd` in the container; output capped. With a positive
/// `timeout_s` the command and every process it started are killed when it passes
/// (and reaped: nothing of the exec is left, also in a container whose PID 1
/// does not reap). Once the command has exited, its output is awaited for
/// at most `runtime.drain_exec_sync_io_seconds`.
pub async fn exec_sync(node: &Arc<Node>, id: &str, cmd: Vec<String>, timeout_s: i64) -> Result<ExecOutput> {
    check_cmd(&cmd)?;
    let rec = find_running(node, id)?;
    let mut helper =
        node.runtime.exec_helper(&node.bundle(&rec.id), rec.pid, rec.start_time, &cmd, false).map_err(|e| internal("exec helper", e))?;
    let std_cmd = std::mem::replace(&mut helper.command, std::process::Command::new("/"));
    let mut command = tokio::process::Command::from(std_cmd);
    command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| internal("exec helper", e))?;
    helper.spawned();
    let (stdout, stderr) = (Captured::start(child.stdout.take()), Captured::start(child.stderr.take()));
    let deadline = (timeout_s > 0).then(|| tokio::time::Instant::now() + Duration::from_secs(timeout_s as u64));
    let status = match deadline {
        Some(d) => match tokio::time::timeout_at(d, child.wait()).await {
            Ok(s) => s,
            Err(_) => {
                stop_exec(&mut child).await;
                return Err(Error::DeadlineExceeded(format!("command {:?} timed out after {timeout_s}s", cmd[0])));
            }
        },
        None => child.wait().await,
    };
    let status = status.map_err(|e| internal("exec helper", e))?;
    if let Some(e) = berth_runtime::client::exec_failure(helper.report) {
        return Err(RuntimeError::Init(e).into());
    }
    // The command is done; its output may still be held open by a child it
    // left running in the background.
    let drain = node.config.runtime.drain_exec_sync_io_seconds;
    let drain_until = match (drain, deadline) {
        (0, d) => d,
        (s, Some(d)) => Some(d.min(tokio::time::Instant::now() + Duration::from_secs(s))),
        (s, None) => Some(tokio::time::Instant::now() + Duration::from_secs(s)),
    };
    let (stdout, stderr) = tokio::join!(stdout.finish(drain_until), stderr.finish(drain_until));
    Ok(ExecOutput { stdout, stderr, exit_code: status.code().unwrap_or(255) })
}

/// Ends an exec helper: SIGTERM, so its exec init kills and reaps the whole
/// tree, then (after 5 s) SIGKILL.
async fn stop_exec(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
    }
    if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}

/// One output stream of an exec, read into a bounded buffer as it comes, so
/// what arrived is kept even when the stream is given up on.
struct Captured {
    buf: Arc<std::sync::Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Captured {
    fn start<R: tokio::io::AsyncRead + Unpin + Send + 'static>(reader: Option<R>) -> Captured {
        let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = buf.clone();
        let task = tokio::spawn(async move {
            let Some(mut r) = reader else { return };
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                match r.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let mut out = sink.lock().unwrap_or_else(|p| p.into_inner());
                        let room = EXEC_OUTPUT_CAP.saturating_sub(out.len());
                        out.extend_from_slice(&chunk[..n.min(room)]);
                    }
                }
            }
        });
        Captured { buf, task }
    }

    /// The output, once the stream has ended or `until` has passed.
    async fn finish(mut self, until: Option<tokio::time::Instant>) -> Vec<u8> {
        let ended = match until {
            Some(t) => tokio::time::timeout_at(t, &mut self.task).await.is_ok(),
            None => (&mut self.task).await.is_ok(),
        };
        if !ended {
            self.task.abort();
        }
        std::mem::take(&mut *self.buf.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Start-up: interrupted creations are cleaned up; live containers are
/// watched again; exits that happened while berthd was away are folded in.
pub async fn recover(node: &Arc<Node>) -> Result<()> {
    for rec in node.containers.list() {
        match rec.state {
            ContainerState::Creating => {
                tracing::warn!(container_id = %rec.id, "cleaning up a container whose creation was interrupted");
                undo_creation(node, &rec).await;
            }
            ContainerState::Created | ContainerState::Running => {
                let rec = refresh(node, rec)?;
                if matches!(rec.state, ContainerState::Created | ContainerState::Running) {
                    // The recorded limits are the intent (an update may have
                    // been cut short between record and cgroup).
                    let (a, path, l) = (node.clone(), rec.cgroup.clone(), rec.limits.clone());
                    if let Err(e) = tokio::task::spawn_blocking(move || a.cgroups.update(&path, &l, a.cgroup_v2)).await? {
                        tracing::warn!(container_id = %rec.id, "re-applying the recorded limits: {e}");
                    }
                    watch(node, &rec);
                }
            }
            ContainerState::Exited => {}
        }
    }
    Ok(())
}

/// UpdateContainerResources: validates and applies the limits live.
pub async fn update_resources(node: &Arc<Node>, id: &str, resources: Resources) -> Result<()> {
    let rec = find(node, id)?;
    let lock = node.locks.get(&rec.id);
    let _held = lock.lock().await;
    let rec = find(node, &rec.id)?;
    if !matches!(rec.state, ContainerState::Created | ContainerState::Running) {
        return Err(Error::FailedPrecondition(format!("container {} is not running", rec.id)));
    }
    let limits = resources.limits;
    limits.validate(node.cgroup_v2).map_err(|e| crate::error::limits_error("linux", &e))?;
    // Recorded first, then applied: a crash in between leaves the intent,
    // which start-up applies (recover), so record and kernel agree.
    // Through update, not put: the exit watcher may fold an exit meanwhile.
    let before = rec.limits.clone();
    let set = |l: cgroup::Limits| {
        move |cur: &mut ContainerRecord| {
            cur.limits = l;
            true
        }
    };
    node.containers.update(&rec.id, set(limits.clone()))?;
    crate::fault::point("container.update.after_record");
    let (a, path, l) = (node.clone(), rec.cgroup.clone(), limits);
    if let Err(e) = tokio::task::spawn_blocking(move || a.cgroups.update(&path, &l, a.cgroup_v2)).await? {
        node.containers.update(&rec.id, set(before))?;
        return Err(Error::invalid("linux", e));
    }
    tracing::info!(container_id = %rec.id, "container resources updated");
    Ok(())
}

/// The streaming server reaches running containers through the node.
impl crate::stream::Backend for Node {
    fn running(&self, id: &str) -> std::result::Result<crate::stream::Target, String> {
        let rec = find_running(self, id).map_err(|e| e.to_string())?;
        Ok(crate::stream::Target { bundle: self.bundle(&rec.id), id: rec.id, pid: rec.pid, start_time: rec.start_time, stdin: rec.stdin })
    }

    fn runtime(&self) -> &berth_runtime::Runtime {
        &self.runtime
    }
}

/// The image ContainerStatus names (kubelet copies it into the pod status,
/// where `kubectl describe` shows it): the pod spec's name when kubelet sent
/// it, else the name CreateContainer used unless that was the image id
/// (kubelet's `image`), which is shown as the image's first tag instead.
fn shown_image(config: &ContainerRequest, image: &ImageRecord) -> String {
    if !config.user_image.is_empty() {
        return config.user_image.clone();
    }
    let hex = image.id.strip_prefix("sha256:").unwrap_or(&image.id);
    let named_by_id = config.image == image.id || (config.image.len() >= 12 && hex.starts_with(config.image.trim_start_matches("sha256:")));
    match image.repo_tags.first() {
        Some(tag) if named_by_id => tag.clone(),
        _ => config.image.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The watchers' word on a monitor is its pidfd's: live until the
    /// process ends, even before the watcher task notices.
    #[test]
    fn a_watched_monitor_lives_until_its_pidfd_says_it_ended() {
        let watchers = Watchers::default();
        assert!(!watchers.monitor_lives("unwatched"));
        let mut child = std::process::Command::new("sleep").arg("100").spawn().unwrap();
        let fd = berth_runtime::pidfd::pidfd_open(child.id() as i32).unwrap();
        watchers.map().insert("c".into(), Arc::new(fd));
        assert!(watchers.monitor_lives("c"));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!watchers.monitor_lives("c"), "the entry is still there, the pidfd says it ended");
    }

    #[test]
    fn an_exit_folds_into_live_containers_only() {
        let end = Ended { code: 137, finished_ns: 42, reason: "OOMKilled", lost: false };
        for state in [ContainerState::Created, ContainerState::Running] {
            let mut c = ContainerRecord { state, ..Default::default() };
            assert!(fold_exit(&mut c, &end));
            assert_eq!((c.state, c.exit_code, c.finished_at_ns, c.reason.as_str()), (ContainerState::Exited, 137, 42, "OOMKilled"));
            assert!(c.message.is_empty());
        }
        for state in [ContainerState::Creating, ContainerState::Exited] {
            let mut c = ContainerRecord { state, exit_code: 1, ..Default::default() };
            assert!(!fold_exit(&mut c, &end));
            assert_eq!((c.state, c.exit_code), (state, 1));
        }
        let mut c = ContainerRecord { state: ContainerState::Running, ..Default::default() };
        assert!(fold_exit(&mut c, &Ended { code: 255, finished_ns: 1, reason: "Unknown", lost: true }));
        assert!(c.message.contains("without recording"));
    }

    #[test]
    fn exec_commands_must_name_a_program() {
        assert!(check_cmd(&["true".into()]).is_ok());
        assert!(matches!(check_cmd(&[]), Err(Error::InvalidArgument { .. })));
        assert!(matches!(check_cmd(&["".into()]), Err(Error::InvalidArgument { .. })));
    }

    #[test]
    fn status_names_the_image_as_the_pod_spec_did() {
        let image =
            ImageRecord { id: format!("sha256:{}", "ab".repeat(32)), repo_tags: vec!["reg/busybox:1".into()], ..Default::default() };
        let req = |image: &str, user: &str| ContainerRequest { image: image.into(), user_image: user.into(), ..Default::default() };
        assert_eq!(shown_image(&req(&image.id, "busybox:1"), &image), "busybox:1");
        assert_eq!(shown_image(&req(&image.id, ""), &image), "reg/busybox:1");
        assert_eq!(shown_image(&req("abababababab", ""), &image), "reg/busybox:1");
        assert_eq!(shown_image(&req("reg/busybox:other", ""), &image), "reg/busybox:other");
        let untagged = ImageRecord { repo_tags: vec![], ..image.clone() };
        assert_eq!(shown_image(&req(&image.id, ""), &untagged), image.id);
    }
}

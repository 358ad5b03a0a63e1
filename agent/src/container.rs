//! Container lifecycle: Creating → Created → Running → Exited → removed.
//! The executor does the kernel work; this module keeps the store right,
//! folds exit statuses in as monitors report them, and serialises the
//! operations on one container.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::cri;
use berth_runtime::{cgroup, MonitorState, PidNamespace, RuntimeError};
use tokio::io::AsyncReadExt;
use tonic::Status;

use crate::cri::Agent;
use crate::spec::{self, ns_mode, SpecPaths};
use crate::store::{ContainerRecord, ContainerState, PodRecord, PodState};
use crate::util::{now_ns, random_id, resolve_prefix};

/// ExecSync keeps at most this much of each stream: both together, with
/// the reply's framing, stay within the 16 MiB CRI message kubelet accepts,
/// so a chatty command gets truncated output rather than a failed RPC.
pub const EXEC_OUTPUT_CAP: usize = (8 << 20) - (32 << 10);

fn internal(what: &str, e: impl std::fmt::Display) -> Status {
    Status::internal(format!("{what}: {e}"))
}

/// The gRPC status of an executor error.
pub fn status_of(e: RuntimeError) -> Status {
    match e {
        RuntimeError::Init(init) => Status::failed_precondition(init.to_string()),
        RuntimeError::NotRunning(id) => Status::failed_precondition(format!("container {id} is not running")),
        other => Status::internal(other.to_string()),
    }
}

/// The container's bundle (state dir, 0700).
pub fn bundle(agent: &Agent, id: &str) -> PathBuf {
    agent.config.state.join("containers").join(id)
}

/// The container's writable layer.
pub fn layer_dir(agent: &Agent, id: &str) -> PathBuf {
    agent.containers_dir().join(id)
}

/// Finds a container by id or unique prefix, with its exit status folded in.
pub fn find(agent: &Agent, id: &str) -> Result<ContainerRecord, Status> {
    let all = agent.store.list::<ContainerRecord>().map_err(|e| internal("store", e))?;
    let id = resolve_prefix(all.iter().map(|c| c.id.as_str()), id, "container")?;
    let rec = all.into_iter().find(|c| c.id == id).ok_or_else(|| Status::not_found(format!("container {id} not found")))?;
    refresh(agent, rec)
}

/// Like [`find`], for operations that need the container running.
pub fn find_running(agent: &Agent, id: &str) -> Result<ContainerRecord, Status> {
    let rec = find(agent, id)?;
    if rec.state != ContainerState::Running {
        return Err(Status::failed_precondition(format!("container {} is not running", rec.id)));
    }
    Ok(rec)
}

/// ExecSync's and Exec's command: a program must be named.
pub fn check_cmd(cmd: &[String]) -> Result<(), Status> {
    if cmd.first().is_none_or(|c| c.is_empty()) {
        return Err(Status::invalid_argument("cmd: must not be empty"));
    }
    Ok(())
}

fn find_opt(agent: &Agent, id: &str) -> Result<Option<ContainerRecord>, Status> {
    match find(agent, id) {
        Ok(c) => Ok(Some(c)),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(s),
    }
}

/// Folds a recorded exit status into the store if the monitor wrote one
/// (or vanished) since we last looked.
pub fn refresh(agent: &Agent, rec: ContainerRecord) -> Result<ContainerRecord, Status> {
    if !matches!(rec.state, ContainerState::Created | ContainerState::Running) {
        return Ok(rec);
    }
    let (code, finished, reason, message) = match agent.runtime.state(&bundle(agent, &rec.id)) {
        MonitorState::Running => return Ok(rec),
        MonitorState::Exited(s) => {
            let oom = s.signal == libc::SIGKILL && cgroup::oom_killed(&rec.cgroup);
            let reason = if oom {
                "OOMKilled"
            } else if s.code == 0 {
                "Completed"
            } else {
                "Error"
            };
            (s.code, s.finished_ns, reason.to_string(), rec.message.clone())
        }
        MonitorState::Lost => {
            (255, now_ns(), "Unknown".to_string(), "the container's monitor exited without recording a status".to_string())
        }
    };
    // Re-read inside the transaction: a concurrent fold may have won.
    let mut stopped = false;
    let updated = agent
        .store
        .write(|tx| {
            let Some(mut cur) = tx.get::<ContainerRecord>(&rec.id)? else { return Ok(None) };
            if matches!(cur.state, ContainerState::Created | ContainerState::Running) {
                stopped = true;
                cur.state = ContainerState::Exited;
                cur.exit_code = code;
                cur.finished_at_ns = finished;
                cur.reason = reason.clone();
                cur.message = message.clone();
                tx.put(&cur.id.clone(), &cur)?;
                tracing::info!(container_id = %cur.id, exit_code = code, "container exited");
            }
            Ok(Some(cur))
        })
        .map_err(|e| internal("store", e))?;
    if let (true, Some(c)) = (stopped, &updated) {
        crate::cri::events::emit(agent, c, cri::ContainerEventType::ContainerStoppedEvent);
    }
    Ok(updated.unwrap_or(rec))
}

/// Watches the monitor process and folds the exit in as soon as it goes.
pub fn watch(agent: &Arc<Agent>, id: String, monitor_pid: i32) {
    let agent = agent.clone();
    tokio::spawn(async move {
        if let Ok(fd) = berth_runtime::pidfd::pidfd_open(monitor_pid) {
            wait_fd(fd).await;
        }
        if let Ok(Some(rec)) = agent.store.get::<ContainerRecord>(&id) {
            let _ = refresh(&agent, rec);
        }
    });
}

async fn wait_fd(fd: OwnedFd) {
    // SAFETY: the AsyncFd owns the OwnedFd, which stays open and the same
    // until the AsyncFd is dropped.
    if let Ok(afd) = unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) } {
        let _ = afd.readable().await;
    }
}

/// Waits (bounded) for the monitor of `rec` to finish; true if it did.
async fn wait_exit(agent: &Agent, rec: &ContainerRecord, timeout: Duration) -> bool {
    let fd = match berth_runtime::pidfd::pidfd_open(rec.monitor_pid) {
        Ok(fd) => fd,
        // Already gone.
        Err(_) => return true,
    };
    let done = tokio::time::timeout(timeout, wait_fd(fd)).await.is_ok();
    done || !matches!(agent.runtime.state(&bundle(agent, &rec.id)), MonitorState::Running)
}

/// CreateContainer: validates, records the intent, builds the bundle and
/// starts the monitor; the init then waits for StartContainer.
pub async fn create(agent: &Arc<Agent>, pod_id: &str, config: cri::ContainerConfig) -> Result<String, Status> {
    let pod = crate::pod::find(agent, pod_id)?;
    if pod.state != PodState::Ready {
        return Err(Status::failed_precondition(format!("pod sandbox {} is not ready", pod.id)));
    }
    let meta = config.metadata.clone().unwrap_or_default();
    if meta.name.is_empty() {
        return Err(Status::invalid_argument("config.metadata.name: must not be empty"));
    }
    let image_name = config.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
    if image_name.is_empty() {
        return Err(Status::invalid_argument("config.image.image: must name an image"));
    }
    let image = agent
        .images
        .resolve(&image_name)
        .map_err(crate::cri::image::status_of)?
        .ok_or_else(|| Status::not_found(format!("image {image_name:?} not found: pull it first")))?;
    let name_key = format!("{}/{}/{}", pod.id, meta.name, meta.attempt);
    let check_agent = agent.clone();
    let check_key = name_key.clone();
    let check = move || {
        let all = check_agent.store.list::<ContainerRecord>().map_err(|e| internal("store", e))?;
        if let Some(c) = all.iter().find(|c| c.name_key() == check_key) {
            return Err(Status::already_exists(format!("container {check_key} already exists as {}", c.id)));
        }
        Ok(())
    };
    let agent2 = agent.clone();
    agent
        .flights
        .run(format!("ctr:{name_key}"), check, async move {
            let id = random_id().map_err(|e| internal("container id from the kernel's random source", e))?;
            let span = tracing::info_span!("container", container_id = %id, pod_id = %pod.id, name = %meta.name);
            tracing::Instrument::instrument(create_inner(agent2, pod, config, image, id), span).await
        })
        .await
}

async fn create_inner(
    agent: Arc<Agent>,
    pod: PodRecord,
    config: cri::ContainerConfig,
    image: crate::store::ImageRecord,
    id: String,
) -> Result<String, Status> {
    let meta = config.metadata.clone().unwrap_or_default();
    let layer = layer_dir(&agent, &id);
    let cgroup_path = format!("{}/{}", pod.cgroup, id);
    let paths = SpecPaths {
        state: agent.config.state.clone(),
        pod_dir: crate::pod::pod_dir(&agent, &pod.id),
        lower_dirs: agent.images.lower_dirs(&image).map_err(crate::cri::image::status_of)?,
        upper: layer.join("upper"),
        work: layer.join("work"),
        cgroup_procs: cgroup::procs_files_of(&cgroup_path),
        cgroup: cgroup_path.clone(),
        cgroup_v2: agent.cgroup_v2,
    };
    let limits = limits_from(config.linux.as_ref().and_then(|l| l.resources.as_ref()));
    limits.validate(agent.cgroup_v2).map_err(|e| Status::invalid_argument(format!("config.linux.resources.{e}")))?;
    let built = spec::build(&config, &pod, &image, &paths)?;
    let pid_ns = match built.pid_mode {
        ns_mode::NODE => PidNamespace::Host,
        ns_mode::POD if pod.init_pid > 0 => PidNamespace::Join { pid: pod.init_pid, start_time: pod.init_start_time },
        ns_mode::TARGET => {
            let target = find(&agent, &built.pid_target)?;
            if target.state != ContainerState::Running && target.state != ContainerState::Created {
                return Err(Status::failed_precondition(format!("target container {} is not running", target.id)));
            }
            PidNamespace::Join { pid: target.pid, start_time: target.start_time }
        }
        _ => PidNamespace::New,
    };
    let log_path = if pod.log_directory.is_empty() || config.log_path.is_empty() {
        String::new()
    } else {
        let p = PathBuf::from(&pod.log_directory).join(&config.log_path);
        if berth_runtime::fs::clean_relative(std::path::Path::new(&config.log_path)).is_err() {
            return Err(Status::invalid_argument(format!("config.log_path: {:?} leaves the pod's log directory", config.log_path)));
        }
        p.display().to_string()
    };
    let mut rec = ContainerRecord {
        id: id.clone(),
        pod_id: pod.id.clone(),
        name: meta.name.clone(),
        attempt: meta.attempt,
        state: ContainerState::Creating,
        created_at_ns: now_ns(),
        labels: config.labels.clone().into_iter().collect(),
        annotations: config.annotations.clone().into_iter().collect(),
        image: config.image.as_ref().map(|i| i.image.clone()).unwrap_or_default(),
        image_id: image.id.clone(),
        image_ref: image.repo_digests.first().cloned().unwrap_or_else(|| image.id.clone()),
        snapshot_chain: image.layers.iter().map(|l| l.chain_id.clone()).collect(),
        log_path: log_path.clone(),
        mounts: built.mounts.clone(),
        cgroup: cgroup_path.clone(),
        stop_signal: built.stop_signal,
        limits: limits.clone(),
        oom_score_adj: config.linux.as_ref().and_then(|l| l.resources.as_ref()).map(|r| r.oom_score_adj).unwrap_or(0),
        stdin: config.stdin,
        stdin_once: config.stdin_once,
        tty: config.tty,
        ..Default::default()
    };
    let stdio = berth_runtime::monitor::StdioOpts { stdin: config.stdin, stdin_once: config.stdin_once, tty: config.tty };
    agent.store.put(&id, &rec).map_err(|e| internal("store", e))?;

    let device_rules = spec_device_rules(&built.spec)?;
    let a = agent.clone();
    let spec = built.spec;
    let limits2 = limits.clone();
    let bundle_dir = bundle(&agent, &id);
    let made = tokio::task::spawn_blocking(move || -> Result<berth_runtime::Created, Status> {
        for d in [&layer, &layer.join("upper"), &layer.join("work")] {
            std::fs::create_dir_all(d).map_err(|e| internal(&d.display().to_string(), e))?;
        }
        cgroup::create(&cgroup_path).map_err(|e| internal("container cgroup", e))?;
        cgroup::apply(&cgroup_path, &limits2).map_err(|e| Status::invalid_argument(format!("config.linux.resources: {e}")))?;
        cgroup::apply_devices(&cgroup_path, &device_rules).map_err(|e| internal("container device cgroup", e))?;
        let log = if log_path.is_empty() { None } else { Some(PathBuf::from(&log_path)) };
        a.runtime.create(&id, &bundle_dir, &spec, log.as_deref(), &pid_ns, stdio).map_err(status_of)
    })
    .await
    .map_err(|e| internal("create task", e))?;
    match made {
        Ok(created) => {
            rec.state = ContainerState::Created;
            rec.pid = created.pid;
            rec.start_time = created.start_time;
            rec.monitor_pid = created.monitor_pid;
            rec.uid = created.uid as i64;
            rec.gid = created.gid as i64;
            rec.groups = created.groups.iter().map(|g| *g as i64).collect();
            agent.store.put(&rec.id, &rec).map_err(|e| internal("store", e))?;
            watch(&agent, rec.id.clone(), rec.monitor_pid);
            crate::cri::events::emit(&agent, &rec, cri::ContainerEventType::ContainerCreatedEvent);
            tracing::info!("container created");
            Ok(rec.id)
        }
        Err(status) => {
            tracing::warn!("container creation failed: {}", status.message());
            let a = agent.clone();
            let r = rec.clone();
            let _ = tokio::task::spawn_blocking(move || teardown(&a, &r)).await;
            let _ = agent.store.delete::<ContainerRecord>(&rec.id);
            Err(status)
        }
    }
}

/// The device cgroup rules of a spec, in the executor's terms.
fn spec_device_rules(spec: &oci_spec::runtime::Spec) -> Result<Vec<cgroup::DeviceRule>, Status> {
    let rules = spec.linux().as_ref().and_then(|l| l.resources().as_ref()).and_then(|r| r.devices().clone()).unwrap_or_default();
    rules.iter().map(|r| cgroup::DeviceRule::from_oci(r).map_err(|e| internal("device rules", e))).collect()
}

/// Removes every host resource of a container (idempotent).
fn teardown(agent: &Agent, rec: &ContainerRecord) {
    if !rec.cgroup.is_empty() {
        if let Err(e) = cgroup::remove(&rec.cgroup) {
            tracing::warn!(container_id = %rec.id, "removing cgroup: {e}");
        }
    }
    for dir in [bundle(agent, &rec.id), layer_dir(agent, &rec.id)] {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(container_id = %rec.id, "removing {}: {e}", dir.display());
            }
        }
    }
}

/// StartContainer.
pub async fn start(agent: &Arc<Agent>, id: &str) -> Result<(), Status> {
    let rec = find(agent, id)?;
    let lock = agent.locks.get(&rec.id);
    let _held = lock.lock().await;
    let mut rec = find(agent, &rec.id)?;
    match rec.state {
        ContainerState::Created => {}
        ContainerState::Running => return Err(Status::failed_precondition(format!("container {} is already running", rec.id))),
        _ => return Err(Status::failed_precondition(format!("container {} is {:?}, not created", rec.id, rec.state))),
    }
    let a = agent.clone();
    let (cid, bdir) = (rec.id.clone(), bundle(agent, &rec.id));
    let started = tokio::task::spawn_blocking(move || a.runtime.start(&cid, &bdir)).await.map_err(|e| internal("start task", e))?;
    match started {
        Ok(()) => {
            rec.state = ContainerState::Running;
            rec.started_at_ns = now_ns();
            agent.store.put(&rec.id, &rec).map_err(|e| internal("store", e))?;
            crate::cri::events::emit(agent, &rec, cri::ContainerEventType::ContainerStartedEvent);
            tracing::info!(container_id = %rec.id, "container started");
            Ok(())
        }
        Err(e) => {
            let status = status_of(e);
            rec.message = status.message().to_string();
            rec.started_at_ns = now_ns();
            agent.store.put(&rec.id, &rec).map_err(|e| internal("store", e))?;
            // The init exits; its monitor records the status shortly.
            let _ = wait_exit(agent, &rec, Duration::from_secs(5)).await;
            let _ = refresh(agent, rec);
            Err(status)
        }
    }
}

/// StopContainer: the stop signal, `timeout` seconds, then SIGKILL to every
/// process of the container. Stopped or unknown containers are fine.
pub async fn stop(agent: &Arc<Agent>, id: &str, timeout_s: i64) -> Result<(), Status> {
    let Some(rec) = find_opt(agent, id)? else { return Ok(()) };
    let lock = agent.locks.get(&rec.id);
    let _held = lock.lock().await;
    let Some(rec) = find_opt(agent, &rec.id)? else { return Ok(()) };
    if !matches!(rec.state, ContainerState::Created | ContainerState::Running) {
        return Ok(());
    }
    let bdir = bundle(agent, &rec.id);
    if rec.state == ContainerState::Running && timeout_s > 0 {
        let _ = agent.runtime.signal(&rec.id, &bdir, rec.stop_signal);
        if wait_exit(agent, &rec, Duration::from_secs(timeout_s as u64)).await {
            refresh(agent, rec)?;
            return Ok(());
        }
        tracing::info!(container_id = %rec.id, "stop timeout of {timeout_s}s passed: killing");
    }
    let _ = agent.runtime.signal(&rec.id, &bdir, libc::SIGKILL);
    let cg = rec.cgroup.clone();
    let _ = tokio::task::spawn_blocking(move || cgroup::signal_all(&cg, nix::sys::signal::Signal::SIGKILL)).await;
    if !wait_exit(agent, &rec, Duration::from_secs(10)).await {
        return Err(Status::internal(format!("container {} did not exit after SIGKILL", rec.id)));
    }
    refresh(agent, rec)?;
    Ok(())
}

/// RemoveContainer: force-stops a running container, then removes it.
/// Unknown containers are fine.
pub async fn remove(agent: &Arc<Agent>, id: &str) -> Result<(), Status> {
    let Some(rec) = find_opt(agent, id)? else { return Ok(()) };
    stop(agent, &rec.id, 0).await?;
    let lock = agent.locks.get(&rec.id);
    let _held = lock.lock().await;
    let a = agent.clone();
    let r = rec.clone();
    tokio::task::spawn_blocking(move || teardown(&a, &r)).await.map_err(|e| internal("teardown task", e))?;
    agent.store.delete::<ContainerRecord>(&rec.id).map_err(|e| internal("store", e))?;
    agent.cpu_samples.forget(&rec.cgroup);
    crate::cri::events::emit(agent, &rec, cri::ContainerEventType::ContainerDeletedEvent);
    tracing::info!(container_id = %rec.id, "container removed");
    Ok(())
}

/// ReopenContainerLog.
pub async fn reopen_log(agent: &Arc<Agent>, id: &str) -> Result<(), Status> {
    let rec = find_running(agent, id)?;
    let a = agent.clone();
    let bdir = bundle(agent, &rec.id);
    tokio::task::spawn_blocking(move || a.runtime.reopen_log(&rec.id, &bdir))
        .await
        .map_err(|e| internal("reopen task", e))?
        .map_err(status_of)
}

/// ExecSync: runs `cmd` in the container; output capped, `timeout_s` > 0 kills.
pub async fn exec_sync(agent: &Arc<Agent>, id: &str, cmd: Vec<String>, timeout_s: i64) -> Result<cri::ExecSyncResponse, Status> {
    check_cmd(&cmd)?;
    let rec = find_running(agent, id)?;
    let mut helper =
        agent.runtime.exec_helper(&bundle(agent, &rec.id), rec.pid, rec.start_time, &cmd, false).map_err(|e| internal("exec helper", e))?;
    let std_cmd = std::mem::replace(&mut helper.command, std::process::Command::new("/"));
    let mut command = tokio::process::Command::from(std_cmd);
    command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| internal("exec helper", e))?;
    helper.spawned();
    let out = read_capped(child.stdout.take());
    let err = read_capped(child.stderr.take());
    let run = async {
        let (out, err, status) = tokio::join!(out, err, child.wait());
        (out, err, status)
    };
    let (stdout, stderr, status) = if timeout_s > 0 {
        match tokio::time::timeout(Duration::from_secs(timeout_s as u64), run).await {
            Ok(v) => v,
            Err(_) => {
                // kill_on_drop ends the helper; PDEATHSIG ends the command.
                return Err(Status::deadline_exceeded(format!("command {:?} timed out after {timeout_s}s", cmd[0])));
            }
        }
    } else {
        run.await
    };
    let status = status.map_err(|e| internal("exec helper", e))?;
    if let Some(e) = exec_report(helper.report).await {
        return Err(status_of(RuntimeError::Init(e)));
    }
    Ok(cri::ExecSyncResponse { stdout, stderr, exit_code: status.code().unwrap_or(255) })
}

/// What an exec helper reported on its report channel once it has exited:
/// why the command could not be started, or None when it ran.
pub async fn exec_report(report: OwnedFd) -> Option<berth_runtime::message::InitError> {
    let mut buf = Vec::new();
    let mut f = tokio::fs::File::from_std(std::fs::File::from(report));
    f.read_to_end(&mut buf).await.ok()?;
    match berth_runtime::channel::take::<berth_runtime::message::ExecReport>(&mut buf) {
        Ok(Some(berth_runtime::message::ExecReport::Failed(e))) => Some(e),
        _ => None,
    }
}

async fn read_capped<R: tokio::io::AsyncRead + Unpin>(reader: Option<R>) -> Vec<u8> {
    let Some(mut r) = reader else { return Vec::new() };
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => {
                let room = EXEC_OUTPUT_CAP.saturating_sub(out.len());
                out.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// Start-up: interrupted creations are cleaned up; live containers are
/// watched again; exits that happened while berthd was away are folded in.
pub async fn recover(agent: &Arc<Agent>) -> Result<(), Status> {
    for rec in agent.store.list::<ContainerRecord>().map_err(|e| internal("store", e))? {
        match rec.state {
            ContainerState::Creating => {
                tracing::warn!(container_id = %rec.id, "cleaning up a container whose creation was interrupted");
                if rec.monitor_pid > 0 {
                    let _ = agent.runtime.signal(&rec.id, &bundle(agent, &rec.id), libc::SIGKILL);
                }
                let a = agent.clone();
                let r = rec.clone();
                let _ = tokio::task::spawn_blocking(move || teardown(&a, &r)).await;
                let _ = agent.store.delete::<ContainerRecord>(&rec.id);
            }
            ContainerState::Created | ContainerState::Running => {
                let rec = refresh(agent, rec)?;
                if matches!(rec.state, ContainerState::Created | ContainerState::Running) {
                    watch(agent, rec.id.clone(), rec.monitor_pid);
                }
            }
            ContainerState::Exited => {}
        }
    }
    Ok(())
}

/// CRI resources → cgroup limits.
pub fn limits_from(r: Option<&cri::LinuxContainerResources>) -> cgroup::Limits {
    let Some(r) = r else { return cgroup::Limits::default() };
    cgroup::Limits {
        cpu_shares: r.cpu_shares.max(0) as u64,
        cpu_quota: r.cpu_quota,
        cpu_period: r.cpu_period.max(0) as u64,
        cpuset_cpus: r.cpuset_cpus.clone(),
        cpuset_mems: r.cpuset_mems.clone(),
        memory_limit: r.memory_limit_in_bytes,
        memory_swap: r.memory_swap_limit_in_bytes,
        hugepages: r.hugepage_limits.iter().map(|h| (h.page_size.clone(), h.limit)).collect(),
        unified: r.unified.clone().into_iter().collect(),
    }
}

/// UpdateContainerResources: validates and applies the limits live.
pub async fn update_resources(agent: &Arc<Agent>, id: &str, resources: Option<cri::LinuxContainerResources>) -> Result<(), Status> {
    let rec = find(agent, id)?;
    let lock = agent.locks.get(&rec.id);
    let _held = lock.lock().await;
    let mut rec = find(agent, &rec.id)?;
    if !matches!(rec.state, ContainerState::Created | ContainerState::Running) {
        return Err(Status::failed_precondition(format!("container {} is not running", rec.id)));
    }
    let limits = limits_from(resources.as_ref());
    limits.validate(agent.cgroup_v2).map_err(|e| Status::invalid_argument(format!("linux.{e}")))?;
    let (path, l) = (rec.cgroup.clone(), limits.clone());
    tokio::task::spawn_blocking(move || cgroup::apply(&path, &l))
        .await
        .map_err(|e| internal("update task", e))?
        .map_err(|e| Status::invalid_argument(format!("linux: {e}")))?;
    rec.limits = limits;
    agent.store.put(&rec.id, &rec).map_err(|e| internal("store", e))?;
    tracing::info!(container_id = %rec.id, "container resources updated");
    Ok(())
}

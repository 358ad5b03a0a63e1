//! CRI messages ↔ the domain's types: wire validation of what a message
//! alone can tell, and the statuses a record answers with.

use std::collections::{BTreeMap, HashMap};

use berth_proto::cri;

use crate::error::{Error, Result};
use crate::model::{
    ContainerRequest, DeviceRequest, MountRequest, NamespaceMode, Profile, Propagation, Resources, SecurityRequest, UserNamespaceRequest,
};
use crate::store::{ContainerRecord, ContainerState, PodRecord, PodState};

/// CRI's NamespaceMode number as the domain's.
pub fn namespace_mode(field: &str, mode: i32) -> Result<NamespaceMode> {
    match cri::NamespaceMode::try_from(mode) {
        Ok(cri::NamespaceMode::Pod) => Ok(NamespaceMode::Pod),
        Ok(cri::NamespaceMode::Container) => Ok(NamespaceMode::Container),
        Ok(cri::NamespaceMode::Node) => Ok(NamespaceMode::Node),
        Ok(cri::NamespaceMode::Target) => Ok(NamespaceMode::Target),
        Err(_) => Err(Error::invalid(field, format!("{mode} is not a namespace mode"))),
    }
}

/// A CRI security profile (or the deprecated path form older kubelets send).
fn profile(field: &str, p: Option<&cri::SecurityProfile>, legacy_path: &str) -> Result<Profile> {
    use cri::security_profile::ProfileType;
    let Some(p) = p else {
        return match legacy_path {
            "" => Ok(Profile::Unset),
            "unconfined" => Ok(Profile::Unconfined),
            "runtime/default" | "docker/default" => Ok(Profile::RuntimeDefault),
            // seccomp's form is localhost/<absolute path>, AppArmor's localhost/<profile name>.
            p if p.starts_with("localhost/") && field == "seccomp" => {
                Ok(Profile::Localhost(format!("/{}", p["localhost".len()..].trim_start_matches('/'))))
            }
            p if p.starts_with("localhost/") => Ok(Profile::Localhost(p["localhost/".len()..].to_string())),
            p => Err(Error::invalid(
                format!("{field}_profile_path"),
                format!("{p:?} is not runtime/default, unconfined or localhost/<path>"),
            )),
        };
    };
    match ProfileType::try_from(p.profile_type) {
        Ok(ProfileType::RuntimeDefault) => Ok(Profile::RuntimeDefault),
        Ok(ProfileType::Unconfined) => Ok(Profile::Unconfined),
        Ok(ProfileType::Localhost) => Ok(Profile::Localhost(p.localhost_ref.clone())),
        Err(_) => Err(Error::invalid(format!("{field}.profile_type"), format!("{} is not a profile type", p.profile_type))),
    }
}

/// CRI resources as cgroup limits and oom_score_adj.
pub fn resources(r: Option<&cri::LinuxContainerResources>) -> Resources {
    let Some(r) = r else { return Resources::default() };
    Resources {
        limits: berth_runtime::cgroup::Limits {
            cpu_shares: r.cpu_shares.max(0) as u64,
            cpu_quota: r.cpu_quota,
            cpu_period: r.cpu_period.max(0) as u64,
            cpuset_cpus: r.cpuset_cpus.clone(),
            cpuset_mems: r.cpuset_mems.clone(),
            memory_limit: r.memory_limit_in_bytes,
            memory_swap: r.memory_swap_limit_in_bytes,
            hugepages: r.hugepage_limits.iter().map(|h| (h.page_size.clone(), h.limit)).collect(),
            unified: r.unified.clone().into_iter().collect(),
        },
        oom_score_adj: r.oom_score_adj,
    }
}

fn id_maps(maps: &[cri::IdMapping]) -> Vec<berth_runtime::userns::IdMap> {
    maps.iter().map(|m| berth_runtime::userns::IdMap { container_id: m.container_id, host_id: m.host_id, size: m.length }).collect()
}

/// CRI's id mappings, checked (`field` names them in the error).
fn mappings(field: &str, uids: &[cri::IdMapping], gids: &[cri::IdMapping]) -> Result<berth_runtime::userns::Mappings> {
    let m = berth_runtime::userns::Mappings { uids: id_maps(uids), gids: id_maps(gids) };
    m.check().map_err(|e| Error::invalid(field, e))?;
    Ok(m)
}

/// The user namespace a `UserNamespace` asks for: POD with kubelet's
/// mappings (checked as the kernel and berth need them), NODE with none;
/// CONTAINER and TARGET are not modes kubelet uses and are refused.
pub fn user_namespace(field: &str, userns: Option<&cri::UserNamespace>) -> Result<UserNamespaceRequest> {
    let Some(u) = userns else { return Ok(UserNamespaceRequest::Unset) };
    match cri::NamespaceMode::try_from(u.mode) {
        Ok(cri::NamespaceMode::Node) if u.uids.is_empty() && u.gids.is_empty() => Ok(UserNamespaceRequest::Node),
        Ok(cri::NamespaceMode::Node) => Err(Error::invalid(field, "mappings are given with mode NODE (the node's ids)")),
        Ok(cri::NamespaceMode::Pod) => Ok(UserNamespaceRequest::Pod(mappings(field, &u.uids, &u.gids)?)),
        Ok(other) => Err(Error::invalid(format!("{field}.mode"), format!("{} is not supported for a user namespace", other.as_str_name()))),
        Err(_) => Err(Error::invalid(format!("{field}.mode"), format!("{} is not a namespace mode", u.mode))),
    }
}

/// How a pod's user namespace shows in its status (kubelet reads it back).
pub fn userns_status(m: Option<&berth_runtime::userns::Mappings>) -> Option<cri::UserNamespace> {
    let conv = |maps: &[berth_runtime::userns::IdMap]| {
        maps.iter().map(|r| cri::IdMapping { host_id: r.host_id, container_id: r.container_id, length: r.size }).collect()
    };
    Some(match m {
        Some(m) => cri::UserNamespace { mode: cri::NamespaceMode::Pod as i32, uids: conv(&m.uids), gids: conv(&m.gids) },
        None => cri::UserNamespace { mode: cri::NamespaceMode::Node as i32, ..Default::default() },
    })
}

fn security(sc: Option<&cri::LinuxContainerSecurityContext>) -> Result<SecurityRequest> {
    let Some(sc) = sc else { return Ok(SecurityRequest::default()) };
    let caps = sc.capabilities.clone().unwrap_or_default();
    let ns = sc.namespace_options.clone().unwrap_or_default();
    let userns = user_namespace("config.linux.security_context.namespace_options.userns_options", ns.userns_options.as_ref())?;
    // The deprecated path forms are still what older kubelets send.
    #[allow(deprecated)]
    let (seccomp_path, apparmor_path) = (sc.seccomp_profile_path.as_str(), sc.apparmor_profile.as_str());
    Ok(SecurityRequest {
        privileged: sc.privileged,
        run_as_user: sc.run_as_user.as_ref().map(|v| v.value),
        run_as_group: sc.run_as_group.as_ref().map(|v| v.value),
        run_as_username: sc.run_as_username.clone(),
        supplemental_groups: sc.supplemental_groups.clone(),
        strict_groups: sc.supplemental_groups_policy == cri::SupplementalGroupsPolicy::Strict as i32,
        readonly_rootfs: sc.readonly_rootfs,
        no_new_privs: sc.no_new_privs,
        add_capabilities: caps.add_capabilities,
        drop_capabilities: caps.drop_capabilities,
        add_ambient_capabilities: caps.add_ambient_capabilities,
        seccomp: profile("seccomp", sc.seccomp.as_ref(), seccomp_path)?,
        apparmor: profile("apparmor", sc.apparmor.as_ref(), apparmor_path)?,
        masked_paths: Some(sc.masked_paths.clone()).filter(|v| !v.is_empty()),
        readonly_paths: Some(sc.readonly_paths.clone()).filter(|v| !v.is_empty()),
        pid: namespace_mode("namespace_options.pid", ns.pid)?,
        pid_target: ns.target_id,
        userns,
    })
}

/// CreateContainer's config as the domain's request.
pub fn container_request(config: cri::ContainerConfig) -> Result<ContainerRequest> {
    let meta = config.metadata.clone().unwrap_or_default();
    let linux = config.linux.clone().unwrap_or_default();
    let mut mounts = Vec::new();
    for (i, m) in config.mounts.iter().enumerate() {
        let propagation = match cri::MountPropagation::try_from(m.propagation) {
            Ok(cri::MountPropagation::PropagationPrivate) => Propagation::Private,
            Ok(cri::MountPropagation::PropagationHostToContainer) => Propagation::HostToContainer,
            Ok(cri::MountPropagation::PropagationBidirectional) => Propagation::Bidirectional,
            Err(_) => {
                return Err(Error::invalid(format!("config.mounts[{i}].propagation"), format!("{} is not a propagation", m.propagation)))
            }
        };
        let idmap = if m.uid_mappings.is_empty() && m.gid_mappings.is_empty() {
            None
        } else {
            Some(mappings(&format!("config.mounts[{i}].uid_mappings"), &m.uid_mappings, &m.gid_mappings)?)
        };
        mounts.push(MountRequest {
            container_path: m.container_path.clone(),
            host_path: m.host_path.clone(),
            readonly: m.readonly,
            propagation,
            recursive_read_only: m.recursive_read_only,
            image: m.image.as_ref().map(|i| i.image.clone()).unwrap_or_default(),
            idmap,
            image_sub_path: m.image_sub_path.clone(),
        });
    }
    Ok(ContainerRequest {
        name: meta.name,
        attempt: meta.attempt,
        image: config.image.as_ref().map(|i| i.image.clone()).unwrap_or_default(),
        user_image: config.image.as_ref().map(|i| i.user_specified_image.clone()).unwrap_or_default(),
        command: config.command,
        args: config.args,
        working_dir: config.working_dir,
        envs: config.envs.into_iter().map(|kv| (kv.key, kv.value)).collect(),
        mounts,
        devices: config
            .devices
            .into_iter()
            .map(|d| DeviceRequest { container_path: d.container_path, host_path: d.host_path, permissions: d.permissions })
            .collect(),
        labels: config.labels.into_iter().collect(),
        annotations: config.annotations.into_iter().collect(),
        log_path: config.log_path,
        stdin: config.stdin,
        stdin_once: config.stdin_once,
        tty: config.tty,
        resources: resources(linux.resources.as_ref()),
        security: security(linux.security_context.as_ref())?,
        stop_signal: signal_number(config.stop_signal)?,
    })
}

/// The CRI `Signal`s, in enum order from 1 (0 is RUNTIME_DEFAULT), as the
/// kernel's numbers. The names after SIGXFSZ are the realtime signals
/// SIGRTMIN to SIGRTMAX, numbered as the kernel does ([`berth_runtime::signal`]).
const SIGNALS: [i32; 34] = [
    libc::SIGABRT,
    libc::SIGALRM,
    libc::SIGBUS,
    libc::SIGCHLD,
    libc::SIGCHLD, // SIGCLD
    libc::SIGCONT,
    libc::SIGFPE,
    libc::SIGHUP,
    libc::SIGILL,
    libc::SIGINT,
    libc::SIGIO,
    libc::SIGABRT, // SIGIOT
    libc::SIGKILL,
    libc::SIGPIPE,
    libc::SIGIO, // SIGPOLL
    libc::SIGPROF,
    libc::SIGPWR,
    libc::SIGQUIT,
    libc::SIGSEGV,
    libc::SIGSTKFLT,
    libc::SIGSTOP,
    libc::SIGSYS,
    libc::SIGTERM,
    libc::SIGTRAP,
    libc::SIGTSTP,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGURG,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGVTALRM,
    libc::SIGWINCH,
    libc::SIGXCPU,
    libc::SIGXFSZ,
];

/// The enum value of SIGRTMIN; SIGRTMAX's is 30 later, as the kernel's.
const SIGRTMIN_VALUE: i32 = 35;
/// The kernel's realtime signals.
const RT_SIGNALS: std::ops::RangeInclusive<i32> = berth_runtime::signal::RTMIN..=berth_runtime::signal::RTMAX;

/// ContainerConfig.stop_signal as a signal number: None for RUNTIME_DEFAULT.
fn signal_number(value: i32) -> Result<Option<i32>> {
    match value {
        0 => Ok(None),
        1..=34 => Ok(Some(SIGNALS[value as usize - 1])),
        SIGRTMIN_VALUE..=65 => Ok(Some(value - SIGRTMIN_VALUE + RT_SIGNALS.start())),
        _ => Err(Error::invalid("config.stop_signal", format!("{value} is not a CRI signal"))),
    }
}

/// A signal number as the CRI `Signal` a status reports: the first name of
/// the number (SIGCHLD before SIGCLD), RUNTIME_DEFAULT for one CRI cannot name.
fn signal_value(number: i32) -> i32 {
    if RT_SIGNALS.contains(&number) {
        return number - RT_SIGNALS.start() + SIGRTMIN_VALUE;
    }
    SIGNALS.iter().position(|&n| n == number).map_or(0, |i| i as i32 + 1)
}

/// True when every `k=v` of the selector is among the labels.
pub fn labels_match(labels: &BTreeMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A pod's CRI state.
pub fn pod_state(s: PodState) -> i32 {
    match s {
        PodState::Ready => cri::PodSandboxState::SandboxReady as i32,
        _ => cri::PodSandboxState::SandboxNotready as i32,
    }
}

/// A container's CRI state.
pub fn container_state(s: ContainerState) -> i32 {
    match s {
        ContainerState::Creating | ContainerState::Created => cri::ContainerState::ContainerCreated as i32,
        ContainerState::Running => cri::ContainerState::ContainerRunning as i32,
        ContainerState::Exited => cri::ContainerState::ContainerExited as i32,
    }
}

/// A pod's CRI metadata.
pub fn pod_metadata(p: &PodRecord) -> cri::PodSandboxMetadata {
    cri::PodSandboxMetadata { name: p.name.clone(), uid: p.uid.clone(), namespace: p.namespace.clone(), attempt: p.attempt }
}

/// A container's CRI metadata.
pub fn container_metadata(c: &ContainerRecord) -> cri::ContainerMetadata {
    cri::ContainerMetadata { name: c.name.clone(), attempt: c.attempt }
}

fn map(m: &BTreeMap<String, String>) -> HashMap<String, String> {
    m.clone().into_iter().collect()
}

/// The CRI status of a pod record.
pub fn pod_status(p: &PodRecord) -> cri::PodSandboxStatus {
    let ns = cri::NamespaceOption {
        network: p.network_mode,
        pid: p.pid_mode,
        ipc: p.ipc_mode,
        userns_options: userns_status(p.userns.as_ref()),
        ..Default::default()
    };
    cri::PodSandboxStatus {
        id: p.id.clone(),
        metadata: Some(pod_metadata(p)),
        state: pod_state(p.state),
        created_at: p.created_at_ns,
        network: Some(cri::PodSandboxNetworkStatus {
            ip: p.ips.first().cloned().unwrap_or_default(),
            additional_ips: p.ips.iter().skip(1).map(|ip| cri::PodIp { ip: ip.clone() }).collect(),
        }),
        linux: Some(cri::LinuxPodSandboxStatus { namespaces: Some(cri::Namespace { options: Some(ns) }) }),
        labels: map(&p.labels),
        annotations: map(&p.annotations),
        runtime_handler: p.runtime_handler.clone(),
    }
}

/// The CRI listing of a pod record.
pub fn pod_sandbox(p: &PodRecord) -> cri::PodSandbox {
    cri::PodSandbox {
        id: p.id.clone(),
        metadata: Some(pod_metadata(p)),
        state: pod_state(p.state),
        created_at: p.created_at_ns,
        labels: map(&p.labels),
        annotations: map(&p.annotations),
        runtime_handler: p.runtime_handler.clone(),
    }
}

fn image_spec(c: &ContainerRecord) -> cri::ImageSpec {
    cri::ImageSpec { image: c.image.clone(), user_specified_image: c.user_image.clone(), ..Default::default() }
}

/// The CRI listing of a container record.
pub fn container(c: &ContainerRecord) -> cri::Container {
    cri::Container {
        id: c.id.clone(),
        pod_sandbox_id: c.pod_id.clone(),
        metadata: Some(container_metadata(c)),
        image: Some(image_spec(c)),
        image_ref: c.image_ref.clone(),
        state: container_state(c.state),
        created_at: c.created_at_ns,
        labels: map(&c.labels),
        annotations: map(&c.annotations),
        image_id: c.image_id.clone(),
    }
}

/// The CRI status of a container record.
pub fn container_status(c: &ContainerRecord) -> cri::ContainerStatus {
    cri::ContainerStatus {
        id: c.id.clone(),
        metadata: Some(container_metadata(c)),
        state: container_state(c.state),
        created_at: c.created_at_ns,
        started_at: c.started_at_ns,
        finished_at: c.finished_at_ns,
        exit_code: c.exit_code,
        image: Some(image_spec(c)),
        image_ref: c.image_ref.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        labels: map(&c.labels),
        annotations: map(&c.annotations),
        mounts: c
            .mounts
            .iter()
            .map(|m| cri::Mount {
                container_path: m.container_path.clone(),
                host_path: m.host_path.clone(),
                readonly: m.readonly,
                propagation: m.propagation,
                recursive_read_only: m.recursive_read_only,
                // An image volume: its id, and the reference as asked for;
                // image_ref (KEP-5365) names what was mounted, whatever the
                // reference names now.
                image: (!m.image.is_empty()).then(|| cri::ImageSpec {
                    image: m.image_id.clone(),
                    user_specified_image: m.image.clone(),
                    image_ref: m.image_id.clone(),
                    ..Default::default()
                }),
                image_sub_path: m.image_sub_path.clone(),
                ..Default::default()
            })
            .collect(),
        log_path: c.log_path.clone(),
        stop_signal: signal_value(c.stop_signal),
        resources: Some(cri::ContainerResources {
            linux: Some(cri::LinuxContainerResources {
                cpu_period: c.limits.cpu_period as i64,
                cpu_quota: c.limits.cpu_quota,
                cpu_shares: c.limits.cpu_shares as i64,
                memory_limit_in_bytes: c.limits.memory_limit,
                oom_score_adj: c.oom_score_adj,
                cpuset_cpus: c.limits.cpuset_cpus.clone(),
                cpuset_mems: c.limits.cpuset_mems.clone(),
                memory_swap_limit_in_bytes: c.limits.memory_swap,
                unified: c.limits.unified.clone().into_iter().collect(),
                ..Default::default()
            }),
            windows: None,
        }),
        image_id: c.image_id.clone(),
        user: Some(cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser { uid: c.uid, gid: c.gid, supplemental_groups: c.groups.clone() }),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_signals_are_the_kernels_numbers() {
        // Each name of the proto's enum, against the kernel's number for it
        // (nix knows the standard names; aliases and realtime ones by hand).
        for value in 1..=65 {
            let name = cri::Signal::try_from(value).expect("a value of the enum").as_str_name();
            let want = match name {
                "SIGCLD" => libc::SIGCHLD,
                "SIGIOT" => libc::SIGABRT,
                "SIGPOLL" => libc::SIGIO,
                "SIGRTMIN" => 34,
                "SIGRTMAX" => 64,
                n if n.starts_with("SIGRTMINPLUS") => 34 + n["SIGRTMINPLUS".len()..].parse::<i32>().unwrap(),
                n if n.starts_with("SIGRTMAXMINUS") => 64 - n["SIGRTMAXMINUS".len()..].parse::<i32>().unwrap(),
                n => n.parse::<nix::sys::signal::Signal>().unwrap_or_else(|_| panic!("{n} is no signal nix knows")) as i32,
            };
            assert_eq!(signal_number(value).unwrap(), Some(want), "{name}");
        }
        assert_eq!(signal_number(0).unwrap(), None, "RUNTIME_DEFAULT leaves the choice to the image");
        for bad in [66, -1, 1000] {
            let e = signal_number(bad).unwrap_err();
            assert!(e.to_string().starts_with("config.stop_signal: "), "{e}");
        }
    }

    #[test]
    fn a_status_names_the_signal_by_its_first_name() {
        let name = |n: i32| cri::Signal::try_from(signal_value(n)).unwrap().as_str_name();
        assert_eq!(name(libc::SIGTERM), "SIGTERM");
        assert_eq!(name(libc::SIGCHLD), "SIGCHLD");
        assert_eq!(name(libc::SIGABRT), "SIGABRT");
        assert_eq!(name(libc::SIGIO), "SIGIO");
        assert_eq!(name(34), "SIGRTMIN");
        assert_eq!(name(35), "SIGRTMINPLUS1");
        assert_eq!(name(63), "SIGRTMAXMINUS1");
        assert_eq!(name(64), "SIGRTMAX");
        // glibc's own 32 and 33 have no CRI name.
        assert_eq!(signal_value(32), 0);
        for n in (1..=64).filter(|n| !(32..=33).contains(n)) {
            assert_eq!(signal_number(signal_value(n)).unwrap(), Some(n), "signal {n}");
        }
    }

    #[test]
    fn profiles_from_fields_and_legacy_paths() {
        use cri::security_profile::ProfileType;
        let rd = cri::SecurityProfile { profile_type: ProfileType::RuntimeDefault as i32, localhost_ref: String::new() };
        assert_eq!(profile("seccomp", Some(&rd), "").unwrap(), Profile::RuntimeDefault);
        assert_eq!(profile("seccomp", None, "").unwrap(), Profile::Unset);
        assert_eq!(profile("seccomp", None, "localhost//etc/p.json").unwrap(), Profile::Localhost("/etc/p.json".into()));
        assert!(profile("seccomp", None, "bogus").unwrap_err().to_string().starts_with("seccomp_profile_path:"));
    }

    #[test]
    fn records_answer_with_cri_states() {
        for (state, want) in [
            (ContainerState::Creating, cri::ContainerState::ContainerCreated),
            (ContainerState::Created, cri::ContainerState::ContainerCreated),
            (ContainerState::Running, cri::ContainerState::ContainerRunning),
            (ContainerState::Exited, cri::ContainerState::ContainerExited),
        ] {
            let c = ContainerRecord { id: "c1".into(), name: "web".into(), attempt: 1, state, exit_code: 3, ..Default::default() };
            let s = container_status(&c);
            assert_eq!((s.state, s.exit_code, s.metadata.unwrap().name), (want as i32, 3, "web".to_string()));
        }
        let p = PodRecord { id: "p1".into(), state: PodState::Ready, ips: vec!["10.0.0.2".into(), "fd00::2".into()], ..Default::default() };
        let s = pod_status(&p);
        assert_eq!(s.state, cri::PodSandboxState::SandboxReady as i32);
        let net = s.network.unwrap();
        assert_eq!((net.ip.as_str(), net.additional_ips[0].ip.as_str()), ("10.0.0.2", "fd00::2"));
        assert_eq!(pod_state(PodState::NotReady), cri::PodSandboxState::SandboxNotready as i32);
        assert!(labels_match(&[("a".to_string(), "1".to_string())].into(), &[("a".to_string(), "1".to_string())].into()));
        assert!(!labels_match(&BTreeMap::new(), &[("a".to_string(), "1".to_string())].into()));
    }

    #[test]
    fn container_config_becomes_a_request() {
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata { name: "c".into(), attempt: 2 }),
            image: Some(cri::ImageSpec { image: "busybox".into(), ..Default::default() }),
            envs: vec![cri::KeyValue { key: "A".into(), value: "1".into() }],
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(cri::NamespaceOption { pid: 1, ..Default::default() }),
                    supplemental_groups_policy: cri::SupplementalGroupsPolicy::Strict as i32,
                    ..Default::default()
                }),
                resources: Some(cri::LinuxContainerResources { cpu_shares: 512, oom_score_adj: 5, ..Default::default() }),
            }),
            ..Default::default()
        };
        let r = container_request(config).unwrap();
        assert_eq!((r.name.as_str(), r.attempt, r.image.as_str()), ("c", 2, "busybox"));
        assert_eq!(r.envs, vec![("A".to_string(), "1".to_string())]);
        assert_eq!((r.security.pid, r.security.strict_groups), (NamespaceMode::Container, true));
        assert_eq!((r.resources.limits.cpu_shares, r.resources.oom_score_adj), (512, 5));
        let bad = cri::ContainerConfig { mounts: vec![cri::Mount { propagation: 9, ..Default::default() }], ..Default::default() };
        assert!(container_request(bad).unwrap_err().to_string().contains("config.mounts[0].propagation"));
    }
}

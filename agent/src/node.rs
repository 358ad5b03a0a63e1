//! The node: everything berthd knows and runs — config, store and its
//! in-memory indexes, images, pod network, executor, streaming server,
//! events. The lifecycle modules (`pod`, `container`, `stats`) act on it;
//! `cri/` only translates. Nothing here knows gRPC.

use std::path::PathBuf;
use std::sync::Arc;

use berth_runtime::sandbox::PrivateDir;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::events::Events;
use crate::index::Table;
use crate::store::{ContainerRecord, PodRecord, Store};

/// The store setting holding the pod CIDR from `UpdateRuntimeConfig`.
pub const POD_CIDR_SETTING: &str = "pod_cidr";

/// A RuntimeClass handler, resolved from its config.
pub struct Handler {
    /// Its executor (its monitor binary).
    pub runtime: berth_runtime::Runtime,
    /// cgroup parent for pods without one, normalised.
    pub cgroup_parent: String,
    /// What containers that would run unconfined get.
    pub default_seccomp: crate::config::DefaultSeccomp,
}

/// The node's state and services.
pub struct Node {
    /// The configuration berthd started with.
    pub config: Config,
    /// The configuration in effect now: `config` with what a reload
    /// (SIGHUP) changed live.
    pub live: std::sync::RwLock<Config>,
    /// The metadata store.
    pub store: Arc<Store>,
    /// Pods, indexed.
    pub pods: Table<PodRecord>,
    /// Containers, indexed.
    pub containers: Table<ContainerRecord>,
    /// Images: pull, lookup, removal.
    pub images: crate::image::Images,
    /// The executor of the default handler.
    pub runtime: berth_runtime::Runtime,
    /// The default RuntimeClass handler ("").
    pub default_handler: Handler,
    /// The configured RuntimeClass handlers, by name.
    pub handlers: std::collections::BTreeMap<String, Handler>,
    /// Whether the node runs cgroup v2.
    pub cgroup_v2: bool,
    /// `<state>/pods` when it is a mount of its own: containers set it
    /// aside (see `berth_runtime::annotations::SET_ASIDE`).
    pub pods_mount: Option<PathBuf>,
    /// The pin of the mount namespace containers start from (see
    /// `berth_runtime::mntns`), when berthd could make one.
    pub mount_template: Option<PathBuf>,
    /// The cgroup driver.
    pub cgroups: crate::cgroups::Cgroups,
    /// Where removed containers' dirs go to be deleted off the request path.
    pub trash: crate::trash::Trash,
    /// The pod network.
    pub network: crate::net::Network,
    /// One operation at a time per pod or container id.
    pub locks: crate::util::KeyedLocks,
    /// In-flight creations by name, for kubelet's retries.
    pub flights: Arc<crate::util::SingleFlight>,
    /// Previous CPU samples, for rates.
    pub cpu_samples: crate::stats::CpuSamples,
    /// The containers whose monitor's end is being waited for.
    pub watchers: crate::container::Watchers,
    /// The streaming server, once bound.
    pub streams: std::sync::OnceLock<Arc<crate::stream::Streams>>,
    /// Container lifecycle events.
    pub events: Events,
    /// Whether pods can get user namespaces here, or why not (probed once
    /// at start-up: the kernel, and id-mapped mounts of the image store).
    pub userns: std::sync::OnceLock<std::result::Result<(), String>>,
}

impl Node {
    /// Whether a pod may have a user namespace of its own here; Err says why not.
    pub fn userns_support(&self) -> std::result::Result<(), &str> {
        match self.userns.get() {
            Some(Ok(())) => Ok(()),
            Some(Err(why)) => Err(why.as_str()),
            None => Err("not probed yet"),
        }
    }

    /// Probes user namespace support (see [`berth_runtime::userns::probe`]) and keeps the answer.
    pub fn probe_userns(&self) {
        let scratch = self.config.state.join("userns-probe");
        let answer = berth_runtime::userns::probe(self.runtime.monitor_bin(), &scratch, &self.config.root.join("snapshots"));
        if let Err(why) = &answer {
            tracing::info!("pods cannot have user namespaces on this node (Status reports user_namespaces false): {why}");
        }
        let _ = self.userns.set(answer);
    }

    /// Opens the services over the opened store: indexes, images, network.
    pub fn open(config: Config, store: Store) -> Result<Node> {
        let store = Arc::new(store);
        let pods = Table::load(store.clone())?;
        let containers = Table::load(store.clone())?;
        let image_options = crate::image::ImageOptions {
            root: config.root.clone(),
            max_concurrent_downloads: config.image.max_concurrent_downloads,
            unpack: crate::image::unpack::UnpackOptions {
                device_nodes: config.image.unpack_device_nodes,
                sync_fs: config.image.pull_with_sync_fs,
            },
            registry: config.registry.clone(),
            progress_timeout: std::time::Duration::from_secs(config.image.pull_progress_timeout_seconds),
            pinned: config.image.pinned.clone(),
        };
        let images = crate::image::Images::open(image_options, Arc::new(crate::store::ImageTable(store.clone())))
            .map_err(Error::internal_fn("opening the image store"))?;
        let containers_dir = config.root.join("containers");
        berth_runtime::fs::ensure_private_dir(&containers_dir).map_err(Error::internal_fn(containers_dir.display().to_string()))?;
        let monitor_bin = if config.runtime.monitor_path.as_os_str().is_empty() {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join("berth-monitor")))
                .unwrap_or_else(|| PathBuf::from("/usr/local/bin/berth-monitor"))
        } else {
            config.runtime.monitor_path.clone()
        };
        if !monitor_bin.is_file() {
            return Err(Error::invalid("runtime.monitor_path", format!("{} does not exist", monitor_bin.display())));
        }
        let cgroups = crate::cgroups::Cgroups::open(config.runtime.cgroup_driver)
            .map_err(|e| Error::invalid("runtime.cgroup_driver", format!("systemd: {e}")))?;
        let default_parent =
            cgroups.parent_path(&config.runtime.default_cgroup_parent).map_err(|e| Error::invalid("runtime.default_cgroup_parent", e))?;
        // Every monitor binary is run from a read-only bind of its directory.
        let handler_bins = config.runtimes.values().map(|h| &h.monitor_path).filter(|p| !p.as_os_str().is_empty() && p.is_file());
        let bins: Vec<PathBuf> = std::iter::once(&monitor_bin).chain(handler_bins).cloned().collect();
        let protected = crate::binaries::protect(&config.state, &bins);
        // One Runtime, and so one monitor zygote, per monitor binary.
        let mut runtimes = std::collections::HashMap::new();
        let mut runtime_of = |bin: PathBuf| -> berth_runtime::Runtime {
            let run = protected.run_as(&bin);
            runtimes.entry(bin).or_insert_with(|| berth_runtime::Runtime::new(run).with_zygote(config.runtime.monitor_zygote)).clone()
        };
        let default_handler = Handler {
            runtime: runtime_of(monitor_bin.clone()),
            cgroup_parent: default_parent.clone(),
            default_seccomp: crate::config::DefaultSeccomp::Unconfined,
        };
        let mut handlers = std::collections::BTreeMap::new();
        for (name, h) in &config.runtimes {
            let bin = if h.monitor_path.as_os_str().is_empty() { monitor_bin.clone() } else { h.monitor_path.clone() };
            if !bin.is_file() {
                return Err(Error::invalid(format!("runtimes.{name}.monitor_path"), format!("{} does not exist", bin.display())));
            }
            // After a crash, berth finds its processes by this name.
            if !bin.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("berth-monitor")) {
                return Err(Error::invalid(
                    format!("runtimes.{name}.monitor_path"),
                    format!("{}: the file name must start with berth-monitor", bin.display()),
                ));
            }
            let cgroup_parent = if h.cgroup_parent.is_empty() {
                default_parent.clone()
            } else {
                cgroups.parent_path(&h.cgroup_parent).map_err(|e| Error::invalid(format!("runtimes.{name}.cgroup_parent"), e))?
            };
            handlers.insert(name.clone(), Handler { runtime: runtime_of(bin), cgroup_parent, default_seccomp: h.default_seccomp });
        }
        if !monitor_bin.with_file_name("berth-pause").is_file() {
            tracing::warn!(
                monitor = %monitor_bin.display(),
                "no berth-pause next to berth-monitor: shared-PID pod inits stay berth-monitor processes (about 2 MiB each instead of a few KiB)"
            );
        }
        if !monitor_bin.with_file_name(berth_runtime::monitor::handoff::LOOP_BINARY).is_file() {
            tracing::warn!(
                monitor = %monitor_bin.display(),
                "no berth-monitor-loop next to berth-monitor: container monitors run their loop in berth-monitor (about 1 MiB more RSS each)"
            );
        }
        if !caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_SYS_RESOURCE).unwrap_or(true) {
            tracing::warn!("no CAP_SYS_RESOURCE: negative oom_score_adj and rlimits above the hard limit are clamped to what may be set");
        }
        let pods_dir = config.state.join("pods");
        for dir in [&pods_dir, &config.state.join("containers")] {
            berth_runtime::fs::ensure_private_dir(dir).map_err(Error::internal_fn(dir.display().to_string()))?;
        }
        let mounted = berth_runtime::sandbox::mount_private_dir(&pods_dir);
        let made_now = matches!(mounted, Ok(PrivateDir::Made));
        let pods_mount = match mounted {
            Ok(PrivateDir::Made | PrivateDir::Kept) => Some(pods_dir.clone()),
            Ok(PrivateDir::LeftAlone) => {
                tracing::info!(
                    dir = %pods_dir.display(),
                    "pods of an earlier berthd hold mounts in the pods dir: it becomes a mount of its own at a start with none, \
                     until then each container start copies every pod's mounts"
                );
                None
            }
            Err(e) => {
                tracing::warn!(dir = %pods_dir.display(), error = %e, "cannot make the pods dir a mount of its own: each container start copies every pod's mounts");
                None
            }
        };
        // Containers start from it instead of a copy of the node's mounts.
        let mntns_dir = config.state.join("mntns");
        let mount_template = match berth_runtime::mntns::ensure(&mntns_dir) {
            Ok(pin) => Some(pin),
            Err(e) => {
                tracing::warn!(dir = %mntns_dir.display(), error = %e, "no mount template: each container start copies the node's mounts");
                None
            }
        };
        // A start that fails from here leaves no pods mount it made, no
        // template (the next start makes one) and no binds of binaries.
        let rest = (|| -> Result<_> {
            let pod_cidr = store.setting(POD_CIDR_SETTING)?;
            let network = crate::net::Network::open(&config, pod_cidr.as_deref())?;
            let trash = crate::trash::Trash::open(&[&config.root, &config.state]).map_err(Error::internal_fn("the trash dirs"))?;
            Ok((network, trash))
        })();
        let (network, trash) = match rest {
            Ok(v) => v,
            Err(e) => {
                if made_now {
                    berth_runtime::sandbox::unmount_private_dir(&pods_dir);
                }
                berth_runtime::mntns::remove(&mntns_dir);
                return Err(e);
            }
        };
        let runtime = berth_runtime::Runtime::new(protected.run_as(&monitor_bin));
        protected.keep();
        Ok(Node {
            trash,
            network,
            store,
            pods,
            containers,
            images,
            runtime,
            default_handler,
            handlers,
            cgroup_v2: berth_runtime::cgroup::version() == berth_runtime::cgroup::Version::V2,
            pods_mount,
            mount_template,
            cgroups,
            locks: Default::default(),
            flights: Default::default(),
            cpu_samples: Default::default(),
            watchers: Default::default(),
            streams: Default::default(),
            events: Events::default(),
            userns: std::sync::OnceLock::new(),
            live: std::sync::RwLock::new(config.clone()),
            config,
        })
    }

    /// The handler called `name` ("runc" and "berth" name the default, as
    /// RuntimeClasses written for other runtimes do); None when unknown.
    pub fn handler(&self, name: &str) -> Option<&Handler> {
        match name {
            "" | "runc" | "berth" => Some(&self.default_handler),
            _ => self.handlers.get(name),
        }
    }

    /// The handler `name` asks for (`field` names where it was asked), or
    /// NotFound listing the configured ones.
    pub fn require_handler(&self, field: &str, name: &str) -> crate::error::Result<&Handler> {
        self.handler(name).ok_or_else(|| {
            let mut known: Vec<String> = self.handlers.keys().map(|k| format!("{k:?}")).collect();
            known.insert(0, "\"\"".into());
            crate::error::Error::NotFound(format!("{field} {name:?}: no such handler is configured (configured: {})", known.join(", ")))
        })
    }

    /// The handler of a pod (the default for one whose handler is gone from the config).
    pub fn handler_of(&self, pod: &PodRecord) -> &Handler {
        self.handler(&pod.runtime_handler).unwrap_or(&self.default_handler)
    }

    /// A copy of the configuration in effect now.
    pub fn live_config(&self) -> Config {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Where container writable layers live.
    pub fn containers_dir(&self) -> PathBuf {
        self.config.root.join("containers")
    }

    /// The pod's state directory.
    pub fn pod_dir(&self, id: &str) -> PathBuf {
        self.config.state.join("pods").join(id)
    }

    /// The container's bundle (state dir, 0700).
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.config.state.join("containers").join(id)
    }

    /// The container's writable layer.
    pub fn layer_dir(&self, id: &str) -> PathBuf {
        self.containers_dir().join(id)
    }

    /// The pod's containers.
    pub fn containers_of(&self, pod_id: &str) -> Vec<ContainerRecord> {
        self.containers.filter(|c| c.pod_id == pod_id)
    }
}

//! berth's CRI v1 server: the `RuntimeService` and `ImageService` traits,
//! each RPC delegated to the file of its family (containerd's layout):
//! `runtime_info` (version, status, runtime config), and — as they land —
//! sandboxes, containers, images, streaming and stats.
//!
//! An RPC that is not built yet answers `Unimplemented` naming itself: any
//! other code would break kubelet's fallbacks.

pub(crate) mod container;
pub mod events;
pub mod image;
mod rpc_log;
mod runtime_info;
pub(crate) mod sandbox;
mod stats;
mod streaming;

use std::sync::Arc;

use berth_proto::cri::{
    self,
    image_service_server::{ImageService, ImageServiceServer},
    runtime_service_server::{RuntimeService, RuntimeServiceServer},
};
use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::image::Images;
use crate::store::Store;

/// kubelet's own limit for CRI messages; the default 4 MiB is too small for
/// large ListContainers answers.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

// An ExecSync reply with both streams at their cap still fits one message.
const _: () = assert!(2 * crate::container::EXEC_OUTPUT_CAP + (64 << 10) <= MAX_MESSAGE_BYTES);

/// What every RPC family shares: the effective config, the store and the services.
pub struct Agent {
    /// The effective configuration.
    pub config: Config,
    /// The metadata store.
    pub store: Arc<Store>,
    /// Images: pull, lookup, removal.
    pub images: Images,
    /// The executor.
    pub runtime: berth_runtime::Runtime,
    /// Whether the node runs cgroup v2.
    pub cgroup_v2: bool,
    /// The pod network.
    pub network: crate::net::Network,
    /// One operation at a time per pod or container id.
    pub locks: crate::util::KeyedLocks,
    /// In-flight creations by name, for kubelet's retries.
    pub flights: Arc<crate::util::SingleFlight>,
    /// Previous CPU samples, for rates.
    pub cpu_samples: crate::stats::CpuSamples,
    /// The streaming server, once bound.
    pub streams: std::sync::OnceLock<Arc<crate::stream::Streams>>,
    /// Container lifecycle events for GetContainerEvents.
    pub events: tokio::sync::broadcast::Sender<cri::ContainerEventResponse>,
}

impl Agent {
    /// Opens the services over the opened store.
    pub fn open(config: Config, store: Store) -> Result<Agent, crate::image::ImageError> {
        let store = Arc::new(store);
        let images = Images::open(&config, store.clone())?;
        let containers = config.root.join("containers");
        berth_runtime::fs::ensure_private_dir(&containers)
            .map_err(|e| crate::image::ImageError::Io(format!("{}: {e}", containers.display())))?;
        let monitor_bin = if config.runtime.monitor_path.as_os_str().is_empty() {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join("berth-monitor")))
                .unwrap_or_else(|| std::path::PathBuf::from("/usr/local/bin/berth-monitor"))
        } else {
            config.runtime.monitor_path.clone()
        };
        if !monitor_bin.is_file() {
            return Err(crate::image::ImageError::Io(format!("runtime.monitor_path: {} does not exist", monitor_bin.display())));
        }
        if !caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_SYS_RESOURCE).unwrap_or(true) {
            tracing::warn!("no CAP_SYS_RESOURCE: negative oom_score_adj and rlimits above the hard limit are clamped to what may be set");
        }
        for dir in [config.state.join("pods"), config.state.join("containers")] {
            std::fs::create_dir_all(&dir).map_err(|e| crate::image::ImageError::Io(format!("{}: {e}", dir.display())))?;
            let _ = std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700));
        }
        let pod_cidr = store.setting(runtime_info::POD_CIDR_SETTING).map_err(crate::image::ImageError::Store)?;
        let network = crate::net::Network::open(&config, pod_cidr.as_deref()).map_err(|e| crate::image::ImageError::Io(e.to_string()))?;
        Ok(Agent {
            network,
            config,
            store,
            images,
            runtime: berth_runtime::Runtime::new(monitor_bin),
            cgroup_v2: berth_runtime::cgroup::version() == berth_runtime::cgroup::Version::V2,
            locks: Default::default(),
            flights: Default::default(),
            cpu_samples: Default::default(),
            streams: Default::default(),
            events: tokio::sync::broadcast::channel(events::BUFFER).0,
        })
    }

    /// Where container writable layers live.
    pub fn containers_dir(&self) -> std::path::PathBuf {
        self.config.root.join("containers")
    }
}

/// The tonic service implementing both CRI services.
#[derive(Clone)]
pub struct CriService {
    agent: Arc<Agent>,
}

/// The router type [`server`] builds.
pub type CriRouter = tonic::transport::server::Router<tower::layer::util::Stack<rpc_log::RpcLogLayer, tower::layer::util::Identity>>;

/// A tonic router serving both CRI services with per-RPC logging.
pub fn server(agent: Arc<Agent>) -> CriRouter {
    let svc = CriService { agent };
    tonic::transport::Server::builder()
        .layer(rpc_log::RpcLogLayer)
        .add_service(
            RuntimeServiceServer::new(svc.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(ImageServiceServer::new(svc).max_decoding_message_size(MAX_MESSAGE_BYTES).max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// A required id field of a request: InvalidArgument naming it when empty.
fn id_field(id: &str, field: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument(format!("{field}: must not be empty")));
    }
    Ok(())
}

/// The answer of an RPC whose issue has not landed.
fn unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!("{rpc} is not implemented by berth yet"))
}

#[tonic::async_trait]
impl RuntimeService for CriService {
    type GetContainerEventsStream = events::EventStream;

    async fn version(&self, r: Request<cri::VersionRequest>) -> Result<Response<cri::VersionResponse>, Status> {
        runtime_info::version(&self.agent, r).await
    }

    async fn run_pod_sandbox(&self, r: Request<cri::RunPodSandboxRequest>) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        sandbox::run_pod_sandbox(&self.agent, r).await
    }

    async fn stop_pod_sandbox(&self, r: Request<cri::StopPodSandboxRequest>) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        sandbox::stop_pod_sandbox(&self.agent, r).await
    }

    async fn remove_pod_sandbox(
        &self,
        r: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        sandbox::remove_pod_sandbox(&self.agent, r).await
    }

    async fn pod_sandbox_status(
        &self,
        r: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        sandbox::pod_sandbox_status(&self.agent, r).await
    }

    async fn list_pod_sandbox(&self, r: Request<cri::ListPodSandboxRequest>) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        sandbox::list_pod_sandbox(&self.agent, r).await
    }

    async fn create_container(&self, r: Request<cri::CreateContainerRequest>) -> Result<Response<cri::CreateContainerResponse>, Status> {
        container::create_container(&self.agent, r).await
    }

    async fn start_container(&self, r: Request<cri::StartContainerRequest>) -> Result<Response<cri::StartContainerResponse>, Status> {
        container::start_container(&self.agent, r).await
    }

    async fn stop_container(&self, r: Request<cri::StopContainerRequest>) -> Result<Response<cri::StopContainerResponse>, Status> {
        container::stop_container(&self.agent, r).await
    }

    async fn remove_container(&self, r: Request<cri::RemoveContainerRequest>) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        container::remove_container(&self.agent, r).await
    }

    async fn list_containers(&self, r: Request<cri::ListContainersRequest>) -> Result<Response<cri::ListContainersResponse>, Status> {
        container::list_containers(&self.agent, r).await
    }

    async fn container_status(&self, r: Request<cri::ContainerStatusRequest>) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        container::container_status(&self.agent, r).await
    }

    async fn update_container_resources(
        &self,
        r: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        container::update_container_resources(&self.agent, r).await
    }

    async fn reopen_container_log(
        &self,
        r: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        container::reopen_container_log(&self.agent, r).await
    }

    async fn exec_sync(&self, r: Request<cri::ExecSyncRequest>) -> Result<Response<cri::ExecSyncResponse>, Status> {
        container::exec_sync(&self.agent, r).await
    }

    async fn exec(&self, r: Request<cri::ExecRequest>) -> Result<Response<cri::ExecResponse>, Status> {
        streaming::exec(&self.agent, r).await
    }

    async fn attach(&self, r: Request<cri::AttachRequest>) -> Result<Response<cri::AttachResponse>, Status> {
        streaming::attach(&self.agent, r).await
    }

    async fn port_forward(&self, r: Request<cri::PortForwardRequest>) -> Result<Response<cri::PortForwardResponse>, Status> {
        streaming::port_forward(&self.agent, r).await
    }

    async fn container_stats(&self, r: Request<cri::ContainerStatsRequest>) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        stats::container_stats(&self.agent, r).await
    }

    async fn list_container_stats(
        &self,
        r: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        stats::list_container_stats(&self.agent, r).await
    }

    async fn pod_sandbox_stats(&self, r: Request<cri::PodSandboxStatsRequest>) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        stats::pod_sandbox_stats(&self.agent, r).await
    }

    async fn list_pod_sandbox_stats(
        &self,
        r: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        stats::list_pod_sandbox_stats(&self.agent, r).await
    }

    async fn update_runtime_config(
        &self,
        r: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        runtime_info::update_runtime_config(&self.agent, r).await
    }

    async fn status(&self, r: Request<cri::StatusRequest>) -> Result<Response<cri::StatusResponse>, Status> {
        runtime_info::status(&self.agent, r).await
    }

    async fn checkpoint_container(
        &self,
        _r: Request<cri::CheckpointContainerRequest>,
    ) -> Result<Response<cri::CheckpointContainerResponse>, Status> {
        Err(unimplemented("CheckpointContainer"))
    }

    async fn list_metric_descriptors(
        &self,
        r: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        stats::list_metric_descriptors(&self.agent, r).await
    }

    async fn list_pod_sandbox_metrics(
        &self,
        r: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        stats::list_pod_sandbox_metrics(&self.agent, r).await
    }

    async fn runtime_config(&self, r: Request<cri::RuntimeConfigRequest>) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        runtime_info::runtime_config(&self.agent, r).await
    }

    async fn get_container_events(&self, r: Request<cri::GetEventsRequest>) -> Result<Response<events::EventStream>, Status> {
        events::get_container_events(&self.agent, r).await
    }
}

#[tonic::async_trait]
impl ImageService for CriService {
    async fn list_images(&self, r: Request<cri::ListImagesRequest>) -> Result<Response<cri::ListImagesResponse>, Status> {
        image::list_images(&self.agent, r).await
    }

    async fn image_status(&self, r: Request<cri::ImageStatusRequest>) -> Result<Response<cri::ImageStatusResponse>, Status> {
        image::image_status(&self.agent, r).await
    }

    async fn pull_image(&self, r: Request<cri::PullImageRequest>) -> Result<Response<cri::PullImageResponse>, Status> {
        image::pull_image(&self.agent, r).await
    }

    async fn remove_image(&self, r: Request<cri::RemoveImageRequest>) -> Result<Response<cri::RemoveImageResponse>, Status> {
        image::remove_image(&self.agent, r).await
    }

    async fn image_fs_info(&self, r: Request<cri::ImageFsInfoRequest>) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        image::image_fs_info(&self.agent, r).await
    }
}

//! berth's CRI v1 server: a thin adapter over the node. Each RPC family has
//! its file (containerd's layout) that validates the wire input, converts
//! proto → domain, calls the core and converts back. This is the only
//! place that knows gRPC and CRI types; the one mapping of the domain's
//! [`Error`] to a gRPC status is here.
//!
//! Every RPC runs in a `tracing` span named after it, with the pod and
//! container ids it concerns.

mod container;
mod convert;
mod events;
mod image;
mod lists;
pub mod report;
mod rpc_log;
mod runtime_info;
mod sandbox;
mod stats;
mod streaming;

use std::future::Future;
use std::sync::Arc;

use berth_proto::cri::{
    self,
    image_service_server::{ImageService, ImageServiceServer},
    runtime_service_server::{RuntimeService, RuntimeServiceServer},
};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::error::Error;
use crate::node::Node;

/// kubelet's own limit for CRI messages; the default 4 MiB is too small for
/// large ListContainers answers.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

// An ExecSync reply with both streams at their cap still fits one message.
const _: () = assert!(2 * crate::container::EXEC_OUTPUT_CAP + (64 << 10) <= MAX_MESSAGE_BYTES);

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let msg = e.to_string();
        match e {
            Error::NotFound(_) => Status::not_found(msg),
            Error::AlreadyExists(_) => Status::already_exists(msg),
            Error::InvalidArgument { .. } => Status::invalid_argument(msg),
            Error::FailedPrecondition(_) => Status::failed_precondition(msg),
            Error::DeadlineExceeded(_) => Status::deadline_exceeded(msg),
            Error::ResourceExhausted(_) => Status::resource_exhausted(msg),
            Error::Unavailable(_) => Status::unavailable(msg),
            Error::DataLoss(_) => Status::data_loss(msg),
            Error::Internal { .. } => Status::internal(msg),
        }
    }
}

/// The tonic service implementing both CRI services.
#[derive(Clone)]
pub struct CriService {
    node: Arc<Node>,
}

/// The router type [`server`] builds.
pub type CriRouter = tonic::transport::server::Router<tower::layer::util::Stack<rpc_log::RpcLogLayer, tower::layer::util::Identity>>;

/// A tonic router serving both CRI services with per-RPC logging.
pub fn server(node: Arc<Node>) -> CriRouter {
    let svc = CriService { node };
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
fn id_field(id: &str, field: &str) -> Result<(), Error> {
    if id.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    Ok(())
}

/// Runs an RPC's body in its span and answers with its result; a failure
/// is logged in the span with its source chain.
async fn rpc<T>(span: tracing::Span, body: impl Future<Output = Result<T, Error>>) -> Result<Response<T>, Status> {
    let result = body.instrument(span.clone()).await;
    match result {
        Ok(v) => Ok(Response::new(v)),
        Err(e) => {
            span.in_scope(|| match &e {
                Error::Internal { .. } => tracing::warn!(error = %e, "rpc failed"),
                _ => tracing::debug!(error = %e, "rpc refused"),
            });
            Err(e.into())
        }
    }
}

/// The span of an RPC without ids.
fn span(rpc: &'static str) -> tracing::Span {
    tracing::info_span!("rpc", rpc)
}

/// The span of an RPC about a pod.
fn pod_span(rpc: &'static str, pod_id: &str) -> tracing::Span {
    tracing::info_span!("rpc", rpc, pod_id)
}

/// The span of an RPC about a container.
fn container_span(rpc: &'static str, container_id: &str) -> tracing::Span {
    tracing::info_span!("rpc", rpc, container_id)
}

/// The answer of an RPC berth does not implement.
fn unimplemented(rpc: &str) -> Status {
    Status::unimplemented(format!("{rpc} is not implemented by berth yet"))
}

#[tonic::async_trait]
impl RuntimeService for CriService {
    type GetContainerEventsStream = events::EventStream;
    type StreamPodSandboxesStream = lists::ListStream<cri::StreamPodSandboxesResponse>;
    type StreamContainersStream = lists::ListStream<cri::StreamContainersResponse>;
    type StreamContainerStatsStream = lists::ListStream<cri::StreamContainerStatsResponse>;
    type StreamPodSandboxStatsStream = lists::ListStream<cri::StreamPodSandboxStatsResponse>;
    type StreamPodSandboxMetricsStream = lists::ListStream<cri::StreamPodSandboxMetricsResponse>;

    async fn version(&self, r: Request<cri::VersionRequest>) -> Result<Response<cri::VersionResponse>, Status> {
        rpc(span("Version"), runtime_info::version(&self.node, r.into_inner())).await
    }

    async fn run_pod_sandbox(&self, r: Request<cri::RunPodSandboxRequest>) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        let req = r.into_inner();
        let name = req.config.as_ref().and_then(|c| c.metadata.as_ref()).map(|m| m.name.clone()).unwrap_or_default();
        rpc(tracing::info_span!("rpc", rpc = "RunPodSandbox", pod_name = %name), sandbox::run(&self.node, req)).await
    }

    async fn stop_pod_sandbox(&self, r: Request<cri::StopPodSandboxRequest>) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        let req = r.into_inner();
        rpc(pod_span("StopPodSandbox", &req.pod_sandbox_id), sandbox::stop(&self.node, req)).await
    }

    async fn remove_pod_sandbox(
        &self,
        r: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        let req = r.into_inner();
        rpc(pod_span("RemovePodSandbox", &req.pod_sandbox_id), sandbox::remove(&self.node, req)).await
    }

    async fn pod_sandbox_status(
        &self,
        r: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        let req = r.into_inner();
        rpc(pod_span("PodSandboxStatus", &req.pod_sandbox_id), sandbox::status(&self.node, req)).await
    }

    async fn list_pod_sandbox(&self, r: Request<cri::ListPodSandboxRequest>) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        rpc(span("ListPodSandbox"), sandbox::list(&self.node, r.into_inner())).await
    }

    async fn stream_pod_sandboxes(
        &self,
        r: Request<cri::StreamPodSandboxesRequest>,
    ) -> Result<Response<Self::StreamPodSandboxesStream>, Status> {
        let req = cri::ListPodSandboxRequest { filter: r.into_inner().filter };
        rpc(span("StreamPodSandboxes"), async { Ok(lists::pod_sandboxes(sandbox::list(&self.node, req).await?)) }).await
    }

    async fn create_container(&self, r: Request<cri::CreateContainerRequest>) -> Result<Response<cri::CreateContainerResponse>, Status> {
        let req = r.into_inner();
        let name = req.config.as_ref().and_then(|c| c.metadata.as_ref()).map(|m| m.name.clone()).unwrap_or_default();
        let span = tracing::info_span!("rpc", rpc = "CreateContainer", pod_id = %req.pod_sandbox_id, container_name = %name);
        rpc(span, container::create(&self.node, req)).await
    }

    async fn start_container(&self, r: Request<cri::StartContainerRequest>) -> Result<Response<cri::StartContainerResponse>, Status> {
        let req = r.into_inner();
        rpc(container_span("StartContainer", &req.container_id), container::start(&self.node, req)).await
    }

    async fn stop_container(&self, r: Request<cri::StopContainerRequest>) -> Result<Response<cri::StopContainerResponse>, Status> {
        let req = r.into_inner();
        rpc(container_span("StopContainer", &req.container_id), container::stop(&self.node, req)).await
    }

    async fn remove_container(&self, r: Request<cri::RemoveContainerRequest>) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        let req = r.into_inner();
        rpc(container_span("RemoveContainer", &req.container_id), container::remove(&self.node, req)).await
    }

    async fn list_containers(&self, r: Request<cri::ListContainersRequest>) -> Result<Response<cri::ListContainersResponse>, Status> {
        rpc(span("ListContainers"), container::list(&self.node, r.into_inner())).await
    }

    async fn stream_containers(&self, r: Request<cri::StreamContainersRequest>) -> Result<Response<Self::StreamContainersStream>, Status> {
        let req = cri::ListContainersRequest { filter: r.into_inner().filter };
        rpc(span("StreamContainers"), async { Ok(lists::containers(container::list(&self.node, req).await?)) }).await
    }

    async fn container_status(&self, r: Request<cri::ContainerStatusRequest>) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        let req = r.into_inner();
        rpc(container_span("ContainerStatus", &req.container_id), container::status(&self.node, req)).await
    }

    async fn update_container_resources(
        &self,
        r: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        let req = r.into_inner();
        rpc(container_span("UpdateContainerResources", &req.container_id), container::update_resources(&self.node, req)).await
    }

    async fn reopen_container_log(
        &self,
        r: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        let req = r.into_inner();
        rpc(container_span("ReopenContainerLog", &req.container_id), container::reopen_log(&self.node, req)).await
    }

    async fn exec_sync(&self, r: Request<cri::ExecSyncRequest>) -> Result<Response<cri::ExecSyncResponse>, Status> {
        let req = r.into_inner();
        rpc(container_span("ExecSync", &req.container_id), container::exec_sync(&self.node, req)).await
    }

    async fn exec(&self, r: Request<cri::ExecRequest>) -> Result<Response<cri::ExecResponse>, Status> {
        let req = r.into_inner();
        rpc(container_span("Exec", &req.container_id), streaming::exec(&self.node, req)).await
    }

    async fn attach(&self, r: Request<cri::AttachRequest>) -> Result<Response<cri::AttachResponse>, Status> {
        let req = r.into_inner();
        rpc(container_span("Attach", &req.container_id), streaming::attach(&self.node, req)).await
    }

    async fn port_forward(&self, r: Request<cri::PortForwardRequest>) -> Result<Response<cri::PortForwardResponse>, Status> {
        let req = r.into_inner();
        rpc(pod_span("PortForward", &req.pod_sandbox_id), streaming::port_forward(&self.node, req)).await
    }

    async fn container_stats(&self, r: Request<cri::ContainerStatsRequest>) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        let req = r.into_inner();
        rpc(container_span("ContainerStats", &req.container_id), stats::container_stats_of(&self.node, req)).await
    }

    async fn list_container_stats(
        &self,
        r: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        rpc(span("ListContainerStats"), stats::list_container_stats(&self.node, r.into_inner())).await
    }

    async fn stream_container_stats(
        &self,
        r: Request<cri::StreamContainerStatsRequest>,
    ) -> Result<Response<Self::StreamContainerStatsStream>, Status> {
        let req = cri::ListContainerStatsRequest { filter: r.into_inner().filter };
        rpc(span("StreamContainerStats"), async { Ok(lists::container_stats(stats::list_container_stats(&self.node, req).await?)) }).await
    }

    async fn pod_sandbox_stats(&self, r: Request<cri::PodSandboxStatsRequest>) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        let req = r.into_inner();
        rpc(pod_span("PodSandboxStats", &req.pod_sandbox_id), stats::pod_sandbox_stats(&self.node, req)).await
    }

    async fn list_pod_sandbox_stats(
        &self,
        r: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        rpc(span("ListPodSandboxStats"), stats::list_pod_sandbox_stats(&self.node, r.into_inner())).await
    }

    async fn stream_pod_sandbox_stats(
        &self,
        r: Request<cri::StreamPodSandboxStatsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxStatsStream>, Status> {
        let req = cri::ListPodSandboxStatsRequest { filter: r.into_inner().filter };
        rpc(span("StreamPodSandboxStats"), async { Ok(lists::pod_sandbox_stats(stats::list_pod_sandbox_stats(&self.node, req).await?)) })
            .await
    }

    async fn update_runtime_config(
        &self,
        r: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        rpc(span("UpdateRuntimeConfig"), runtime_info::update_runtime_config(&self.node, r.into_inner())).await
    }

    async fn status(&self, r: Request<cri::StatusRequest>) -> Result<Response<cri::StatusResponse>, Status> {
        rpc(span("Status"), runtime_info::status(&self.node, r.into_inner())).await
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
        rpc(span("ListMetricDescriptors"), stats::list_metric_descriptors(r.into_inner())).await
    }

    async fn list_pod_sandbox_metrics(
        &self,
        r: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        rpc(span("ListPodSandboxMetrics"), stats::list_pod_sandbox_metrics(&self.node, r.into_inner())).await
    }

    async fn stream_pod_sandbox_metrics(
        &self,
        _r: Request<cri::StreamPodSandboxMetricsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxMetricsStream>, Status> {
        let req = cri::ListPodSandboxMetricsRequest {};
        rpc(span("StreamPodSandboxMetrics"), async {
            Ok(lists::pod_sandbox_metrics(stats::list_pod_sandbox_metrics(&self.node, req).await?))
        })
        .await
    }

    async fn update_pod_sandbox_resources(
        &self,
        r: Request<cri::UpdatePodSandboxResourcesRequest>,
    ) -> Result<Response<cri::UpdatePodSandboxResourcesResponse>, Status> {
        let req = r.into_inner();
        rpc(pod_span("UpdatePodSandboxResources", &req.pod_sandbox_id), sandbox::update_resources(&self.node, req)).await
    }

    async fn runtime_config(&self, r: Request<cri::RuntimeConfigRequest>) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        rpc(span("RuntimeConfig"), runtime_info::runtime_config(&self.node, r.into_inner())).await
    }

    async fn get_container_events(&self, r: Request<cri::GetEventsRequest>) -> Result<Response<events::EventStream>, Status> {
        rpc(span("GetContainerEvents"), events::get_container_events(&self.node, r.into_inner())).await
    }
}

#[tonic::async_trait]
impl ImageService for CriService {
    type StreamImagesStream = lists::ListStream<cri::StreamImagesResponse>;

    async fn stream_images(&self, r: Request<cri::StreamImagesRequest>) -> Result<Response<Self::StreamImagesStream>, Status> {
        let req = cri::ListImagesRequest { filter: r.into_inner().filter };
        rpc(span("StreamImages"), async { Ok(lists::images(image::list_images(&self.node, req).await?)) }).await
    }

    async fn list_images(&self, r: Request<cri::ListImagesRequest>) -> Result<Response<cri::ListImagesResponse>, Status> {
        rpc(span("ListImages"), image::list_images(&self.node, r.into_inner())).await
    }

    async fn image_status(&self, r: Request<cri::ImageStatusRequest>) -> Result<Response<cri::ImageStatusResponse>, Status> {
        rpc(span("ImageStatus"), image::image_status(&self.node, r.into_inner())).await
    }

    async fn pull_image(&self, r: Request<cri::PullImageRequest>) -> Result<Response<cri::PullImageResponse>, Status> {
        let req = r.into_inner();
        let image = req.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
        rpc(tracing::info_span!("rpc", rpc = "PullImage", image = %image), image::pull_image(&self.node, req)).await
    }

    async fn remove_image(&self, r: Request<cri::RemoveImageRequest>) -> Result<Response<cri::RemoveImageResponse>, Status> {
        rpc(span("RemoveImage"), image::remove_image(&self.node, r.into_inner())).await
    }

    async fn image_fs_info(&self, r: Request<cri::ImageFsInfoRequest>) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        rpc(span("ImageFsInfo"), image::image_fs_info(&self.node, r.into_inner())).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_errors_become_the_right_codes() {
        let s: Status = Error::invalid("config.hostname", "too long").into();
        assert_eq!((s.code(), s.message()), (tonic::Code::InvalidArgument, "config.hostname: too long"));
        let s: Status = Error::NotFound("pod sandbox x not found".into()).into();
        assert_eq!(s.code(), tonic::Code::NotFound);
        let s: Status = Error::internal("store", "disk full").into();
        assert_eq!((s.code(), s.message()), (tonic::Code::Internal, "store: disk full"));
        let s: Status = Error::DeadlineExceeded("slow".into()).into();
        assert_eq!(s.code(), tonic::Code::DeadlineExceeded);
    }
}

//! What the running berthd reports over its CRI socket, for `berthd diag`
//! (see `crate::diag`): status with its recent warnings and errors, pods,
//! containers, images. The CRI client side lives here with the rest of
//! berth's gRPC.

use std::fmt::Write as _;
use std::path::Path;

use berth_proto::cri;
use berth_proto::cri::image_service_client::ImageServiceClient;
use berth_proto::cri::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::diag::section;

async fn connect(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket = socket.to_path_buf();
    // The URI is ignored: the connector goes to the socket.
    Endpoint::from_static("http://[::]:50051")
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(20))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(socket).await?)) }
        }))
        .await
}

/// Appends the CRI sections to the report `r`; an unreachable berthd is said so.
pub async fn running_berthd(r: &mut String, socket: &Path) {
    section(r, "berthd (over CRI)");
    let channel = match connect(socket).await {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(r, "berthd not reachable at {}: {e}", socket.display());
            return;
        }
    };
    let mut rt = RuntimeServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20);
    let mut img = ImageServiceClient::new(channel).max_decoding_message_size(64 << 20);
    match rt.status(cri::StatusRequest { verbose: true }).await {
        Ok(s) => {
            let s = s.into_inner();
            for c in s.status.map(|s| s.conditions).unwrap_or_default() {
                let _ = writeln!(r, "condition {} = {} {} {}", c.r#type, c.status, c.reason, c.message);
            }
            let handlers: Vec<String> = s.runtime_handlers.iter().map(|h| format!("{:?}", h.name)).collect();
            let _ = writeln!(r, "runtime handlers: {}", handlers.join(", "));
            let mut keys: Vec<&String> = s.info.keys().collect();
            keys.sort();
            for k in keys {
                // The config is above, from the files; its running copy may differ after a reload.
                let v = &s.info[k];
                if k == "recentErrors" {
                    let lines: Vec<String> = serde_json::from_str(v).unwrap_or_default();
                    let _ = writeln!(r, "recent warnings and errors ({}):", lines.len());
                    for l in lines {
                        let _ = writeln!(r, "  {l}");
                    }
                } else {
                    let _ = writeln!(r, "{k}: {v}");
                }
            }
        }
        Err(e) => {
            let _ = writeln!(r, "Status: {e}");
        }
    }
    section(r, "pods");
    match rt.list_pod_sandbox(cri::ListPodSandboxRequest::default()).await {
        Ok(l) => {
            for p in l.into_inner().items {
                let m = p.metadata.unwrap_or_default();
                let state = if p.state == cri::PodSandboxState::SandboxReady as i32 { "READY" } else { "NOTREADY" };
                let _ = writeln!(r, "{} {}/{} {state} handler={:?} created={}", p.id, m.namespace, m.name, p.runtime_handler, p.created_at);
            }
        }
        Err(e) => {
            let _ = writeln!(r, "ListPodSandbox: {e}");
        }
    }
    section(r, "containers");
    match rt.list_containers(cri::ListContainersRequest::default()).await {
        Ok(l) => {
            for c in l.into_inner().containers {
                let m = c.metadata.unwrap_or_default();
                let state = cri::ContainerState::try_from(c.state).map(|s| s.as_str_name()).unwrap_or("?");
                let image = c.image.map(|i| i.image).unwrap_or_default();
                let _ = writeln!(r, "{} pod={} {} {state} image={image}", c.id, c.pod_sandbox_id, m.name);
            }
        }
        Err(e) => {
            let _ = writeln!(r, "ListContainers: {e}");
        }
    }
    section(r, "images");
    match img.list_images(cri::ListImagesRequest::default()).await {
        Ok(l) => {
            for i in l.into_inner().images {
                let _ = writeln!(r, "{} {:?} size={} pinned={}", i.id, i.repo_tags, i.size, i.pinned);
            }
        }
        Err(e) => {
            let _ = writeln!(r, "ListImages: {e}");
        }
    }
}

//! Exec, Attach and PortForward: each validates its request and hands out a
//! single-use URL on the streaming server.

use std::sync::Arc;

use berth_proto::cri;
use tonic::{Request, Response, Status};

use super::Agent;
use crate::store::ContainerRecord;
use crate::stream::session::Wants;
use crate::stream::StreamRequest;

/// Exec's and Attach's shared checks: a container id, at least one stream,
/// and a running container.
fn stream_target(agent: &Arc<Agent>, container_id: &str, any_stream: bool) -> Result<ContainerRecord, Status> {
    super::id_field(container_id, "container_id")?;
    if !any_stream {
        return Err(Status::invalid_argument("one of stdin, stdout and stderr must be set"));
    }
    crate::container::find_running(agent, container_id)
}

fn streams(agent: &Agent) -> Result<&Arc<crate::stream::Streams>, Status> {
    agent.streams.get().ok_or_else(|| Status::unavailable("the streaming server is not up"))
}

pub(super) async fn exec(agent: &Arc<Agent>, r: Request<cri::ExecRequest>) -> Result<Response<cri::ExecResponse>, Status> {
    let req = r.into_inner();
    crate::container::check_cmd(&req.cmd)?;
    let c = stream_target(agent, &req.container_id, req.stdin || req.stdout || req.stderr)?;
    let wants = Wants { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, tty: req.tty };
    let url = streams(agent)?
        .register(StreamRequest::Exec { container_id: c.id, cmd: req.cmd, wants })
        .map_err(|e| Status::internal(format!("streaming token from the kernel's random source: {e}")))?;
    Ok(Response::new(cri::ExecResponse { url }))
}

pub(super) async fn attach(agent: &Arc<Agent>, r: Request<cri::AttachRequest>) -> Result<Response<cri::AttachResponse>, Status> {
    let req = r.into_inner();
    let c = stream_target(agent, &req.container_id, req.stdin || req.stdout || req.stderr)?;
    if req.stdin && !c.stdin {
        return Err(Status::invalid_argument(format!("stdin: container {} was not created with stdin", c.id)));
    }
    if req.tty != c.tty {
        return Err(Status::invalid_argument(format!("tty: container {} was created with tty={}", c.id, c.tty)));
    }
    let wants = Wants { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, tty: c.tty };
    let url = streams(agent)?
        .register(StreamRequest::Attach { container_id: c.id, wants })
        .map_err(|e| Status::internal(format!("streaming token from the kernel's random source: {e}")))?;
    Ok(Response::new(cri::AttachResponse { url }))
}

pub(super) async fn port_forward(
    agent: &Arc<Agent>,
    r: Request<cri::PortForwardRequest>,
) -> Result<Response<cri::PortForwardResponse>, Status> {
    let req = r.into_inner();
    let pod = crate::pod::find(agent, &req.pod_sandbox_id)?;
    if pod.state != crate::store::PodState::Ready {
        return Err(Status::failed_precondition(format!("pod sandbox {} is not ready", pod.id)));
    }
    let mut ports = Vec::new();
    for p in req.port {
        ports.push(u16::try_from(p).ok().filter(|p| *p > 0).ok_or_else(|| Status::invalid_argument(format!("port: {p} is not a port")))?);
    }
    let netns = if pod.network_mode == crate::spec::ns_mode::NODE {
        std::path::PathBuf::from("/proc/1/ns/net")
    } else {
        berth_runtime::sandbox::pin_path(&crate::pod::pod_dir(agent, &pod.id), "net")
    };
    let url = streams(agent)?
        .register(StreamRequest::PortForward { netns, ports })
        .map_err(|e| Status::internal(format!("streaming token from the kernel's random source: {e}")))?;
    Ok(Response::new(cri::PortForwardResponse { url }))
}

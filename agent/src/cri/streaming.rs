//! Exec, Attach and PortForward: each validates its request and hands out a
//! single-use URL on the streaming server.

use std::sync::Arc;

use berth_proto::cri;
use tonic::{Request, Response, Status};

use super::Agent;
use crate::store::ContainerState;
use crate::stream::session::Wants;
use crate::stream::StreamRequest;

pub(super) async fn exec(agent: &Arc<Agent>, r: Request<cri::ExecRequest>) -> Result<Response<cri::ExecResponse>, Status> {
    let req = r.into_inner();
    if req.container_id.is_empty() {
        return Err(Status::invalid_argument("container_id: must not be empty"));
    }
    if req.cmd.is_empty() || req.cmd[0].is_empty() {
        return Err(Status::invalid_argument("cmd: must not be empty"));
    }
    if !(req.stdin || req.stdout || req.stderr) {
        return Err(Status::invalid_argument("one of stdin, stdout and stderr must be set"));
    }
    let c = crate::container::find(agent, &req.container_id)?;
    if c.state != ContainerState::Running {
        return Err(Status::failed_precondition(format!("container {} is not running", c.id)));
    }
    let streams = agent.streams.get().ok_or_else(|| Status::unavailable("the streaming server is not up"))?;
    let wants = Wants { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, tty: req.tty };
    let url = streams.register(StreamRequest::Exec { container_id: c.id, cmd: req.cmd, wants });
    Ok(Response::new(cri::ExecResponse { url }))
}

pub(super) async fn attach(agent: &Arc<Agent>, r: Request<cri::AttachRequest>) -> Result<Response<cri::AttachResponse>, Status> {
    let req = r.into_inner();
    if req.container_id.is_empty() {
        return Err(Status::invalid_argument("container_id: must not be empty"));
    }
    if !(req.stdin || req.stdout || req.stderr) {
        return Err(Status::invalid_argument("one of stdin, stdout and stderr must be set"));
    }
    let c = crate::container::find(agent, &req.container_id)?;
    if c.state != ContainerState::Running {
        return Err(Status::failed_precondition(format!("container {} is not running", c.id)));
    }
    if req.stdin && !c.stdin {
        return Err(Status::invalid_argument(format!("stdin: container {} was not created with stdin", c.id)));
    }
    if req.tty != c.tty {
        return Err(Status::invalid_argument(format!("tty: container {} was created with tty={}", c.id, c.tty)));
    }
    let streams = agent.streams.get().ok_or_else(|| Status::unavailable("the streaming server is not up"))?;
    let wants = Wants { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, tty: c.tty };
    let url = streams.register(StreamRequest::Attach { container_id: c.id, wants });
    Ok(Response::new(cri::AttachResponse { url }))
}

pub(super) async fn port_forward(agent: &Arc<Agent>, r: Request<cri::PortForwardRequest>) -> Result<Response<cri::PortForwardResponse>, Status> {
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
    let streams = agent.streams.get().ok_or_else(|| Status::unavailable("the streaming server is not up"))?;
    let url = streams.register(StreamRequest::PortForward { netns, ports });
    Ok(Response::new(cri::PortForwardResponse { url }))
}

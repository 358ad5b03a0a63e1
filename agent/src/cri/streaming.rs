//! Exec, Attach and PortForward: each validates its request and hands out a
//! single-use URL on the streaming server.

use std::sync::Arc;

use berth_proto::cri;

use super::id_field;
use crate::error::{Error, Result};
use crate::node::Node;
use crate::store::ContainerRecord;
use crate::stream::session::Wants;
use crate::stream::StreamRequest;

/// Exec's and Attach's shared checks: a container id, at least one stream,
/// and a running container.
fn stream_target(node: &Node, container_id: &str, any_stream: bool) -> Result<ContainerRecord> {
    id_field(container_id, "container_id")?;
    if !any_stream {
        return Err(Error::invalid("stdin, stdout, stderr", "one of them must be set"));
    }
    crate::container::find_running(node, container_id)
}

/// A URL for `req` on the streaming server.
fn register(node: &Node, req: StreamRequest) -> Result<String> {
    let streams = node.streams.get().ok_or_else(|| Error::Unavailable("the streaming server is not up".into()))?;
    streams.register(req).map_err(Error::internal_fn("streaming token from the kernel's random source"))
}

pub(super) async fn exec(node: &Arc<Node>, req: cri::ExecRequest) -> Result<cri::ExecResponse> {
    crate::container::check_cmd(&req.cmd)?;
    let c = stream_target(node, &req.container_id, req.stdin || req.stdout || req.stderr)?;
    let wants = Wants { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, tty: req.tty };
    // kubectl exec's trail: the API server's audit id (from recent kubelets)
    // beside the container. The command stays out of the log at this level:
    // it may carry secrets, and the API server's audit log has it under the
    // same id.
    tracing::info!(container_id = %c.id, audit_request_id = %req.audit_request_id, tty = req.tty, "exec offered");
    tracing::debug!(container_id = %c.id, cmd = ?req.cmd, "exec command");
    let url = register(node, StreamRequest::Exec { container_id: c.id, cmd: req.cmd, wants })?;
    Ok(cri::ExecResponse { url })
}

pub(super) async fn attach(node: &Arc<Node>, req: cri::AttachRequest) -> Result<cri::AttachResponse> {
    let c = stream_target(node, &req.container_id, req.stdin || req.stdout || req.stderr)?;
    if req.stdin && !c.stdin {
        return Err(Error::invalid("stdin", format!("container {} was not created with stdin", c.id)));
    }
    if req.tty != c.tty {
        return Err(Error::invalid("tty", format!("container {} was created with tty={}", c.id, c.tty)));
    }
    let wants = Wants { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, tty: c.tty };
    tracing::info!(container_id = %c.id, audit_request_id = %req.audit_request_id, stdin = req.stdin, "attach offered");
    let url = register(node, StreamRequest::Attach { container_id: c.id, wants })?;
    Ok(cri::AttachResponse { url })
}

pub(super) async fn port_forward(node: &Arc<Node>, req: cri::PortForwardRequest) -> Result<cri::PortForwardResponse> {
    let pod = crate::pod::find(node, &req.pod_sandbox_id)?;
    if pod.state != crate::store::PodState::Ready {
        return Err(Error::FailedPrecondition(format!("pod sandbox {} is not ready", pod.id)));
    }
    let mut ports = Vec::new();
    for p in req.port {
        ports.push(u16::try_from(p).ok().filter(|p| *p > 0).ok_or_else(|| Error::invalid("port", format!("{p} is not a port")))?);
    }
    // A host-network pod's localhost is berthd's (the pod inherited its
    // network namespace), which need not be PID 1's.
    let netns = (pod.network_mode != crate::spec::ns_mode::NODE).then(|| berth_runtime::sandbox::pin_path(&node.pod_dir(&pod.id), "net"));
    let url = register(node, StreamRequest::PortForward { netns, ports })?;
    Ok(cri::PortForwardResponse { url })
}

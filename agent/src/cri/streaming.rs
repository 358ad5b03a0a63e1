//! Exec: hands out a single-use URL on the streaming server.

use std::sync::Arc;

use berth_proto::cri;
use tonic::{Request, Response, Status};

use super::Agent;
use crate::store::ContainerState;
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
    if req.tty {
        return Err(Status::unimplemented("Exec with tty is not implemented by berth yet"));
    }
    let c = crate::container::find(agent, &req.container_id)?;
    if c.state != ContainerState::Running {
        return Err(Status::failed_precondition(format!("container {} is not running", c.id)));
    }
    let streams = agent.streams.get().ok_or_else(|| Status::unavailable("the streaming server is not up"))?;
    let url = streams.register(
        "exec",
        StreamRequest::Exec { container_id: c.id, cmd: req.cmd, stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, tty: req.tty },
    );
    Ok(Response::new(cri::ExecResponse { url }))
}

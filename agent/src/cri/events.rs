//! GetContainerEvents: container lifecycle events (created, started,
//! stopped, deleted) with the pod's and its containers' statuses, as
//! kubelet's evented PLEG consumes them.

use std::pin::Pin;
use std::sync::Arc;

use berth_proto::cri;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use super::Agent;
use crate::store::{ContainerRecord, PodRecord};

/// How many events a slow subscriber may fall behind before it misses some.
pub const BUFFER: usize = 1024;

/// The stream type of GetContainerEvents.
pub type EventStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>>;

/// Publishes an event for `c` (no subscriber is fine).
pub fn emit(agent: &Agent, c: &ContainerRecord, kind: cri::ContainerEventType) {
    if agent.events.receiver_count() == 0 {
        return;
    }
    let pod = agent.store.get::<PodRecord>(&c.pod_id).ok().flatten();
    let containers = agent
        .store
        .list::<ContainerRecord>()
        .map(|all| all.iter().filter(|x| x.pod_id == c.pod_id).map(super::container::to_status).collect())
        .unwrap_or_default();
    let _ = agent.events.send(cri::ContainerEventResponse {
        container_id: c.id.clone(),
        container_event_type: kind as i32,
        created_at: crate::util::now_ns(),
        pod_sandbox_status: pod.as_ref().map(super::sandbox::to_status),
        containers_statuses: containers,
    });
}

pub(super) async fn get_container_events(agent: &Arc<Agent>, _r: Request<cri::GetEventsRequest>) -> Result<Response<EventStream>, Status> {
    let rx = agent.events.subscribe();
    let stream = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(|e| e.ok().map(Ok));
    Ok(Response::new(Box::pin(stream)))
}

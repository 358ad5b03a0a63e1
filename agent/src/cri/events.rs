//! GetContainerEvents: each subscriber turns the node's lifecycle events
//! into `ContainerEventResponse`s with the pod's and its containers'
//! statuses as they are when it handles the event, as kubelet's evented
//! PLEG consumes them.

use std::pin::Pin;
use std::sync::Arc;

use berth_proto::cri;
use tokio_stream::StreamExt;
use tonic::Status;

use super::convert::pod_status;
use crate::error::Result;
use crate::events::{ContainerEvent, EventKind};
use crate::node::Node;

/// The stream type of GetContainerEvents.
pub type EventStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>>;

/// One event as the CRI message.
fn response(node: &Node, e: &ContainerEvent) -> cri::ContainerEventResponse {
    let kind = match e.kind {
        EventKind::Created => cri::ContainerEventType::ContainerCreatedEvent,
        EventKind::Started => cri::ContainerEventType::ContainerStartedEvent,
        EventKind::Stopped => cri::ContainerEventType::ContainerStoppedEvent,
        EventKind::Deleted => cri::ContainerEventType::ContainerDeletedEvent,
    };
    cri::ContainerEventResponse {
        container_id: e.id.clone(),
        container_event_type: kind as i32,
        created_at: e.at_ns,
        pod_sandbox_status: node.pods.get(&e.pod_id).as_ref().map(pod_status),
        containers_statuses: super::container::statuses_of_pod(node, &e.pod_id),
    }
}

pub(super) async fn get_container_events(node: &Arc<Node>, _req: cri::GetEventsRequest) -> Result<EventStream> {
    let rx = node.events.subscribe();
    // Weak: an open subscription must not keep a stopping node alive.
    let node = Arc::downgrade(node);
    let stream =
        tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |e| Some(Ok(response(node.upgrade()?.as_ref(), &e.ok()?))));
    Ok(Box::pin(stream))
}

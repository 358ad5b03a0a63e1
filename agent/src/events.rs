//! Container lifecycle events as the domain knows them: a broadcast of
//! `ContainerEvent`s. Subscribers (GetContainerEvents in `cri/`) turn each
//! into their own wire message.

use tokio::sync::broadcast;

/// How many events a slow subscriber may fall behind before it misses some.
pub const BUFFER: usize = 1024;

/// What happened to a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// CreateContainer finished.
    Created,
    /// StartContainer finished.
    Started,
    /// The container's process exited (or was killed).
    Stopped,
    /// RemoveContainer finished.
    Deleted,
}

/// One lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    /// The container.
    pub id: String,
    /// Its pod.
    pub pod_id: String,
    /// What happened.
    pub kind: EventKind,
    /// When, in ns since the epoch.
    pub at_ns: i64,
}

/// The node's event bus.
pub struct Events {
    tx: broadcast::Sender<ContainerEvent>,
}

impl Default for Events {
    fn default() -> Self {
        Events { tx: broadcast::channel(BUFFER).0 }
    }
}

impl Events {
    /// Publishes an event; having no subscriber is fine.
    pub fn emit(&self, id: &str, pod_id: &str, kind: EventKind) {
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(ContainerEvent { id: id.into(), pod_id: pod_id.into(), kind, at_ns: crate::util::now_ns() });
        }
    }

    /// A new subscription, from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ContainerEvent> {
        self.tx.subscribe()
    }
}

//! Every wire protocol berth speaks with the outside world:
//!
//! - [`cri`]: CRI v1, from the `k8s-cri` crate (the CRI of Kubernetes 1.32),
//!   with tonic; behind the `cri` feature so that a user of the framing
//!   alone does not compile gRPC. Other crates import it from here so that a
//!   CRI upgrade is a one-line change.
//! - [`spdy`]: SPDY/3.1 frames, as kubelet, crictl and client-go stream.
//! - [`remotecommand`]: Kubernetes' channel protocol, subprotocols and the
//!   status that ends an exec, shared by the WebSocket and SPDY transports.
//!
//! The protocol between berthd and its own processes lives in the runtime
//! crate, next to both of its ends.

/// CRI v1: messages, the `RuntimeService`/`ImageService` server traits and clients.
#[cfg(feature = "cri")]
pub mod cri {
    pub use k8s_cri::v1::*;
}

pub mod remotecommand;
pub mod spdy;

#[cfg(feature = "cri")]
pub use tonic;

//! Every wire protocol berth speaks with the outside world:
//!
//! - [`cri`]: CRI v1 with tonic, generated from `cri/api.proto` — the CRI
//!   of Kubernetes 1.32 as the `k8s-cri` crate ships it, plus the newer
//!   fields berth reads (`Mount.image_sub_path`, 1.33); behind the `cri`
//!   feature so that a user of the framing alone does not compile gRPC.
//!   Other crates import it from here.
//! - [`spdy`]: SPDY/3.1 frames, as kubelet, crictl and client-go stream.
//! - [`remotecommand`]: Kubernetes' channel protocol, subprotocols and the
//!   status that ends an exec, shared by the WebSocket and SPDY transports.
//!
//! The protocol between berthd and its own processes lives in the runtime
//! crate, next to both of its ends.

/// CRI v1: messages, the `RuntimeService`/`ImageService` server traits and clients.
#[cfg(feature = "cri")]
#[allow(clippy::all, missing_docs, rustdoc::all)]
pub mod cri {
    tonic::include_proto!("runtime.v1");
}

pub mod remotecommand;
pub mod spdy;

#[cfg(feature = "cri")]
pub use tonic;

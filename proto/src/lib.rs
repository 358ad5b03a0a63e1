//! The protocols berth speaks.
//!
//! CRI v1 comes from the `k8s-cri` crate (the CRI of Kubernetes 1.32); every
//! other crate imports it from here so that a CRI upgrade is a one-line change.

/// CRI v1: messages, the `RuntimeService`/`ImageService` server traits and clients.
pub mod cri {
    pub use k8s_cri::v1::*;
}

pub use tonic;

//! berth-agent: berthd's library. The binary is a thin command line over
//! [`daemon::run`]. See `docs/ARCHITECTURE.md` for the layers:
//!
//! - the domain core — [`node`] (the node's state), [`pod`], [`container`],
//!   [`stats`], [`events`], [`spec`] and [`security`] (request → OCI spec),
//!   [`net`], with [`model`] (what it is asked) and [`error`] (how it
//!   fails) — knows no gRPC and no CRI type;
//! - [`image`] and [`stream`] depend on nothing else of the agent (a small
//!   trait each for what they need);
//! - [`store`] and [`index`] keep the records;
//! - [`cri`] is the thin gRPC adapter, and [`daemon`] wires it all up.

pub mod binaries;
pub mod cgroups;
pub mod check;
pub mod config;
pub mod container;
pub mod cri;
pub mod daemon;
pub mod diag;
pub mod error;
pub mod events;
pub mod fault;
pub mod image;
pub mod index;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod net;
pub mod node;
pub mod pod;
pub mod reconcile;
pub mod reload;
pub mod security;
pub mod spec;
pub mod stats;
pub mod store;
pub mod stream;
pub mod telemetry;
pub mod trash;
pub mod util;

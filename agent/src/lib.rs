//! berth-agent: berthd's library. The binary is a thin command line over
//! [`daemon::run`]; tests use the modules directly.

pub mod config;
pub mod container;
pub mod cri;
pub mod daemon;
pub mod image;
pub mod logging;
pub mod net;
pub mod pod;
pub mod security;
pub mod spec;
pub mod stats;
pub mod store;
pub mod stream;
pub mod util;

//! berth-agent: berthd's library. The binary is a thin command line over
//! [`daemon::run`]; tests use the modules directly.

pub mod config;
pub mod cri;
pub mod daemon;
pub mod image;
pub mod logging;
pub mod store;

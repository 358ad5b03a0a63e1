//! The processes berth starts inside a container: its init (from fork to
//! exec), the exec helper, and what both share — users, capabilities and
//! seccomp, terminals.

pub mod clone;
pub mod exec;
pub mod init;
pub mod security;
pub mod tty;
pub mod user;

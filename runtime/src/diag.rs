//! Log lines of berth's own processes (the monitor writes them to its
//! `monitor.log`), in the shape of berthd's text log:
//! `<RFC 3339 UTC>  WARN berth_monitor: message container_id=…`. No logging
//! framework: the monitor stays small.

use std::io::Write;
use std::sync::OnceLock;

static CONTEXT: OnceLock<String> = OnceLock::new();

/// Fields added to every line of this process (once, e.g. `container_id=…`).
pub fn set_context(fields: String) {
    let _ = CONTEXT.set(fields);
}

/// Severity.
#[derive(Debug, Clone, Copy)]
pub enum Level {
    /// Normal events.
    Info,
    /// Something went wrong, the process goes on.
    Warn,
    /// The process cannot do its job.
    Error,
}

/// Writes one line to stderr.
pub fn log(level: Level, msg: &str) {
    let level = match level {
        Level::Info => " INFO",
        Level::Warn => " WARN",
        Level::Error => "ERROR",
    };
    let ctx = CONTEXT.get().map(String::as_str).unwrap_or("");
    let ts = crate::time::rfc3339_nano(crate::time::now_ns());
    let _ = writeln!(std::io::stderr(), "{ts} {level} berth_monitor: {msg} {ctx}");
}

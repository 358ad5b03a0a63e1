//! Log setup: `tracing` to stderr as text or JSON.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. The level was validated with the config.
pub fn init(log: &LogConfig) {
    let filter = EnvFilter::try_new(directives(&log.level)).unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only for a person at a terminal, never into a file or journald.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let result = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
    if let Err(e) = result {
        eprintln!("berthd: logging already initialised: {e}");
    }
}

/// A bare level ("debug") applies to berth's own crates, keeping the gRPC and
/// HTTP/2 libraries at `warn` so that debug logs stay readable; a full filter
/// ("info,h2=debug") is taken as written.
pub fn directives(level: &str) -> String {
    if level.contains('=') || level.contains(',') {
        return level.to_string();
    }
    let crates = ["berthd", "berth_agent", "berth_runtime", "berth_network"];
    let mut out = String::from("warn");
    for c in crates {
        out.push_str(&format!(",{c}={level}"));
    }
    out
}

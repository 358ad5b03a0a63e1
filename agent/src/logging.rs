//! Log setup: `tracing` to stderr as text or JSON, with the filter and the
//! format swappable at run time (SIGHUP reload).

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::{LogConfig, LogFormat};

type Filtered = tracing_subscriber::layer::Layered<reload::Layer<EnvFilter, Registry>, Registry>;
type Output = Box<dyn Layer<Filtered> + Send + Sync>;

struct Handles {
    filter: reload::Handle<EnvFilter, Registry>,
    output: reload::Handle<Output, Filtered>,
}

static HANDLES: OnceLock<Handles> = OnceLock::new();

fn output(format: LogFormat) -> Output {
    // Colour codes only for a person at a terminal, never into a file or journald.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => layer.boxed(),
        LogFormat::Json => layer.json().flatten_event(true).with_current_span(true).boxed(),
    }
}

/// Installs the global subscriber. The level was validated with the config.
pub fn init(log: &LogConfig) {
    let filter = EnvFilter::try_new(directives(&log.level)).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, filter_handle) = reload::Layer::new(filter);
    let (out, output_handle) = reload::Layer::new(output(log.format));
    match tracing_subscriber::registry().with(filter).with(out).try_init() {
        Ok(()) => {
            let _ = HANDLES.set(Handles { filter: filter_handle, output: output_handle });
        }
        Err(e) => eprintln!("berthd: logging already initialised: {e}"),
    }
}

/// Applies a new level and format to the running subscriber.
pub fn reconfigure(log: &LogConfig) -> Result<(), String> {
    let handles = HANDLES.get().ok_or("logging is not initialised")?;
    let filter = EnvFilter::try_new(directives(&log.level)).map_err(|e| format!("log.level {:?}: {e}", log.level))?;
    handles.filter.reload(filter).map_err(|e| format!("log.level: {e}"))?;
    handles.output.reload(output(log.format)).map_err(|e| format!("log.format: {e}"))
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

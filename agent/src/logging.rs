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

/// How many recent warnings and errors berthd keeps for `Status` verbose
/// and `berthd diag`.
const RECENT: usize = 100;

static RECENT_ERRORS: std::sync::Mutex<std::collections::VecDeque<String>> = std::sync::Mutex::new(std::collections::VecDeque::new());

/// The last warnings and errors logged, oldest first (one line each).
pub fn recent_errors() -> Vec<String> {
    RECENT_ERRORS.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
}

/// Keeps the WARN and ERROR events that pass the log filter in [`RECENT_ERRORS`].
struct Recent;

impl<S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>> Layer<S> for Recent {
    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let level = *event.metadata().level();
        if level > tracing::Level::WARN {
            return;
        }
        let mut line =
            format!("{} {level} {}", berth_runtime::time::rfc3339_nano(berth_runtime::time::now_ns()), event.metadata().target());
        if let Some(scope) = ctx.event_scope(event) {
            let spans: Vec<String> = scope.from_root().map(|s| s.name().to_string()).collect();
            line.push_str(&format!(" [{}]", spans.join(":")));
        }
        let mut fields = FieldText(String::new());
        event.record(&mut fields);
        line.push_str(&fields.0);
        let mut recent = RECENT_ERRORS.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(line);
    }
}

struct FieldText(String);

impl tracing::field::Visit for FieldText {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.push_str(&format!(": {value:?}"));
        } else {
            self.0.push_str(&format!(" {}={value:?}", field.name()));
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(&format!(": {value}"));
        } else {
            self.0.push_str(&format!(" {}={value}", field.name()));
        }
    }
}

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
    match tracing_subscriber::registry().with(filter).with(out).with(Recent).try_init() {
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

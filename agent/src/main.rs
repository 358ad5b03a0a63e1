//! berthd: the berth node agent.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use berth_agent::config::{Config, LogFormat, Sources, DEFAULT_CONFIG_PATH, DEFAULT_CONFIG_TOML};

/// berth: a Kubernetes node agent serving the Container Runtime Interface (CRI v1)
/// to kubelet and crictl, running pods and containers itself.
#[derive(Parser, Debug)]
#[command(name = "berthd", version, about, long_about = None)]
struct Cli {
    /// TOML config file. A missing default file is fine: every key has a built-in default.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Persistent data directory (metadata DB, content store, layers) [config: root; default /var/lib/berth].
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Runtime state directory (lock, pinned namespaces, monitor sockets) [config: state; default /run/berth].
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// CRI gRPC unix socket [config: socket; default /run/berth/berth.sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Log level or tracing filter, e.g. debug or "info,berth_agent=trace" [config: log.level; default info].
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Log line format [config: log.format; default text].
    #[arg(long, value_enum, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        what: ConfigCommand,
    },
    /// Write a diagnostics report for a bug report (no secrets in it).
    Diag {
        /// The report file (default: berth-diag-<unix time>.txt in the current directory).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Check the kernel and host features berthd needs, one line each;
    /// exits 1 when one is missing.
    Check,
    /// Remove what berthd leaves on the node by design (pods and containers,
    /// the bridge, the nftables table, cgroups, the state directory), for
    /// uninstalling; berthd must be stopped.
    Cleanup {
        /// Also remove the root: images and metadata.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Print the complete default config, with a comment per key.
    Default,
    /// Print the effective config (file, drop-ins and flags applied) as TOML,
    /// each key that is not at its default followed by what set it.
    Show,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.command.is_none() {
        berth_agent::memory::reexec_with_tunables();
        // What berthd inherited without asking (a job server's pipes, a
        // shell's fds) is not for its children: each gets only what berthd
        // passes it, and the helpers it runs in containers' namespaces hold
        // nothing of the node's.
        berth_runtime::process::init::close_on_exec_from(3);
    }
    if let Some(Command::Config { what: ConfigCommand::Default }) = cli.command {
        print!("{DEFAULT_CONFIG_TOML}");
        return ExitCode::SUCCESS;
    }
    let (config, sources) = match effective_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berthd: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Config { what: ConfigCommand::Show }) = cli.command {
        match config.show(&sources) {
            Ok(t) => print!("{t}"),
            Err(e) => {
                eprintln!("berthd: {e}");
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
    if let Some(Command::Diag { out }) = &cli.command {
        let out = out.clone().unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            PathBuf::from(format!("berth-diag-{now}.txt"))
        });
        return match berth_agent::diag::run(&config, &sources, &out) {
            Ok(()) => {
                println!("{}", out.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("berthd diag: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Check) = cli.command {
        let checks = berth_agent::check::run(&config);
        print!("{}", berth_agent::check::report(&checks));
        return if checks.iter().all(|c| c.ok) { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    berth_agent::logging::init(&config.log);
    if let Some(Command::Cleanup { all }) = cli.command {
        return match berth_agent::daemon::cleanup(config, all) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("berthd cleanup: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    // SIGHUP reads the same files again and applies the same flags.
    let reload: berth_agent::daemon::Reload = Box::new(move || effective_config(&cli).map(|(c, _)| c));
    match berth_agent::daemon::run(config, Some(reload)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berthd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Defaults, then the file and its drop-ins, then flags; validated once.
fn effective_config(cli: &Cli) -> Result<(Config, Sources), berth_agent::config::ConfigError> {
    let (mut config, mut sources) = Config::load_layered(&config_path(cli), cli.config.is_some())?;
    apply_flags(cli, &mut config, &mut sources);
    config.validate(&sources)?;
    Ok((config, sources))
}

fn config_path(cli: &Cli) -> PathBuf {
    cli.config.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
}

/// Flags win over every file.
fn apply_flags(cli: &Cli, config: &mut Config, sources: &mut Sources) {
    if let Some(v) = &cli.root {
        config.root = v.clone();
        sources.set("root", "flag --root");
    }
    if let Some(v) = &cli.state {
        config.state = v.clone();
        sources.set("state", "flag --state");
    }
    if let Some(v) = &cli.socket {
        config.socket = v.clone();
        sources.set("socket", "flag --socket");
    }
    if let Some(v) = &cli.log_level {
        config.log.level = v.clone();
        sources.set("log.level", "flag --log-level");
    }
    if let Some(v) = cli.log_format {
        config.log.format = v;
        sources.set("log.format", "flag --log-format");
    }
}

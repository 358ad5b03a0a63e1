//! berthd's configuration: built-in defaults, an optional TOML file, and flags
//! on top. Every key has a default, so a missing default file is fine.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::image::RegistryConfig;

/// Where berthd looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/berth/config.toml";

/// The complete default configuration, one comment per key. `berthd config
/// default` prints it; a unit test keeps it equal to `Config::default()`.
pub const DEFAULT_CONFIG_TOML: &str = r#"# berthd configuration. Every key is optional: the values below are the
# built-in defaults. Flags given on the command line win over this file.

# Persistent data: the metadata database, the content store, unpacked image
# layers and container writable layers. Survives reboots.
root = "/var/lib/berth"

# Runtime state that lives until reboot: the lock file, pinned namespaces,
# monitor sockets and exit files.
state = "/run/berth"

# The CRI v1 gRPC socket that kubelet and crictl connect to (mode 0660).
socket = "/run/berth/berth.sock"

# On SIGTERM/SIGINT, how long in-flight RPCs may take to finish, in seconds.
shutdown_timeout_seconds = 10

[registry]
# Registries (host or host:port) reached over plain HTTP instead of HTTPS.
# localhost, 127.0.0.0/8 and ::1 always are, as Docker does.
insecure = []

# Per-registry hosts, as containerd's certs.d: <config_path>/<registry>/hosts.toml
# (or _default/hosts.toml) lists the hosts to try in order — mirrors with
# a path prefix or override_path, their capabilities (pull, resolve), a CA
# file (ca), skip_verify — then the registry's own `server`. Read at every
# pull. A registry with a hosts.toml ignores [registry.mirrors].
config_path = "/etc/berth/certs.d"

# Mirrors per registry host, tried in order before the registry itself; a
# mirror that fails falls back to the next and finally to the registry.
# Example: "docker.io" = ["mirror.example.internal:5000"]
[registry.mirrors]

# Credentials per registry host for pulls that bring none (kubelet's
# credential providers send their own): username + password, or auth
# (base64 user:password), or identity_token. Only the host named gets them.
# `config show` and Status print them redacted.
# Example: [registry.auths."registry.example:5000"]
#          username = "puller"
#          password = "secret"
[registry.auths]

[image]
# Layers downloaded at once per node.
max_concurrent_downloads = 3

# Create the character and block device nodes image layers carry. Off: they
# are left out (and logged); containers get their devices from berth.
unpack_device_nodes = false

# syncfs(2) each layer once unpacked, before the image is recorded, so a
# power cut cannot leave a recorded image with empty files (containerd's
# image_pull_with_sync_fs). Off, as there: it makes pulls wait for the disk
# and every other writer of that filesystem with them.
pull_with_sync_fs = false

# A pull that receives no bytes for this long is cancelled with an error
# (containerd's image_pull_progress_timeout); 0: never. A pull in progress
# logs bytes and layers done every 5 seconds.
pull_progress_timeout_seconds = 300

# Images reported as pinned (ImageService `pinned`), so that kubelet's image
# garbage collection never removes them: references or image ids.
# Example: ["registry.example/node-agent:v1.2"]
pinned = []

[runtime]
# The berth-monitor binary; empty means the one next to berthd.
monitor_path = ""

# Container monitors are forked by a pre-started berth-monitor (a zygote,
# one per monitor binary) rather than each spawned anew: faster creates, and
# the monitors share the pages the binary's start-up writes. false spawns
# each one (what berth did before).
monitor_zygote = true

# Who makes pod and container cgroups: "cgroupfs" (berth) or "systemd"
# (transient units over D-Bus: a scope per container, kubelet's pod slices;
# kubelet's cgroupDriver must match, and learns it from RuntimeConfig).
cgroup_driver = "cgroupfs"

# cgroup (relative to the hierarchy root) for pods whose config names no
# cgroup_parent; each pod gets <this>/<pod id>. With the systemd driver, a
# slice ("berth" is berth.slice; each pod gets berth-<pod id>.slice).
default_cgroup_parent = "berth"

# Size of each pod's shared /dev/shm, in bytes.
shm_size_bytes = 67108864

# StopPodSandbox: how long containers still running get between their stop
# signal and SIGKILL, in seconds. kubelet has already stopped them with the
# pod's grace period; 0 kills at once, as containerd does.
pod_stop_grace_seconds = 0

# ExecSync: once the command has exited, how long to wait for its output
# pipes to close (a background child may hold them), in seconds; then the
# output read so far is the answer. 0 waits (up to the request's timeout).
# containerd calls this drain_exec_sync_io_timeout.
drain_exec_sync_io_seconds = 2

# RuntimeClass handlers besides the default (""), one table each, e.g.
#   [runtimes.strict]
#   # containers that would run unconfined get the RuntimeDefault seccomp
#   # profile ("unconfined": as asked)
#   default_seccomp = "runtime-default"
#   # pods without a cgroup_parent of their own go here ("": as above)
#   cgroup_parent = "berth-strict"
#   # another berth-monitor binary ("": runtime.monitor_path)
#   monitor_path = ""
# A RuntimeClass's `handler` names the table; "runc" and "berth" are
# accepted as names of the default handler.
[runtimes]

[network]
# "builtin": berth's bridge, veth, NAT and hostPort; "cni": the plugins of
# the first config in cni_conf_dir; "auto": cni when cni_conf_dir has a
# config, else builtin.
mode = "builtin"

# Built-in mode: the bridge, the pod subnet (UpdateRuntimeConfig's pod CIDR
# replaces it) and the gateway ("" = the subnet's first address).
bridge = "berth0"
subnet = "10.88.0.0/16"
gateway = ""
# Dual-stack: an IPv6 pod subnet (e.g. "fd00:88::/64"; "" = IPv4 only). Pods
# get an address from it on eth0 too (PodSandboxStatus additional_ips), the
# bridge its first address, egress is masqueraded, and the node's
# net.ipv6.conf.all.forwarding is set to 1. hostPorts stay IPv4. kubelet's
# pod CIDR "v4,v6" replaces both subnets.
subnet6 = ""

# Built-in mode: berth's own nftables table (family inet). No other table
# is ever touched.
nft_table = "berth"

# CNI mode: where configs and plugins are.
cni_conf_dir = "/etc/cni/net.d"
cni_bin_dirs = ["/opt/cni/bin", "/usr/lib/cni"]

[stream]
# The streaming server for Exec, Attach and PortForward: address and port
# (0 = a free one); URLs it hands out are single-use and expire. With both
# TLS files set (PEM), it serves https.
address = "127.0.0.1"
port = 0
token_ttl_seconds = 60
# tls_cert_file = "/etc/berth/stream.crt"
# tls_key_file = "/etc/berth/stream.key"

[metrics]
# berthd's own metrics for Prometheus (OpenMetrics text at GET /metrics):
# RPCs, pulls, start stages, pods and containers by state, monitors.
# "" is off; e.g. "127.0.0.1:9464".
address = ""

[log]
# error, warn, info, debug or trace; or a tracing filter such as
# "info,berth_agent=debug".
level = "info"

# "text" for people, "json" for log collectors.
format = "text"
"#;

/// The effective configuration of one berthd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Persistent data directory.
    pub root: PathBuf,
    /// Runtime state directory (tmpfs on a real node).
    pub state: PathBuf,
    /// The CRI socket path.
    pub socket: PathBuf,
    /// Bound on the graceful shutdown, in seconds.
    pub shutdown_timeout_seconds: u64,
    /// Registry access: insecure hosts and mirrors.
    pub registry: RegistryConfig,
    /// Image pulling.
    pub image: ImageConfig,
    /// The executor.
    pub runtime: RuntimeConfig,
    /// RuntimeClass handlers besides the default, by name.
    pub runtimes: std::collections::BTreeMap<String, HandlerConfig>,
    /// The pod network.
    pub network: NetworkConfig,
    /// The streaming server.
    pub stream: StreamConfig,
    /// The Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// Logging.
    pub log: LogConfig,
}

/// One `[runtimes.<name>]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HandlerConfig {
    /// What containers get that ask for no seccomp profile or for none.
    pub default_seccomp: DefaultSeccomp,
    /// cgroup parent for pods without one ("" = runtime.default_cgroup_parent).
    pub cgroup_parent: String,
    /// The berth-monitor binary ("" = runtime.monitor_path).
    pub monitor_path: PathBuf,
}

/// Who makes pod and container cgroups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CgroupDriver {
    /// berth, as directories.
    #[default]
    Cgroupfs,
    /// systemd, as transient slices and scopes.
    Systemd,
}

/// A handler's seccomp for containers that would run unconfined.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DefaultSeccomp {
    /// As asked.
    #[default]
    Unconfined,
    /// RuntimeDefault.
    RuntimeDefault,
}

/// The `[metrics]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// host:port to serve on; empty: off.
    pub address: String,
}

/// The `[stream]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// Listen address.
    pub address: String,
    /// Listen port (0 = any free one).
    pub port: u16,
    /// Lifetime of a streaming URL.
    pub token_ttl_seconds: u64,
    /// PEM certificate chain for TLS (with `tls_key_file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key for TLS (with `tls_cert_file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig { address: "127.0.0.1".into(), port: 0, token_ttl_seconds: 60, tls_cert_file: None, tls_key_file: None }
    }
}

/// The `[network]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// builtin, cni or auto.
    pub mode: NetworkMode,
    /// Bridge name (built-in).
    pub bridge: String,
    /// Pod subnet (built-in).
    pub subnet: String,
    /// Gateway ("" = first address).
    pub gateway: String,
    /// IPv6 pod subnet of a dual-stack network ("" = IPv4 only).
    pub subnet6: String,
    /// nftables table (built-in).
    pub nft_table: String,
    /// CNI config directory.
    pub cni_conf_dir: PathBuf,
    /// CNI plugin directories, searched in order.
    pub cni_bin_dirs: Vec<PathBuf>,
}

/// How pods are networked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// berth's bridge.
    Builtin,
    /// CNI plugins.
    Cni,
    /// CNI when a config exists, else built-in.
    Auto,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            mode: NetworkMode::Builtin,
            bridge: "berth0".into(),
            subnet: "10.88.0.0/16".into(),
            gateway: String::new(),
            subnet6: String::new(),
            nft_table: "berth".into(),
            cni_conf_dir: PathBuf::from("/etc/cni/net.d"),
            cni_bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
        }
    }
}

/// The `[runtime]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// The berth-monitor binary ("" = next to berthd).
    pub monitor_path: PathBuf,
    /// Monitors forked by a zygote (else spawned each).
    pub monitor_zygote: bool,
    /// Who makes the cgroups.
    pub cgroup_driver: CgroupDriver,
    /// cgroup parent for pods without one.
    pub default_cgroup_parent: String,
    /// Size of a pod's /dev/shm.
    pub shm_size_bytes: u64,
    /// Grace before SIGKILL when a pod is stopped.
    pub pod_stop_grace_seconds: u64,
    /// How long ExecSync waits for output after the command exited (0: no bound).
    pub drain_exec_sync_io_seconds: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            monitor_path: PathBuf::new(),
            monitor_zygote: true,
            cgroup_driver: CgroupDriver::Cgroupfs,
            default_cgroup_parent: "berth".into(),
            shm_size_bytes: 64 << 20,
            pod_stop_grace_seconds: 0,
            drain_exec_sync_io_seconds: 2,
        }
    }
}

/// The `[image]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageConfig {
    /// Parallel layer downloads per node.
    pub max_concurrent_downloads: usize,
    /// Create device nodes from layers.
    pub unpack_device_nodes: bool,
    /// syncfs each layer before the image is recorded.
    pub pull_with_sync_fs: bool,
    /// Seconds without pulled bytes before a pull is cancelled (0: never).
    pub pull_progress_timeout_seconds: u64,
    /// Pinned image references or ids.
    pub pinned: Vec<String>,
}

impl Default for ImageConfig {
    fn default() -> Self {
        ImageConfig {
            max_concurrent_downloads: 3,
            unpack_device_nodes: false,
            pull_with_sync_fs: false,
            pull_progress_timeout_seconds: 300,
            pinned: Vec::new(),
        }
    }
}

/// The `[log]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A level or a tracing filter directive.
    pub level: String,
    /// Line format.
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            root: PathBuf::from("/var/lib/berth"),
            state: PathBuf::from("/run/berth"),
            socket: PathBuf::from("/run/berth/berth.sock"),
            shutdown_timeout_seconds: 10,
            registry: RegistryConfig::default(),
            image: ImageConfig::default(),
            runtime: RuntimeConfig::default(),
            runtimes: Default::default(),
            network: NetworkConfig::default(),
            stream: StreamConfig::default(),
            metrics: MetricsConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into(), format: LogFormat::Text }
    }
}

/// A config that cannot be used; its Display is the one line berthd prints.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The file is not valid TOML or does not match the schema.
    #[error("config {path}: {detail}")]
    Parse { path: PathBuf, detail: String },
    /// A key has a value berthd cannot use; `origin` is what set it.
    #[error("config {origin}: key `{key}`: {reason}")]
    Invalid { origin: String, key: &'static str, reason: String },
}

/// Where each key's value came from: a file, a flag, or the built-in
/// default (keys not listed). Keys are dotted paths (`log.level`,
/// `registry.mirrors.docker.io`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    by_key: std::collections::BTreeMap<String, String>,
    /// The files read, in the order they were applied.
    pub files: Vec<PathBuf>,
}

impl Sources {
    /// Records that `source` set `key` (a later source wins).
    pub fn set(&mut self, key: &str, source: impl Into<String>) {
        self.by_key.insert(key.to_string(), source.into());
    }

    /// What set `key` or, for a table, the last key inside it; "default" if nothing did.
    pub fn of(&self, key: &str) -> &str {
        if let Some(s) = self.by_key.get(key) {
            return s;
        }
        let prefix = format!("{key}.");
        self.by_key.iter().filter(|(k, _)| k.starts_with(&prefix)).map(|(_, v)| v.as_str()).next_back().unwrap_or("default")
    }

    /// Every key set by something other than the defaults, with its source.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.by_key.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    fn record_table(&mut self, table: &toml::Table, source: &str) {
        for_each_leaf("", table, &mut |key, _| self.set(&key, source));
    }
}

/// Calls `f` with every leaf of `table` under its dotted key (`log.level`,
/// `registry.mirrors.docker.io`); an empty table counts as a leaf.
pub(crate) fn for_each_leaf(prefix: &str, table: &toml::Table, f: &mut dyn FnMut(String, &toml::Value)) {
    for (k, v) in table {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            toml::Value::Table(t) if !t.is_empty() => for_each_leaf(&key, t, f),
            _ => f(key, v),
        }
    }
}

/// The drop-in directory next to a main config file: `<dir>/config.d`.
pub fn dropin_dir(main: &Path) -> PathBuf {
    main.parent().unwrap_or(Path::new("/")).join("config.d")
}

/// Merges `over` into `base`: tables merge key by key, anything else
/// (values, arrays) is replaced, as CRI-O's drop-ins do.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

impl Config {
    /// The main file (`explicit`: it must exist; else a missing one means
    /// "use defaults"), then every `*.toml` in its `config.d` directory in
    /// lexical order of their names, each over the ones before. Each file is
    /// checked against the schema on its own, so an error names its file and line.
    pub fn load_layered(path: &Path, explicit: bool) -> Result<(Config, Sources), ConfigError> {
        let mut files = Vec::new();
        match std::fs::read_to_string(path) {
            Ok(t) => files.push((path.to_path_buf(), t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {}
            Err(source) => return Err(ConfigError::Read { path: path.into(), source }),
        }
        let dir = dropin_dir(path);
        let mut names = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
                .collect::<Vec<_>>(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(ConfigError::Read { path: dir, source }),
        };
        names.sort();
        for p in names {
            let text = std::fs::read_to_string(&p).map_err(|source| ConfigError::Read { path: p.clone(), source })?;
            files.push((p, text));
        }
        let mut merged = toml::Table::new();
        let mut sources = Sources::default();
        for (p, text) in files {
            Config::parse(&text).map_err(|detail| ConfigError::Parse { path: p.clone(), detail })?;
            let table: toml::Table =
                toml::from_str(&text).map_err(|e| ConfigError::Parse { path: p.clone(), detail: one_line_error(&text, &e) })?;
            sources.record_table(&table, &p.display().to_string());
            merge(&mut merged, table);
            sources.files.push(p);
        }
        let config = toml::Value::Table(merged).try_into::<Config>().map_err(|e| ConfigError::Parse {
            path: sources.files.last().cloned().unwrap_or_else(|| path.into()),
            detail: format!("merged config: {}", e.message().trim().replace('\n', " ")),
        })?;
        Ok((config, sources))
    }

    /// Parses TOML text; the error is one line with the line number and key.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str::<Config>(text).map_err(|e| one_line_error(text, &e))
    }

    /// The effective config as TOML with, after each key not at its default,
    /// a comment naming the file or flag that set it.
    pub fn show(&self, sources: &Sources) -> Result<String, toml::ser::Error> {
        let text = toml::to_string(&self.redacted())?;
        let mut out = String::new();
        if sources.files.is_empty() {
            out.push_str("# no config file: built-in defaults and flags\n");
        } else {
            out.push_str("# files, in the order applied:\n");
            for f in &sources.files {
                out.push_str(&format!("#   {}\n", f.display()));
            }
        }
        let mut table = String::new();
        for line in text.lines() {
            let trimmed = line.trim();
            if let Some(name) = trimmed.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                table = name.split('.').map(|p| p.trim_matches('"')).collect::<Vec<_>>().join(".");
                out.push_str(line);
            } else if let Some((key, _)) = trimmed.split_once(" = ") {
                let key = key.trim().trim_matches('"');
                let full = if table.is_empty() { key.to_string() } else { format!("{table}.{key}") };
                out.push_str(line);
                let source = sources.of(&full);
                if source != "default" {
                    out.push_str(&format!("  # {source}"));
                }
            } else {
                out.push_str(line);
            }
            out.push('\n');
        }
        Ok(out)
    }

    /// The same config with every secret replaced, for printing (`config
    /// show`, Status verbose, diagnostics).
    pub fn redacted(&self) -> Config {
        let mut c = self.clone();
        for a in c.registry.auths.values_mut() {
            *a = a.redacted();
        }
        c
    }

    /// Checks values that the schema alone cannot; errors name what set the key.
    pub fn validate(&self, sources: &Sources) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: String| ConfigError::Invalid { origin: sources.of(key).to_string(), key, reason };
        for (key, path) in [("root", &self.root), ("state", &self.state), ("socket", &self.socket)] {
            if !path.is_absolute() {
                return Err(invalid(key, format!("{} is not an absolute path", path.display())));
            }
        }
        if self.socket.file_name().is_none() {
            return Err(invalid("socket", format!("{} names no file", self.socket.display())));
        }
        if self.image.max_concurrent_downloads == 0 || self.image.max_concurrent_downloads > 64 {
            return Err(invalid("image.max_concurrent_downloads", format!("{} is not within 1..=64", self.image.max_concurrent_downloads)));
        }
        let systemd = self.runtime.cgroup_driver == CgroupDriver::Systemd;
        if let Err(why) = crate::cgroups::parent_path(systemd, &self.runtime.default_cgroup_parent) {
            return Err(invalid("runtime.default_cgroup_parent", why));
        }
        if !self.runtime.monitor_path.as_os_str().is_empty() && !self.runtime.monitor_path.is_absolute() {
            return Err(invalid("runtime.monitor_path", format!("{} is not an absolute path", self.runtime.monitor_path.display())));
        }
        for (name, h) in &self.runtimes {
            // A RuntimeClass handler is a DNS label (Kubernetes validates it so).
            let label = !name.is_empty()
                && name.len() <= 63
                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !name.starts_with('-')
                && !name.ends_with('-');
            if !label || ["runc", "berth"].contains(&name.as_str()) {
                return Err(invalid("runtimes", format!("{name:?} is not a handler name (a DNS label other than runc and berth)")));
            }
            if !h.cgroup_parent.is_empty() {
                if let Err(why) = crate::cgroups::parent_path(systemd, &h.cgroup_parent) {
                    return Err(invalid("runtimes", format!("{name}: cgroup_parent: {why}")));
                }
            }
            if !h.monitor_path.as_os_str().is_empty() && !h.monitor_path.is_absolute() {
                return Err(invalid("runtimes", format!("{name}: monitor_path {} is not an absolute path", h.monitor_path.display())));
            }
        }
        let n = &self.network;
        if let Err(e) =
            berth_network::BridgeConfig::new(&n.bridge, &n.subnet, &n.gateway, &n.nft_table).and_then(|b| b.with_ipv6(&n.subnet6))
        {
            let text = e.to_string();
            let (key, reason) = text.split_once(": ").unwrap_or(("network", text.as_str()));
            let key: &'static str = match key {
                "network.bridge" => "network.bridge",
                "network.subnet" => "network.subnet",
                "network.gateway" => "network.gateway",
                "network.subnet6" => "network.subnet6",
                "network.nft_table" => "network.nft_table",
                _ => "network",
            };
            return Err(invalid(key, reason.to_string()));
        }
        if self.stream.address.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid("stream.address", format!("{:?} is not an IP address", self.stream.address)));
        }
        if self.stream.tls_cert_file.is_some() != self.stream.tls_key_file.is_some() {
            return Err(invalid("stream.tls_cert_file", "tls_cert_file and tls_key_file go together".into()));
        }
        if !self.metrics.address.is_empty() && self.metrics.address.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid("metrics.address", format!("{:?} is not an IP address and port", self.metrics.address)));
        }
        if self.stream.token_ttl_seconds == 0 {
            return Err(invalid("stream.token_ttl_seconds", "must be at least 1".into()));
        }
        for (registry, mirrors) in &self.registry.mirrors {
            for m in mirrors {
                if m.contains('/') || m.is_empty() {
                    return Err(invalid("registry.mirrors", format!("{registry}: mirror {m:?} must be a host or host:port")));
                }
            }
        }
        if !self.registry.config_path.as_os_str().is_empty() && !self.registry.config_path.is_absolute() {
            return Err(invalid("registry.config_path", format!("{} is not an absolute path", self.registry.config_path.display())));
        }
        for (host, a) in &self.registry.auths {
            if host.is_empty() || host.contains('/') {
                return Err(invalid("registry.auths", format!("{host:?} is not a registry host")));
            }
            if a.username.is_empty() && a.auth.is_empty() && a.identity_token.is_empty() {
                return Err(invalid("registry.auths", format!("{host}: needs username and password, auth or identity_token")));
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(crate::logging::directives(&self.log.level)) {
            return Err(invalid("log.level", format!("{:?} is not a level or filter: {e}", self.log.level)));
        }
        Ok(())
    }
}

/// Turns a toml error (several lines with a caret) into one line that names
/// the line number and the offending key.
fn one_line_error(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim().replace('\n', " ");
    let Some(span) = err.span() else { return message };
    let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
    format!("line {line_no} (`{line}`): {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_template_is_the_default_config() {
        assert_eq!(Config::parse(DEFAULT_CONFIG_TOML).unwrap(), Config::default());
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn partial_table_keeps_other_defaults() {
        let c = Config::parse("[log]\nformat = \"json\"\n").unwrap();
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.log.level, "info");
        assert_eq!(c.root, PathBuf::from("/var/lib/berth"));
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let e = Config::parse("root = \"/x\"\nsockt = \"/y\"\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        assert!(e.contains("sockt"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn wrong_type_is_named_with_its_line() {
        let e = Config::parse("shutdown_timeout_seconds = \"ten\"\n").unwrap_err();
        assert!(e.contains("line 1"), "{e}");
        assert!(e.contains("shutdown_timeout_seconds"), "{e}");
    }

    #[test]
    fn relative_paths_and_bad_levels_are_refused() {
        let origin = Sources::default();
        let c = Config { root: "var/lib".into(), ..Config::default() };
        assert!(c.validate(&origin).unwrap_err().to_string().contains("`root`"));
        let mut by_flag = Sources::default();
        by_flag.set("root", "flag --root");
        assert!(c.validate(&by_flag).unwrap_err().to_string().starts_with("config flag --root: key `root`"));
        let c = Config { log: LogConfig { level: "loud[".into(), ..LogConfig::default() }, ..Config::default() };
        assert!(c.validate(&origin).unwrap_err().to_string().contains("`log.level`"));
        Config::default().validate(&origin).unwrap();
    }

    #[test]
    fn dropins_merge_in_lexical_order_and_sources_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("config.toml");
        std::fs::write(&main, "root = \"/a\"\n[log]\nlevel = \"warn\"\n[registry.mirrors]\n\"r1\" = [\"m1\"]\n").unwrap();
        let d = dropin_dir(&main);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("20-later.toml"), "[log]\nlevel = \"debug\"\n").unwrap();
        std::fs::write(d.join("10-first.toml"), "[log]\nlevel = \"trace\"\nformat = \"json\"\n[registry.mirrors]\n\"r2\" = [\"m2\"]\n")
            .unwrap();
        std::fs::write(d.join("ignored.conf"), "not toml at all [").unwrap();
        let (c, src) = Config::load_layered(&main, true).unwrap();
        assert_eq!(c.root, PathBuf::from("/a"));
        assert_eq!(c.log.level, "debug");
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.registry.mirrors.len(), 2, "tables merge key by key");
        assert_eq!(src.of("log.level"), d.join("20-later.toml").display().to_string());
        assert_eq!(src.of("log.format"), d.join("10-first.toml").display().to_string());
        assert_eq!(src.of("root"), main.display().to_string());
        assert_eq!(src.of("state"), "default");
        let shown = c.show(&src).unwrap();
        assert!(shown.lines().any(|l| l.starts_with("level = \"debug\"") && l.ends_with("20-later.toml")), "{shown}");
        assert!(shown.lines().any(|l| l.starts_with("state = ") && !l.contains('#')), "{shown}");
        assert_eq!(Config::parse(&shown).unwrap(), c, "show prints valid TOML of the same config");

        std::fs::write(d.join("30-bad.toml"), "[log]\nlevle = 1\n").unwrap();
        let e = Config::load_layered(&main, true).unwrap_err().to_string();
        assert!(e.contains("30-bad.toml") && e.contains("line 2") && e.contains("levle"), "{e}");
    }

    #[test]
    fn handler_names_are_dns_labels_and_not_the_default_aliases() {
        let origin = Sources::default();
        for bad in ["", "Strict", "-x", "runc", "berth", "a_b"] {
            let mut c = Config::default();
            c.runtimes.insert(bad.into(), HandlerConfig::default());
            assert!(c.validate(&origin).unwrap_err().to_string().contains("`runtimes`"), "{bad:?}");
        }
        let c = Config::parse("[runtimes.kata-like]\ndefault_seccomp = \"runtime-default\"\n").unwrap();
        assert_eq!(c.runtimes["kata-like"].default_seccomp, DefaultSeccomp::RuntimeDefault);
        c.validate(&origin).unwrap();
        assert!(Config::parse("[runtimes.x]\ndefault_seccomp = \"strict\"\n").is_err());
    }
}

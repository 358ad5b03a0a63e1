//! SIGHUP: read the config again and apply what can change without a
//! restart — log level and format, the registry settings, the streaming
//! URL lifetime, the pull stall timeout and the pinned images. Everything else that changed is named in the log as
//! needing a restart and keeps its old value, so the config in effect is
//! always one berthd actually runs with.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::Config;
use crate::node::Node;

/// Keys (or tables, by prefix) applied live.
const LIVE: &[&str] =
    &["log.level", "log.format", "registry", "stream.token_ttl_seconds", "image.pull_progress_timeout_seconds", "image.pinned"];

fn is_live(key: &str) -> bool {
    LIVE.iter().any(|l| key == *l || key.starts_with(&format!("{l}.")))
}

/// What a reload does, decided from the running and the new config.
#[derive(Debug, PartialEq)]
pub struct Plan {
    /// Changed keys applied now.
    pub applied: Vec<String>,
    /// Changed keys that keep their old value until a restart.
    pub restart: Vec<String>,
    /// The config in effect after the reload.
    pub next: Config,
}

/// Compares `running` with `wanted` key by key.
pub fn plan(running: &Config, wanted: &Config) -> Plan {
    let (old, new) = (flatten(running), flatten(wanted));
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    let (mut applied, mut restart) = (Vec::new(), Vec::new());
    for key in keys {
        if old.get(key) != new.get(key) {
            if is_live(key) {
                applied.push(key.clone());
            } else {
                restart.push(key.clone());
            }
        }
    }
    let mut next = running.clone();
    next.log = wanted.log.clone();
    next.registry = wanted.registry.clone();
    next.stream.token_ttl_seconds = wanted.stream.token_ttl_seconds;
    next.image.pull_progress_timeout_seconds = wanted.image.pull_progress_timeout_seconds;
    next.image.pinned = wanted.image.pinned.clone();
    Plan { applied, restart, next }
}

/// Applies `wanted` to the running node and logs what happened.
pub fn apply(node: &Node, wanted: Config) {
    let running = node.live_config();
    let plan = plan(&running, &wanted);
    if let Err(e) = crate::logging::reconfigure(&plan.next.log) {
        tracing::warn!("config reload: logging: {e}");
    }
    node.images.set_registry(plan.next.registry.clone());
    node.images.set_progress_timeout(Duration::from_secs(plan.next.image.pull_progress_timeout_seconds));
    node.images.set_pinned(&plan.next.image.pinned);
    if let Some(streams) = node.streams.get() {
        streams.set_ttl(Duration::from_secs(plan.next.stream.token_ttl_seconds));
    }
    *node.live.write().unwrap_or_else(|p| p.into_inner()) = plan.next;
    if plan.applied.is_empty() && plan.restart.is_empty() {
        tracing::info!("config reloaded: nothing changed");
        return;
    }
    tracing::info!(applied = ?plan.applied, "config reloaded");
    if !plan.restart.is_empty() {
        tracing::warn!(keys = ?plan.restart, "config reload: these changed but take effect only after a restart; their old values stay in effect");
    }
}

/// Every value of the config as `dotted.key → value` (empty tables hold none).
fn flatten(config: &Config) -> BTreeMap<String, toml::Value> {
    let mut out = BTreeMap::new();
    if let Ok(toml::Value::Table(t)) = toml::Value::try_from(config) {
        crate::config::for_each_leaf("", &t, &mut |key, v| {
            if !v.is_table() {
                out.insert(key, v.clone());
            }
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_keys_apply_and_others_wait_for_a_restart() {
        let running = Config::default();
        let mut wanted = Config::default();
        wanted.log.level = "debug".into();
        wanted.registry.mirrors.insert("docker.io".into(), vec!["m:5000".into()]);
        wanted.stream.token_ttl_seconds = 5;
        wanted.runtime.shm_size_bytes = 1 << 20;
        wanted.network.bridge = "other0".into();
        let p = plan(&running, &wanted);
        assert_eq!(p.applied, vec!["log.level", "registry.mirrors.docker.io", "stream.token_ttl_seconds"]);
        assert_eq!(p.restart, vec!["network.bridge", "runtime.shm_size_bytes"]);
        assert_eq!(p.next.log.level, "debug");
        assert_eq!(p.next.stream.token_ttl_seconds, 5);
        assert_eq!(p.next.runtime.shm_size_bytes, running.runtime.shm_size_bytes, "kept until a restart");
        assert_eq!(p.next.network.bridge, "berth0");
    }

    #[test]
    fn no_change_is_an_empty_plan() {
        let p = plan(&Config::default(), &Config::default());
        assert!(p.applied.is_empty() && p.restart.is_empty());
        assert_eq!(p.next, Config::default());
    }
}

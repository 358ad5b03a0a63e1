//! CNI plugin mode (CNI spec 1.0, and STATUS of 1.1): the first network
//! config in the config directory, its plugins run in order for ADD (each
//! given the previous result), in reverse for DEL with the cached result,
//! CHECK on request, STATUS for readiness when the config is 1.1 or later.
//! Results are cached per pod so DEL works after a restart or a config change.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{NetError, PortMapping, Protocol};

/// How long one plugin invocation may take.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Where CNI things are.
#[derive(Debug, Clone)]
pub struct Cni {
    /// Config directory (`/etc/cni/net.d`).
    pub conf_dir: PathBuf,
    /// Plugin directories, searched in order.
    pub bin_dirs: Vec<PathBuf>,
    /// Result cache directory.
    pub cache_dir: PathBuf,
}

/// A loaded network configuration list.
#[derive(Debug, Clone)]
pub struct NetConfList {
    /// The file it came from.
    pub path: PathBuf,
    /// Network name.
    pub name: String,
    /// cniVersion.
    pub version: String,
    /// Plugin configs, in order.
    pub plugins: Vec<Value>,
}

/// The pod as CNI sees it.
#[derive(Debug, Clone)]
pub struct CniPod<'a> {
    /// Sandbox id (CNI_CONTAINERID, K8S_POD_INFRA_CONTAINER_ID).
    pub id: &'a str,
    /// The pinned netns.
    pub netns: &'a Path,
    /// Kubernetes namespace.
    pub namespace: &'a str,
    /// Pod name.
    pub name: &'a str,
    /// Pod UID.
    pub uid: &'a str,
    /// hostPorts (runtimeConfig portMappings).
    pub ports: &'a [PortMapping],
    /// DNS (runtimeConfig dns): servers, searches, options.
    pub dns: (&'a [String], &'a [String], &'a [String]),
    /// Traffic shaping (runtimeConfig bandwidth), from the pod's annotations.
    pub bandwidth: Bandwidth,
}

/// A pod's bandwidth limits in bits per second (kubelet's
/// `kubernetes.io/ingress-bandwidth` and `egress-bandwidth` annotations).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bandwidth {
    /// Into the pod.
    pub ingress_bps: Option<u64>,
    /// Out of the pod.
    pub egress_bps: Option<u64>,
}

fn cni_err(msg: impl Into<String>) -> NetError {
    NetError::Cni(msg.into())
}

impl Cni {
    /// The first usable config file, lexicographically (as kubelet-era
    /// runtimes pick): `.conflist`, or a single-plugin `.conf`/`.json`.
    /// None when there is none; an error names a malformed one.
    pub fn load(&self) -> Result<Option<NetConfList>, NetError> {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&self.conf_dir) {
            Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(cni_err(format!("{}: {e}", self.conf_dir.display()))),
        };
        files.retain(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("conflist" | "conf" | "json")));
        files.sort();
        let Some(path) = files.into_iter().next() else { return Ok(None) };
        let bad = |reason: String| cni_err(format!("config {}: {reason}", path.display()));
        let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let version = v["cniVersion"].as_str().unwrap_or("").to_string();
        let name = v["name"].as_str().ok_or_else(|| bad("no \"name\"".into()))?.to_string();
        let plugins: Vec<Value> = if path.extension().and_then(|e| e.to_str()) == Some("conflist") {
            v["plugins"].as_array().cloned().ok_or_else(|| bad("no \"plugins\" list".into()))?
        } else {
            vec![v.clone()]
        };
        if plugins.is_empty() {
            return Err(bad("\"plugins\" is empty".into()));
        }
        for (i, p) in plugins.iter().enumerate() {
            if p["type"].as_str().unwrap_or("").is_empty() {
                return Err(bad(format!("plugin {i} has no \"type\"")));
            }
        }
        Ok(Some(NetConfList { path, name, version, plugins }))
    }

    fn find_plugin(&self, kind: &str) -> Result<PathBuf, NetError> {
        if kind.contains('/') {
            return Err(cni_err(format!("plugin type {kind:?} is not a plain name")));
        }
        self.bin_dirs.iter().map(|d| d.join(kind)).find(|p| p.is_file()).ok_or_else(|| {
            let dirs: Vec<String> = self.bin_dirs.iter().map(|d| d.display().to_string()).collect();
            cni_err(format!("plugin {kind:?} not found in {}", dirs.join(", ")))
        })
    }

    fn cache_path(&self, pod_id: &str) -> PathBuf {
        self.cache_dir.join(format!("{pod_id}.json"))
    }

    /// ADD: runs the plugins in order; returns the pod's IPs. On failure the
    /// plugins that ran are undone.
    pub fn add(&self, list: &NetConfList, pod: &CniPod) -> Result<Vec<IpAddr>, NetError> {
        let mut prev: Option<Value> = None;
        for (i, plugin) in list.plugins.iter().enumerate() {
            match self.invoke("ADD", list, plugin, pod, prev.as_ref()) {
                Ok(result) => prev = Some(result),
                Err(e) => {
                    for p in list.plugins[..=i].iter().rev() {
                        let _ = self.invoke("DEL", list, p, pod, prev.as_ref());
                    }
                    return Err(e);
                }
            }
        }
        let result = prev.unwrap_or(Value::Null);
        std::fs::create_dir_all(&self.cache_dir).map_err(|e| cni_err(format!("{}: {e}", self.cache_dir.display())))?;
        let cache =
            json!({ "config": list.path, "name": list.name, "cniVersion": list.version, "plugins": list.plugins, "result": result });
        std::fs::write(self.cache_path(pod.id), cache.to_string()).map_err(|e| cni_err(format!("cache: {e}")))?;
        Ok(ips_of(&result))
    }

    /// DEL: the plugins of the cached config in reverse, with the cached
    /// result; without a cache, the current config. Idempotent.
    pub fn del(&self, pod: &CniPod) -> Result<(), NetError> {
        let cache_path = self.cache_path(pod.id);
        let (list, result) = match std::fs::read_to_string(&cache_path).ok().and_then(|t| serde_json::from_str::<Value>(&t).ok()) {
            Some(c) => (
                NetConfList {
                    path: PathBuf::from(c["config"].as_str().unwrap_or("")),
                    name: c["name"].as_str().unwrap_or("").to_string(),
                    version: c["cniVersion"].as_str().unwrap_or("").to_string(),
                    plugins: c["plugins"].as_array().cloned().unwrap_or_default(),
                },
                Some(c["result"].clone()),
            ),
            // Never added (or already deleted): nothing to undo.
            None => return Ok(()),
        };
        let mut first_err = None;
        for plugin in list.plugins.iter().rev() {
            if let Err(e) = self.invoke("DEL", &list, plugin, pod, result.as_ref()) {
                first_err.get_or_insert(e);
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        let _ = std::fs::remove_file(cache_path);
        Ok(())
    }

    /// CHECK (CNI 0.4+): the plugins agree the pod's network is as added.
    pub fn check(&self, pod: &CniPod) -> Result<(), NetError> {
        let c: Value = std::fs::read_to_string(self.cache_path(pod.id))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .ok_or_else(|| cni_err(format!("no cached result for {}", pod.id)))?;
        let list = NetConfList {
            path: PathBuf::from(c["config"].as_str().unwrap_or("")),
            name: c["name"].as_str().unwrap_or("").to_string(),
            version: c["cniVersion"].as_str().unwrap_or("").to_string(),
            plugins: c["plugins"].as_array().cloned().unwrap_or_default(),
        };
        for plugin in &list.plugins {
            self.invoke("CHECK", &list, plugin, pod, Some(&c["result"]))?;
        }
        Ok(())
    }

    /// STATUS (CNI 1.1): whether every plugin of `list` can take ADDs now.
    /// Configs older than 1.1 have no STATUS and are taken as ready, as
    /// libcni does. A failing plugin's message (code 50: not available;
    /// 51: not available, and existing pods may have limited connectivity)
    /// is the error.
    pub fn status(&self, list: &NetConfList) -> Result<(), NetError> {
        if !version_at_least(&list.version, (1, 1)) {
            return Ok(());
        }
        for plugin in &list.plugins {
            self.run_plugin("STATUS", &self.plugin_conf(list, plugin, None), None)?;
        }
        Ok(())
    }

    /// A plugin's config as it gets it on stdin: the list's name and version, the previous result.
    fn plugin_conf(&self, list: &NetConfList, plugin: &Value, prev: Option<&Value>) -> Value {
        let mut conf = plugin.clone();
        conf["name"] = json!(list.name);
        conf["cniVersion"] = json!(list.version);
        if let Some(p) = prev.filter(|p| !p.is_null()) {
            conf["prevResult"] = p.clone();
        }
        conf
    }

    /// Runs one plugin with the CNI environment and its config on stdin.
    fn invoke(&self, command: &str, list: &NetConfList, plugin: &Value, pod: &CniPod, prev: Option<&Value>) -> Result<Value, NetError> {
        let mut conf = self.plugin_conf(list, plugin, prev);
        let caps = &plugin["capabilities"];
        let mut runtime = serde_json::Map::new();
        if caps["portMappings"].as_bool() == Some(true) && !pod.ports.is_empty() {
            let ports: Vec<Value> = pod
                .ports
                .iter()
                .map(|p| {
                    let proto = match p.protocol {
                        Protocol::Tcp => "tcp",
                        Protocol::Udp => "udp",
                        Protocol::Sctp => "sctp",
                    };
                    let mut m = json!({ "hostPort": p.host_port, "containerPort": p.container_port, "protocol": proto });
                    if let Some(ip) = p.host_ip {
                        m["hostIP"] = json!(ip.to_string());
                    }
                    m
                })
                .collect();
            runtime.insert("portMappings".into(), json!(ports));
        }
        let bw = pod.bandwidth;
        if caps["bandwidth"].as_bool() == Some(true) && (bw.ingress_bps.is_some() || bw.egress_bps.is_some()) {
            // As containerd: the rate from the annotation, the burst unbounded
            // (the bandwidth plugin wants both).
            let mut m = serde_json::Map::new();
            if let Some(r) = bw.ingress_bps {
                m.insert("ingressRate".into(), json!(r));
                m.insert("ingressBurst".into(), json!(u32::MAX));
            }
            if let Some(r) = bw.egress_bps {
                m.insert("egressRate".into(), json!(r));
                m.insert("egressBurst".into(), json!(u32::MAX));
            }
            runtime.insert("bandwidth".into(), Value::Object(m));
        }
        if caps["dns"].as_bool() == Some(true) {
            runtime.insert("dns".into(), json!({ "servers": pod.dns.0, "searches": pod.dns.1, "options": pod.dns.2 }));
        }
        if !runtime.is_empty() {
            conf["runtimeConfig"] = Value::Object(runtime);
        }
        self.run_plugin(command, &conf, Some(pod))
    }

    /// Executes the plugin `conf` names for `command`; with a pod, the
    /// per-container environment (STATUS has none). Returns ADD's result.
    fn run_plugin(&self, command: &str, conf: &Value, pod: Option<&CniPod>) -> Result<Value, NetError> {
        let kind = conf["type"].as_str().unwrap_or("");
        let bin = self.find_plugin(kind)?;
        let path: Vec<String> = self.bin_dirs.iter().map(|d| d.display().to_string()).collect();
        let mut cmd = Command::new(&bin);
        cmd.env_clear().env("CNI_COMMAND", command).env("CNI_PATH", path.join(":")).env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        if let Some(pod) = pod {
            let args = format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
                pod.namespace, pod.name, pod.id, pod.uid
            );
            cmd.env("CNI_CONTAINERID", pod.id).env("CNI_NETNS", pod.netns).env("CNI_IFNAME", "eth0").env("CNI_ARGS", args);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| cni_err(format!("plugin {kind}: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(conf.to_string().as_bytes());
        }
        let deadline = Instant::now() + PLUGIN_TIMEOUT;
        let status = loop {
            if let Some(s) = child.try_wait().map_err(|e| cni_err(format!("plugin {kind}: {e}")))? {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(cni_err(format!("plugin {kind} {command} did not finish within {PLUGIN_TIMEOUT:?}")));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut out = String::new();
        if let Some(mut o) = child.stdout.take() {
            let _ = o.read_to_string(&mut out);
        }
        if !status.success() {
            let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
            let msg = v["msg"].as_str().map(str::to_string).unwrap_or_else(|| {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                if err.trim().is_empty() {
                    out.trim().to_string()
                } else {
                    err.trim().to_string()
                }
            });
            let details = v["details"].as_str().map(|d| format!(" ({d})")).unwrap_or_default();
            let code = v["code"].as_u64().map(|c| format!(" [code {c}]")).unwrap_or_default();
            return Err(cni_err(format!("plugin {kind} {command} failed: {msg}{details}{code}")));
        }
        if command != "ADD" {
            return Ok(Value::Null);
        }
        serde_json::from_str(&out).map_err(|e| cni_err(format!("plugin {kind} ADD result: {e}")))
    }
}

/// `version` ("1.1.0") is at least `min` (major, minor); an unparsable one is not.
fn version_at_least(version: &str, min: (u32, u32)) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor) >= min,
        _ => false,
    }
}

/// The IPs of a CNI result (0.3+ and 1.0 shape).
pub fn ips_of(result: &Value) -> Vec<IpAddr> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .filter_map(|a| a.split('/').next().and_then(|s| s.parse().ok()))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn status_is_for_cni_1_1_and_later() {
        assert!(super::version_at_least("1.1.0", (1, 1)) && super::version_at_least("2.0.0", (1, 1)));
        assert!(!super::version_at_least("1.0.0", (1, 1)) && !super::version_at_least("0.4.0", (1, 1)));
        assert!(!super::version_at_least("", (1, 1)));
    }

    use super::*;

    #[test]
    fn loads_conflist_and_names_malformed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let cni = Cni { conf_dir: dir.path().into(), bin_dirs: vec![], cache_dir: dir.path().join("cache") };
        assert!(cni.load().unwrap().is_none());
        std::fs::write(
            dir.path().join("10-a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
        )
        .unwrap();
        let l = cni.load().unwrap().unwrap();
        assert_eq!((l.name.as_str(), l.plugins.len()), ("n", 2));
        std::fs::write(dir.path().join("05-bad.conflist"), "{nope").unwrap();
        let e = cni.load().unwrap_err().to_string();
        assert!(e.contains("05-bad.conflist") && e.contains("not JSON"), "{e}");
        assert!(cni.find_plugin("bridge").unwrap_err().to_string().contains("not found"));
    }

    #[test]
    fn result_ips() {
        let r = json!({"ips":[{"address":"10.22.0.5/16"},{"address":"fd00::5/64"}]});
        assert_eq!(ips_of(&r).len(), 2);
    }
}

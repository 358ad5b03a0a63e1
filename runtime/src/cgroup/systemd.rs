//! The systemd cgroup driver: pods and containers as transient units that
//! systemd (PID 1) creates and owns, as kubelet's `cgroupDriver: systemd`
//! expects of a runtime — kubelet's pod cgroups are slices
//! (`kubepods-burstable-pod<uid>.slice`), a container is a scope in its
//! pod's slice (`berth-<id>.scope`, `Delegate=yes`).
//!
//! berth talks to systemd over the system bus (dbus-daemon), as runc's and
//! crun's systemd drivers do. Not over systemd's private socket: systemd
//! signs its messages there with a well-known name as sender, which zbus
//! rejects by panicking in its reader thread (seen with zbus 5.19 and
//! systemd 252), leaving every call unanswered.
//!
//! A scope must be given a process when it is created. berth creates a
//! container's cgroup before its first process exists (limits and device
//! rules are in place when the init is cloned into it), so the scope is
//! started around a small holder process (`berth-monitor hold`), which leaves
//! once the container's own process has joined.

use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use zbus::blocking::Connection;
use zbus::zvariant::{OwnedObjectPath, Value};

use super::Limits;

const DEST: &str = "org.freedesktop.systemd1";
const PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
/// A bound on every call, so a broken connection is an error (zbus's I/O
/// error TimedOut), not a hang.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long systemd may take to run a start or stop job (runc waits 30 s).
const JOB_TIMEOUT: Duration = Duration::from_secs(30);

/// What went wrong talking to systemd.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    /// The system bus did not answer.
    #[error("cannot reach systemd on the system bus (is dbus running?): {0}")]
    Connect(#[source] Box<zbus::Error>),
    /// A method call was refused.
    #[error("systemd {method} {unit}: {source}")]
    Call {
        method: &'static str,
        unit: String,
        #[source]
        source: Box<zbus::Error>,
    },
    /// The unit's job ended, but the unit is not active.
    #[error("systemd could not start {unit}: it is {state} (result {result})")]
    NotStarted { unit: String, state: String, result: String },
    /// The job did not finish in time.
    #[error("systemd did not finish the job for {unit} within {0:?}", JOB_TIMEOUT)]
    Timeout { unit: String },
    /// A name that is not a unit berth may use.
    #[error("{0:?} is not a valid {1} unit name")]
    InvalidName(String, &'static str),
    /// The holder process could not be started.
    #[error("starting the scope holder {0}: {1}")]
    Holder(String, #[source] std::io::Error),
}

type Result<T> = std::result::Result<T, SystemdError>;

/// A D-Bus property of a transient unit.
pub type Property = (&'static str, Value<'static>);

/// The cgroup path (relative to the hierarchy root) of a slice:
/// `kubepods-burstable-pod1.slice` is
/// `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice`.
pub fn expand_slice(slice: &str) -> Result<String> {
    if !valid_unit_name(slice, ".slice") {
        return Err(SystemdError::InvalidName(slice.into(), "slice"));
    }
    cgroups_rs::systemd::utils::expand_slice(slice).map_err(|_| SystemdError::InvalidName(slice.into(), "slice"))
}

/// Whether `name` is a unit name systemd accepts with this suffix: at most
/// 255 bytes of ASCII letters, digits and `:-_.\`, the suffix included.
pub fn valid_unit_name(name: &str, suffix: &str) -> bool {
    let Some(stem) = name.strip_suffix(suffix) else { return false };
    !stem.is_empty() && name.len() <= 255 && stem.bytes().all(|b| b.is_ascii_alphanumeric() || b":-_.\\".contains(&b))
}

/// The unit a cgroup path names: its last component, if that is a slice or a
/// scope.
pub fn unit_of(cgroup_path: &str) -> Option<&str> {
    let last = cgroup_path.rsplit('/').next()?;
    (valid_unit_name(last, ".scope") || valid_unit_name(last, ".slice")).then_some(last)
}

/// The properties that carry a container's limits, so that systemd, which
/// rewrites a unit's cgroup files from them (at `daemon-reload`, for one),
/// writes the same values berth wrote. Derived from the files berth writes;
/// files systemd has no property for (hugetlb, `unified`) it leaves alone.
pub fn limit_properties(limits: &Limits, v2: bool) -> Vec<Property> {
    let files = limits.files(v2);
    let get = |name: &str| files.iter().find(|(f, _)| f == name).map(|(_, v)| v.as_str());
    let bytes = |v: &str| v.parse::<u64>().unwrap_or(u64::MAX);
    let mut out: Vec<Property> = Vec::new();
    // CPU quota in µs per second of wall time; systemd keeps it in 10 ms
    // steps, so round up as runc does.
    let per_sec = |quota: &str, period: &str| -> Option<(u64, u64)> {
        let period: u64 = period.parse().ok()?;
        let per_sec = match quota.parse::<u64>() {
            Ok(q) => (q * 1_000_000 / period).div_ceil(10_000) * 10_000,
            Err(_) => u64::MAX,
        };
        Some((per_sec, period))
    };
    if v2 {
        if let Some(w) = get("cpu.weight").and_then(|w| w.parse::<u64>().ok()) {
            out.push(("CPUWeight", Value::U64(w)));
        }
        if let Some((q, p)) = get("cpu.max").and_then(|m| m.split_once(' ')).and_then(|(q, p)| per_sec(q, p)) {
            out.push(("CPUQuotaPerSecUSec", Value::U64(q)));
            out.push(("CPUQuotaPeriodUSec", Value::U64(p)));
        }
        if let Some(m) = get("memory.max") {
            out.push(("MemoryMax", Value::U64(bytes(m))));
        }
        if let Some(s) = get("memory.swap.max") {
            out.push(("MemorySwapMax", Value::U64(bytes(s))));
        }
        for (file, prop) in [("cpuset.cpus", "AllowedCPUs"), ("cpuset.mems", "AllowedMemoryNodes")] {
            if let Some(mask) = get(file).and_then(|l| cgroups_rs::systemd::cpuset::cpus(l).ok()) {
                out.push((prop, Value::from(mask.1)));
            }
        }
    } else {
        if let Some(s) = get("cpu.shares").and_then(|s| s.parse::<u64>().ok()) {
            out.push(("CPUShares", Value::U64(s)));
        }
        if let Some(q) = get("cpu.cfs_quota_us") {
            let period = get("cpu.cfs_period_us").unwrap_or("100000");
            if let Some((q, p)) = per_sec(q, period) {
                out.push(("CPUQuotaPerSecUSec", Value::U64(q)));
                out.push(("CPUQuotaPeriodUSec", Value::U64(p)));
            }
        }
        if let Some(m) = get("memory.limit_in_bytes") {
            out.push(("MemoryLimit", Value::U64(bytes(m))));
        }
    }
    out
}

/// A connection to systemd, made again when systemd re-executes (which
/// closes its private connections).
#[derive(Debug, Default)]
pub struct Systemd {
    conn: Mutex<Option<Connection>>,
}

/// A scope held open by its holder process until the real process joined.
#[derive(Debug)]
pub struct HeldScope {
    holder: Option<Child>,
}

impl HeldScope {
    /// Lets the holder go (EOF on its stdin) and reaps it.
    pub fn release(mut self) {
        self.end();
    }

    fn end(&mut self) {
        if let Some(mut child) = self.holder.take() {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}

impl Drop for HeldScope {
    fn drop(&mut self) {
        self.end();
    }
}

impl Systemd {
    /// Connects now, so a node without systemd fails at start-up, not at the
    /// first pod.
    pub fn connect() -> Result<Systemd> {
        let s = Systemd::default();
        let _first = s.conn()?;
        Ok(s)
    }

    fn conn(&self) -> Result<Connection> {
        let mut held = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = held.as_ref() {
            return Ok(c.clone());
        }
        let c = zbus::blocking::connection::Builder::system()
            .and_then(|b| b.method_timeout(CALL_TIMEOUT).build())
            .map_err(|e| SystemdError::Connect(Box::new(e)))?;
        *held = Some(c.clone());
        Ok(c)
    }

    /// Calls a manager method; once more on a fresh connection if the old
    /// one broke (dbus or systemd restarted) or did not answer.
    fn call<B>(&self, method: &'static str, unit: &str, body: &B) -> Result<zbus::Message>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        self.call_on(PATH, MANAGER, method, unit, body)
    }

    fn call_on<B>(&self, path: &str, iface: &str, method: &'static str, unit: &str, body: &B) -> Result<zbus::Message>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        let err = |source| SystemdError::Call { method, unit: unit.into(), source: Box::new(source) };
        let first = self.conn()?.call_method(Some(DEST), path, Some(iface), method, body);
        match first {
            Err(zbus::Error::InputOutput(_)) => {
                *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = None;
                self.conn()?.call_method(Some(DEST), path, Some(iface), method, body).map_err(err)
            }
            other => other.map_err(err),
        }
    }

    /// Starts a transient scope `unit` in `slice` around a holder process
    /// (spawned from `holder`, which must block until its stdin closes),
    /// with `Delegate=yes`, accounting on and `props`; returns once systemd
    /// has made its cgroup.
    pub fn start_scope(&self, unit: &str, slice: &str, mut holder: Command, props: Vec<Property>) -> Result<HeldScope> {
        if !valid_unit_name(unit, ".scope") {
            return Err(SystemdError::InvalidName(unit.into(), "scope"));
        }
        let program = holder.get_program().to_string_lossy().into_owned();
        let child = holder
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| SystemdError::Holder(program, e))?;
        let held = HeldScope { holder: Some(child) };
        let pid = held.holder.as_ref().map(Child::id).unwrap_or_default();
        let mut all: Vec<Property> = vec![
            ("Description", Value::from(format!("berth container {unit}"))),
            ("Slice", Value::from(slice.to_string())),
            ("PIDs", Value::from(vec![pid])),
            ("Delegate", Value::Bool(true)),
            // systemd's DefaultTasksMax would cap every container at 15% of
            // pid_max; kubelet limits pids per pod, on the pod's slice.
            ("TasksMax", Value::U64(u64::MAX)),
        ];
        all.extend(props);
        self.start_transient(unit, all)?;
        Ok(held)
    }

    /// Starts a transient slice (a pod's own cgroup when kubelet gave none),
    /// unless it is already active.
    pub fn start_slice(&self, unit: &str) -> Result<()> {
        if !valid_unit_name(unit, ".slice") {
            return Err(SystemdError::InvalidName(unit.into(), "slice"));
        }
        if self.active_state(unit).as_deref() == Some("active") {
            return Ok(());
        }
        self.start_transient(unit, vec![("Description", Value::from(format!("berth pod {unit}")))])
    }

    /// Starts `unit` with `props`, outside systemd's default dependencies
    /// and with every accounting on (berth reads all of a unit's cgroup
    /// files); returns once it is active.
    fn start_transient(&self, unit: &str, mut props: Vec<Property>) -> Result<()> {
        props.extend([
            ("DefaultDependencies", Value::Bool(false)),
            ("CPUAccounting", Value::Bool(true)),
            ("MemoryAccounting", Value::Bool(true)),
            ("TasksAccounting", Value::Bool(true)),
            ("IOAccounting", Value::Bool(true)),
        ]);
        let aux: Vec<(&str, Vec<(&str, Value)>)> = Vec::new();
        let reply = self.call("StartTransientUnit", unit, &(unit, "replace", props, aux))?;
        let job: OwnedObjectPath = reply.body().deserialize().map_err(|source| SystemdError::Call {
            method: "StartTransientUnit",
            unit: unit.into(),
            source: Box::new(source),
        })?;
        self.wait_job(unit, &job)?;
        match self.active_state(unit).as_deref() {
            Some("active") => Ok(()),
            state => Err(SystemdError::NotStarted {
                unit: unit.into(),
                state: state.unwrap_or("gone").into(),
                result: self.result(unit).unwrap_or_default(),
            }),
        }
    }

    /// Waits until systemd has run `job` (it is gone from the bus). Polled:
    /// a signal subscription cannot be given a deadline on a blocking
    /// connection, and a job on an idle manager runs within a millisecond.
    fn wait_job(&self, unit: &str, job: &OwnedObjectPath) -> Result<()> {
        let deadline = Instant::now() + JOB_TIMEOUT;
        let mut pause = Duration::from_micros(200);
        loop {
            let state =
                self.call_on(job.as_str(), "org.freedesktop.DBus.Properties", "Get", unit, &("org.freedesktop.systemd1.Job", "State"));
            if state.is_err() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(SystemdError::Timeout { unit: unit.into() });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Sets properties of a running unit (and its cgroup files) for good.
    pub fn set_properties(&self, unit: &str, props: Vec<Property>) -> Result<()> {
        if props.is_empty() {
            return Ok(());
        }
        self.call("SetUnitProperties", unit, &(unit, true, props)).map(drop)
    }

    /// Stops the unit and forgets a failed one; a unit systemd does not know
    /// is fine.
    pub fn stop(&self, unit: &str) -> Result<()> {
        match self.call("StopUnit", unit, &(unit, "replace")) {
            Ok(reply) => {
                if let Ok(job) = reply.body().deserialize::<OwnedObjectPath>() {
                    self.wait_job(unit, &job)?;
                }
            }
            Err(e) if no_such_unit(&e) => return Ok(()),
            Err(e) => return Err(e),
        }
        match self.call("ResetFailedUnit", unit, &(unit,)) {
            Err(e) if !no_such_unit(&e) => Err(e),
            _ => Ok(()),
        }
    }

    fn unit_property(&self, unit: &str, iface: &str, name: &str) -> Option<String> {
        let reply = self.call("GetUnit", unit, &(unit,)).ok()?;
        let path: OwnedObjectPath = reply.body().deserialize().ok()?;
        let reply = self.call_on(path.as_str(), "org.freedesktop.DBus.Properties", "Get", unit, &(iface, name)).ok()?;
        let value: zbus::zvariant::OwnedValue = reply.body().deserialize().ok()?;
        String::try_from(value).ok()
    }

    /// The unit's `ActiveState` (`active`, `failed`, …), if systemd knows it.
    pub fn active_state(&self, unit: &str) -> Option<String> {
        self.unit_property(unit, "org.freedesktop.systemd1.Unit", "ActiveState")
    }

    /// A scope's `Result` (`success`, `oom-kill`, …), if systemd knows it.
    pub fn result(&self, unit: &str) -> Option<String> {
        self.unit_property(unit, "org.freedesktop.systemd1.Scope", "Result")
    }
}

fn no_such_unit(e: &SystemdError) -> bool {
    let SystemdError::Call { source, .. } = e else { return false };
    matches!(&**source, zbus::Error::MethodError(name, _, _)
        if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit" || name.as_str() == "org.freedesktop.systemd1.LoadFailed")
}

/// `berth-monitor hold`: keeps a scope populated until berthd closes our
/// stdin (or dies, which closes it too).
pub fn hold_main() -> i32 {
    let mut buf = [0u8; 64];
    let mut stdin = std::io::stdin();
    loop {
        match std::io::Read::read(&mut stdin, &mut buf) {
            Ok(0) => return 0,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = writeln!(std::io::stderr(), "hold: {e}");
                return 1;
            }
        }
    }
}

/// Whether systemd runs this machine (PID 1), as sd_booted(3) decides.
pub fn booted() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names() {
        assert!(valid_unit_name("berth-0123abcd.scope", ".scope"));
        assert!(!valid_unit_name(".scope", ".scope"));
        assert!(!valid_unit_name("a/b.scope", ".scope"));
        assert!(!valid_unit_name("a.slice", ".scope"));
        assert_eq!(unit_of("kubepods.slice/kubepods-pod1.slice/berth-x.scope"), Some("berth-x.scope"));
        assert_eq!(unit_of("kubepods/pod1/x"), None);
        assert_eq!(
            expand_slice("kubepods-burstable-pod1.slice").unwrap(),
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice"
        );
        assert!(expand_slice("kubepods/burstable").is_err());
        assert!(expand_slice("a--b.slice").is_err());
    }

    fn prop<'a>(props: &'a [Property], name: &str) -> Option<&'a Value<'static>> {
        props.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    #[test]
    fn limits_become_properties() {
        let l = Limits {
            cpu_shares: 1024,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            memory_limit: 64 << 20,
            cpuset_cpus: "0-1".into(),
            ..Default::default()
        };
        let v2 = limit_properties(&l, true);
        assert_eq!(prop(&v2, "CPUWeight"), Some(&Value::U64(39)));
        assert_eq!(prop(&v2, "CPUQuotaPerSecUSec"), Some(&Value::U64(500_000)));
        assert_eq!(prop(&v2, "CPUQuotaPeriodUSec"), Some(&Value::U64(100_000)));
        assert_eq!(prop(&v2, "MemoryMax"), Some(&Value::U64(64 << 20)));
        assert_eq!(prop(&v2, "AllowedCPUs"), Some(&Value::from(vec![0b11u8])));
        assert!(prop(&v2, "MemorySwapMax").is_none());
        // No memory limit is an explicit infinity, so an update can lift one.
        let none = limit_properties(&Limits::default(), true);
        assert_eq!(prop(&none, "MemoryMax"), Some(&Value::U64(u64::MAX)));
        let v1 = limit_properties(&l, false);
        assert_eq!(prop(&v1, "CPUShares"), Some(&Value::U64(1024)));
        assert_eq!(prop(&v1, "MemoryLimit"), Some(&Value::U64(64 << 20)));
        // 12.345 ms per 100 ms is 123450 µs/s, kept by systemd as 130000.
        let odd = limit_properties(&Limits { cpu_quota: 12_345, cpu_period: 100_000, ..Default::default() }, true);
        assert_eq!(prop(&odd, "CPUQuotaPerSecUSec"), Some(&Value::U64(130_000)));
    }
}

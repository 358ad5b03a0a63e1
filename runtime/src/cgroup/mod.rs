//! cgroupfs placement of pods and containers, on cgroup v1 or v2 (detected
//! once), through `cgroups-rs`. A cgroup is named by its path relative to the
//! hierarchy root, e.g. `kubepods/burstable/pod<uid>/<container id>`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cgroups_rs::fs::hierarchies;
use cgroups_rs::fs::{Cgroup, Hierarchy};

pub mod bpf;
pub mod devices;
pub mod metrics;
pub mod systemd;

pub use devices::DeviceRule;

/// cgroup failures.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A path that is not a plain relative cgroup path.
    #[error("cgroup path {0:?} is invalid: {1}")]
    InvalidPath(String, &'static str),
    /// The kernel refused.
    #[error("cgroup {path}: {reason}")]
    Failed { path: String, reason: String },
}

/// Which cgroup hierarchy the node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Per-controller hierarchies.
    V1,
    /// The unified hierarchy.
    V2,
}

/// The node's cgroup version.
pub fn version() -> Version {
    if hierarchies::is_cgroup2_unified_mode() {
        Version::V2
    } else {
        Version::V1
    }
}

/// Normalises `kubelet`'s `cgroup_parent` (`/kubepods/pod1` or `kubepods/pod1`)
/// into a relative path, refusing `..` and empty components.
pub fn normalize(path: &str) -> Result<String, CgroupError> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return Err(CgroupError::InvalidPath(path.into(), "empty"));
    }
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(CgroupError::InvalidPath(path.into(), "contains . or .."));
    }
    Ok(parts.join("/"))
}

fn failed(path: &str, e: impl std::fmt::Display) -> CgroupError {
    CgroupError::Failed { path: path.into(), reason: e.to_string() }
}

/// The node's hierarchies. On v1, cgroups-rs reads and parses all of
/// /proc/self/mountinfo at every lookup, and a node with many pods has
/// hundreds of mounts (each pod pins its namespaces and mounts its shm): every
/// cgroup operation cost O(pods) — 1.6 ms per pod at berthd's start-up with
/// 120 pods. The controllers' mount points are found once per process.
fn hierarchy() -> Box<dyn Hierarchy> {
    if hierarchies::is_cgroup2_unified_mode() {
        return hierarchies::auto();
    }
    static V1: std::sync::OnceLock<V1Mounts> = std::sync::OnceLock::new();
    Box::new(V1Ref(V1.get_or_init(|| {
        let v1 = hierarchies::V1::new();
        V1Mounts { subsystems: v1.subsystems(), root: v1.root() }
    })))
}

/// The v1 controllers' mount points, as cgroups-rs found them once.
#[derive(Debug)]
struct V1Mounts {
    subsystems: Vec<cgroups_rs::fs::Subsystem>,
    root: PathBuf,
}

#[derive(Debug)]
struct V1Ref(&'static V1Mounts);

impl Hierarchy for V1Ref {
    fn subsystems(&self) -> Vec<cgroups_rs::fs::Subsystem> {
        self.0.subsystems.clone()
    }

    fn root(&self) -> PathBuf {
        self.0.root.clone()
    }

    fn root_control_group(&self) -> Cgroup {
        Cgroup::load(hierarchy(), "")
    }

    fn parent_control_group(&self, path: &str) -> Cgroup {
        let parent = Path::new(path).parent().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
        Cgroup::load(hierarchy(), parent)
    }

    fn v2(&self) -> bool {
        false
    }
}

fn load(path: &str) -> Cgroup {
    Cgroup::load(hierarchy(), path)
}

/// Creates the cgroup in every hierarchy and returns the `cgroup.procs` files
/// a process writes `0` into to join it.
pub fn create(path: &str) -> Result<Vec<PathBuf>, CgroupError> {
    let cg = Cgroup::new(hierarchy(), path).map_err(|e| failed(path, e))?;
    Ok(procs_files(&cg, path))
}

/// Moves the calling process into the cgroup whose `cgroup.procs` file is
/// `procs`. The caller must be single-threaded: on a v1 hierarchy this
/// writes `0` into the cgroup's `tasks`, which moves the calling thread only
/// — for a single-threaded process, the process.
///
/// Why not `cgroup.procs`: a write there takes the kernel's
/// `cgroup_threadgroup_rwsem` for writing, and taking it after a quiet
/// moment waits a whole RCU grace period. A thread moving itself skips that
/// lock on kernels that elide it (this project's 6.18 does): after a 100 ms
/// pause, 7.7 ms median for `cgroup.procs` against 0.2 ms for `tasks`. On a
/// kernel without the elision both cost the same. v2 has no `tasks` file
/// (and berth places a v2 init with `CLONE_INTO_CGROUP`), so there it writes
/// `cgroup.procs`.
pub fn join_single_threaded(procs: &Path) -> std::io::Result<()> {
    use std::io::Write;
    match std::fs::OpenOptions::new().write(true).open(procs.with_file_name("tasks")) {
        Ok(mut tasks) => tasks.write_all(b"0"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::write(procs, "0"),
        Err(e) => Err(e),
    }
}

/// The `cgroup.procs` files of an existing cgroup.
pub fn procs_files_of(path: &str) -> Vec<PathBuf> {
    procs_files(&load(path), path)
}

fn procs_files(cg: &Cgroup, path: &str) -> Vec<PathBuf> {
    if cg.v2() {
        return vec![hierarchy().root().join(path).join("cgroup.procs")];
    }
    let mut out: Vec<PathBuf> = cg.subsystems().iter().map(|s| s.to_controller().path().join("cgroup.procs")).collect();
    out.sort();
    out.dedup();
    out
}

/// The directories of the cgroup (one per v1 hierarchy, one on v2).
pub fn dirs(path: &str) -> Vec<PathBuf> {
    procs_files_of(path).into_iter().filter_map(|p| p.parent().map(Path::to_path_buf)).collect()
}

/// Names of the child cgroups of `path`, in any hierarchy.
pub fn children(path: &str) -> Vec<String> {
    let mut out: Vec<String> = dirs(path)
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Pids in the cgroup (and, on v1, in any hierarchy of it).
pub fn pids(path: &str) -> Vec<i32> {
    Located::of(path).pids()
}

/// A cgroup's directories, looked up once: each lookup reads mountinfo and
/// walks the hierarchies, so a caller reading several files keeps this.
struct Located {
    dirs: Vec<PathBuf>,
}

impl Located {
    fn of(path: &str) -> Located {
        Located { dirs: dirs(path) }
    }

    /// The directory (of the hierarchy) that has `file`.
    fn dir_with(&self, file: &str) -> Option<&PathBuf> {
        self.dirs.iter().find(|d| d.join(file).exists())
    }

    fn read(&self, file: &str) -> Option<String> {
        self.dir_with(file).and_then(|d| std::fs::read_to_string(d.join(file)).ok())
    }

    fn pids(&self) -> Vec<i32> {
        let mut out: Vec<i32> = Vec::new();
        for d in &self.dirs {
            if let Ok(text) = std::fs::read_to_string(d.join("cgroup.procs")) {
                out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    fn write(&self, file: &str, value: &str) -> std::io::Result<()> {
        match self.dir_with(file) {
            Some(d) => std::fs::write(d.join(file), value),
            // A controller the node lacks (hugetlb, memsw without swap accounting).
            None if file.starts_with("hugetlb.") || file.starts_with("memory.memsw") || file == "memory.swap.max" => Ok(()),
            None => Err(std::io::Error::new(std::io::ErrorKind::NotFound, "no hierarchy has this file")),
        }
    }
}

/// Sends `signal` to every process in the cgroup.
pub fn signal_all(path: &str, signal: nix::sys::signal::Signal) {
    for pid in pids(path) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
}

/// Kills every process and removes the cgroup everywhere; a missing cgroup is
/// fine. Waits (bounded) for the processes to go, since rmdir of a populated
/// cgroup fails.
pub fn remove(path: &str) -> Result<(), CgroupError> {
    // Mostly the cgroup is empty and has no children by now, and rmdir
    // checks both itself (EBUSY): try it before reading anything. The
    // first refusal leads to the whole walk below.
    let empty = |d: &PathBuf| match std::fs::remove_dir(d) {
        Ok(()) => true,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    };
    if dirs(path).iter().all(empty) {
        return Ok(());
    }
    let cg = load(path);
    let deadline = Instant::now() + Duration::from_secs(5);
    // The whole subtree: a pod's init lives in a child cgroup, a workload
    // may make its own on v1; rmdir fails while any of them holds a task.
    loop {
        let mut tree = Vec::new();
        for dir in dirs(path) {
            subtree(&dir, &mut tree);
        }
        let pids: Vec<i32> = tree.iter().flat_map(|d| procs_in(d)).collect();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        if Instant::now() > deadline {
            return Err(failed(path, "processes did not exit after SIGKILL"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Children first: a v1 hierarchy may have sub-cgroups made by the workload.
    for dir in dirs(path) {
        remove_tree(&dir).map_err(|e| failed(path, format!("{}: {e}", dir.display())))?;
    }
    drop(cg);
    Ok(())
}

/// `dir` and every cgroup directory beneath it.
fn subtree(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            subtree(&e.path(), out);
        }
    }
}

/// The pids in one cgroup directory.
fn procs_in(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect()
}

fn remove_tree(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in entries.flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_tree(&e.path())?;
        }
    }
    // rmdir can race with the kernel still tearing down the last task.
    let mut tries = 0;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_kubelet_parents() {
        assert_eq!(normalize("/kubepods/burstable/podabc").unwrap(), "kubepods/burstable/podabc");
        assert_eq!(normalize("berth/x/").unwrap(), "berth/x");
        assert!(normalize("/").is_err());
        assert!(normalize("/a/../b").is_err());
    }

    /// On a v1 hierarchy the join moves the calling thread and nothing
    /// else: a sibling thread stays where it was. That is the `tasks`
    /// write; a `cgroup.procs` write would move both.
    #[test]
    fn a_v1_join_moves_the_calling_thread_only() {
        let root = Path::new("/sys/fs/cgroup/pids");
        let v1 = nix::sys::statfs::statfs(root).map(|fs| fs.filesystem_type() == nix::sys::statfs::CGROUP_SUPER_MAGIC);
        if !matches!(v1, Ok(true)) || !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root and a v1 pids hierarchy");
            return;
        }
        let dir = root.join(format!("berth-join-test-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let here = |tid: i32| std::fs::read_to_string(format!("/proc/self/task/{tid}/cgroup")).unwrap();
        let main_tid = nix::unistd::gettid().as_raw();
        let main_before = here(main_tid);
        // Where this process is now, to go back to whatever happens.
        let home = main_before.lines().find_map(|l| l.split_once(":pids:")).map(|(_, p)| p.trim_start_matches('/')).unwrap();
        let back = root.join(home);
        let name = dir.file_name().unwrap().to_str().unwrap().to_string();
        let joined = std::thread::scope(|s| {
            s.spawn(|| {
                let tid = nix::unistd::gettid().as_raw();
                let r = join_single_threaded(&dir.join("cgroup.procs"));
                let inside = here(tid);
                // Back out before anything can fail, so the dir can go.
                let _ = std::fs::write(back.join("tasks"), "0");
                (r, inside)
            })
            .join()
            .unwrap()
        });
        let main_after = here(main_tid);
        if main_after != main_before {
            // The whole process moved (the harness's threads too).
            let _ = std::fs::write(back.join("cgroup.procs"), "0");
        }
        let _ = std::fs::remove_dir(&dir);
        joined.0.unwrap();
        assert!(joined.1.lines().any(|l| l.contains(":pids:") && l.ends_with(&name)), "{}", joined.1);
        assert_eq!(main_before, main_after, "the sibling thread moved too");
    }
}

/// Resource limits of a container, in CRI's terms (v1 semantics; converted
/// for v2 when written).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Limits {
    /// CPU shares (2..=262144); 0 = unset.
    pub cpu_shares: u64,
    /// CFS quota in µs; 0 or -1 = unlimited.
    pub cpu_quota: i64,
    /// CFS period in µs; 0 = default.
    pub cpu_period: u64,
    /// cpuset cpus ("0-1").
    pub cpuset_cpus: String,
    /// cpuset mems.
    pub cpuset_mems: String,
    /// Memory limit in bytes; 0 = unlimited.
    pub memory_limit: i64,
    /// Memory + swap in bytes; 0 = unset, -1 = unlimited swap.
    pub memory_swap: i64,
    /// Hugepage limits: (page size like "2MB", bytes).
    pub hugepages: Vec<(String, u64)>,
    /// v2 files to write as they are.
    pub unified: std::collections::BTreeMap<String, String>,
}

impl Limits {
    /// Checks values the kernel would refuse or that make no sense.
    pub fn validate(&self, v2: bool) -> Result<(), String> {
        if self.cpu_shares != 0 && !(2..=262_144).contains(&self.cpu_shares) {
            return Err(format!("cpu_shares: {} is not within 2..=262144", self.cpu_shares));
        }
        if self.cpu_quota > 0 && self.cpu_quota < 1000 {
            return Err(format!("cpu_quota: {}µs is below the kernel's 1000µs minimum", self.cpu_quota));
        }
        if self.cpu_quota < -1 {
            return Err(format!("cpu_quota: {} is negative", self.cpu_quota));
        }
        if self.cpu_period != 0 && !(1000..=1_000_000).contains(&self.cpu_period) {
            return Err(format!("cpu_period: {}µs is not within 1000..=1000000", self.cpu_period));
        }
        if self.memory_limit < 0 {
            return Err(format!("memory_limit_in_bytes: {} is negative", self.memory_limit));
        }
        if self.memory_limit > 0 && self.memory_limit < 4 << 20 {
            return Err(format!("memory_limit_in_bytes: {} is below 4 MiB, too small to start a container", self.memory_limit));
        }
        if self.memory_swap > 0 && self.memory_limit > 0 && self.memory_swap < self.memory_limit {
            return Err(format!("memory_swap_limit_in_bytes: {} is below the memory limit {}", self.memory_swap, self.memory_limit));
        }
        if self.memory_swap < -1 {
            return Err(format!("memory_swap_limit_in_bytes: {} is negative", self.memory_swap));
        }
        for s in [&self.cpuset_cpus, &self.cpuset_mems] {
            if !s.bytes().all(|b| b.is_ascii_digit() || b == b',' || b == b'-') {
                return Err(format!("cpuset: {s:?} is not a list like 0-2,4"));
            }
        }
        if !self.unified.is_empty() && !v2 {
            return Err("unified: only on cgroup v2 nodes".into());
        }
        for k in self.unified.keys() {
            if k.contains('/') || k.starts_with('.') || !k.contains('.') {
                return Err(format!("unified: {k:?} is not a cgroup file name"));
            }
        }
        Ok(())
    }

    /// (file, value) pairs for this hierarchy, in a safe order.
    fn files(&self, v2: bool) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if v2 {
            if self.cpu_shares != 0 {
                // runc's conversion of shares [2, 262144] to weight [1, 10000].
                let weight = 1 + ((self.cpu_shares.max(2) - 2) * 9999) / 262_142;
                out.push(("cpu.weight".into(), weight.to_string()));
            }
            if self.cpu_quota != 0 || self.cpu_period != 0 {
                let quota = if self.cpu_quota > 0 { self.cpu_quota.to_string() } else { "max".into() };
                let period = if self.cpu_period > 0 { self.cpu_period } else { 100_000 };
                out.push(("cpu.max".into(), format!("{quota} {period}")));
            }
        } else {
            if self.cpu_shares != 0 {
                out.push(("cpu.shares".into(), self.cpu_shares.to_string()));
            }
            if self.cpu_period != 0 {
                out.push(("cpu.cfs_period_us".into(), self.cpu_period.to_string()));
            }
            if self.cpu_quota != 0 {
                out.push(("cpu.cfs_quota_us".into(), if self.cpu_quota > 0 { self.cpu_quota.to_string() } else { "-1".into() }));
            }
        }
        if !self.cpuset_cpus.is_empty() {
            out.push(("cpuset.cpus".into(), self.cpuset_cpus.clone()));
        }
        if !self.cpuset_mems.is_empty() {
            out.push(("cpuset.mems".into(), self.cpuset_mems.clone()));
        }
        let unlimited = |v: i64| {
            if v > 0 {
                v.to_string()
            } else if v2 {
                "max".into()
            } else {
                "-1".into()
            }
        };
        if v2 {
            out.push(("memory.max".into(), unlimited(self.memory_limit)));
            if self.memory_swap != 0 {
                let swap = if self.memory_swap > 0 && self.memory_limit > 0 {
                    (self.memory_swap - self.memory_limit).to_string()
                } else {
                    "max".into()
                };
                out.push(("memory.swap.max".into(), swap));
            }
        } else if self.memory_limit != 0 || self.memory_swap != 0 {
            out.push(("memory.limit_in_bytes".into(), unlimited(self.memory_limit)));
            if self.memory_swap != 0 {
                out.push(("memory.memsw.limit_in_bytes".into(), unlimited(self.memory_swap)));
            }
        }
        for (size, limit) in &self.hugepages {
            let file = if v2 { format!("hugetlb.{size}.max") } else { format!("hugetlb.{size}.limit_in_bytes") };
            out.push((file, limit.to_string()));
        }
        for (k, v) in &self.unified {
            out.push((k.clone(), v.clone()));
        }
        out
    }
}

/// Reads a cgroup file of `path` from whichever hierarchy has it.
pub fn read(path: &str, file: &str) -> Option<String> {
    Located::of(path).read(file)
}

/// Writes the limits into the container's cgroup (also live).
pub fn apply(path: &str, limits: &Limits) -> Result<(), CgroupError> {
    let v2 = version() == Version::V2;
    let files = limits.files(v2);
    let cg = Located::of(path);
    // memsw must stay >= the limit: when lowering, the limit goes first, when
    // raising, memsw; so try in order and retry once what failed.
    let mut failed = Vec::new();
    for (file, value) in &files {
        if cg.write(file, value).is_err() {
            failed.push((file.clone(), value.clone()));
        }
    }
    for (file, value) in failed {
        cg.write(&file, &value).map_err(|e| failed_write(path, &file, &value, e))?;
    }
    Ok(())
}

fn failed_write(path: &str, file: &str, value: &str, e: std::io::Error) -> CgroupError {
    CgroupError::Failed { path: path.into(), reason: format!("{file} = {value}: {e}") }
}

/// Sets the cgroup's device rules (see [`devices`]): v1 through its
/// `devices.deny`/`devices.allow` files, in order; v2 by attaching an eBPF
/// program compiled from them, replacing the one applied before.
pub fn apply_devices(path: &str, rules: &[DeviceRule]) -> Result<(), CgroupError> {
    let cg = Located::of(path);
    if version() == Version::V2 {
        let dir = cg.dirs.first().ok_or_else(|| failed(path, "no cgroup directory"))?;
        let prog = bpf::load_device_program(&devices::program(&devices::reduce(rules))).map_err(|e| failed(path, e))?;
        return bpf::attach_device_program(dir, &prog).map_err(|e| failed(path, e));
    }
    let dir = cg.dir_with("devices.allow").ok_or_else(|| failed(path, "the node has no devices controller"))?;
    for r in rules {
        let file = if r.allow { "devices.allow" } else { "devices.deny" };
        std::fs::write(dir.join(file), r.v1_line()).map_err(|e| failed_write(path, file, &r.v1_line(), e))?;
    }
    Ok(())
}

/// True when the kernel OOM-killed a process of the cgroup.
pub fn oom_killed(path: &str) -> bool {
    let count = |text: Option<String>| text.as_deref().map_or(0, oom_kills);
    let cg = Located::of(path);
    count(cg.read("memory.events")) > 0 || count(cg.read("memory.oom_control")) > 0
}

/// The `oom_kill` count of a `memory.events` (v2) or `memory.oom_control`
/// (v1) text.
pub fn oom_kills(text: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
}

/// CPU and memory use of a cgroup, read from its files.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    /// Cumulative CPU time in ns.
    pub cpu_ns: u64,
    /// Memory in use (bytes).
    pub memory: u64,
    /// Working set: usage minus inactive file cache.
    pub working_set: u64,
    /// Anonymous and swap cache memory.
    pub rss: u64,
    /// Page faults.
    pub page_faults: u64,
    /// Major page faults.
    pub major_page_faults: u64,
    /// The memory limit, if any (bytes).
    pub limit: Option<u64>,
    /// Processes in the cgroup.
    pub processes: u64,
    /// Its pressure files (cgroup v2 only).
    pub pressure: Pressures,
}

fn stat_map(text: Option<String>) -> std::collections::HashMap<String, u64> {
    text.unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' ').and_then(|(k, v)| v.trim().parse().ok().map(|v| (k.to_string(), v))))
        .collect()
}

/// Everything cadvisor reads from the cgroup at `path`, and its pids.
pub fn metrics(path: &str) -> (metrics::Metrics, Vec<i32>) {
    let cg = Located::of(path);
    let read = |file: &str| cg.read(file);
    let m = if version() == Version::V2 { metrics::v2(read) } else { metrics::v1(read) };
    (m, cg.pids())
}

/// Reads CPU and memory use (v1: cpuacct and memory; v2: cpu.stat and memory.*)
/// and, on v2, the pressure files.
pub fn usage(path: &str) -> Usage {
    let cg = Located::of(path);
    let num = |file: &str| cg.read(file).and_then(|t| t.trim().parse::<u64>().ok());
    let v2 = version() == Version::V2;
    let (cpu_ns, memory, stat) = if v2 {
        let cpu = stat_map(cg.read("cpu.stat")).get("usage_usec").copied().unwrap_or(0) * 1000;
        (cpu, num("memory.current").unwrap_or(0), stat_map(cg.read("memory.stat")))
    } else {
        (num("cpuacct.usage").unwrap_or(0), num("memory.usage_in_bytes").unwrap_or(0), stat_map(cg.read("memory.stat")))
    };
    let get = |v1: &str, v2k: &str| stat.get(if v2 { v2k } else { v1 }).copied().unwrap_or(0);
    let inactive_file = get("total_inactive_file", "inactive_file");
    let limit = if v2 { num("memory.max") } else { num("memory.limit_in_bytes").filter(|l| *l < (1 << 62)) };
    Usage {
        cpu_ns,
        memory,
        working_set: memory.saturating_sub(inactive_file),
        rss: get("total_rss", "anon"),
        page_faults: get("total_pgfault", "pgfault"),
        major_page_faults: get("total_pgmajfault", "pgmajfault"),
        limit,
        processes: cg.pids().len() as u64,
        pressure: if v2 { pressure(&cg) } else { Pressures::default() },
    }
}

/// One line of a cgroup v2 pressure file (`some` or `full`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PressureLine {
    /// Time waited in all, microseconds (as the file counts).
    pub total_us: u64,
    /// Per cent of the last 10 s spent waiting.
    pub avg10: f64,
    /// … of the last 60 s.
    pub avg60: f64,
    /// … of the last 300 s.
    pub avg300: f64,
}

/// A pressure file: at least one task waited (`some`), all non-idle tasks
/// waited at once (`full`, which kernels before 5.13 leave out of cpu.pressure).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pressure {
    /// The `some` line.
    pub some: PressureLine,
    /// The `full` line, when the file has one.
    pub full: Option<PressureLine>,
}

/// A cgroup's CPU, memory and IO pressure: only on a v2 node (v1 has no
/// per-cgroup pressure files), and only the files the kernel has (PSI can be
/// off: `psi=0` at boot). [`usage`] reads them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pressures {
    /// cpu.pressure.
    pub cpu: Option<Pressure>,
    /// memory.pressure.
    pub memory: Option<Pressure>,
    /// io.pressure.
    pub io: Option<Pressure>,
}

/// Reads the pressure files of a cgroup on a v2 node.
fn pressure(cg: &Located) -> Pressures {
    let read = |file: &str| cg.read(file).as_deref().and_then(parse_pressure);
    Pressures { cpu: read("cpu.pressure"), memory: read("memory.pressure"), io: read("io.pressure") }
}

/// A pressure file's text (`some avg10=0.12 avg60=0.00 avg300=0.00 total=1234`
/// and a `full` line); None without a `some` line.
fn parse_pressure(text: &str) -> Option<Pressure> {
    let line = |kind: &str| {
        let fields = text.lines().find_map(|l| l.strip_prefix(kind)?.strip_prefix(' '))?;
        let mut p = PressureLine::default();
        for (k, v) in fields.split_whitespace().filter_map(|kv| kv.split_once('=')) {
            match k {
                "avg10" => p.avg10 = v.parse().ok()?,
                "avg60" => p.avg60 = v.parse().ok()?,
                "avg300" => p.avg300 = v.parse().ok()?,
                "total" => p.total_us = v.parse().ok()?,
                _ => {}
            }
        }
        Some(p)
    };
    Some(Pressure { some: line("some")?, full: line("full") })
}

#[cfg(test)]
mod pressure_tests {
    use super::*;

    #[test]
    fn pressure_files_parse() {
        let text = "some avg10=1.50 avg60=0.25 avg300=0.05 total=123456\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=789\n";
        let p = parse_pressure(text).unwrap();
        assert_eq!(p.some, PressureLine { total_us: 123456, avg10: 1.5, avg60: 0.25, avg300: 0.05 });
        assert_eq!(p.full.unwrap().total_us, 789);
        // A kernel before 5.13 writes no full line in cpu.pressure.
        let p = parse_pressure("some avg10=0.00 avg60=0.00 avg300=0.00 total=5\n").unwrap();
        assert_eq!((p.some.total_us, p.full), (5, None));
        assert_eq!(parse_pressure(""), None);
        assert_eq!(parse_pressure("some avg10=x avg60=0 avg300=0 total=1\n"), None);
    }
}

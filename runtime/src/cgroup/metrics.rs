//! Everything cadvisor reads from a container's cgroup, for kubelet's CRI
//! metrics (`ListPodSandboxMetrics`): CPU and throttling, memory in detail,
//! block I/O per device, tasks and their limit, and the limits as the kernel
//! holds them. Parsed from file contents, so the v1 and v2 readings are
//! unit-tested without a cgroup.

use std::collections::{BTreeMap, HashMap};

/// Block I/O of one device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceIo {
    /// Device numbers.
    pub major: u64,
    /// Device numbers.
    pub minor: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Reads completed.
    pub reads: u64,
    /// Writes completed.
    pub writes: u64,
}

/// One reading of a cgroup; absent files read as 0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metrics {
    /// CPU time, ns: total, user, system.
    pub cpu_ns: u64,
    /// User CPU time, ns.
    pub cpu_user_ns: u64,
    /// System CPU time, ns.
    pub cpu_system_ns: u64,
    /// CFS periods elapsed.
    pub cfs_periods: u64,
    /// CFS periods throttled.
    pub cfs_throttled_periods: u64,
    /// Time throttled, ns.
    pub cfs_throttled_ns: u64,
    /// Memory usage, bytes.
    pub memory_usage: u64,
    /// Highest usage seen (v1 max_usage_in_bytes, v2 memory.peak).
    pub memory_max_usage: u64,
    /// Usage minus inactive file pages.
    pub working_set: u64,
    /// Anonymous memory.
    pub rss: u64,
    /// Page cache.
    pub cache: u64,
    /// Mapped files.
    pub mapped_file: u64,
    /// Swap in use.
    pub swap: u64,
    /// Kernel memory.
    pub kernel: u64,
    /// Times the limit was hit (v1 failcnt, v2 the `max` event).
    pub failcnt: u64,
    /// Page faults, (this cgroup, with descendants); v2 counts only the latter.
    pub pgfault: (u64, u64),
    /// Major page faults, likewise.
    pub pgmajfault: (u64, u64),
    /// OOM kills.
    pub oom_kills: u64,
    /// Tasks (threads) in the cgroup.
    pub tasks: u64,
    /// The task limit; 0 for none.
    pub tasks_max: u64,
    /// Block I/O by device.
    pub io: Vec<DeviceIo>,
    /// CFS period, µs.
    pub spec_cpu_period: u64,
    /// CPU shares (v2: from cpu.weight).
    pub spec_cpu_shares: u64,
    /// Memory limit (u64::MAX for none, as cadvisor).
    pub spec_memory_limit: u64,
    /// Swap limit, likewise.
    pub spec_swap_limit: u64,
}

fn stat(text: Option<String>) -> HashMap<String, u64> {
    text.unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_string(), f.next()?.parse().ok()?))
        })
        .collect()
}

/// A number, or cadvisor's u64::MAX for `max`.
fn limit(text: Option<String>) -> u64 {
    match text.as_deref().map(str::trim) {
        Some("max") => u64::MAX,
        Some(t) => t.parse().unwrap_or(0),
        None => 0,
    }
}

fn num(text: Option<String>) -> u64 {
    text.and_then(|t| t.trim().parse().ok()).unwrap_or(0)
}

/// v1 `blkio.throttle.io_service*` lines: `MAJ:MIN Read|Write|… N`.
fn v1_io(bytes: Option<String>, ops: Option<String>) -> Vec<DeviceIo> {
    let mut by_dev: BTreeMap<(u64, u64), DeviceIo> = BTreeMap::new();
    for (text, is_bytes) in [(bytes, true), (ops, false)] {
        for line in text.unwrap_or_default().lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [dev, op, value] = f[..] else { continue };
            let Some((major, minor)) = dev.split_once(':').and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?))) else { continue };
            let Ok(value) = value.parse::<u64>() else { continue };
            let d = by_dev.entry((major, minor)).or_insert(DeviceIo { major, minor, ..Default::default() });
            match (op, is_bytes) {
                ("Read", true) => d.read_bytes = value,
                ("Write", true) => d.write_bytes = value,
                ("Read", false) => d.reads = value,
                ("Write", false) => d.writes = value,
                _ => {}
            }
        }
    }
    by_dev.into_values().collect()
}

/// v2 `io.stat` lines: `MAJ:MIN rbytes=… wbytes=… rios=… wios=…`.
fn v2_io(text: Option<String>) -> Vec<DeviceIo> {
    let mut out = Vec::new();
    for line in text.unwrap_or_default().lines() {
        let mut f = line.split_whitespace();
        let Some((major, minor)) = f.next().and_then(|d| d.split_once(':')).and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        else {
            continue;
        };
        let mut d = DeviceIo { major, minor, ..Default::default() };
        for kv in f {
            let Some((k, v)) = kv.split_once('=') else { continue };
            let v = v.parse().unwrap_or(0);
            match k {
                "rbytes" => d.read_bytes = v,
                "wbytes" => d.write_bytes = v,
                "rios" => d.reads = v,
                "wios" => d.writes = v,
                _ => {}
            }
        }
        out.push(d);
    }
    out
}

/// Reads a v1 cgroup through `read(file)` (files of any hierarchy).
pub fn v1(read: impl Fn(&str) -> Option<String>) -> Metrics {
    let mem = stat(read("memory.stat"));
    let cpu = stat(read("cpu.stat"));
    let acct = stat(read("cpuacct.stat"));
    // cpuacct.stat is in USER_HZ ticks.
    let tick_ns = 1_000_000_000 / clock_ticks();
    let m = |k: &str| mem.get(k).copied().unwrap_or(0);
    let usage = num(read("memory.usage_in_bytes"));
    let memsw = num(read("memory.memsw.usage_in_bytes"));
    let oom = stat(read("memory.oom_control"));
    let tasks_max = limit(read("pids.max"));
    Metrics {
        cpu_ns: num(read("cpuacct.usage")),
        cpu_user_ns: acct.get("user").copied().unwrap_or(0) * tick_ns,
        cpu_system_ns: acct.get("system").copied().unwrap_or(0) * tick_ns,
        cfs_periods: cpu.get("nr_periods").copied().unwrap_or(0),
        cfs_throttled_periods: cpu.get("nr_throttled").copied().unwrap_or(0),
        cfs_throttled_ns: cpu.get("throttled_time").copied().unwrap_or(0),
        memory_usage: usage,
        memory_max_usage: num(read("memory.max_usage_in_bytes")),
        working_set: usage.saturating_sub(m("total_inactive_file")),
        rss: m("total_rss"),
        cache: m("total_cache"),
        mapped_file: m("total_mapped_file"),
        swap: if memsw > 0 { memsw.saturating_sub(usage) } else { m("total_swap") },
        kernel: num(read("memory.kmem.usage_in_bytes")),
        failcnt: num(read("memory.failcnt")),
        pgfault: (m("pgfault"), m("total_pgfault")),
        pgmajfault: (m("pgmajfault"), m("total_pgmajfault")),
        oom_kills: oom.get("oom_kill").copied().unwrap_or(0),
        tasks: num(read("pids.current")),
        tasks_max: if tasks_max == u64::MAX { 0 } else { tasks_max },
        io: v1_io(
            read("blkio.throttle.io_service_bytes_recursive").or_else(|| read("blkio.throttle.io_service_bytes")),
            read("blkio.throttle.io_serviced_recursive").or_else(|| read("blkio.throttle.io_serviced")),
        ),
        spec_cpu_period: num(read("cpu.cfs_period_us")),
        spec_cpu_shares: num(read("cpu.shares")),
        spec_memory_limit: num(read("memory.limit_in_bytes")),
        spec_swap_limit: num(read("memory.memsw.limit_in_bytes")),
    }
}

/// Reads a v2 cgroup through `read(file)`.
pub fn v2(read: impl Fn(&str) -> Option<String>) -> Metrics {
    let mem = stat(read("memory.stat"));
    let cpu = stat(read("cpu.stat"));
    let events = stat(read("memory.events"));
    let m = |k: &str| mem.get(k).copied().unwrap_or(0);
    let c = |k: &str| cpu.get(k).copied().unwrap_or(0);
    let usage = num(read("memory.current"));
    let period = read("cpu.max").and_then(|t| t.split_whitespace().nth(1).and_then(|p| p.parse().ok())).unwrap_or(0);
    // cpu.weight back to shares: the inverse of the runtime's shares→weight.
    let weight = num(read("cpu.weight"));
    let shares = if weight == 0 { 0 } else { 2 + (weight - 1) * 262_142 / 9_999 };
    let tasks_max = limit(read("pids.max"));
    Metrics {
        cpu_ns: c("usage_usec") * 1000,
        cpu_user_ns: c("user_usec") * 1000,
        cpu_system_ns: c("system_usec") * 1000,
        cfs_periods: c("nr_periods"),
        cfs_throttled_periods: c("nr_throttled"),
        cfs_throttled_ns: c("throttled_usec") * 1000,
        memory_usage: usage,
        memory_max_usage: num(read("memory.peak")),
        working_set: usage.saturating_sub(m("inactive_file")),
        rss: m("anon"),
        cache: m("file"),
        mapped_file: m("file_mapped"),
        swap: num(read("memory.swap.current")),
        kernel: if mem.contains_key("kernel") { m("kernel") } else { m("kernel_stack") + m("pagetables") + m("sock") + m("slab") },
        failcnt: events.get("max").copied().unwrap_or(0),
        pgfault: (m("pgfault"), m("pgfault")),
        pgmajfault: (m("pgmajfault"), m("pgmajfault")),
        oom_kills: events.get("oom_kill").copied().unwrap_or(0),
        tasks: num(read("pids.current")),
        tasks_max: if tasks_max == u64::MAX { 0 } else { tasks_max },
        io: v2_io(read("io.stat")),
        spec_cpu_period: period,
        spec_cpu_shares: shares,
        spec_memory_limit: limit(read("memory.max")),
        spec_swap_limit: limit(read("memory.swap.max")),
    }
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf only reads a value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |f| map.get(f).cloned()
    }

    #[test]
    fn v1_reads_cadvisors_sources() {
        let m = v1(files(&[
            ("cpuacct.usage", "3000000000\n"),
            ("cpuacct.stat", "user 150\nsystem 50\n"),
            ("cpu.stat", "nr_periods 10\nnr_throttled 4\nthrottled_time 2500000000\n"),
            ("memory.usage_in_bytes", "1000\n"),
            ("memory.max_usage_in_bytes", "4000\n"),
            ("memory.memsw.usage_in_bytes", "1300\n"),
            ("memory.stat", "pgfault 7\ntotal_pgfault 9\ntotal_inactive_file 100\ntotal_rss 600\ntotal_cache 300\ntotal_mapped_file 20\n"),
            ("memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
            ("memory.limit_in_bytes", "9223372036854771712\n"),
            ("pids.current", "3\n"),
            ("pids.max", "max\n"),
            ("blkio.throttle.io_service_bytes", "8:0 Read 4096\n8:0 Write 8192\n8:0 Total 12288\nTotal 12288\n"),
            ("blkio.throttle.io_serviced", "8:0 Read 1\n8:0 Write 2\n"),
            ("cpu.shares", "512\n"),
            ("cpu.cfs_period_us", "100000\n"),
        ]));
        assert_eq!(
            (m.cpu_ns, m.cpu_user_ns, m.cpu_system_ns),
            (3_000_000_000, 150 * 1_000_000_000 / clock_ticks(), 50 * 1_000_000_000 / clock_ticks())
        );
        assert_eq!((m.cfs_periods, m.cfs_throttled_periods, m.cfs_throttled_ns), (10, 4, 2_500_000_000));
        assert_eq!((m.working_set, m.rss, m.cache, m.mapped_file, m.swap, m.memory_max_usage), (900, 600, 300, 20, 300, 4000));
        assert_eq!((m.pgfault, m.oom_kills, m.tasks, m.tasks_max), ((7, 9), 2, 3, 0));
        assert_eq!(m.io, [DeviceIo { major: 8, minor: 0, read_bytes: 4096, write_bytes: 8192, reads: 1, writes: 2 }]);
        assert_eq!((m.spec_cpu_shares, m.spec_cpu_period, m.spec_memory_limit), (512, 100_000, 9_223_372_036_854_771_712));
    }

    #[test]
    fn v2_reads_cadvisors_sources() {
        let m = v2(files(&[
            ("cpu.stat", "usage_usec 3000\nuser_usec 2000\nsystem_usec 1000\nnr_periods 5\nnr_throttled 1\nthrottled_usec 700\n"),
            ("cpu.max", "50000 100000\n"),
            ("cpu.weight", "20\n"),
            ("memory.current", "1000\n"),
            ("memory.stat", "anon 500\nfile 400\nfile_mapped 30\ninactive_file 150\nkernel 60\npgfault 11\npgmajfault 1\n"),
            ("memory.events", "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n"),
            ("memory.max", "max\n"),
            ("memory.swap.max", "0\n"),
            ("pids.current", "2\n"),
            ("pids.max", "16\n"),
            ("io.stat", "254:0 rbytes=100 wbytes=200 rios=3 wios=4 dbytes=0 dios=0\n"),
        ]));
        assert_eq!((m.cpu_ns, m.cpu_user_ns, m.cfs_throttled_ns), (3_000_000, 2_000_000, 700_000));
        assert_eq!((m.working_set, m.rss, m.cache, m.kernel, m.failcnt, m.oom_kills), (850, 500, 400, 60, 4, 1));
        assert_eq!((m.tasks, m.tasks_max, m.spec_cpu_period), (2, 16, 100_000));
        assert_eq!(m.spec_cpu_shares, 2 + 19 * 262_142 / 9_999);
        assert_eq!((m.spec_memory_limit, m.spec_swap_limit), (u64::MAX, 0));
        assert_eq!(m.io, [DeviceIo { major: 254, minor: 0, read_bytes: 100, write_bytes: 200, reads: 3, writes: 4 }]);
    }
}

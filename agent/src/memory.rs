//! Giving the heap a burst of work freed back to the kernel once berthd is
//! quiet again.
//!
//! glibc's malloc keeps freed memory in the arena it came from, and every
//! thread that allocates (tokio's workers, each blocking-pool thread of a
//! busy moment) may get an arena of its own; it gives back only the free
//! top of a heap, and only past a threshold. `malloc_trim(0)` returns every
//! free page of every arena (`MADV_DONTNEED`), so berthd calls it once after
//! each burst of RPCs, when a whole tick has passed without one. Measured
//! (memory bench, 96 pods started and removed by 8 clients, three rounds):
//! 5.2–5.5 MiB of anonymous memory stayed without the trim, 3.9–4.1 MiB
//! with it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// RPCs begun or ended since start-up.
static ACTIVITY: AtomicU64 = AtomicU64::new(0);

/// How long berthd must see no RPC before it trims.
const QUIET: Duration = Duration::from_secs(2);

/// Counts an RPC's start or end.
pub fn note_activity() {
    ACTIVITY.fetch_add(1, Ordering::Relaxed);
}

/// When to trim: after activity, once a tick saw none.
#[derive(Debug, Default)]
struct Idle {
    /// The activity count at the last tick.
    seen: u64,
    /// The activity count at the last trim.
    trimmed: u64,
}

impl Idle {
    /// Whether to trim now, given the activity count at this tick.
    fn tick(&mut self, now: u64) -> bool {
        let quiet = now == self.seen;
        self.seen = now;
        if quiet && now != self.trimmed {
            self.trimmed = now;
            return true;
        }
        false
    }
}

/// Runs for the life of the daemon: trims after each burst of RPCs.
pub async fn trim_when_idle() {
    let mut idle = Idle::default();
    let mut ticks = tokio::time::interval(QUIET);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if idle.tick(ACTIVITY.load(Ordering::Relaxed)) {
            trim();
        }
    }
}

#[cfg(target_env = "gnu")]
fn trim() {
    let started = std::time::Instant::now();
    // SAFETY: malloc_trim takes no pointers and only walks the allocator's
    // own free lists under its locks; any thread may call it.
    let released = unsafe { libc::malloc_trim(0) };
    tracing::trace!(released = released != 0, micros = started.elapsed().as_micros() as u64, "heap trimmed");
}

#[cfg(not(target_env = "gnu"))]
fn trim() {}

/// The glibc tunable berthd runs with: no per-thread cache of freed chunks.
///
/// glibc's tcache keeps, for each thread, up to 7 freed chunks of each of
/// its 64 sizes (up to 1 KiB) out of the arena; to the arena they are in use,
/// so they neither coalesce nor go back to the kernel with `malloc_trim`, and
/// a few of them scattered over the heap keep its pages resident. Measured
/// (memory bench, three rounds): idle after 96 pods from 8 clients 15.3 →
/// 14.2 MiB RSS (anonymous 3.6 → 2.4), just started 13.2 → 12.7; the
/// lifecycle rows of the compare bench unchanged within the noise of two
/// alternating runs each. glibc reads tunables only when a process starts,
/// and tcache has no `mallopt`, hence [`reexec_with_tunables`].
pub const MALLOC_TUNABLE: &str = "glibc.malloc.tcache_count=0";

/// `GLIBC_TUNABLES` with [`MALLOC_TUNABLE`] added, or None when it sets a
/// tcache count already (the operator's choice, or ours after the re-exec).
pub fn tunables_with_ours(current: Option<&str>) -> Option<String> {
    match current {
        Some(c) if c.split(':').any(|t| t.starts_with("glibc.malloc.tcache_count=")) => None,
        Some(c) if !c.is_empty() => Some(format!("{c}:{MALLOC_TUNABLE}")),
        _ => Some(MALLOC_TUNABLE.to_string()),
    }
}

/// Executes berthd again, same pid and arguments, with [`MALLOC_TUNABLE`]
/// in `GLIBC_TUNABLES`, unless it is there. Call first in `main`, before any
/// thread or fd exists; returns only when nothing was to be done or the exec
/// failed (said on stderr: berthd then runs with glibc's defaults).
/// Children inherit the variable (the monitors: see
/// `berth_runtime::spawn::HELPER_ENV`; `nft`, CNI plugins);
/// containers do not: their init executes with the spec's environment only.
#[cfg(target_env = "gnu")]
pub fn reexec_with_tunables() {
    use std::os::unix::process::CommandExt as _;
    let current = std::env::var("GLIBC_TUNABLES").ok();
    let Some(tunables) = tunables_with_ours(current.as_deref()) else { return };
    // The binary's own path, not /proc/self/exe: the process name (`comm`,
    // what ps and /proc/locks show) is the executed file's name.
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return eprintln!("berthd: running with glibc's malloc defaults: own executable: {e}"),
    };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_default();
    let e = std::process::Command::new(&exe).arg0(arg0).args(args).env("GLIBC_TUNABLES", tunables).exec();
    eprintln!("berthd: running with glibc's malloc defaults: re-executing {} with GLIBC_TUNABLES: {e}", exe.display());
}

#[cfg(not(target_env = "gnu"))]
pub fn reexec_with_tunables() {}

#[cfg(test)]
mod tests {
    use super::{tunables_with_ours, Idle, MALLOC_TUNABLE};

    #[test]
    fn our_tunable_is_added_once_and_an_operators_count_wins() {
        assert_eq!(tunables_with_ours(None).as_deref(), Some(MALLOC_TUNABLE));
        assert_eq!(tunables_with_ours(Some("")).as_deref(), Some(MALLOC_TUNABLE));
        assert_eq!(
            tunables_with_ours(Some("glibc.malloc.arena_max=1")).as_deref(),
            Some("glibc.malloc.arena_max=1:glibc.malloc.tcache_count=0")
        );
        assert_eq!(tunables_with_ours(Some(MALLOC_TUNABLE)), None);
        assert_eq!(tunables_with_ours(Some("glibc.malloc.arena_max=1:glibc.malloc.tcache_count=3")), None);
    }

    #[test]
    fn trims_once_per_burst_after_a_quiet_tick() {
        let mut idle = Idle::default();
        // Idle from the start: nothing to give back.
        assert!(!idle.tick(0));
        // Busy for two ticks, then quiet: one trim.
        assert!(!idle.tick(5));
        assert!(!idle.tick(9));
        assert!(idle.tick(9));
        assert!(!idle.tick(9));
        assert!(!idle.tick(9));
        // Another burst, another trim.
        assert!(!idle.tick(12));
        assert!(idle.tick(12));
    }
}

//! Kill points for the crash-consistency tests: with the cargo feature
//! `fault-injection` and `BERTH_KILL_POINT=<name>` (or `<name>#<n>` for its
//! n-th pass) in the environment, berthd SIGKILLs itself when it reaches
//! that point, as a `kill -9` landing there would. Without the feature a
//! point compiles to nothing.
//!
//! The points, in the order a workload meets them:
//! - `pod.run.after_intent`, `pod.run.after_namespaces`, `pod.run.after_network`,
//!   `pod.run.after_init`: RunPodSandbox, before its record says Ready
//! - `container.create.after_intent`, `container.create.after_monitor`
//! - `container.start.after_start`: the process runs, the record says Created
//! - `container.update.after_record`: UpdateContainerResources, before the cgroup
//! - `container.stop.after_signal`
//! - `container.remove.after_teardown`: files and cgroup gone; the record's
//!   deletion, which runs beside, may or may not have committed
//! - `pod.stop.after_intent`, `pod.stop.after_init_killed`: StopPodSandbox
//! - `pod.remove.after_teardown`
//! - `image.pull.after_layer`: a pull with some layers unpacked
//! - `image.remove.after_record`: RemoveImage, before its content is collected
//!
//! Failure points are the other kind: with `BERTH_FAIL_POINT=<name>`, the
//! store write at that point fails, each time it is reached, as a write to
//! a full disk would, and berthd goes on. They are where an RPC's last
//! durable write follows the kernel work it records:
//! - `pod.run.ready_record`: RunPodSandbox's Ready record
//! - `container.create.created_record`: CreateContainer's Created record

/// The points a build with the feature knows (the tests cover each).
pub const POINTS: &[&str] = &[
    "pod.run.after_intent",
    "pod.run.after_namespaces",
    "pod.run.after_network",
    "pod.run.after_init",
    "container.create.after_intent",
    "container.create.after_monitor",
    "container.start.after_start",
    "container.update.after_record",
    "container.stop.after_signal",
    "container.remove.after_teardown",
    "pod.stop.after_intent",
    "pod.stop.after_init_killed",
    "pod.remove.after_teardown",
    "image.pull.after_layer",
    "image.remove.after_record",
];

/// The failure points a build with the feature knows.
pub const FAIL_POINTS: &[&str] = &["pod.run.ready_record", "container.create.created_record"];

/// The store error for `name` if it is the failure point asked for.
#[cfg(feature = "fault-injection")]
pub fn failure(name: &'static str) -> Option<crate::error::Error> {
    debug_assert!(FAIL_POINTS.contains(&name), "{name} is not in fault::FAIL_POINTS");
    let armed = std::env::var("BERTH_FAIL_POINT").is_ok_and(|want| want == name);
    armed.then(|| {
        tracing::warn!(point = name, "failure point reached: the store write fails");
        crate::store::StoreError::Db(format!("injected failure at {name}")).into()
    })
}

/// Compiled out without the `fault-injection` feature.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn failure(_name: &'static str) -> Option<crate::error::Error> {
    None
}

/// Dies here if this is the point asked for.
#[cfg(feature = "fault-injection")]
pub fn point(name: &'static str) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::OnceLock;
    static WANT: OnceLock<Option<(String, usize)>> = OnceLock::new();
    static PASSES: AtomicUsize = AtomicUsize::new(0);
    let want = WANT.get_or_init(|| {
        let v = std::env::var("BERTH_KILL_POINT").ok()?;
        Some(match v.split_once('#') {
            Some((n, k)) => (n.to_string(), k.parse().unwrap_or(1)),
            None => (v, 1),
        })
    });
    let Some((want, nth)) = want else { return };
    debug_assert!(POINTS.contains(&name), "{name} is not in fault::POINTS");
    if want == name && PASSES.fetch_add(1, Ordering::SeqCst) + 1 == *nth {
        tracing::warn!(point = name, "kill point reached: SIGKILL");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

/// Compiled out without the `fault-injection` feature.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_name: &'static str) {}

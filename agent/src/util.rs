//! Small pieces the lifecycle modules share: ids, clocks, keyed locks, and
//! one-result-for-all ("single flight") operations.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use crate::error::Error;

/// A new 64-hex-character id from the kernel's random source. Ids name
/// pods, containers and single-use streaming tokens, so a failure of the
/// source is an error, never a predictable fallback.
pub fn random_id() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    Ok(hex::encode(bytes))
}

/// Nanoseconds since the epoch.
pub fn now_ns() -> i64 {
    berth_runtime::time::now_ns()
}

pub use crate::image::KeyedLocks;

type Outcome = Result<String, Error>;

/// Operations identified by a key, run once as their own task: a caller who
/// asks again while the first is in flight (kubelet retrying after its own
/// timeout) gets the first one's result, and a caller who goes away does not
/// cancel the work half-way.
#[derive(Default)]
pub struct SingleFlight {
    inflight: Mutex<HashMap<String, tokio::sync::watch::Receiver<Option<Outcome>>>>,
}

impl SingleFlight {
    /// Runs `work` under `key` unless it is in flight, then waits for the result.
    /// `check` runs under the same guard first; its error is returned as is.
    pub async fn run<F>(self: &Arc<Self>, key: String, check: impl FnOnce() -> Result<(), Error>, work: F) -> Outcome
    where
        F: Future<Output = Outcome> + Send + 'static,
    {
        let mut rx = {
            let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(&key) {
                Some(rx) => rx.clone(),
                None => {
                    check()?;
                    let (tx, rx) = tokio::sync::watch::channel(None);
                    map.insert(key.clone(), rx.clone());
                    let me = self.clone();
                    tokio::spawn(async move {
                        let out = work.await;
                        me.inflight.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
                        let _ = tx.send(Some(out));
                    });
                    rx
                }
            }
        };
        loop {
            if let Some(out) = rx.borrow().clone() {
                return out;
            }
            if rx.changed().await.is_err() {
                return rx.borrow().clone().unwrap_or_else(|| Err(Error::internal("single flight", "the operation vanished")));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_64_hex_and_distinct() {
        let a = random_id().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, random_id().unwrap());
    }

    #[tokio::test]
    async fn single_flight_shares_one_result() {
        let sf = Arc::new(SingleFlight::default());
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut handles = Vec::new();
        for _ in 0..3 {
            let (sf, runs) = (sf.clone(), runs.clone());
            handles.push(tokio::spawn(async move {
                sf.run("k".into(), || Ok(()), async move {
                    runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    Ok("id".to_string())
                })
                .await
            }));
        }
        for h in handles {
            assert_eq!(h.await.unwrap().unwrap(), "id");
        }
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}

/// Durations of the stages of one operation, for its log line (a slow pod
/// or container start on a node is explained from berth's own output).
#[derive(Debug, Clone)]
pub struct Stages {
    last: std::time::Instant,
    done: Vec<(&'static str, u128)>,
}

impl Stages {
    /// Starts timing.
    pub fn new() -> Stages {
        Stages { last: std::time::Instant::now(), done: Vec::new() }
    }

    /// Records a stage that ran beside the others (on another thread): its
    /// duration overlaps theirs, and the next mark is not moved.
    pub fn beside(&mut self, name: &'static str, took: std::time::Duration) {
        self.done.push((name, took.as_micros()));
    }

    /// Ends the stage called `name` now.
    pub fn mark(&mut self, name: &'static str) {
        let now = std::time::Instant::now();
        self.done.push((name, now.duration_since(self.last).as_micros()));
        self.last = now;
    }
}

impl Stages {
    /// The stages ended so far, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, std::time::Duration)> + '_ {
        self.done.iter().map(|(name, us)| (*name, std::time::Duration::from_micros(*us as u64)))
    }
}

impl Default for Stages {
    fn default() -> Self {
        Stages::new()
    }
}

impl std::fmt::Display for Stages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, us)) in self.done.iter().enumerate() {
            write!(f, "{}{name}={us}", if i > 0 { " " } else { "" })?;
        }
        Ok(())
    }
}

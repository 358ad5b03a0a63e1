//! Small pieces the lifecycle modules share: ids, clocks, keyed locks, and
//! one-result-for-all ("single flight") operations.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};

use tonic::Status;

/// A new 64-hex-character id from the kernel's random source. Ids name
/// pods, containers and single-use streaming tokens, so a failure of the
/// source is an error, never a predictable fallback.
pub fn random_id() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    fill_random(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// Fills `buf` from `getrandom(2)` (blocking until the pool is initialised).
fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: getrandom writes at most rest.len() bytes into rest.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// Nanoseconds since the epoch.
pub fn now_ns() -> i64 {
    berth_runtime::time::now_ns()
}

/// Async mutexes by key, dropped when nobody holds them.
#[derive(Default)]
pub struct KeyedLocks {
    map: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    /// The lock for `key`.
    pub fn get(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = map.get(key).and_then(Weak::upgrade) {
            return l;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let l = Arc::new(tokio::sync::Mutex::new(()));
        map.insert(key.to_string(), Arc::downgrade(&l));
        l
    }
}

type Outcome = Result<String, Status>;

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
    pub async fn run<F>(self: &Arc<Self>, key: String, check: impl FnOnce() -> Result<(), Status>, work: F) -> Outcome
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
                return rx.borrow().clone().unwrap_or_else(|| Err(Status::internal("operation vanished")));
            }
        }
    }
}

/// Finds the one id in `ids` equal to or starting with `prefix`.
pub fn resolve_prefix<'a>(ids: impl Iterator<Item = &'a str>, prefix: &str, what: &str) -> Result<String, Status> {
    if prefix.is_empty() {
        return Err(Status::invalid_argument(format!("{what} id: must not be empty")));
    }
    let mut found: Option<&str> = None;
    for id in ids {
        if id == prefix {
            return Ok(id.to_string());
        }
        if id.starts_with(prefix) {
            if found.is_some() {
                return Err(Status::invalid_argument(format!("{what} id {prefix:?} is ambiguous: it prefixes several {what}s")));
            }
            found = Some(id);
        }
    }
    found.map(str::to_string).ok_or_else(|| Status::not_found(format!("{what} {prefix:?} not found")))
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

    #[test]
    fn prefixes() {
        let ids = ["abc1", "abd2", "ff"];
        assert_eq!(resolve_prefix(ids.iter().copied(), "abc", "pod").unwrap(), "abc1");
        assert_eq!(resolve_prefix(ids.iter().copied(), "ab", "pod").unwrap_err().code(), tonic::Code::InvalidArgument);
        assert_eq!(resolve_prefix(ids.iter().copied(), "zz", "pod").unwrap_err().code(), tonic::Code::NotFound);
        assert_eq!(resolve_prefix(ids.iter().copied(), "", "pod").unwrap_err().code(), tonic::Code::InvalidArgument);
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

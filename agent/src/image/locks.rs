//! Per-key async locks (one pull of a layer, one operation on a pod or
//! container at a time). Defined here, with the image service, which must
//! not depend on the rest of the agent; the agent uses the same type.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

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

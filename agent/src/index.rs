//! In-memory indexes of the pod and container records, loaded from the
//! store at start and kept in step with it by every write (containerd's
//! `internal/cri/store`): lookups by id, unique id prefix and name key never
//! list and decode the database.
//!
//! Writes go to the store first and to memory after the commit, under one
//! writer lock per table, so memory never holds what the store does not and
//! a read-modify-write ([`Table::update`]) is atomic against other writers.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use crate::error::{Error, Result};
use crate::store::{Record, Store};

/// A record an index can hold.
pub trait Indexed: Record {
    /// What the records are called in messages ("pod sandbox", "container").
    const KIND: &'static str;
    /// Its id.
    fn id(&self) -> &str;
    /// The key a retried creation is recognised by.
    fn name_key(&self) -> String;
}

struct Inner<R> {
    by_id: BTreeMap<String, R>,
    by_name: HashMap<String, String>,
}

/// One table's index.
pub struct Table<R: Indexed> {
    store: Arc<Store>,
    inner: RwLock<Inner<R>>,
    writer: Mutex<()>,
}

impl<R: Indexed> Table<R> {
    /// Loads every record of `R` from the store.
    pub fn load(store: Arc<Store>) -> Result<Table<R>> {
        let mut inner = Inner { by_id: BTreeMap::new(), by_name: HashMap::new() };
        for r in store.list::<R>()? {
            inner.by_name.insert(r.name_key(), r.id().to_string());
            inner.by_id.insert(r.id().to_string(), r);
        }
        Ok(Table { store, inner: RwLock::new(inner), writer: Mutex::new(()) })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner<R>> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_mem(&self) -> std::sync::RwLockWriteGuard<'_, Inner<R>> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The record with exactly this id.
    pub fn get(&self, id: &str) -> Option<R> {
        self.read().by_id.get(id).cloned()
    }

    /// The record whose id is `id` or, uniquely, starts with it.
    pub fn find(&self, id: &str) -> Result<R> {
        if id.is_empty() {
            return Err(Error::invalid(format!("{} id", R::KIND), "must not be empty"));
        }
        let inner = self.read();
        if let Some(r) = inner.by_id.get(id) {
            return Ok(r.clone());
        }
        let mut matching = inner.by_id.range(id.to_string()..).take_while(|(k, _)| k.starts_with(id));
        match (matching.next(), matching.next()) {
            (Some((_, r)), None) => Ok(r.clone()),
            (Some(_), Some(_)) => {
                Err(Error::invalid(format!("{} id", R::KIND), format!("{id:?} is ambiguous: it prefixes several {}s", R::KIND)))
            }
            (None, _) => Err(Error::NotFound(format!("{} {id:?} not found", R::KIND))),
        }
    }

    /// Like [`Table::find`], but None when there is no such record.
    pub fn find_opt(&self, id: &str) -> Result<Option<R>> {
        match self.find(id) {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The record with this name key.
    pub fn by_name(&self, key: &str) -> Option<R> {
        let inner = self.read();
        inner.by_name.get(key).and_then(|id| inner.by_id.get(id)).cloned()
    }

    /// Every record, ordered by id.
    pub fn list(&self) -> Vec<R> {
        self.read().by_id.values().cloned().collect()
    }

    /// The records `keep` accepts, ordered by id.
    pub fn filter(&self, keep: impl Fn(&R) -> bool) -> Vec<R> {
        self.read().by_id.values().filter(|r| keep(r)).cloned().collect()
    }

    /// How many records there are.
    pub fn len(&self) -> usize {
        self.read().by_id.len()
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn remember(&self, r: &R) {
        let mut inner = self.write_mem();
        inner.by_name.insert(r.name_key(), r.id().to_string());
        inner.by_id.insert(r.id().to_string(), r.clone());
    }

    /// Inserts or replaces a record, durably.
    pub fn put(&self, r: &R) -> Result<()> {
        let _w = self.lock_writer();
        self.store.put(r.id(), r)?;
        self.remember(r);
        Ok(())
    }

    /// Inserts or replaces a record without waiting for the disk (see
    /// [`crate::store::Store::put_volatile`]).
    pub fn put_volatile(&self, r: &R) -> Result<()> {
        let _w = self.lock_writer();
        self.store.put_volatile(r.id(), r)?;
        self.remember(r);
        Ok(())
    }

    /// Deletes a record; true when it existed.
    pub fn delete(&self, id: &str) -> Result<bool> {
        let _w = self.lock_writer();
        let existed = self.store.delete::<R>(id)?;
        let mut inner = self.write_mem();
        if let Some(r) = inner.by_id.remove(id) {
            let key = r.name_key();
            if inner.by_name.get(&key).map(String::as_str) == Some(id) {
                inner.by_name.remove(&key);
            }
        }
        Ok(existed)
    }

    /// Read-modify-write of one record, atomic against other writers: `f`
    /// changes the current record and returns whether to keep the change.
    /// Returns the record as it is afterwards (None if there is none).
    pub fn update(&self, id: &str, f: impl FnOnce(&mut R) -> bool) -> Result<Option<R>> {
        let _w = self.lock_writer();
        let Some(mut r) = self.get(id) else { return Ok(None) };
        if f(&mut r) {
            self.store.put(r.id(), &r)?;
            self.remember(&r);
        }
        Ok(Some(r))
    }
}

impl Indexed for crate::store::PodRecord {
    const KIND: &'static str = "pod sandbox";
    fn id(&self) -> &str {
        &self.id
    }
    fn name_key(&self) -> String {
        crate::store::PodRecord::name_key(self)
    }
}

impl Indexed for crate::store::ContainerRecord {
    const KIND: &'static str = "container";
    fn id(&self) -> &str {
        &self.id
    }
    fn name_key(&self) -> String {
        crate::store::ContainerRecord::name_key(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ContainerRecord;

    fn table() -> (tempfile::TempDir, Table<ContainerRecord>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let t = Table::load(store).unwrap();
        (dir, t)
    }

    fn rec(id: &str, name: &str) -> ContainerRecord {
        ContainerRecord { id: id.into(), pod_id: "p".into(), name: name.into(), ..Default::default() }
    }

    #[test]
    fn ids_prefixes_and_names() {
        let (_d, t) = table();
        t.put(&rec("abc1", "a")).unwrap();
        t.put(&rec("abd2", "b")).unwrap();
        assert_eq!(t.find("abc").unwrap().id, "abc1");
        assert!(matches!(t.find("ab"), Err(Error::InvalidArgument { .. })));
        assert!(t.find("zz").unwrap_err().is_not_found());
        assert!(matches!(t.find(""), Err(Error::InvalidArgument { .. })));
        assert_eq!(t.by_name("p/b/0").unwrap().id, "abd2");
        assert!(t.delete("abd2").unwrap());
        assert!(t.by_name("p/b/0").is_none());
        assert!(t.find_opt("abd").unwrap().is_none());
    }

    #[test]
    fn writes_reach_the_store_and_survive_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let t: Table<ContainerRecord> = Table::load(store.clone()).unwrap();
        t.put(&rec("c1", "a")).unwrap();
        let changed = t.update("c1", |r| {
            r.exit_code = 3;
            true
        });
        assert_eq!(changed.unwrap().unwrap().exit_code, 3);
        assert!(t.update("nope", |_| true).unwrap().is_none());
        let reloaded: Table<ContainerRecord> = Table::load(store).unwrap();
        assert_eq!(reloaded.get("c1").unwrap().exit_code, 3);
        assert_eq!(reloaded.len(), 1);
    }
}

//! The metadata store: one embedded, crash-safe, transactional database (redb)
//! under `--root` holding every fact about pods, containers, images and network
//! leases that must outlive berthd.
//!
//! Tables are typed: each record type names its table, and values are encoded
//! by [`Json`], which keeps records readable across versions that add fields
//! (`#[serde(default)]`). Incompatible changes go through [`MIGRATIONS`].

mod records;

use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use redb::{ReadableDatabase, ReadableTable, TableDefinition, TypeName};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use records::*;

/// The schema this berthd writes. Bump it together with a new [`MIGRATIONS`] entry.
pub const SCHEMA_VERSION: u64 = 1;

/// `MIGRATIONS[n]` upgrades a store from schema `n + 1` to `n + 2`.
type Migration = fn(&redb::WriteTransaction) -> Result<(), StoreError>;
const MIGRATIONS: &[Migration] = &[];

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SETTINGS: TableDefinition<&str, &str> = TableDefinition::new("settings");
const SCHEMA_KEY: &str = "schema_version";

/// Store failures. Each names what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened or created.
    #[error("store {path}: {error}")]
    Open { path: PathBuf, error: redb::DatabaseError },
    /// The database was written by a newer berthd.
    #[error("store {path}: schema version {found} is newer than this berthd understands ({SCHEMA_VERSION})")]
    TooNew { path: PathBuf, found: u64 },
    /// A transaction failed.
    #[error("store: {0}")]
    Db(String),
    /// A record could not be decoded.
    #[error("store: table {table}, key {key}: {reason}")]
    Decode { table: &'static str, key: String, reason: String },
}

macro_rules! db_error_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Db(e.to_string()) }
        }
    )*};
}
db_error_from!(redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError, redb::SetDurabilityError);

/// redb's page cache (reads, and the write buffer of commits not yet
/// durable, which may take half).
const CACHE_BYTES: usize = 1 << 20;

/// A record type with its own table, keyed by a string id.
pub trait Record: Serialize + DeserializeOwned + Clone + std::fmt::Debug + 'static {
    /// The table's name in the database.
    const TABLE: &'static str;

    /// The typed table definition.
    fn table() -> TableDefinition<'static, &'static str, Json<Self>> {
        TableDefinition::new(Self::TABLE)
    }
}

/// The open store.
pub struct Store {
    db: redb::Database,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// The database file inside `root`.
    pub fn path_in(root: &Path) -> PathBuf {
        root.join("berth.redb")
    }

    /// Opens (or creates) the store in `root`, migrating an older schema.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let path = Self::path_in(root);
        // berthd keeps every record in memory (crate::index) and reads the
        // file at start-up and for the rare full scans; redb's own cache of
        // pages (1 GiB at most by default) would only grow the daemon's heap.
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|error| StoreError::Open { path: path.clone(), error })?;
        let store = Store { db, path };
        store.prepare_schema()?;
        Ok(store)
    }

    /// Creates every table, records the schema version on a new store and runs
    /// the migrations an older one needs, all in one transaction.
    fn prepare_schema(&self) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            let found = meta.get(SCHEMA_KEY)?.map(|v| v.value());
            match found {
                None => {
                    meta.insert(SCHEMA_KEY, SCHEMA_VERSION)?;
                }
                Some(v) if v > SCHEMA_VERSION => {
                    return Err(StoreError::TooNew { path: self.path.clone(), found: v });
                }
                Some(v) => {
                    for (i, migrate) in MIGRATIONS.iter().enumerate().skip((v - 1) as usize) {
                        tracing::info!(from = i + 1, to = i + 2, "migrating store schema");
                        migrate(&tx)?;
                    }
                    meta.insert(SCHEMA_KEY, SCHEMA_VERSION)?;
                }
            }
            tx.open_table(SETTINGS)?;
            tx.open_table(PodRecord::table())?;
            tx.open_table(ContainerRecord::table())?;
            tx.open_table(ImageRecord::table())?;
            tx.open_table(LeaseRecord::table())?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The schema version recorded in the database.
    pub fn schema_version(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read()?;
        let meta = tx.open_table(META)?;
        Ok(meta.get(SCHEMA_KEY)?.map(|v| v.value()).unwrap_or(0))
    }

    /// Reads one record.
    pub fn get<R: Record>(&self, id: &str) -> Result<Option<R>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(R::table())?;
        let value = table.get(id)?;
        value.map(|v| v.value().map_err(|reason| decode_error::<R>(id, reason))).transpose()
    }

    /// Reads every record of a table, ordered by id.
    pub fn list<R: Record>(&self) -> Result<Vec<R>, StoreError> {
        let tx = self.db.begin_read()?;
        read_all(&tx.open_table(R::table())?)
    }

    /// Inserts or replaces one record, durably.
    pub fn put<R: Record>(&self, id: &str, record: &R) -> Result<(), StoreError> {
        self.write(|tx| tx.put(id, record))
    }

    /// Deletes one record; true when it existed.
    pub fn delete<R: Record>(&self, id: &str) -> Result<bool, StoreError> {
        self.write(|tx| tx.delete::<R>(id))
    }

    /// Inserts or replaces one record without waiting for the disk: this
    /// process sees it at once, the next durable write of any record
    /// persists it with its own, and a crash before that loses it. Only for
    /// records whose loss start-up repairs by itself.
    pub fn put_volatile<R: Record>(&self, id: &str, record: &R) -> Result<(), StoreError> {
        self.write_with(redb::Durability::None, |tx| tx.put(id, record))
    }

    /// A setting (small string value), e.g. the pod CIDR.
    pub fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(SETTINGS)?;
        Ok(table.get(key)?.map(|v| v.value().to_string()))
    }

    /// Sets a setting durably.
    pub fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.write(|tx| tx.set_setting(key, value))
    }

    /// Runs `f` in one write transaction; it commits only when `f` returns Ok.
    pub fn write<T>(&self, f: impl FnOnce(&WriteTx) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.write_with(redb::Durability::Immediate, f)
    }

    /// [`Store::write`] with the commit's `durability`.
    fn write_with<T>(&self, durability: redb::Durability, f: impl FnOnce(&WriteTx) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut inner = self.db.begin_write()?;
        inner.set_durability(durability)?;
        let tx = WriteTx { inner };
        let out = f(&tx)?;
        tx.inner.commit()?;
        Ok(out)
    }
}

/// The image records as the image service sees them ([`crate::image::ImageDb`]).
pub struct ImageTable(pub std::sync::Arc<Store>);

impl crate::image::ImageDb for ImageTable {
    fn images(&self) -> Result<Vec<ImageRecord>, crate::image::DbError> {
        Ok(self.0.list::<ImageRecord>()?)
    }

    fn update(&self, edit: &mut dyn FnMut(&mut Vec<ImageRecord>)) -> Result<(), crate::image::DbError> {
        Ok(self.0.write(|tx| {
            let before = tx.list::<ImageRecord>()?;
            let mut after = before.clone();
            edit(&mut after);
            for old in before.iter().filter(|o| !after.iter().any(|n| n.id == o.id)) {
                tx.delete::<ImageRecord>(&old.id)?;
            }
            for new in after.iter().filter(|n| !before.contains(n)) {
                tx.put(&new.id, new)?;
            }
            Ok(())
        })?)
    }

    fn snapshots_in_use(&self) -> Result<std::collections::HashSet<String>, crate::image::DbError> {
        Ok(self.0.list::<ContainerRecord>()?.into_iter().flat_map(|c| c.snapshot_chain).collect())
    }
}

/// An open write transaction; see [`Store::write`].
pub struct WriteTx {
    inner: redb::WriteTransaction,
}

impl WriteTx {
    /// Reads one record inside the transaction.
    pub fn get<R: Record>(&self, id: &str) -> Result<Option<R>, StoreError> {
        let table = self.inner.open_table(R::table())?;
        let value = table.get(id)?;
        value.map(|v| v.value().map_err(|reason| decode_error::<R>(id, reason))).transpose()
    }

    /// Inserts or replaces one record.
    pub fn put<R: Record>(&self, id: &str, record: &R) -> Result<(), StoreError> {
        self.inner.open_table(R::table())?.insert(id, Ok::<R, String>(record.clone()))?;
        Ok(())
    }

    /// Deletes one record; true when it existed.
    pub fn delete<R: Record>(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.inner.open_table(R::table())?.remove(id)?.is_some())
    }

    /// A setting, inside the transaction.
    pub fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        let table = self.inner.open_table(SETTINGS)?;
        let v = table.get(key)?.map(|v| v.value().to_string());
        Ok(v)
    }

    /// Sets a setting, inside the transaction.
    pub fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.inner.open_table(SETTINGS)?.insert(key, value)?;
        Ok(())
    }

    /// Every record of a table, inside the transaction.
    pub fn list<R: Record>(&self) -> Result<Vec<R>, StoreError> {
        read_all(&self.inner.open_table(R::table())?)
    }
}

fn read_all<R: Record>(table: &impl ReadableTable<&'static str, Json<R>>) -> Result<Vec<R>, StoreError> {
    let mut out = Vec::new();
    for entry in table.iter()? {
        let (k, v) = entry?;
        out.push(v.value().map_err(|reason| decode_error::<R>(k.value(), reason))?);
    }
    Ok(out)
}

fn decode_error<R: Record>(key: &str, reason: String) -> StoreError {
    StoreError::Decode { table: R::TABLE, key: key.to_string(), reason }
}

/// A redb value stored as JSON. Reading yields `Err` with the reason when the
/// bytes do not decode, so one bad record is reported, not a panic.
#[derive(Debug)]
pub struct Json<T>(PhantomData<T>);

impl<T: Serialize + DeserializeOwned + std::fmt::Debug + 'static> redb::Value for Json<T> {
    type SelfType<'a>
        = Result<T, String>
    where
        Self: 'a;
    type AsBytes<'a>
        = Vec<u8>
    where
        Self: 'a;

    fn fixed_width() -> Option<usize> {
        None
    }

    fn from_bytes<'a>(data: &'a [u8]) -> Self::SelfType<'a>
    where
        Self: 'a,
    {
        serde_json::from_slice(data).map_err(|e| e.to_string())
    }

    fn as_bytes<'a, 'b: 'a>(value: &'a Self::SelfType<'b>) -> Vec<u8>
    where
        Self: 'b,
    {
        match value {
            // Serializing plain data structs with string keys cannot fail.
            Ok(v) => serde_json::to_vec(v).unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    fn type_name() -> TypeName {
        TypeName::new(&format!("berth::Json<{}>", std::any::type_name::<T>()))
    }
}

#[cfg(test)]
mod tests;

//! The content store: blobs by digest under `<root>/content/blobs/sha256/`,
//! shared by all images. A blob is written to `ingest/`, verified against its
//! digest and size while it streams, fsynced, and only then renamed into place,
//! so a visible blob is always complete and correct.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// Content-store failures.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// The digest is not `sha256:<64 hex>`.
    #[error("digest {0:?} is not sha256:<64 hex digits>")]
    BadDigest(String),
    /// The bytes do not hash to the expected digest.
    #[error("blob {expected}: content hashes to {actual}")]
    DigestMismatch { expected: String, actual: String },
    /// More or fewer bytes than the descriptor says.
    #[error("blob {digest}: {actual} bytes, expected {expected}")]
    SizeMismatch { digest: String, expected: u64, actual: u64 },
    /// The source stream failed.
    #[error("blob {digest}: download: {reason}")]
    Source { digest: String, reason: String },
    /// Local I/O.
    #[error("content store {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ContentError + '_ {
    move |source| ContentError::Io { path: path.to_path_buf(), source }
}

/// Checks a `sha256:<hex>` digest and returns the hex part.
pub fn digest_hex(digest: &str) -> Result<&str, ContentError> {
    let hex = digest.strip_prefix("sha256:").ok_or_else(|| ContentError::BadDigest(digest.into()))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(ContentError::BadDigest(digest.into()));
    }
    Ok(hex)
}

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(bytes);
    digest_of(h)
}

/// `sha256:<hex>` of what `hasher` was fed.
pub fn digest_of(hasher: Sha256) -> String {
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// The blob directory tree.
#[derive(Debug, Clone)]
pub struct ContentStore {
    blobs: PathBuf,
    ingest: PathBuf,
}

impl ContentStore {
    /// Opens (creating) the store under `dir` and clears leftovers of
    /// interrupted downloads.
    pub fn open(dir: &Path) -> Result<ContentStore, ContentError> {
        let store = ContentStore { blobs: dir.join("blobs/sha256"), ingest: dir.join("ingest") };
        berth_runtime::fs::ensure_private_dir(dir).map_err(io_err(dir))?;
        std::fs::create_dir_all(&store.blobs).map_err(io_err(&store.blobs))?;
        if store.ingest.exists() {
            std::fs::remove_dir_all(&store.ingest).map_err(io_err(&store.ingest))?;
        }
        std::fs::create_dir_all(&store.ingest).map_err(io_err(&store.ingest))?;
        Ok(store)
    }

    /// Where the blob lives (whether or not it exists).
    pub fn path(&self, digest: &str) -> Result<PathBuf, ContentError> {
        Ok(self.blobs.join(digest_hex(digest)?))
    }

    /// True when the complete blob is present.
    pub fn contains(&self, digest: &str) -> bool {
        self.path(digest).map(|p| p.is_file()).unwrap_or(false)
    }

    /// Reads a whole (small) blob such as a manifest or config.
    pub fn read(&self, digest: &str) -> Result<Vec<u8>, ContentError> {
        let path = self.path(digest)?;
        std::fs::read(&path).map_err(io_err(&path))
    }

    /// Stores bytes already in memory, verifying them.
    pub fn put_bytes(&self, digest: &str, bytes: &[u8]) -> Result<PathBuf, ContentError> {
        let mut w = self.writer(digest, Some(bytes.len() as u64))?;
        w.write(bytes)?;
        w.commit()
    }

    /// Starts ingesting `digest`; `size` when the descriptor gives one.
    pub fn writer(&self, digest: &str, size: Option<u64>) -> Result<BlobWriter, ContentError> {
        let hex = digest_hex(digest)?;
        let tmp = tempfile::Builder::new().prefix(&format!("{hex}-")).tempfile_in(&self.ingest).map_err(io_err(&self.ingest))?;
        Ok(BlobWriter { digest: digest.into(), size, tmp, hasher: Sha256::new(), written: 0, dest: self.blobs.join(hex) })
    }

    /// Every blob digest present.
    pub fn list(&self) -> Result<Vec<String>, ContentError> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.blobs).map_err(io_err(&self.blobs))? {
            let e = e.map_err(io_err(&self.blobs))?;
            out.push(format!("sha256:{}", e.file_name().to_string_lossy()));
        }
        Ok(out)
    }

    /// Deletes a blob; absent is fine.
    pub fn remove(&self, digest: &str) -> Result<(), ContentError> {
        let path = self.path(digest)?;
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&path)(e)),
            _ => Ok(()),
        }
    }
}

/// One blob being ingested. Dropped without `commit`, it leaves nothing.
pub struct BlobWriter {
    digest: String,
    size: Option<u64>,
    tmp: tempfile::NamedTempFile,
    hasher: Sha256,
    written: u64,
    dest: PathBuf,
}

impl BlobWriter {
    /// Appends bytes; fails as soon as the size is exceeded.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), ContentError> {
        self.written += bytes.len() as u64;
        if let Some(size) = self.size {
            if self.written > size {
                return Err(ContentError::SizeMismatch { digest: self.digest.clone(), expected: size, actual: self.written });
            }
        }
        self.hasher.update(bytes);
        let path = self.tmp.path().to_path_buf();
        self.tmp.write_all(bytes).map_err(io_err(&path))
    }

    /// Verifies size and digest, fsyncs, and renames the blob into place.
    pub fn commit(self) -> Result<PathBuf, ContentError> {
        if let Some(size) = self.size {
            if self.written != size {
                return Err(ContentError::SizeMismatch { digest: self.digest, expected: size, actual: self.written });
            }
        }
        let actual = digest_of(self.hasher);
        if actual != self.digest {
            return Err(ContentError::DigestMismatch { expected: self.digest, actual });
        }
        let tmp_path = self.tmp.path().to_path_buf();
        self.tmp.as_file().sync_all().map_err(io_err(&tmp_path))?;
        self.tmp.persist(&self.dest).map_err(|e| ContentError::Io { path: self.dest.clone(), source: e.error })?;
        if let Some(dir) = self.dest.parent() {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))?;
        }
        Ok(self.dest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verified_blobs_land_and_bad_ones_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cs = ContentStore::open(dir.path()).unwrap();
        let good = sha256_digest(b"hello");
        cs.put_bytes(&good, b"hello").unwrap();
        assert!(cs.contains(&good));
        assert_eq!(cs.read(&good).unwrap(), b"hello");

        let other = sha256_digest(b"other");
        let e = cs.put_bytes(&other, b"tampered").unwrap_err();
        assert!(matches!(e, ContentError::SizeMismatch { .. } | ContentError::DigestMismatch { .. }), "{e}");
        let mut w = cs.writer(&other, None).unwrap();
        w.write(b"tampered").unwrap();
        assert!(matches!(w.commit().unwrap_err(), ContentError::DigestMismatch { .. }));
        assert!(!cs.contains(&other));
        assert_eq!(std::fs::read_dir(dir.path().join("ingest")).unwrap().count(), 0);
        assert_eq!(cs.list().unwrap(), vec![good]);
    }

    #[test]
    fn digests_are_validated() {
        assert!(digest_hex("sha256:abc").is_err());
        assert!(digest_hex(&format!("sha512:{}", "a".repeat(64))).is_err());
        assert!(digest_hex(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(digest_hex(&format!("sha256:{}", "../".repeat(21) + "a")).is_err());
    }
}

//! Images: pull from registries (manifests and configs into the content
//! store, layers unpacked as they download into snapshot directories,
//! overlayfs lowerdirs keyed by chain ID), keep image records (through
//! [`ImageDb`]), look images up, remove them and collect garbage.
//!
//! The module depends on nothing else of the agent: its records and its
//! options are its own, and what it needs of berth's store is the
//! [`ImageDb`] trait — it could become a crate by moving this folder.

pub mod content;
pub mod distribution;
pub mod hosts;
mod http;
mod locks;
pub mod manifest;
pub mod record;
mod reference;
mod stream;
pub mod unpack;

pub use distribution::RegistryConfig;
pub use locks::KeyedLocks;
pub use record::{ImageRecord, ImageRunConfig, LayerRecord};

use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use oci_client::Reference;
use tokio::sync::Semaphore;

use berth_runtime::time::now_ns;
use content::{sha256_digest, ContentError, ContentStore};
use distribution::{Credentials, Registries, RegistryError, Remote};
use manifest::{ImageConfigFile, Manifest};

/// Image failures; the CRI layer maps them to gRPC codes.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Not a valid image reference.
    #[error("image reference {reference:?} is invalid: {reason}")]
    InvalidReference { reference: String, reason: String },
    /// An id prefix that matches several images.
    #[error("image {0:?} is ambiguous: it prefixes several image ids")]
    Ambiguous(String),
    /// The registry could not deliver.
    #[error("pulling {image}: {source}")]
    Registry { image: String, source: RegistryError },
    /// The image's documents are unusable.
    #[error("pulling {image}: {reason}")]
    BadImage { image: String, reason: String },
    /// A blob failed verification or storage.
    #[error("pulling {image}: {source}")]
    Content { image: String, source: ContentError },
    /// A layer could not be unpacked.
    #[error("pulling {image}: layer {digest}: {source}")]
    Unpack { image: String, digest: String, source: unpack::UnpackError },
    /// No bytes arrived for the progress timeout.
    #[error("pulling {image}: no progress for {seconds}s ({bytes} bytes received), cancelled (image.pull_progress_timeout_seconds)")]
    Stalled { image: String, seconds: u64, bytes: u64 },
    /// The record store failed.
    #[error("image records: {0}")]
    Db(#[source] DbError),
    /// Local filesystem trouble outside the content store, or a failed task.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, on which path.
        what: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Parses and normalises a reference the way Docker does
/// (`busybox` → `docker.io/library/busybox:latest`).
pub fn parse_reference(s: &str) -> Result<Reference, ImageError> {
    let invalid = |reason: String| ImageError::InvalidReference { reference: s.into(), reason };
    let r = reference::parse(s).map_err(invalid)?;
    // The grammar lets an uppercase first component through as a "domain"
    // that then lands in the repository; Docker refuses those.
    if r.repository().bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(invalid("repository name must be lowercase".into()));
    }
    Ok(r)
}

/// `registry/repository:tag`, when the reference names a tag and no digest.
pub fn tag_ref(r: &Reference) -> Option<String> {
    match (r.tag(), r.digest()) {
        (Some(tag), None) => Some(format!("{}/{}:{}", r.registry(), r.repository(), tag)),
        _ => None,
    }
}

/// `registry/repository@digest`.
pub fn digest_ref(r: &Reference, digest: &str) -> String {
    format!("{}/{}@{}", r.registry(), r.repository(), digest)
}

/// Disk use of one filesystem subtree.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    /// The directory measured.
    pub path: PathBuf,
    /// Bytes allocated.
    pub bytes: u64,
    /// Distinct inodes.
    pub inodes: u64,
}

/// A failure of the record store behind [`ImageDb`].
pub type DbError = Box<dyn std::error::Error + Send + Sync>;

/// What the image service needs of the store it keeps its records in.
pub trait ImageDb: Send + Sync + 'static {
    /// Every image record.
    fn images(&self) -> Result<Vec<ImageRecord>, DbError>;
    /// Runs `edit` on the whole image table in one transaction and writes
    /// back what it leaves: records it changed or added are stored, records
    /// it removed are deleted.
    fn update(&self, edit: &mut dyn FnMut(&mut Vec<ImageRecord>)) -> Result<(), DbError>;
    /// Chain IDs of snapshots that containers stack (GC keeps them).
    fn snapshots_in_use(&self) -> Result<HashSet<String>, DbError>;
}

/// How the image service works.
#[derive(Debug, Clone, Default)]
pub struct ImageOptions {
    /// The data root: `content/` and `snapshots/` live under it.
    pub root: PathBuf,
    /// Layers downloaded at once.
    pub max_concurrent_downloads: usize,
    /// How layers are unpacked.
    pub unpack: unpack::UnpackOptions,
    /// Registry access.
    pub registry: RegistryConfig,
    /// A pull with no new bytes for this long is cancelled (zero: never).
    pub progress_timeout: std::time::Duration,
    /// Images reported pinned (references or ids).
    pub pinned: Vec<String>,
}

/// The image service.
pub struct Images {
    db: Arc<dyn ImageDb>,
    content: ContentStore,
    snapshots: PathBuf,
    /// Swapped whole by a config reload; a pull keeps the one it started with.
    registries: std::sync::RwLock<Arc<Registries>>,
    downloads: Arc<Semaphore>,
    locks: KeyedLocks,
    /// Pulls hold it shared, removal and GC exclusively: GC never deletes a
    /// blob or snapshot a pull in flight has fetched but not yet recorded.
    gc: tokio::sync::RwLock<()>,
    /// How layers are unpacked.
    unpack: unpack::UnpackOptions,
    /// Seconds without new bytes before a pull is cancelled (0: never); a reload changes it.
    progress_timeout_s: std::sync::atomic::AtomicU64,
    /// Pinned references and ids, normalised; a reload changes them.
    pinned: std::sync::RwLock<Vec<String>>,
}

/// How one pull advances, for its progress lines and its stall check.
struct Progress {
    started: std::time::Instant,
    bytes: std::sync::atomic::AtomicU64,
    /// Milliseconds after `started` when bytes last arrived.
    last_ms: std::sync::atomic::AtomicU64,
    layers: std::sync::atomic::AtomicUsize,
    layers_done: std::sync::atomic::AtomicUsize,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            started: std::time::Instant::now(),
            bytes: Default::default(),
            last_ms: Default::default(),
            layers: Default::default(),
            layers_done: Default::default(),
        }
    }

    fn received(&self, n: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        self.bytes.fetch_add(n as u64, Relaxed);
        self.last_ms.store(self.started.elapsed().as_millis() as u64, Relaxed);
    }

    fn idle(&self) -> std::time::Duration {
        let last = std::time::Duration::from_millis(self.last_ms.load(std::sync::atomic::Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
}

/// Awaits `fut`, counting each second of waiting as progress.
async fn waiting<T>(progress: &Progress, fut: impl std::future::Future<Output = T>) -> T {
    tokio::pin!(fut);
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(1), &mut fut).await {
            Ok(v) => return v,
            Err(_) => progress.received(0),
        }
    }
}

/// How often a pull in progress logs what it has done.
const PROGRESS_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// A pinned entry in the form records use: `registry/repo:tag`,
/// `registry/repo@digest`, or an id as given.
fn normalise_pinned(p: &str) -> String {
    if p.starts_with("sha256:") {
        return p.to_string();
    }
    match parse_reference(p) {
        Ok(r) => match r.digest() {
            Some(d) => digest_ref(&r, d),
            None => tag_ref(&r).unwrap_or_else(|| p.to_string()),
        },
        Err(_) => p.to_string(),
    }
}

impl Images {
    /// Opens the content store and snapshot directory under `opts.root`,
    /// removing leftovers of interrupted downloads and unpacks.
    pub fn open(opts: ImageOptions, db: Arc<dyn ImageDb>) -> Result<Images, ImageError> {
        let content =
            ContentStore::open(&opts.root.join("content")).map_err(|source| ImageError::Content { image: String::new(), source })?;
        let snapshots = opts.root.join("snapshots");
        berth_runtime::fs::ensure_private_dir(&snapshots).map_err(io_err(snapshots.display()))?;
        for entry in std::fs::read_dir(&snapshots).map_err(io_err(snapshots.display()))? {
            let Ok(entry) = entry else { continue };
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                tracing::info!(path = %entry.path().display(), "removing interrupted unpack");
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(Images {
            db,
            content,
            snapshots,
            registries: std::sync::RwLock::new(Arc::new(Registries::new(opts.registry))),
            downloads: Arc::new(Semaphore::new(opts.max_concurrent_downloads)),
            unpack: opts.unpack,
            locks: KeyedLocks::default(),
            gc: tokio::sync::RwLock::new(()),
            progress_timeout_s: std::sync::atomic::AtomicU64::new(opts.progress_timeout.as_secs()),
            pinned: std::sync::RwLock::new(opts.pinned.iter().map(|p| normalise_pinned(p)).collect()),
        })
    }

    /// Sets the stall timeout of pulls that start from now on (zero: none).
    pub fn set_progress_timeout(&self, t: std::time::Duration) {
        self.progress_timeout_s.store(t.as_secs(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Sets the pinned images (references or ids).
    pub fn set_pinned(&self, pinned: &[String]) {
        *self.pinned.write().unwrap_or_else(|p| p.into_inner()) = pinned.iter().map(|p| normalise_pinned(p)).collect();
    }

    /// Whether the operator pinned `image` (kubelet's image GC leaves it).
    pub fn is_pinned(&self, image: &ImageRecord) -> bool {
        let pinned = self.pinned.read().unwrap_or_else(|p| p.into_inner());
        pinned.iter().any(|p| *p == image.id || image.repo_tags.contains(p) || image.repo_digests.contains(p))
    }

    /// Replaces the registry settings for pulls that start from now on.
    pub fn set_registry(&self, config: RegistryConfig) {
        *self.registries.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Registries::new(config));
    }

    /// The unpacked directory of a snapshot (an overlayfs lowerdir).
    pub fn snapshot_dir(&self, chain_id: &str) -> Result<PathBuf, ImageError> {
        let hex = content::digest_hex(chain_id).map_err(|source| ImageError::Content { image: String::new(), source })?;
        Ok(self.snapshots.join(hex))
    }

    /// The rootfs lowerdirs of an image, top layer first as overlayfs wants them.
    pub fn lower_dirs(&self, image: &ImageRecord) -> Result<Vec<PathBuf>, ImageError> {
        image.layers.iter().rev().map(|l| self.snapshot_dir(&l.chain_id)).collect()
    }

    /// Pulls `reference` with `creds`, returning the image record. Logs
    /// bytes and layers done every few seconds; with no new bytes for the
    /// progress timeout the pull is cancelled (what completed stays in the
    /// content store for the next attempt; a partial blob is dropped).
    #[tracing::instrument(skip(self, creds), fields(image = %reference))]
    pub async fn pull(&self, reference: &str, creds: &Credentials) -> Result<ImageRecord, ImageError> {
        use std::sync::atomic::Ordering::Relaxed;
        let timeout = std::time::Duration::from_secs(self.progress_timeout_s.load(Relaxed));
        let progress = Progress::new();
        let work = self.pull_tracked(reference, creds, &progress);
        tokio::pin!(work);
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        let mut last_log = std::time::Instant::now();
        loop {
            tokio::select! {
                done = &mut work => return done,
                _ = tick.tick() => {}
            }
            if last_log.elapsed() >= PROGRESS_LOG_EVERY {
                last_log = std::time::Instant::now();
                tracing::info!(
                    bytes = progress.bytes.load(Relaxed),
                    layers_done = progress.layers_done.load(Relaxed),
                    layers = progress.layers.load(Relaxed),
                    seconds = progress.started.elapsed().as_secs(),
                    "pull progress"
                );
            }
            if !timeout.is_zero() && progress.idle() >= timeout {
                tracing::warn!(seconds = timeout.as_secs(), "pull stalled: cancelling");
                return Err(ImageError::Stalled {
                    image: reference.to_string(),
                    seconds: timeout.as_secs(),
                    bytes: progress.bytes.load(Relaxed),
                });
            }
        }
    }

    async fn pull_tracked(&self, reference: &str, creds: &Credentials, progress: &Progress) -> Result<ImageRecord, ImageError> {
        let r = parse_reference(reference)?;
        let image = r.whole();
        let registry_err = |source| ImageError::Registry { image: image.clone(), source };
        let content_err = |source| ImageError::Content { image: image.clone(), source };
        let bad = |reason: String| ImageError::BadImage { image: image.clone(), reason };
        let _shared = self.gc.read().await;

        let registries = self.registries.read().unwrap_or_else(|p| p.into_inner()).clone();
        let (remote, top_bytes, _) = registries.connect(&r, creds).await.map_err(registry_err)?;
        let top_digest = sha256_digest(&top_bytes);
        if let Some(want) = r.digest() {
            if want != top_digest {
                return Err(bad(format!("{} served a manifest hashing to {top_digest}", remote.endpoint)));
            }
        }
        self.content.put_bytes(&top_digest, &top_bytes).map_err(content_err)?;
        let top: Manifest = serde_json::from_slice(&top_bytes).map_err(|e| bad(format!("manifest {top_digest}: {e}")))?;

        let mut index_digests = Vec::new();
        let (manifest, manifest_digest, manifest_len) = if top.is_index() {
            let want = manifest::host_platform();
            let entry = manifest::choose_platform(&top.manifests, &want).ok_or_else(|| {
                let offered: Vec<String> = top.manifests.iter().filter_map(|m| m.platform.as_ref().map(|p| p.to_string())).collect();
                bad(format!("no manifest for {want} in the index (it offers: {})", offered.join(", ")))
            })?;
            let (bytes, _) = remote.manifest(&entry.digest).await.map_err(registry_err)?;
            let digest = sha256_digest(&bytes);
            if digest != entry.digest {
                return Err(bad(format!("manifest {} hashes to {digest}", entry.digest)));
            }
            self.content.put_bytes(&digest, &bytes).map_err(content_err)?;
            index_digests.push(top_digest.clone());
            let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| bad(format!("manifest {digest}: {e}")))?;
            if m.is_index() {
                return Err(bad(format!("manifest {digest} is a nested index")));
            }
            (m, digest, bytes.len() as u64)
        } else {
            (top, top_digest.clone(), top_bytes.len() as u64)
        };

        let config_desc = manifest.config.clone().ok_or_else(|| bad(format!("manifest {manifest_digest} has no config")))?;
        progress.received(0);
        self.fetch_blob(&remote, &config_desc.digest, config_desc.size, progress).await.map_err(content_err)?;
        let config_bytes = self.content.read(&config_desc.digest).map_err(content_err)?;
        let config: ImageConfigFile =
            serde_json::from_slice(&config_bytes).map_err(|e| bad(format!("config {}: {e}", config_desc.digest)))?;
        let diff_ids = config.rootfs.diff_ids;
        if diff_ids.len() != manifest.layers.len() {
            return Err(bad(format!("{} layers but {} diff_ids in the config", manifest.layers.len(), diff_ids.len())));
        }
        let chains = manifest::chain_ids(&diff_ids);
        let layers: Vec<LayerRecord> = manifest
            .layers
            .iter()
            .zip(diff_ids.iter().zip(chains.iter()))
            .map(|(l, (diff_id, chain_id))| LayerRecord {
                digest: l.digest.clone(),
                size: l.size,
                diff_id: diff_id.clone(),
                chain_id: chain_id.clone(),
            })
            .collect();

        // Layers are independent directories, so each one is fetched and
        // unpacked on its own as soon as it arrives. One failure does not
        // cancel the others: what completes is kept for the next pull.
        progress.layers.store(layers.len(), std::sync::atomic::Ordering::Relaxed);
        let jobs = layers.iter().map(|l| self.fetch_and_unpack(&remote, &image, l, progress));
        futures::future::join_all(jobs).await.into_iter().collect::<Result<Vec<()>, ImageError>>()?;

        // containerd's image size: manifest, config and compressed layers.
        let size = manifest_len + config_desc.size + layers.iter().map(|l| l.size).sum::<u64>();
        let record = ImageRecord {
            id: config_desc.digest.clone(),
            repo_tags: Vec::new(),
            repo_digests: Vec::new(),
            manifest_digest,
            index_digests,
            layers,
            size,
            pulled_at_ns: now_ns(),
            config: config.config.unwrap_or_default().run_config(),
        };
        let record = self.record_pull(&r, &top_digest, record)?;
        drop(remote);
        // A pull's buffers (TLS roots, HTTP, decompression) are freed but glibc
        // keeps them; give them back so an idle node stays small.
        // SAFETY: malloc_trim only releases free heap memory.
        unsafe { libc::malloc_trim(0) };
        tracing::info!(id = %record.id, "image pulled");
        Ok(record)
    }

    /// Downloads one blob (a config) into the content store unless it is
    /// there. One download per digest at a time: a concurrent pull waits
    /// and reuses it.
    async fn fetch_blob(&self, remote: &Remote, digest: &str, size: u64, progress: &Progress) -> Result<(), ContentError> {
        let lock = self.locks.get(digest);
        // Waiting for another pull's download of the same blob, or for a
        // download slot, is not a stall of this pull.
        let _held = waiting(progress, lock.lock()).await;
        if self.content.contains(digest) {
            return Ok(());
        }
        let _permit = waiting(progress, self.downloads.acquire())
            .await
            .map_err(|e| ContentError::Source { digest: digest.into(), reason: e.to_string() })?;
        let source = |reason: String| ContentError::Source { digest: digest.into(), reason };
        let mut stream = remote.blob(digest).await.map_err(|e| source(e.to_string()))?;
        let mut writer = self.content.writer(digest, Some(size))?;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| source(distribution::flatten_error(&e)))?;
            progress.received(chunk.len());
            writer.write(&chunk)?;
        }
        tokio::task::spawn_blocking(move || writer.commit()).await.map_err(|e| source(format!("commit task: {e}")))??;
        Ok(())
    }

    async fn fetch_and_unpack(&self, remote: &Remote, image: &str, layer: &LayerRecord, progress: &Progress) -> Result<(), ImageError> {
        let r = self.fetch_and_unpack_layer(remote, image, layer, progress).await;
        if r.is_ok() {
            progress.layers_done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }

    /// Makes the layer's snapshot unless it exists: streamed from the
    /// registry and unpacked as it arrives ([`stream`]), or unpacked from
    /// the content store when a blob is there (kept by an older berthd). One
    /// unpack per snapshot at a time: a concurrent pull waits and reuses it.
    async fn fetch_and_unpack_layer(
        &self,
        remote: &Remote,
        image: &str,
        layer: &LayerRecord,
        progress: &Progress,
    ) -> Result<(), ImageError> {
        let content_err = |source| ImageError::Content { image: image.to_string(), source };
        let dest = self.snapshot_dir(&layer.chain_id)?;
        if dest.exists() {
            return Ok(());
        }
        let lock = self.locks.get(&layer.chain_id);
        let _held = waiting(progress, lock.lock()).await;
        if dest.exists() {
            return Ok(());
        }
        let (snapshots, diff_id, opts) = (self.snapshots.clone(), layer.diff_id.clone(), self.unpack);
        let result = if self.content.contains(&layer.digest) {
            let blob = self.content.path(&layer.digest).map_err(content_err)?;
            let unpack = move |tmp: &Path| unpack::unpack_layer(&blob, tmp, &diff_id, opts).map_err(stream::StreamError::Unpack);
            tokio::task::spawn_blocking(move || unpack_into(&snapshots, &dest, opts.sync_fs, unpack))
                .await
                .map_err(io_err("unpack task"))?
        } else {
            let _permit = waiting(progress, self.downloads.acquire()).await.map_err(io_err("download slots"))?;
            let source = |reason: String| content_err(ContentError::Source { digest: layer.digest.clone(), reason });
            let mut blob = remote.blob(&layer.digest).await.map_err(|e| source(e.to_string()))?.stream;
            let (tx, rx) = tokio::sync::mpsc::channel(stream::CHUNKS_IN_FLIGHT);
            let (digest, size) = (layer.digest.clone(), layer.size);
            let unpack = move |tmp: &Path| stream::unpack_verified(rx, tmp, &digest, size, &diff_id, opts);
            let unpacking = tokio::task::spawn_blocking(move || unpack_into(&snapshots, &dest, opts.sync_fs, unpack));
            let mut received = 0u64;
            let mut download = Ok(());
            while let Some(chunk) = blob.next().await {
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(e) => {
                        download = Err(source(distribution::flatten_error(&e)));
                        break;
                    }
                };
                progress.received(chunk.len());
                received += chunk.len() as u64;
                if received > layer.size {
                    let (digest, expected) = (layer.digest.clone(), layer.size);
                    download = Err(content_err(ContentError::SizeMismatch { digest, expected, actual: received }));
                    break;
                }
                // Waiting for a slow disk is not a stall of the registry.
                if waiting(progress, tx.send(chunk)).await.is_err() {
                    break; // the unpack stopped; its result says why
                }
            }
            drop(tx);
            let unpacked = unpacking.await.map_err(io_err("unpack task"))?;
            // A download that broke off is the cause of what the unpack says.
            download?;
            unpacked
        };
        match result {
            Ok(()) => {
                crate::fault::point("image.pull.after_layer");
                Ok(())
            }
            Err(UnpackFailure::Stream(stream::StreamError::Content(source))) => Err(content_err(source)),
            Err(UnpackFailure::Stream(stream::StreamError::Unpack(source))) => {
                Err(ImageError::Unpack { image: image.to_string(), digest: layer.digest.clone(), source })
            }
            Err(UnpackFailure::Io(e)) => Err(e),
        }
    }

    /// Removes blobs and snapshots no image or container needs (left by an
    /// interrupted pull, say).
    pub async fn collect_garbage(&self) -> Result<(), ImageError> {
        let _exclusive = self.gc.write().await;
        let (db, content, snapshots) = (self.db.clone(), self.content.clone(), self.snapshots.clone());
        tokio::task::spawn_blocking(move || collect_garbage(db.as_ref(), &content, &snapshots)).await.map_err(io_err("gc task"))?
    }

    /// Writes the record, moving the tag from any image that had it.
    fn record_pull(&self, r: &Reference, top_digest: &str, mut record: ImageRecord) -> Result<ImageRecord, ImageError> {
        let tag = tag_ref(r);
        let digested = digest_ref(r, top_digest);
        self.db
            .update(&mut |images| {
                if let Some(tag) = &tag {
                    for other in images.iter_mut().filter(|o| o.id != record.id) {
                        other.repo_tags.retain(|t| t != tag);
                    }
                }
                if let Some(old) = images.iter().find(|i| i.id == record.id) {
                    record.repo_tags = old.repo_tags.clone();
                    record.repo_digests = old.repo_digests.clone();
                    for d in &old.index_digests {
                        if !record.index_digests.contains(d) {
                            record.index_digests.push(d.clone());
                        }
                    }
                    record.pulled_at_ns = old.pulled_at_ns;
                }
                if let Some(tag) = tag.clone() {
                    if !record.repo_tags.contains(&tag) {
                        record.repo_tags.push(tag);
                    }
                }
                if !record.repo_digests.contains(&digested) {
                    record.repo_digests.push(digested.clone());
                }
                images.retain(|i| i.id != record.id);
                images.push(record.clone());
            })
            .map_err(ImageError::Db)?;
        Ok(record)
    }

    /// Every image.
    pub fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        self.db.images().map_err(ImageError::Db)
    }

    /// Finds an image by id (`sha256:…`, bare hex, or a unique hex prefix),
    /// tag or digest reference.
    pub fn resolve(&self, image: &str) -> Result<Option<ImageRecord>, ImageError> {
        let images = self.list()?;
        Ok(resolve_in(&images, image)?.cloned())
    }

    /// Removes an image by id, tag or digest: the image goes with all its
    /// tags and digests, as the CRI asks (a tag names the image, not one of
    /// its names) and containerd does, and with it every blob and snapshot
    /// nothing else uses. An unknown image is not an error.
    pub async fn remove(&self, image: &str) -> Result<(), ImageError> {
        let _exclusive = self.gc.write().await;
        let Some(record) = self.resolve(image)? else { return Ok(()) };
        let mut removed = false;
        self.db
            .update(&mut |images| {
                let before = images.len();
                images.retain(|i| i.id != record.id);
                removed = images.len() < before;
            })
            .map_err(ImageError::Db)?;
        if removed {
            crate::fault::point("image.remove.after_record");
            tracing::info!(id = %record.id, tags = ?record.repo_tags, "image removed");
            let db = self.db.clone();
            let content = self.content.clone();
            let snapshots = self.snapshots.clone();
            tokio::task::spawn_blocking(move || collect_garbage(db.as_ref(), &content, &snapshots)).await.map_err(io_err("gc task"))??;
        }
        Ok(())
    }

    /// Disk use of the image filesystem (snapshots and content) and of the
    /// container writable layers under `containers`, with what `pending`
    /// (removed layers not yet deleted) still holds.
    pub async fn fs_usage(&self, containers: PathBuf, pending: PathBuf) -> Result<(Usage, Usage), ImageError> {
        let snapshots = self.snapshots.clone();
        let content = self.snapshots.with_file_name("content");
        tokio::task::spawn_blocking(move || {
            let mut seen = HashSet::new();
            let mut images = Usage { path: snapshots.clone(), ..Default::default() };
            du(&snapshots, &mut seen, &mut images);
            du(&content, &mut seen, &mut images);
            let mut cont = Usage { path: containers.clone(), ..Default::default() };
            let mut seen = HashSet::new();
            du(&containers, &mut seen, &mut cont);
            du(&pending, &mut seen, &mut cont);
            (images, cont)
        })
        .await
        .map_err(io_err("du task"))
    }

    /// The image config blob (for verbose status).
    pub fn config_json(&self, record: &ImageRecord) -> Result<serde_json::Value, ImageError> {
        let bytes = self.content.read(&record.id).map_err(|source| ImageError::Content { image: record.id.clone(), source })?;
        serde_json::from_slice(&bytes).map_err(io_err(format!("config {}", record.id)))
    }
}

enum UnpackFailure {
    Stream(stream::StreamError),
    Io(ImageError),
}

/// Unpacks with `unpack` into a fresh directory under `snapshots` and
/// renames it to `dest` (with `sync_fs`, once its filesystem is synced); a
/// failure removes it. Call on a blocking thread.
fn unpack_into(
    snapshots: &Path,
    dest: &Path,
    sync_fs: bool,
    unpack: impl FnOnce(&Path) -> Result<(), stream::StreamError>,
) -> Result<(), UnpackFailure> {
    // A name of its own per attempt: a cancelled pull's unpack may still be
    // cleaning up its directory when the next attempt starts. Start-up
    // removes what a crash left (`.tmp-*`). 0755 as a layer's root is when
    // its tar does not say (the tempdir's own 0700 would be the image's `/`).
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .permissions(std::fs::Permissions::from_mode(0o755))
        .tempdir_in(snapshots)
        .map_err(|e| UnpackFailure::Io(io_err(snapshots.display())(e)))?
        .keep();
    let tmp = tmp.as_path();
    let r = unpack(tmp)
        .map_err(UnpackFailure::Stream)
        .and_then(|_| if sync_fs { sync_filesystem(tmp).map_err(UnpackFailure::Io) } else { Ok(()) })
        .and_then(|_| std::fs::rename(tmp, dest).map_err(|e| UnpackFailure::Io(io_err(dest.display())(e))))
        .and_then(|_| if sync_fs { sync_dir(snapshots).map_err(UnpackFailure::Io) } else { Ok(()) });
    if r.is_err() {
        let _ = std::fs::remove_dir_all(tmp);
    }
    r
}

/// A closure for `map_err`: a local failure while doing `what`.
fn io_err<E: Into<Box<dyn std::error::Error + Send + Sync>>>(what: impl std::fmt::Display) -> impl FnOnce(E) -> ImageError {
    let what = what.to_string();
    move |e| ImageError::Io { what, source: e.into() }
}

/// `syncfs(2)` of the filesystem holding `path`: every dirty page and inode
/// of it reaches the disk (one call, instead of an fsync per unpacked file).
fn sync_filesystem(path: &Path) -> Result<(), ImageError> {
    let dir = std::fs::File::open(path).map_err(io_err(path.display()))?;
    nix::unistd::syncfs(&dir).map_err(io_err(format!("syncfs {}", path.display())))
}

/// fsync of a directory, for the entries renamed into it.
fn sync_dir(dir: &Path) -> Result<(), ImageError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir.display()))
}

/// Lookup over a list of records; see [`Images::resolve`].
pub fn resolve_in<'a>(images: &'a [ImageRecord], image: &str) -> Result<Option<&'a ImageRecord>, ImageError> {
    if image.is_empty() {
        return Err(ImageError::InvalidReference { reference: String::new(), reason: "empty".into() });
    }
    let is_hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    let full_id = match image.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && is_hex(hex) => Some(image.to_string()),
        None if image.len() == 64 && is_hex(image) => Some(format!("sha256:{image}")),
        _ => None,
    };
    if let Some(id) = full_id {
        return Ok(images.iter().find(|i| i.id == id));
    }
    if let Ok(r) = parse_reference(image) {
        let found = match (r.digest(), tag_ref(&r)) {
            (Some(d), _) => {
                let want = digest_ref(&r, d);
                images.iter().find(|i| i.repo_digests.contains(&want))
            }
            (None, Some(tag)) => images.iter().find(|i| i.repo_tags.contains(&tag)),
            _ => None,
        };
        if found.is_some() {
            return Ok(found);
        }
    }
    let prefix = image.strip_prefix("sha256:").unwrap_or(image);
    if is_hex(prefix) {
        let mut matches = images.iter().filter(|i| i.id.strip_prefix("sha256:").unwrap_or(&i.id).starts_with(prefix));
        let first = matches.next();
        if matches.next().is_some() {
            return Err(ImageError::Ambiguous(image.to_string()));
        }
        return Ok(first);
    }
    parse_reference(image)?;
    Ok(None)
}

/// Deletes blobs and snapshots that no image and no container references.
pub fn collect_garbage(db: &dyn ImageDb, content: &ContentStore, snapshots: &Path) -> Result<(), ImageError> {
    let images = db.images().map_err(ImageError::Db)?;
    let in_use = db.snapshots_in_use().map_err(ImageError::Db)?;
    let mut blobs: HashSet<String> = HashSet::new();
    let mut chains: HashSet<String> = HashSet::new();
    for i in &images {
        blobs.insert(i.id.clone());
        blobs.insert(i.manifest_digest.clone());
        blobs.extend(i.index_digests.iter().cloned());
        for l in &i.layers {
            blobs.insert(l.digest.clone());
            chains.insert(l.chain_id.clone());
        }
    }
    chains.extend(in_use);
    let content_err = |source| ImageError::Content { image: String::new(), source };
    let mut removed = (0, 0);
    for digest in content.list().map_err(content_err)? {
        if !blobs.contains(&digest) {
            content.remove(&digest).map_err(content_err)?;
            removed.0 += 1;
        }
    }
    for entry in std::fs::read_dir(snapshots).map_err(io_err(snapshots.display()))? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || chains.contains(&format!("sha256:{name}")) {
            continue;
        }
        std::fs::remove_dir_all(entry.path()).map_err(io_err(entry.path().display()))?;
        removed.1 += 1;
    }
    tracing::info!(blobs = removed.0, snapshots = removed.1, "image garbage collected");
    Ok(())
}

/// Adds the allocated bytes and distinct inodes below `path`.
pub fn du(path: &Path, seen: &mut HashSet<(u64, u64)>, usage: &mut Usage) {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return };
    if seen.insert((meta.dev(), meta.ino())) {
        usage.bytes += meta.blocks() * 512;
        usage.inodes += 1;
    }
    if meta.is_dir() {
        if let Ok(rd) = std::fs::read_dir(path) {
            for e in rd.flatten() {
                du(&e.path(), seen, usage);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(id: &str, tags: &[&str], digests: &[&str]) -> ImageRecord {
        ImageRecord {
            id: id.into(),
            repo_tags: tags.iter().map(|s| s.to_string()).collect(),
            repo_digests: digests.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn an_unpack_lands_whole_or_leaves_nothing() {
        let snapshots = tempfile::tempdir().unwrap();
        let names = || std::fs::read_dir(snapshots.path()).unwrap().map(|e| e.unwrap().file_name()).collect::<Vec<_>>();
        for (done, sync_fs) in [false, true].into_iter().enumerate() {
            let dest = snapshots.path().join(format!("layer-{sync_fs}"));
            let failed = unpack_into(snapshots.path(), &dest, sync_fs, |tmp: &Path| {
                std::fs::write(tmp.join("half"), b"x").unwrap();
                Err(stream::StreamError::Unpack(unpack::UnpackError::Archive(std::io::ErrorKind::UnexpectedEof.into())))
            });
            assert!(matches!(failed, Err(UnpackFailure::Stream(_))));
            assert_eq!(names().len(), done, "a failed unpack leaves nothing: {:?}", names());
            unpack_into(snapshots.path(), &dest, sync_fs, |tmp: &Path| {
                std::fs::write(tmp.join("file"), b"x").map_err(|e| stream::StreamError::Unpack(unpack::UnpackError::Archive(e)))
            })
            .unwrap_or_else(|_| panic!("unpack with sync_fs {sync_fs}"));
            assert_eq!(std::fs::read(dest.join("file")).unwrap(), b"x");
            let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o755, "a layer's root is 0755 unless its tar says otherwise");
        }
        assert_eq!(names().len(), 2, "{:?}", names());
    }

    #[test]
    fn references_normalise_like_docker() {
        let r = parse_reference("busybox").unwrap();
        assert_eq!(tag_ref(&r).unwrap(), "docker.io/library/busybox:latest");
        let r = parse_reference("localhost:5000/a/b:1.0").unwrap();
        assert_eq!(tag_ref(&r).unwrap(), "localhost:5000/a/b:1.0");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse_reference(&format!("quay.io/x/y:t@{d}")).unwrap();
        assert_eq!(tag_ref(&r), None);
        assert_eq!(digest_ref(&r, &d), format!("quay.io/x/y@{d}"));
        assert!(parse_reference("UPPER/case").is_err());
        assert!(parse_reference("a b").is_err());
    }

    #[test]
    fn lookup_by_id_tag_digest_and_prefix() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:ab{}", "b".repeat(62));
        let d = format!("sha256:{}", "d".repeat(64));
        let images = vec![
            img(&a, &["docker.io/library/busybox:latest"], &[&format!("docker.io/library/busybox@{d}")]),
            img(&b, &["localhost:5000/x:1"], &[]),
        ];
        assert_eq!(resolve_in(&images, &a).unwrap().unwrap().id, a);
        assert_eq!(resolve_in(&images, &"a".repeat(64)).unwrap().unwrap().id, a);
        assert_eq!(resolve_in(&images, "busybox").unwrap().unwrap().id, a);
        assert_eq!(resolve_in(&images, &format!("busybox@{d}")).unwrap().unwrap().id, a);
        assert_eq!(resolve_in(&images, "localhost:5000/x:1").unwrap().unwrap().id, b);
        assert_eq!(resolve_in(&images, "abb").unwrap().unwrap().id, b);
        assert!(matches!(resolve_in(&images, "a"), Err(ImageError::Ambiguous(_))));
        assert!(resolve_in(&images, "nginx").unwrap().is_none());
        assert!(resolve_in(&images, "Bad Ref").is_err());
    }
}

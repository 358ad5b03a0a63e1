//! Test images built from scratch: layers as tar streams (from Debian's
//! `busybox-static` and hand-made entries, hostile ones included), gzip or
//! zstd compression, configs, manifests and indexes.

use std::io::Write;

use sha2::{Digest, Sha256};

/// Where Debian's busybox-static installs the binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// The applets the test images link to busybox.
pub const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "ls", "sleep", "id", "true", "false", "env", "hostname", "ps", "grep", "wc", "head", "mkdir", "rm", "touch",
    "stat", "test", "nc", "httpd", "ip", "ipcs", "ipcrm", "mount", "umount", "stty", "dd", "seq", "kill", "sync", "pwd", "readlink",
    "unshare", "tail", "timeout", "wget", "printf", "uname",
];

/// `sha256:<hex>`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A blob ready to push.
#[derive(Debug, Clone)]
pub struct Blob {
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Their digest.
    pub digest: String,
    /// The descriptor media type.
    pub media_type: String,
}

impl Blob {
    /// Wraps bytes.
    pub fn new(bytes: Vec<u8>, media_type: &str) -> Blob {
        Blob { digest: digest_of(&bytes), bytes, media_type: media_type.into() }
    }

    fn descriptor(&self) -> serde_json::Value {
        serde_json::json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.bytes.len() })
    }
}

/// Layer compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// A layer under construction: a tar stream.
pub struct LayerBuilder {
    tar: tar::Builder<Vec<u8>>,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// A fixed mtime for reproducible layers.
pub const MTIME: u64 = 1_700_000_000;

impl LayerBuilder {
    /// An empty layer.
    pub fn new() -> LayerBuilder {
        LayerBuilder { tar: tar::Builder::new(Vec::new()) }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(MTIME);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    /// Appends an entry with `name` written into the header as is (hostile
    /// names included: the tar crate's path checks are bypassed on purpose).
    pub fn raw(&mut self, mut h: tar::Header, name: &str, link: Option<&str>, data: &[u8]) -> &mut Self {
        {
            let gnu = h.as_old_mut();
            assert!(name.len() < gnu.name.len(), "name too long for a test entry");
            gnu.name.fill(0);
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(link) = link {
                gnu.linkname.fill(0);
                gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
        }
        h.set_cksum();
        self.tar.append(&h, data).expect("tar append");
        self
    }

    /// A directory.
    pub fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        self.raw(Self::header(tar::EntryType::Directory, mode, 0), name, None, &[])
    }

    /// A regular file.
    pub fn file(&mut self, name: &str, data: &[u8], mode: u32) -> &mut Self {
        self.raw(Self::header(tar::EntryType::Regular, mode, data.len() as u64), name, None, data)
    }

    /// A regular file with owner.
    pub fn file_owned(&mut self, name: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.raw(h, name, None, data)
    }

    /// A symlink.
    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(Self::header(tar::EntryType::Symlink, 0o777, 0), name, Some(target), &[])
    }

    /// A hardlink to an earlier entry.
    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(Self::header(tar::EntryType::Link, 0o644, 0), name, Some(target), &[])
    }

    /// A character device.
    pub fn char_device(&mut self, name: &str, major: u32, minor: u32) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Char, 0o666, 0);
        h.set_device_major(major).expect("major");
        h.set_device_minor(minor).expect("minor");
        self.raw(h, name, None, &[])
    }

    /// A block device with `mode`.
    pub fn block_device(&mut self, name: &str, major: u32, minor: u32, mode: u32) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Block, mode, 0);
        h.set_device_major(major).expect("major");
        h.set_device_minor(minor).expect("minor");
        self.raw(h, name, None, &[])
    }

    /// A regular file carrying extended attributes (PAX `SCHILY.xattr.*`
    /// records, as image builders write them).
    pub fn file_with_xattrs(&mut self, name: &str, data: &[u8], mode: u32, xattrs: &[(&str, &[u8])]) -> &mut Self {
        let keys: Vec<String> = xattrs.iter().map(|(k, _)| format!("SCHILY.xattr.{k}")).collect();
        self.tar.append_pax_extensions(keys.iter().map(String::as_str).zip(xattrs.iter().map(|(_, v)| *v))).expect("pax header");
        self.file(name, data, mode)
    }

    /// A FIFO.
    pub fn fifo(&mut self, name: &str) -> &mut Self {
        self.raw(Self::header(tar::EntryType::Fifo, 0o644, 0), name, None, &[])
    }

    /// An OCI whiteout hiding `path` of lower layers.
    pub fn whiteout(&mut self, path: &str) -> &mut Self {
        let (dir, name) = path.rsplit_once('/').map(|(d, n)| (format!("{d}/"), n)).unwrap_or((String::new(), path));
        self.file(&format!("{dir}.wh.{name}"), &[], 0o644)
    }

    /// An opaque-directory marker for `dir`.
    pub fn opaque(&mut self, dir: &str) -> &mut Self {
        self.file(&format!("{dir}/.wh..wh..opq"), &[], 0o644)
    }

    /// The busybox base: `/bin/busybox` with applet symlinks, `/etc/passwd`
    /// and `/etc/group` with root, a user 1000 and nobody, and the usual dirs.
    pub fn busybox(&mut self) -> &mut Self {
        let busybox = std::fs::read(BUSYBOX).expect("reading /bin/busybox: install Debian's busybox-static");
        for d in ["bin", "etc", "tmp", "root", "home", "home/user", "proc", "sys", "dev", "var", "usr", "usr/bin"] {
            let mode = if d == "tmp" { 0o1777 } else { 0o755 };
            self.dir(d, mode);
        }
        self.file("bin/busybox", &busybox, 0o755);
        for a in APPLETS {
            self.symlink(&format!("bin/{a}"), "busybox");
        }
        self.file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
            0o644,
        );
        self.file("etc/group", b"root:x:0:\nuser:x:1000:\nextra:x:2000:user\nnogroup:x:65534:\n", 0o644);
        self
    }

    /// Finishes the tar stream and compresses it.
    pub fn build(self, compression: Compression) -> Layer {
        let tar = self.tar.into_inner().expect("tar finish");
        Layer::from_tar(tar, compression)
    }
}

/// A finished layer.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The compressed blob.
    pub blob: Blob,
    /// Digest of the uncompressed tar.
    pub diff_id: String,
    /// Length of the uncompressed tar.
    pub tar_len: usize,
}

impl Layer {
    /// Compresses an uncompressed tar stream.
    pub fn from_tar(tar: Vec<u8>, compression: Compression) -> Layer {
        let diff_id = digest_of(&tar);
        let tar_len = tar.len();
        let (bytes, media_type) = match compression {
            Compression::None => (tar, "application/vnd.oci.image.layer.v1.tar"),
            Compression::Gzip => {
                let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(&tar).expect("gzip");
                (enc.finish().expect("gzip"), "application/vnd.oci.image.layer.v1.tar+gzip")
            }
            Compression::Zstd => (zstd::encode_all(&tar[..], 3).expect("zstd"), "application/vnd.oci.image.layer.v1.tar+zstd"),
        };
        Layer { blob: Blob::new(bytes, media_type), diff_id, tar_len }
    }
}

/// A built image: config, layers and manifest.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// The config blob; its digest is the image id.
    pub config: Blob,
    /// Layers, bottom first.
    pub layers: Vec<Layer>,
    /// The manifest.
    pub manifest: Blob,
}

impl BuiltImage {
    /// Every blob the manifest references.
    pub fn blobs(&self) -> impl Iterator<Item = &Blob> {
        std::iter::once(&self.config).chain(self.layers.iter().map(|l| &l.blob))
    }

    /// The image id.
    pub fn id(&self) -> &str {
        &self.config.digest
    }
}

/// Image config settings.
#[derive(Debug, Clone)]
pub struct ImageSettings {
    /// GOARCH.
    pub architecture: String,
    /// USER.
    pub user: String,
    /// ENTRYPOINT.
    pub entrypoint: Vec<String>,
    /// CMD.
    pub cmd: Vec<String>,
    /// ENV.
    pub env: Vec<String>,
    /// WORKDIR.
    pub working_dir: String,
    /// STOPSIGNAL.
    pub stop_signal: String,
}

impl Default for ImageSettings {
    fn default() -> Self {
        ImageSettings {
            architecture: "amd64".into(),
            user: String::new(),
            entrypoint: vec![],
            cmd: vec!["sh".into()],
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            working_dir: String::new(),
            stop_signal: String::new(),
        }
    }
}

/// Builds config and manifest (OCI media types) for `layers`.
pub fn image(layers: Vec<Layer>, settings: &ImageSettings) -> BuiltImage {
    let mut config = serde_json::json!({
        "architecture": settings.architecture,
        "os": "linux",
        "config": {
            "Env": settings.env,
            "Cmd": settings.cmd,
        },
        "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>() },
    });
    let c = &mut config["config"];
    if !settings.user.is_empty() {
        c["User"] = settings.user.clone().into();
    }
    if !settings.entrypoint.is_empty() {
        c["Entrypoint"] = settings.entrypoint.clone().into();
    }
    if !settings.working_dir.is_empty() {
        c["WorkingDir"] = settings.working_dir.clone().into();
    }
    if !settings.stop_signal.is_empty() {
        c["StopSignal"] = settings.stop_signal.clone().into();
    }
    let config = Blob::new(serde_json::to_vec(&config).expect("config"), "application/vnd.oci.image.config.v1+json");
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config.descriptor(),
        "layers": layers.iter().map(|l| l.blob.descriptor()).collect::<Vec<_>>(),
    });
    let manifest = Blob::new(serde_json::to_vec(&manifest).expect("manifest"), "application/vnd.oci.image.manifest.v1+json");
    BuiltImage { config, layers, manifest }
}

/// Deterministic incompressible bytes (xorshift64).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The pull benchmarks' image, about 100 MB in four layers: busybox, then
/// ~33 MB each of many small files, a few large random files (zstd) and
/// compressible text.
pub fn big_image() -> BuiltImage {
    let mut layers = Vec::new();
    let mut base = LayerBuilder::new();
    base.busybox();
    layers.push(base.build(Compression::Gzip));
    let mut small = LayerBuilder::new();
    small.dir("small", 0o755);
    for i in 0..4000 {
        small.file(&format!("small/f{i}"), &noise(8 * 1024, i), 0o644);
    }
    layers.push(small.build(Compression::Gzip));
    let mut large = LayerBuilder::new();
    large.dir("large", 0o755);
    for i in 0..4 {
        large.file(&format!("large/blob{i}"), &noise(8 << 20, 1000 + i), 0o644);
    }
    layers.push(large.build(Compression::Zstd));
    let mut text = LayerBuilder::new();
    let line = b"the quick brown fox jumps over the lazy dog 0123456789\n".repeat(600_000);
    text.file("text/log", &line, 0o644);
    layers.push(text.build(Compression::Gzip));
    image(layers, &ImageSettings::default())
}

/// A plain busybox image.
pub fn busybox_image(settings: &ImageSettings) -> BuiltImage {
    let mut layer = LayerBuilder::new();
    layer.busybox();
    image(vec![layer.build(Compression::Gzip)], settings)
}

/// An OCI index over `(image, architecture, variant)` entries.
pub fn index(entries: &[(&BuiltImage, &str, Option<&str>)]) -> Blob {
    let manifests: Vec<serde_json::Value> = entries
        .iter()
        .map(|(img, arch, variant)| {
            let mut platform = serde_json::json!({ "architecture": arch, "os": "linux" });
            if let Some(v) = variant {
                platform["variant"] = (*v).into();
            }
            let mut d = img.manifest.descriptor();
            d["platform"] = platform;
            d
        })
        .collect();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    Blob::new(serde_json::to_vec(&index).expect("index"), "application/vnd.oci.image.index.v1+json")
}

/// `security.capability` (VFS_CAP_REVISION_2) giving a file the capabilities
/// in `permitted` and `inheritable` (bit = capability number), effective on exec.
pub fn file_caps(permitted: u64, inheritable: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(20);
    v.extend_from_slice(&(0x0200_0000u32 | 1).to_le_bytes());
    for half in [0, 32] {
        v.extend_from_slice(&((permitted >> half) as u32).to_le_bytes());
        v.extend_from_slice(&((inheritable >> half) as u32).to_le_bytes());
    }
    v
}

/// The `probe` test program (fixtures/probe.c), built statically with gcc
/// once per test process: it makes one system call and prints the answer.
/// `$BERTH_E2E_PROBE` names one built before, for a machine without gcc
/// (the cgroup v2 VM).
pub fn probe_binary() -> &'static [u8] {
    static BIN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(built) = std::env::var_os("BERTH_E2E_PROBE") {
            return std::fs::read(&built).unwrap_or_else(|e| panic!("reading the probe {}: {e}", built.to_string_lossy()));
        }
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/probe.c");
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("probe");
        let status = std::process::Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .expect("running gcc (deploy/deps.sh --test installs it)");
        assert!(status.success(), "building {} failed", src.display());
        std::fs::read(&out).expect("reading the probe")
    })
}

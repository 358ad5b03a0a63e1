//! ImageService against a real registry: pull, list, status, remove, fs info,
//! auth, mirrors, tampered blobs, hostile layers, concurrency.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use berth_e2e::oci::{self, Compression, ImageSettings, LayerBuilder};
use berth_e2e::registry::{free_port, Registry};
use berth_e2e::{cri, Berthd};
use sha2::{Digest, Sha256};
use tonic::Code;

fn chain_ids(image: &oci::BuiltImage) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in &image.layers {
        let next = match out.last() {
            None => l.diff_id.clone(),
            Some(prev) => format!("sha256:{}", hex::encode(Sha256::digest(format!("{prev} {}", l.diff_id)))),
        };
        out.push(next);
    }
    out
}

fn snapshot(berthd: &Berthd, chain_id: &str) -> PathBuf {
    berthd.paths.root.join("snapshots").join(chain_id.strip_prefix("sha256:").unwrap())
}

fn blob_count(berthd: &Berthd) -> usize {
    std::fs::read_dir(berthd.paths.root.join("content/blobs/sha256")).unwrap().count()
}

fn snapshot_count(berthd: &Berthd) -> usize {
    std::fs::read_dir(berthd.paths.root.join("snapshots")).unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_list_status_and_restart() {
    let registry = Registry::start().await;
    let image = oci::busybox_image(&ImageSettings::default());
    registry.push("library/busybox", "1.0", &image).await;
    let mut berthd = Berthd::start().await;
    let mut cri = berthd.cri().await;
    let reference = registry.reference("library/busybox", "1.0");

    let image_ref = cri.pull(&reference).await.unwrap();
    assert_eq!(image_ref, image.id(), "image_ref is the config digest");

    let listed = cri.list_images().await;
    assert_eq!(listed.len(), 1);
    let img = &listed[0];
    assert_eq!(img.id, image.id());
    assert_eq!(img.repo_tags, vec![reference.clone()]);
    assert_eq!(img.repo_digests, vec![format!("{}/library/busybox@{}", registry.host, image.manifest.digest)]);
    let expected_size = image.manifest.bytes.len() + image.config.bytes.len() + image.layers[0].blob.bytes.len();
    assert_eq!(img.size, expected_size as u64);
    assert_eq!(img.uid, None, "no USER in the image");

    // Found by tag, id, bare hex, digest reference and id prefix.
    let hex = image.id().strip_prefix("sha256:").unwrap();
    for name in [reference.as_str(), image.id(), hex, &hex[..12], &img.repo_digests[0]] {
        let s = cri.image_status(name).await.unwrap().unwrap_or_else(|| panic!("ImageStatus {name}"));
        assert_eq!(s.id, image.id());
    }
    assert!(cri.image_status("nothere:1").await.unwrap().is_none(), "unknown image is an empty answer");

    // Filtered list.
    let filter = cri::ListImagesRequest { filter: Some(cri::ImageFilter { image: Some(berth_e2e::image_spec(&reference)) }) };
    assert_eq!(cri.image.list_images(filter).await.unwrap().into_inner().images.len(), 1);
    let filter = cri::ListImagesRequest { filter: Some(cri::ImageFilter { image: Some(berth_e2e::image_spec("other:1")) }) };
    assert_eq!(cri.image.list_images(filter).await.unwrap().into_inner().images.len(), 0);

    // Verbose status carries the image config.
    let verbose = cri
        .image
        .image_status(cri::ImageStatusRequest { image: Some(berth_e2e::image_spec(&reference)), verbose: true })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"]).unwrap();
    assert_eq!(info["imageSpec"]["config"]["Cmd"][0], "sh");

    // The unpacked layer is a usable lowerdir, and its compressed blob was
    // not kept: the content store holds the manifest and the config only.
    let snap = snapshot(&berthd, &chain_ids(&image)[0]);
    let blobs = berthd.paths.root.join("content/blobs/sha256");
    assert!(!blobs.join(image.layers[0].blob.digest.strip_prefix("sha256:").unwrap()).exists(), "layer blob kept");
    assert_eq!(blob_count(&berthd), 2);
    let busybox = std::fs::metadata(snap.join("bin/busybox")).unwrap();
    assert_eq!(busybox.permissions().mode() & 0o777, 0o755);
    assert_eq!(std::fs::read_link(snap.join("bin/sh")).unwrap(), PathBuf::from("busybox"));
    assert_eq!(std::fs::metadata(snap.join("tmp")).unwrap().permissions().mode() & 0o7777, 0o1777);

    // ImageFsInfo reports real use of both filesystems.
    let fs = cri.image.image_fs_info(cri::ImageFsInfoRequest {}).await.unwrap().into_inner();
    let imagefs = &fs.image_filesystems[0];
    assert!(imagefs.used_bytes.unwrap().value > 1_000_000, "busybox is ~2 MB");
    assert!(imagefs.inodes_used.unwrap().value > 40);
    assert!(imagefs.fs_id.as_ref().unwrap().mountpoint.starts_with(&berthd.paths.root.display().to_string()));
    assert!(fs.container_filesystems[0].fs_id.as_ref().unwrap().mountpoint.ends_with("containers"));

    // The store keeps everything across restarts.
    berthd.restart().await;
    let mut cri = berthd.cri().await;
    let listed = cri.list_images().await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].repo_tags, vec![reference]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_from_the_image_config() {
    let registry = Registry::start().await;
    let numeric = oci::busybox_image(&ImageSettings { user: "1000".into(), ..Default::default() });
    let named = oci::busybox_image(&ImageSettings { user: "nobody:nogroup".into(), ..Default::default() });
    registry.push("u", "numeric", &numeric).await;
    registry.push("u", "named", &named).await;
    let berthd = Berthd::start().await;
    let mut cri = berthd.cri().await;
    cri.pull(&registry.reference("u", "numeric")).await.unwrap();
    cri.pull(&registry.reference("u", "named")).await.unwrap();
    let s = cri.image_status(&registry.reference("u", "numeric")).await.unwrap().unwrap();
    assert_eq!(s.uid.unwrap().value, 1000);
    assert_eq!(s.username, "");
    let s = cri.image_status(&registry.reference("u", "named")).await.unwrap().unwrap();
    assert_eq!(s.uid, None);
    assert_eq!(s.username, "nobody");
}

/// Unmounts on drop so a failing test leaves no mount behind.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_layer_whiteouts_and_metadata_through_overlayfs() {
    let registry = Registry::start().await;
    let mut base = LayerBuilder::new();
    base.busybox()
        .dir("a", 0o755)
        .file("a/deleted", b"gone", 0o644)
        .file("a/kept", b"kept", 0o644)
        .dir("replaced", 0o755)
        .file("replaced/inner", b"inner", 0o644)
        .dir("opq", 0o755)
        .file("opq/old", b"old", 0o644)
        .file_owned("owned", b"suid", 0o4755, 1234, 5678)
        .hardlink("owned-link", "owned")
        .symlink("abs-link", "/etc/passwd")
        .char_device("null-dev", 1, 3)
        .fifo("pipe");
    let mut top = LayerBuilder::new();
    top.whiteout("a/deleted")
        .whiteout("replaced")
        .file("replaced", b"now a file", 0o600)
        .dir("opq", 0o755)
        .opaque("opq")
        .file("opq/new", b"new", 0o644);
    let image = oci::image(vec![base.build(Compression::Gzip), top.build(Compression::Zstd)], &ImageSettings::default());
    registry.push("layers", "v1", &image).await;

    // Device nodes from layers are made only when the node allows it.
    let berthd = Berthd::start_with_config("[image]\nunpack_device_nodes = true\n").await;
    let mut cri = berthd.cri().await;
    cri.pull(&registry.reference("layers", "v1")).await.unwrap();

    let chains = chain_ids(&image);
    let (lower, upper) = (snapshot(&berthd, &chains[0]), snapshot(&berthd, &chains[1]));
    // Metadata preserved in the lower layer.
    let owned = std::fs::symlink_metadata(lower.join("owned")).unwrap();
    assert_eq!((owned.uid(), owned.gid()), (1234, 5678));
    assert_eq!(owned.mode() & 0o7777, 0o4755, "setuid survives chown");
    assert_eq!(owned.mtime(), oci::MTIME as i64);
    assert_eq!(owned.ino(), std::fs::symlink_metadata(lower.join("owned-link")).unwrap().ino(), "hardlink");
    assert_eq!(std::fs::read_link(lower.join("abs-link")).unwrap(), PathBuf::from("/etc/passwd"));
    let dev = std::fs::symlink_metadata(lower.join("null-dev")).unwrap();
    assert!(dev.file_type().is_char_device());
    assert_eq!(dev.rdev(), nix::sys::stat::makedev(1, 3));
    assert!(std::fs::symlink_metadata(lower.join("pipe")).unwrap().file_type().is_fifo());
    assert_eq!(std::fs::metadata(lower.join("a")).unwrap().mtime(), oci::MTIME as i64, "dir mtime after children");
    // Whiteouts became overlayfs whiteouts.
    let wh = std::fs::symlink_metadata(upper.join("a/deleted")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);

    // And overlayfs agrees: mount the two layers and look.
    let mnt = tempfile::tempdir().unwrap();
    let opts = format!("lowerdir={}:{}", upper.display(), lower.display());
    nix::mount::mount(Some("overlay"), mnt.path(), Some("overlay"), nix::mount::MsFlags::MS_RDONLY, Some(opts.as_str()))
        .expect("overlay mount of the snapshots");
    let _m = Mount(mnt.path().to_path_buf());
    let m = mnt.path();
    assert!(!m.join("a/deleted").exists(), "whiteout hides the file");
    assert_eq!(std::fs::read(m.join("a/kept")).unwrap(), b"kept");
    assert_eq!(std::fs::read(m.join("replaced")).unwrap(), b"now a file", "directory replaced by a file");
    assert!(!m.join("opq/old").exists(), "opaque dir hides the lower content");
    assert_eq!(std::fs::read(m.join("opq/new")).unwrap(), b"new");
    assert!(m.join("bin/busybox").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_picks_the_host_platform_and_layers_may_be_zstd_or_plain() {
    let registry = Registry::start().await;
    let per_arch = |arch: &str, compression: Compression| {
        let mut l = LayerBuilder::new();
        l.busybox().file("platform", arch.as_bytes(), 0o644);
        oci::image(vec![l.build(compression)], &ImageSettings { architecture: arch.into(), ..Default::default() })
    };
    let arm = per_arch("arm64", Compression::Gzip);
    let amd = per_arch("amd64", Compression::Zstd);
    let plain = per_arch("amd64", Compression::None);
    for img in [&arm, &amd] {
        for b in img.blobs() {
            registry.push_blob("multi", b).await;
        }
        registry.push_manifest("multi", &img.manifest.digest, &img.manifest.media_type, &img.manifest.bytes).await;
    }
    let index = oci::index(&[(&arm, "arm64", Some("v8")), (&amd, "amd64", None)]);
    registry.push_manifest("multi", "v1", &index.media_type, &index.bytes).await;
    registry.push("plain", "v1", &plain).await;

    let berthd = Berthd::start().await;
    let mut cri = berthd.cri().await;
    assert_eq!(cri.pull(&registry.reference("multi", "v1")).await.unwrap(), amd.id());
    let snap = snapshot(&berthd, &chain_ids(&amd)[0]);
    assert_eq!(std::fs::read(snap.join("platform")).unwrap(), b"amd64");
    let s = cri.image_status(&registry.reference("multi", "v1")).await.unwrap().unwrap();
    assert_eq!(s.repo_digests, vec![format!("{}/multi@{}", registry.host, index.digest)], "repo digest is the index's");

    // Pull by digest too (tag+digest: the digest wins).
    let by_digest = format!("{}/multi:ignored@{}", registry.host, index.digest);
    assert_eq!(cri.pull(&by_digest).await.unwrap(), amd.id());

    assert_eq!(cri.pull(&registry.reference("plain", "v1")).await.unwrap(), plain.id());
    assert!(snapshot(&berthd, &chain_ids(&plain)[0]).join("bin/busybox").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_right_and_wrong_credentials() {
    let registry = Registry::start_with_auth("alice", "s3cret-pw").await;
    let image = oci::busybox_image(&ImageSettings::default());
    registry.push("private/app", "1", &image).await;
    let berthd = Berthd::start().await;
    let mut cri = berthd.cri().await;
    let reference = registry.reference("private/app", "1");
    let auth =
        |user: &str, password: &str| Some(cri::AuthConfig { username: user.into(), password: password.into(), ..Default::default() });

    let e = cri.pull(&reference).await.unwrap_err();
    assert_ne!(e.code(), Code::Ok);
    let e = cri.pull_with(&reference, auth("alice", "wrong")).await.unwrap_err();
    assert!(e.message().contains(&registry.host), "{}", e.message());
    assert!(!berthd.log().contains("wrong"), "credentials must never be logged");
    assert!(cri.list_images().await.is_empty());

    assert_eq!(cri.pull_with(&reference, auth("alice", "s3cret-pw")).await.unwrap(), image.id());
    // The base64 `auth` field works too.
    let b64 = cri::AuthConfig { auth: "YWxpY2U6czNjcmV0LXB3".into(), ..Default::default() };
    assert_eq!(cri.pull_with(&reference, Some(b64)).await.unwrap(), image.id());
    assert!(!berthd.log().contains("s3cret-pw"), "credentials must never be logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_are_tried_first_and_a_dead_one_falls_back() {
    let upstream = Registry::start().await;
    let mirror = Registry::start().await;
    let from_mirror = oci::busybox_image(&ImageSettings { env: vec!["FROM=mirror".into()], ..Default::default() });
    let from_upstream = oci::busybox_image(&ImageSettings { env: vec!["FROM=upstream".into()], ..Default::default() });
    mirror.push("app", "1", &from_mirror).await;
    upstream.push("app", "1", &from_upstream).await;
    upstream.push("app", "2", &from_upstream).await;
    let dead = format!("127.0.0.1:{}", free_port());
    let config = format!("[registry.mirrors]\n\"{}\" = [\"{dead}\", \"{}\"]\n", upstream.host, mirror.host);
    let berthd = Berthd::start_with_config(&config).await;
    let mut cri = berthd.cri().await;
    // The dead mirror is skipped, the live one serves.
    assert_eq!(cri.pull(&upstream.reference("app", "1")).await.unwrap(), from_mirror.id());
    // The mirror lacks app:2, so the upstream serves it.
    assert_eq!(cri.pull(&upstream.reference("app", "2")).await.unwrap(), from_upstream.id());
    // Tags are recorded under the upstream name, wherever the bytes came from.
    let s = cri.image_status(&upstream.reference("app", "1")).await.unwrap().unwrap();
    assert_eq!(s.repo_tags, vec![upstream.reference("app", "1")]);
}

/// A node without CA certificates (a minimal image, a fresh VM) gets a pull
/// error that says so; berthd used to panic in oci-client's fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ca_certificates_is_an_error_not_a_crash() {
    let registry = Registry::start().await;
    registry.push("app", "1", &oci::busybox_image(&ImageSettings::default())).await;
    let empty = tempfile::tempdir().unwrap();
    let dir = empty.path().display().to_string();
    let mut berthd = Berthd::start_with_env("", &[("SSL_CERT_FILE", "/dev/null"), ("SSL_CERT_DIR", &dir)]).await;
    let mut cri = berthd.cri().await;
    let e = cri.pull(&registry.reference("app", "1")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{}", e.message());
    assert!(e.message().contains("CA certificates"), "{}", e.message());
    // Still serving.
    assert!(cri.list_images().await.is_empty());
    assert!(berthd.terminate().success(), "{}", berthd.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_blob_fails_and_leaves_nothing_then_reuses_good_blobs() {
    let registry = Registry::start().await;
    let mut base = LayerBuilder::new();
    base.busybox();
    let base = base.build(Compression::Gzip);
    let mut extra = LayerBuilder::new();
    extra.file("extra", &vec![7u8; 300_000], 0o644);
    let extra = extra.build(Compression::Gzip);
    let image = oci::image(vec![base.clone(), extra.clone()], &ImageSettings::default());
    registry.push("tamper", "1", &image).await;

    // Same size, different bytes: only a digest check can notice.
    let file = registry.blob_file(&extra.blob.digest);
    let good = std::fs::read(&file).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    std::fs::write(&file, &bad).unwrap();

    let berthd = Berthd::start().await;
    let mut cri = berthd.cri().await;
    let e = cri.pull(&registry.reference("tamper", "1")).await.unwrap_err();
    // Said by berth's check or by oci-client's own at the stream's end.
    assert!(e.message().contains(&extra.blob.digest) && e.message().to_lowercase().contains("digest"), "{}", e.message());
    let blobs = berthd.paths.root.join("content/blobs/sha256");
    assert!(!blobs.join(extra.blob.digest.strip_prefix("sha256:").unwrap()).exists(), "no bad blob visible");
    assert_eq!(std::fs::read_dir(berthd.paths.root.join("content/ingest")).unwrap().count(), 0, "no partial blob left");
    assert!(!snapshot(&berthd, &chain_ids(&image)[1]).exists(), "no snapshot of the bad layer");
    let snapshots: Vec<_> = std::fs::read_dir(berthd.paths.root.join("snapshots")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(snapshots.len(), 1, "only the good layer's snapshot, no partial unpack left: {snapshots:?}");
    assert!(cri.list_images().await.is_empty());

    // Repaired: the pull succeeds and the base layer, unpacked by the failed
    // pull, is not downloaded again.
    std::fs::write(&file, &good).unwrap();
    let gets_before = registry.blob_gets(&base.blob.digest);
    assert_eq!(gets_before, 1, "{}", registry.log());
    assert_eq!(cri.pull(&registry.reference("tamper", "1")).await.unwrap(), image.id());
    assert_eq!(registry.blob_gets(&base.blob.digest), 1, "the unpacked layer was reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_layers_fail_and_write_nothing_outside() {
    let registry = Registry::start().await;
    let outside = tempfile::tempdir().unwrap();
    let out = outside.path().display().to_string();
    let mut cases: Vec<(&str, LayerBuilder)> = Vec::new();

    let mut l = LayerBuilder::new();
    l.file("../../../../escape-dotdot", b"x", 0o644);
    cases.push(("dotdot", l));
    let mut l = LayerBuilder::new();
    l.file(&format!("{out}/escape-abs"), b"x", 0o644);
    cases.push(("absolute", l));
    let mut l = LayerBuilder::new();
    l.symlink("link", &out).file("link/escape-symlink", b"x", 0o644);
    cases.push(("symlink", l));
    let mut l = LayerBuilder::new();
    l.symlink("link", "../../../../../../../..").file("link/tmp/escape-rel", b"x", 0o644);
    cases.push(("relative-symlink", l));
    let mut l = LayerBuilder::new();
    l.hardlink("passwd-link", "../../../../../../etc/passwd");
    cases.push(("hardlink", l));

    let berthd = Berthd::start().await;
    let mut cri = berthd.cri().await;
    for (name, layer) in cases {
        let image = oci::image(vec![layer.build(Compression::Gzip)], &ImageSettings::default());
        registry.push("evil", name, &image).await;
        let e = cri.pull(&registry.reference("evil", name)).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{name}: {}", e.message());
        assert!(e.message().contains("layer entry"), "{name}: {}", e.message());
    }
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0, "nothing written outside");
    for p in ["/escape-dotdot", "/tmp/escape-rel"] {
        assert!(!Path::new(p).exists(), "{p} written outside the layer root");
    }
    assert!(!berthd.paths.root.parent().unwrap().join("escape-dotdot").exists());
    assert_eq!(snapshot_count(&berthd), 0, "failed unpacks leave no snapshot");
    assert!(cri.list_images().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_share_one_download() {
    let registry = Registry::start().await;
    let mut big = LayerBuilder::new();
    big.busybox().file("big", &vec![1u8; 4 << 20], 0o644);
    let image = oci::image(vec![big.build(Compression::Gzip)], &ImageSettings::default());
    registry.push("shared", "1", &image).await;
    let berthd = Berthd::start().await;
    let reference = registry.reference("shared", "1");
    let mut pulls = Vec::new();
    for _ in 0..4 {
        let mut cri = berthd.cri().await;
        let r = reference.clone();
        pulls.push(tokio::spawn(async move { cri.pull(&r).await }));
    }
    for p in pulls {
        assert_eq!(p.await.unwrap().unwrap(), image.id());
    }
    assert_eq!(registry.blob_gets(&image.layers[0].blob.digest), 1, "{}", registry.log());
    let mut cri = berthd.cri().await;
    assert_eq!(cri.list_images().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_by_any_name_removes_the_image_but_keeps_shared_layers() {
    let registry = Registry::start().await;
    let mut base = LayerBuilder::new();
    base.busybox();
    let base = base.build(Compression::Gzip);
    let mut extra = LayerBuilder::new();
    extra.file("only-in-b", b"b", 0o644);
    let a = oci::image(vec![base.clone()], &ImageSettings::default());
    let b = oci::image(vec![base.clone(), extra.build(Compression::Gzip)], &ImageSettings::default());
    registry.push("a", "1", &a).await;
    registry.push("a", "2", &a).await;
    registry.push("b", "1", &b).await;
    let berthd = Berthd::start().await;
    let mut cri = berthd.cri().await;
    for r in [registry.reference("a", "1"), registry.reference("a", "2"), registry.reference("b", "1")] {
        cri.pull(&r).await.unwrap();
    }
    assert_eq!(cri.image_status(&registry.reference("a", "2")).await.unwrap().unwrap().repo_tags.len(), 2);
    assert_eq!(snapshot_count(&berthd), 2);
    let a_config = berthd.paths.root.join("content/blobs/sha256").join(a.config.digest.strip_prefix("sha256:").unwrap());

    // By one of its tags: the image goes with all its names, as the CRI asks
    // (since Kubernetes 1.36) and containerd does, and so do its own blobs;
    // the layer b shares stays.
    cri.remove_image(&registry.reference("a", "1")).await.unwrap();
    for name in [registry.reference("a", "1"), registry.reference("a", "2"), a.id().to_string()] {
        assert!(cri.image_status(&name).await.unwrap().is_none(), "{name} still names an image");
    }
    assert_eq!(cri.list_images().await.len(), 1, "only b is left");
    assert!(!a_config.exists());
    assert!(snapshot(&berthd, &chain_ids(&b)[0]).exists(), "shared base kept for b");
    assert_eq!(snapshot_count(&berthd), 2);

    // Pulled again and removed by its repo digest: the same.
    cri.pull(&registry.reference("a", "1")).await.unwrap();
    cri.pull(&registry.reference("a", "2")).await.unwrap();
    let digest = cri.image_status(a.id()).await.unwrap().unwrap().repo_digests[0].clone();
    cri.remove_image(&digest).await.unwrap();
    for name in [registry.reference("a", "1"), registry.reference("a", "2"), a.id().to_string(), digest] {
        assert!(cri.image_status(&name).await.unwrap().is_none(), "{name} still names an image");
    }
    assert!(!a_config.exists());

    // Unknown images are not an error; removing b empties the stores.
    cri.remove_image("never-pulled:1").await.unwrap();
    cri.remove_image(&registry.reference("b", "1")).await.unwrap();
    assert!(cri.list_images().await.is_empty());
    assert_eq!(blob_count(&berthd), 0);
    assert_eq!(snapshot_count(&berthd), 0);
}

/// The SIG Node suite's image consistency specs: five clients remove one
/// image by id at once; each gets OK and, right after, no image; and an id
/// never pulled (bare hex, as the suite sends it) is no error, twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_removals_all_succeed_and_the_image_is_gone_for_each() {
    let registry = Registry::start().await;
    let image = oci::busybox_image(&ImageSettings::default());
    registry.push("busybox", "1", &image).await;
    let berthd = Berthd::start().await;
    let mut cri = berthd.cri().await;
    let reference = registry.reference("busybox", "1");
    let id = cri.pull(&reference).await.unwrap();
    assert_eq!(cri.image_status(&reference).await.unwrap().unwrap().id, id, "Image.id is PullImageResponse.image_ref");
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut cri = berthd.cri().await;
        let id = id.clone();
        clients.push(tokio::spawn(async move {
            let removed = cri.remove_image(&id).await;
            (removed, cri.image_status(&id).await)
        }));
    }
    for client in clients {
        let (removed, status) = client.await.unwrap();
        removed.expect("a simultaneous RemoveImage fails");
        assert!(status.unwrap().is_none(), "the image is still there after a RemoveImage returned");
    }
    assert!(cri.list_images().await.is_empty());
    assert_eq!(blob_count(&berthd), 0);
    for _ in 0..2 {
        cri.remove_image(&"0".repeat(64)).await.expect("RemoveImage of an id never pulled");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_references_are_invalid_argument() {
    let berthd = Berthd::start().await;
    let mut cri = berthd.cri().await;
    for bad in ["UPPER/case:1", "a b", "busybox@sha256:123", ":tag"] {
        let e = cri.pull(bad).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {}", e.message());
        assert!(e.message().contains(bad), "message names the reference: {}", e.message());
    }
    let e = cri.pull("").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = cri.image_status("").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // A registry that is not there: a clear error naming it, quickly.
    let host = format!("127.0.0.1:{}", free_port());
    let e = cri.pull(&format!("{host}/x:1")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains(&host), "{}", e.message());
}

//! ImageService: PullImage, ListImages, ImageStatus, RemoveImage, ImageFsInfo.

use std::collections::HashMap;
use std::sync::Arc;

use berth_proto::cri;

use crate::error::{Error, Result};
use crate::image::distribution::Credentials;
use crate::image::manifest::user_of;
use crate::image::ImageRecord;
use crate::node::Node;

fn image_field(spec: Option<cri::ImageSpec>, field: &str) -> Result<String> {
    match spec.map(|s| s.image) {
        Some(i) if !i.is_empty() => Ok(i),
        _ => Err(Error::invalid(format!("{field}.image"), "must name an image")),
    }
}

/// The CRI view of an image record.
pub fn to_cri(r: &ImageRecord, pinned: bool) -> cri::Image {
    let (uid, username) = user_of(&r.config.user);
    cri::Image {
        id: r.id.clone(),
        repo_tags: r.repo_tags.clone(),
        repo_digests: r.repo_digests.clone(),
        size: r.size,
        uid: uid.map(|value| cri::Int64Value { value }),
        username,
        spec: Some(cri::ImageSpec { image: r.id.clone(), ..Default::default() }),
        pinned,
    }
}

pub(super) async fn pull_image(node: &Arc<Node>, req: cri::PullImageRequest) -> Result<cri::PullImageResponse> {
    // Images are shared by every handler, but one the node does not have is
    // refused, as the CRI asks (kubelet's RuntimeClassInImageCriApi).
    if let Some(spec) = &req.image {
        node.require_handler("image.runtime_handler", &spec.runtime_handler)?;
    }
    let image = image_field(req.image, "image")?;
    let creds = match req.auth {
        Some(a) => Credentials::from_cri(&a.username, &a.password, &a.auth, &a.identity_token, &a.registry_token)
            .map_err(|e| Error::invalid("auth", e))?,
        None => Credentials::default(),
    };
    let started = std::time::Instant::now();
    let pulled = node.images.pull(&image, &creds).await;
    let (ok, bytes) = pulled.as_ref().map(|r| (true, r.size)).unwrap_or((false, 0));
    crate::telemetry::get().pull(ok, bytes, started.elapsed());
    Ok(cri::PullImageResponse { image_ref: pulled?.id })
}

pub(super) async fn list_images(node: &Arc<Node>, req: cri::ListImagesRequest) -> Result<cri::ListImagesResponse> {
    let filter = req.filter.and_then(|f| f.image).map(|s| s.image).filter(|s| !s.is_empty());
    let images = match filter {
        Some(f) => node.images.resolve(&f)?.into_iter().collect(),
        None => node.images.list()?,
    };
    Ok(cri::ListImagesResponse { images: images.iter().map(|i| to_cri(i, node.images.is_pinned(i))).collect() })
}

pub(super) async fn image_status(node: &Arc<Node>, req: cri::ImageStatusRequest) -> Result<cri::ImageStatusResponse> {
    let image = image_field(req.image, "image")?;
    // An unknown image is an empty answer, not an error: kubelet pulls then.
    let Some(record) = node.images.resolve(&image)? else {
        return Ok(cri::ImageStatusResponse::default());
    };
    let mut info = HashMap::new();
    if req.verbose {
        let verbose = serde_json::json!({
            "id": record.id,
            "manifestDigest": record.manifest_digest,
            "chainIDs": record.layers.iter().map(|l| l.chain_id.clone()).collect::<Vec<_>>(),
            "imageSpec": node.images.config_json(&record)?,
        });
        info.insert("info".to_string(), verbose.to_string());
    }
    Ok(cri::ImageStatusResponse { image: Some(to_cri(&record, node.images.is_pinned(&record))), info })
}

pub(super) async fn remove_image(node: &Arc<Node>, req: cri::RemoveImageRequest) -> Result<cri::RemoveImageResponse> {
    let image = image_field(req.image, "image")?;
    crate::container::remove_image(node, &image).await?;
    Ok(cri::RemoveImageResponse {})
}

pub(super) async fn image_fs_info(node: &Arc<Node>, _req: cri::ImageFsInfoRequest) -> Result<cri::ImageFsInfoResponse> {
    // Writable layers being deleted still use their space.
    let pending = node.trash.dir_for(&node.config.root).unwrap_or_default();
    let (images, containers) = node.images.fs_usage(node.containers_dir(), pending).await?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0);
    let usage = |u: crate::image::Usage| cri::FilesystemUsage {
        timestamp: now,
        fs_id: Some(cri::FilesystemIdentifier { mountpoint: u.path.display().to_string() }),
        used_bytes: Some(cri::UInt64Value { value: u.bytes }),
        inodes_used: Some(cri::UInt64Value { value: u.inodes }),
    };
    Ok(cri::ImageFsInfoResponse { image_filesystems: vec![usage(images)], container_filesystems: vec![usage(containers)] })
}

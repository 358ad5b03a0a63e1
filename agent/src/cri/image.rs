//! ImageService: PullImage, ListImages, ImageStatus, RemoveImage, ImageFsInfo.

use std::collections::HashMap;

use berth_proto::cri;
use tonic::{Request, Response, Status};

use super::Agent;
use crate::image::distribution::Credentials;
use crate::image::manifest::user_of;
use crate::image::ImageError;
use crate::store::ImageRecord;

/// The gRPC status of an image failure.
pub fn status_of(e: ImageError) -> Status {
    let msg = e.to_string();
    match e {
        ImageError::InvalidReference { .. } | ImageError::Ambiguous(_) => Status::invalid_argument(msg),
        ImageError::Registry { .. } => Status::unavailable(msg),
        ImageError::BadImage { .. } | ImageError::Unpack { .. } => Status::failed_precondition(msg),
        ImageError::Content { .. } => Status::data_loss(msg),
        ImageError::Store(_) | ImageError::Io(_) => Status::internal(msg),
    }
}

fn image_field(spec: Option<cri::ImageSpec>, field: &str) -> Result<String, Status> {
    match spec.map(|s| s.image) {
        Some(i) if !i.is_empty() => Ok(i),
        _ => Err(Status::invalid_argument(format!("{field}.image: must name an image"))),
    }
}

/// The CRI view of an image record.
pub fn to_cri(r: &ImageRecord) -> cri::Image {
    let (uid, username) = user_of(&r.config.user);
    cri::Image {
        id: r.id.clone(),
        repo_tags: r.repo_tags.clone(),
        repo_digests: r.repo_digests.clone(),
        size: r.size,
        uid: uid.map(|value| cri::Int64Value { value }),
        username,
        spec: Some(cri::ImageSpec { image: r.id.clone(), ..Default::default() }),
        pinned: false,
    }
}

pub(super) async fn pull_image(agent: &Agent, r: Request<cri::PullImageRequest>) -> Result<Response<cri::PullImageResponse>, Status> {
    let req = r.into_inner();
    let image = image_field(req.image, "image")?;
    let creds = match req.auth {
        Some(a) => Credentials::from_cri(&a.username, &a.password, &a.auth, &a.identity_token, &a.registry_token)
            .map_err(|e| Status::invalid_argument(e.to_string()))?,
        None => Credentials::default(),
    };
    let record = agent.images.pull(&image, &creds).await.map_err(status_of)?;
    Ok(Response::new(cri::PullImageResponse { image_ref: record.id }))
}

pub(super) async fn list_images(agent: &Agent, r: Request<cri::ListImagesRequest>) -> Result<Response<cri::ListImagesResponse>, Status> {
    let filter = r.into_inner().filter.and_then(|f| f.image).map(|s| s.image).filter(|s| !s.is_empty());
    let images = match filter {
        Some(f) => agent.images.resolve(&f).map_err(status_of)?.into_iter().collect(),
        None => agent.images.list().map_err(status_of)?,
    };
    Ok(Response::new(cri::ListImagesResponse { images: images.iter().map(to_cri).collect() }))
}

pub(super) async fn image_status(agent: &Agent, r: Request<cri::ImageStatusRequest>) -> Result<Response<cri::ImageStatusResponse>, Status> {
    let req = r.into_inner();
    let image = image_field(req.image, "image")?;
    // An unknown image is an empty answer, not an error: kubelet pulls then.
    let Some(record) = agent.images.resolve(&image).map_err(status_of)? else {
        return Ok(Response::new(cri::ImageStatusResponse::default()));
    };
    let mut info = HashMap::new();
    if req.verbose {
        let verbose = serde_json::json!({
            "id": record.id,
            "manifestDigest": record.manifest_digest,
            "chainIDs": record.layers.iter().map(|l| l.chain_id.clone()).collect::<Vec<_>>(),
            "imageSpec": agent.images.config_json(&record).map_err(status_of)?,
        });
        info.insert("info".to_string(), verbose.to_string());
    }
    Ok(Response::new(cri::ImageStatusResponse { image: Some(to_cri(&record)), info }))
}

pub(super) async fn remove_image(agent: &Agent, r: Request<cri::RemoveImageRequest>) -> Result<Response<cri::RemoveImageResponse>, Status> {
    let image = image_field(r.into_inner().image, "image")?;
    agent.images.remove(&image).await.map_err(status_of)?;
    Ok(Response::new(cri::RemoveImageResponse {}))
}

pub(super) async fn image_fs_info(
    agent: &Agent,
    _r: Request<cri::ImageFsInfoRequest>,
) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
    let (images, containers) = agent.images.fs_usage(agent.containers_dir()).await.map_err(status_of)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0);
    let usage = |u: crate::image::Usage| cri::FilesystemUsage {
        timestamp: now,
        fs_id: Some(cri::FilesystemIdentifier { mountpoint: u.path.display().to_string() }),
        used_bytes: Some(cri::UInt64Value { value: u.bytes }),
        inodes_used: Some(cri::UInt64Value { value: u.inodes }),
    };
    Ok(Response::new(cri::ImageFsInfoResponse { image_filesystems: vec![usage(images)], container_filesystems: vec![usage(containers)] }))
}

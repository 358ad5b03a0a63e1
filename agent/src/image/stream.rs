//! A layer unpacked while it downloads; its compressed bytes are never
//! stored.
//!
//! berth reads a layer blob for one thing only, unpacking it, so keeping it
//! in the content store would write every layer twice: compressed, then
//! unpacked. CRI-O's storage unpacks as it downloads too; containerd keeps
//! blobs unless `discard_unpacked_layers` is set. The bytes arrive from the
//! async download over a bounded channel (so a slow disk slows the download,
//! never grows memory) to a blocking thread that hashes and counts them,
//! decompresses and unpacks. The snapshot becomes visible only once the
//! compressed bytes match the manifest's digest and size and the tar its
//! diff_id; a layer that fails either leaves nothing.

use std::io::{self, Read};
use std::path::Path;

use tokio::sync::mpsc;

use super::content::ContentError;
use super::unpack::{self, HashingReader, UnpackError, UnpackOptions};

/// How many chunks may wait between the download and the unpack.
pub(super) const CHUNKS_IN_FLIGHT: usize = 16;

/// Why a streamed layer failed.
#[derive(Debug)]
pub(super) enum StreamError {
    /// The compressed bytes are not the blob the manifest names.
    Content(ContentError),
    /// The bytes are the blob, and the blob is no layer berth unpacks.
    Unpack(UnpackError),
}

/// The compressed bytes as they arrive.
struct Incoming<B> {
    rx: mpsc::Receiver<B>,
    chunk: Option<B>,
    /// How much of `chunk` was read.
    at: usize,
}

impl<B: AsRef<[u8]>> Read for Incoming<B> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(chunk) = &self.chunk {
                let rest = &chunk.as_ref()[self.at..];
                if !rest.is_empty() {
                    let n = rest.len().min(buf.len());
                    buf[..n].copy_from_slice(&rest[..n]);
                    self.at += n;
                    return Ok(n);
                }
            }
            // The sender goes when the download ends, however it ends: the
            // caller knows whether it was whole.
            match self.rx.blocking_recv() {
                Some(next) => {
                    self.chunk = Some(next);
                    self.at = 0;
                }
                None => return Ok(0),
            }
        }
    }
}

/// Unpacks into the empty directory `dest` what arrives on `rx` (call on a
/// blocking thread), then checks the compressed bytes against `digest` and
/// `size`. A blob that is not the one named fails as such, whatever the
/// unpack made of it: a flipped byte shows as a digest mismatch, not as a
/// broken gzip stream.
pub(super) fn unpack_verified<B: AsRef<[u8]>>(
    rx: mpsc::Receiver<B>,
    dest: &Path,
    digest: &str,
    size: u64,
    diff_id: &str,
    opts: UnpackOptions,
) -> Result<(), StreamError> {
    let mut incoming = HashingReader::new(Incoming { rx, chunk: None, at: 0 });
    let unpacked = unpack::unpack_layer_from(&mut incoming, dest, diff_id, opts);
    // What the decompressor did not read (padding after the end, or all the
    // rest after a failure) still counts towards the digest. Reading from
    // the channel cannot fail.
    let _ = io::copy(&mut incoming, &mut io::sink());
    let (actual, len) = incoming.finish();
    if len != size {
        return Err(StreamError::Content(ContentError::SizeMismatch { digest: digest.into(), expected: size, actual: len }));
    }
    if actual != digest {
        return Err(StreamError::Content(ContentError::DigestMismatch { expected: digest.into(), actual }));
    }
    unpacked.map_err(StreamError::Unpack)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::content::sha256_digest;

    /// A gzip layer holding one file, its compressed bytes and diff_id.
    fn layer() -> (Vec<u8>, String) {
        let mut tar = tar::Builder::new(Vec::new());
        let body = b"hello from a layer\n";
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        tar.append_data(&mut h, "greeting", &body[..]).unwrap();
        let tar = tar.into_inner().unwrap();
        let diff_id = sha256_digest(&tar);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &tar).unwrap();
        (gz.finish().unwrap(), diff_id)
    }

    /// Sends `bytes` in small chunks from another thread, as a download would.
    fn feed(bytes: Vec<u8>) -> mpsc::Receiver<Vec<u8>> {
        let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        std::thread::spawn(move || {
            for c in bytes.chunks(7) {
                if tx.blocking_send(c.to_vec()).is_err() {
                    return;
                }
            }
        });
        rx
    }

    #[test]
    fn a_streamed_layer_is_unpacked_and_checked() {
        let (blob, diff_id) = layer();
        let digest = sha256_digest(&blob);
        let dir = tempfile::tempdir().unwrap();
        unpack_verified(feed(blob.clone()), dir.path(), &digest, blob.len() as u64, &diff_id, UnpackOptions::default()).unwrap();
        assert_eq!(std::fs::read(dir.path().join("greeting")).unwrap(), b"hello from a layer\n");
    }

    #[test]
    fn the_wrong_blob_fails_as_the_wrong_blob() {
        let (blob, diff_id) = layer();
        let digest = sha256_digest(&blob);
        let len = blob.len() as u64;
        let opts = UnpackOptions::default();

        // A flipped byte in the middle: gzip may or may not notice, the digest does.
        let mut flipped = blob.clone();
        flipped[blob.len() / 2] ^= 0xff;
        let dir = tempfile::tempdir().unwrap();
        let e = unpack_verified(feed(flipped), dir.path(), &digest, len, &diff_id, opts).unwrap_err();
        assert!(matches!(e, StreamError::Content(ContentError::DigestMismatch { .. })), "{e:?}");

        // Cut short (a download that broke off).
        let dir = tempfile::tempdir().unwrap();
        let e = unpack_verified(feed(blob[..blob.len() - 9].to_vec()), dir.path(), &digest, len, &diff_id, opts).unwrap_err();
        assert!(matches!(e, StreamError::Content(ContentError::SizeMismatch { .. })), "{e:?}");

        // The right blob, the wrong diff_id: an unpack failure.
        let dir = tempfile::tempdir().unwrap();
        let other = sha256_digest(b"other");
        let e = unpack_verified(feed(blob), dir.path(), &digest, len, &other, opts).unwrap_err();
        assert!(matches!(e, StreamError::Unpack(UnpackError::DiffId { .. })), "{e:?}");
    }
}

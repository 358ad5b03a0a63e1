//! Pull + unpack of a ~100 MB multi-layer image from a local registry.
//! Prints the median of repeated runs: `cargo bench -p berth-e2e --bench pull`.

use std::time::{Duration, Instant};

use berth_e2e::oci::{self, Compression, ImageSettings, LayerBuilder};
use berth_e2e::registry::Registry;
use berth_e2e::Berthd;

const RUNS: usize = 5;

/// Deterministic incompressible bytes (xorshift64).
fn noise(len: usize, seed: u64) -> Vec<u8> {
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

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // Four layers: busybox, then ~33 MB each of many small files, a few large
    // random files, and compressible text.
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
    let image = oci::image(layers, &ImageSettings::default());
    let compressed: usize = image.layers.iter().map(|l| l.blob.bytes.len()).sum();
    let uncompressed: usize = image.layers.iter().map(|l| l.tar_len).sum();

    let registry = Registry::start().await;
    registry.push("bench/big", "1", &image).await;
    let reference = registry.reference("bench/big", "1");

    let mut times = Vec::new();
    for _ in 0..RUNS {
        let berthd = Berthd::start().await;
        let mut cri = berthd.cri().await;
        let start = Instant::now();
        cri.pull(&reference).await.expect("pull");
        times.push(start.elapsed());
        drop(cri);
    }
    let m = median(times.clone());
    let (mb, raw) = (compressed as f64 / 1e6, uncompressed as f64 / 1e6);
    println!("pull+unpack of a 4-layer image ({mb:.1} MB compressed, {raw:.1} MB unpacked) from a local registry, {RUNS} runs");
    println!("  runs: {:?}", times.iter().map(|t| format!("{:.0} ms", t.as_secs_f64() * 1e3)).collect::<Vec<_>>());
    let s = m.as_secs_f64();
    println!("  median: {:.0} ms = {:.1} MB/s downloaded, {:.1} MB/s unpacked", s * 1e3, mb / s, raw / s);
}

//! Pull + unpack of a ~100 MB multi-layer image from a local registry.
//! Prints the median of repeated runs: `cargo bench -p berth-e2e --bench pull`.

use std::time::{Duration, Instant};

use berth_e2e::oci;
use berth_e2e::registry::Registry;
use berth_e2e::Berthd;

const RUNS: usize = 5;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    berth_e2e::bench::main(run())
}

async fn run() {
    let image = oci::big_image();
    let compressed: usize = image.layers.iter().map(|l| l.blob.bytes.len()).sum();
    let uncompressed: usize = image.layers.iter().map(|l| l.tar_len).sum();

    let registry = Registry::start().await;
    registry.push("bench/big", "1", &image).await;
    let reference = registry.reference("bench/big", "1");

    let mut times = Vec::new();
    // Every berthd and its files stay until the end: on an ext4 without a
    // journal, a new inode skips over each one deleted in the last seconds,
    // and the run before's 4,000 files would be what is measured.
    let mut done = Vec::new();
    for _ in 0..RUNS {
        let berthd = Berthd::start().await;
        let mut cri = berthd.cri().await;
        // Start with the disk clean, so a run does not wait for the
        // write-back of the run before.
        nix::unistd::sync();
        let start = Instant::now();
        cri.pull(&reference).await.expect("pull");
        times.push(start.elapsed());
        drop(cri);
        done.push(berthd);
    }
    drop(done);
    let m = median(times.clone());
    let (mb, raw) = (compressed as f64 / 1e6, uncompressed as f64 / 1e6);
    println!("pull+unpack of a 4-layer image ({mb:.1} MB compressed, {raw:.1} MB unpacked) from a local registry, {RUNS} runs");
    println!("  runs: {:?}", times.iter().map(|t| format!("{:.0} ms", t.as_secs_f64() * 1e3)).collect::<Vec<_>>());
    let s = m.as_secs_f64();
    println!("  median: {:.0} ms = {:.1} MB/s downloaded, {:.1} MB/s unpacked", s * 1e3, mb / s, raw / s);
}

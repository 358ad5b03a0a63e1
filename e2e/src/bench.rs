//! What the benchmarks run on: a journaled ext4 of their own, as a node's
//! `/var/lib` is, mounted from a sparse image for the bench's life.
//!
//! Why not the temp dir as it is: this VM's root is an ext4 *without* a
//! journal, and there ext4 will not reuse an inode freed in the last 5
//! seconds, or in the last 305 while its inode-table block is still dirty
//! (`find_inode_bit`, `recently_deleted` in `fs/ext4/ialloc.c`). Every new
//! file then walks past all those freed before it: right after 20,000 files
//! were deleted, creating one took 350 µs instead of 20, and each run of
//! the 60-pod lifecycle bench made the next one's RunPodSandbox and
//! CreateContainer slower, 40–50 % by the third run, whichever runtime ran.
//! With a journal the check is off, and consecutive runs measure the same.

use std::future::Future;
use std::path::PathBuf;
use std::process::Command;

/// Runs a benchmark's `main`: mounts the bench disk, points `TMPDIR` at it
/// (every daemon's, registry's and fixture's temp dir is made there), then
/// runs `body` on a two-worker runtime. The disk goes when `body` returns
/// or panics.
pub fn main<F: Future>(body: F) -> F::Output {
    let disk = BenchDisk::mount();
    if let Some(d) = &disk {
        // Before the runtime exists, so no other thread reads the
        // environment while it changes.
        std::env::set_var("TMPDIR", &d.dir);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    let out = rt.block_on(body);
    drop(rt);
    drop(disk);
    out
}

/// A loop-mounted ext4 image in the temp dir; unmounted and deleted on drop.
struct BenchDisk {
    image: PathBuf,
    dir: PathBuf,
}

impl BenchDisk {
    /// `None` (and a line saying so) where it cannot be made: the bench
    /// then runs in the temp dir as it is.
    fn mount() -> Option<BenchDisk> {
        let base = std::env::temp_dir();
        // Fixed width, so that no bench's dir is a prefix of another's
        // (`crate::mounts_under` matches by prefix).
        let tag = format!("berth-benchdisk-{:010}", std::process::id());
        let disk = BenchDisk { image: base.join(format!("{tag}.img")), dir: base.join(&tag) };
        let made = (|| -> Result<(), String> {
            std::fs::create_dir(&disk.dir).map_err(|e| format!("mkdir {}: {e}", disk.dir.display()))?;
            // Sparse: blocks are taken only as the bench writes them.
            std::fs::File::create(&disk.image)
                .and_then(|f| f.set_len(32 << 30))
                .map_err(|e| format!("image {}: {e}", disk.image.display()))?;
            run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&disk.image))?;
            // noinit_itable: no kernel thread zeroing inode tables while
            // the bench measures.
            run(Command::new("mount").args(["-o", "loop,noinit_itable"]).arg(&disk.image).arg(&disk.dir))
        })();
        match made {
            Ok(()) => {
                println!("bench disk: journaled ext4 at {}", disk.dir.display());
                Some(disk)
            }
            Err(e) => {
                println!("bench disk: none ({e}); running in {}", base.display());
                drop(disk);
                None
            }
        }
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?}: {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Drop for BenchDisk {
    fn drop(&mut self) {
        if !crate::mounts_under(&self.dir).is_empty() {
            // A daemon that did not stop cleanly may still hold a file or a
            // mount there: detach, so every mount leaves the namespace either
            // way (the loop device goes with its last user: mount's autoclear).
            if let Err(e) = nix::mount::umount(&self.dir) {
                eprintln!("bench disk: umount {}: {e}; detaching", self.dir.display());
                crate::unmount_under(&self.dir);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
        let _ = std::fs::remove_file(&self.image);
    }
}

// A static executable with no C runtime: `_start` is ours (src/main.rs).
fn main() {
    for arg in ["-nostartfiles", "-nostdlib", "-static"] {
        println!("cargo:rustc-link-arg-bin=berth-pause={arg}");
    }
}

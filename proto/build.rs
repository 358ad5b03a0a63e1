//! CRI v1 from `cri/api.proto` (k8s-cri 0.11's copy of cri-api plus the
//! newer fields berth reads; see the file's header).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("CARGO_FEATURE_CRI").is_none() {
        return Ok(());
    }
    println!("cargo:rerun-if-changed=cri/api.proto");
    tonic_prost_build::configure()
        .type_attribute(".", "#[derive(serde::Serialize, serde::Deserialize)]")
        .compile_protos(&["cri/api.proto"], &["cri/"])?;
    Ok(())
}

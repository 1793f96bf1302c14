//! Generates the `hazina.v1` messages and service from `proto/`, and the file descriptor set
//! that the server's reflection service publishes.
//!
//! protoc comes from `protoc-bin-vendored` and is named here only, for this build script, never
//! through a global `PROTOC`: other crates (raft's) bring their own.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let proto = root.join("hazina/v1/ledger.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .codec_path("crate::codec::StrictCodec")
        .file_descriptor_set_path(out.join("hazina_v1_descriptor.bin"))
        .compile_with_config(config, &[proto], &[root])?;
    Ok(())
}

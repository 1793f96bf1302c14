//! Generates the `hazina.v1` messages and services from `proto/`, with the file descriptor set
//! that the server's reflection service publishes, and the site-to-site `hazina.peer.v1`, which
//! reflection leaves out.
//!
//! protoc comes from `protoc-bin-vendored` and is named here only, for this build script, never
//! through a global `PROTOC`: other crates (raft's) bring their own.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let protoc = protoc_bin_vendored::protoc_bin_path()?;

    let ledger = root.join("hazina/v1/ledger.proto");
    println!("cargo:rerun-if-changed={}", ledger.display());
    let mut config = prost_build::Config::new();
    config.protoc_executable(&protoc);
    tonic_prost_build::configure()
        .codec_path("crate::codec::StrictCodec")
        .file_descriptor_set_path(out.join("hazina_v1_descriptor.bin"))
        .compile_with_config(config, &[ledger], std::slice::from_ref(&root))?;

    let peer = root.join("hazina/peer/v1/peer.proto");
    println!("cargo:rerun-if-changed={}", peer.display());
    let mut config = prost_build::Config::new();
    config.protoc_executable(&protoc);
    config.bytes(["."]);
    tonic_prost_build::configure().codec_path("crate::codec::PeerCodec").compile_with_config(
        config,
        &[peer],
        &[root],
    )?;
    Ok(())
}

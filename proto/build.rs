//! Generates the prost types and the tonic service from `proto/` with the
//! vendored `protoc` binary (crate `protoc-bin-vendored`), so no system protoc
//! is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto");
    let mut config = prost_build::Config::new();
    // `bytes` fields decode as `bytes::Bytes`: zero-copy slices of the input buffer.
    config.bytes(["."]);
    tonic_prost_build::configure().build_transport(false).compile_with_config(
        config,
        &["proto/aether/v1/ledger.proto", "proto/aether/v1/mesh.proto", "proto/aether/client/v1/client.proto"],
        &["proto"],
    )?;
    Ok(())
}

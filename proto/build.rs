//! Generates the prost types from `proto/` with the vendored `protoc` binary
//! (crate `protoc-bin-vendored`), so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto");
    let mut config = prost_build::Config::new();
    // `bytes` fields decode as `bytes::Bytes`: zero-copy slices of the input buffer.
    config.bytes(["."]);
    config.compile_protos(&["proto/aether/v1/ledger.proto"], &["proto"])?;
    Ok(())
}

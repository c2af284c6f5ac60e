//! Generates the gRPC server, client and reflection descriptor from
//! `proto/`, and the proto3 JSON (serde) impls of every message for the
//! HTTP/JSON API. `protoc` comes from `protoc-bin-vendored` so building
//! needs no system protobuf compiler and downloads nothing.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor = out_dir.join("lookbook_descriptor.bin");
    let mut prost_config = prost_build::Config::new();
    prost_config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor)
        // Image payloads are large: `Bytes` lets handlers hand them to the
        // encoder pool without copying.
        .bytes(".lookbook.v1")
        .compile_with_config(
            prost_config,
            &["proto/lookbook/v1/recommender.proto"],
            &["proto"],
        )?;
    // Unknown fields are refused (the proto3 JSON default), so a misspelt
    // field is a 400 instead of silently ignored.
    pbjson_build::Builder::new()
        .register_descriptors(&std::fs::read(&descriptor)?)?
        .build(&[".lookbook.v1"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}

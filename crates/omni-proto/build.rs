//! Compiles `proto/omni/v1` with protox (pure Rust), so building Omnid never
//! needs a system `protoc`. prost generates the message types; pbjson adds
//! the canonical protobuf JSON mapping used by `omnid tail` and the JSON
//! stream encoding.

use std::{env, error::Error, path::PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let proto_root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = ["common", "event", "deadletter", "timeline", "command"]
        .map(|name| proto_root.join(format!("omni/v1/{name}.proto")));
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let descriptors = protox::compile(&files, [&proto_root])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("omni_descriptor.bin");
    std::fs::write(
        &descriptor_path,
        prost::Message::encode_to_vec(&descriptors),
    )?;

    prost_build::Config::new()
        .compile_well_known_types()
        .extern_path(".google.protobuf", "::pbjson_types")
        .file_descriptor_set_path(&descriptor_path)
        .skip_protoc_run()
        .compile_protos(&files, &[&proto_root])?;

    pbjson_build::Builder::new()
        .register_descriptors(&std::fs::read(&descriptor_path)?)?
        .build(&[".omni.v1"])?;
    Ok(())
}

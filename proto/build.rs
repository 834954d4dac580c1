//! Compiles the protocol with the `protoc` shipped inside the `protoc-bin-vendored` crate, so
//! a fresh machine needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Image chunks as `Bytes`: decoded without a copy out of the receive buffer, and handed
    // to the Secondary's hash threads and disk without another.
    config.bytes([".uptane.secondary.v2.Chunk.data"]);
    tonic_prost_build::configure().compile_with_config(
        config,
        &["proto/uptane/secondary/v2/secondary.proto"],
        &["proto"],
    )?;
    println!("cargo:rerun-if-changed=proto/uptane/secondary/v2/secondary.proto");
    Ok(())
}

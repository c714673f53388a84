//! Compiles `proto/` into Rust with tonic-prost-build and writes the descriptor set that
//! tonic-reflection serves. Uses the vendored protoc unless `PROTOC` is set.
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-env-changed=PROTOC");
    let protoc = match std::env::var_os("PROTOC") {
        Some(p) => PathBuf::from(p),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        // Undecodable requests are INVALID_ARGUMENT (src/grpc/codec.rs), not prost's INTERNAL.
        .codec_path("crate::grpc::codec::StrictCodec")
        // `tokenwise route --json` and `thresholds --json` print these responses as they are.
        .type_attribute(".tokenwise.v1.RouteResponse", "#[derive(serde::Serialize)]")
        .type_attribute(".tokenwise.v1.Candidate", "#[derive(serde::Serialize)]")
        // Only a shadowed decision names a shadow tier: the others print as they always did.
        .field_attribute(
            ".tokenwise.v1.RouteResponse.shadow_tier",
            "#[serde(skip_serializing_if = \"Option::is_none\")]",
        )
        .type_attribute(
            ".tokenwise.v1.GetThresholdsResponse",
            "#[derive(serde::Serialize)]",
        )
        .type_attribute(".tokenwise.v1.TierThreshold", "#[derive(serde::Serialize)]")
        .file_descriptor_set_path(out_dir.join("tokenwise_descriptor.bin"))
        .compile_with_config(config, &["proto/tokenwise/v1/router.proto"], &["proto"])?;
    Ok(())
}

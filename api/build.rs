//! Generates the gRPC client and server from `proto/skiff.proto`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/skiff.proto");
    tonic_prost_build::configure().compile_protos(&["proto/skiff.proto"], &["proto"])?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The vendored protoc keeps the build free of a system package.
    if std::env::var_os("PROTOC").is_none() {
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    println!("cargo:rerun-if-changed=proto/picket.proto");
    tonic_prost_build::configure().compile_protos(&["proto/picket.proto"], &["proto"])?;
    Ok(())
}

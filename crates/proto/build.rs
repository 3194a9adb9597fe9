//! Compiles every `.proto` under `proto/` with protox (no system `protoc`) and
//! generates prost messages and tonic clients/servers, plus a descriptor set that
//! services register with gRPC server reflection.
use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let mut files = Vec::new();
    collect(&root, &mut files)?;
    files.sort();
    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out.join("gridwork_descriptor.bin");
    std::fs::write(&descriptor_path, fds.encode_to_vec())?;
    tonic_prost_build::configure().file_descriptor_set_path(&descriptor_path).compile_fds(fds)?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}

fn collect(dir: &std::path::Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            println!("cargo:rerun-if-changed={}", path.display());
            collect(&path, files)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            println!("cargo:rerun-if-changed={}", path.display());
            files.push(path);
        }
    }
    Ok(())
}

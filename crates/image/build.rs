//! Compiles crust's own CRIU-compatible .proto files with protox (pure Rust,
//! no system protoc) and prost-build, and writes the FileDescriptorSet to
//! OUT_DIR for the JSON `show` feature.

use std::path::PathBuf;

use prost::Message;

fn main() {
    let proto_dir = PathBuf::from("proto");
    println!("cargo:rerun-if-changed=proto");

    let mut files: Vec<PathBuf> = std::fs::read_dir(&proto_dir)
        .expect("read proto dir")
        .map(|e| e.expect("proto dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    files.sort();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }

    let fds = protox::compile(&files, [&proto_dir]).expect("compile .proto files with protox");

    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    std::fs::write(out_dir.join("descriptor.bin"), fds.encode_to_vec())
        .expect("write descriptor set");

    prost_build::Config::new()
        .compile_fds(fds)
        .expect("generate Rust code with prost-build");
}

//! Generates the Rust code for proto/tollgate/v1 at build time with protox (a pure-Rust protobuf
//! compiler, so no system protoc is needed) and exports the descriptor set that server reflection
//! serves.

use std::path::PathBuf;

const PROTOS: [&str; 6] = [
    "tollgate/v1/common.proto",
    "tollgate/v1/router.proto",
    "tollgate/v1/provider_adapter.proto",
    "tollgate/v1/token_cache.proto",
    "tollgate/v1/casebank.proto",
    "tollgate/v1/cost_tracker.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto").canonicalize()?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut compiler = protox::Compiler::new([&proto_root])?;
    // Imports (google/protobuf/timestamp.proto) must be in the set, or reflection clients such as
    // grpcurl cannot resolve the messages that use them.
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(PROTOS)?;
    std::fs::write(
        out_dir.join("tollgate_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // An RPC a service has not implemented yet answers UNIMPLEMENTED instead of failing to
        // compile, so that contracts can grow additively ahead of their implementations.
        .generate_default_stubs(true)
        // Same wire format as tonic-prost's codec, cheaper buffers for large messages (codec.rs).
        .codec_path("crate::codec::ProtoCodec")
        .compile_fds(compiler.file_descriptor_set())?;

    for proto in PROTOS {
        println!(
            "cargo:rerun-if-changed={}",
            proto_root.join(proto).display()
        );
    }
    Ok(())
}

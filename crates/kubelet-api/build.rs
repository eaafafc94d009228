//! Generates the messages, clients and servers of the vendored kubelet protos (see
//! `proto/`), compiled by protox so that no protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/podresources/v1/api.proto",
        "proto/deviceplugin/v1beta1/api.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let files = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .compile_fds(files)?;
    Ok(())
}

//! tollgate-provider-adapter: one API over the upstream LLM providers, with fallback chains, retries, circuit breaking, streaming and a priced model catalog.
//!
//! Exposes [`serve`], which the `tollgate` binary calls for `--target provider-adapter` (and for
//! `--target all`). Talks to upstream HTTP APIs only. Like every service crate it depends on tollgate-kit and
//! tollgate-proto only, never on another service crate.
//!
//! Status: the contract (`tollgate.v1.ProviderAdapter`) is served with health and reflection, and every RPC
//! answers UNIMPLEMENTED until the provider-adapter issue implements it (see [`grpc`]).

pub mod config;
pub mod error;
pub mod grpc;

pub use config::ProviderAdapterConfig;
pub use error::ProviderAdapterStartError;

use tollgate_kit::grpc::GrpcServer;
use tollgate_kit::service::ServiceEnv;
use tollgate_proto::v1::provider_adapter_server::ProviderAdapterServer;

/// Serves `tollgate.v1.ProviderAdapter` on `env.listener` until `env.shutdown` triggers, then drains.
pub async fn serve(
    config: ProviderAdapterConfig,
    env: ServiceEnv,
) -> Result<(), ProviderAdapterStartError> {
    tracing::debug!(?config, "starting provider-adapter");
    let service = ProviderAdapterServer::new(grpc::ProviderAdapterApi)
        .max_decoding_message_size(env.server.max_message_bytes)
        .max_encoding_message_size(env.server.max_message_bytes);
    GrpcServer::new(
        "provider-adapter",
        env.listener,
        &env.server,
        tollgate_proto::FILE_DESCRIPTOR_SET,
    )
    .add_service(service)
    .serve(env.shutdown)
    .await?;
    Ok(())
}

//! tollgate-token-cache: token IDs of context documents, keyed by content and tokenizer, in process (L1) and in Redis (L2).
//!
//! Exposes [`serve`], which the `tollgate` binary calls for `--target token-cache` (and for
//! `--target all`). Talks to Redis only. Like every service crate it depends on tollgate-kit and
//! tollgate-proto only, never on another service crate.
//!
//! Status: the contract (`tollgate.v1.TokenCache`) is served with health and reflection, and every RPC
//! answers UNIMPLEMENTED until the token-cache issue implements it (see [`grpc`]).

pub mod config;
pub mod error;
pub mod grpc;

pub use config::TokenCacheConfig;
pub use error::TokenCacheStartError;

use tollgate_kit::grpc::GrpcServer;
use tollgate_kit::service::ServiceEnv;
use tollgate_proto::v1::token_cache_server::TokenCacheServer;

/// Serves `tollgate.v1.TokenCache` on `env.listener` until `env.shutdown` triggers, then drains.
pub async fn serve(config: TokenCacheConfig, env: ServiceEnv) -> Result<(), TokenCacheStartError> {
    tracing::debug!(?config, "starting token-cache");
    let service = TokenCacheServer::new(grpc::TokenCacheApi)
        .max_decoding_message_size(env.server.max_message_bytes)
        .max_encoding_message_size(env.server.max_message_bytes);
    GrpcServer::new(
        "token-cache",
        env.listener,
        &env.server,
        tollgate_proto::FILE_DESCRIPTOR_SET,
    )
    .add_service(service)
    .serve(env.shutdown)
    .await?;
    Ok(())
}

//! tollgate-token-cache: token IDs of context documents, keyed by content and tokenizer, in process (L1) and in Redis (L2).
//!
//! Exposes [`serve`], which the `tollgate` binary calls for `--target token-cache` (and for
//! `--target all`), and the [`service::TokenCacheService`] itself for in-process use (the
//! `tollgate tokenize` command and the benchmark). Talks to Redis only. Like every service crate it
//! depends on tollgate-kit and tollgate-proto only, never on another service crate.
//!
//! Zero drift: the IDs of an assembled context always equal what tokenizing the assembled text
//! afresh gives; see [`segments`] for how contexts are cut into cacheable segments exactly.

pub mod codec;
pub mod config;
pub mod error;
pub mod grpc;
pub mod keys;
mod lookup_metrics;
pub mod segments;
pub mod service;
pub mod store;
pub mod tokenizer;

pub use config::TokenCacheConfig;
pub use error::TokenCacheStartError;

use std::sync::Arc;

use tollgate_kit::grpc::GrpcServer;
use tollgate_kit::service::ServiceEnv;
use tollgate_proto::v1::token_cache_server::TokenCacheServer;

/// Serves `tollgate.v1.TokenCache` on `env.listener` until `env.shutdown` triggers, then drains.
pub async fn serve(config: TokenCacheConfig, env: ServiceEnv) -> Result<(), TokenCacheStartError> {
    tracing::debug!(?config, "starting token-cache");
    let service = Arc::new(service::TokenCacheService::new(
        config,
        env.storage.redis_url.as_deref(),
    )?);
    let warm = service.clone();
    // Building the tokenizers is seconds of CPU in a debug build: do it off the runtime while the
    // server starts, on a detached thread (a blocking-pool task would hold up shutdown until done).
    if let Err(error) = std::thread::Builder::new()
        .name("tokenizer-warm-up".into())
        .spawn(move || warm.warm_up_tokenizers())
    {
        tracing::warn!(%error, "could not start the tokenizer warm-up; tokenizers build on first use");
    }
    if let Some(redis) = service.redis().cloned() {
        tokio::spawn(async move { redis.connect().await });
    }
    let api = TokenCacheServer::new(grpc::TokenCacheApi::new(service))
        .max_decoding_message_size(env.server.max_message_bytes)
        .max_encoding_message_size(env.server.max_message_bytes);
    GrpcServer::new(
        "token-cache",
        env.listener,
        &env.server,
        tollgate_proto::FILE_DESCRIPTOR_SET,
    )
    .in_process(&env.in_process)
    .add_service(api)
    .serve(env.shutdown)
    .await?;
    Ok(())
}

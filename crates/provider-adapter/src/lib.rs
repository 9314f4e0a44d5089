//! tollgate-provider-adapter: one API over the upstream LLM providers (OpenAI-compatible
//! servers, Anthropic, Gemini and the built-in offline `mock`), with fallback chains, retries,
//! circuit breaking, streaming, exact usage and a priced model catalog.
//!
//! Exposes [`serve`], which the `tollgate` binary calls for `--target provider-adapter` (and for
//! `--target all`). Talks to upstream HTTP APIs only. Like every service crate it depends on
//! tollgate-kit and tollgate-proto only, never on another service crate.
//!
//! - [`config`]: the `[provider_adapter]` section (providers, models, groups, retry, breaker);
//! - [`catalog`]: that section checked and resolved at start-up;
//! - [`providers`]: the `Provider` trait and one implementation per kind, SSE parsing;
//! - [`resilience`]: circuit breaker and retry policy;
//! - [`service`]: validation against the catalog, the retry/fallback loop, streams, usage, cost;
//! - [`grpc`]: proto <-> domain.

pub mod catalog;
pub mod config;
pub mod error;
pub mod grpc;
pub mod providers;
pub mod resilience;
pub mod service;

use std::sync::Arc;

pub use config::ProviderAdapterConfig;
pub use error::ProviderAdapterStartError;

use tollgate_kit::grpc::GrpcServer;
use tollgate_kit::service::ServiceEnv;
use tollgate_proto::v1::provider_adapter_server::ProviderAdapterServer;

/// Checks the catalog and builds the service with its HTTP client and tokenizers, off the
/// async runtime (tokenizer tables and key files are loaded here).
pub async fn build_service(
    config: &ProviderAdapterConfig,
) -> Result<Arc<service::AdapterService>, ProviderAdapterStartError> {
    let owned = config.clone();
    let catalog = tokio::task::spawn_blocking(move || catalog::Catalog::from_config(&owned))
        .await
        .map_err(|e| ProviderAdapterStartError::Catalog(e.to_string()))?
        .map_err(ProviderAdapterStartError::Catalog)?;
    let service = service::AdapterService::new(config, catalog)
        .map_err(|e| ProviderAdapterStartError::HttpClient(e.to_string()))?;
    Ok(Arc::new(service))
}

/// Serves `tollgate.v1.ProviderAdapter` on `env.listener` until `env.shutdown` triggers, then drains.
pub async fn serve(
    config: ProviderAdapterConfig,
    env: ServiceEnv,
) -> Result<(), ProviderAdapterStartError> {
    let service = build_service(&config).await?;
    tracing::info!(
        providers = service.catalog().providers.len(),
        models = service.catalog().models.len(),
        groups = service.catalog().groups.len(),
        "provider-adapter catalog loaded"
    );
    let api = ProviderAdapterServer::new(grpc::ProviderAdapterApi::new(service))
        .max_decoding_message_size(env.server.max_message_bytes)
        .max_encoding_message_size(env.server.max_message_bytes);
    GrpcServer::new(
        "provider-adapter",
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

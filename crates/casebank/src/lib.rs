//! tollgate-casebank: the case memory (Memento, arXiv 2508.16153): past tasks with their
//! embeddings, action and reward; K-nearest retrieval with reward and similarity filters; and
//! similarity-weighted routing estimates.
//!
//! Exposes [`serve`], which the `tollgate` binary calls for `--target casebank` (and for
//! `--target all`). Talks to Postgres (pgvector) or SQLite, and to the provider-adapter for
//! remote embeddings. Like every service crate it depends on tollgate-kit and tollgate-proto
//! only, never on another service crate.
//!
//! - [`model`]: the domain; [`service`]: the logic; [`grpc`]: proto <-> domain and validation;
//! - [`store`]: the [`store::CaseStore`] trait, Postgres and SQLite backends;
//! - [`embed`]: the [`embed::Embedder`] trait, the built-in hash embedder, the remote one.

pub mod config;
pub mod embed;
pub mod error;
pub mod grpc;
pub mod model;
pub mod service;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

pub use config::CasebankConfig;
pub use error::CasebankStartError;

use tollgate_kit::config::{PeersConfig, StorageConfig};
use tollgate_kit::grpc::GrpcServer;
use tollgate_kit::service::ServiceEnv;
use tollgate_proto::v1::case_bank_server::CaseBankServer;

use crate::config::EmbedderKind;
use crate::embed::{Embedder, HashEmbedder, RemoteEmbedder};
use crate::service::CaseService;
use crate::store::postgres::PgOptions;
use crate::store::{CaseStore, PgCaseStore, SqliteCaseStore};

/// Opens the store `storage` selects: Postgres when `database_url` is set (migrations applied;
/// an unreachable server fails start-up), otherwise SQLite under `data_dir`.
pub async fn open_store(
    config: &CasebankConfig,
    storage: &StorageConfig,
) -> Result<Arc<dyn CaseStore>, CasebankStartError> {
    Ok(match &storage.database_url {
        Some(url) => {
            let options = PgOptions {
                max_connections: config.postgres.max_connections,
                acquire_timeout: Duration::from_millis(config.postgres.acquire_timeout_ms),
                ef_search: config.postgres.hnsw_ef_search,
            };
            Arc::new(PgCaseStore::connect(url, &options).await?)
        }
        None => {
            Arc::new(SqliteCaseStore::open(&storage.data_dir.join(store::sqlite::FILE_NAME)).await?)
        }
    })
}

/// The embedder `config` selects.
pub fn build_embedder(
    config: &CasebankConfig,
    peers: &PeersConfig,
) -> Result<Arc<dyn Embedder>, CasebankStartError> {
    Ok(match config.embedder.kind {
        EmbedderKind::Hash => Arc::new(HashEmbedder::new(config.embedder.dimension)),
        EmbedderKind::Remote => {
            if config.embedder.remote_model.is_empty() {
                return Err(CasebankStartError::Config(
                    "casebank.embedder.remote_model must be set when kind = \"remote\"".into(),
                ));
            }
            let channel = tollgate_kit::grpc::connect_lazy(
                &peers.provider_adapter,
                Duration::from_millis(peers.connect_timeout_ms),
            )
            .map_err(|e| CasebankStartError::Config(e.to_string()))?;
            Arc::new(RemoteEmbedder::new(
                channel,
                &config.embedder.remote_model,
                Duration::from_millis(config.embedder.remote_timeout_ms),
            ))
        }
    })
}

/// Serves `tollgate.v1.CaseBank` on `env.listener` until `env.shutdown` triggers, then drains.
pub async fn serve(config: CasebankConfig, env: ServiceEnv) -> Result<(), CasebankStartError> {
    tracing::debug!(?config, "starting casebank");
    if config.embedder.dimension == 0 {
        return Err(CasebankStartError::Config(
            "casebank.embedder.dimension must be at least 1".into(),
        ));
    }
    let store = open_store(&config, &env.storage).await?;
    let embedder = build_embedder(&config, &env.peers)?;
    let case_service = CaseService::new(
        store,
        embedder,
        Duration::from_millis(config.store_timeout_ms),
    );
    if let Err(error) = case_service.publish_case_count().await {
        tracing::warn!(%error, "cannot count cases at start-up");
    }
    tracing::info!(
        backend = case_service.backend(),
        embedder = case_service.embedder_identity(),
        "casebank ready"
    );
    let api = grpc::CaseBankApi::new(case_service, config.max_task_bytes);
    let service = CaseBankServer::new(api)
        .max_decoding_message_size(env.server.max_message_bytes)
        .max_encoding_message_size(env.server.max_message_bytes);
    GrpcServer::new(
        "casebank",
        env.listener,
        &env.server,
        tollgate_proto::FILE_DESCRIPTOR_SET,
    )
    .in_process(&env.in_process)
    .add_service(service)
    .serve(env.shutdown)
    .await?;
    Ok(())
}

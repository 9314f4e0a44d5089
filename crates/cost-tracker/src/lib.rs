//! tollgate-cost-tracker: the usage and cost ledger, budgets with reserve and settle, spend
//! reports and exports. Callers hand it records through the client-side outbox in
//! tollgate-cost-outbox, so that no record is lost while the service is unreachable.
//!
//! Exposes [`serve`], which the `tollgate` binary calls for `--target cost-tracker` (and for
//! `--target all`). Talks to Postgres (`storage.database_url`) or, by default, SQLite
//! (`cost.sqlite` under `storage.data_dir`). Like every service crate it depends on tollgate-kit
//! and tollgate-proto only, never on another service crate.

pub mod config;
pub mod error;
pub mod grpc;
pub mod model;
pub mod pricing;
pub mod service;
pub mod store;

pub use config::CostTrackerConfig;
pub use error::CostTrackerStartError;

use std::sync::Arc;
use std::time::Duration;

use tollgate_kit::grpc::GrpcServer;
use tollgate_kit::service::ServiceEnv;
use tollgate_proto::v1::cost_tracker_server::CostTrackerServer;

use crate::pricing::PriceTable;
use crate::service::CostTrackerService;
use crate::store::UsageStore;
use crate::store::postgres::PgUsageStore;
use crate::store::sqlite::SqliteUsageStore;

/// The SQLite file of the embedded default, under `storage.data_dir`.
pub const SQLITE_FILE: &str = "cost.sqlite";

/// Serves `tollgate.v1.CostTracker` on `env.listener` until `env.shutdown` triggers, then drains.
pub async fn serve(
    config: CostTrackerConfig,
    env: ServiceEnv,
) -> Result<(), CostTrackerStartError> {
    tracing::debug!(?config, "starting cost-tracker");
    let prices = PriceTable::from_config(&config.prices).map_err(CostTrackerStartError::Prices)?;
    let acquire_timeout = Duration::from_millis(config.acquire_timeout_ms);
    match env.storage.database_url.clone() {
        Some(url) => {
            let store =
                PgUsageStore::connect(&url, config.max_connections, acquire_timeout).await?;
            tracing::info!("cost ledger on Postgres");
            serve_with(store, prices, &config, env).await
        }
        None => {
            let path = env.storage.data_dir.join(SQLITE_FILE);
            let store = SqliteUsageStore::open(&path, acquire_timeout).await?;
            tracing::info!(path = %path.display(), "cost ledger on SQLite");
            serve_with(store, prices, &config, env).await
        }
    }
}

async fn serve_with<S: UsageStore>(
    store: S,
    prices: PriceTable,
    config: &CostTrackerConfig,
    env: ServiceEnv,
) -> Result<(), CostTrackerStartError> {
    metrics::gauge!("tollgate_store_up", "service" => "cost-tracker", "backend" => store.backend().name())
        .set(1.0);
    let service = Arc::new(CostTrackerService::new(
        store,
        prices,
        usize::try_from(config.export_chunk_rows).unwrap_or(1000),
    ));
    let api = CostTrackerServer::new(grpc::CostTrackerApi::new(service))
        .max_decoding_message_size(env.server.max_message_bytes)
        .max_encoding_message_size(env.server.max_message_bytes);
    GrpcServer::new(
        "cost-tracker",
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

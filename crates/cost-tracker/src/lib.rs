//! tollgate-cost-tracker: the usage and cost ledger, budgets with reserve and settle, spend reports and exports.
//!
//! Exposes [`serve`], which the `tollgate` binary calls for `--target cost-tracker` (and for
//! `--target all`). Talks to Postgres or SQLite. Like every service crate it depends on tollgate-kit and
//! tollgate-proto only, never on another service crate.
//!
//! Status: the contract (`tollgate.v1.CostTracker`) is served with health and reflection, and every RPC
//! answers UNIMPLEMENTED until the cost-tracker issue implements it (see [`grpc`]).

pub mod config;
pub mod error;
pub mod grpc;

pub use config::CostTrackerConfig;
pub use error::CostTrackerStartError;

use tollgate_kit::grpc::GrpcServer;
use tollgate_kit::service::ServiceEnv;
use tollgate_proto::v1::cost_tracker_server::CostTrackerServer;

/// Serves `tollgate.v1.CostTracker` on `env.listener` until `env.shutdown` triggers, then drains.
pub async fn serve(
    config: CostTrackerConfig,
    env: ServiceEnv,
) -> Result<(), CostTrackerStartError> {
    tracing::debug!(?config, "starting cost-tracker");
    let service = CostTrackerServer::new(grpc::CostTrackerApi)
        .max_decoding_message_size(env.server.max_message_bytes)
        .max_encoding_message_size(env.server.max_message_bytes);
    GrpcServer::new(
        "cost-tracker",
        env.listener,
        &env.server,
        tollgate_proto::FILE_DESCRIPTOR_SET,
    )
    .add_service(service)
    .serve(env.shutdown)
    .await?;
    Ok(())
}

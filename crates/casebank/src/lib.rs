//! tollgate-casebank: the case memory: past tasks with their embeddings, K-nearest retrieval with reward and similarity filters, routing estimates.
//!
//! Exposes [`serve`], which the `tollgate` binary calls for `--target casebank` (and for
//! `--target all`). Talks to Postgres (pgvector) or SQLite, and to the provider-adapter for remote embeddings. Like every service crate it depends on tollgate-kit and
//! tollgate-proto only, never on another service crate.
//!
//! Status: the contract (`tollgate.v1.CaseBank`) is served with health and reflection, and every RPC
//! answers UNIMPLEMENTED until the casebank issue implements it (see [`grpc`]).

pub mod config;
pub mod error;
pub mod grpc;

pub use config::CasebankConfig;
pub use error::CasebankStartError;

use tollgate_kit::grpc::GrpcServer;
use tollgate_kit::service::ServiceEnv;
use tollgate_proto::v1::case_bank_server::CaseBankServer;

/// Serves `tollgate.v1.CaseBank` on `env.listener` until `env.shutdown` triggers, then drains.
pub async fn serve(config: CasebankConfig, env: ServiceEnv) -> Result<(), CasebankStartError> {
    tracing::debug!(?config, "starting casebank");
    let service = CaseBankServer::new(grpc::CaseBankApi)
        .max_decoding_message_size(env.server.max_message_bytes)
        .max_encoding_message_size(env.server.max_message_bytes);
    GrpcServer::new(
        "casebank",
        env.listener,
        &env.server,
        tollgate_proto::FILE_DESCRIPTOR_SET,
    )
    .add_service(service)
    .serve(env.shutdown)
    .await?;
    Ok(())
}

//! tollgate-router: the front door: request validation, tenant auth, routing policy, escalation, the request pipeline and feedback.
//!
//! Exposes [`serve`], which the `tollgate` binary calls for `--target router` (and for
//! `--target all`). Talks to every other service through tollgate-proto clients. Like every service crate it depends on tollgate-kit and
//! tollgate-proto only, never on another service crate.
//!
//! Status: the contract (`tollgate.v1.Router`) is served with health and reflection, and every RPC
//! answers UNIMPLEMENTED until the router issue implements it (see [`grpc`]).

pub mod classify;
pub mod config;
pub mod error;
pub mod grpc;
pub mod quality;
pub mod scoring;
pub mod tenants;

pub use config::RouterConfig;
pub use error::RouterStartError;

use tollgate_kit::grpc::GrpcServer;
use tollgate_kit::service::ServiceEnv;
use tollgate_proto::v1::router_server::RouterServer;

/// Serves `tollgate.v1.Router` on `env.listener` until `env.shutdown` triggers, then drains.
pub async fn serve(config: RouterConfig, env: ServiceEnv) -> Result<(), RouterStartError> {
    tracing::debug!(?config, "starting router");
    let service = RouterServer::new(grpc::RouterApi)
        .max_decoding_message_size(env.server.max_message_bytes)
        .max_encoding_message_size(env.server.max_message_bytes);
    GrpcServer::new(
        "router",
        env.listener,
        &env.server,
        tollgate_proto::FILE_DESCRIPTOR_SET,
    )
    .add_service(service)
    .serve(env.shutdown)
    .await?;
    Ok(())
}

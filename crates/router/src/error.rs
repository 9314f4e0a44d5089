//! Errors of the router service. Start-up errors (bad listener, bad policy, spool directory)
//! are kept apart from request errors, which are `tonic::Status` values built with
//! tollgate-kit's shared code table where they arise.

use tollgate_kit::grpc::ServeError;

/// Why [`crate::serve`] stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RouterStartError {
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Peer(#[from] tollgate_kit::grpc::client::ClientError),
    #[error(transparent)]
    Outbox(#[from] tollgate_cost_outbox::OutboxError),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error("router patterns: {0}")]
    Pattern(#[from] regex::Error),
    #[error("tenant store: {0}")]
    Tenants(#[from] crate::tenants::TenantStoreError),
    #[error("{0}")]
    Config(String),
}

//! Errors of the provider-adapter service. Start-up errors (bad listener, store unreachable at start) are
//! kept apart from request errors, which map onto tollgate-kit's shared code table.

use tollgate_kit::grpc::ServeError;

/// Why [`crate::serve`] stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ProviderAdapterStartError {
    #[error(transparent)]
    Serve(#[from] ServeError),
}

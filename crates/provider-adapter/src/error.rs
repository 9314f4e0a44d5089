//! Errors of the provider-adapter service. Start-up errors (a bad catalog, a bad listener) are
//! kept apart from request errors, which map onto tollgate-kit's shared code table.
//!
//! Upstream messages reach callers only after [`crate::providers::redact`] removed the key, and
//! never the key itself.

use std::time::Duration;

use tollgate_kit::error::{ErrorCode, HasErrorCode};
use tollgate_kit::grpc::ServeError;

/// Why [`crate::serve`] stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ProviderAdapterStartError {
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// The catalog in `[provider_adapter]` is inconsistent; the message names the key.
    #[error("invalid provider_adapter configuration: {0}")]
    Catalog(String),
    #[error("building the upstream HTTP client failed: {0}")]
    HttpClient(String),
}

/// Why one request failed.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("{field}: model {model:?} is not in the catalog (see ListModels)")]
    UnknownModel { field: String, model: String },
    #[error("{field}: {problem}")]
    InvalidArgument { field: String, problem: String },
    /// Every attempt failed; `code` follows the last failure (429 → RESOURCE_EXHAUSTED, a
    /// timeout → DEADLINE_EXCEEDED, a 4xx caused by the request → INVALID_ARGUMENT, otherwise
    /// UNAVAILABLE). The message lists every attempt.
    #[error("{message}")]
    Upstream {
        code: ErrorCode,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

pub type AdapterResult<T> = Result<T, AdapterError>;

impl AdapterError {
    pub fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// The gRPC status, with `retry-after-ms` metadata when upstream asked for a delay.
    pub fn status(&self) -> tonic::Status {
        match self {
            Self::Upstream {
                code,
                message,
                retry_after: Some(delay),
            } => code.status_with_retry(message.clone(), *delay),
            other => other.to_status(),
        }
    }
}

impl HasErrorCode for AdapterError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::UnknownModel { .. } => ErrorCode::NotFound,
            Self::InvalidArgument { .. } => ErrorCode::InvalidArgument,
            Self::Upstream { code, .. } => *code,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }
}

//! Errors of the casebank service. Start-up errors (bad listener, store unreachable at start) are
//! kept apart from request errors, which map onto tollgate-kit's shared code table.

use tollgate_kit::error::{ErrorCode, HasErrorCode};
use tollgate_kit::grpc::ServeError;

use crate::embed::EmbedError;
use crate::store::StoreError;

/// Why [`crate::serve`] stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum CasebankStartError {
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("casebank store: {0}")]
    Store(#[from] StoreError),
    #[error("casebank configuration: {0}")]
    Config(String),
}

/// Why one request failed. The `Display` text is what the caller sees (internal variants are
/// replaced by a generic message), so details of outages live in fields that only get logged.
#[derive(Debug, thiserror::Error)]
pub enum CasebankError {
    #[error("{field}: {problem}")]
    InvalidArgument { field: String, problem: String },
    #[error("case {id:?} not found")]
    CaseNotFound { id: String },
    #[error("case store unavailable")]
    StoreUnavailable { detail: String },
    #[error("embedder unavailable")]
    EmbedderUnavailable { detail: String },
    #[error("{0}")]
    Internal(String),
}

pub type CasebankResult<T> = Result<T, CasebankError>;

impl CasebankError {
    pub fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

impl HasErrorCode for CasebankError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidArgument { .. } => ErrorCode::InvalidArgument,
            Self::CaseNotFound { .. } => ErrorCode::NotFound,
            Self::StoreUnavailable { .. } | Self::EmbedderUnavailable { .. } => {
                ErrorCode::Unavailable
            }
            Self::Internal(_) => ErrorCode::Internal,
        }
    }

    fn to_status(&self) -> tonic::Status {
        match self {
            Self::StoreUnavailable { detail } | Self::EmbedderUnavailable { detail } => {
                tracing::warn!(error = %self, %detail, "dependency unavailable");
            }
            Self::Internal(detail) => tracing::error!(%detail, "internal error"),
            _ => {}
        }
        self.code().status(self.to_string())
    }
}

impl From<StoreError> for CasebankError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(detail) => Self::StoreUnavailable { detail },
            StoreError::Internal(detail) => Self::Internal(detail),
        }
    }
}

impl From<EmbedError> for CasebankError {
    fn from(error: EmbedError) -> Self {
        Self::EmbedderUnavailable {
            detail: error.to_string(),
        }
    }
}

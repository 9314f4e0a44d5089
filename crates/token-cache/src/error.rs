//! Errors of the token-cache service. Start-up errors (bad listener, bad configuration) are kept
//! apart from request errors, which map onto tollgate-kit's shared code table.

use tollgate_kit::error::{ErrorCode, HasErrorCode};
use tollgate_kit::grpc::ServeError;

/// Why [`crate::serve`] stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum TokenCacheStartError {
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("token_cache configuration: {0}")]
    Config(String),
}

/// Why one request failed. Redis trouble is not here: the cache degrades to tokenizing afresh.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenCacheError {
    /// Bad input; `field` names it as the caller wrote it (`documents[2].id`).
    #[error("{field}: {problem}")]
    InvalidArgument { field: String, problem: String },
    /// A reference to a document that is not registered in the collection.
    #[error("{field}: document {id:?} is not registered in collection {collection:?}")]
    DocumentNotFound {
        field: String,
        collection: String,
        id: String,
    },
    /// Registered documents live in Redis; while it is unreachable they can be neither stored,
    /// resolved nor removed.
    #[error(
        "{field}: the document store (Redis) is unreachable; retry later, or pass document text inline"
    )]
    DocumentsUnavailable { field: String },
    #[error("internal error: {0}")]
    Internal(String),
}

pub type TokenCacheResult<T> = Result<T, TokenCacheError>;

impl TokenCacheError {
    pub fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

impl HasErrorCode for TokenCacheError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidArgument { .. } => ErrorCode::InvalidArgument,
            Self::DocumentNotFound { .. } => ErrorCode::NotFound,
            Self::DocumentsUnavailable { .. } => ErrorCode::Unavailable,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }
}

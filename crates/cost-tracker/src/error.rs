//! Errors of the cost-tracker service. Start-up errors (bad listener, bad price table, store
//! unreachable at start) are kept apart from request errors, which map onto tollgate-kit's
//! shared code table.

use tollgate_kit::error::{ErrorCode, HasErrorCode};
use tollgate_kit::grpc::ServeError;

use crate::store::StoreError;

/// Why [`crate::serve`] stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum CostTrackerStartError {
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("cost_tracker.prices: {0}")]
    Prices(String),
    #[error("cost ledger store: {0}")]
    Store(#[from] StoreError),
}

/// Why one request failed.
#[derive(Debug, thiserror::Error)]
pub enum CostTrackerError {
    /// Bad input; the message starts with the field (`records[3].cost_usd`).
    #[error("{field}: {problem}")]
    InvalidArgument { field: String, problem: String },
    /// A hard limit would be crossed.
    #[error(
        "budget exceeded: {scope} ({period}) has {remaining_usd} USD left of its hard limit {hard_limit_usd}, the estimate is {estimate_usd}"
    )]
    BudgetExceeded {
        scope: String,
        period: &'static str,
        remaining_usd: String,
        hard_limit_usd: String,
        estimate_usd: String,
    },
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type CostTrackerResult<T> = Result<T, CostTrackerError>;

impl CostTrackerError {
    pub fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

impl HasErrorCode for CostTrackerError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidArgument { .. } => ErrorCode::InvalidArgument,
            Self::BudgetExceeded { .. } => ErrorCode::FailedPrecondition,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::Store(error) => error.code(),
        }
    }
}

impl StoreError {
    pub fn code(&self) -> ErrorCode {
        match self {
            StoreError::Unavailable(_) => ErrorCode::Unavailable,
            StoreError::OutOfRange(_) => ErrorCode::InvalidArgument,
            StoreError::Internal(_) => ErrorCode::Internal,
        }
    }
}

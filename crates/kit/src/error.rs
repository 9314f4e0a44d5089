//! The shared table of error codes. Each crate has one error enum (thiserror) and says, for each
//! variant, which [`ErrorCode`] it is; [`ErrorCode::status`] turns that into the gRPC status.
//! Only the public message reaches the caller: internal details are logged where they happen.

use std::time::Duration;

/// What went wrong, from the caller's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Bad input; the message names the field.
    InvalidArgument,
    NotFound,
    AlreadyExists,
    /// The request is valid but the system's state refuses it (budget exceeded).
    FailedPrecondition,
    /// Rate limited; comes with a retry delay.
    ResourceExhausted,
    /// A dependency is down; retrying later may succeed.
    Unavailable,
    DeadlineExceeded,
    Unauthenticated,
    PermissionDenied,
    /// A bug or an unexpected failure; details are in the logs only.
    Internal,
}

/// Metadata key carrying the suggested retry delay of a RESOURCE_EXHAUSTED or UNAVAILABLE answer,
/// in whole milliseconds (gRPC has no standard header for it outside google.rpc.RetryInfo).
pub const RETRY_AFTER_MS_METADATA: &str = "retry-after-ms";

impl ErrorCode {
    pub fn grpc_code(self) -> tonic::Code {
        match self {
            Self::InvalidArgument => tonic::Code::InvalidArgument,
            Self::NotFound => tonic::Code::NotFound,
            Self::AlreadyExists => tonic::Code::AlreadyExists,
            Self::FailedPrecondition => tonic::Code::FailedPrecondition,
            Self::ResourceExhausted => tonic::Code::ResourceExhausted,
            Self::Unavailable => tonic::Code::Unavailable,
            Self::DeadlineExceeded => tonic::Code::DeadlineExceeded,
            Self::Unauthenticated => tonic::Code::Unauthenticated,
            Self::PermissionDenied => tonic::Code::PermissionDenied,
            Self::Internal => tonic::Code::Internal,
        }
    }

    /// The status a caller sees. `Internal` never carries the message given: it may hold
    /// details (SQL, addresses) that belong in logs only.
    pub fn status(self, public_message: impl Into<String>) -> tonic::Status {
        match self {
            Self::Internal => tonic::Status::internal("internal error; see the server logs"),
            other => tonic::Status::new(other.grpc_code(), public_message.into()),
        }
    }

    /// The status with a retry delay attached as `retry-after-ms` metadata.
    pub fn status_with_retry(
        self,
        public_message: impl Into<String>,
        retry_after: Duration,
    ) -> tonic::Status {
        let mut status = self.status(public_message);
        let millis = retry_after.as_millis().min(u128::from(u64::MAX));
        if let Ok(value) = millis.to_string().parse() {
            status.metadata_mut().insert(RETRY_AFTER_MS_METADATA, value);
        }
        status
    }
}

/// Implemented by every crate's request error enum, so that grpc.rs can map errors uniformly.
pub trait HasErrorCode: std::fmt::Display {
    fn code(&self) -> ErrorCode;

    /// Logs internal errors with their details and returns the caller's status.
    fn to_status(&self) -> tonic::Status {
        let code = self.code();
        if code == ErrorCode::Internal {
            tracing::error!(error = %self, "internal error");
        }
        code.status(self.to_string())
    }
}

/// An INVALID_ARGUMENT status whose message starts with the field's name, the shape every
/// service uses for bad input: `messages: must not be empty`.
pub fn invalid_argument(field: &str, problem: impl std::fmt::Display) -> tonic::Status {
    ErrorCode::InvalidArgument.status(format!("{field}: {problem}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_hide_their_details() {
        let status = ErrorCode::Internal.status("connection to 10.0.0.3:5432 refused");
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(!status.message().contains("10.0.0.3"));
    }

    #[test]
    fn retry_delay_travels_as_metadata() {
        let status = ErrorCode::ResourceExhausted
            .status_with_retry("rate limited", Duration::from_millis(1500));
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        let value = status
            .metadata()
            .get(RETRY_AFTER_MS_METADATA)
            .and_then(|v| v.to_str().ok());
        assert_eq!(value, Some("1500"));
    }

    #[test]
    fn invalid_argument_names_the_field() {
        let status = invalid_argument("messages", "must not be empty");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "messages: must not be empty");
    }
}

//! gRPC plumbing shared by every service: the server builder, client channels, and the tower
//! layers between them (request id, trace context, go-grpc-prometheus metrics).

pub mod client;
pub mod deadline;
pub mod end_of_stream;
pub mod in_process;
pub mod metrics_layer;
pub mod request_id;
pub mod server;
pub mod trace_context;

pub use client::{ClientError, connect_lazy, connect_peer};
pub use in_process::InProcessPeers;
pub use server::{GrpcServer, ServeError};

/// Splits a gRPC request path `/tollgate.v1.Router/Complete` into service and method.
pub(crate) fn split_path(path: &str) -> (&str, &str) {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    match trimmed.split_once('/') {
        Some((service, method)) => (service, method),
        None => ("unknown", "unknown"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn splits_service_and_method() {
        assert_eq!(
            super::split_path("/tollgate.v1.Router/Complete"),
            ("tollgate.v1.Router", "Complete")
        );
        assert_eq!(super::split_path("/garbage"), ("unknown", "unknown"));
    }
}

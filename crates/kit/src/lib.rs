//! tollgate-kit: what every tollgate service shares, so that each service crate holds only its
//! own logic.
//!
//! - [`config`]: layered configuration (defaults, a TOML file, `TOLLGATE_*` environment), errors
//!   that name the offending key.
//! - [`telemetry`]: tracing to stderr (human or JSON), OTLP traces when configured, W3C trace
//!   context across gRPC hops.
//! - [`money`]: exact USD amounts ([`money::Usd`]) and token costs.
//! - [`metrics`]: the process-wide Prometheus registry and the `/metrics` + `/healthz` HTTP server.
//! - [`grpc`]: the server builder every service uses (health, reflection v1 and v1alpha, request
//!   id, timeouts, limits, go-grpc-prometheus metrics, graceful shutdown) and client channels.
//! - [`service`]: what the binary hands each service's `serve` function.
//! - [`shutdown`]: SIGTERM/SIGINT handling, cancellation and tracked background tasks.
//! - [`error`]: the shared table of error codes that every crate's error enum maps onto.
//!
//! Used by every service crate and by the binary; depends on no tollgate crate.

pub mod config;
pub mod error;
pub mod grpc;
pub mod metrics;
pub mod money;
pub mod service;
pub mod shutdown;
pub mod telemetry;

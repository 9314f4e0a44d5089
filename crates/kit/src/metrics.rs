//! The process-wide Prometheus registry and the small HTTP server that exposes it.
//!
//! One registry per process: in `--target all` every service's metrics port serves the same
//! registry (the `grpc_service` label tells services apart). Every series carries a `track`
//! label (`stable` or `canary`) so that a canary can be compared with stable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::shutdown::Shutdown;

/// Histogram buckets in seconds, from 50 µs (a cache hit) to 2 minutes (a long generation).
const SECONDS_BUCKETS: [f64; 19] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 120.0,
];

/// The outcome of the one installation per process; concurrent first callers wait for it.
static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
#[error("installing the Prometheus recorder failed: {0}")]
pub struct MetricsError(String);

/// Installs the global recorder on first use (with `track` as a global label) and returns its
/// handle; later calls return the same handle, whatever their `track`.
pub fn install(track: &str) -> Result<PrometheusHandle, MetricsError> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .add_global_label("track", track)
                .set_buckets(&SECONDS_BUCKETS)
                .map_err(|e| e.to_string())?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).map_err(|e| e.to_string())?;
            Ok(handle)
        })
        .clone()
        .map_err(MetricsError)
}

/// Whether the process should receive traffic: false from the start of shutdown on, so that
/// `/healthz` turns 503 together with gRPC health.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
struct HttpState {
    handle: PrometheusHandle,
    readiness: Readiness,
}

/// Serves `GET /metrics` (Prometheus text format) and `GET /healthz` (200 `ok` while ready, 503
/// while shutting down) until shutdown.
pub async fn serve_http(
    listener: TcpListener,
    handle: PrometheusHandle,
    readiness: Readiness,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .with_state(HttpState { handle, readiness });
    let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY on a metrics connection");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.triggered().await })
        .await
}

async fn render_metrics(State(state): State<HttpState>) -> impl IntoResponse {
    state.handle.run_upkeep();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.handle.render(),
    )
}

async fn healthz(State(state): State<HttpState>) -> impl IntoResponse {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
    }
}

//! Telemetry for every process: `tracing` to stderr (human-readable on a terminal, JSON
//! otherwise), OpenTelemetry traces over OTLP/gRPC when an endpoint is configured (nothing is
//! exported and nothing is logged about it otherwise), and W3C trace context carried through
//! gRPC metadata by the layers in [`crate::grpc`].

use std::io::IsTerminal;
use std::sync::Arc;

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData};
use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise.
    #[default]
    Auto,
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    /// An `EnvFilter` directive such as `info` or `info,tollgate_router=debug`; the
    /// `TOLLGATE_LOG` environment variable, when set, wins.
    pub log_level: String,
    /// OTLP/gRPC collector, e.g. `http://otel-collector:4317`. Unset: no trace export.
    pub otlp_endpoint: Option<String>,
    /// The OpenTelemetry `service.name`; the binary appends the target (`tollgate-router`).
    pub service_name: String,
    /// `stable` or `canary`: a label on every metric, so a canary can be compared with stable.
    pub track: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Auto,
            log_level: "info".into(),
            otlp_endpoint: None,
            service_name: "tollgate".into(),
            track: "stable".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry.log_level: {0}")]
    Filter(String),
    #[error("telemetry.otlp_endpoint: {0}")]
    Otlp(String),
    #[error("a global tracing subscriber was already installed")]
    AlreadyInstalled,
}

/// Keeps the trace pipeline alive; [`TelemetryGuard::shutdown`] flushes pending spans. Call it
/// outside the async runtime (the exporter owns a runtime of its own).
#[derive(Debug)]
pub struct TelemetryGuard {
    provider_opt: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    pub fn shutdown(self) {
        if let Some(provider) = self.provider_opt
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "flushing traces at shutdown failed");
        }
    }
}

/// Installs the global subscriber and, when configured, the OTLP trace pipeline. Call once, at
/// start-up, before the async runtime is busy.
pub fn init(config: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let directive = std::env::var("TOLLGATE_LOG").unwrap_or_else(|_| config.log_level.clone());
    let filter =
        EnvFilter::try_new(&directive).map_err(|e| TelemetryError::Filter(e.to_string()))?;

    let json = match config.log_format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let text_layer = (!json).then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr));
    let json_layer = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
    });

    let provider_opt = match &config.otlp_endpoint {
        Some(endpoint) if !endpoint.is_empty() => {
            Some(otlp_provider(endpoint, &config.service_name)?)
        }
        _ => None,
    };
    let otel_layer = provider_opt
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("tollgate")));

    tracing_subscriber::registry()
        .with(filter)
        .with(text_layer)
        .with(json_layer)
        .with(otel_layer)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(TelemetryGuard { provider_opt })
}

fn otlp_provider(endpoint: &str, service_name: &str) -> Result<SdkTracerProvider, TelemetryError> {
    // The SDK's batch processor exports from a plain OS thread, where tonic finds no Tokio
    // reactor (open-telemetry/opentelemetry-rust#2673). The exporter therefore gets a small
    // runtime of its own, and is also built inside it.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()
        .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
    let exporter = {
        let _entered = runtime.enter();
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| TelemetryError::Otlp(e.to_string()))?
    };
    let exporter = RuntimeSpanExporter {
        inner: Arc::new(exporter),
        runtime: Arc::new(runtime),
    };
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name.to_owned())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Runs every export of the wrapped exporter on its own Tokio runtime.
#[derive(Debug)]
struct RuntimeSpanExporter {
    inner: Arc<opentelemetry_otlp::SpanExporter>,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl opentelemetry_sdk::trace::SpanExporter for RuntimeSpanExporter {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl Future<Output = opentelemetry_sdk::error::OTelSdkResult> + Send {
        let inner = Arc::clone(&self.inner);
        let export = self.runtime.spawn(async move { inner.export(batch).await });
        async move {
            export.await.unwrap_or_else(|e| {
                Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
                    e.to_string(),
                ))
            })
        }
    }

    fn shutdown_with_timeout(
        &self,
        timeout: std::time::Duration,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

/// Reads W3C trace context out of HTTP/2 headers (gRPC metadata).
pub struct HeaderExtractor<'a>(pub &'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Writes W3C trace context into HTTP/2 headers (gRPC metadata).
pub struct HeaderInjector<'a>(pub &'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

//! W3C trace context crosses a gRPC hop: a call made inside a span, through a kit client channel,
//! to a kit server, produces a server span in the same trace whose parent is the caller's span.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tollgate_kit::config::ServerConfig;
use tollgate_kit::grpc::GrpcServer;
use tollgate_kit::shutdown::Shutdown;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

#[derive(Debug, Clone, Default)]
struct Collected(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Collected {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if let Ok(mut spans) = self.0.lock() {
            spans.extend(batch);
        }
        Ok(())
    }
}

#[tokio::test]
async fn the_server_span_continues_the_callers_trace() -> Result<(), Box<dyn std::error::Error>> {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let collected = Collected::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(collected.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    // A current-thread runtime: client and server run on this thread, under this subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = Shutdown::new();
    let server = GrpcServer::new(
        "test",
        listener,
        &ServerConfig::default(),
        tollgate_proto::FILE_DESCRIPTOR_SET,
    );
    let serving = tokio::spawn(server.serve(shutdown.clone()));

    let channel =
        tollgate_kit::grpc::connect_lazy(&format!("http://{addr}"), Duration::from_secs(5))?;
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let caller = tracing::info_span!("caller", otel.kind = "client");
    client
        .check(tonic_health::pb::HealthCheckRequest::default())
        .instrument(caller)
        .await?;

    shutdown.trigger();
    serving.await??;
    provider.force_flush()?;

    let spans = collected.0.lock().map_err(|e| e.to_string())?.clone();
    let caller = spans
        .iter()
        .find(|span| span.name == "caller")
        .ok_or("no caller span")?;
    let server = spans
        .iter()
        .find(|span| span.span_kind == SpanKind::Server)
        .ok_or("no server span")?;
    assert_eq!(server.name, "grpc.health.v1.Health/Check");
    assert_eq!(
        server.span_context.trace_id(),
        caller.span_context.trace_id(),
        "same trace"
    );
    assert_eq!(
        server.parent_span_id,
        caller.span_context.span_id(),
        "parented on the caller"
    );
    Ok(())
}

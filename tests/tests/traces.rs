//! Distributed tracing end to end: the five services in one process export over OTLP/gRPC to a
//! real OTLP receiver (the collector's `TraceService/Export`, from opentelemetry-proto) on
//! 127.0.0.1:0, and one `Complete` call must come back as one trace whose spans are parented
//! hop by hop: router → case bank, cost tracker, token cache, provider adapter.
//!
//! Its own test binary: it installs the process-wide tracing subscriber, once.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ask, config, router};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tollgate_kit::telemetry::TelemetryConfig;
use tollgate_proto::v1 as pb;
use tollgate_proto::v1::cost_tracker_client::CostTrackerClient;
use tollgate_test_support::{ServiceTarget as Target, TestGateway, TestResult};
use tonic::{Request, Response, Status};

const ROUTER_COMPLETE: &str = "tollgate.v1.Router/Complete";
/// The router's own span around the pipeline, with the GenAI attributes.
const ROUTER_SPAN: &str = "router.complete";
/// What one `Complete` with context documents calls: on the response path, then (settlement
/// and case) in background tasks that carry the request's span.
const DEPENDENCY_CALLS: [&str; 6] = [
    "tollgate.v1.CaseBank/Estimate",
    "tollgate.v1.CostTracker/ReserveBudget",
    "tollgate.v1.TokenCache/GetContext",
    "tollgate.v1.ProviderAdapter/Generate",
    "tollgate.v1.CostTracker/SettleBudget",
    "tollgate.v1.CaseBank/StoreCase",
];
/// Export is batched (the SDK's default delay is 5 s): poll for the trace until this deadline.
const EXPORT_DEADLINE: Duration = Duration::from_secs(60);

/// An OTLP/gRPC trace receiver that keeps every span it is sent.
#[derive(Debug, Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Receiver {
    fn snapshot(&self) -> Vec<Span> {
        match self.spans.lock() {
            Ok(spans) => spans.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let spans = request
            .into_inner()
            .resource_spans
            .into_iter()
            .flat_map(|resource| resource.scope_spans)
            .flat_map(|scope| scope.spans);
        self.spans
            .lock()
            .map_err(|_| Status::internal("span store poisoned"))?
            .extend(spans);
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn with_context(text: &str) -> pb::CompleteRequest {
    let mut request = ask("acme", text);
    request.context = Some(pb::ContextSpec {
        collection: "handbook".into(),
        documents: vec![pb::Document {
            id: "opening-hours".into(),
            text: Some("The office opens at nine. ".repeat(20)),
        }],
        max_tokens: 0,
    });
    request
}

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|value| value.value.as_ref())
}

fn named<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|span| span.name == name).collect()
}

/// The spans of the one `Complete` trace, once the receiver has all of them: the root, the
/// router's span, every dependency call, and the parent of every span of that trace.
fn complete_trace(spans: &[Span]) -> Option<Vec<Span>> {
    let [root] = named(spans, ROUTER_COMPLETE)[..] else {
        return None;
    };
    let trace: Vec<Span> = spans
        .iter()
        .filter(|span| span.trace_id == root.trace_id)
        .cloned()
        .collect();
    let ids: HashSet<&[u8]> = trace.iter().map(|span| &span.span_id[..]).collect();
    let all_named = [ROUTER_SPAN]
        .iter()
        .chain(&DEPENDENCY_CALLS)
        .all(|name| !named(&trace, name).is_empty());
    let all_parented = trace
        .iter()
        .all(|span| span.parent_span_id.is_empty() || ids.contains(&span.parent_span_id[..]));
    (all_named && all_parented).then_some(trace)
}

fn describe(spans: &[Span]) -> String {
    spans
        .iter()
        .map(|span| {
            format!(
                "\n  {} trace={} id={} parent={} kind={}",
                span.name,
                hex(&span.trace_id),
                hex(&span.span_id),
                hex(&span.parent_span_id),
                span.kind
            )
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[test]
fn one_complete_call_is_one_trace_across_the_five_services() -> TestResult {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let receiver = Receiver::default();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    // As in main: the exporter runs a runtime of its own, so telemetry starts and stops
    // outside the test's runtime.
    let telemetry = tollgate_kit::telemetry::init(&TelemetryConfig {
        otlp_endpoint: Some(endpoint),
        log_level: "info".into(),
        ..TelemetryConfig::default()
    })?;

    let outcome: TestResult<(pb::CompleteResponse, Vec<Span>)> = runtime.block_on(async {
        let gateway = TestGateway::start_with(config(), Target::All).await?;
        // A budget for the tenant: without one the reservation is a read and there is
        // nothing to settle, and the settlement (a background task) is what this checks.
        CostTrackerClient::new(gateway.channel(Target::CostTracker)?)
            .set_budget(pb::SetBudgetRequest {
                budget: Some(pb::Budget {
                    scope: Some(pb::BudgetScope {
                        tenant: "acme".into(),
                        ..Default::default()
                    }),
                    period: pb::BudgetPeriod::Month as i32,
                    soft_limit_usd: String::new(),
                    hard_limit_usd: "100".into(),
                }),
            })
            .await?;
        let response = router(&gateway)?
            .complete(with_context("When does the office open?"))
            .await?
            .into_inner();
        let started = Instant::now();
        let mut spans = receiver.snapshot();
        while complete_trace(&spans).is_none() && started.elapsed() < EXPORT_DEADLINE {
            tokio::time::sleep(Duration::from_millis(100)).await;
            spans = receiver.snapshot();
        }
        gateway.stop().await?;
        Ok((response, spans))
    });
    telemetry.shutdown();
    let (response, spans) = outcome?;

    // The token cache was really asked (a miss: its first sight of the document).
    let context = response.context.unwrap_or_default();
    assert_eq!(context.documents, 1, "{context:?}");
    assert_eq!(context.misses, 1, "{context:?}");

    let all = describe(&spans);
    let roots = named(&spans, ROUTER_COMPLETE);
    assert_eq!(roots.len(), 1, "one Complete call, one server span:{all}");
    let root = roots[0];
    let trace: Vec<&Span> = spans
        .iter()
        .filter(|span| span.trace_id == root.trace_id)
        .collect();
    let by_id: HashMap<&[u8], &Span> = trace
        .iter()
        .map(|span| (&span.span_id[..], *span))
        .collect();
    assert_eq!(by_id.len(), trace.len(), "span ids are unique:{all}");

    // One root: the router's server span, whose caller (this test) sent no trace context.
    assert!(root.parent_span_id.is_empty(), "{all}");
    assert_eq!(root.kind, SpanKind::Server as i32, "{all}");
    for span in &trace {
        if span.span_id != root.span_id {
            assert!(
                by_id.contains_key(&span.parent_span_id[..]),
                "{} has a parent outside the trace:{all}",
                span.name
            );
        }
    }

    // The router's span sits under its server span and says what was generated.
    let router_spans: Vec<&&Span> = trace.iter().filter(|s| s.name == ROUTER_SPAN).collect();
    assert_eq!(router_spans.len(), 1, "{all}");
    let router_span = router_spans[0];
    assert_eq!(router_span.parent_span_id, root.span_id, "{all}");
    let decision = response.decision.clone().unwrap_or_default();
    let usage = response.usage.unwrap_or_default();
    assert!(!decision.model.is_empty() && usage.input_tokens > 0);
    assert_eq!(
        attribute(router_span, "gen_ai.request.model"),
        Some(&Value::StringValue(decision.model.clone())),
        "{router_span:?}"
    );
    assert_eq!(
        attribute(router_span, "gen_ai.provider.name"),
        Some(&Value::StringValue(decision.provider.clone())),
        "{router_span:?}"
    );
    assert_eq!(
        attribute(router_span, "gen_ai.usage.input_tokens"),
        Some(&Value::IntValue(i64::try_from(usage.input_tokens)?)),
        "{router_span:?}"
    );
    assert_eq!(
        attribute(router_span, "gen_ai.usage.output_tokens"),
        Some(&Value::IntValue(i64::try_from(usage.output_tokens)?)),
        "{router_span:?}"
    );
    assert_eq!(
        attribute(router_span, "gen_ai.operation.name"),
        Some(&Value::StringValue("chat".into())),
        "{router_span:?}"
    );

    // Every dependency call of the request is a server span of this trace (none started a
    // trace of its own, e.g. from a spawned task that lost the request's context), parented by
    // a client span or by the router's span, and reached from the router's span.
    for name in DEPENDENCY_CALLS {
        let calls = named(&spans, name);
        assert!(!calls.is_empty(), "no {name} span exported:{all}");
        for call in calls {
            assert_eq!(call.trace_id, root.trace_id, "{name} left the trace:{all}");
            assert_eq!(call.kind, SpanKind::Server as i32, "{name}:{all}");
            let (service, method) = name
                .split_once('/')
                .ok_or_else(|| format!("{name} is not service/method"))?;
            assert_eq!(
                attribute(call, "rpc.service"),
                Some(&Value::StringValue(service.into()))
            );
            assert_eq!(
                attribute(call, "rpc.method"),
                Some(&Value::StringValue(method.into()))
            );
            let parent = by_id
                .get(&call.parent_span_id[..])
                .copied()
                .ok_or_else(|| format!("{name} has no parent in the trace:{all}"))?;
            assert!(
                parent.span_id == router_span.span_id || parent.kind == SpanKind::Client as i32,
                "{name} is parented by {}:{all}",
                parent.name
            );
            let mut ancestor = parent;
            for _ in 0..trace.len() {
                if ancestor.span_id == router_span.span_id {
                    break;
                }
                ancestor = by_id
                    .get(&ancestor.parent_span_id[..])
                    .copied()
                    .ok_or_else(|| format!("{name} is not under {ROUTER_SPAN}:{all}"))?;
            }
            assert_eq!(ancestor.span_id, router_span.span_id, "{name}:{all}");
        }
    }
    Ok(())
}

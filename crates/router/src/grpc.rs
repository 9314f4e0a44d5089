//! proto <-> domain for `tollgate.v1.Router`: each RPC authenticates the caller, checks its
//! input into domain types (INVALID_ARGUMENT naming the field) and hands over to the pipeline.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_kit::error::invalid_argument;
use tollgate_proto::v1 as pb;
use tollgate_proto::v1::router_server::Router;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::pipeline::generate::AnswerChecks;
use crate::pipeline::{CompletionRequest, SharedPipeline};
use crate::tenants::{Authenticator, TenantStore};

/// Events buffered per stream before a slow caller holds the upstream back.
const STREAM_BUFFER: usize = 64;

#[derive(Debug, Clone)]
pub struct RouterApi {
    pipeline: SharedPipeline,
    checks: Arc<AnswerChecks>,
    authenticator: Arc<Authenticator>,
    tenants: Arc<dyn TenantStore>,
}

impl RouterApi {
    pub fn new(
        pipeline: SharedPipeline,
        checks: AnswerChecks,
        authenticator: Authenticator,
        tenants: Arc<dyn TenantStore>,
    ) -> Self {
        Self {
            pipeline,
            checks: Arc::new(checks),
            authenticator: Arc::new(authenticator),
            tenants,
        }
    }

    /// The tenant a request acts for: its API key's (the request's `tenant` field, when set,
    /// must match), after the tenant's rate limit.
    async fn tenant(&self, metadata: &MetadataMap, requested: &str) -> Result<String, Status> {
        self.authenticator
            .authenticate(metadata, requested)
            .await
            .map(|tenant| tenant.name)
            .map_err(|error| error.into_status())
    }
}

/// The span of one generation, with the OpenTelemetry GenAI attributes filled in when known.
fn genai_span(operation: &'static str) -> tracing::Span {
    tracing::info_span!(
        "router.complete",
        gen_ai.operation.name = operation,
        gen_ai.provider.name = tracing::field::Empty,
        gen_ai.request.model = tracing::field::Empty,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
    )
}

fn record_genai(span: &tracing::Span, response: &pb::CompleteResponse) {
    if let Some(decision) = &response.decision {
        span.record("gen_ai.provider.name", decision.provider.as_str());
        span.record("gen_ai.request.model", decision.model.as_str());
    }
    if let Some(usage) = &response.usage {
        // As i64: tracing-opentelemetry exports a u64 as a string, and the GenAI conventions
        // (and every backend's sum/filter on token counts) want an integer.
        let as_int = |tokens: u64| i64::try_from(tokens).unwrap_or(i64::MAX);
        span.record("gen_ai.usage.input_tokens", as_int(usage.input_tokens));
        span.record("gen_ai.usage.output_tokens", as_int(usage.output_tokens));
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::CompleteStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Router for RouterApi {
    async fn complete(
        &self,
        request: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::CompleteResponse>, Status> {
        let started = std::time::Instant::now();
        let (metadata, _, request) = request.into_parts();
        let tenant = self.tenant(&metadata, &request.tenant).await?;
        let request = CompletionRequest::from_proto(request)?;
        let span = genai_span("chat");
        let response = self
            .pipeline
            .complete(&tenant, request, &self.checks)
            .instrument(span.clone())
            .await?;
        record_genai(&span, &response);
        crate::pipeline::stages::Stage::Handler.observe(started);
        Ok(Response::new(response))
    }

    async fn complete_stream(
        &self,
        request: Request<pb::CompleteStreamRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let (metadata, _, request) = request.into_parts();
        // Authentication first: an unauthenticated caller learns nothing about its input.
        let requested = request.request.as_ref().map_or("", |r| r.tenant.as_str());
        let tenant = self.tenant(&metadata, requested).await?;
        let request = request
            .request
            .ok_or_else(|| invalid_argument("request", "is required"))?;
        let request = CompletionRequest::from_proto(request)?;
        let (events_tx, events_rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
        self.pipeline
            .start_stream(tenant, request, events_tx)
            .instrument(genai_span("chat_stream"))
            .await?;
        Ok(Response::new(Box::pin(ReceiverStream::new(events_rx))))
    }

    async fn route(
        &self,
        request: Request<pb::RouteRequest>,
    ) -> Result<Response<pb::RouteResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        // Authentication first: an unauthenticated caller learns nothing about its input.
        let requested = request.request.as_ref().map_or("", |r| r.tenant.as_str());
        let tenant = self.tenant(&metadata, requested).await?;
        let request = request
            .request
            .ok_or_else(|| invalid_argument("request", "is required"))?;
        let request = CompletionRequest::from_proto(request)?;
        let decision = self.pipeline.route_only(&tenant, &request).await?;
        Ok(Response::new(pb::RouteResponse {
            decision: Some(decision),
        }))
    }

    async fn feedback(
        &self,
        request: Request<pb::FeedbackRequest>,
    ) -> Result<Response<pb::FeedbackResponse>, Status> {
        let tenant = self.tenant(request.metadata(), "").await?;
        let response = self
            .pipeline
            .feedback(&tenant, request.into_inner())
            .await?;
        Ok(Response::new(response))
    }

    async fn create_tenant(
        &self,
        request: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::CreateTenantResponse>, Status> {
        crate::tenants::admin::create_tenant(
            self.tenants.as_ref(),
            self.authenticator.config(),
            request,
        )
        .await
    }

    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        crate::tenants::admin::list_tenants(
            self.tenants.as_ref(),
            self.authenticator.config(),
            request,
        )
        .await
    }
}

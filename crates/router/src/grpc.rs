//! proto <-> domain for `tollgate.v1.Router`: each RPC authenticates the caller, checks its
//! input into domain types (INVALID_ARGUMENT naming the field) and hands over to the pipeline.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tollgate_kit::error::invalid_argument;
use tollgate_proto::v1 as pb;
use tollgate_proto::v1::router_server::Router;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::pipeline::generate::AnswerChecks;
use crate::pipeline::{CompletionRequest, SharedPipeline};

/// Events buffered per stream before a slow caller holds the upstream back.
const STREAM_BUFFER: usize = 64;

#[derive(Debug, Clone)]
pub struct RouterApi {
    pipeline: SharedPipeline,
    checks: Arc<AnswerChecks>,
}

impl RouterApi {
    pub fn new(pipeline: SharedPipeline, checks: AnswerChecks) -> Self {
        Self {
            pipeline,
            checks: Arc::new(checks),
        }
    }

    /// The tenant a request acts for.
    fn tenant(&self, requested: &str) -> Result<String, Status> {
        if requested.is_empty() {
            Ok("default".to_owned())
        } else {
            Ok(requested.to_owned())
        }
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
        span.record("gen_ai.usage.input_tokens", usage.input_tokens);
        span.record("gen_ai.usage.output_tokens", usage.output_tokens);
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::CompleteStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Router for RouterApi {
    async fn complete(
        &self,
        request: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::CompleteResponse>, Status> {
        let request = request.into_inner();
        let tenant = self.tenant(&request.tenant)?;
        let request = CompletionRequest::from_proto(request)?;
        let span = genai_span("chat");
        let response = self
            .pipeline
            .complete(&tenant, request, &self.checks)
            .instrument(span.clone())
            .await?;
        record_genai(&span, &response);
        Ok(Response::new(response))
    }

    async fn complete_stream(
        &self,
        request: Request<pb::CompleteStreamRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let request = request
            .into_inner()
            .request
            .ok_or_else(|| invalid_argument("request", "is required"))?;
        let tenant = self.tenant(&request.tenant)?;
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
        let request = request
            .into_inner()
            .request
            .ok_or_else(|| invalid_argument("request", "is required"))?;
        let tenant = self.tenant(&request.tenant)?;
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
        let tenant = self.tenant("")?;
        let response = self
            .pipeline
            .feedback(&tenant, request.into_inner())
            .await?;
        Ok(Response::new(response))
    }
}

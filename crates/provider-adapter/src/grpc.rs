//! proto <-> domain for `tollgate.v1.ProviderAdapter`. Structural checks happen here (roles set,
//! images well-formed, numbers in range), each failure an INVALID_ARGUMENT naming the field;
//! checks that need the catalog (unknown model, vision, context window) happen in
//! [`crate::service`].

use std::sync::Arc;
use std::time::Duration;

use tokio_stream::StreamExt;
use tollgate_kit::money::Usd;
use tollgate_proto::v1 as pb;
use tollgate_proto::v1::provider_adapter_server::ProviderAdapter;
use tonic::{Request, Response, Status};

use crate::catalog::{ModelEntry, Prices, Tier};
use crate::error::AdapterError;
use crate::providers::{ChatMessage, ChatRequest, FinishReason, ImageSource, Part, Role, Usage};
use crate::resilience::breaker::CircuitState;
use crate::service::{
    AdapterService, AttemptRecord, AttemptStatus, GenerateInput, StreamEnd, StreamItem, unix_time,
};
use tollgate_kit::grpc::deadline::parse_grpc_timeout;

const IMAGE_MIME_TYPES: [&str; 4] = ["image/png", "image/jpeg", "image/webp", "image/gif"];

#[derive(Debug, Clone)]
pub struct ProviderAdapterApi {
    service: Arc<AdapterService>,
}

impl ProviderAdapterApi {
    pub fn new(service: Arc<AdapterService>) -> Self {
        Self { service }
    }

    /// The caller's deadline, a little early (a tenth, at most 100 ms) so that our
    /// DEADLINE_EXCEEDED, which lists the attempts, reaches the caller before its own client
    /// (tonic and grpc-go enforce the deadline client-side too) gives up with a bare status.
    fn deadline<T>(&self, request: &Request<T>) -> std::time::Instant {
        let caller = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map(|timeout| timeout.saturating_sub((timeout / 10).min(Duration::from_millis(100))));
        self.service.policy().deadline(caller)
    }
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Status {
    AdapterError::invalid(field, problem).status()
}

fn role(value: i32, field: &str) -> Result<Role, Status> {
    match pb::Role::try_from(value) {
        Ok(pb::Role::System) => Ok(Role::System),
        Ok(pb::Role::User) => Ok(Role::User),
        Ok(pb::Role::Assistant) => Ok(Role::Assistant),
        Ok(pb::Role::Tool) => Ok(Role::Tool),
        _ => Err(invalid(
            field,
            "must be ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT or ROLE_TOOL",
        )),
    }
}

fn image(image: pb::Image, field: &str) -> Result<ImageSource, Status> {
    match image.source {
        Some(pb::image::Source::Data(data)) => {
            if data.is_empty() {
                return Err(invalid(format!("{field}.data"), "must not be empty"));
            }
            if !IMAGE_MIME_TYPES.contains(&image.mime_type.as_str()) {
                return Err(invalid(
                    format!("{field}.mime_type"),
                    format!(
                        "must be one of {} with inline data, got {:?}",
                        IMAGE_MIME_TYPES.join(", "),
                        image.mime_type
                    ),
                ));
            }
            Ok(ImageSource::Data {
                bytes: data.into(),
                mime_type: image.mime_type,
            })
        }
        Some(pb::image::Source::Url(url)) => {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(invalid(
                    format!("{field}.url"),
                    "must be an http:// or https:// URL",
                ));
            }
            Ok(ImageSource::Url(url))
        }
        None => Err(invalid(field, "needs `data` (with mime_type) or `url`")),
    }
}

fn message(index: usize, message: pb::Message) -> Result<ChatMessage, Status> {
    let field = format!("messages[{index}]");
    let role = role(message.role, &format!("{field}.role"))?;
    let text_shortcut = !message.text.is_empty();
    let mut parts = Vec::with_capacity(message.parts.len() + 1);
    if text_shortcut {
        parts.push(Part::Text(message.text));
    }
    for (j, part) in message.parts.into_iter().enumerate() {
        let part_field = format!("{field}.parts[{j}]");
        parts.push(match part.part {
            Some(pb::content_part::Part::Text(text)) => Part::Text(text),
            Some(pb::content_part::Part::Image(value)) => {
                Part::Image(image(value, &format!("{part_field}.image"))?)
            }
            None => return Err(invalid(part_field, "needs `text` or `image`")),
        });
    }
    if parts.is_empty() {
        return Err(invalid(field, "has neither `text` nor `parts`"));
    }
    Ok(ChatMessage {
        role,
        parts,
        name: (!message.name.is_empty()).then_some(message.name),
        text_shortcut,
    })
}

impl TryFrom<pb::GenerateRequest> for GenerateInput {
    type Error = Status;

    fn try_from(request: pb::GenerateRequest) -> Result<Self, Status> {
        if request.model.trim().is_empty() {
            return Err(invalid(
                "model",
                "must name a catalog model or group (see ListModels)",
            ));
        }
        let messages = request
            .messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| message(i, m))
            .collect::<Result<Vec<_>, _>>()?;
        if request.max_tokens < 0 {
            return Err(invalid(
                "max_tokens",
                format!("must not be negative, got {}", request.max_tokens),
            ));
        }
        if let Some(temperature) = request.temperature
            && !(0.0..=2.0).contains(&temperature)
        {
            return Err(invalid(
                "temperature",
                format!("must be between 0 and 2, got {temperature}"),
            ));
        }
        if let Some(top_p) = request.top_p
            && !(0.0..=1.0).contains(&top_p)
        {
            return Err(invalid(
                "top_p",
                format!("must be between 0 and 1, got {top_p}"),
            ));
        }
        if let Some(index) = request.stop.iter().position(String::is_empty) {
            return Err(invalid(format!("stop[{index}]"), "must not be empty"));
        }
        Ok(GenerateInput {
            model: request.model,
            request: ChatRequest {
                messages,
                prompt_token_ids: request.prompt_token_ids,
                max_tokens: u64::try_from(request.max_tokens).ok().filter(|&m| m > 0),
                temperature: request.temperature,
                top_p: request.top_p,
                stop: request.stop,
                json_mode: request.json_mode,
                return_token_ids: request.return_token_ids,
                user: (!request.tenant.is_empty()).then_some(request.tenant),
            },
            disable_fallback: request.disable_fallback,
            request_id: request.request_id,
        })
    }
}

fn usage_to_proto(usage: &Usage) -> pb::Usage {
    pb::Usage {
        input_tokens: usage.input,
        output_tokens: usage.output,
        cached_input_tokens: usage.cached_input,
        cache_write_input_tokens: usage.cache_write_input,
        estimated: usage.estimated,
    }
}

fn usage_from_proto(usage: &pb::Usage) -> Result<Usage, Status> {
    if usage
        .cached_input_tokens
        .saturating_add(usage.cache_write_input_tokens)
        > usage.input_tokens
    {
        return Err(invalid(
            "usage.cached_input_tokens",
            "cached and cache-write tokens are part of input_tokens and cannot exceed it",
        ));
    }
    Ok(Usage {
        input: usage.input_tokens,
        output: usage.output_tokens,
        cached_input: usage.cached_input_tokens,
        cache_write_input: usage.cache_write_input_tokens,
        estimated: usage.estimated,
    })
}

pub fn tier_to_proto(tier: Tier) -> pb::Tier {
    match tier {
        Tier::Local => pb::Tier::Local,
        Tier::Cheap => pb::Tier::Cheap,
        Tier::Standard => pb::Tier::Standard,
        Tier::Premium => pb::Tier::Premium,
    }
}

fn finish_to_proto(finish: FinishReason) -> pb::FinishReason {
    match finish {
        FinishReason::Stop => pb::FinishReason::Stop,
        FinishReason::Length => pb::FinishReason::Length,
        FinishReason::ContentFilter => pb::FinishReason::ContentFilter,
        FinishReason::ToolCalls => pb::FinishReason::ToolCalls,
        FinishReason::Error => pb::FinishReason::Error,
    }
}

fn price_to_proto(prices: &Prices) -> pb::Price {
    pb::Price {
        input_per_mtok_usd: prices.input.to_string(),
        output_per_mtok_usd: prices.output.to_string(),
        cached_input_per_mtok_usd: prices.cached_input.to_string(),
        cache_write_per_mtok_usd: prices.cache_write.to_string(),
    }
}

fn attempt_to_proto(attempt: &AttemptRecord) -> pb::Attempt {
    let status = match attempt.status {
        AttemptStatus::Succeeded => pb::AttemptStatus::Succeeded,
        AttemptStatus::RetryableError => pb::AttemptStatus::RetryableError,
        AttemptStatus::FatalError => pb::AttemptStatus::FatalError,
        AttemptStatus::Interrupted => pb::AttemptStatus::Interrupted,
        AttemptStatus::SkippedCircuitOpen => pb::AttemptStatus::SkippedCircuitOpen,
    };
    let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    pb::Attempt {
        number: attempt.number,
        provider: attempt.provider.clone(),
        model: attempt.model.clone(),
        upstream_model: attempt.upstream_model.clone(),
        status: status as i32,
        http_status: u32::from(attempt.http_status),
        error_kind: attempt.error_kind.clone(),
        error_message: attempt.error_message.clone(),
        latency_micros: micros(attempt.latency),
        first_token_micros: attempt.first_token.map(micros).unwrap_or(0),
        usage: attempt.usage.as_ref().map(usage_to_proto),
        cost_usd: attempt.cost.map(|c| c.to_string()).unwrap_or_default(),
        tier: tier_to_proto(attempt.tier) as i32,
    }
}

fn end_to_proto(end: StreamEnd) -> pb::GenerationEnd {
    pb::GenerationEnd {
        finish_reason: finish_to_proto(end.finish) as i32,
        usage: Some(usage_to_proto(&end.usage)),
        cost_usd: end.cost.to_string(),
        model: end.model.as_ref().map(|m| m.id.clone()).unwrap_or_default(),
        provider: end
            .model
            .as_ref()
            .map(|m| m.provider.name.clone())
            .unwrap_or_default(),
        tier: end
            .model
            .as_ref()
            .map(|m| tier_to_proto(m.tier) as i32)
            .unwrap_or_default(),
        attempts: end.attempts.iter().map(attempt_to_proto).collect(),
        text: end.text,
        error: end.error.map(|error| pb::ErrorInfo {
            code: error.code.grpc_code() as i32,
            message: error.message,
            error_kind: error.error_kind,
        }),
    }
}

fn timestamp(time: Option<std::time::SystemTime>) -> Option<prost_types::Timestamp> {
    let since = unix_time(time?)?;
    Some(prost_types::Timestamp {
        seconds: i64::try_from(since.as_secs()).ok()?,
        nanos: i32::try_from(since.subsec_nanos()).ok()?,
    })
}

fn model_info(service: &AdapterService, model: &ModelEntry) -> pb::ModelInfo {
    let caps = model.capabilities;
    let health = service
        .health(&model.provider.name)
        .map(|h| pb::EndpointHealth {
            circuit: match h.state {
                CircuitState::Closed => pb::CircuitState::Closed,
                CircuitState::HalfOpen => pb::CircuitState::HalfOpen,
                CircuitState::Open => pb::CircuitState::Open,
            } as i32,
            consecutive_failures: h.consecutive_failures,
            last_error_kind: h.last_error_kind,
            last_failure_at: timestamp(h.last_failure_at),
            last_success_at: timestamp(h.last_success_at),
        });
    pb::ModelInfo {
        id: model.id.clone(),
        provider: model.provider.name.clone(),
        provider_kind: model.provider.kind.as_str().to_owned(),
        upstream_model: model.upstream_model.clone(),
        tier: tier_to_proto(model.tier) as i32,
        capabilities: Some(pb::Capabilities {
            vision: caps.vision,
            tools: caps.tools,
            token_ids: caps.token_ids,
            embeddings: caps.embeddings,
            json_mode: caps.json_mode,
            streaming: caps.streaming,
        }),
        context_window: model.context_window,
        max_output_tokens: model.max_output_tokens,
        price: Some(price_to_proto(&model.prices)),
        tokenizer: model.tokenizer_name.clone(),
        health,
    }
}

#[tonic::async_trait]
impl ProviderAdapter for ProviderAdapterApi {
    async fn generate(
        &self,
        request: Request<pb::GenerateRequest>,
    ) -> Result<Response<pb::GenerateResponse>, Status> {
        let deadline = self.deadline(&request);
        let input = GenerateInput::try_from(request.into_inner())?;
        let plan = self.service.plan(input).await.map_err(|e| e.status())?;
        let output = self
            .service
            .generate(&plan, deadline)
            .await
            .map_err(|e| e.status())?;
        tracing::debug!(request_id = %plan.request_id, model = %output.model.id, input_tokens = output.usage.input, output_tokens = output.usage.output, "generated");
        Ok(Response::new(pb::GenerateResponse {
            text: output.text,
            finish_reason: finish_to_proto(output.finish) as i32,
            usage: Some(usage_to_proto(&output.usage)),
            cost_usd: output.cost.to_string(),
            model: output.model.id.clone(),
            provider: output.model.provider.name.clone(),
            tier: tier_to_proto(output.model.tier) as i32,
            attempts: output.attempts.iter().map(attempt_to_proto).collect(),
            prompt_token_ids: output.prompt_token_ids,
            output_token_ids: output.output_token_ids,
        }))
    }

    async fn generate_stream(
        &self,
        request: Request<pb::GenerateStreamRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<pb::GenerateStreamResponse>>, Status> {
        let deadline = self.deadline(&request);
        let inner = request
            .into_inner()
            .request
            .ok_or_else(|| invalid("request", "must be set"))?;
        let input = GenerateInput::try_from(inner).map_err(|status| {
            Status::new(status.code(), format!("request.{}", status.message()))
        })?;
        let plan = self.service.plan(input).await.map_err(|e| {
            let status = e.status();
            match e {
                AdapterError::InvalidArgument { .. } | AdapterError::UnknownModel { .. } => {
                    Status::new(status.code(), format!("request.{}", status.message()))
                }
                _ => status,
            }
        })?;
        let items = self.service.generate_stream(plan, deadline);
        let stream = tokio_stream::wrappers::ReceiverStream::new(items).map(|item| match item {
            Ok(StreamItem::Delta { text, token_ids }) => Ok(pb::GenerateStreamResponse {
                event: Some(pb::generate_stream_response::Event::Delta(
                    pb::GenerationDelta { text, token_ids },
                )),
            }),
            Ok(StreamItem::End(end)) => Ok(pb::GenerateStreamResponse {
                event: Some(pb::generate_stream_response::Event::End(end_to_proto(*end))),
            }),
            Err(error) => Err(error.status()),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn embed(
        &self,
        request: Request<pb::EmbedRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let deadline = self.deadline(&request);
        let request = request.into_inner();
        if request.model.trim().is_empty() {
            return Err(invalid("model", "must name a catalog embedding model"));
        }
        let output = self
            .service
            .embed(&request.model, &request.inputs, deadline)
            .await
            .map_err(|e| e.status())?;
        Ok(Response::new(pb::EmbedResponse {
            embeddings: output
                .vectors
                .into_iter()
                .map(|values| pb::Embedding { values })
                .collect(),
            model: output.model.id.clone(),
            usage: Some(usage_to_proto(&output.usage)),
            cost_usd: output.cost.to_string(),
        }))
    }

    async fn list_models(
        &self,
        _request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let catalog = self.service.catalog();
        Ok(Response::new(pb::ListModelsResponse {
            models: catalog
                .models
                .iter()
                .map(|model| model_info(&self.service, model))
                .collect(),
            groups: catalog
                .groups
                .iter()
                .map(|(name, chain)| pb::ModelGroup {
                    name: name.clone(),
                    models: chain.iter().map(|m| m.id.clone()).collect(),
                })
                .collect(),
        }))
    }

    async fn estimate_cost(
        &self,
        request: Request<pb::EstimateCostRequest>,
    ) -> Result<Response<pb::EstimateCostResponse>, Status> {
        let request = request.into_inner();
        if request.model.trim().is_empty() {
            return Err(invalid("model", "must name a catalog model"));
        }
        let usage = usage_from_proto(
            request
                .usage
                .as_ref()
                .ok_or_else(|| invalid("usage", "must be set"))?,
        )?;
        let (cost, prices): (Usd, Prices) = self
            .service
            .estimate_cost(&request.model, &usage)
            .map_err(|e| e.status())?;
        Ok(Response::new(pb::EstimateCostResponse {
            cost_usd: cost.to_string(),
            price: Some(price_to_proto(&prices)),
        }))
    }
}

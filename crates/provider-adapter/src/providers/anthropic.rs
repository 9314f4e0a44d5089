//! Anthropic's Messages API (`POST /v1/messages`): system prompt apart from the messages, images
//! as base64 or URL sources, usage with cache read and write tokens, and the SSE event stream
//! (`message_start`, `content_block_delta`, `message_delta`, `message_stop`, `error`).
//!
//! Anthropic's `input_tokens` excludes cache reads and writes; tollgate's usage includes them in
//! `input`, so they are added here.

use std::sync::Arc;

use serde_json::{Value, json};

use super::sse::{SseEvent, SseStep, event_stream};
use super::{
    ChatRequest, Completion, Embeddings, ErrorKind, EventStream, FinishReason, ImageSource, Part,
    Provider, ProviderError, ProviderFuture, ProviderResult, Role, StreamEvent, Usage, base64_data,
    json_u64, post_json, read_json, send,
};
use crate::catalog::{ModelEntry, ProviderEntry};

const API_VERSION: &str = "2023-06-01";

pub struct Anthropic {
    provider: Arc<ProviderEntry>,
    client: reqwest::Client,
}

impl Anthropic {
    pub fn new(provider: Arc<ProviderEntry>, client: reqwest::Client) -> Self {
        Self { provider, client }
    }

    fn post(&self, body: &Value) -> ProviderResult<reqwest::RequestBuilder> {
        post_json(
            &self.client,
            &self.provider,
            format!("{}/v1/messages", self.provider.base_url),
            body,
            |request, key| request.header("x-api-key", key),
        )
        .map(|request| request.header("anthropic-version", API_VERSION))
    }

    async fn call(&self, model: &ModelEntry, request: &ChatRequest) -> ProviderResult<Completion> {
        let response = send(self.post(&body(model, request, false))?, &self.provider).await?;
        let value = read_json(response, &self.provider).await?;
        let blocks = value
            .get("content")
            .and_then(Value::as_array)
            .ok_or_else(|| ProviderError::malformed("no `content` in the answer"))?;
        let text: String = blocks
            .iter()
            .filter(|block| block.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|block| block.get("text").and_then(Value::as_str))
            .collect();
        Ok(Completion {
            text,
            finish: stop_reason(value.get("stop_reason").and_then(Value::as_str))
                .unwrap_or_default(),
            usage: value.get("usage").map(|usage| parse_usage(usage, 0)),
            prompt_token_ids: Vec::new(),
            output_token_ids: Vec::new(),
        })
    }

    async fn open_stream(
        &self,
        model: &ModelEntry,
        request: &ChatRequest,
    ) -> ProviderResult<EventStream> {
        let response = send(self.post(&body(model, request, true))?, &self.provider).await?;
        let mut state = StreamState::default();
        Ok(event_stream(
            response,
            Arc::clone(&self.provider),
            move |event| state.map(event),
        ))
    }
}

impl Provider for Anthropic {
    fn generate<'a>(
        &'a self,
        model: &'a ModelEntry,
        request: &'a ChatRequest,
    ) -> ProviderFuture<'a, Completion> {
        Box::pin(self.call(model, request))
    }

    fn stream<'a>(
        &'a self,
        model: &'a ModelEntry,
        request: &'a ChatRequest,
    ) -> ProviderFuture<'a, EventStream> {
        Box::pin(self.open_stream(model, request))
    }

    fn embed<'a>(
        &'a self,
        _model: &'a ModelEntry,
        _inputs: &'a [String],
    ) -> ProviderFuture<'a, Embeddings> {
        Box::pin(async {
            Err(ProviderError::new(
                ErrorKind::Unsupported,
                "Anthropic has no embeddings API",
            ))
        })
    }
}

fn body(model: &ModelEntry, request: &ChatRequest, stream: bool) -> Value {
    let system: Vec<String> = request
        .messages
        .iter()
        .filter(|m| m.role == Role::System)
        .map(|m| m.text())
        .collect();
    let messages: Vec<Value> = request
        .messages
        .iter()
        .filter(|m| m.role != Role::System)
        .map(|message| {
            let role = match message.role {
                Role::Assistant => "assistant",
                _ => "user",
            };
            let content: Vec<Value> = message
                .parts
                .iter()
                .map(|part| match part {
                    Part::Text(text) => json!({ "type": "text", "text": text }),
                    Part::Image(ImageSource::Data { bytes, mime_type }) => json!({
                        "type": "image",
                        "source": { "type": "base64", "media_type": mime_type, "data": base64_data(bytes) }
                    }),
                    Part::Image(ImageSource::Url(url)) => json!({
                        "type": "image",
                        "source": { "type": "url", "url": url }
                    }),
                })
                .collect();
            json!({ "role": role, "content": content })
        })
        .collect();
    // max_tokens is required by the Messages API.
    let max_tokens = request.max_tokens.unwrap_or(model.max_output_tokens.max(1));
    let mut body = json!({
        "model": model.upstream_model,
        "messages": messages,
        "max_tokens": max_tokens,
    });
    if let Some(object) = body.as_object_mut() {
        if !system.is_empty() {
            object.insert("system".into(), json!(system.join("\n\n")));
        }
        if let Some(temperature) = request.temperature {
            object.insert("temperature".into(), json!(temperature));
        }
        if let Some(top_p) = request.top_p {
            object.insert("top_p".into(), json!(top_p));
        }
        if !request.stop.is_empty() {
            object.insert("stop_sequences".into(), json!(request.stop));
        }
        if let Some(user) = &request.user {
            object.insert("metadata".into(), json!({ "user_id": user }));
        }
        if stream {
            object.insert("stream".into(), json!(true));
        }
    }
    body
}

fn stop_reason(text: Option<&str>) -> Option<FinishReason> {
    Some(match text? {
        "max_tokens" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    })
}

/// `extra_output` carries output tokens already counted elsewhere (none for unary answers).
fn parse_usage(usage: &Value, extra_output: u64) -> Usage {
    let cache_read = json_u64(usage, "/cache_read_input_tokens");
    let cache_write = json_u64(usage, "/cache_creation_input_tokens");
    Usage {
        input: json_u64(usage, "/input_tokens") + cache_read + cache_write,
        output: json_u64(usage, "/output_tokens") + extra_output,
        cached_input: cache_read,
        cache_write_input: cache_write,
        estimated: false,
    }
}

/// Input usage arrives in `message_start`, output usage in `message_delta`.
#[derive(Default)]
struct StreamState {
    usage: Usage,
    finish: Option<FinishReason>,
}

impl StreamState {
    fn map(&mut self, event: &SseEvent) -> ProviderResult<SseStep> {
        let value: Value = serde_json::from_str(&event.data).map_err(ProviderError::malformed)?;
        let kind = value
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or(event.event.as_str());
        match kind {
            "message_start" => {
                if let Some(usage) = value.pointer("/message/usage") {
                    self.usage = parse_usage(usage, 0);
                }
                Ok(SseStep::Events(Vec::new()))
            }
            "content_block_delta" => {
                let text = value
                    .pointer("/delta/text")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                Ok(SseStep::Events(if text.is_empty() {
                    Vec::new()
                } else {
                    vec![StreamEvent::Delta {
                        text: text.to_owned(),
                        token_ids: Vec::new(),
                    }]
                }))
            }
            "message_delta" => {
                if let Some(reason) =
                    stop_reason(value.pointer("/delta/stop_reason").and_then(Value::as_str))
                {
                    self.finish = Some(reason);
                }
                if let Some(usage) = value.get("usage") {
                    // Cumulative output count; input counts here, when present, are final too.
                    self.usage.output = json_u64(usage, "/output_tokens");
                    if usage.get("input_tokens").is_some() {
                        let output = self.usage.output;
                        self.usage = parse_usage(usage, 0);
                        self.usage.output = output;
                    }
                }
                Ok(SseStep::Events(Vec::new()))
            }
            "message_stop" => Ok(SseStep::Done(vec![StreamEvent::Finish {
                finish: self.finish,
                usage: Some(self.usage),
            }])),
            "error" => {
                let error_type = value
                    .pointer("/error/type")
                    .and_then(Value::as_str)
                    .unwrap_or("error");
                let message = value
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let kind = match error_type {
                    "rate_limit_error" => ErrorKind::RateLimited,
                    "invalid_request_error" => ErrorKind::InvalidRequest,
                    _ => ErrorKind::Upstream5xx,
                };
                Err(ProviderError::new(
                    kind,
                    format!(
                        "upstream stream error {error_type}: {}",
                        super::truncate(message, 300)
                    ),
                ))
            }
            // ping, content_block_start, content_block_stop, and future event types.
            _ => Ok(SseStep::Events(Vec::new())),
        }
    }
}

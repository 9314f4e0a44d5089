//! Google Gemini (`/v1beta/models/{model}:generateContent` and `:streamGenerateContent?alt=sse`):
//! contents with text and inline images, a system instruction, generationConfig, and
//! `usageMetadata` (prompt, candidates, cached and thinking tokens). The key goes in the
//! `x-goog-api-key` header, never in the URL, so it cannot leak through a URL in an error.
//!
//! Gemini's stream has no end marker: the chunk that carries `finishReason` is the last one.

use std::sync::Arc;

use serde_json::{Value, json};

use super::sse::{SseEvent, SseStep, event_stream};
use super::{
    ChatRequest, Completion, Embeddings, ErrorKind, EventStream, FinishReason, ImageSource, Part,
    Provider, ProviderError, ProviderFuture, ProviderResult, Role, StreamEvent, Usage, base64_data,
    json_u64, post_json, read_json, send,
};
use crate::catalog::{ModelEntry, ProviderEntry};

pub struct Gemini {
    provider: Arc<ProviderEntry>,
    client: reqwest::Client,
}

impl Gemini {
    pub fn new(provider: Arc<ProviderEntry>, client: reqwest::Client) -> Self {
        Self { provider, client }
    }

    fn post(
        &self,
        model: &ModelEntry,
        method: &str,
        body: &Value,
    ) -> ProviderResult<reqwest::RequestBuilder> {
        post_json(
            &self.client,
            &self.provider,
            format!(
                "{}/v1beta/models/{}:{method}",
                self.provider.base_url, model.upstream_model
            ),
            body,
            // In a header, never in the URL: URLs end up in logs.
            |request, key| request.header("x-goog-api-key", key),
        )
    }

    async fn call(&self, model: &ModelEntry, request: &ChatRequest) -> ProviderResult<Completion> {
        let response = send(
            self.post(model, "generateContent", &body(request))?,
            &self.provider,
        )
        .await?;
        let value = read_json(response, &self.provider).await?;
        let candidate = value
            .pointer("/candidates/0")
            .ok_or_else(|| ProviderError::malformed("no candidates in the answer"))?;
        Ok(Completion {
            text: candidate_text(candidate),
            finish: finish_reason(candidate.get("finishReason").and_then(Value::as_str))
                .unwrap_or_default(),
            usage: value.get("usageMetadata").map(parse_usage),
            prompt_token_ids: Vec::new(),
            output_token_ids: Vec::new(),
        })
    }

    async fn open_stream(
        &self,
        model: &ModelEntry,
        request: &ChatRequest,
    ) -> ProviderResult<EventStream> {
        let response = send(
            self.post(model, "streamGenerateContent?alt=sse", &body(request))?,
            &self.provider,
        )
        .await?;
        Ok(event_stream(
            response,
            Arc::clone(&self.provider),
            map_event,
        ))
    }
}

impl Provider for Gemini {
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
                "embeddings are served through openai-compatible providers only",
            ))
        })
    }
}

fn body(request: &ChatRequest) -> Value {
    let system: Vec<Value> = request
        .messages
        .iter()
        .filter(|m| m.role == Role::System)
        .map(|m| json!({ "text": m.text() }))
        .collect();
    let contents: Vec<Value> = request
        .messages
        .iter()
        .filter(|m| m.role != Role::System)
        .map(|message| {
            let role = if message.role == Role::Assistant {
                "model"
            } else {
                "user"
            };
            let parts: Vec<Value> = message
                .parts
                .iter()
                .map(|part| match part {
                    Part::Text(text) => json!({ "text": text }),
                    Part::Image(ImageSource::Data { bytes, mime_type }) => json!({
                        "inlineData": { "mimeType": mime_type, "data": base64_data(bytes) }
                    }),
                    Part::Image(ImageSource::Url(url)) => json!({
                        "fileData": { "fileUri": url }
                    }),
                })
                .collect();
            json!({ "role": role, "parts": parts })
        })
        .collect();
    let mut config = serde_json::Map::new();
    if let Some(max_tokens) = request.max_tokens {
        config.insert("maxOutputTokens".into(), json!(max_tokens));
    }
    if let Some(temperature) = request.temperature {
        config.insert("temperature".into(), json!(temperature));
    }
    if let Some(top_p) = request.top_p {
        config.insert("topP".into(), json!(top_p));
    }
    if !request.stop.is_empty() {
        config.insert("stopSequences".into(), json!(request.stop));
    }
    if request.json_mode {
        config.insert("responseMimeType".into(), json!("application/json"));
    }
    let mut body = json!({ "contents": contents });
    if let Some(object) = body.as_object_mut() {
        if !system.is_empty() {
            object.insert("systemInstruction".into(), json!({ "parts": system }));
        }
        if !config.is_empty() {
            object.insert("generationConfig".into(), Value::Object(config));
        }
    }
    body
}

fn candidate_text(candidate: &Value) -> String {
    candidate
        .pointer("/content/parts")
        .and_then(Value::as_array)
        .map(|parts| {
            parts
                .iter()
                // Thought summaries are not part of the answer.
                .filter(|part| part.get("thought").and_then(Value::as_bool) != Some(true))
                .filter_map(|part| part.get("text").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default()
}

fn finish_reason(text: Option<&str>) -> Option<FinishReason> {
    Some(match text? {
        "STOP" => FinishReason::Stop,
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" => {
            FinishReason::ContentFilter
        }
        "MALFORMED_FUNCTION_CALL" => FinishReason::Error,
        _ => FinishReason::Stop,
    })
}

/// Thinking tokens are billed as output.
fn parse_usage(usage: &Value) -> Usage {
    Usage {
        input: json_u64(usage, "/promptTokenCount"),
        output: json_u64(usage, "/candidatesTokenCount") + json_u64(usage, "/thoughtsTokenCount"),
        cached_input: json_u64(usage, "/cachedContentTokenCount"),
        cache_write_input: 0,
        estimated: false,
    }
}

fn map_event(event: &SseEvent) -> ProviderResult<SseStep> {
    let value: Value = serde_json::from_str(&event.data).map_err(ProviderError::malformed)?;
    if let Some(error) = value.get("error") {
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("error event in the stream");
        return Err(ProviderError::new(
            ErrorKind::Upstream5xx,
            format!("upstream stream error: {}", super::truncate(message, 300)),
        ));
    }
    let mut events = Vec::new();
    let candidate = value.pointer("/candidates/0");
    if let Some(candidate) = candidate {
        let text = candidate_text(candidate);
        if !text.is_empty() {
            events.push(StreamEvent::Delta {
                text,
                token_ids: Vec::new(),
            });
        }
    }
    let finish = candidate
        .and_then(|c| c.get("finishReason"))
        .and_then(Value::as_str)
        .and_then(|reason| finish_reason(Some(reason)));
    let usage = value.get("usageMetadata").map(parse_usage);
    match finish {
        Some(finish) => {
            events.push(StreamEvent::Finish {
                finish: Some(finish),
                usage,
            });
            Ok(SseStep::Done(events))
        }
        None => Ok(SseStep::Events(events)),
    }
}

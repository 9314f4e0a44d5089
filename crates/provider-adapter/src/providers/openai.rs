//! OpenAI and every OpenAI-compatible server (vLLM, Ollama's /v1, DashScope compatible mode):
//! `/chat/completions` with text and image parts, the legacy `/completions` with the prompt as
//! token IDs (for models marked `token_ids`), vLLM's `return_token_ids`, `/embeddings`, and SSE
//! streaming with `stream_options.include_usage` so that streams report usage too.

use std::sync::Arc;

use serde_json::{Value, json};

use super::sse::{SseEvent, SseStep, event_stream};
use super::{
    ChatRequest, Completion, Embeddings, ErrorKind, EventStream, FinishReason, Part, Provider,
    ProviderError, ProviderFuture, ProviderResult, StreamEvent, Usage, base64_data, json_u64,
    post_json, read_json, send, token_ids,
};
use crate::catalog::{ModelEntry, ProviderEntry};

pub struct OpenAi {
    provider: Arc<ProviderEntry>,
    client: reqwest::Client,
}

impl OpenAi {
    pub fn new(provider: Arc<ProviderEntry>, client: reqwest::Client) -> Self {
        Self { provider, client }
    }

    fn post(&self, path: &str, body: &Value) -> ProviderResult<reqwest::RequestBuilder> {
        post_json(
            &self.client,
            &self.provider,
            format!("{}{path}", self.provider.base_url),
            body,
            |request, key| request.bearer_auth(key),
        )
    }

    async fn call(&self, model: &ModelEntry, request: &ChatRequest) -> ProviderResult<Completion> {
        let token_prompt = request.uses_token_ids(model);
        let (path, body) = if token_prompt {
            ("/completions", completions_body(model, request, false))
        } else {
            ("/chat/completions", chat_body(model, request, false))
        };
        let response = send(self.post(path, &body)?, &self.provider).await?;
        let value = read_json(response, &self.provider).await?;
        parse_completion(&value, token_prompt)
    }

    async fn open_stream(
        &self,
        model: &ModelEntry,
        request: &ChatRequest,
    ) -> ProviderResult<EventStream> {
        let token_prompt = request.uses_token_ids(model);
        let (path, body) = if token_prompt {
            ("/completions", completions_body(model, request, true))
        } else {
            ("/chat/completions", chat_body(model, request, true))
        };
        let response = send(self.post(path, &body)?, &self.provider).await?;
        Ok(event_stream(
            response,
            Arc::clone(&self.provider),
            move |event| map_event(event, token_prompt),
        ))
    }

    async fn call_embed(
        &self,
        model: &ModelEntry,
        inputs: &[String],
    ) -> ProviderResult<Embeddings> {
        let body = json!({ "model": model.upstream_model, "input": inputs });
        let response = send(self.post("/embeddings", &body)?, &self.provider).await?;
        let value = read_json(response, &self.provider).await?;
        let data = value
            .get("data")
            .and_then(Value::as_array)
            .ok_or_else(|| ProviderError::malformed("no `data` in the embeddings answer"))?;
        let mut vectors = vec![Vec::new(); inputs.len()];
        for (position, item) in data.iter().enumerate() {
            let index = item
                .get("index")
                .and_then(Value::as_u64)
                .map_or(position, |i| i as usize);
            let values = item
                .get("embedding")
                .and_then(Value::as_array)
                .ok_or_else(|| ProviderError::malformed("an embedding is not an array"))?;
            let slot = vectors
                .get_mut(index)
                .ok_or_else(|| ProviderError::malformed("embedding index out of range"))?;
            *slot = values
                .iter()
                .map(|v| v.as_f64().unwrap_or(0.0) as f32)
                .collect();
        }
        if vectors.iter().any(Vec::is_empty) {
            return Err(ProviderError::malformed("an input got no embedding"));
        }
        let usage = value.get("usage").map(|usage| Usage {
            input: json_u64(usage, "/prompt_tokens"),
            ..Usage::default()
        });
        Ok(Embeddings { vectors, usage })
    }
}

impl Provider for OpenAi {
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
        model: &'a ModelEntry,
        inputs: &'a [String],
    ) -> ProviderFuture<'a, Embeddings> {
        Box::pin(self.call_embed(model, inputs))
    }
}

fn common_options(body: &mut Value, model: &ModelEntry, request: &ChatRequest, stream: bool) {
    let Some(object) = body.as_object_mut() else {
        return;
    };
    object.insert("model".into(), json!(model.upstream_model));
    if let Some(max_tokens) = request.max_tokens {
        object.insert("max_tokens".into(), json!(max_tokens));
    }
    if let Some(temperature) = request.temperature {
        object.insert("temperature".into(), json!(temperature));
    }
    if let Some(top_p) = request.top_p {
        object.insert("top_p".into(), json!(top_p));
    }
    if !request.stop.is_empty() {
        object.insert("stop".into(), json!(request.stop));
    }
    if let Some(user) = &request.user {
        object.insert("user".into(), json!(user));
    }
    if request.return_token_ids {
        // vLLM ≥ 0.10: prompt_token_ids and per-choice token_ids in the answer.
        object.insert("return_token_ids".into(), json!(true));
    }
    if stream {
        object.insert("stream".into(), json!(true));
        object.insert("stream_options".into(), json!({ "include_usage": true }));
    }
}

fn chat_body(model: &ModelEntry, request: &ChatRequest, stream: bool) -> Value {
    let messages: Vec<Value> = request
        .messages
        .iter()
        .map(|message| {
            let only_text = message.parts.iter().all(|p| matches!(p, Part::Text(_)));
            let content = if only_text {
                json!(message.text())
            } else {
                Value::Array(
                    message
                        .parts
                        .iter()
                        .map(|part| match part {
                            Part::Text(text) => json!({ "type": "text", "text": text }),
                            Part::Image(image) => {
                                let url = match image {
                                    super::ImageSource::Url(url) => url.clone(),
                                    super::ImageSource::Data { bytes, mime_type } => {
                                        format!("data:{mime_type};base64,{}", base64_data(bytes))
                                    }
                                };
                                json!({ "type": "image_url", "image_url": { "url": url } })
                            }
                        })
                        .collect(),
                )
            };
            let mut value = json!({ "role": message.role.as_openai(), "content": content });
            if let (Some(name), Some(object)) = (&message.name, value.as_object_mut()) {
                object.insert("name".into(), json!(name));
            }
            value
        })
        .collect();
    let mut body = json!({ "messages": messages });
    common_options(&mut body, model, request, stream);
    if request.json_mode
        && let Some(object) = body.as_object_mut()
    {
        object.insert("response_format".into(), json!({ "type": "json_object" }));
    }
    body
}

fn completions_body(model: &ModelEntry, request: &ChatRequest, stream: bool) -> Value {
    let mut body = json!({ "prompt": request.prompt_token_ids });
    common_options(&mut body, model, request, stream);
    body
}

fn finish_reason(text: Option<&str>) -> Option<FinishReason> {
    Some(match text? {
        "stop" | "eos" => FinishReason::Stop,
        "length" => FinishReason::Length,
        "content_filter" => FinishReason::ContentFilter,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    })
}

fn parse_usage(usage: &Value) -> Option<Usage> {
    if !usage.is_object() {
        return None;
    }
    Some(Usage {
        input: json_u64(usage, "/prompt_tokens"),
        output: json_u64(usage, "/completion_tokens"),
        cached_input: json_u64(usage, "/prompt_tokens_details/cached_tokens"),
        cache_write_input: 0,
        estimated: false,
    })
}

fn parse_completion(value: &Value, token_prompt: bool) -> ProviderResult<Completion> {
    let choice = value
        .pointer("/choices/0")
        .ok_or_else(|| ProviderError::malformed("no choices in the answer"))?;
    let text = if token_prompt {
        choice.get("text").and_then(Value::as_str)
    } else {
        choice.pointer("/message/content").and_then(Value::as_str)
    };
    let text = match text {
        Some(text) => text.to_owned(),
        // A tool call answer has null content; anything else without text is broken.
        None if choice.pointer("/message/tool_calls").is_some() => String::new(),
        None => return Err(ProviderError::malformed("the first choice has no text")),
    };
    Ok(Completion {
        text,
        finish: finish_reason(choice.get("finish_reason").and_then(Value::as_str))
            .unwrap_or_default(),
        usage: value.get("usage").and_then(parse_usage),
        prompt_token_ids: token_ids(
            value
                .get("prompt_token_ids")
                .or_else(|| choice.get("prompt_token_ids")),
        ),
        output_token_ids: token_ids(choice.get("token_ids")),
    })
}

fn map_event(event: &SseEvent, token_prompt: bool) -> ProviderResult<SseStep> {
    let data = event.data.trim();
    if data == "[DONE]" {
        return Ok(SseStep::Done(Vec::new()));
    }
    let value: Value = serde_json::from_str(data).map_err(ProviderError::malformed)?;
    if let Some(error) = value.get("error") {
        // Some servers (vLLM, DashScope) report a failure mid-stream as a data event.
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
    if let Some(choice) = value.pointer("/choices/0") {
        let text = if token_prompt {
            choice.get("text").and_then(Value::as_str)
        } else {
            choice.pointer("/delta/content").and_then(Value::as_str)
        };
        let ids = token_ids(choice.get("token_ids"));
        if text.is_some_and(|t| !t.is_empty()) || !ids.is_empty() {
            events.push(StreamEvent::Delta {
                text: text.unwrap_or_default().to_owned(),
                token_ids: ids,
            });
        }
        if let Some(finish) = finish_reason(choice.get("finish_reason").and_then(Value::as_str)) {
            events.push(StreamEvent::Finish {
                finish: Some(finish),
                usage: None,
            });
        }
    }
    if let Some(usage) = value.get("usage").and_then(parse_usage) {
        events.push(StreamEvent::Finish {
            finish: None,
            usage: Some(usage),
        });
    }
    Ok(SseStep::Events(events))
}

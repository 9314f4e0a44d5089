//! One trait over every upstream, and the domain types it speaks: a chat request, a completion,
//! stream events, usage and a classified error. One implementation per `kind` in config:
//! [`openai`], [`anthropic`], [`gemini`] and the offline [`mock`]; [`sse`] parses the
//! server-sent events all three real APIs stream with.
//!
//! Providers know wire formats only. Retries, fallbacks, deadlines and circuit breaking live in
//! [`crate::service`] and [`crate::resilience`], the same for every kind.

pub mod anthropic;
pub mod gemini;
pub mod mock;
pub mod openai;
pub mod sse;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_stream::Stream;

use crate::catalog::{ModelEntry, ProviderEntry};
use crate::config::ProviderKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    pub fn as_openai(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Tool => "tool",
        }
    }
}

#[derive(Debug, Clone)]
pub enum ImageSource {
    Data { bytes: Bytes, mime_type: String },
    Url(String),
}

#[derive(Debug, Clone)]
pub enum Part {
    Text(String),
    Image(ImageSource),
}

#[derive(Debug, Clone)]
pub struct ChatMessage {
    pub role: Role,
    pub parts: Vec<Part>,
    pub name: Option<String>,
    /// The first part came from the contract's `Message.text` shortcut, so field names in
    /// errors count the contract's `parts` one lower.
    pub text_shortcut: bool,
}

impl ChatMessage {
    /// The text parts joined, for APIs and counters that take text only.
    pub fn text(&self) -> String {
        let mut text = String::new();
        for part in &self.parts {
            if let Part::Text(piece) = part {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(piece);
            }
        }
        text
    }

    pub fn has_image(&self) -> bool {
        self.parts.iter().any(|part| matches!(part, Part::Image(_)))
    }
}

/// A validated generation request, the same for every provider.
#[derive(Debug, Clone, Default)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessage>,
    /// Used instead of `messages` by models that accept token IDs.
    pub prompt_token_ids: Vec<u32>,
    /// None: the model's default.
    pub max_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub stop: Vec<String>,
    pub json_mode: bool,
    pub return_token_ids: bool,
    pub user: Option<String>,
}

impl ChatRequest {
    /// Whether this call to `model` sends the prompt as token IDs.
    pub fn uses_token_ids(&self, model: &ModelEntry) -> bool {
        !self.prompt_token_ids.is_empty() && model.capabilities.token_ids
    }
}

/// Tokens an image counts for in estimates (OpenAI's low-detail figure; providers report the
/// real number when they report usage).
pub const IMAGE_TOKEN_ESTIMATE: u64 = 85;

/// The prompt's size in the model's tokens: token IDs as given, or each message's text plus
/// OpenAI's per-message overhead (3 per message, 3 to prime the answer) and an estimate per image.
pub fn count_prompt_tokens(model: &ModelEntry, request: &ChatRequest) -> u64 {
    if request.uses_token_ids(model) {
        return request.prompt_token_ids.len() as u64;
    }
    let mut total = 3;
    for message in &request.messages {
        total += 3;
        for part in &message.parts {
            total += match part {
                Part::Text(text) => model.count_tokens(text),
                Part::Image(_) => IMAGE_TOKEN_ESTIMATE,
            };
        }
        if let Some(name) = &message.name {
            total += 1 + model.count_tokens(name);
        }
    }
    total
}

/// An upper bound of [`count_prompt_tokens`] without tokenizing: a byte-level BPE token covers
/// at least one byte.
pub fn prompt_token_bound(model: &ModelEntry, request: &ChatRequest) -> u64 {
    if request.uses_token_ids(model) {
        return request.prompt_token_ids.len() as u64;
    }
    let mut total: u64 = 3;
    for message in &request.messages {
        total += 3;
        for part in &message.parts {
            total += match part {
                Part::Text(text) => text.len() as u64,
                Part::Image(_) => IMAGE_TOKEN_ESTIMATE,
            };
        }
        if let Some(name) = &message.name {
            total += 1 + name.len() as u64;
        }
    }
    total
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FinishReason {
    #[default]
    Stop,
    Length,
    ContentFilter,
    ToolCalls,
    Error,
}

/// Token usage of one call. `input` includes `cached_input` and `cache_write_input`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cached_input: u64,
    pub cache_write_input: u64,
    /// Counted with the model's tokenizer because the provider reported none.
    pub estimated: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Completion {
    pub text: String,
    pub finish: FinishReason,
    /// None when the provider reported no usage (then it is counted).
    pub usage: Option<Usage>,
    pub prompt_token_ids: Vec<u32>,
    pub output_token_ids: Vec<u32>,
}

#[derive(Debug, Clone)]
pub enum StreamEvent {
    Delta {
        text: String,
        token_ids: Vec<u32>,
    },
    /// Usage may arrive on its own (OpenAI's final chunk) or with the finish reason.
    Finish {
        finish: Option<FinishReason>,
        usage: Option<Usage>,
    },
}

#[derive(Debug, Clone)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    pub usage: Option<Usage>,
}

/// What went wrong with one upstream call, classified for the retry and fallback policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Connect,
    Timeout,
    RateLimited,
    Upstream5xx,
    /// A status the provider's config lists as retryable (DashScope's 403).
    RetryableStatus,
    /// The upstream's answer could not be understood (bad JSON, truncated stream).
    Malformed,
    /// 401/403: the key is wrong or missing. Not the request's fault: falls back, no retry.
    Unauthorized,
    MissingCredentials,
    /// A 4xx the request caused: neither retried nor sent elsewhere.
    InvalidRequest,
    /// The model or provider cannot do what was asked (embeddings on Anthropic).
    Unsupported,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::RateLimited => "rate_limited",
            Self::Upstream5xx => "upstream_5xx",
            Self::RetryableStatus => "retryable_status",
            Self::Malformed => "malformed_response",
            Self::Unauthorized => "unauthorized",
            Self::MissingCredentials => "missing_credentials",
            Self::InvalidRequest => "invalid_request",
            Self::Unsupported => "unsupported",
        }
    }

    /// Worth another attempt on the same model.
    pub fn retry_same(self) -> bool {
        matches!(
            self,
            Self::Connect
                | Self::Timeout
                | Self::RateLimited
                | Self::Upstream5xx
                | Self::RetryableStatus
                | Self::Malformed
        )
    }

    /// Worth trying the next model of the chain.
    pub fn falls_back(self) -> bool {
        self.retry_same() || matches!(self, Self::Unauthorized | Self::MissingCredentials)
    }

    /// Says something about the endpoint's health (the circuit breaker counts these).
    pub fn endpoint_failure(self) -> bool {
        self.retry_same()
    }
}

#[derive(Debug, Clone)]
pub struct ProviderError {
    pub kind: ErrorKind,
    /// 0 when there was no HTTP answer.
    pub http_status: u16,
    /// Safe to show: no key, bounded length.
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl ProviderError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            http_status: 0,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn malformed(what: impl std::fmt::Display) -> Self {
        Self::new(
            ErrorKind::Malformed,
            format!("unreadable upstream answer: {what}"),
        )
    }

    /// A non-success HTTP answer, classified with the provider's extra retryable statuses.
    pub fn from_status(
        status: u16,
        body: &str,
        retry_after: Option<Duration>,
        provider: &ProviderEntry,
    ) -> Self {
        let kind = if provider.retryable_statuses.contains(&status) {
            ErrorKind::RetryableStatus
        } else {
            match status {
                429 => ErrorKind::RateLimited,
                408 => ErrorKind::Timeout,
                401 | 403 => ErrorKind::Unauthorized,
                500..=599 => ErrorKind::Upstream5xx,
                _ => ErrorKind::InvalidRequest,
            }
        };
        let detail = upstream_error_message(body);
        Self {
            kind,
            http_status: status,
            message: provider.redact(&format!("HTTP {status} from upstream: {detail}")),
            retry_after,
        }
    }

    /// A transport error from reqwest, without its URL (which may carry a Gemini key).
    pub fn from_reqwest(error: &reqwest::Error, provider: &ProviderEntry) -> Self {
        let kind = if error.is_timeout() {
            ErrorKind::Timeout
        } else if error.is_connect() {
            ErrorKind::Connect
        } else if error.is_decode() || error.is_body() {
            ErrorKind::Malformed
        } else {
            ErrorKind::Connect
        };
        let without_url = error.without_url_ref_text();
        Self::new(kind, provider.redact(&without_url))
    }
}

/// reqwest's Display names the URL; this keeps the reason only.
trait WithoutUrl {
    fn without_url_ref_text(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_ref_text(&self) -> String {
        let mut text = if self.is_timeout() {
            "timed out".to_owned()
        } else if self.is_connect() {
            "could not connect".to_owned()
        } else if self.is_body() || self.is_decode() {
            "the response body broke off".to_owned()
        } else {
            "request failed".to_owned()
        };
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
}

/// The message inside the usual error bodies (`{"error":{"message":..}}` for OpenAI and Gemini,
/// `{"type":"error","error":{"message":..}}` for Anthropic), else the start of the body.
fn upstream_error_message(body: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let message = parsed.as_ref().and_then(|value| {
        value
            .pointer("/error/message")
            .or_else(|| value.pointer("/message"))
            .and_then(|m| m.as_str())
            .map(str::to_owned)
    });
    truncate(message.as_deref().unwrap_or(body).trim(), 300)
}

pub fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Retry-After in seconds or as an HTTP date.
pub fn parse_retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    if let Ok(seconds) = value.parse::<f64>()
        && seconds.is_finite()
        && seconds >= 0.0
    {
        return Some(Duration::from_secs_f64(seconds));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

pub type ProviderResult<T> = Result<T, ProviderError>;
pub type ProviderFuture<'a, T> = Pin<Box<dyn Future<Output = ProviderResult<T>> + Send + 'a>>;
pub type EventStream = Pin<Box<dyn Stream<Item = ProviderResult<StreamEvent>> + Send>>;

/// One upstream API. The service applies timeouts and retries around these calls.
pub trait Provider: Send + Sync {
    fn generate<'a>(
        &'a self,
        model: &'a ModelEntry,
        request: &'a ChatRequest,
    ) -> ProviderFuture<'a, Completion>;

    /// Resolves once the upstream accepted the stream (HTTP headers received); events follow.
    fn stream<'a>(
        &'a self,
        model: &'a ModelEntry,
        request: &'a ChatRequest,
    ) -> ProviderFuture<'a, EventStream>;

    fn embed<'a>(
        &'a self,
        model: &'a ModelEntry,
        inputs: &'a [String],
    ) -> ProviderFuture<'a, Embeddings>;
}

/// The implementation for `provider`'s kind, sharing one HTTP client.
pub fn build(provider: Arc<ProviderEntry>, client: reqwest::Client) -> Arc<dyn Provider> {
    match provider.kind {
        ProviderKind::Openai => Arc::new(openai::OpenAi::new(provider, client)),
        ProviderKind::Anthropic => Arc::new(anthropic::Anthropic::new(provider, client)),
        ProviderKind::Gemini => Arc::new(gemini::Gemini::new(provider, client)),
        ProviderKind::Mock => Arc::new(mock::Mock::new(provider)),
    }
}

/// An HTTP client for upstreams: pooled connections, TCP_NODELAY, rustls with ring. Build one
/// per connect timeout and share it (a client is a connection pool).
pub fn http_client(connect_timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    // The binary installs ring at start-up; tests and benchmarks that start the service
    // in-process get it here. Installing twice is refused harmlessly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .connect_timeout(connect_timeout)
        .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Sends `request` and turns a non-2xx answer into a classified error.
/// A JSON POST to `url` with the provider's API key attached by `authorize` (each API names its
/// key header differently). A key whose source is configured but empty fails as
/// `MissingCredentials`, so the fallback chain moves on; a provider without a key (a local
/// server) sends none.
pub(crate) fn post_json(
    client: &reqwest::Client,
    provider: &ProviderEntry,
    url: String,
    body: &serde_json::Value,
    authorize: impl FnOnce(reqwest::RequestBuilder, &str) -> reqwest::RequestBuilder,
) -> ProviderResult<reqwest::RequestBuilder> {
    let request = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(body).unwrap_or_default());
    match (&provider.api_key, &provider.key_source) {
        (Some(key), _) => Ok(authorize(request, key.expose())),
        (None, Some(source)) => Err(ProviderError::new(
            ErrorKind::MissingCredentials,
            format!(
                "no API key for provider {}: {source} is not set",
                provider.name
            ),
        )),
        (None, None) => Ok(request),
    }
}

pub(crate) async fn send(
    request: reqwest::RequestBuilder,
    provider: &ProviderEntry,
) -> ProviderResult<reqwest::Response> {
    let response = request
        .send()
        .await
        .map_err(|e| ProviderError::from_reqwest(&e, provider))?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = parse_retry_after(response.headers());
    let body = response.text().await.unwrap_or_default();
    Err(ProviderError::from_status(
        status.as_u16(),
        &body,
        retry_after,
        provider,
    ))
}

/// Reads a whole JSON body.
pub(crate) async fn read_json(
    response: reqwest::Response,
    provider: &ProviderEntry,
) -> ProviderResult<serde_json::Value> {
    let body = response
        .bytes()
        .await
        .map_err(|e| ProviderError::from_reqwest(&e, provider))?;
    serde_json::from_slice(&body).map_err(ProviderError::malformed)
}

pub(crate) fn json_u64(value: &serde_json::Value, pointer: &str) -> u64 {
    value
        .pointer(pointer)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}

pub(crate) fn token_ids(value: Option<&serde_json::Value>) -> Vec<u32> {
    value
        .and_then(serde_json::Value::as_array)
        .map(|ids| {
            ids.iter()
                .filter_map(|id| id.as_u64().and_then(|id| u32::try_from(id).ok()))
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn base64_data(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

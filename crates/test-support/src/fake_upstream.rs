//! Fake LLM provider APIs for tests and benchmarks: an HTTP server on 127.0.0.1:0 that speaks
//! the real wire format of one provider kind (OpenAI-compatible, Anthropic Messages, Gemini),
//! records every request it receives, and answers from a queue of scripted replies (errors,
//! 429 with Retry-After, slow answers, truncated or malformed bodies), falling back to a
//! well-formed success derived from the request when the queue is empty.
//!
//! ```text
//! let upstream = FakeUpstream::start(FakeKind::OpenAi).await?;
//! upstream.push(FakeReply::rate_limited(FakeKind::OpenAi, 1));
//! // ... point a provider's base_url at upstream.base_url() ...
//! assert_eq!(upstream.requests().len(), 2);
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, Response, StatusCode, Uri};
use serde_json::{Value, json};
use tokio_stream::StreamExt;

/// The answer every default success carries.
pub const DEFAULT_ANSWER: &str = "Hello from the fake upstream.";
/// Usage every default success reports: (input, output).
pub const DEFAULT_USAGE: (u64, u64) = (11, 6);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeKind {
    OpenAi,
    Anthropic,
    Gemini,
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query, e.g. `/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse`.
    pub path: String,
    /// Lower-case header names.
    pub headers: BTreeMap<String, String>,
    /// The JSON body (Null when it was not JSON).
    pub body: Value,
}

#[derive(Debug, Clone)]
pub enum FakeBody {
    Json(Value),
    /// Any bytes, e.g. a malformed JSON document.
    Raw(String),
    /// Server-sent events: each frame is sent as is (include the blank line), `gap` apart.
    /// Leave out the provider's end marker to simulate a truncated stream.
    Sse {
        frames: Vec<String>,
        gap: Duration,
    },
}

#[derive(Debug, Clone)]
pub struct FakeReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: FakeBody,
    /// Time before the status line is sent.
    pub delay: Duration,
}

impl FakeReply {
    pub fn json(status: u16, body: Value) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: FakeBody::Json(body),
            delay: Duration::ZERO,
        }
    }

    pub fn raw(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: FakeBody::Raw(body.to_owned()),
            delay: Duration::ZERO,
        }
    }

    pub fn sse(frames: Vec<String>) -> Self {
        Self {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            body: FakeBody::Sse {
                frames,
                gap: Duration::ZERO,
            },
            delay: Duration::ZERO,
        }
    }

    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    pub fn with_gap(mut self, gap: Duration) -> Self {
        if let FakeBody::Sse { gap: current, .. } = &mut self.body {
            *current = gap;
        }
        self
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// An error in `kind`'s error body format.
    pub fn error(kind: FakeKind, status: u16, message: &str) -> Self {
        let body = match kind {
            FakeKind::OpenAi => json!({
                "error": { "message": message, "type": "server_error", "param": null, "code": null }
            }),
            FakeKind::Anthropic => json!({
                "type": "error",
                "error": { "type": if status == 529 { "overloaded_error" } else { "api_error" }, "message": message }
            }),
            FakeKind::Gemini => json!({
                "error": { "code": status, "message": message, "status": "UNAVAILABLE" }
            }),
        };
        Self::json(status, body)
    }

    /// 429 with `Retry-After: {seconds}`.
    pub fn rate_limited(kind: FakeKind, retry_after_secs: u64) -> Self {
        Self::error(kind, 429, "rate limit reached")
            .with_header("retry-after", &retry_after_secs.to_string())
    }

    /// A success with `text` and `usage` (input, output) in `kind`'s format; `stream` picks SSE.
    pub fn success(kind: FakeKind, stream: bool, text: &str, usage: Option<(u64, u64)>) -> Self {
        let words: Vec<String> = split_words(text);
        match (kind, stream) {
            (FakeKind::OpenAi, false) => Self::json(200, openai_chat(text, usage, None)),
            (FakeKind::OpenAi, true) => Self::sse(openai_stream(&words, usage, false)),
            (FakeKind::Anthropic, false) => Self::json(200, anthropic_message(text, usage)),
            (FakeKind::Anthropic, true) => Self::sse(anthropic_stream(&words, usage)),
            (FakeKind::Gemini, false) => Self::json(200, gemini_response(text, usage)),
            (FakeKind::Gemini, true) => Self::sse(gemini_stream(&words, usage)),
        }
    }
}

/// `text` in pieces that concatenate back to it: words with their trailing space.
pub fn split_words(text: &str) -> Vec<String> {
    text.split_inclusive(' ').map(str::to_owned).collect()
}

pub fn sse_frame(event: Option<&str>, data: &str) -> String {
    match event {
        Some(event) => format!("event: {event}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    }
}

pub fn openai_chat(
    text: &str,
    usage: Option<(u64, u64)>,
    token_ids: Option<(Vec<u32>, Vec<u32>)>,
) -> Value {
    let mut choice = json!({
        "index": 0,
        "message": { "role": "assistant", "content": text },
        "finish_reason": "stop"
    });
    let mut body = json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "fake",
        "choices": [],
    });
    if let Some((prompt_ids, output_ids)) = token_ids {
        choice["token_ids"] = json!(output_ids);
        body["prompt_token_ids"] = json!(prompt_ids);
    }
    body["choices"] = json!([choice]);
    if let Some((input, output)) = usage {
        body["usage"] = json!({
            "prompt_tokens": input,
            "completion_tokens": output,
            "total_tokens": input + output,
            "prompt_tokens_details": { "cached_tokens": 0 }
        });
    }
    body
}

/// Chat-completion chunks (or legacy completion chunks with `legacy`), a finish chunk, the usage
/// chunk when `usage` is given, and `[DONE]`.
pub fn openai_stream(pieces: &[String], usage: Option<(u64, u64)>, legacy: bool) -> Vec<String> {
    let mut frames = Vec::new();
    if !legacy {
        frames.push(sse_frame(
            None,
            &json!({"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}).to_string(),
        ));
    }
    for piece in pieces {
        let chunk = if legacy {
            json!({"id":"c","object":"text_completion","choices":[{"index":0,"text":piece,"finish_reason":null}]})
        } else {
            json!({"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":piece},"finish_reason":null}]})
        };
        frames.push(sse_frame(None, &chunk.to_string()));
    }
    let finish = if legacy {
        json!({"id":"c","choices":[{"index":0,"text":"","finish_reason":"stop"}]})
    } else {
        json!({"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]})
    };
    frames.push(sse_frame(None, &finish.to_string()));
    if let Some((input, output)) = usage {
        frames.push(sse_frame(
            None,
            &json!({"id":"c","choices":[],"usage":{"prompt_tokens":input,"completion_tokens":output,"total_tokens":input+output}}).to_string(),
        ));
    }
    frames.push(sse_frame(None, "[DONE]"));
    frames
}

pub fn anthropic_message(text: &str, usage: Option<(u64, u64)>) -> Value {
    let (input, output) = usage.unwrap_or((0, 0));
    json!({
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": "fake",
        "content": [{ "type": "text", "text": text }],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {
            "input_tokens": input,
            "output_tokens": output,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0
        }
    })
}

pub fn anthropic_stream(pieces: &[String], usage: Option<(u64, u64)>) -> Vec<String> {
    let (input, output) = usage.unwrap_or((0, 0));
    let mut frames = vec![
        sse_frame(
            Some("message_start"),
            &json!({"type":"message_start","message":{"id":"msg_fake","type":"message","role":"assistant","content":[],"model":"fake","stop_reason":null,"usage":{"input_tokens":input,"output_tokens":1,"cache_creation_input_tokens":0,"cache_read_input_tokens":0}}}).to_string(),
        ),
        sse_frame(
            Some("content_block_start"),
            &json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}).to_string(),
        ),
        sse_frame(Some("ping"), &json!({"type":"ping"}).to_string()),
    ];
    for piece in pieces {
        frames.push(sse_frame(
            Some("content_block_delta"),
            &json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":piece}}).to_string(),
        ));
    }
    frames.push(sse_frame(
        Some("content_block_stop"),
        &json!({"type":"content_block_stop","index":0}).to_string(),
    ));
    frames.push(sse_frame(
        Some("message_delta"),
        &json!({"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":output}}).to_string(),
    ));
    frames.push(sse_frame(
        Some("message_stop"),
        &json!({"type":"message_stop"}).to_string(),
    ));
    frames
}

pub fn gemini_response(text: &str, usage: Option<(u64, u64)>) -> Value {
    let mut body = json!({
        "candidates": [{
            "content": { "role": "model", "parts": [{ "text": text }] },
            "finishReason": "STOP",
            "index": 0
        }],
        "modelVersion": "fake"
    });
    if let Some((input, output)) = usage {
        body["usageMetadata"] = json!({
            "promptTokenCount": input,
            "candidatesTokenCount": output,
            "totalTokenCount": input + output
        });
    }
    body
}

pub fn gemini_stream(pieces: &[String], usage: Option<(u64, u64)>) -> Vec<String> {
    let count = pieces.len();
    pieces
        .iter()
        .enumerate()
        .map(|(index, piece)| {
            let mut chunk = json!({
                "candidates": [{ "content": { "role": "model", "parts": [{ "text": piece }] }, "index": 0 }],
            });
            if index + 1 == count {
                chunk["candidates"][0]["finishReason"] = json!("STOP");
                if let Some((input, output)) = usage {
                    chunk["usageMetadata"] = json!({
                        "promptTokenCount": input,
                        "candidatesTokenCount": output,
                        "totalTokenCount": input + output
                    });
                }
            }
            sse_frame(None, &chunk.to_string())
        })
        .collect()
}

#[derive(Debug)]
struct FakeState {
    kind: FakeKind,
    queue: Mutex<VecDeque<FakeReply>>,
    requests: Mutex<Vec<RecordedRequest>>,
    /// How long a default (not queued) reply waits before answering, in microseconds.
    default_delay_micros: AtomicU64,
}

/// Between half and one and a half times `base_micros`, by an FNV-1a hash of the prompt's text
/// in `body`: every string under a `content` or `text` key, in order (OpenAI, Anthropic and
/// Gemini bodies, plain or as parts).
fn spread_delay(base_micros: u64, body: &Value) -> Duration {
    fn prompt_strings<'a>(value: &'a Value, under_text_key: bool, out: &mut Vec<&'a str>) {
        match value {
            Value::String(text) if under_text_key => out.push(text),
            Value::Array(items) => {
                for item in items {
                    prompt_strings(item, under_text_key, out);
                }
            }
            Value::Object(fields) => {
                for (key, field) in fields {
                    prompt_strings(field, key == "content" || key == "text", out);
                }
            }
            _ => {}
        }
    }
    if base_micros == 0 {
        return Duration::ZERO;
    }
    let mut strings = Vec::new();
    prompt_strings(body, false, &mut strings);
    let hash = strings
        .iter()
        .flat_map(|text| text.bytes())
        .fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
    // The top 53 bits, after a multiplicative mix, as a fraction in [0, 1).
    let fraction = (hash.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64;
    Duration::from_micros((base_micros as f64 * (0.5 + fraction)) as u64)
}

/// A running fake provider; stops when dropped.
#[derive(Debug)]
pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub kind: FakeKind,
    state: Arc<FakeState>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeUpstream {
    pub async fn start(kind: FakeKind) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(FakeState {
            kind,
            queue: Mutex::new(VecDeque::new()),
            requests: Mutex::new(Vec::new()),
            default_delay_micros: AtomicU64::new(0),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&state));
        let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
            let _ = stream.set_nodelay(true);
        });
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            kind,
            state,
            server,
        })
    }

    /// What to put in the provider's `base_url`: with `/v1` for OpenAI-compatible servers.
    pub fn base_url(&self) -> String {
        match self.kind {
            FakeKind::OpenAi => format!("http://{}/v1", self.addr),
            FakeKind::Anthropic | FakeKind::Gemini => format!("http://{}", self.addr),
        }
    }

    /// Makes every default (not queued) reply wait first, as a real model takes time to answer:
    /// between half and one and a half times `delay`, chosen by a hash of the prompt's text (a
    /// fixed delay would keep concurrent callers in lockstep, arriving in bursts; a delay that
    /// depends only on the prompt gives the same prompts the same delays, whoever sends them and
    /// in whatever JSON shape). Zero (the default) answers at once.
    pub fn set_default_delay(&self, delay: Duration) {
        let micros = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.state
            .default_delay_micros
            .store(micros, Ordering::Relaxed);
    }

    /// Queues a reply; queued replies are used in order, before the default success.
    pub fn push(&self, reply: FakeReply) {
        lock(&self.state.queue).push_back(reply);
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.requests).clone()
    }

    pub fn request_count(&self) -> usize {
        lock(&self.state.requests).len()
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn handle(
    State(state): State<Arc<FakeState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let recorded = RecordedRequest {
        method: method.to_string(),
        path: uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| uri.path().to_owned()),
        headers: headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    value.to_str().unwrap_or_default().to_owned(),
                )
            })
            .collect(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    let queued = lock(&state.queue).pop_front();
    let reply = queued.unwrap_or_else(|| {
        let base = state.default_delay_micros.load(Ordering::Relaxed);
        default_reply(state.kind, &recorded).with_delay(spread_delay(base, &recorded.body))
    });
    lock(&state.requests).push(recorded);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut builder = Response::builder()
        .status(StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    let has_content_type = reply
        .headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("content-type"));
    for (name, value) in &reply.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let body = match reply.body {
        FakeBody::Json(value) => {
            if !has_content_type {
                builder = builder.header("content-type", "application/json");
            }
            Body::from(value.to_string())
        }
        FakeBody::Raw(text) => Body::from(text),
        FakeBody::Sse { frames, gap } => {
            let (frames_tx, frames_rx) = tokio::sync::mpsc::channel::<Bytes>(16);
            tokio::spawn(async move {
                for frame in frames {
                    if !gap.is_zero() {
                        tokio::time::sleep(gap).await;
                    }
                    if frames_tx.send(Bytes::from(frame)).await.is_err() {
                        return;
                    }
                }
            });
            Body::from_stream(
                tokio_stream::wrappers::ReceiverStream::new(frames_rx).map(Ok::<Bytes, Infallible>),
            )
        }
    };
    builder
        .body(body)
        .unwrap_or_else(|_| Response::new(Body::from("bad fake reply")))
}

/// A well-formed success for whatever was asked, in `kind`'s format.
fn default_reply(kind: FakeKind, request: &RecordedRequest) -> FakeReply {
    let stream = request.body.get("stream").and_then(Value::as_bool) == Some(true)
        || request.path.contains(":streamGenerateContent");
    if kind == FakeKind::OpenAi {
        if request.path.ends_with("/embeddings") {
            let inputs = request
                .body
                .get("input")
                .and_then(Value::as_array)
                .map_or(1, Vec::len);
            let data: Vec<Value> = (0..inputs)
                .map(|index| json!({"object":"embedding","index":index,"embedding":[0.1, 0.2, 0.3, index as f64]}))
                .collect();
            return FakeReply::json(
                200,
                json!({"object":"list","data":data,"model":"fake","usage":{"prompt_tokens":inputs * 3,"total_tokens":inputs * 3}}),
            );
        }
        if request.path.ends_with("/completions") && !request.path.ends_with("/chat/completions") {
            let prompt_len = request
                .body
                .get("prompt")
                .and_then(Value::as_array)
                .map_or(0, Vec::len) as u64;
            let usage = (prompt_len, DEFAULT_USAGE.1);
            if stream {
                return FakeReply::sse(openai_stream(
                    &split_words(DEFAULT_ANSWER),
                    Some(usage),
                    true,
                ));
            }
            return FakeReply::json(
                200,
                json!({
                    "id": "cmpl-fake", "object": "text_completion", "model": "fake",
                    "choices": [{ "index": 0, "text": DEFAULT_ANSWER, "finish_reason": "stop" }],
                    "usage": { "prompt_tokens": usage.0, "completion_tokens": usage.1, "total_tokens": usage.0 + usage.1 }
                }),
            );
        }
        if !stream
            && request
                .body
                .get("return_token_ids")
                .and_then(Value::as_bool)
                == Some(true)
        {
            return FakeReply::json(
                200,
                openai_chat(
                    DEFAULT_ANSWER,
                    Some(DEFAULT_USAGE),
                    Some((vec![101, 102, 103], vec![7, 8, 9])),
                ),
            );
        }
    }
    FakeReply::success(kind, stream, DEFAULT_ANSWER, Some(DEFAULT_USAGE))
}

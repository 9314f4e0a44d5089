//! Configuration of the provider-adapter service: the `[provider_adapter]` section of
//! `tollgate.toml`, overridden by `TOLLGATE_PROVIDER_ADAPTER__*` environment variables.
//!
//! The catalog lives here: `[[provider_adapter.providers]]` (where and how to call an upstream),
//! `[[provider_adapter.models]]` (what each model is, costs and can do) and
//! `[[provider_adapter.groups]]` (fallback chains). API keys never appear in this file: a provider
//! names the environment variable or the mounted file that holds its key.
//!
//! The default (no file) is the offline `mock` provider with mock models on every tier, so that
//! `tollgate serve` works with no keys. A file that lists providers or models replaces the
//! default lists as a whole.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tollgate_kit::config::ListenConfig;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderAdapterConfig {
    /// gRPC on 50055, `/metrics` and `/healthz` on 9105 by default (loopback; pods set 0.0.0.0).
    pub listen: ListenConfig,
    pub providers: Vec<ProviderConfig>,
    pub models: Vec<ModelConfig>,
    /// Fallback chains, each tried in order. An array of tables like providers and models so
    /// that a file's groups replace the default ones instead of merging with them.
    pub groups: Vec<GroupConfig>,
    pub retry: RetryConfig,
    pub breaker: BreakerConfig,
    pub limits: LimitsConfig,
}

impl Default for ProviderAdapterConfig {
    fn default() -> Self {
        let mock_model =
            |id: &str, tier, capabilities: &[Capability], prices: [&str; 2]| ModelConfig {
                id: id.to_owned(),
                provider: "mock".to_owned(),
                upstream_model: None,
                tier,
                capabilities: capabilities.to_vec(),
                context_window: 32_768,
                max_output_tokens: 4_096,
                input_per_mtok_usd: prices[0].to_owned(),
                output_per_mtok_usd: prices[1].to_owned(),
                cached_input_per_mtok_usd: None,
                cache_write_per_mtok_usd: None,
                tokenizer: default_tokenizer(),
                embedding_dimensions: None,
            };
        use Capability::{Embeddings, JsonMode, Streaming, TokenIds, Tools, Vision};
        let mut embed = mock_model("mock-embed", TierName::Local, &[Embeddings], ["0.02", "0"]);
        embed.embedding_dimensions = Some(64);
        Self {
            listen: ListenConfig::loopback(50055, 9105),
            providers: vec![ProviderConfig::mock("mock")],
            // The mock's prices are made up (round figures in the range of real ones) so that
            // cost accounting can be exercised offline.
            models: vec![
                mock_model(
                    "mock-local",
                    TierName::Local,
                    &[TokenIds, JsonMode, Streaming],
                    ["0", "0"],
                ),
                mock_model(
                    "mock-cheap",
                    TierName::Cheap,
                    &[JsonMode, Streaming],
                    ["0.15", "0.6"],
                ),
                mock_model(
                    "mock-standard",
                    TierName::Standard,
                    &[Vision, Tools, JsonMode, Streaming],
                    ["2.5", "10"],
                ),
                mock_model(
                    "mock-premium",
                    TierName::Premium,
                    &[Vision, Tools, JsonMode, Streaming],
                    ["15", "75"],
                ),
                embed,
            ],
            groups: vec![
                GroupConfig::new(
                    "default",
                    &["mock-local", "mock-cheap", "mock-standard", "mock-premium"],
                ),
                GroupConfig::new("vision", &["mock-standard", "mock-premium"]),
            ],
            retry: RetryConfig::default(),
            breaker: BreakerConfig::default(),
            limits: LimitsConfig::default(),
        }
    }
}

/// A named fallback chain: catalog model ids, tried in order (cheap to strong).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    pub name: String,
    pub models: Vec<String>,
}

impl GroupConfig {
    pub fn new(name: &str, models: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            models: models.iter().map(|m| (*m).to_owned()).collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI and every OpenAI-compatible server (vLLM, Ollama /v1, DashScope compatible mode).
    Openai,
    Anthropic,
    Gemini,
    /// Built in, offline, deterministic.
    Mock,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Anthropic => "anthropic",
            Self::Gemini => "gemini",
            Self::Mock => "mock",
        }
    }

    pub fn default_base_url(self) -> &'static str {
        match self {
            Self::Openai => "https://api.openai.com/v1",
            Self::Anthropic => "https://api.anthropic.com",
            Self::Gemini => "https://generativelanguage.googleapis.com",
            Self::Mock => "",
        }
    }
}

/// One upstream endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Referenced by models; also the `provider` metric label.
    pub name: String,
    pub kind: ProviderKind,
    /// For `openai` including the version path (`https://api.openai.com/v1`,
    /// `http://vllm:8000/v1`); for `anthropic` and `gemini` the host. Default: the kind's
    /// public endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// Environment variable holding the API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// File holding the API key (a mounted Kubernetes secret), read at start-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<PathBuf>,
    /// Bound on establishing a TCP/TLS connection.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Bound on one attempt: a whole unary call, or a stream up to its first chunk.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Bound on the silence between two chunks of a stream.
    #[serde(default = "default_stream_idle_timeout_ms")]
    pub stream_idle_timeout_ms: u64,
    /// HTTP statuses that are retryable for this provider besides 408, 429 and 5xx (DashScope
    /// answers 403 when a model's quota is used up).
    #[serde(default)]
    pub retryable_statuses: Vec<u16>,
    /// `mock` only: time before answering (and between streamed chunks, a tenth of it).
    #[serde(default)]
    pub mock_latency_ms: u64,
    /// `mock` only: share of calls, 0-100, that fail with a simulated 503.
    #[serde(default)]
    pub mock_failure_percent: u8,
}

impl ProviderConfig {
    pub fn mock(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            kind: ProviderKind::Mock,
            base_url: None,
            api_key_env: None,
            api_key_file: None,
            connect_timeout_ms: default_connect_timeout_ms(),
            timeout_ms: default_timeout_ms(),
            stream_idle_timeout_ms: default_stream_idle_timeout_ms(),
            retryable_statuses: Vec::new(),
            mock_latency_ms: 0,
            mock_failure_percent: 0,
        }
    }

    /// A provider of `kind` at `base_url` with the default timeouts and no key.
    pub fn new(name: &str, kind: ProviderKind, base_url: &str) -> Self {
        Self {
            kind,
            base_url: Some(base_url.to_owned()),
            ..Self::mock(name)
        }
    }
}

fn default_connect_timeout_ms() -> u64 {
    2_000
}
fn default_timeout_ms() -> u64 {
    60_000
}
fn default_stream_idle_timeout_ms() -> u64 {
    30_000
}
fn default_tokenizer() -> String {
    "o200k_base".to_owned()
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TierName {
    Local,
    Cheap,
    Standard,
    Premium,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    Vision,
    Tools,
    /// Accepts a prompt as token IDs (vLLM, OpenAI legacy completions).
    TokenIds,
    Embeddings,
    JsonMode,
    Streaming,
}

/// One catalog model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Catalog id callers use (`gpt-4o-mini`).
    pub id: String,
    /// A provider `name`.
    pub provider: String,
    /// Model name sent upstream; default: `id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_model: Option<String>,
    pub tier: TierName,
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    pub context_window: u64,
    pub max_output_tokens: u64,
    /// Prices per million tokens, exact decimal strings (at most 6 fractional digits).
    pub input_per_mtok_usd: String,
    pub output_per_mtok_usd: String,
    /// Default: the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_mtok_usd: Option<String>,
    /// Default: the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_per_mtok_usd: Option<String>,
    /// tiktoken encoding used to count tokens (o200k_base, cl100k_base, p50k_base, r50k_base);
    /// for non-OpenAI models it is an estimate.
    #[serde(default = "default_tokenizer")]
    pub tokenizer: String,
    /// `mock` embedding models: vector length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_dimensions: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts on one model before moving to the next of the chain (1 = no retry).
    pub max_attempts_per_model: u32,
    /// First backoff; doubles each retry, with full jitter, up to `max_backoff_ms`.
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// A Retry-After longer than this moves on to the next model instead of waiting.
    pub max_retry_after_ms: u64,
    /// Bound on a whole call, all attempts included; a shorter grpc-timeout wins.
    pub overall_timeout_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts_per_model: 2,
            initial_backoff_ms: 50,
            max_backoff_ms: 2_000,
            max_retry_after_ms: 5_000,
            overall_timeout_ms: 120_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive retryable failures that open a provider's circuit.
    pub failure_threshold: u32,
    /// Time an open circuit rejects calls before one half-open probe is let through.
    pub cool_down_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            cool_down_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_messages: usize,
    pub max_embed_inputs: usize,
    pub max_stop_sequences: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_messages: 1_000,
            max_embed_inputs: 2_048,
            max_stop_sequences: 16,
        }
    }
}

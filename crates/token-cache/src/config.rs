//! Configuration of the token-cache service: the `[token_cache]` section of `tollgate.toml`, overridden by
//! `TOLLGATE_TOKEN_CACHE__*` environment variables. Redis (L2) is turned on by `storage.redis_url`
//! (`REDIS_URL`), which lives in the shared `[storage]` section.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tollgate_kit::config::ListenConfig;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TokenCacheConfig {
    /// gRPC on 50052, `/metrics` and `/healthz` on 9102 by default (loopback; pods set 0.0.0.0).
    pub listen: ListenConfig,
    /// Time to live of cached tokens and registered documents, unless the collection has its own.
    pub default_ttl_secs: u64,
    /// Per-collection TTL overrides: `[token_cache.collection_ttl_secs]` `docs = 3600`.
    pub collection_ttl_secs: BTreeMap<String, u64>,
    /// Upper bound of the in-process L1, in bytes: token IDs (4 per token), the text they were
    /// tokenized from (an L1 hit is checked against it) and a small overhead per segment.
    pub l1_max_bytes: u64,
    /// Time budget of one Redis call; past it the call counts as an error and the request goes
    /// on without Redis.
    pub redis_timeout_ms: u64,
    /// Prefix of every Redis key this service writes.
    pub key_prefix: String,
    /// Most documents in one GetContext or PutDocuments request.
    pub max_documents: usize,
    /// Largest document text, in bytes.
    pub max_document_bytes: usize,
    /// Texts at least this long are tokenized on the blocking pool rather than on the async
    /// runtime (roughly 100 µs of tokenizing).
    pub blocking_threshold_bytes: usize,
    /// Catalog model id -> tokenizer name, so callers may pass the model they are about to call.
    pub models: BTreeMap<String, String>,
    /// Hugging Face tokenizers (`tokenizer.json`) for open models: `[[token_cache.tokenizers]]`
    /// with `name` and `path`.
    pub tokenizers: Vec<crate::tokenizer::TokenizerFile>,
}

impl Default for TokenCacheConfig {
    fn default() -> Self {
        Self {
            listen: ListenConfig::loopback(50052, 9102),
            default_ttl_secs: 300,
            collection_ttl_secs: BTreeMap::new(),
            l1_max_bytes: 256 * 1024 * 1024,
            redis_timeout_ms: 20,
            key_prefix: "tollgate:tc:".into(),
            max_documents: 1024,
            max_document_bytes: 4 * 1024 * 1024,
            blocking_threshold_bytes: 2048,
            models: BTreeMap::new(),
            tokenizers: Vec::new(),
        }
    }
}

impl TokenCacheConfig {
    pub fn ttl_for(&self, collection: &str) -> Duration {
        Duration::from_secs(
            self.collection_ttl_secs
                .get(collection)
                .copied()
                .unwrap_or(self.default_ttl_secs)
                .max(1),
        )
    }

    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms.max(1))
    }
}

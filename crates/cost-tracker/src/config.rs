//! Configuration of the cost-tracker service: the `[cost_tracker]` section of `tollgate.toml`, overridden by
//! `TOLLGATE_COST_TRACKER__*` environment variables.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tollgate_kit::config::ListenConfig;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct CostTrackerConfig {
    /// gRPC on 50054, `/metrics` and `/healthz` on 9104 by default (loopback; pods set 0.0.0.0).
    pub listen: ListenConfig,
    /// Connections to Postgres per instance (SQLite uses a few readers and one writer).
    pub max_connections: u32,
    /// How long a request waits for a database connection before it fails with UNAVAILABLE:
    /// short, so that callers (the router's outbox) spool and retry instead of hanging.
    pub acquire_timeout_ms: u64,
    /// Rows per chunk of an Export stream.
    pub export_chunk_rows: u32,
    /// Prices used when a record comes without a cost, keyed by model id. The provider
    /// adapter's catalog is the source of truth; the router normally sends the cost itself.
    pub prices: BTreeMap<String, PriceConfig>,
}

/// Prices per million tokens, exact decimal strings ("0.15"); at most 6 fractional digits.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct PriceConfig {
    pub input_per_mtok_usd: String,
    pub output_per_mtok_usd: String,
    /// Cached input tokens; the input price when empty.
    pub cached_input_per_mtok_usd: String,
    /// Input tokens written to the provider's prompt cache; the input price when empty.
    pub cache_write_per_mtok_usd: String,
}

impl Default for CostTrackerConfig {
    fn default() -> Self {
        Self {
            listen: ListenConfig::loopback(50054, 9104),
            max_connections: 16,
            acquire_timeout_ms: 2000,
            export_chunk_rows: 1000,
            prices: BTreeMap::new(),
        }
    }
}

//! Configuration of the casebank service: the `[casebank]` section of `tollgate.toml`, overridden by
//! `TOLLGATE_CASEBANK__*` environment variables. The store follows `storage.database_url`:
//! Postgres when set, otherwise `casebank.sqlite` under `storage.data_dir`.

use serde::{Deserialize, Serialize};
use tollgate_kit::config::ListenConfig;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct CasebankConfig {
    /// gRPC on 50053, `/metrics` and `/healthz` on 9103 by default (loopback; pods set 0.0.0.0).
    pub listen: ListenConfig,
    /// Largest task text accepted, in bytes.
    pub max_task_bytes: usize,
    /// Bound on one store call of Retrieve and Estimate; past it they answer UNAVAILABLE.
    pub store_timeout_ms: u64,
    pub embedder: EmbedderConfig,
    pub postgres: PostgresConfig,
}

impl Default for CasebankConfig {
    fn default() -> Self {
        Self {
            listen: ListenConfig::loopback(50053, 9103),
            max_task_bytes: 32 * 1024,
            store_timeout_ms: 1000,
            embedder: EmbedderConfig::default(),
            postgres: PostgresConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum EmbedderKind {
    /// Built in: feature-hashed word and character n-grams; no model files, microseconds.
    #[default]
    Hash,
    /// An embedding model behind the provider-adapter's `Embed` RPC (`peers.provider_adapter`).
    Remote,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct EmbedderConfig {
    pub kind: EmbedderKind,
    /// Dimension of the hash embedder's vectors.
    pub dimension: usize,
    /// Catalog model id for `kind = "remote"` (e.g. `text-embedding-3-small`).
    pub remote_model: String,
    pub remote_timeout_ms: u64,
}

impl Default for EmbedderConfig {
    fn default() -> Self {
        Self {
            kind: EmbedderKind::Hash,
            dimension: 384,
            remote_model: String::new(),
            remote_timeout_ms: 2000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    pub max_connections: u32,
    /// Bound on getting a connection (including connecting): how fast an outage shows.
    pub acquire_timeout_ms: u64,
    /// pgvector `hnsw.ef_search`: candidates per search; 100 gives recall@4 >= 0.95 at 100k cases on the benchmark (BENCHMARKS.md).
    pub hnsw_ef_search: u32,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout_ms: 250,
            hnsw_ef_search: 100,
        }
    }
}

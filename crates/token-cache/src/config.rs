//! Configuration of the token-cache service: the `[token_cache]` section of `tollgate.toml`, overridden by
//! `TOLLGATE_TOKEN_CACHE__*` environment variables.

use serde::{Deserialize, Serialize};
use tollgate_kit::config::ListenConfig;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TokenCacheConfig {
    /// gRPC on 50052, `/metrics` and `/healthz` on 9102 by default (loopback; pods set 0.0.0.0).
    pub listen: ListenConfig,
}

impl Default for TokenCacheConfig {
    fn default() -> Self {
        Self {
            listen: ListenConfig::loopback(50052, 9102),
        }
    }
}

//! Configuration of the provider-adapter service: the `[provider_adapter]` section of `tollgate.toml`, overridden by
//! `TOLLGATE_PROVIDER_ADAPTER__*` environment variables.

use serde::{Deserialize, Serialize};
use tollgate_kit::config::ListenConfig;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderAdapterConfig {
    /// gRPC on 50055, `/metrics` and `/healthz` on 9105 by default (loopback; pods set 0.0.0.0).
    pub listen: ListenConfig,
}

impl Default for ProviderAdapterConfig {
    fn default() -> Self {
        Self {
            listen: ListenConfig::loopback(50055, 9105),
        }
    }
}

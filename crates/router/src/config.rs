//! Configuration of the router service: the `[router]` section of `tollgate.toml`, overridden by
//! `TOLLGATE_ROUTER__*` environment variables.

use serde::{Deserialize, Serialize};
use tollgate_kit::config::ListenConfig;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// gRPC on 50051, `/metrics` and `/healthz` on 9101 by default (loopback; pods set 0.0.0.0).
    pub listen: ListenConfig,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            listen: ListenConfig::loopback(50051, 9101),
        }
    }
}

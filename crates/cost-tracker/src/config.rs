//! Configuration of the cost-tracker service: the `[cost_tracker]` section of `tollgate.toml`, overridden by
//! `TOLLGATE_COST_TRACKER__*` environment variables.

use serde::{Deserialize, Serialize};
use tollgate_kit::config::ListenConfig;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct CostTrackerConfig {
    /// gRPC on 50054, `/metrics` and `/healthz` on 9104 by default (loopback; pods set 0.0.0.0).
    pub listen: ListenConfig,
}

impl Default for CostTrackerConfig {
    fn default() -> Self {
        Self {
            listen: ListenConfig::loopback(50054, 9104),
        }
    }
}

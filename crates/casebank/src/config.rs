//! Configuration of the casebank service: the `[casebank]` section of `tollgate.toml`, overridden by
//! `TOLLGATE_CASEBANK__*` environment variables.

use serde::{Deserialize, Serialize};
use tollgate_kit::config::ListenConfig;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct CasebankConfig {
    /// gRPC on 50053, `/metrics` and `/healthz` on 9103 by default (loopback; pods set 0.0.0.0).
    pub listen: ListenConfig,
}

impl Default for CasebankConfig {
    fn default() -> Self {
        Self {
            listen: ListenConfig::loopback(50053, 9103),
        }
    }
}

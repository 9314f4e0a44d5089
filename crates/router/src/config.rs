//! Configuration of the router service: the `[router]` section of `tollgate.toml`, overridden by
//! `TOLLGATE_ROUTER__*` environment variables. The routing policy is `[router.policy]`, or a
//! file of its own (`policy_file`) that is reloaded when it changes.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tollgate_kit::config::ListenConfig;

use crate::policy::PolicyConfig;
use crate::tenants::AuthConfig;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// gRPC on 50051, `/metrics` and `/healthz` on 9101 by default (loopback; pods set 0.0.0.0).
    pub listen: ListenConfig,
    /// The routing policy when no `policy_file` is set.
    pub policy: PolicyConfig,
    /// A TOML file with the keys of `[router.policy]`; watched and reloaded without a restart
    /// (an invalid version is refused and the previous policy stays in force).
    pub policy_file: Option<PathBuf>,
    /// Time budget of token-cache calls; slower means "unavailable" and context goes as text.
    pub token_cache_timeout_ms: u64,
    /// Time budget of the background StoreCase call.
    pub case_store_timeout_ms: u64,
    /// API keys and rate limits (`[router.auth]`); on unless explicitly switched off.
    pub auth: AuthConfig,
    /// When set (`make run` sets `dev`), this tenant is created or gets a fresh key at start-up,
    /// and the key is printed on stderr: a ready-to-use development key, with auth still on.
    pub dev_tenant: Option<String>,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            listen: ListenConfig::loopback(50051, 9101),
            policy: PolicyConfig::default(),
            policy_file: None,
            token_cache_timeout_ms: 100,
            case_store_timeout_ms: 2000,
            auth: AuthConfig::default(),
            dev_tenant: None,
        }
    }
}

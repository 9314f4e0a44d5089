//! The whole configuration of a tollgate process: shared sections from tollgate-kit plus one
//! section per service, each owned by its service crate. Loaded by
//! [`tollgate_kit::config::load`]: defaults, then `--config FILE`, then `TOLLGATE_*` variables.

use serde::{Deserialize, Serialize};
use tollgate_casebank::CasebankConfig;
use tollgate_cost_tracker::CostTrackerConfig;
use tollgate_kit::config::{PeersConfig, ServerConfig, StorageConfig};
use tollgate_kit::telemetry::TelemetryConfig;
use tollgate_provider_adapter::ProviderAdapterConfig;
use tollgate_router::RouterConfig;
use tollgate_token_cache::TokenCacheConfig;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub telemetry: TelemetryConfig,
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub peers: PeersConfig,
    pub router: RouterConfig,
    pub token_cache: TokenCacheConfig,
    pub casebank: CasebankConfig,
    pub cost_tracker: CostTrackerConfig,
    pub provider_adapter: ProviderAdapterConfig,
}

impl Config {
    /// Every listener on 127.0.0.1:0: for tests and for several gateways on one machine.
    pub fn with_ephemeral_ports(mut self) -> Self {
        let ephemeral = tollgate_kit::config::ListenConfig::loopback(0, 0);
        self.router.listen = ephemeral.clone();
        self.token_cache.listen = ephemeral.clone();
        self.casebank.listen = ephemeral.clone();
        self.cost_tracker.listen = ephemeral.clone();
        self.provider_adapter.listen = ephemeral;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ports_follow_the_design() {
        let config = Config::default();
        let ports: Vec<(u16, u16)> = [
            &config.router.listen,
            &config.token_cache.listen,
            &config.casebank.listen,
            &config.cost_tracker.listen,
            &config.provider_adapter.listen,
        ]
        .iter()
        .map(|listen| (listen.grpc.port(), listen.metrics.port()))
        .collect();
        assert_eq!(
            ports,
            vec![
                (50051, 9101),
                (50052, 9102),
                (50053, 9103),
                (50054, 9104),
                (50055, 9105)
            ]
        );
    }

    #[test]
    fn the_example_config_is_valid_and_complete() {
        let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/tollgate.example.toml");
        let loaded: Result<Config, _> = tollgate_kit::config::load(Some(&example));
        assert!(loaded.is_ok(), "{loaded:?}");
    }
}

//! The router's copy of the provider-adapter's model catalog: which models exist in which tier,
//! what they can do, what they cost and whether their circuit is open. Loaded with
//! `ListModels` and refreshed in the background, so that no request waits for it (the first
//! request after start-up loads it when the background load has not finished yet).
//!
//! Model choice lives here: the candidates for a tier decision, in the order the router tries
//! them (the tier's models cheapest first, then stronger tiers; never below the decision's floor).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::Mutex;
use tollgate_kit::grpc::client::TracedChannel;
use tollgate_kit::money::Usd;
use tollgate_kit::shutdown::Shutdown;
use tollgate_proto::v1 as pb;
use tollgate_proto::v1::provider_adapter_client::ProviderAdapterClient;

use crate::policy::TierModels;
use crate::tier::Tier;

/// How often the catalog (prices, circuit states) is refreshed.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq)]
pub struct CatalogModel {
    pub id: String,
    pub provider: String,
    pub tier: Tier,
    pub vision: bool,
    pub token_ids: bool,
    pub json_mode: bool,
    pub streaming: bool,
    /// Embedding-only models never serve completions.
    pub completions: bool,
    pub context_window: u64,
    pub max_output_tokens: u64,
    pub input_price: Usd,
    pub output_price: Usd,
    pub tokenizer: String,
    pub circuit_open: bool,
}

impl CatalogModel {
    /// Exact cost of `input` and `output` tokens at list price (no cache discount: an upper
    /// bound for budget reservations).
    pub fn cost(&self, input: u64, output: u64) -> Usd {
        let input_cost = Usd::cost_of_tokens(input, self.input_price).unwrap_or(Usd::ZERO);
        let output_cost = Usd::cost_of_tokens(output, self.output_price).unwrap_or(Usd::ZERO);
        input_cost.checked_add(output_cost).unwrap_or(Usd::ZERO)
    }

    /// Price order within a tier: a typical request is mostly input, so input counts thrice.
    fn price_key(&self) -> rust_decimal::Decimal {
        self.input_price.as_decimal() * rust_decimal::Decimal::from(3)
            + self.output_price.as_decimal()
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    pub models: Vec<CatalogModel>,
}

impl Catalog {
    pub fn from_proto(response: &pb::ListModelsResponse) -> Self {
        let models = response
            .models
            .iter()
            .filter_map(|model| {
                let tier = Tier::from_proto(model.tier)?;
                let capabilities = model.capabilities.unwrap_or_default();
                let price = model.price.clone().unwrap_or_default();
                let parse =
                    |text: &str| Usd::parse_non_negative("price", text).unwrap_or(Usd::ZERO);
                Some(CatalogModel {
                    id: model.id.clone(),
                    provider: model.provider.clone(),
                    tier,
                    vision: capabilities.vision,
                    token_ids: capabilities.token_ids,
                    json_mode: capabilities.json_mode,
                    streaming: capabilities.streaming,
                    completions: !(capabilities.embeddings
                        && !capabilities.streaming
                        && !capabilities.json_mode
                        && !capabilities.tools),
                    context_window: model.context_window,
                    max_output_tokens: model.max_output_tokens,
                    input_price: parse(&price.input_per_mtok_usd),
                    output_price: parse(&price.output_per_mtok_usd),
                    tokenizer: model.tokenizer.clone(),
                    circuit_open: model
                        .health
                        .as_ref()
                        .is_some_and(|health| health.circuit == pb::CircuitState::Open as i32),
                })
            })
            .collect();
        Self { models }
    }

    pub fn get(&self, id: &str) -> Option<&CatalogModel> {
        self.models.iter().find(|model| model.id == id)
    }

    /// The models to try for a decision, in order: `tier`'s models (the policy's list, else the
    /// catalog's by price), then each stronger tier's. Vision-only when `needs_vision`. Models
    /// whose circuit is open go last within their tier (the adapter may have recovered them).
    pub fn candidates(
        &self,
        configured: &TierModels,
        tier: Tier,
        needs_vision: bool,
    ) -> Vec<&CatalogModel> {
        let mut ordered = Vec::new();
        for tier in Tier::ALL.into_iter().filter(|t| *t >= tier) {
            let mut in_tier: Vec<&CatalogModel> = if configured.for_tier(tier).is_empty() {
                let mut models: Vec<&CatalogModel> = self
                    .models
                    .iter()
                    .filter(|model| model.tier == tier)
                    .collect();
                models.sort_by_key(|model| model.price_key());
                models
            } else {
                configured
                    .for_tier(tier)
                    .iter()
                    .filter_map(|id| self.get(id))
                    .collect()
            };
            in_tier.retain(|model| model.completions && (!needs_vision || model.vision));
            // Stable: keeps price order among healthy and among open-circuit models.
            in_tier.sort_by_key(|model| model.circuit_open);
            ordered.extend(in_tier);
        }
        ordered
    }
}

/// The catalog in force, refreshed in the background.
#[derive(Debug, Clone)]
pub struct CatalogHandle {
    current: Arc<RwLock<Arc<Catalog>>>,
    client: ProviderAdapterClient<TracedChannel>,
    /// Serialises on-demand loads so that a burst of first requests makes one call.
    loading: Arc<Mutex<()>>,
}

impl CatalogHandle {
    pub fn new(channel: TracedChannel) -> Self {
        Self {
            current: Arc::new(RwLock::new(Arc::new(Catalog::default()))),
            client: ProviderAdapterClient::new(channel),
            loading: Arc::new(Mutex::new(())),
        }
    }

    /// A handle with a fixed catalog (tests, offline tools).
    pub fn fixed(channel: TracedChannel, catalog: Catalog) -> Self {
        let handle = Self::new(channel);
        handle.store(catalog);
        handle
    }

    pub fn current(&self) -> Arc<Catalog> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn store(&self, catalog: Catalog) {
        let catalog = Arc::new(catalog);
        match self.current.write() {
            Ok(mut guard) => *guard = catalog,
            Err(poisoned) => *poisoned.into_inner() = catalog,
        }
    }

    /// The catalog, loading it first when nothing was loaded yet.
    pub async fn loaded(&self) -> Result<Arc<Catalog>, tonic::Status> {
        let current = self.current();
        if !current.models.is_empty() {
            return Ok(current);
        }
        let _guard = self.loading.lock().await;
        let current = self.current();
        if !current.models.is_empty() {
            return Ok(current);
        }
        self.refresh().await?;
        Ok(self.current())
    }

    pub async fn refresh(&self) -> Result<(), tonic::Status> {
        let mut request = tonic::Request::new(pb::ListModelsRequest {});
        request.set_timeout(Duration::from_secs(2));
        let response = self.client.clone().list_models(request).await?;
        self.store(Catalog::from_proto(response.get_ref()));
        Ok(())
    }

    /// Refreshes every [`REFRESH_INTERVAL`] until shutdown; failures keep the last catalog.
    pub fn spawn_refresher(&self, shutdown: &Shutdown) {
        let handle = self.clone();
        let stop = shutdown.clone();
        shutdown.spawn_tracked(async move {
            let mut ticker = tokio::time::interval(REFRESH_INTERVAL);
            loop {
                tokio::select! {
                    _ = stop.triggered() => break,
                    _ = ticker.tick() => {}
                }
                if let Err(status) = handle.refresh().await {
                    tracing::debug!(code = ?status.code(), message = status.message(), "catalog refresh failed; keeping the last one");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(id: &str, tier: Tier, vision: bool, input: &str) -> CatalogModel {
        CatalogModel {
            id: id.into(),
            provider: "p".into(),
            tier,
            vision,
            token_ids: false,
            json_mode: true,
            streaming: true,
            completions: true,
            context_window: 1000,
            max_output_tokens: 100,
            input_price: Usd::parse("p", input).unwrap_or(Usd::ZERO),
            output_price: Usd::ZERO,
            tokenizer: "cl100k_base".into(),
            circuit_open: false,
        }
    }

    fn ids(models: &[&CatalogModel]) -> Vec<String> {
        models.iter().map(|m| m.id.clone()).collect()
    }

    #[test]
    fn candidates_go_cheapest_first_then_up_never_down() {
        let catalog = Catalog {
            models: vec![
                model("cheap-b", Tier::Cheap, false, "0.5"),
                model("cheap-a", Tier::Cheap, false, "0.1"),
                model("local", Tier::Local, false, "0"),
                model("premium", Tier::Premium, true, "10"),
                model("standard", Tier::Standard, true, "2"),
            ],
        };
        let configured = TierModels::default();
        assert_eq!(
            ids(&catalog.candidates(&configured, Tier::Cheap, false)),
            ["cheap-a", "cheap-b", "standard", "premium"]
        );
        assert_eq!(
            ids(&catalog.candidates(&configured, Tier::Cheap, true)),
            ["standard", "premium"]
        );
        let pinned = TierModels {
            cheap: vec!["cheap-b".into()],
            ..TierModels::default()
        };
        assert_eq!(
            ids(&catalog.candidates(&pinned, Tier::Cheap, false)),
            ["cheap-b", "standard", "premium"]
        );
    }

    #[test]
    fn open_circuits_go_last_within_their_tier() {
        let mut broken = model("cheap-a", Tier::Cheap, false, "0.1");
        broken.circuit_open = true;
        let catalog = Catalog {
            models: vec![broken, model("cheap-b", Tier::Cheap, false, "0.5")],
        };
        assert_eq!(
            ids(&catalog.candidates(&TierModels::default(), Tier::Cheap, false)),
            ["cheap-b", "cheap-a"]
        );
    }

    #[test]
    fn cost_is_exact() {
        let mut m = model("m", Tier::Cheap, false, "0.15");
        m.output_price = Usd::parse("p", "0.6").unwrap_or(Usd::ZERO);
        assert_eq!(m.cost(1000, 100).to_string(), "0.00021");
    }
}

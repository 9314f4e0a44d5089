//! The request pipeline (DESIGN.md): validate → authenticate (grpc.rs) → classify → ask the case
//! bank → decide tier and model → reserve budget → fetch cached context tokens → call the
//! provider-adapter (falling back across candidates) → cascade check → record every attempt
//! through the outbox → settle the budget → store the case → answer with the decision explained.
//!
//! Each dependency but the provider-adapter is optional at request time: when the case bank,
//! token cache or cost-tracker fails or is slower than its time budget, the request is still
//! served, and the degraded dependency shows in `Decision.degraded`, in the reasons and in
//! `tollgate_router_degraded_total{dependency}`.

pub mod accounting;
pub mod case_memory;
pub mod cases;
pub mod complete;
pub mod context;
pub mod generate;
pub mod idempotency;
pub mod request;
pub mod response;
pub mod routing;
pub mod stages;
pub mod stream;

use std::sync::Arc;
use std::time::Duration;

use tollgate_cost_outbox::CostOutbox;
use tollgate_kit::grpc::client::TracedChannel;
use tollgate_kit::shutdown::Shutdown;
use tollgate_proto::v1::case_bank_client::CaseBankClient;
use tollgate_proto::v1::cost_tracker_client::CostTrackerClient;
use tollgate_proto::v1::provider_adapter_client::ProviderAdapterClient;
use tollgate_proto::v1::token_cache_client::TokenCacheClient;

use crate::catalog::CatalogHandle;
use crate::classify::Classifier;
use crate::policy::PolicyHandle;

pub use idempotency::Idempotency;
pub use request::CompletionRequest;

/// gRPC clients of the other services: one lazily connected channel each, shared by every
/// request (never one per request).
#[derive(Debug, Clone)]
pub struct Dependencies {
    pub provider: ProviderAdapterClient<TracedChannel>,
    pub token_cache: TokenCacheClient<TracedChannel>,
    pub casebank: CaseBankClient<TracedChannel>,
    pub cost: CostTrackerClient<TracedChannel>,
    pub outbox: CostOutbox,
}

/// Time budgets of the calls that may degrade instead of failing the request.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub token_cache: Duration,
    pub case_store: Duration,
}

#[derive(Debug)]
pub struct Pipeline {
    pub deps: Dependencies,
    pub catalog: CatalogHandle,
    pub policy: PolicyHandle,
    pub classifier: Classifier,
    pub idempotency: Idempotency,
    pub timeouts: Timeouts,
    /// Background work (case stores) is tracked so that shutdown waits for it.
    pub shutdown: Shutdown,
}

pub type SharedPipeline = Arc<Pipeline>;

/// A dependency that was unavailable for this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Degraded {
    Casebank,
    TokenCache,
    CostTracker,
}

impl Degraded {
    pub fn as_str(self) -> &'static str {
        match self {
            Degraded::Casebank => "casebank",
            Degraded::TokenCache => "token_cache",
            Degraded::CostTracker => "cost_tracker",
        }
    }

    pub fn count(self) {
        metrics::counter!("tollgate_router_degraded_total", "dependency" => self.as_str())
            .increment(1);
    }
}

/// The case id the router gives the case of a request: tenant-scoped, so that two tenants'
/// request ids never meet, and derivable at feedback time without a lookup.
pub fn case_id(tenant: &str, request_id: &str) -> String {
    format!("{tenant}:{request_id}")
}

//! tollgate-router: the front door: request validation, tenant auth, routing policy, escalation,
//! the request pipeline and feedback.
//!
//! Exposes [`serve`], which the `tollgate` binary calls for `--target router` (and for
//! `--target all`). Talks to every other service through tollgate-proto clients, and hands cost
//! records to the cost-tracker through tollgate-cost-outbox. Like every service crate it depends
//! on tollgate-kit and tollgate-proto (and client libraries) only, never on another service crate.
//!
//! Layout: [`classify`] (complexity), [`policy`] (the decision, hot reload), [`catalog`] (models
//! by tier), [`pipeline`] (the request path, case memory), [`tenants`] (API keys, rate limits),
//! [`grpc`] (proto <-> domain), [`scoring`] and [`quality`] (the routing evaluation).

pub mod catalog;
pub mod classify;
pub mod config;
pub mod error;
pub mod grpc;
pub mod pipeline;
pub mod policy;
pub mod quality;
pub mod scoring;
pub mod tenants;
pub mod tier;

use std::sync::Arc;
use std::time::Duration;

pub use config::RouterConfig;
pub use error::RouterStartError;

use tollgate_cost_outbox::{CostOutbox, OutboxConfig};
use tollgate_kit::grpc::GrpcServer;
use tollgate_kit::grpc::client::connect_peer;
use tollgate_kit::service::ServiceEnv;
use tollgate_proto::v1::case_bank_client::CaseBankClient;
use tollgate_proto::v1::cost_tracker_client::CostTrackerClient;
use tollgate_proto::v1::provider_adapter_client::ProviderAdapterClient;
use tollgate_proto::v1::router_server::RouterServer;
use tollgate_proto::v1::token_cache_client::TokenCacheClient;

use crate::catalog::CatalogHandle;
use crate::pipeline::{Dependencies, Idempotency, Pipeline, Timeouts};
use crate::policy::PolicyHandle;

/// The development key goes to stderr, for the person who ran `make run`; never to the logs.
fn announce_dev_key(tenant: &str, key: &str) {
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "\ndevelopment API key for tenant {tenant:?} (new on every start):\n  export TOLLGATE_API_KEY={key}\n  grpcurl -plaintext -H \"authorization: Bearer $TOLLGATE_API_KEY\" -d '{{\"messages\":[{{\"text\":\"hi\"}}]}}' localhost:50051 tollgate.v1.Router/Complete\n"
    );
}

/// Connects to the dependencies in the background right away, so that the first requests do
/// not spend their casebank and token-cache time budgets on connection set-up (the channels are
/// lazy). Failures are fine: the channels reconnect on use.
fn warm_up(deps: &Dependencies, shutdown: &tollgate_kit::shutdown::Shutdown) {
    let mut casebank = deps.casebank.clone();
    let mut token_cache = deps.token_cache.clone();
    let mut cost = deps.cost.clone();
    let stop = shutdown.clone();
    shutdown.spawn_tracked(async move {
        let warm = async {
            let _ = casebank
                .case_stats(tollgate_proto::v1::CaseStatsRequest::default())
                .await;
            let _ = token_cache
                .list_tokenizers(tollgate_proto::v1::ListTokenizersRequest::default())
                .await;
            let _ = cost
                .list_budgets(tollgate_proto::v1::ListBudgetsRequest::default())
                .await;
        };
        tokio::select! {
            _ = stop.triggered() => {}
            _ = tokio::time::timeout(Duration::from_secs(10), warm) => {}
        }
    });
}

/// Serves `tollgate.v1.Router` on `env.listener` until `env.shutdown` triggers, then drains.
pub async fn serve(config: RouterConfig, env: ServiceEnv) -> Result<(), RouterStartError> {
    tracing::debug!(?config, "starting router");
    let connect_timeout = Duration::from_millis(env.peers.connect_timeout_ms);
    let channel = |url: &str| connect_peer(url, connect_timeout, &env.in_process);
    let provider_channel = channel(&env.peers.provider_adapter)?;
    let cost_channel = channel(&env.peers.cost_tracker)?;
    let outbox = CostOutbox::start(
        OutboxConfig::new(env.storage.data_dir.join("router").join("cost-outbox")),
        cost_channel.clone(),
        &env.shutdown,
    )?;
    let deps = Dependencies {
        provider: ProviderAdapterClient::new(provider_channel.clone()),
        token_cache: TokenCacheClient::new(channel(&env.peers.token_cache)?),
        casebank: CaseBankClient::new(channel(&env.peers.casebank)?),
        cost: CostTrackerClient::new(cost_channel),
        outbox,
    };
    let policy = match &config.policy_file {
        Some(path) => PolicyHandle::watch_file(path.clone(), &env.shutdown)?,
        None => {
            config.policy.validate()?;
            PolicyHandle::new(config.policy.clone())
        }
    };
    let catalog = CatalogHandle::new(provider_channel);
    catalog.spawn_refresher(&env.shutdown);
    warm_up(&deps, &env.shutdown);
    let pipeline = Arc::new(Pipeline {
        deps,
        catalog,
        policy,
        classifier: classify::Classifier::new()?,
        idempotency: Idempotency::default(),
        timeouts: Timeouts {
            token_cache: Duration::from_millis(config.token_cache_timeout_ms),
            case_store: Duration::from_millis(config.case_store_timeout_ms),
        },
        shutdown: env.shutdown.clone(),
    });
    config.auth.validate().map_err(RouterStartError::Config)?;
    let tenant_store = tenants::open_tenant_store(&env.storage).await?;
    if let Some(name) = &config.dev_tenant {
        let key = tenants::ensure_dev_tenant(tenant_store.as_ref(), name).await?;
        announce_dev_key(name, key.expose());
    }
    if !config.auth.enabled {
        tracing::warn!(
            "router.auth.enabled = false: every caller is trusted as the tenant it names"
        );
    }
    let authenticator = tenants::Authenticator::new(Arc::clone(&tenant_store), config.auth.clone());
    let api = grpc::RouterApi::new(
        pipeline,
        pipeline::generate::AnswerChecks::new()?,
        authenticator,
        tenant_store,
    );
    let service = RouterServer::new(api)
        .max_decoding_message_size(env.server.max_message_bytes)
        .max_encoding_message_size(env.server.max_message_bytes);
    GrpcServer::new(
        "router",
        env.listener,
        &env.server,
        tollgate_proto::FILE_DESCRIPTOR_SET,
    )
    .in_process(&env.in_process)
    .add_service(service)
    .serve(env.shutdown)
    .await?;
    Ok(())
}

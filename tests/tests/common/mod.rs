//! Helpers shared by the router system tests: requests, a config for a loaded test machine,
//! a fake OpenAI upstream catalog, and waiting for the ledger.
#![allow(dead_code)]

use std::time::Duration;

use tollgate::config::Config;
use tollgate_proto::v1 as pb;
use tollgate_proto::v1::cost_tracker_client::CostTrackerClient;
use tollgate_proto::v1::router_client::RouterClient;
use tollgate_provider_adapter::config::{ModelConfig, ProviderConfig, ProviderKind, TierName};
use tollgate_test_support::fake_upstream::FakeUpstream;
use tollgate_test_support::{ServiceTarget as Target, TestGateway, TestResult};

pub type Router = RouterClient<tollgate_kit::grpc::client::TracedChannel>;

pub fn user(text: &str) -> pb::Message {
    pb::Message {
        role: pb::Role::User as i32,
        text: text.to_owned(),
        ..Default::default()
    }
}

pub fn ask(tenant: &str, text: &str) -> pb::CompleteRequest {
    pb::CompleteRequest {
        tenant: tenant.to_owned(),
        messages: vec![user(text)],
        ..Default::default()
    }
}

pub fn png() -> pb::ContentPart {
    pb::ContentPart {
        part: Some(pb::content_part::Part::Image(pb::Image {
            source: Some(pb::image::Source::Data(
                b"\x89PNG\r\n\x1a\n-pixels-".to_vec(),
            )),
            mime_type: "image/png".into(),
        })),
    }
}

/// Total recorded spend of `tenant`, once the outbox has delivered `records` records (it
/// batches in the background).
pub async fn wait_for_spend(
    gateway: &TestGateway,
    tenant: &str,
    records: u64,
) -> TestResult<pb::SpendRow> {
    let mut client = CostTrackerClient::new(gateway.channel(Target::CostTracker)?);
    let mut last = pb::SpendRow::default();
    for _ in 0..100 {
        let response = client
            .get_spend(pb::GetSpendRequest {
                filter: Some(pb::SpendFilter {
                    tenant: tenant.to_owned(),
                    ..Default::default()
                }),
                group_by: pb::SpendGroupBy::Tenant as i32,
                range: None,
            })
            .await?
            .into_inner();
        last = response.rows.into_iter().next().unwrap_or_default();
        if last.requests >= records {
            return Ok(last);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("spend of {tenant} never reached {records} records: {last:?}").into())
}

/// The embedded default, with time budgets for a loaded test machine: these tests check what
/// the case bank says, not how fast it says it (the benchmark does that).
pub fn config() -> Config {
    let mut config = Config::default();
    config.router.policy.casebank.timeout_ms = 3000;
    config.router.token_cache_timeout_ms = 3000;
    // These tests name their tenant in the request; authentication has its own tests.
    config.router.auth.enabled = false;
    config
}

pub fn router(gateway: &TestGateway) -> TestResult<Router> {
    Ok(RouterClient::new(gateway.channel(Target::Router)?))
}

/// A configuration whose cheap and premium models live on a fake OpenAI server.
pub fn fake_openai_config(upstream: &FakeUpstream) -> Config {
    let mut config = config();
    let adapter = &mut config.provider_adapter;
    adapter.providers = vec![ProviderConfig::new(
        "fake",
        ProviderKind::Openai,
        &upstream.base_url(),
    )];
    let model = |id: &str, tier: TierName, price: &str| ModelConfig {
        id: id.to_owned(),
        provider: "fake".to_owned(),
        upstream_model: None,
        tier,
        capabilities: Vec::new(),
        context_window: 8_192,
        max_output_tokens: 512,
        input_per_mtok_usd: price.to_owned(),
        output_per_mtok_usd: price.to_owned(),
        cached_input_per_mtok_usd: None,
        cache_write_per_mtok_usd: None,
        tokenizer: "o200k_base".to_owned(),
        embedding_dimensions: None,
    };
    adapter.models = vec![
        model("fake-cheap", TierName::Cheap, "1"),
        model("fake-premium", TierName::Premium, "10"),
    ];
    adapter.groups = Vec::new();
    adapter.retry.max_attempts_per_model = 1;
    config
}

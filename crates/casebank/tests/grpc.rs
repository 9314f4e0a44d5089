//! The CaseBank gRPC API with a real client against servers on 127.0.0.1:0: the whole service
//! on SQLite and on Postgres, validation, an unreachable Postgres, and the remote embedder
//! against an in-test ProviderAdapter that implements only `Embed`.

use std::sync::Arc;
use std::time::Duration;

use tokio_stream::wrappers::TcpListenerStream;
use tollgate::config::Config;
use tollgate_casebank::config::EmbedderKind;
use tollgate_casebank::embed::HashEmbedder;
use tollgate_casebank::grpc::CaseBankApi;
use tollgate_casebank::service::CaseService;
use tollgate_casebank::store::PgCaseStore;
use tollgate_casebank::store::postgres::PgOptions;
use tollgate_kit::grpc::client::TracedChannel;
use tollgate_proto::v1 as pb;
use tollgate_proto::v1::case_bank_client::CaseBankClient;
use tollgate_proto::v1::case_bank_server::CaseBankServer;
use tollgate_proto::v1::provider_adapter_server::{ProviderAdapter, ProviderAdapterServer};
use tollgate_test_support::postgres::TestDatabase;
use tollgate_test_support::{ServiceTarget as Target, TestGateway, TestResult, temp_dir};
use tonic::Code;

fn client(channel: TracedChannel) -> CaseBankClient<TracedChannel> {
    CaseBankClient::new(channel)
}

fn new_case(id: &str, task: &str, tier: pb::Tier, reward: Option<f64>) -> pb::StoreCaseRequest {
    pb::StoreCaseRequest {
        case: Some(pb::Case {
            id: id.into(),
            tenant: "acme".into(),
            agent: "support".into(),
            task: task.into(),
            action: Some(pb::CaseAction {
                tier: tier as i32,
                model: String::new(),
                plan_json: String::new(),
            }),
            reward,
            cost_usd: "0.0012".into(),
            tags: vec!["eu".into()],
            ..Default::default()
        }),
    }
}

fn retrieve(task: &str) -> pb::RetrieveRequest {
    pb::RetrieveRequest {
        tenant: "acme".into(),
        task: task.into(),
        ..Default::default()
    }
}

/// The same scenario on whichever backend `channel` reaches.
async fn case_lifecycle(mut cases: CaseBankClient<TracedChannel>) -> TestResult {
    let task = "Reset the password of a customer account";
    let stored = cases
        .store_case(new_case("c1", task, pb::Tier::Cheap, Some(1.0)))
        .await?
        .into_inner();
    assert!(stored.created);
    let case = stored.case.ok_or("no case")?;
    assert_eq!(case.embedder, "hash-ngram-v1-d384");
    assert_eq!(case.cost_usd, "0.0012");
    assert!(case.created_at.is_some());

    // A retry of the same id changes nothing.
    let again = cases
        .store_case(new_case("c1", "another task", pb::Tier::Premium, Some(0.0)))
        .await?
        .into_inner();
    assert!(!again.created);
    assert_eq!(again.case.map(|c| c.task), Some(task.to_owned()));

    // No id: one is generated.
    let generated = cases
        .store_case(new_case(
            "",
            "Reset the password of a customer account please",
            pb::Tier::Premium,
            Some(0.2),
        ))
        .await?
        .into_inner();
    let generated_id = generated.case.map(|c| c.id).unwrap_or_default();
    assert!(!generated_id.is_empty());

    // Memento defaults: positives above 0.6 and similarity 0.8; negatives apart.
    let mut request = retrieve(task);
    request.include_negatives = true;
    let found = cases.retrieve(request).await?.into_inner();
    let positive_ids: Vec<_> = found
        .positives
        .iter()
        .filter_map(|s| s.case.as_ref().map(|c| c.id.clone()))
        .collect();
    assert_eq!(positive_ids, vec!["c1".to_owned()]);
    assert!((found.positives[0].similarity - 1.0).abs() < 1e-4);
    let negative_ids: Vec<_> = found
        .negatives
        .iter()
        .filter_map(|s| s.case.as_ref().map(|c| c.id.clone()))
        .collect();
    assert_eq!(negative_ids, vec![generated_id.clone()]);
    assert_eq!(found.embedder, "hash-ngram-v1-d384");

    // Feedback arrives later.
    let updated = cases
        .update_reward(pb::UpdateRewardRequest {
            tenant: "acme".into(),
            case_id: generated_id.clone(),
            reward: 0.9,
            outcome: "solved".into(),
        })
        .await?
        .into_inner();
    assert_eq!(updated.case.and_then(|c| c.reward), Some(0.9));

    // Estimate: evidence for both tiers now.
    let estimate = cases
        .estimate(pb::EstimateRequest {
            tenant: "acme".into(),
            task: task.into(),
            candidates: vec![
                pb::CaseAction {
                    tier: pb::Tier::Cheap as i32,
                    ..Default::default()
                },
                pb::CaseAction {
                    tier: pb::Tier::Premium as i32,
                    ..Default::default()
                },
                pb::CaseAction {
                    tier: pb::Tier::Standard as i32,
                    ..Default::default()
                },
            ],
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(!estimate.cold_start);
    assert_eq!(estimate.neighbours_found, 2);
    let evidence: Vec<u32> = estimate.estimates.iter().map(|e| e.evidence).collect();
    assert_eq!(evidence, vec![1, 1, 0]);
    assert_eq!(estimate.estimates[0].success, 1.0);
    assert!(estimate.estimates[0].confidence > 0.0);
    assert_eq!(estimate.estimates[0].mean_cost_usd, "0.0012");
    assert_eq!(estimate.estimates[2].confidence, 0.0);

    // Another tenant sees nothing: a cold start.
    let cold = cases
        .estimate(pb::EstimateRequest {
            tenant: "globex".into(),
            task: task.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(cold.cold_start);
    assert!(cold.estimates.is_empty());
    let other = cases
        .get_case(pb::GetCaseRequest {
            tenant: "globex".into(),
            case_id: "c1".into(),
        })
        .await
        .err()
        .map(|status| status.code());
    assert_eq!(other, Some(Code::NotFound));

    let stats = cases
        .case_stats(pb::CaseStatsRequest {
            tenant: "acme".into(),
        })
        .await?
        .into_inner();
    assert_eq!((stats.cases, stats.with_reward), (2, 2));

    let deleted = cases
        .delete_case(pb::DeleteCaseRequest {
            tenant: "acme".into(),
            case_id: "c1".into(),
        })
        .await?
        .into_inner();
    assert!(deleted.deleted);
    let removed = cases
        .delete_tenant_cases(pb::DeleteTenantCasesRequest {
            tenant: "acme".into(),
        })
        .await?
        .into_inner();
    assert_eq!(removed.deleted, 1);
    let found = cases.retrieve(retrieve(task)).await?.into_inner();
    assert!(found.positives.is_empty());
    Ok(())
}

#[tokio::test]
async fn cases_round_trip_on_sqlite() -> TestResult {
    let gateway = TestGateway::start(Target::Casebank).await?;
    case_lifecycle(client(gateway.channel(Target::Casebank)?)).await?;
    gateway.stop().await
}

#[tokio::test]
async fn cases_round_trip_on_postgres() -> TestResult {
    let database = TestDatabase::create().await?;
    let mut config = Config::default();
    config.storage.data_dir = temp_dir("casebank")?;
    config.storage.database_url = Some(database.url.clone());
    let gateway = TestGateway::start_with(config, Target::Casebank).await?;
    let result = case_lifecycle(client(gateway.channel(Target::Casebank)?)).await;
    let stats = client(gateway.channel(Target::Casebank)?)
        .case_stats(pb::CaseStatsRequest::default())
        .await?
        .into_inner();
    assert_eq!(stats.backend, "postgres");
    gateway.stop().await?;
    database.drop_database().await?;
    result
}

async fn expect_invalid<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
    field: &str,
) -> TestResult {
    match result {
        Err(status) => {
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            assert!(
                status.message().starts_with(&format!("{field}:")),
                "{field}: {}",
                status.message()
            );
            Ok(())
        }
        Ok(response) => Err(format!("accepted bad {field}: {response:?}").into()),
    }
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field() -> TestResult {
    let gateway = TestGateway::start(Target::Casebank).await?;
    let mut cases = client(gateway.channel(Target::Casebank)?);
    for k in [0, 65, -1] {
        let mut request = retrieve("task");
        request.k = Some(k);
        expect_invalid(cases.retrieve(request).await, "k").await?;
    }
    for similarity in [1.5, -1.01, f64::NAN] {
        let mut request = retrieve("task");
        request.min_similarity = Some(similarity);
        expect_invalid(cases.retrieve(request).await, "min_similarity").await?;
    }
    let mut request = retrieve("task");
    request.min_reward = Some(2.0);
    expect_invalid(cases.retrieve(request).await, "min_reward").await?;
    expect_invalid(cases.retrieve(retrieve("   ")).await, "task").await?;
    expect_invalid(
        cases.retrieve(retrieve(&"x".repeat(40 * 1024))).await,
        "task",
    )
    .await?;
    let mut request = retrieve("task");
    request.tenant.clear();
    expect_invalid(cases.retrieve(request).await, "tenant").await?;

    expect_invalid(
        cases
            .store_case(new_case("a", "t", pb::Tier::Cheap, Some(1.5)))
            .await,
        "case.reward",
    )
    .await?;
    expect_invalid(
        cases
            .store_case(new_case("a", "t", pb::Tier::Cheap, Some(-0.1)))
            .await,
        "case.reward",
    )
    .await?;
    expect_invalid(
        cases
            .store_case(new_case("a", "", pb::Tier::Cheap, None))
            .await,
        "case.task",
    )
    .await?;
    expect_invalid(
        cases.store_case(pb::StoreCaseRequest { case: None }).await,
        "case",
    )
    .await?;
    let mut bad_cost = new_case("a", "t", pb::Tier::Cheap, None);
    if let Some(case) = bad_cost.case.as_mut() {
        case.cost_usd = "-1".into();
    }
    expect_invalid(cases.store_case(bad_cost).await, "case.cost_usd").await?;
    let mut bad_tier = new_case("a", "t", pb::Tier::Cheap, None);
    if let Some(action) = bad_tier.case.as_mut().and_then(|c| c.action.as_mut()) {
        action.tier = 42;
    }
    expect_invalid(cases.store_case(bad_tier).await, "case.action.tier").await?;
    let update = pb::UpdateRewardRequest {
        tenant: "acme".into(),
        case_id: "c1".into(),
        reward: 1.01,
        outcome: String::new(),
    };
    expect_invalid(cases.update_reward(update).await, "reward").await?;
    let estimate = pb::EstimateRequest {
        tenant: "acme".into(),
        task: "t".into(),
        neighbours: Some(0),
        ..Default::default()
    };
    expect_invalid(cases.estimate(estimate).await, "neighbours").await?;
    let missing = cases
        .update_reward(pb::UpdateRewardRequest {
            tenant: "acme".into(),
            case_id: "nope".into(),
            reward: 1.0,
            outcome: String::new(),
        })
        .await
        .err()
        .map(|status| status.code());
    assert_eq!(missing, Some(Code::NotFound));
    gateway.stop().await
}

/// Serves `api` on 127.0.0.1:0; returns a channel to it.
async fn serve_api(api: CaseBankApi) -> TestResult<TracedChannel> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CaseBankServer::new(api))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    Ok(tollgate_kit::grpc::connect_lazy(
        &format!("http://{addr}"),
        Duration::from_secs(2),
    )?)
}

#[tokio::test]
async fn postgres_down_means_unavailable() -> TestResult {
    // Nothing listens on port 1: every connection attempt is refused.
    let store = PgCaseStore::connect_lazy(
        "postgres://postgres@127.0.0.1:1/tollgate",
        &PgOptions::default(),
    )?;
    let service = CaseService::new(
        Arc::new(store),
        Arc::new(HashEmbedder::default()),
        Duration::from_secs(1),
    );
    let mut cases = client(serve_api(CaseBankApi::new(service, 32 * 1024)).await?);
    let retrieve_code = cases
        .retrieve(retrieve("any task"))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(retrieve_code, Some(Code::Unavailable));
    let estimate_code = cases
        .estimate(pb::EstimateRequest {
            tenant: "acme".into(),
            task: "any".into(),
            ..Default::default()
        })
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(estimate_code, Some(Code::Unavailable));
    let store_code = cases
        .store_case(new_case("c1", "task", pb::Tier::Cheap, None))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(
        store_code,
        Some(Code::Unavailable),
        "writes too: the caller retries them"
    );
    Ok(())
}

/// A ProviderAdapter that implements only `Embed`: a deterministic vector per text (its bytes
/// folded into 8 dimensions), like an OpenAI-compatible server behind the real adapter.
#[derive(Debug)]
struct EmbedOnly;

#[tonic::async_trait]
impl ProviderAdapter for EmbedOnly {
    async fn embed(
        &self,
        request: tonic::Request<pb::EmbedRequest>,
    ) -> Result<tonic::Response<pb::EmbedResponse>, tonic::Status> {
        let request = request.into_inner();
        if request.model != "test-embedding" {
            return Err(tonic::Status::not_found("unknown model"));
        }
        let embeddings = request
            .inputs
            .iter()
            .map(|text| {
                let mut values = vec![0.0f32; 8];
                for (i, byte) in text.bytes().enumerate() {
                    values[i % 8] += f32::from(byte);
                }
                pb::Embedding { values }
            })
            .collect();
        Ok(tonic::Response::new(pb::EmbedResponse {
            embeddings,
            model: request.model,
            ..Default::default()
        }))
    }
}

#[tokio::test]
async fn the_remote_embedder_goes_through_the_provider_adapter() -> TestResult {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let adapter_addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let adapter = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ProviderAdapterServer::new(EmbedOnly))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stop_rx.await;
            }),
    );
    let mut config = Config::default();
    config.storage.data_dir = temp_dir("casebank")?;
    config.peers.provider_adapter = format!("http://{adapter_addr}");
    config.casebank.embedder.kind = EmbedderKind::Remote;
    config.casebank.embedder.remote_model = "test-embedding".into();
    let gateway = TestGateway::start_with(config, Target::Casebank).await?;
    let mut cases = client(gateway.channel(Target::Casebank)?);
    let stored = cases
        .store_case(new_case(
            "r1",
            "route this task",
            pb::Tier::Cheap,
            Some(1.0),
        ))
        .await?
        .into_inner();
    assert_eq!(
        stored.case.map(|c| c.embedder),
        Some("remote-test-embedding".into())
    );
    let found = cases
        .retrieve(retrieve("route this task"))
        .await?
        .into_inner();
    assert_eq!(found.embedder, "remote-test-embedding");
    assert_eq!(found.positives.len(), 1);
    assert!((found.positives[0].similarity - 1.0).abs() < 1e-5);

    // The adapter goes away: searches answer UNAVAILABLE rather than guess.
    let _ = stop_tx.send(());
    adapter.await??;
    let code = cases
        .retrieve(retrieve("route this task"))
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(code, Some(Code::Unavailable));
    gateway.stop().await
}

//! The one test suite of the `CaseStore` trait, run against every backend: SQLite (a fresh file
//! per test) and Postgres (a fresh database per test on `DATABASE_URL`, required).

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use tollgate_casebank::embed::HashEmbedder;
use tollgate_casebank::model::{Case, CaseAction, NearestQuery, RewardFilter, Tier};
use tollgate_casebank::store::postgres::PgOptions;
use tollgate_casebank::store::{CaseStore, PgCaseStore, SqliteCaseStore};
use tollgate_kit::money::Usd;
use tollgate_test_support::TestResult;
use tollgate_test_support::postgres::TestDatabase;

const EMBEDDER: &str = "hash-ngram-v1-d384";

fn embedder() -> HashEmbedder {
    HashEmbedder::default()
}

fn case(tenant: &str, id: &str, task: &str, tier: Tier, reward: Option<f64>) -> Case {
    Case {
        id: id.into(),
        tenant: tenant.into(),
        agent: "coder".into(),
        task: task.into(),
        action: CaseAction {
            tier,
            model: format!("{}-model", tier.name()),
            plan_json: r#"{"steps":["a"]}"#.into(),
        },
        outcome: String::new(),
        reward,
        cost_usd: Usd::parse("cost", "0.000375").unwrap_or_default(),
        latency_micros: 1234,
        tags: vec!["prod".into()],
        created_at: Utc
            .timestamp_micros(1_763_800_000_123_456)
            .single()
            .unwrap_or_default(),
        embedder: EMBEDDER.into(),
        request_id: format!("req-{id}"),
    }
}

async fn put(store: &dyn CaseStore, case: &Case) -> TestResult<(Case, bool)> {
    Ok(store
        .insert(case, &embedder().embed_now(&case.task))
        .await?)
}

fn query(tenant: &str, task: &str, limit: usize, reward: RewardFilter) -> NearestQuery {
    NearestQuery {
        tenant: tenant.into(),
        embedder: EMBEDDER.into(),
        embedding: embedder().embed_now(task),
        limit,
        agent_opt: None,
        tags: Vec::new(),
        reward,
        min_similarity: -1.0,
    }
}

/// Retrieve's two k=4 queries for `task`: reward at least 0.6, and below it.
fn positives_and_negatives(tenant: &str, task: &str) -> (NearestQuery, NearestQuery) {
    let positives = query(tenant, task, 4, RewardFilter::AtLeast(0.6));
    let negatives = NearestQuery {
        reward: RewardFilter::Below(0.6),
        ..positives.clone()
    };
    (positives, negatives)
}

fn ids(found: &[tollgate_casebank::model::ScoredCase]) -> Vec<&str> {
    found.iter().map(|scored| scored.case.id.as_str()).collect()
}

/// An answer as two searches of the same cases must agree on it when similarities can tie: the
/// similarities in order, and the ids of the cases more similar than the last one, sorted. Of
/// cases exactly as similar as the last, either search may have kept any: pgvector orders
/// equal distances arbitrarily, and its AVX2 and AVX-512 kernels round sums differently, so
/// one machine's tie is another's strict order (b178 and b195 of the test below tie on AMD Zen 3).
fn ranked(found: &[tollgate_casebank::model::ScoredCase]) -> (Vec<f64>, Vec<&str>) {
    let last = found.last().map(|scored| scored.similarity);
    let mut sure: Vec<&str> = found
        .iter()
        .filter(|scored| Some(scored.similarity) != last)
        .map(|scored| scored.case.id.as_str())
        .collect();
    sure.sort_unstable();
    (found.iter().map(|scored| scored.similarity).collect(), sure)
}

async fn insert_is_idempotent_by_id(store: &dyn CaseStore) -> TestResult {
    let first = case(
        "t1",
        "c1",
        "translate a paragraph to French",
        Tier::Cheap,
        Some(0.9),
    );
    let (stored, created) = put(store, &first).await?;
    assert!(created);
    assert_eq!(stored, first, "every field round-trips");
    let mut retry = first.clone();
    retry.task = "something else entirely".into();
    retry.reward = Some(0.1);
    let (again, created) = put(store, &retry).await?;
    assert!(
        !created,
        "a second insert with the same id is not a new case"
    );
    assert_eq!(again, first, "the stored case comes back unchanged");
    assert_eq!(store.stats(Some("t1")).await?.cases, 1);
    // The same id in another tenant is another case.
    let (_, created) = put(store, &case("t2", "c1", "x", Tier::Cheap, None)).await?;
    assert!(created);
    Ok(())
}

async fn update_get_and_delete(store: &dyn CaseStore) -> TestResult {
    put(
        store,
        &case("t1", "c1", "summarise the report", Tier::Cheap, None),
    )
    .await?;
    let updated = store
        .update_reward("t1", "c1", 0.75, Some("fine"))
        .await?
        .ok_or("case missing")?;
    assert_eq!(updated.reward, Some(0.75));
    assert_eq!(updated.outcome, "fine");
    let kept = store
        .update_reward("t1", "c1", 0.5, None)
        .await?
        .ok_or("case missing")?;
    assert_eq!(kept.outcome, "fine", "no outcome given keeps the old one");
    assert_eq!(
        store.get("t1", "c1").await?.and_then(|c| c.reward),
        Some(0.5)
    );
    assert_eq!(store.update_reward("t1", "nope", 0.5, None).await?, None);
    assert_eq!(
        store.update_reward("t2", "c1", 0.5, None).await?,
        None,
        "tenant-scoped"
    );
    assert_eq!(store.get("t2", "c1").await?, None, "tenant-scoped");
    // The search sees the new reward (the SQLite copy in memory follows writes).
    let found = store
        .nearest(&query(
            "t1",
            "summarise the report",
            4,
            RewardFilter::AtLeast(0.5),
        ))
        .await?;
    assert_eq!(ids(&found), vec!["c1"]);
    assert!(!store.delete("t2", "c1").await?, "tenant-scoped");
    assert!(store.delete("t1", "c1").await?);
    assert!(!store.delete("t1", "c1").await?);
    assert_eq!(store.get("t1", "c1").await?, None);
    let found = store
        .nearest(&query("t1", "summarise the report", 4, RewardFilter::Any))
        .await?;
    assert!(found.is_empty(), "a deleted case is never retrieved");
    Ok(())
}

async fn delete_tenant_removes_only_that_tenant(store: &dyn CaseStore) -> TestResult {
    for i in 0..3 {
        put(
            store,
            &case("gone", &format!("c{i}"), "task", Tier::Cheap, Some(1.0)),
        )
        .await?;
    }
    put(store, &case("kept", "c0", "task", Tier::Cheap, Some(1.0))).await?;
    // Load the SQLite copy first, so that the delete must also clear it.
    assert_eq!(
        store
            .nearest(&query("gone", "task", 8, RewardFilter::Any))
            .await?
            .len(),
        3
    );
    assert_eq!(store.delete_tenant("gone").await?, 3);
    assert_eq!(store.delete_tenant("gone").await?, 0);
    assert!(
        store
            .nearest(&query("gone", "task", 8, RewardFilter::Any))
            .await?
            .is_empty()
    );
    assert_eq!(store.stats(Some("kept")).await?.cases, 1);
    assert_eq!(store.stats(None).await?.cases, 1);
    Ok(())
}

async fn nearest_orders_by_similarity_and_filters(store: &dyn CaseStore) -> TestResult {
    let tasks = [
        (
            "a",
            "translate this paragraph into French",
            Tier::Cheap,
            Some(0.9),
        ),
        (
            "b",
            "translate the following paragraph into French please",
            Tier::Premium,
            Some(1.0),
        ),
        (
            "c",
            "translate this sentence into German",
            Tier::Cheap,
            Some(0.2),
        ),
        (
            "d",
            "what is the derivative of x squared",
            Tier::Cheap,
            Some(1.0),
        ),
        (
            "e",
            "translate this paragraph into French",
            Tier::Cheap,
            None,
        ),
    ];
    for (id, task, tier, reward) in tasks {
        put(store, &case("t1", id, task, tier, reward)).await?;
    }
    let all = store
        .nearest(&query(
            "t1",
            "translate this paragraph into French",
            10,
            RewardFilter::Any,
        ))
        .await?;
    assert_eq!(all.len(), 5);
    assert!(
        all.windows(2).all(|w| w[0].similarity >= w[1].similarity),
        "most similar first"
    );
    assert!(
        (all[0].similarity - 1.0).abs() < 1e-4,
        "identical task: {}",
        all[0].similarity
    );
    assert_eq!(all.last().map(|s| s.case.id.as_str()), Some("d"));

    let positives = store
        .nearest(&query(
            "t1",
            "translate this paragraph into French",
            2,
            RewardFilter::AtLeast(0.6),
        ))
        .await?;
    assert_eq!(
        ids(&positives),
        vec!["a", "b"],
        "k limits, unrewarded and low rewards excluded"
    );

    let negatives = store
        .nearest(&query(
            "t1",
            "translate this paragraph into French",
            4,
            RewardFilter::Below(0.6),
        ))
        .await?;
    assert_eq!(
        ids(&negatives),
        vec!["c"],
        "negatives: known reward below the bound"
    );

    // Both at once (Retrieve with negatives) gives the same answers as one at a time.
    let both = store
        .nearest_each(&[
            query(
                "t1",
                "translate this paragraph into French",
                2,
                RewardFilter::AtLeast(0.6),
            ),
            query(
                "t1",
                "translate this paragraph into French",
                4,
                RewardFilter::Below(0.6),
            ),
        ])
        .await?;
    assert_eq!(both, vec![positives.clone(), negatives.clone()]);

    let mut close_only = query(
        "t1",
        "translate this paragraph into French",
        10,
        RewardFilter::Any,
    );
    close_only.min_similarity = 0.8;
    let close = store.nearest(&close_only).await?;
    assert!(close.iter().all(|s| s.similarity >= 0.8));
    assert!(ids(&close).contains(&"a") && !ids(&close).contains(&"d"));

    let mut other_agent = query("t1", "translate", 10, RewardFilter::Any);
    other_agent.agent_opt = Some("writer".into());
    assert!(
        store.nearest(&other_agent).await?.is_empty(),
        "agent filter"
    );
    let mut same_agent = other_agent.clone();
    same_agent.agent_opt = Some("coder".into());
    assert_eq!(store.nearest(&same_agent).await?.len(), 5);

    let mut tagged = query("t1", "translate", 10, RewardFilter::Any);
    tagged.tags = vec!["prod".into()];
    assert_eq!(
        store.nearest(&tagged).await?.len(),
        5,
        "every case carries `prod`"
    );
    tagged.tags = vec!["prod".into(), "eu".into()];
    assert!(
        store.nearest(&tagged).await?.is_empty(),
        "all tags must be present"
    );
    Ok(())
}

async fn tenants_never_see_each_other(store: &dyn CaseStore) -> TestResult {
    put(
        store,
        &case(
            "alice",
            "a1",
            "secret merger plan for ACME",
            Tier::Premium,
            Some(1.0),
        ),
    )
    .await?;
    put(
        store,
        &case("bob", "b1", "weekly status report", Tier::Cheap, Some(1.0)),
    )
    .await?;
    let found = store
        .nearest(&query(
            "bob",
            "secret merger plan for ACME",
            10,
            RewardFilter::Any,
        ))
        .await?;
    assert_eq!(ids(&found), vec!["b1"], "bob only ever gets bob's cases");
    let found = store
        .nearest(&query(
            "carol",
            "secret merger plan for ACME",
            10,
            RewardFilter::Any,
        ))
        .await?;
    assert!(found.is_empty());
    assert_eq!(store.stats(Some("alice")).await?.cases, 1);
    Ok(())
}

async fn other_embedders_are_never_compared(store: &dyn CaseStore) -> TestResult {
    put(
        store,
        &case(
            "t1",
            "mine",
            "classify the support ticket",
            Tier::Cheap,
            Some(1.0),
        ),
    )
    .await?;
    // Same dimension, other embedder: must not be compared.
    let mut foreign = case(
        "t1",
        "foreign",
        "classify the support ticket",
        Tier::Cheap,
        Some(1.0),
    );
    foreign.embedder = "other-embedder-d384".into();
    put(store, &foreign).await?;
    // Other dimension too.
    let mut small = case(
        "t1",
        "small",
        "classify the support ticket",
        Tier::Cheap,
        Some(1.0),
    );
    small.embedder = "hash-ngram-v1-d64".into();
    store
        .insert(&small, &HashEmbedder::new(64).embed_now(&small.task))
        .await?;
    let found = store
        .nearest(&query(
            "t1",
            "classify the support ticket",
            10,
            RewardFilter::Any,
        ))
        .await?;
    assert_eq!(ids(&found), vec!["mine"]);
    let mut small_query = query("t1", "classify the support ticket", 10, RewardFilter::Any);
    small_query.embedder = "hash-ngram-v1-d64".into();
    small_query.embedding = HashEmbedder::new(64).embed_now("classify the support ticket");
    assert_eq!(ids(&store.nearest(&small_query).await?), vec!["small"]);
    Ok(())
}

async fn stats_count_rewards(store: &dyn CaseStore) -> TestResult {
    let empty = store.stats(None).await?;
    assert_eq!((empty.cases, empty.with_reward), (0, 0));
    put(store, &case("t1", "a", "x", Tier::Cheap, Some(1.0))).await?;
    put(store, &case("t1", "b", "y", Tier::Cheap, Some(0.5))).await?;
    put(store, &case("t2", "c", "z", Tier::Cheap, None)).await?;
    let t1 = store.stats(Some("t1")).await?;
    assert_eq!((t1.cases, t1.with_reward), (2, 2));
    assert!((t1.mean_reward - 0.75).abs() < 1e-9);
    let all = store.stats(None).await?;
    assert_eq!((all.cases, all.with_reward), (3, 2));
    Ok(())
}

async fn many_cases_find_the_exact_neighbours(store: &dyn CaseStore) -> TestResult {
    // Enough rows that Postgres may use the HNSW index; with a small tenant among a bigger
    // one, the index alone would miss rows (filtered after the scan) and the store must not.
    for i in 0..300 {
        let task = format!("big tenant task number {i} about topic {}", i % 17);
        // Positives, negatives and cases still waiting for their reward.
        let reward = match i % 4 {
            0 => Some(0.2),
            1 => None,
            _ => Some(1.0),
        };
        put(
            store,
            &case("big", &format!("b{i}"), &task, Tier::Cheap, reward),
        )
        .await?;
    }
    for i in 0..3 {
        let task = format!("small tenant task {i}");
        put(
            store,
            &case("small", &format!("s{i}"), &task, Tier::Cheap, Some(1.0)),
        )
        .await?;
    }
    let found = store
        .nearest(&query(
            "small",
            "big tenant task number 5 about topic 5",
            4,
            RewardFilter::Any,
        ))
        .await?;
    assert_eq!(found.len(), 3, "every case of the small tenant is found");
    let found = store
        .nearest(&query(
            "big",
            "big tenant task number 5 about topic 5",
            4,
            RewardFilter::Any,
        ))
        .await?;
    assert_eq!(found.first().map(|s| s.case.id.as_str()), Some("b5"));
    assert_eq!(found.len(), 4);
    // Positives and negatives from one shared scan (Retrieve): the small tenant's answer is
    // short, so it must be checked beyond the index's candidates too.
    let (positives, negatives) =
        positives_and_negatives("small", "big tenant task number 5 about topic 5");
    let answers = store.nearest_each(&[positives, negatives]).await?;
    assert_eq!(answers.len(), 2);
    assert_eq!(
        answers[0].len(),
        3,
        "every positive of the small tenant is found"
    );
    assert!(answers[1].is_empty(), "the small tenant has no negatives");
    // In the big tenant the shared scan answers both from one candidate list: the same cases
    // as each query asked on its own, with unrewarded cases in neither.
    let (positives, negatives) =
        positives_and_negatives("big", "big tenant task number 8 about topic 8");
    let shared = store
        .nearest_each(&[positives.clone(), negatives.clone()])
        .await?;
    let alone = [
        store.nearest(&positives).await?,
        store.nearest(&negatives).await?,
    ];
    for (answer, own) in shared.iter().zip(&alone) {
        assert_eq!(answer.len(), 4);
        assert_eq!(ranked(answer), ranked(own));
    }
    assert!(shared[0].iter().all(|s| s.case.reward == Some(1.0)));
    assert!(shared[1].iter().all(|s| s.case.reward == Some(0.2)));
    Ok(())
}

/// Runs `check` against a fresh store of each backend.
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() -> TestResult {
                    let path = std::env::temp_dir().join(format!(
                        "tollgate-casebank-{}-{}-{}.sqlite",
                        stringify!($name),
                        std::process::id(),
                        Utc::now().timestamp_nanos_opt().unwrap_or_default()
                    ));
                    let store = Arc::new(SqliteCaseStore::open(&path).await?);
                    let result = super::$name(store.as_ref()).await;
                    for suffix in ["", "-wal", "-shm"] {
                        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                    }
                    result
                }
            )*
        }
        mod postgres {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() -> TestResult {
                    let database = TestDatabase::create().await?;
                    let store = PgCaseStore::connect(&database.url, &PgOptions::default()).await?;
                    let result = super::$name(&store).await;
                    store.pool().close().await;
                    database.drop_database().await?;
                    result
                }
            )*
        }
    };
}

suite!(
    insert_is_idempotent_by_id,
    update_get_and_delete,
    delete_tenant_removes_only_that_tenant,
    nearest_orders_by_similarity_and_filters,
    tenants_never_see_each_other,
    other_embedders_are_never_compared,
    stats_count_rewards,
    many_cases_find_the_exact_neighbours,
);

//! Casebank benchmark: Retrieve latency (p50/p99) at 10k and 100k cases on Postgres (HNSW) and
//! SQLite (exact), recall@4 of HNSW against exact search, insert throughput, embedding cost.
//!
//! Tasks are real prompts: the MMLU and GSM8K prompts of /work/shared/routing-eval (7,664),
//! each varied beyond the first pass by appending the first line of another prompt, so that
//! 100k cases are distinct texts with realistic topical overlap. Queries are variants that were
//! never stored.
//!
//! Run (debug build, as everything on this machine; the casebank crate is built with opt-level 2):
//!   eval "$(scripts/services.sh env)"
//!   CARGO_TARGET_DIR=... cargo test --workspace -p tollgate-casebank --bench casebank
//! Environment: CASEBANK_BENCH_SIZES (default "10000,100000"), CASEBANK_BENCH_QUERIES (500),
//! CASEBANK_BENCH_DATA (default /work/shared/routing-eval), CASEBANK_BENCH_KEEP (set: keep the
//! Postgres database and print its URL), CASEBANK_BENCH_REUSE (the URL of a kept database: query
//! it as it is, without inserting; with CASEBANK_BENCH_SIZES set to the size it holds).

#![allow(clippy::print_stdout, clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tollgate_casebank::embed::{Embedder, HashEmbedder};
use tollgate_casebank::model::{
    Case, CaseAction, DEFAULT_K, DEFAULT_MIN_REWARD, DEFAULT_MIN_SIMILARITY, NearestQuery,
    RetrieveQuery, RewardFilter, Tier,
};
use tollgate_casebank::service::CaseService;
use tollgate_casebank::store::postgres::PgOptions;
use tollgate_casebank::store::{CaseStore, PgCaseStore, SqliteCaseStore};
use tollgate_kit::money::Usd;
use tollgate_test_support::postgres::TestDatabase;

fn load_prompts(dir: &str) -> Vec<String> {
    let mut prompts = Vec::new();
    for file in ["mmlu_dev.jsonl", "gsm8k.jsonl"] {
        let text = std::fs::read_to_string(format!("{dir}/{file}")).expect("routing-eval data");
        for line in text.lines() {
            let value: serde_json::Value = serde_json::from_str(line).expect("jsonl");
            if let Some(prompt) = value["prompt"].as_str() {
                prompts.push(prompt.to_owned());
            }
        }
    }
    prompts
}

/// The i-th task: the prompts themselves first, then each prompt with the first line of
/// another one appended (a different one on every pass).
fn task(prompts: &[String], i: usize, salt: usize) -> String {
    let n = prompts.len();
    let base = &prompts[i % n];
    let pass = i / n + salt;
    if pass == 0 {
        return base.clone();
    }
    let other = &prompts[(i * 31 + pass * 7919) % n];
    let line = other.lines().next().unwrap_or(other);
    format!("{base}\n{line}")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort();
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    )
}

fn case(prompts: &[String], i: usize) -> Case {
    let tier = if i.is_multiple_of(3) {
        Tier::Premium
    } else {
        Tier::Cheap
    };
    Case {
        id: format!("case-{i}"),
        tenant: "bench".into(),
        agent: String::new(),
        task: task(prompts, i, 0),
        action: CaseAction {
            tier,
            model: String::new(),
            plan_json: String::new(),
        },
        outcome: String::new(),
        // Most succeed, some fail: a realistic mix for the reward filter.
        reward: Some(if i.is_multiple_of(4) { 0.0 } else { 1.0 }),
        cost_usd: Usd::from_micros(375),
        latency_micros: 1000,
        tags: Vec::new(),
        created_at: Utc::now(),
        embedder: String::new(),
        request_id: String::new(),
    }
}

/// Inserts cases `from..to` with `concurrency` writers; returns cases per second.
async fn fill(
    store: Arc<dyn CaseStore>,
    embedder: &HashEmbedder,
    prompts: &Arc<Vec<String>>,
    from: usize,
    to: usize,
    concurrency: usize,
) -> f64 {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let store = store.clone();
        let prompts = prompts.clone();
        let embedder = embedder.clone();
        tasks.spawn(async move {
            let mut i = from + worker;
            while i < to {
                let mut case = case(&prompts, i);
                case.embedder = embedder.identity().to_owned();
                let embedding = embedder.embed_now(&case.task);
                store.insert(&case, &embedding).await.expect("insert");
                i += concurrency;
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("insert task");
    }
    (to - from) as f64 / started.elapsed().as_secs_f64()
}

async fn retrieve_latency(service: &CaseService, queries: &[String]) -> (Vec<Duration>, f64) {
    let mut samples = Vec::with_capacity(queries.len());
    let mut hits = 0usize;
    for text in queries {
        let started = Instant::now();
        let retrieved = service
            .retrieve(RetrieveQuery {
                tenant: "bench".into(),
                task: text.clone(),
                k: DEFAULT_K,
                min_reward: DEFAULT_MIN_REWARD,
                min_similarity: DEFAULT_MIN_SIMILARITY,
                agent_opt: None,
                tags: Vec::new(),
                include_negatives: true,
            })
            .await
            .expect("retrieve");
        samples.push(started.elapsed());
        hits += retrieved.positives.len();
    }
    (samples, hits as f64 / queries.len() as f64)
}

fn nearest_query(embedder: &HashEmbedder, text: &str) -> NearestQuery {
    NearestQuery {
        tenant: "bench".into(),
        embedder: embedder.identity().to_owned(),
        embedding: embedder.embed_now(text),
        limit: 4,
        agent_opt: None,
        tags: Vec::new(),
        reward: RewardFilter::Any,
        min_similarity: -1.0,
    }
}

/// recall@4 of `approximate` against `exact`; a returned case counts when it is at least as
/// similar as the exact 4th neighbour (ties between equally similar cases are not misses).
async fn recall(
    approximate: &dyn CaseStore,
    exact: &dyn CaseStore,
    embedder: &HashEmbedder,
    queries: &[String],
) -> f64 {
    let mut found = 0usize;
    let mut wanted = 0usize;
    for text in queries {
        let query = nearest_query(embedder, text);
        let truth = exact.nearest(&query).await.expect("exact");
        let got = approximate.nearest(&query).await.expect("approximate");
        let Some(bound) = truth.last().map(|s| s.similarity - 1e-5) else {
            continue;
        };
        wanted += truth.len();
        found += got
            .iter()
            .take(truth.len())
            .filter(|s| s.similarity >= bound)
            .count();
    }
    found as f64 / wanted.max(1) as f64
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let data = std::env::var("CASEBANK_BENCH_DATA").unwrap_or("/work/shared/routing-eval".into());
    let sizes: Vec<usize> = std::env::var("CASEBANK_BENCH_SIZES")
        .unwrap_or("10000,100000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("size"))
        .collect();
    let query_count: usize = std::env::var("CASEBANK_BENCH_QUERIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let prompts = Arc::new(load_prompts(&data));
    println!("prompts: {} (routing-eval mmlu_dev + gsm8k)", prompts.len());
    let embedder = HashEmbedder::default();

    // Embedding cost.
    let mut embed_samples = Vec::new();
    for prompt in prompts.iter().take(2000) {
        let started = Instant::now();
        std::hint::black_box(embedder.embed_now(prompt));
        embed_samples.push(started.elapsed());
    }
    embed_samples.sort();
    println!(
        "embed {}: p50 {:.1} us, p99 {:.1} us (mean prompt {} bytes)",
        embedder.identity(),
        percentile(&embed_samples, 0.5).as_secs_f64() * 1e6,
        percentile(&embed_samples, 0.99).as_secs_f64() * 1e6,
        prompts.iter().map(String::len).sum::<usize>() / prompts.len()
    );

    // Queries: unseen variants (salted passes) of stored prompts, spread over the data.
    let queries: Vec<String> = (0..query_count)
        .map(|q| task(&prompts, q * 13 + 5, 1000 + q))
        .collect();

    let sqlite_path =
        std::env::temp_dir().join(format!("casebank-bench-{}.sqlite", std::process::id()));
    let sqlite: Arc<dyn CaseStore> =
        Arc::new(SqliteCaseStore::open(&sqlite_path).await.expect("sqlite"));
    // A database kept by an earlier run (CASEBANK_BENCH_KEEP) is reused as it is: its Postgres
    // inserts, the slow part, are skipped, so the query phases can be repeated on a quiet machine.
    let (database_opt, database_url) = match std::env::var("CASEBANK_BENCH_REUSE") {
        Ok(url) => (None, url),
        Err(_) => {
            let database = TestDatabase::create()
                .await
                .expect("DATABASE_URL must be set");
            let url = database.url.clone();
            (Some(database), url)
        }
    };
    let reused = database_opt.is_none();
    let pg_store = Arc::new(
        PgCaseStore::connect(&database_url, &PgOptions::default())
            .await
            .expect("postgres"),
    );
    let postgres: Arc<dyn CaseStore> = pg_store.clone();
    let timeout = Duration::from_secs(30);
    let sqlite_service = CaseService::new(sqlite.clone(), Arc::new(embedder.clone()), timeout);
    let pg_service = CaseService::new(postgres.clone(), Arc::new(embedder.clone()), timeout);

    let mut filled = 0;
    for size in sizes {
        let rate = fill(sqlite.clone(), &embedder, &prompts, filled, size, 1).await;
        println!("sqlite insert {filled}..{size}: {rate:.0} cases/s (1 writer)");
        if reused {
            println!("postgres: reusing {database_url} as it is (no inserts)");
        } else {
            let rate = fill(postgres.clone(), &embedder, &prompts, filled, size, 4).await;
            println!(
                "postgres insert {filled}..{size}: {rate:.0} cases/s (4 writers, HNSW maintained)"
            );
        }
        filled = size;
        // Warm up: loads the SQLite copy, fills Postgres caches.
        let _ = retrieve_latency(&sqlite_service, &queries[..10]).await;
        let _ = retrieve_latency(&pg_service, &queries[..10]).await;
        let (samples, hits) = retrieve_latency(&sqlite_service, &queries).await;
        println!(
            "sqlite   {size} cases: Retrieve {} ({hits:.2} positives/query)",
            summary(samples)
        );
        let (samples, hits) = retrieve_latency(&pg_service, &queries).await;
        println!(
            "postgres {size} cases: Retrieve {} ({hits:.2} positives/query)",
            summary(samples)
        );
        for ef_search in [40, 100, 200, 400] {
            let options = PgOptions {
                ef_search,
                ..PgOptions::default()
            };
            let store = PgCaseStore::connect_lazy(&database_url, &options).expect("postgres");
            let r = recall(&store, sqlite.as_ref(), &embedder, &queries).await;
            let mut samples = Vec::with_capacity(queries.len());
            for text in &queries {
                let query = nearest_query(&embedder, text);
                let started = Instant::now();
                store.nearest(&query).await.expect("nearest");
                samples.push(started.elapsed());
            }
            println!(
                "postgres {size} cases, ef_search {ef_search}: recall@4 vs exact = {r:.4}; k=4 search {}",
                summary(samples)
            );
            store.pool().close().await;
        }
    }
    pg_store.pool().close().await;
    if let Some(database) = database_opt {
        if std::env::var_os("CASEBANK_BENCH_KEEP").is_some() {
            println!("kept the Postgres database: {}", database.url);
        } else {
            database.drop_database().await.expect("drop database");
        }
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", sqlite_path.display()));
    }
}

//! What case-augmented prompting costs per request: the added latency of case retrieval and
//! prompt assembly (issue target: p99 ≤ 5 ms on the embedded store with 10k cases) and the token
//! overhead at K = 4.
//!
//! All five services in one process on the embedded stores, the mock provider at zero latency.
//! `BENCH_CASES` (default 10000) cases of one tenant are stored first (synthetic support tasks
//! built from a small vocabulary, so that neighbours exist); then the same requests are sent
//! with `case_memory` off and on, interleaved, and the difference of the percentiles is the
//! added latency. The bare `CaseBank.Retrieve` call is timed too.
//!
//! Run: `cargo bench --workspace --bench case_memory` (release) or with `--profile dev`.

mod common;

use common::{authed, micros, percentile};
use std::time::{Duration, Instant};

use tollgate::config::Config;
use tollgate_proto::v1 as pb;
use tollgate_proto::v1::case_bank_client::CaseBankClient;
use tollgate_proto::v1::router_client::RouterClient;
use tollgate_test_support::{ServiceTarget as Target, TestGateway, TestResult};

const SUBJECTS: [&str; 12] = [
    "password",
    "invoice",
    "refund",
    "laptop",
    "vpn",
    "printer",
    "payroll",
    "calendar",
    "expense report",
    "badge",
    "wifi",
    "mailbox",
];
const ACTIONS: [&str; 8] = [
    "reset",
    "approve",
    "cancel",
    "replace",
    "configure",
    "recover",
    "update",
    "escalate",
];
const CONTEXTS: [&str; 6] = [
    "for a new employee",
    "after the migration",
    "on the staff portal",
    "from a mobile phone",
    "before the deadline",
    "for the finance team",
];

fn task(n: usize) -> String {
    format!(
        "How do I {} the {} {} (ticket {n})?",
        ACTIONS[n % ACTIONS.len()],
        SUBJECTS[(n / ACTIONS.len()) % SUBJECTS.len()],
        CONTEXTS[(n / 7) % CONTEXTS.len()]
    )
}

fn main() -> TestResult {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> TestResult {
    let cases = common::env_u64("BENCH_CASES", 10_000) as usize;
    let requests = common::env_u64("BENCH_REQUESTS", 500) as usize;
    let mut config = Config::default();
    config.router.policy.casebank.timeout_ms = 1000;
    config.router.token_cache_timeout_ms = 1000;
    let memory = &mut config.router.policy.case_memory;
    memory.timeout_ms = 1000;
    // The synthetic paraphrases sit around 0.5-0.8 cosine with the built-in embedder.
    memory.min_similarity = 0.5;
    let (data_dir, key) = common::bench_tenant(&mut config, "case-memory-bench").await?;
    let gateway = TestGateway::start_with(config, Target::All).await?;
    let casebank = CaseBankClient::new(gateway.channel(Target::Casebank)?);
    let router = RouterClient::new(gateway.channel(Target::Router)?);

    let seeding = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    let per_writer = cases.div_ceil(16);
    for writer in 0..16 {
        let mut client = casebank.clone();
        writers.spawn(async move {
            for n in writer * per_writer..((writer + 1) * per_writer).min(cases) {
                let case = pb::Case {
                    id: format!("seed-{n}"),
                    tenant: "bench".into(),
                    task: task(n),
                    action: Some(pb::CaseAction {
                        tier: pb::Tier::Cheap as i32,
                        model: "mock-cheap".into(),
                        plan_json: format!(
                            "{{\"answer\":\"Open the portal, choose {}, follow the steps.\"}}",
                            SUBJECTS[n % SUBJECTS.len()]
                        ),
                    }),
                    reward: Some(if n % 5 == 0 { 0.2 } else { 0.9 }),
                    ..Default::default()
                };
                client
                    .store_case(pb::StoreCaseRequest { case: Some(case) })
                    .await?;
            }
            Ok::<(), tonic::Status>(())
        });
    }
    while let Some(joined) = writers.join_next().await {
        joined??;
    }
    let seeded_in = seeding.elapsed();

    let request = |n: usize, examples: bool| {
        let mut request = pb::CompleteRequest {
            tenant: "bench".into(),
            messages: vec![pb::Message {
                role: pb::Role::User as i32,
                text: task(cases + n),
                ..Default::default()
            }],
            store_case: Some(false),
            ..Default::default()
        };
        if examples {
            request.case_memory = pb::CaseMemory::Examples as i32;
        }
        request
    };
    // Warm-up.
    for n in 0..50 {
        router
            .clone()
            .complete(authed(request(n, n % 2 == 0), &key))
            .await?;
    }
    let mut off = Vec::with_capacity(requests);
    let mut on = Vec::with_capacity(requests);
    let mut retrieve = Vec::with_capacity(requests);
    let mut token_overhead = 0u64;
    let mut examples_used = 0usize;
    for n in 0..requests {
        let started = Instant::now();
        let plain = router
            .clone()
            .complete(authed(request(n, false), &key))
            .await?
            .into_inner();
        off.push(started.elapsed());
        let started = Instant::now();
        let with = router
            .clone()
            .complete(authed(request(n, true), &key))
            .await?
            .into_inner();
        on.push(started.elapsed());
        let input = |r: &pb::CompleteResponse| r.usage.unwrap_or_default().input_tokens;
        token_overhead += input(&with).saturating_sub(input(&plain));
        examples_used += with.cases_used.len();
        let started = Instant::now();
        casebank
            .clone()
            .retrieve(pb::RetrieveRequest {
                tenant: "bench".into(),
                task: task(cases + n),
                k: Some(4),
                min_reward: Some(0.6),
                min_similarity: Some(0.5),
                ..Default::default()
            })
            .await?;
        retrieve.push(started.elapsed());
    }
    off.sort();
    on.sort();
    retrieve.sort();
    let line = |label: &str, sorted: &[Duration]| {
        format!(
            "{label:<30} p50={:>7.0} µs  p99={:>7.0} µs\n",
            micros(percentile(sorted, 50.0)),
            micros(percentile(sorted, 99.0))
        )
    };
    let mut out = format!(
        "case memory benchmark: {cases} cases seeded in {:.1} s, {requests} requests each way\n",
        seeded_in.as_secs_f64()
    );
    out += &line("Complete, case_memory off", &off);
    out += &line("Complete, case_memory examples", &on);
    out += &format!(
        "{:<30} p50={:>7.0} µs  p99={:>7.0} µs\n",
        "added by case memory",
        micros(percentile(&on, 50.0)) - micros(percentile(&off, 50.0)),
        micros(percentile(&on, 99.0)) - micros(percentile(&off, 99.0)),
    );
    out += &line("CaseBank.Retrieve alone (K=4)", &retrieve);
    out += &format!(
        "examples per request: {:.2}; token overhead per request: {:.0} input tokens\n",
        examples_used as f64 / requests as f64,
        token_overhead as f64 / requests as f64
    );
    use std::io::Write as _;
    std::io::stdout().write_all(out.as_bytes())?;
    gateway.stop().await?;
    std::fs::remove_dir_all(data_dir)?;
    Ok(())
}

//! The whole `Complete` pipeline, all five services in one process on embedded stores, against
//! the mock provider at zero latency, with everything on (classifier, case bank estimate and
//! case store, budget reserve and settle, token-cache context, outbox accounting).
//!
//! Reported:
//! - the floor: the same generation called directly on the provider-adapter (client → adapter
//!   → mock), p50/p99;
//! - open loop at `BENCH_RATE` requests/s (default 500) for `BENCH_SECONDS` (default 10): the
//!   router's p50/p99 and the added latency (router minus the floor at the same percentile).
//!   Latency is measured from each request's scheduled start, so a stall is not hidden by
//!   requests that were never sent (no coordinated omission); how late the load generator
//!   itself sent each request is printed on its own ("sent late by");
//! - closed loop throughput at 32 concurrent requests;
//! - where the open loop's time went: the mean of each `tollgate_router_stage_seconds` stage,
//!   read from the router's /metrics.
//!
//! `BENCH_IN_PROCESS=0` sends the services' calls to each other over loopback TCP instead of in
//! process (`peers.in_process = false`).
//!
//! Run: `cargo bench --workspace --bench pipeline` (release) or add `--profile dev` for a
//! quick debug-build figure; results go to BENCHMARKS.md.

use std::sync::Arc;
mod common;

use common::{authed, micros, percentile};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tollgate::config::Config;
use tollgate_proto::v1 as pb;
use tollgate_proto::v1::provider_adapter_client::ProviderAdapterClient;
use tollgate_proto::v1::router_client::RouterClient;
use tollgate_test_support::{ServiceTarget as Target, TestGateway, TestResult};

fn request(n: u64) -> pb::CompleteRequest {
    pb::CompleteRequest {
        tenant: "bench".into(),
        messages: vec![pb::Message {
            role: pb::Role::User as i32,
            text: format!("Question {n}: what does the handbook say about expenses?"),
            ..Default::default()
        }],
        context: Some(pb::ContextSpec {
            collection: "handbook".into(),
            documents: vec![pb::Document {
                id: "expenses".into(),
                text: Some("Expenses are filed monthly with receipts attached. ".repeat(20)),
            }],
            max_tokens: 0,
        }),
        ..Default::default()
    }
}

fn main() -> TestResult {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> TestResult {
    let rate = common::env_u64("BENCH_RATE", 500);
    let seconds = common::env_u64("BENCH_SECONDS", 10);
    let mut config = Config::default();
    // Generous budgets: the benchmark measures time, a timeout would hide it as "degraded".
    config.router.policy.casebank.timeout_ms = 1000;
    config.router.token_cache_timeout_ms = 1000;
    let in_process = common::env_u64("BENCH_IN_PROCESS", 1) != 0;
    config.peers.in_process = in_process;
    let (data_dir, key) = common::bench_tenant(&mut config, "pipeline-bench").await?;
    let gateway = TestGateway::start_with(config, Target::All).await?;
    let router = RouterClient::new(gateway.channel(Target::Router)?);
    let adapter = ProviderAdapterClient::new(gateway.channel(Target::ProviderAdapter)?);

    // Warm up every path (connections, catalog, tokenizer, first cases).
    for n in 0..200 {
        let response = router
            .clone()
            .complete(authed(request(n), &key))
            .await?
            .into_inner();
        let degraded = response.decision.unwrap_or_default().degraded;
        if !degraded.is_empty() {
            return Err(format!("warm-up ran degraded: {degraded:?}").into());
        }
    }

    // The floor: the mock generation through the provider-adapter alone.
    let mut floor = Vec::new();
    for n in 0..2000u64 {
        let generate = pb::GenerateRequest {
            model: "mock-cheap".into(),
            messages: request(n).messages,
            ..Default::default()
        };
        let started = Instant::now();
        adapter.clone().generate(generate).await?;
        floor.push(started.elapsed());
    }
    floor.sort();

    // Open loop at `rate`. The schedule is kept by a thread of its own with the OS's sleep:
    // tokio's timer has a 1 ms granularity, so `sleep_until` sent each request up to 1 ms after
    // its scheduled start (about 0.5 ms on average at 500/s), and since latency counts from the
    // scheduled start, that lateness of the load generator showed up as router latency. The
    // generator's own lateness is still counted, and reported on its own.
    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now() + Duration::from_millis(50);
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel();
    let runtime = tokio::runtime::Handle::current();
    let generator = {
        let router = router.clone();
        let key = key.clone();
        let latencies = Arc::clone(&latencies);
        let errors = Arc::clone(&errors);
        std::thread::spawn(move || {
            let mut lateness = Vec::with_capacity(total as usize);
            for n in 0..total {
                let scheduled = start + interval * n as u32;
                if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                lateness.push(scheduled.elapsed());
                let mut client = router.clone();
                let call = authed(request(1000 + n), &key);
                let latencies = Arc::clone(&latencies);
                let errors = Arc::clone(&errors);
                let task = runtime.spawn(async move {
                    match client.complete(call).await {
                        Ok(_) => latencies.lock().await.push(scheduled.elapsed()),
                        Err(_) => {
                            errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
                if sent_tx.send(task).is_err() {
                    break;
                }
            }
            lateness.sort();
            lateness
        })
    };
    while let Some(task) = sent_rx.recv().await {
        task.await?;
    }
    let lateness = generator
        .join()
        .map_err(|_| "the load generator thread panicked")?;
    let achieved = total as f64 / start.elapsed().as_secs_f64();
    let metrics_addr = gateway.service(Target::Router)?.metrics;
    let (_, metrics_text) = tollgate_test_support::http_get(metrics_addr, "/metrics").await?;
    let stages = stage_means(&metrics_text);
    let mut open = std::mem::take(&mut *latencies.lock().await);
    open.sort();

    // Closed loop: how many requests per second at 32 in flight.
    let concurrency = 32;
    let window = Duration::from_secs(5);
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let closed_start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let mut client = router.clone();
        let key = key.clone();
        let done = Arc::clone(&done);
        workers.spawn(async move {
            let mut n = 1_000_000 + worker * 1_000_000;
            while closed_start.elapsed() < window {
                if client.complete(authed(request(n), &key)).await.is_ok() {
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                n += 1;
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let throughput = done.load(std::sync::atomic::Ordering::Relaxed) as f64
        / closed_start.elapsed().as_secs_f64();

    let mut out = String::new();
    let mut report = |label: &str, sorted: &[Duration]| {
        out += &format!(
            "{label:<28} n={:<6} p50={:>8.0} µs  p99={:>8.0} µs  max={:>8.0} µs\n",
            sorted.len(),
            micros(percentile(sorted, 50.0)),
            micros(percentile(sorted, 99.0)),
            micros(sorted.last().copied().unwrap_or_default()),
        );
    };
    report("adapter alone (floor)", &floor);
    report(&format!("router open loop {rate}/s"), &open);
    report("  of which sent late by", &lateness);
    out += &format!(
        "{:<28} p50={:>8.0} µs  p99={:>8.0} µs\n",
        "added by the router",
        micros(percentile(&open, 50.0)) - micros(percentile(&floor, 50.0)),
        micros(percentile(&open, 99.0)) - micros(percentile(&floor, 99.0)),
    );
    out += &format!(
        "open loop achieved {achieved:.0} requests/s, {} errors\n",
        errors.load(std::sync::atomic::Ordering::Relaxed)
    );
    out += &format!("closed loop at {concurrency} in flight: {throughput:.0} requests/s\n");
    out += &format!("router stages, mean over warm-up and open loop (in process: {in_process}):\n");
    for (stage, count, mean_seconds) in stages {
        out += &format!(
            "  {stage:<10} n={count:<6} mean={:>8.0} µs\n",
            mean_seconds * 1e6
        );
    }
    use std::io::Write as _;
    std::io::stdout().write_all(
        format!(
            "pipeline benchmark (mock provider at zero latency, everything on, one process)\n{out}"
        )
        .as_bytes(),
    )?;
    gateway.stop().await?;
    std::fs::remove_dir_all(data_dir)?;
    Ok(())
}

/// `(stage, count, mean seconds)` of each `tollgate_router_stage_seconds` stage in a
/// Prometheus text exposition.
fn stage_means(text: &str) -> Vec<(String, f64, f64)> {
    let value = |line: &str| line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
    let stage = |line: &str| {
        let start = line.find("stage=\"")? + "stage=\"".len();
        let end = line[start..].find('"')? + start;
        Some(line[start..end].to_owned())
    };
    let mut sums = std::collections::BTreeMap::<String, (f64, f64)>::new();
    for line in text.lines() {
        let (Some(name), Some(stage), Some(value)) =
            (line.split('{').next(), stage(line), value(line))
        else {
            continue;
        };
        match name {
            "tollgate_router_stage_seconds_sum" => sums.entry(stage).or_default().0 += value,
            "tollgate_router_stage_seconds_count" => sums.entry(stage).or_default().1 += value,
            _ => {}
        }
    }
    sums.into_iter()
        .filter(|(_, (_, count))| *count > 0.0)
        .map(|(stage, (sum, count))| (stage, count, sum / count))
        .collect()
}

//! Added latency of the provider-adapter over calling the upstream directly.
//!
//! A fake OpenAI-compatible upstream (tollgate-test-support) answers at once, or, in the rows
//! with a model delay, after 10-30 ms (chosen by the prompt, so both paths see the same
//! delays). The same requests are sent (a) directly to it over HTTP with the adapter's own
//! pooled client, and (b) through the adapter over gRPC (client → adapter → upstream).
//! Reported: p50/p99 of both and their difference, at 1 and 64 concurrent requests, for unary
//! calls and for the time to the first streamed chunk. With an upstream that answers at once,
//! 64 requests in flight measure the throughput of the 2 cores that caller, adapter and
//! upstream share (each request queues behind the others); with the model delay they measure
//! what the adapter adds to each request at that concurrency. A trivial RPC (EstimateCost)
//! over the same gRPC hop gives the floor that the hop alone costs, and
//! `scripts/loopback_rtt.py` the floor under that (a bare TCP round trip). Caller, adapter and upstream run on separate runtimes, as separate processes would
//! (see `main`).
//!
//! Run: `cargo bench --workspace --bench provider_adapter` (release; BENCHMARKS.md).
//! `BENCH_REQUESTS` sets the number of measured requests per case (default 2000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_stream::StreamExt;
use tollgate::config::Config;
use tollgate_proto::v1 as pb;
use tollgate_proto::v1::provider_adapter_client::ProviderAdapterClient;
use tollgate_provider_adapter::config::{
    ModelConfig, ProviderAdapterConfig, ProviderConfig, ProviderKind, TierName,
};
use tollgate_test_support::fake_upstream::{FakeKind, FakeUpstream};
use tollgate_test_support::{ServiceTarget, TestGateway, TestResult};

/// How long the fake model takes to answer in the rows that give it a delay (see `measure`).
const UPSTREAM_DELAY_MS: u64 = 20;

/// Requests per task before measuring (see `measure`).
const WARM_UP_PER_TASK: usize = 10;

type Client = ProviderAdapterClient<tollgate_kit::grpc::client::TracedChannel>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Unary,
    FirstChunk,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The prompt of request `index`: the fake upstream's delay follows it (see `measure`).
fn prompt(index: usize) -> String {
    format!("What is the capital of France? (request {index})")
}

async fn direct_once(
    http: &reqwest::Client,
    url: &str,
    mode: Mode,
    index: usize,
) -> TestResult<Duration> {
    let mut body = json!({
        "model": "fake-upstream",
        "messages": [{ "role": "user", "content": prompt(index) }],
    });
    if mode == Mode::FirstChunk {
        body["stream"] = json!(true);
        body["stream_options"] = json!({ "include_usage": true });
    }
    let started = Instant::now();
    let response = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(&body)?)
        .send()
        .await?;
    match mode {
        Mode::Unary => {
            let bytes: bytes::Bytes = response.bytes().await?;
            let value: serde_json::Value = serde_json::from_slice(&bytes)?;
            if value.pointer("/choices/0/message/content").is_none() {
                return Err("no content".into());
            }
            Ok(started.elapsed())
        }
        Mode::FirstChunk => {
            let mut chunks = response.bytes_stream();
            let mut seen = Vec::new();
            let mut first = None;
            while let Some(chunk) = chunks.next().await {
                let chunk: bytes::Bytes = chunk?;
                seen.extend_from_slice(&chunk);
                if first.is_none()
                    && seen.windows(11).any(|w| w == b"\"content\":\"")
                    && seen.windows(5).any(|w| w == b"Hello")
                {
                    first = Some(started.elapsed());
                }
            }
            first.ok_or_else(|| "no content chunk".into())
        }
    }
}

async fn adapter_once(client: &mut Client, mode: Mode, index: usize) -> TestResult<Duration> {
    let request = pb::GenerateRequest {
        model: "fake-model".into(),
        messages: vec![pb::Message {
            role: pb::Role::User as i32,
            text: prompt(index),
            ..Default::default()
        }],
        ..Default::default()
    };
    let started = Instant::now();
    match mode {
        Mode::Unary => {
            let answer = client.generate(request).await?.into_inner();
            if answer.text.is_empty() {
                return Err("empty answer".into());
            }
            Ok(started.elapsed())
        }
        Mode::FirstChunk => {
            let mut events = client
                .generate_stream(pb::GenerateStreamRequest {
                    request: Some(request),
                })
                .await?
                .into_inner();
            let mut first = None;
            while let Some(event) = events.next().await {
                if let Some(pb::generate_stream_response::Event::Delta(_)) = event?.event
                    && first.is_none()
                {
                    first = Some(started.elapsed());
                }
            }
            first.ok_or_else(|| "no delta".into())
        }
    }
}

/// Latencies of every request of `concurrency` tasks (`make` gets the task's number), sorted.
async fn run<F, Fut>(concurrency: usize, make: F) -> TestResult<Vec<Duration>>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = TestResult<Vec<Duration>>> + Send + 'static,
{
    let make = Arc::new(make);
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..concurrency {
        let make = Arc::clone(&make);
        tasks.spawn(async move { make(task).await });
    }
    let mut all = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        all.extend(joined.map_err(|e| e.to_string())??);
    }
    all.sort();
    Ok(all)
}

/// The fake upstream, the adapter and the caller each get their own runtime, as three processes
/// would: on one shared runtime the caller's and the upstream's tasks compete with the adapter's
/// for its worker threads and wake each other across them, which no deployment does. The adapter
/// runs as `tollgate serve` does (a multi-thread runtime, one worker per core); the upstream on
/// one worker; the caller on the benchmark's own thread.
fn main() -> TestResult {
    let upstream_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("fake-upstream")
        .enable_all()
        .build()?;
    let adapter_runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("adapter")
        .enable_all()
        .build()?;
    let caller_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let upstream = upstream_runtime.block_on(FakeUpstream::start(FakeKind::OpenAi))?;
    let gateway = adapter_runtime.block_on(start_adapter(&upstream.base_url()))?;
    let result = caller_runtime.block_on(measure(&gateway, &upstream));
    adapter_runtime.block_on(gateway.stop())?;
    drop(upstream);
    let out = result?;
    use std::io::Write;
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(())
}

async fn start_adapter(upstream_url: &str) -> TestResult<TestGateway> {
    let adapter = ProviderAdapterConfig {
        providers: vec![ProviderConfig::new(
            "fake",
            ProviderKind::Openai,
            upstream_url,
        )],
        models: vec![ModelConfig {
            id: "fake-model".into(),
            provider: "fake".into(),
            upstream_model: Some("fake-upstream".into()),
            tier: TierName::Cheap,
            capabilities: Vec::new(),
            context_window: 128_000,
            max_output_tokens: 4_096,
            input_per_mtok_usd: "0.15".into(),
            output_per_mtok_usd: "0.6".into(),
            cached_input_per_mtok_usd: None,
            cache_write_per_mtok_usd: None,
            tokenizer: "o200k_base".into(),
            embedding_dimensions: None,
        }],
        groups: Vec::new(),
        ..ProviderAdapterConfig::default()
    };
    TestGateway::start_with(
        Config {
            provider_adapter: adapter,
            ..Config::default()
        },
        ServiceTarget::ProviderAdapter,
    )
    .await
}

/// Both paths, from the caller's runtime; returns the report.
async fn measure(gateway: &TestGateway, upstream: &FakeUpstream) -> TestResult<String> {
    let upstream_url = upstream.base_url();
    let total: usize = std::env::var("BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let channel = gateway.channel(ServiceTarget::ProviderAdapter)?;
    let http = tollgate_provider_adapter::providers::http_client(Duration::from_secs(2))?;
    let url = format!("{upstream_url}/chat/completions");

    let mut out = String::new();
    out.push_str("| mode | concurrency | model delay | direct p50 | direct p99 | via adapter p50 | via adapter p99 | added p50 | added p99 |\n|---|---|---|---|---|---|---|---|---|\n");
    // An upstream that answers at once makes 64 requests in flight a throughput test of the
    // shared 2 cores (every request queues behind the others); a model that takes 10-30 ms to
    // answer, still far faster than a real one, leaves the cores mostly idle, so the rows with
    // it show what the adapter adds to each request at that concurrency. Each request's delay
    // follows its prompt, and both paths send the same prompts, so both see the same delays.
    let cases = [(1usize, 0u64), (64, 0), (64, UPSTREAM_DELAY_MS)];
    for mode in [Mode::Unary, Mode::FirstChunk] {
        for (concurrency, delay_ms) in cases {
            upstream.set_default_delay(Duration::from_millis(delay_ms));
            let per_task = (total / concurrency).max(1);
            let direct_path = |per_task: usize| {
                let (h, u) = (http.clone(), url.clone());
                run(concurrency, move |task| {
                    let (h, u) = (h.clone(), u.clone());
                    async move {
                        let mut latencies = Vec::with_capacity(per_task);
                        for i in 0..per_task {
                            let index = task * per_task + i;
                            latencies.push(direct_once(&h, &u, mode, index).await?);
                        }
                        Ok(latencies)
                    }
                })
            };
            let adapter_path = |per_task: usize| {
                let c = channel.clone();
                run(concurrency, move |task| {
                    let mut client = Client::new(c.clone());
                    async move {
                        let mut latencies = Vec::with_capacity(per_task);
                        for i in 0..per_task {
                            let index = task * per_task + i;
                            latencies.push(adapter_once(&mut client, mode, index).await?);
                        }
                        Ok(latencies)
                    }
                })
            };
            // Warm-up at the measured concurrency: the tokenizer, the allocator, and as many
            // pooled upstream connections as there are requests in flight (the adapter's and
            // the direct client's), so that the percentiles measure the steady state and not
            // the 63 connection set-ups of the first 64-way wave.
            direct_path(WARM_UP_PER_TASK).await?;
            adapter_path(WARM_UP_PER_TASK).await?;
            let direct = direct_path(per_task).await?;
            let via = adapter_path(per_task).await?;
            let ms = |d: Duration| format!("{:.3} ms", d.as_secs_f64() * 1e3);
            let added = |p: f64| {
                let (a, b) = (percentile(&via, p), percentile(&direct, p));
                format!("{:.3} ms", (a.as_secs_f64() - b.as_secs_f64()) * 1e3)
            };
            out.push_str(&format!(
                "| {} | {concurrency} | {} | {} | {} | {} | {} | {} | {} |\n",
                if mode == Mode::Unary {
                    "unary"
                } else {
                    "first chunk"
                },
                if delay_ms == 0 {
                    "none".to_owned()
                } else {
                    format!("{}-{} ms", delay_ms / 2, delay_ms * 3 / 2)
                },
                ms(percentile(&direct, 50.0)),
                ms(percentile(&direct, 99.0)),
                ms(percentile(&via, 50.0)),
                ms(percentile(&via, 99.0)),
                added(50.0),
                added(99.0),
            ));
        }
    }
    upstream.set_default_delay(Duration::ZERO);
    // The floor: a trivial RPC (EstimateCost, no upstream) over the same gRPC hop.
    out.push_str(
        "\n| gRPC hop alone (EstimateCost) | concurrency | p50 | p99 |\n|---|---|---|---|\n",
    );
    for concurrency in [1usize, 64] {
        let per_task = (total / concurrency).max(1);
        let c = channel.clone();
        let floor = run(concurrency, move |_| {
            let mut client = Client::new(c.clone());
            async move {
                let mut latencies = Vec::with_capacity(per_task);
                for _ in 0..per_task {
                    let started = Instant::now();
                    client
                        .estimate_cost(pb::EstimateCostRequest {
                            model: "fake-model".into(),
                            usage: Some(pb::Usage {
                                input_tokens: 100,
                                output_tokens: 10,
                                ..Default::default()
                            }),
                        })
                        .await?;
                    latencies.push(started.elapsed());
                }
                Ok(latencies)
            }
        })
        .await?;
        out.push_str(&format!(
            "| | {concurrency} | {:.3} ms | {:.3} ms |\n",
            percentile(&floor, 50.0).as_secs_f64() * 1e3,
            percentile(&floor, 99.0).as_secs_f64() * 1e3,
        ));
    }
    Ok(out)
}

//! GetContext latency, in process and through gRPC: a miss (tokenize afresh, Redis asked and
//! written), an L1 hit and an L2 hit (a fresh instance whose L1 is cold), for 8 documents of ~1k
//! tokens and 2 documents of ~10k tokens, side by side with tokenizing the assembled text
//! directly. Also: bytes per token of the Redis values and how often joins of real documents can
//! be cut exactly (per-document reuse), per encoding.
//!
//! Needs REDIS_URL. Run: `cargo bench --workspace -p tollgate-token-cache --bench token_cache`
//! (add `--profile dev` to skip the release build of every dependency). Under `cargo test` it
//! makes one quick pass only. Documents are cut from
//! this repository's own text (README, protos, Rust sources): prose and code, as RAG context is.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate::config::Config;
use tollgate_proto::v1 as pb;
use tollgate_proto::v1::token_cache_client::TokenCacheClient;
use tollgate_test_support::{ServiceTarget, TestGateway};
use tollgate_token_cache::TokenCacheConfig;
use tollgate_token_cache::keys::{content_hash, lookup_hash};
use tollgate_token_cache::segments::Assembly;
use tollgate_token_cache::service::{ContextRequest, DocumentInput, TokenCacheService};
use tollgate_token_cache::tokenizer::{Tokenizer, TokenizerRegistry};

type BenchResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn corpus() -> BenchResult<(String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let prose = std::fs::read_to_string(root.join("README.md"))?;
    let mut all = prose.clone();
    let mut stack = vec![root.join("proto"), root.join("crates")];
    let mut files = Vec::new();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("rs" | "proto")
            ) {
                files.push(path);
            }
        }
    }
    files.sort();
    for file in files {
        all.push_str("\n\n");
        all.push_str(&std::fs::read_to_string(file)?);
    }
    Ok((prose, all))
}

/// `count` documents of about `tokens` tokens each, cut from the corpus at line starts, each made
/// unique by `variant` (a first line), so that every variant misses.
fn documents(
    corpus: &str,
    tokenizer: &Tokenizer,
    count: usize,
    tokens: usize,
    variant: usize,
) -> Vec<String> {
    let lines: Vec<&str> = corpus.lines().collect();
    let mut docs = Vec::new();
    let mut line = (variant * 37) % lines.len();
    for index in 0..count {
        let mut doc = format!("Document {index}, revision {variant}\n");
        let mut doc_tokens = 0;
        while doc_tokens < tokens {
            let next = lines[line % lines.len()];
            line += 1;
            doc_tokens += tokenizer.encode(next).map_or(0, |ids| ids.len()) + 1;
            doc.push_str(next);
            doc.push('\n');
        }
        docs.push(doc.trim_end().to_owned());
    }
    docs
}

fn request(docs: &[String]) -> ContextRequest {
    ContextRequest {
        collection: "bench".into(),
        documents: docs
            .iter()
            .enumerate()
            .map(|(i, text)| DocumentInput::Inline {
                id: format!("d{i}"),
                text: text.clone(),
            })
            .collect(),
        tokenizer: "cl100k_base".into(),
        max_tokens: None,
        separator: "\n\n".into(),
    }
}

fn grpc_request(docs: &[String]) -> pb::GetContextRequest {
    pb::GetContextRequest {
        collection: "bench".into(),
        documents: docs
            .iter()
            .enumerate()
            .map(|(i, text)| pb::Document {
                id: format!("d{i}"),
                text: Some(text.clone()),
            })
            .collect(),
        tokenizer: "cl100k_base".into(),
        max_tokens: 0,
        separator: None,
    }
}

#[derive(Debug, Default)]
struct Samples(Vec<Duration>);

impl Samples {
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.0.clone();
        sorted.sort();
        let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted.get(index).copied().unwrap_or_default()
    }
}

fn micros(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

struct Row {
    path: &'static str,
    shape: &'static str,
    fresh: Samples,
    miss: Samples,
    l1: Samples,
    l2: Samples,
}

/// The parts of an in-process L2 hit for `docs`, each timed alone (p50 of 300): hashing the
/// documents' text, one MGET of values the size of theirs (one per document, as the bench's
/// contexts are cut), and checking and decoding those values.
async fn l2_hit_anatomy(
    redis_url: &str,
    prefix: &str,
    shape: &str,
    tokenizer: &Tokenizer,
    docs: &[String],
) -> BenchResult<String> {
    use tollgate_token_cache::codec::{self, SegmentTokens};
    use tollgate_token_cache::store::redis::RedisStore;
    let store = RedisStore::new(
        redis_url,
        &format!("{prefix}anatomy:"),
        Duration::from_secs(1),
    )?;
    let mut keys = Vec::new();
    let mut values = Vec::new();
    let mut content_keys = Vec::new();
    for (index, doc) in docs.iter().enumerate() {
        let (key, content_key) = ([index as u8; 16], [index as u8; 32]);
        let ids = tokenizer.encode(doc)?;
        let value = codec::encode(
            &content_key,
            &SegmentTokens {
                ids,
                doc_starts: vec![0],
            },
        );
        store
            .put_segment(&key, &value, Duration::from_secs(60))
            .await?;
        keys.push(key);
        content_keys.push(content_key);
        values.push(value);
    }
    let mut samples: [Samples; 4] = Default::default();
    let [lookup, hash, mget, decode] = &mut samples;
    for _ in 0..300 {
        let started = Instant::now();
        for doc in docs {
            std::hint::black_box(lookup_hash(doc));
        }
        lookup.0.push(started.elapsed());
        let started = Instant::now();
        for doc in docs {
            std::hint::black_box(content_hash(doc));
        }
        hash.0.push(started.elapsed());
        let started = Instant::now();
        let fetched = store.get_segments(&keys).await?;
        mget.0.push(started.elapsed());
        if fetched.iter().flatten().count() != keys.len() {
            return Err("anatomy: a value written a moment ago is missing".into());
        }
        let started = Instant::now();
        for (key, value) in content_keys.iter().zip(&values) {
            std::hint::black_box(codec::decode(key, value)?);
        }
        decode.0.push(started.elapsed());
    }
    let bytes: usize = values.iter().map(Vec::len).sum();
    Ok(format!(
        "L2 hit anatomy, {shape}: XXH3-128 of the text ({} KB) p50 {}, SHA-256 of it p50 {} (the service computes it while the MGET is out), MGET of {} values ({} KB) p50 {}, check and decode p50 {}",
        docs.iter().map(String::len).sum::<usize>() / 1000,
        micros(lookup.percentile(0.5)),
        micros(hash.percentile(0.5)),
        keys.len(),
        bytes / 1000,
        micros(mget.percentile(0.5)),
        micros(decode.percentile(0.5)),
    ))
}

/// Encoding and decoding a GetContext answer with `ids` (p50 of 300 each): with tollgate's codec
/// (what its servers and generated clients put on and read from the wire) and with prost alone
/// (tonic-prost's codec), for the same bytes.
fn answer_codec_cost(shape: &str, ids: Vec<u32>) -> BenchResult<String> {
    use prost::Message;
    use tollgate_proto::codec::{decode_message, encode_message};
    let answer = pb::GetContextResponse {
        untruncated_tokens: ids.len() as u64,
        token_ids: ids,
        tokenizer_id: "cl100k_base:0123456789abcdef".into(),
        ..Default::default()
    };
    let wire = bytes::Bytes::from(answer.encode_to_vec());
    if encode_message(answer.clone()) != wire {
        return Err("tollgate's codec and prost encode a GetContext answer differently".into());
    }
    let mut costs: [Samples; 4] = Default::default();
    for _ in 0..300 {
        let message = answer.clone();
        let started = Instant::now();
        std::hint::black_box(encode_message(message));
        costs[0].0.push(started.elapsed());
        let started = Instant::now();
        std::hint::black_box(decode_message::<pb::GetContextResponse>(wire.clone())?);
        costs[1].0.push(started.elapsed());
        let started = Instant::now();
        std::hint::black_box(answer.encode_to_vec());
        costs[2].0.push(started.elapsed());
        let started = Instant::now();
        std::hint::black_box(pb::GetContextResponse::decode(wire.clone())?);
        costs[3].0.push(started.elapsed());
    }
    let [ours_encode, ours_decode, prost_encode, prost_decode] = costs.map(|c| c.percentile(0.5));
    Ok(format!(
        "GetContext answer, {shape} ({} IDs, {} KB): tollgate codec encode p50 {} / decode p50 {}; prost alone encode p50 {} / decode p50 {}",
        answer.token_ids.len(),
        wire.len() / 1000,
        micros(ours_encode),
        micros(ours_decode),
        micros(prost_encode),
        micros(prost_decode),
    ))
}

/// What a miss pays beyond plain tokenization to know where each document starts: the same
/// text through `encode` and `encode_with_starts` (p50 of 20 each).
fn starts_cost(shape: &str, tokenizer: &Tokenizer, text: &str) -> BenchResult<String> {
    let (mut plain, mut with_starts) = (Samples::default(), Samples::default());
    for _ in 0..20 {
        let started = Instant::now();
        std::hint::black_box(tokenizer.encode(text)?);
        plain.0.push(started.elapsed());
        let started = Instant::now();
        std::hint::black_box(tokenizer.encode_with_starts(text)?);
        with_starts.0.push(started.elapsed());
    }
    Ok(format!(
        "miss anatomy, {shape} as one text: encode p50 {}, encode with token starts p50 {}",
        micros(plain.percentile(0.5)),
        micros(with_starts.percentile(0.5)),
    ))
}

/// Three runtimes, as three processes would have them:
/// - `in_process` (multi-thread, 2 workers) runs the in-process rows, as the service runs inside
///   `tollgate serve`;
/// - `server` (the same) runs the services the gRPC rows call;
/// - `client` (current-thread) makes the gRPC calls, on the thread that also runs tonic's client
///   tasks (its buffer and connection tasks), as a caller's handler task shares a worker with
///   them. Until the fifth session the calls came from `block_on` of a multi-thread runtime: the
///   calling future then ran on the main thread and tonic's tasks on the workers, so every call
///   crossed threads twice more than a caller's does, about 40 µs per bare tonic call here. The
///   floor line reports the same bare call from a task on a multi-thread runtime: it costs the
///   same as from the current-thread client.
fn main() -> BenchResult {
    // The Prometheus recorder `tollgate serve` installs before it builds any service: the
    // in-process rows then pay for their metrics as a service in production does.
    tollgate_kit::metrics::install("stable")?;
    let in_process = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("token-cache-server")
        .enable_all()
        .build()?;
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    client.block_on(run(server.handle().clone(), in_process.handle().clone()))
}

/// A plain tonic server on the `server` runtime serving only grpc.health.v1 (no tollgate code: no
/// layers, no codec of ours), with TCP_NODELAY: the floor of any unary call through tonic here.
async fn start_bare_tonic(server: &tokio::runtime::Handle) -> BenchResult<std::net::SocketAddr> {
    let listener = server
        .spawn(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .await??;
    let addr = listener.local_addr()?;
    server.spawn(async move {
        let (_reporter, health) = tonic_health::server::health_reporter();
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        if let Err(error) = tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(incoming)
            .await
        {
            tracing::error!(%error, "the bare tonic server of the benchmark stopped");
        }
    });
    Ok(addr)
}

/// Returns once the service has built every tokenizer: until then its warm-up thread takes a CPU
/// (about 0.5 s of it here), which on a 2-CPU host slows whatever is being timed. ListTokenizers
/// waits for each tokenizer the warm-up is still building.
async fn wait_for_tokenizers(
    client: &mut TokenCacheClient<tollgate_kit::grpc::client::TracedChannel>,
) -> BenchResult {
    client.list_tokenizers(pb::ListTokenizersRequest {}).await?;
    Ok(())
}

/// Starts a token-cache service on the `server` runtime.
async fn start_service(
    server: &tokio::runtime::Handle,
    config: &Config,
) -> BenchResult<TestGateway> {
    let config = config.clone();
    server
        .spawn(async move { TestGateway::start_with(config, ServiceTarget::TokenCache).await })
        .await?
}

async fn stop_service(server: &tokio::runtime::Handle, gateway: TestGateway) -> BenchResult {
    server.spawn(gateway.stop()).await?
}

/// A context shape: name, documents, tokens per document, distinct contexts (misses) measured.
type Shape = (&'static str, usize, usize, usize);

/// The in-process rows, and the anatomy lines of their L2 hits, misses and answers.
async fn in_process_rows(
    shapes: [Shape; 2],
    hit_iterations: usize,
    redis_url: String,
    prefix: String,
    corpus: Arc<str>,
) -> BenchResult<(Vec<Row>, Vec<String>)> {
    let tokenizer = TokenizerRegistry::builtin().resolve("cl100k_base")?;
    let mut rows = Vec::new();
    let mut anatomy = Vec::new();
    for (shape, count, tokens, misses) in shapes {
        let config = TokenCacheConfig {
            key_prefix: prefix.clone(),
            ..TokenCacheConfig::default()
        };
        let writer = Arc::new(TokenCacheService::new(config.clone(), Some(&redis_url))?);
        let mut row = Row {
            path: "in process",
            shape,
            fresh: Samples::default(),
            miss: Samples::default(),
            l1: Samples::default(),
            l2: Samples::default(),
        };
        let mut variants = Vec::new();
        for variant in 0..misses {
            let docs = documents(&corpus, &tokenizer, count, tokens, 1000 + variant);
            let assembled = docs.join("\n\n");
            let started = Instant::now();
            let fresh = tokenizer.encode(&assembled)?;
            row.fresh.0.push(started.elapsed());
            let started = Instant::now();
            let context = writer.get_context(request(&docs)).await?;
            row.miss.0.push(started.elapsed());
            if context.token_ids != fresh {
                return Err("drift: cached context differs from a fresh tokenization".into());
            }
            variants.push(docs);
        }
        let hot = request(&variants[0]);
        let hot_ids = writer.get_context(hot.clone()).await?.token_ids;
        anatomy.push(answer_codec_cost(shape, hot_ids)?);
        for _ in 0..hit_iterations {
            let started = Instant::now();
            writer.get_context(hot.clone()).await?;
            row.l1.0.push(started.elapsed());
        }
        anatomy.push(l2_hit_anatomy(&redis_url, &prefix, shape, &tokenizer, &variants[0]).await?);
        anatomy.push(starts_cost(shape, &tokenizer, &variants[0].join("\n\n"))?);
        // L2 hits: a fresh instance (cold L1) per pass over the variants written above.
        let mut passes = 0;
        while row.l2.0.len() < hit_iterations.min(variants.len() * 8) && passes < 8 {
            let reader = TokenCacheService::new(config.clone(), Some(&redis_url))?;
            for docs in &variants {
                let started = Instant::now();
                reader.get_context(request(docs)).await?;
                row.l2.0.push(started.elapsed());
            }
            passes += 1;
        }
        rows.push(row);
    }
    Ok((rows, anatomy))
}

async fn run(server: tokio::runtime::Handle, in_process: tokio::runtime::Handle) -> BenchResult {
    let redis_url = std::env::var("REDIS_URL")
        .map_err(|_| "REDIS_URL is not set: `eval \"$(scripts/services.sh env)\"` first")?;
    // `cargo test --all-targets` runs this binary too (without `--bench`): then only a quick pass,
    // as a smoke test that the benchmark still works.
    let quick =
        !std::env::args().any(|arg| arg == "--bench") || std::env::var_os("BENCH_QUICK").is_some();
    let (prose, corpus) = corpus()?;
    let registry = TokenizerRegistry::builtin();
    let tokenizer = registry.resolve("cl100k_base")?;
    let prefix = format!("tollgate-bench:{}:", std::process::id());
    let mut out = std::io::stdout().lock();

    let shapes: [Shape; 2] = if quick {
        [("8 x 1k", 8, 1000, 5), ("2 x 10k", 2, 10_000, 3)]
    } else {
        [("8 x 1k", 8, 1000, 40), ("2 x 10k", 2, 10_000, 25)]
    };
    let hit_iterations = if quick { 20 } else { 300 };

    // In process, on a multi-thread runtime of its own.
    let (mut rows, anatomy) = in_process
        .spawn(in_process_rows(
            shapes,
            hit_iterations,
            redis_url.clone(),
            prefix.clone(),
            Arc::from(corpus.as_str()),
        ))
        .await??;

    // Through gRPC: one service on 127.0.0.1:0 with Redis, a real client.
    let mut floor = Samples::default();
    let mut bare_floor = Samples::default();
    let mut beside_l1 = Vec::new();
    let bare_addr = start_bare_tonic(&server).await?;
    let bare_endpoint =
        tonic::transport::Endpoint::from_shared(format!("http://{bare_addr}"))?.tcp_nodelay(true);
    let mut bare_health =
        tonic_health::pb::health_client::HealthClient::new(bare_endpoint.connect().await?);
    // The same bare call from a client on a multi-thread runtime (its tasks live there).
    let mut multi_thread_floor = Samples::default();
    let multi_thread_health = {
        let endpoint = bare_endpoint.clone();
        in_process
            .spawn(async move { endpoint.connect().await })
            .await??
    };
    for (shape, count, tokens, misses) in shapes {
        let mut config = Config::default();
        config.storage.redis_url = Some(redis_url.clone());
        config.token_cache.key_prefix = prefix.clone();
        let gateway = start_service(&server, &config).await?;
        let mut client = TokenCacheClient::new(gateway.channel(ServiceTarget::TokenCache)?);
        wait_for_tokenizers(&mut client).await?;
        let mut row = Row {
            path: "gRPC",
            shape,
            fresh: Samples::default(),
            miss: Samples::default(),
            l1: Samples::default(),
            l2: Samples::default(),
        };
        let mut variants = Vec::new();
        for variant in 0..misses {
            let docs = documents(&corpus, &tokenizer, count, tokens, 5000 + variant);
            let started = Instant::now();
            let _ = tokenizer.encode(&docs.join("\n\n"))?;
            row.fresh.0.push(started.elapsed());
            let request = grpc_request(&docs);
            let started = Instant::now();
            client.get_context(request.clone()).await?;
            row.miss.0.push(started.elapsed());
            variants.push(request);
        }
        // Each L1 hit is followed by a bare tonic call, so that what tollgate adds to a hit can
        // be read on any host: the target is absolute, and this host's bare call alone varies
        // by more than a factor of two between sessions (BENCHMARKS.md).
        let mut bare_beside_l1 = Samples::default();
        for _ in 0..hit_iterations {
            let started = Instant::now();
            client.get_context(variants[0].clone()).await?;
            row.l1.0.push(started.elapsed());
            let started = Instant::now();
            bare_health
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await?;
            bare_beside_l1.0.push(started.elapsed());
        }
        beside_l1.push(format!(
            "gRPC L1 hit, {shape}: p50 {} / p99 {}; interleaved with it, bare tonic Health/Check: p50 {} / p99 {}; the hit's p50 and p99 above the bare call's: {} / {}",
            micros(row.l1.percentile(0.5)),
            micros(row.l1.percentile(0.99)),
            micros(bare_beside_l1.percentile(0.5)),
            micros(bare_beside_l1.percentile(0.99)),
            micros(row.l1.percentile(0.5).saturating_sub(bare_beside_l1.percentile(0.5))),
            micros(row.l1.percentile(0.99).saturating_sub(bare_beside_l1.percentile(0.99))),
        ));
        // The floor under an L1 hit through gRPC: the same call for a one-word context, and
        // tonic's own floor (a health check of a bare tonic server), interleaved call by call so
        // that both see the same moment of a noisy machine.
        let tiny = grpc_request(&["floor".to_owned()]);
        for _ in 0..hit_iterations {
            let started = Instant::now();
            client.get_context(tiny.clone()).await?;
            floor.0.push(started.elapsed());
            let started = Instant::now();
            bare_health
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await?;
            bare_floor.0.push(started.elapsed());
            let mut health =
                tonic_health::pb::health_client::HealthClient::new(multi_thread_health.clone());
            multi_thread_floor.0.push(
                in_process
                    .spawn(async move {
                        let started = Instant::now();
                        health
                            .check(tonic_health::pb::HealthCheckRequest::default())
                            .await
                            .map(|_| started.elapsed())
                    })
                    .await??,
            );
        }
        stop_service(&server, gateway).await?;
        let mut passes = 0;
        while row.l2.0.len() < hit_iterations.min(variants.len() * 8) && passes < 8 {
            let reader = start_service(&server, &config).await?;
            let mut reader_client =
                TokenCacheClient::new(reader.channel(ServiceTarget::TokenCache)?);
            // Also opens the connection, so that its set-up is not counted as an L2 hit.
            wait_for_tokenizers(&mut reader_client).await?;
            for request in &variants {
                let started = Instant::now();
                reader_client.get_context(request.clone()).await?;
                row.l2.0.push(started.elapsed());
            }
            stop_service(&server, reader).await?;
            passes += 1;
        }
        rows.push(row);
    }

    writeln!(
        out,
        "| path | context | fresh tokenize p50 | miss p50 / p99 | L1 hit p50 / p99 | L2 hit p50 / p99 | L1 hit speed-up | L2 hit speed-up |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|---|")?;
    for row in &rows {
        let miss = row.miss.percentile(0.5);
        writeln!(
            out,
            "| {} | {} | {} | {} / {} | {} / {} | {} / {} | {:.0}x | {:.0}x |",
            row.path,
            row.shape,
            micros(row.fresh.percentile(0.5)),
            micros(miss),
            micros(row.miss.percentile(0.99)),
            micros(row.l1.percentile(0.5)),
            micros(row.l1.percentile(0.99)),
            micros(row.l2.percentile(0.5)),
            micros(row.l2.percentile(0.99)),
            miss.as_secs_f64() / row.l1.percentile(0.5).as_secs_f64(),
            miss.as_secs_f64() / row.l2.percentile(0.5).as_secs_f64(),
        )?;
    }
    writeln!(
        out,
        "\n(speed-up: miss p50 / hit p50; samples: misses {}/{} per shape, hits {hit_iterations})",
        shapes[0].3, shapes[1].3
    )?;
    for line in anatomy.iter().chain(&beside_l1) {
        writeln!(out, "{line}")?;
    }
    writeln!(
        out,
        "gRPC floor, GetContext of a one-word context (L1 hit): p50 {} / p99 {} ({} calls); interleaved with it, Health/Check of a bare tonic server (no tollgate code): p50 {} / p99 {}",
        micros(floor.percentile(0.5)),
        micros(floor.percentile(0.99)),
        floor.0.len(),
        micros(bare_floor.percentile(0.5)),
        micros(bare_floor.percentile(0.99)),
    )?;
    writeln!(
        out,
        "the same bare Health/Check from a client on a multi-thread runtime (2 workers): p50 {} / p99 {}",
        micros(multi_thread_floor.percentile(0.5)),
        micros(multi_thread_floor.percentile(0.99)),
    )?;

    // Bytes per token of the stored values.
    writeln!(
        out,
        "\n| text | tokens | bytes (value) | bytes/token | raw u32 | JSON array |\n|---|---|---|---|---|---|"
    )?;
    for (name, text) in [
        ("README.md (prose)", prose.as_str()),
        ("repository (prose + code)", corpus.as_str()),
    ] {
        let ids = tokenizer.encode(text)?;
        let value = tollgate_token_cache::codec::encode(
            &[0; 32],
            &tollgate_token_cache::codec::SegmentTokens {
                ids: ids.clone(),
                doc_starts: vec![0],
            },
        );
        let json = serde_json::to_string(&ids)?.len();
        writeln!(
            out,
            "| {name} | {} | {} | {:.2} | 4.00 | {:.2} |",
            ids.len(),
            value.len(),
            value.len() as f64 / ids.len() as f64,
            json as f64 / ids.len() as f64
        )?;
    }

    // Per-document reuse: how many joins of real documents the cut rules can cut exactly.
    writeln!(
        out,
        "\n| encoding | documents | joins cut exactly (default separator \\n\\n) | segments per context |\n|---|---|---|---|"
    )?;
    for name in registry.names() {
        let tokenizer = registry.resolve(&name)?;
        let mut joins = 0;
        let mut cut = 0;
        let mut segments = 0;
        let mut contexts = 0;
        for variant in 0..20 {
            let docs = documents(&corpus, &tokenizer, 8, 300, variant * 101);
            // Real documents do not start with the "Document N" header line: drop it.
            let docs: Vec<String> = docs
                .iter()
                .map(|d| {
                    d.split_once('\n')
                        .map_or(d.clone(), |(_, rest)| rest.to_owned())
                })
                .collect();
            let lookups: Vec<_> = docs.iter().map(|d| lookup_hash(d)).collect();
            let texts: Vec<&str> = docs.iter().map(String::as_str).collect();
            let plans = Assembly {
                texts: &texts,
                lookups: &lookups,
                separator: "\n\n",
            }
            .plan(tokenizer.id(), tokenizer.cut_rule());
            joins += docs.len() - 1;
            cut += plans.len() - 1;
            segments += plans.len();
            contexts += 1;
        }
        writeln!(
            out,
            "| {name} | 8 x ~300 tokens, 20 contexts | {cut}/{joins} ({:.0}%) | {:.1} |",
            100.0 * cut as f64 / joins as f64,
            segments as f64 / contexts as f64
        )?;
    }
    tollgate_test_support::redis::delete_prefix(&redis_url, &prefix).await?;
    Ok(())
}

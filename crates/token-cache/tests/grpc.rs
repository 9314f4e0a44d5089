//! The TokenCache service through a real gRPC client against servers on 127.0.0.1:0, with real
//! Redis (`REDIS_URL`, a key prefix per test): hits and misses per layer across two instances,
//! invalidation seen by a second instance at once, truncation, bad input, metrics.

use tollgate::config::Config;
use tollgate_proto::v1 as pb;
use tollgate_proto::v1::token_cache_client::TokenCacheClient;
use tollgate_test_support::{ServiceTarget, TestGateway, TestResult};
use tollgate_token_cache::tokenizer::TokenizerRegistry;

fn config(redis_url: Option<String>, prefix: &str) -> Config {
    let mut config = Config::default();
    config.storage.redis_url = redis_url;
    config.token_cache.key_prefix = prefix.to_owned();
    // These tests are about hits and misses, not the time budget: give Redis room on a loaded
    // machine (the budget itself is tested in cache.rs).
    config.token_cache.redis_timeout_ms = 2000;
    config
}

async fn client(
    gateway: &TestGateway,
) -> TestResult<TokenCacheClient<tollgate_kit::grpc::client::TracedChannel>> {
    Ok(TokenCacheClient::new(
        gateway.channel(ServiceTarget::TokenCache)?,
    ))
}

fn inline(id: &str, text: &str) -> pb::Document {
    pb::Document {
        id: id.into(),
        text: Some(text.into()),
    }
}

fn reference(id: &str) -> pb::Document {
    pb::Document {
        id: id.into(),
        text: None,
    }
}

fn outcomes(response: &pb::GetContextResponse) -> Vec<(pb::CacheOutcome, pb::CacheOutcome)> {
    response
        .spans
        .iter()
        .map(|span| (span.l1(), span.l2()))
        .collect()
}

/// A fresh tokenization; empty (so that comparisons fail) if the tokenizer cannot be built.
fn fresh(encoding: &str, text: &str) -> Vec<u32> {
    TokenizerRegistry::builtin()
        .resolve(encoding)
        .ok()
        .and_then(|tokenizer| tokenizer.encode(text).ok())
        .unwrap_or_default()
}

const DOC_A: &str = "Tollgate routes each request to the cheapest model that will do.\nIt remembers how past tasks went.";
const DOC_B: &str = "Budgets are enforced in exact decimal dollars; nothing is ever counted twice.";

#[tokio::test]
async fn misses_then_hits_in_l1_then_l2_on_another_instance() -> TestResult {
    let url = tollgate_test_support::redis::redis_url()?;
    let prefix = tollgate_test_support::redis::unique_prefix();
    let first = TestGateway::start_with(
        config(Some(url.clone()), &prefix),
        ServiceTarget::TokenCache,
    )
    .await?;
    let second = TestGateway::start_with(
        config(Some(url.clone()), &prefix),
        ServiceTarget::TokenCache,
    )
    .await?;
    let request = pb::GetContextRequest {
        collection: "kb".into(),
        documents: vec![inline("a", DOC_A), inline("b", DOC_B)],
        tokenizer: "cl100k_base".into(),
        max_tokens: 0,
        separator: None,
    };
    let expected = fresh("cl100k_base", &format!("{DOC_A}\n\n{DOC_B}"));
    use pb::CacheOutcome::{Hit, Miss, Skipped};

    let cold = client(&first)
        .await?
        .get_context(request.clone())
        .await?
        .into_inner();
    assert_eq!(cold.token_ids, expected);
    assert_eq!(outcomes(&cold), vec![(Miss, Miss), (Miss, Miss)]);
    assert!(
        cold.tokenizer_id.starts_with("cl100k_base:"),
        "{}",
        cold.tokenizer_id
    );
    assert_eq!(cold.spans[0].start, 0);
    assert_eq!(cold.spans[0].end, cold.spans[1].start);
    assert_eq!(cold.spans[1].end, expected.len() as u64);

    let warm = client(&first)
        .await?
        .get_context(request.clone())
        .await?
        .into_inner();
    assert_eq!(warm.token_ids, expected);
    assert_eq!(outcomes(&warm), vec![(Hit, Skipped), (Hit, Skipped)]);

    let other = client(&second)
        .await?
        .get_context(request.clone())
        .await?
        .into_inner();
    assert_eq!(other.token_ids, expected);
    assert_eq!(outcomes(&other), vec![(Miss, Hit), (Miss, Hit)]);

    // Stats and the Prometheus series.
    let stats = client(&first)
        .await?
        .stats(pb::StatsRequest {})
        .await?
        .into_inner();
    let l1 = stats.l1.unwrap_or_default();
    assert_eq!((l1.hits, l1.misses), (2, 2));
    assert!(l1.tokens >= expected.len() as u64 - 2, "{l1:?}");
    let l2 = stats.l2.unwrap_or_default();
    assert!(l2.available);
    assert_eq!((l2.hits, l2.misses, l2.errors), (0, 2, 0));
    // Per value, a fixed header (format, checksum, content key), then under 3 bytes a token.
    let headers = l2.entries * tollgate_token_cache::codec::HEADER_LEN as u64;
    assert!(
        l2.bytes > headers && l2.bytes - headers < 3 * l2.tokens,
        "compact values: {l2:?}"
    );
    assert_eq!(stats.tokens_tokenized, expected.len() as u64);
    let metrics_addr = first.service(ServiceTarget::TokenCache)?.metrics;
    let (_, body) = tollgate_test_support::http_get(metrics_addr, "/metrics").await?;
    // The registry is the process's: other tests of this binary may add to the counts.
    for (layer, result) in [("l1", "hit"), ("l1", "miss"), ("l2", "hit"), ("l2", "miss")] {
        let labels = [("layer", layer), ("result", result)];
        for name in [
            "tollgate_token_cache_requests_total",
            "tollgate_token_cache_lookup_seconds_count",
        ] {
            let value = series_value(&body, name, &labels);
            assert!(value >= Some(2.0), "{name} {labels:?}: {value:?} in {body}");
        }
    }
    assert!(
        body.contains("tollgate_token_cache_redis_calls_total{"),
        "{body}"
    );
    assert!(
        body.contains("tollgate_token_cache_tokenized_tokens_total{"),
        "{body}"
    );

    first.stop().await?;
    second.stop().await?;
    tollgate_test_support::redis::delete_prefix(&url, &prefix).await
}

#[tokio::test]
async fn invalidation_and_clear_are_seen_by_another_instance_at_once() -> TestResult {
    let url = tollgate_test_support::redis::redis_url()?;
    let prefix = tollgate_test_support::redis::unique_prefix();
    let writer = TestGateway::start_with(
        config(Some(url.clone()), &prefix),
        ServiceTarget::TokenCache,
    )
    .await?;
    let reader = TestGateway::start_with(
        config(Some(url.clone()), &prefix),
        ServiceTarget::TokenCache,
    )
    .await?;
    let stored = client(&writer)
        .await?
        .put_documents(pb::PutDocumentsRequest {
            collection: "kb".into(),
            documents: vec![inline("a", DOC_A), inline("b", DOC_B)],
            tokenizers: vec!["o200k_base".into()],
            ttl_seconds: 0,
        })
        .await?
        .into_inner();
    assert_eq!(stored.stored, 2);
    let by_reference = pb::GetContextRequest {
        collection: "kb".into(),
        documents: vec![reference("a"), reference("b")],
        tokenizer: "o200k_base".into(),
        max_tokens: 0,
        separator: None,
    };
    let context = client(&reader)
        .await?
        .get_context(by_reference.clone())
        .await?
        .into_inner();
    assert_eq!(
        context.token_ids,
        fresh("o200k_base", &format!("{DOC_A}\n\n{DOC_B}"))
    );
    // PutDocuments warmed the segments: the reader finds them in Redis.
    assert!(
        context
            .spans
            .iter()
            .all(|span| span.l2() == pb::CacheOutcome::Hit),
        "{context:?}"
    );

    let invalidated = client(&writer)
        .await?
        .invalidate(pb::InvalidateRequest {
            collection: "kb".into(),
            ids: vec!["a".into(), "never-registered".into()],
        })
        .await?
        .into_inner();
    assert_eq!(invalidated.invalidated, 1);
    let error = client(&reader)
        .await?
        .get_context(by_reference.clone())
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::NotFound);
    assert!(
        error.message().contains("documents[0]") && error.message().contains("\"a\""),
        "{}",
        error.message()
    );

    let cleared = client(&writer)
        .await?
        .clear(pb::ClearRequest {
            collection: "kb".into(),
        })
        .await?
        .into_inner();
    assert_eq!(cleared.removed, 1, "only b was left");
    let only_b = pb::GetContextRequest {
        documents: vec![reference("b")],
        ..by_reference
    };
    let error = client(&reader)
        .await?
        .get_context(only_b)
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::NotFound);
    assert!(
        error.message().contains("documents[0]"),
        "{}",
        error.message()
    );

    writer.stop().await?;
    reader.stop().await?;
    tollgate_test_support::redis::delete_prefix(&url, &prefix).await
}

#[tokio::test]
async fn truncates_at_a_token_boundary_and_marks_the_cut_documents() -> TestResult {
    let gateway = TestGateway::start(ServiceTarget::TokenCache).await?;
    let full = fresh("cl100k_base", &format!("{DOC_A}\n\n{DOC_B}"));
    let response = client(&gateway)
        .await?
        .get_context(pb::GetContextRequest {
            collection: String::new(),
            documents: vec![inline("a", DOC_A), inline("b", DOC_B), inline("c", "tail")],
            tokenizer: "gpt-4".into(),
            max_tokens: 25,
            separator: None,
        })
        .await?
        .into_inner();
    assert_eq!(response.token_ids, full[..25].to_vec());
    assert!(response.truncated);
    assert!(response.untruncated_tokens > 25);
    let spans = &response.spans;
    assert!(!spans[0].truncated && spans[0].end < 25);
    assert!(spans[1].truncated && spans[1].end == 25);
    assert!(spans[2].truncated && spans[2].start == 25 && spans[2].end == 25);
    // Embedded default: no Redis, so L2 is skipped and reported unavailable.
    assert!(
        spans
            .iter()
            .all(|span| span.l2() == pb::CacheOutcome::Skipped)
    );
    let stats = client(&gateway)
        .await?
        .stats(pb::StatsRequest {})
        .await?
        .into_inner();
    assert!(!stats.l2.unwrap_or_default().available);
    gateway.stop().await
}

#[tokio::test]
async fn tokenize_count_and_list() -> TestResult {
    let gateway = TestGateway::start(ServiceTarget::TokenCache).await?;
    let mut client = client(&gateway).await?;
    let tokens = client
        .tokenize(pb::TokenizeRequest {
            tokenizer: "r50k_base".into(),
            text: "hello world".into(),
        })
        .await?
        .into_inner();
    assert_eq!(tokens.token_ids, fresh("r50k_base", "hello world"));
    let count = client
        .count_tokens(pb::CountTokensRequest {
            tokenizer: "p50k_base".into(),
            text: DOC_A.into(),
        })
        .await?
        .into_inner();
    assert_eq!(count.count, fresh("p50k_base", DOC_A).len() as u64);
    let list = client
        .list_tokenizers(pb::ListTokenizersRequest {})
        .await?
        .into_inner();
    let names: Vec<&str> = list.tokenizers.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        vec!["cl100k_base", "o200k_base", "p50k_base", "r50k_base"]
    );
    assert!(
        list.tokenizers
            .iter()
            .all(|t| t.kind == "tiktoken" && t.tokenizer_id.starts_with(&t.name))
    );
    let ids: std::collections::HashSet<&str> = list
        .tokenizers
        .iter()
        .map(|t| t.tokenizer_id.as_str())
        .collect();
    assert_eq!(ids.len(), 4, "identities differ");
    gateway.stop().await
}

#[tokio::test]
async fn bad_input_names_the_field() -> TestResult {
    let mut config = Config::default();
    config.token_cache.max_document_bytes = 100;
    let gateway = TestGateway::start_with(config, ServiceTarget::TokenCache).await?;
    let mut client = client(&gateway).await?;
    let base = pb::GetContextRequest {
        collection: "kb".into(),
        documents: vec![inline("a", "text")],
        tokenizer: "cl100k_base".into(),
        max_tokens: 0,
        separator: None,
    };
    let cases = [
        (
            pb::GetContextRequest {
                tokenizer: "llama-9".into(),
                ..base.clone()
            },
            tonic::Code::InvalidArgument,
            "tokenizer",
        ),
        (
            pb::GetContextRequest {
                documents: vec![inline("a", "x"), inline("", "y")],
                ..base.clone()
            },
            tonic::Code::InvalidArgument,
            "documents[1].id",
        ),
        (
            pb::GetContextRequest {
                documents: vec![inline("big", &"x".repeat(101))],
                ..base.clone()
            },
            tonic::Code::InvalidArgument,
            "documents[0].text",
        ),
        (
            pb::GetContextRequest {
                max_tokens: -1,
                ..base.clone()
            },
            tonic::Code::InvalidArgument,
            "max_tokens",
        ),
        (
            pb::GetContextRequest {
                documents: vec![inline("a", "x"), reference("ghost")],
                ..base.clone()
            },
            tonic::Code::NotFound,
            "documents[1]",
        ),
    ];
    for (request, code, field) in cases {
        let error = client.get_context(request).await.unwrap_err();
        assert_eq!(error.code(), code, "{field}: {}", error.message());
        assert!(
            error.message().starts_with(field),
            "{field}: {}",
            error.message()
        );
    }
    let error = client
        .put_documents(pb::PutDocumentsRequest {
            collection: "kb".into(),
            documents: vec![reference("no-text")],
            tokenizers: vec![],
            ttl_seconds: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert!(
        error.message().starts_with("documents[0].text"),
        "{}",
        error.message()
    );
    let error = client
        .tokenize(pb::TokenizeRequest {
            tokenizer: "nope".into(),
            text: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert!(
        error.message().starts_with("tokenizer"),
        "{}",
        error.message()
    );
    gateway.stop().await
}

/// The value of the series `name` whose labels include `labels`, in a Prometheus text `body`.
fn series_value(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let series_labels = series.strip_prefix(name)?.strip_prefix('{')?;
        labels
            .iter()
            .all(|(key, wanted)| series_labels.contains(&format!("{key}=\"{wanted}\"")))
            .then(|| value.parse().ok())
            .flatten()
    })
}

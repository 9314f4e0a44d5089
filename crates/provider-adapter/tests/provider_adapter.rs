//! The provider-adapter over real gRPC against fake upstreams that speak each provider's wire
//! format: catalog and cost, bad input, the mock, fallback order, retries with Retry-After,
//! the circuit breaker, deadlines, streaming usage and interruption, token-ID prompts,
//! Anthropic and Gemini specifics, and keys kept out of errors.

mod common;

use std::time::Duration;

use common::{Harness, catalog, png_image, provider, request, statuses};
use serde_json::json;
use tollgate_proto::v1 as pb;
use tollgate_provider_adapter::config::{Capability, ProviderAdapterConfig};
use tollgate_test_support::TestResult;
use tollgate_test_support::fake_upstream::{
    DEFAULT_ANSWER, DEFAULT_USAGE, FakeKind, FakeReply, FakeUpstream, anthropic_message,
    openai_stream, split_words,
};

use pb::AttemptStatus::{Interrupted, RetryableError, SkippedCircuitOpen, Succeeded};

// ---------------------------------------------------------------- catalog, cost, the mock

#[tokio::test]
async fn default_catalog_is_the_mock_on_every_tier_with_health() -> TestResult {
    let mut harness = Harness::start(ProviderAdapterConfig::default()).await?;
    let listed = harness
        .client
        .list_models(pb::ListModelsRequest {})
        .await?
        .into_inner();
    let tiers: Vec<i32> = listed.models.iter().map(|m| m.tier).collect();
    for tier in [
        pb::Tier::Local,
        pb::Tier::Cheap,
        pb::Tier::Standard,
        pb::Tier::Premium,
    ] {
        assert!(tiers.contains(&(tier as i32)), "no mock model on {tier:?}");
    }
    let vision = listed
        .models
        .iter()
        .find(|m| m.capabilities.as_ref().is_some_and(|c| c.vision))
        .ok_or("no vision model in the default catalog")?;
    assert_eq!(vision.provider_kind, "mock");
    let health = vision.health.as_ref().ok_or("no health")?;
    assert_eq!(health.circuit, pb::CircuitState::Closed as i32);
    assert!(listed.groups.iter().any(|g| g.name == "default"));
    harness.stop().await
}

#[tokio::test]
async fn the_mock_is_deterministic_counts_real_tokens_and_prices_exactly() -> TestResult {
    let mut harness = Harness::start(ProviderAdapterConfig::default()).await?;
    let ask = request("mock-cheap", "What is the capital of France?");
    let first = harness.client.generate(ask.clone()).await?.into_inner();
    let second = harness.client.generate(ask).await?.into_inner();
    assert_eq!(first.text, second.text, "same input, same answer");
    assert!(
        first.text.contains("What is the capital of France?"),
        "{}",
        first.text
    );
    let other = harness
        .client
        .generate(request("mock-cheap", "Something else entirely"))
        .await?
        .into_inner();
    assert_ne!(first.text, other.text);

    let usage = first.usage.ok_or("no usage")?;
    assert!(
        !usage.estimated,
        "the mock reports tokenizer counts as its usage"
    );
    // 7 tokens of question (o200k_base) + 3 per message + 3 priming.
    assert_eq!(usage.input_tokens, 13);
    assert!(usage.output_tokens > 0);
    assert_eq!(
        statuses(&first.attempts),
        vec![("mock-cheap".into(), Succeeded)]
    );
    assert_eq!(first.tier, pb::Tier::Cheap as i32);

    let estimate = harness
        .client
        .estimate_cost(pb::EstimateCostRequest {
            model: "mock-cheap".into(),
            usage: Some(usage),
        })
        .await?
        .into_inner();
    assert_eq!(estimate.cost_usd, first.cost_usd);
    // 1000 input and 500 output tokens at $0.15 / $0.60 per million: exactly $0.00045.
    let round = harness
        .client
        .estimate_cost(pb::EstimateCostRequest {
            model: "mock-cheap".into(),
            usage: Some(pb::Usage {
                input_tokens: 1000,
                output_tokens: 500,
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    assert_eq!(round.cost_usd, "0.00045");
    assert_eq!(estimate.price.ok_or("no price")?.input_per_mtok_usd, "0.15");
    harness.stop().await
}

#[tokio::test]
async fn max_tokens_cuts_the_answer_with_finish_length() -> TestResult {
    let mut harness = Harness::start(ProviderAdapterConfig::default()).await?;
    let mut ask = request("mock-local", "Tell me a long story about gateways");
    ask.max_tokens = 3;
    ask.return_token_ids = true;
    let answer = harness.client.generate(ask).await?.into_inner();
    assert_eq!(answer.finish_reason, pb::FinishReason::Length as i32);
    assert_eq!(answer.usage.ok_or("no usage")?.output_tokens, 3);
    assert_eq!(answer.output_token_ids.len(), 3);
    harness.stop().await
}

#[tokio::test]
async fn mock_embeddings_are_unit_vectors_and_deterministic() -> TestResult {
    let mut harness = Harness::start(ProviderAdapterConfig::default()).await?;
    let embed = |inputs: Vec<&str>| pb::EmbedRequest {
        model: "mock-embed".into(),
        inputs: inputs.into_iter().map(str::to_owned).collect(),
        request_id: String::new(),
    };
    let first = harness
        .client
        .embed(embed(vec!["a", "b"]))
        .await?
        .into_inner();
    let again = harness.client.embed(embed(vec!["a"])).await?.into_inner();
    assert_eq!(first.embeddings.len(), 2);
    assert_eq!(first.embeddings[0].values, again.embeddings[0].values);
    assert_ne!(first.embeddings[0].values, first.embeddings[1].values);
    let norm: f32 = first.embeddings[0].values.iter().map(|v| v * v).sum();
    assert!((norm - 1.0).abs() < 1e-3, "norm {norm}");
    let error = harness
        .client
        .embed(embed(vec!["a", ""]))
        .await
        .err()
        .ok_or("empty input accepted")?;
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert!(
        error.message().starts_with("inputs[1]"),
        "{}",
        error.message()
    );
    harness.stop().await
}

#[tokio::test]
async fn the_example_catalog_is_consistent() -> TestResult {
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/tollgate.example.toml");
    let config: tollgate::config::Config = tollgate_kit::config::load(Some(&example))?;
    let catalog =
        tollgate_provider_adapter::catalog::Catalog::from_config(&config.provider_adapter)?;
    for kind in ["openai", "anthropic", "gemini", "mock"] {
        assert!(
            catalog
                .models
                .iter()
                .any(|m| m.provider.kind.as_str() == kind),
            "no {kind} model in the example"
        );
    }
    assert!(
        catalog
            .models
            .iter()
            .any(|m| m.provider.name == "dashscope")
    );
    assert!(catalog.models.iter().any(|m| m.tier
        == tollgate_provider_adapter::catalog::Tier::Local
        && m.prices.input == tollgate_kit::money::Usd::ZERO));
    assert!(catalog.group("default").is_some());
    Ok(())
}

// ---------------------------------------------------------------- bad input

#[tokio::test]
async fn bad_input_is_refused_naming_the_field() -> TestResult {
    let mut config = ProviderAdapterConfig::default();
    config.models[1].context_window = 20; // mock-cheap
    let mut harness = Harness::start(config).await?;

    let unknown = harness
        .client
        .generate(request("gpt-17", "hi"))
        .await
        .err()
        .ok_or("unknown model accepted")?;
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    assert!(
        unknown.message().contains("gpt-17"),
        "{}",
        unknown.message()
    );

    let mut empty = request("mock-cheap", "");
    empty.messages.clear();
    let status = harness
        .client
        .generate(empty)
        .await
        .err()
        .ok_or("empty accepted")?;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().starts_with("messages"),
        "{}",
        status.message()
    );

    let long = "word ".repeat(100);
    let status = harness
        .client
        .generate(request("mock-cheap", &long))
        .await
        .err()
        .ok_or("prompt beyond the context window accepted")?;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().starts_with("messages") && status.message().contains("context window"),
        "{}",
        status.message()
    );

    let mut image = request("mock-local", "what is this?");
    image.messages[0].parts.push(png_image());
    let status = harness
        .client
        .generate(image)
        .await
        .err()
        .ok_or("image accepted")?;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().starts_with("messages[0].parts[0].image"),
        "{}",
        status.message()
    );

    let mut negative = request("mock-cheap", "hi");
    negative.max_tokens = -1;
    let status = harness
        .client
        .generate(negative)
        .await
        .err()
        .ok_or("negative accepted")?;
    assert!(
        status.message().starts_with("max_tokens"),
        "{}",
        status.message()
    );

    let mut no_role = request("mock-cheap", "hi");
    no_role.messages[0].role = 0;
    let status = harness
        .client
        .generate(no_role)
        .await
        .err()
        .ok_or("no role accepted")?;
    assert!(
        status.message().starts_with("messages[0].role"),
        "{}",
        status.message()
    );

    let mut bad_mime = request("mock-standard", "hi");
    bad_mime.messages[0].parts.push(pb::ContentPart {
        part: Some(pb::content_part::Part::Image(pb::Image {
            source: Some(pb::image::Source::Data(vec![1, 2])),
            mime_type: "text/plain".into(),
        })),
    });
    let status = harness
        .client
        .generate(bad_mime)
        .await
        .err()
        .ok_or("bad mime accepted")?;
    assert!(
        status
            .message()
            .starts_with("messages[0].parts[0].image.mime_type"),
        "{}",
        status.message()
    );

    let stream_status = harness
        .client
        .generate_stream(pb::GenerateStreamRequest {
            request: Some(request("nope", "hi")),
        })
        .await
        .err()
        .ok_or("unknown model accepted by the stream")?;
    assert_eq!(stream_status.code(), tonic::Code::NotFound);
    assert!(stream_status.message().contains("nope"));

    // A vision request to a group keeps only its vision models.
    let mut group_image = request("default", "what is this?");
    group_image.messages[0].parts.push(png_image());
    let answer = harness.client.generate(group_image).await?.into_inner();
    assert_eq!(answer.model, "mock-standard");
    harness.stop().await
}

// ---------------------------------------------------------------- resilience

#[tokio::test]
async fn fallback_follows_the_chain_on_retryable_failures_only() -> TestResult {
    let a = FakeUpstream::start(FakeKind::OpenAi).await?;
    let b = FakeUpstream::start(FakeKind::OpenAi).await?;
    let c = FakeUpstream::start(FakeKind::OpenAi).await?;
    let config = catalog(vec![
        provider("a", &a, None)?,
        provider("b", &b, None)?,
        provider("c", &c, None)?,
    ]);
    let mut harness = Harness::start(config).await?;

    // a: 500 twice (retried once), b: 429 asking for a minute (too long: move on), c answers.
    a.push(FakeReply::error(FakeKind::OpenAi, 500, "boom"));
    a.push(FakeReply::error(FakeKind::OpenAi, 502, "bad gateway"));
    b.push(FakeReply::rate_limited(FakeKind::OpenAi, 60));
    let answer = harness
        .client
        .generate(request("chain", "hi"))
        .await?
        .into_inner();
    assert_eq!(answer.model, "c-model");
    assert_eq!(answer.text, DEFAULT_ANSWER);
    assert_eq!(
        statuses(&answer.attempts),
        vec![
            ("a-model".into(), RetryableError),
            ("a-model".into(), RetryableError),
            ("b-model".into(), RetryableError),
            ("c-model".into(), Succeeded),
        ]
    );
    assert_eq!(answer.attempts[2].http_status, 429);
    assert_eq!(answer.attempts[2].error_kind, "rate_limited");
    assert_eq!(
        answer.attempts.iter().map(|a| a.number).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(
        (a.request_count(), b.request_count(), c.request_count()),
        (2, 1, 1)
    );

    // A 400 is the request's fault: no retry, no fallback.
    a.push(FakeReply::error(
        FakeKind::OpenAi,
        400,
        "max_tokens is too large",
    ));
    let status = harness
        .client
        .generate(request("chain", "hi"))
        .await
        .err()
        .ok_or("a 400 was not an error")?;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("max_tokens is too large"),
        "{}",
        status.message()
    );
    assert_eq!(
        (a.request_count(), b.request_count()),
        (3, 1),
        "nothing after the 400"
    );

    // disable_fallback: only the named model.
    a.push(FakeReply::error(FakeKind::OpenAi, 503, "down"));
    a.push(FakeReply::error(FakeKind::OpenAi, 503, "down"));
    let mut only_a = request("a-model", "hi");
    only_a.disable_fallback = true;
    let status = harness
        .client
        .generate(only_a)
        .await
        .err()
        .ok_or("no error")?;
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains("a-model"), "{}", status.message());
    assert_eq!(b.request_count(), 1);
    harness.stop().await
}

#[tokio::test]
async fn retry_after_and_configured_statuses_are_retried_on_the_same_model() -> TestResult {
    let dashscope = FakeUpstream::start(FakeKind::OpenAi).await?;
    let backup = FakeUpstream::start(FakeKind::OpenAi).await?;
    let mut first = provider("dashscope", &dashscope, Some("sk-dash"))?;
    first.retryable_statuses = vec![403];
    let mut config = catalog(vec![first, provider("backup", &backup, None)?]);
    config.retry.max_attempts_per_model = 3;
    let mut harness = Harness::start(config).await?;

    dashscope.push(FakeReply::rate_limited(FakeKind::OpenAi, 0));
    dashscope.push(FakeReply::error(
        FakeKind::OpenAi,
        403,
        "model access denied",
    ));
    let answer = harness
        .client
        .generate(request("chain", "hi"))
        .await?
        .into_inner();
    assert_eq!(answer.model, "dashscope-model");
    assert_eq!(
        statuses(&answer.attempts),
        vec![
            ("dashscope-model".into(), RetryableError),
            ("dashscope-model".into(), RetryableError),
            ("dashscope-model".into(), Succeeded),
        ]
    );
    assert_eq!(answer.attempts[1].error_kind, "retryable_status");
    assert_eq!(backup.request_count(), 0);
    harness.stop().await
}

#[tokio::test]
async fn malformed_and_unauthorized_answers_fall_back() -> TestResult {
    let broken = FakeUpstream::start(FakeKind::OpenAi).await?;
    let locked = FakeUpstream::start(FakeKind::OpenAi).await?;
    let good = FakeUpstream::start(FakeKind::OpenAi).await?;
    let mut config = catalog(vec![
        provider("broken", &broken, None)?,
        provider("locked", &locked, None)?,
        provider("good", &good, None)?,
    ]);
    config.retry.max_attempts_per_model = 1;
    let mut harness = Harness::start(config).await?;
    broken.push(FakeReply::raw(200, "{\"choices\": [ not json"));
    locked.push(FakeReply::error(FakeKind::OpenAi, 401, "invalid api key"));
    let answer = harness
        .client
        .generate(request("chain", "hi"))
        .await?
        .into_inner();
    assert_eq!(answer.model, "good-model");
    let kinds: Vec<&str> = answer
        .attempts
        .iter()
        .map(|a| a.error_kind.as_str())
        .collect();
    assert_eq!(kinds, vec!["malformed_response", "unauthorized", ""]);
    harness.stop().await
}

#[tokio::test]
async fn the_circuit_opens_after_consecutive_failures_and_recovers() -> TestResult {
    let flaky = FakeUpstream::start(FakeKind::OpenAi).await?;
    let mut config = catalog(vec![provider("flaky", &flaky, None)?]);
    config.retry.max_attempts_per_model = 1;
    config.breaker.failure_threshold = 2;
    config.breaker.cool_down_ms = 300;
    let mut harness = Harness::start(config).await?;
    let circuit = |listed: &pb::ListModelsResponse| {
        listed.models[0]
            .health
            .as_ref()
            .map(|h| h.circuit)
            .unwrap_or(-1)
    };

    for _ in 0..2 {
        flaky.push(FakeReply::error(FakeKind::OpenAi, 503, "overloaded"));
        let status = harness
            .client
            .generate(request("flaky-model", "hi"))
            .await
            .err();
        assert_eq!(status.map(|s| s.code()), Some(tonic::Code::Unavailable));
    }
    let listed = harness
        .client
        .list_models(pb::ListModelsRequest {})
        .await?
        .into_inner();
    assert_eq!(circuit(&listed), pb::CircuitState::Open as i32);
    let health = listed.models[0].health.clone().ok_or("no health")?;
    assert_eq!(health.consecutive_failures, 2);
    assert_eq!(health.last_error_kind, "upstream_5xx");
    assert!(health.last_failure_at.is_some());

    // Open: refused without calling upstream, reported as a skipped attempt.
    let status = harness
        .client
        .generate(request("flaky-model", "hi"))
        .await
        .err()
        .ok_or("an open circuit let the call through")?;
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains("circuit"), "{}", status.message());
    assert_eq!(flaky.request_count(), 2);

    // After the cool-down one probe goes through; its success closes the circuit.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let answer = harness
        .client
        .generate(request("flaky-model", "hi"))
        .await?
        .into_inner();
    assert_eq!(
        statuses(&answer.attempts),
        vec![("flaky-model".into(), Succeeded)]
    );
    let listed = harness
        .client
        .list_models(pb::ListModelsRequest {})
        .await?
        .into_inner();
    assert_eq!(circuit(&listed), pb::CircuitState::Closed as i32);

    let metrics = harness
        .gateway
        .service(tollgate_test_support::ServiceTarget::ProviderAdapter)?
        .metrics;
    let (_, body) = tollgate_test_support::http_get(metrics, "/metrics").await?;
    assert!(
        body.lines()
            .any(|line| line.starts_with("tollgate_provider_circuit_state")
                && line.contains("provider=\"flaky\"")),
        "circuit gauge missing"
    );
    assert!(
        body.lines()
            .any(|line| line.starts_with("tollgate_provider_requests_total")
                && line.contains("outcome=\"circuit_open\"")),
        "circuit_open outcome not counted"
    );
    harness.stop().await
}

#[tokio::test]
async fn an_open_circuit_skips_to_the_next_model() -> TestResult {
    let down = FakeUpstream::start(FakeKind::OpenAi).await?;
    let up = FakeUpstream::start(FakeKind::OpenAi).await?;
    let mut config = catalog(vec![
        provider("down", &down, None)?,
        provider("up", &up, None)?,
    ]);
    config.retry.max_attempts_per_model = 1;
    config.breaker.failure_threshold = 1;
    config.breaker.cool_down_ms = 600_000;
    let mut harness = Harness::start(config).await?;
    down.push(FakeReply::error(FakeKind::OpenAi, 500, "x"));
    harness.client.generate(request("chain", "hi")).await?;
    let answer = harness
        .client
        .generate(request("chain", "hi"))
        .await?
        .into_inner();
    assert_eq!(
        statuses(&answer.attempts),
        vec![
            ("down-model".into(), SkippedCircuitOpen),
            ("up-model".into(), Succeeded)
        ]
    );
    assert_eq!(down.request_count(), 1);
    harness.stop().await
}

#[tokio::test]
async fn the_callers_deadline_bounds_every_attempt() -> TestResult {
    let slow = FakeUpstream::start(FakeKind::OpenAi).await?;
    let fast = FakeUpstream::start(FakeKind::OpenAi).await?;
    let mut config = catalog(vec![
        provider("slow", &slow, None)?,
        provider("fast", &fast, None)?,
    ]);
    config.retry.max_attempts_per_model = 1;
    let mut harness = Harness::start(config).await?;

    // The service loads its tokenizers before it serves: wait for that outside the deadline.
    harness.client.list_models(pb::ListModelsRequest {}).await?;
    // The caller allows 1 s; the upstream takes 30 s: DEADLINE_EXCEEDED from the adapter
    // itself (its message lists the attempt), and no second attempt anywhere.
    slow.push(
        FakeReply::success(FakeKind::OpenAi, false, "late", None)
            .with_delay(Duration::from_secs(30)),
    );
    let mut call = tonic::Request::new(request("chain", "hi"));
    call.set_timeout(Duration::from_secs(1));
    let status = harness
        .client
        .generate(call)
        .await
        .err()
        .ok_or("no deadline")?;
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("slow-model"),
        "{}",
        status.message()
    );
    assert_eq!((slow.request_count(), fast.request_count()), (1, 0));
    harness.stop().await
}

#[tokio::test]
async fn a_per_attempt_timeout_falls_back() -> TestResult {
    let slow = FakeUpstream::start(FakeKind::OpenAi).await?;
    let fast = FakeUpstream::start(FakeKind::OpenAi).await?;
    let mut slow_provider = provider("slow", &slow, None)?;
    slow_provider.timeout_ms = 200;
    let mut config = catalog(vec![slow_provider, provider("fast", &fast, None)?]);
    config.retry.max_attempts_per_model = 1;
    let mut harness = Harness::start(config).await?;
    slow.push(
        FakeReply::success(FakeKind::OpenAi, false, "late", None)
            .with_delay(Duration::from_secs(30)),
    );
    let answer = harness
        .client
        .generate(request("chain", "hi"))
        .await?
        .into_inner();
    assert_eq!(answer.model, "fast-model");
    assert_eq!(answer.attempts[0].error_kind, "timeout");
    harness.stop().await
}

#[tokio::test]
async fn connect_errors_fall_back() -> TestResult {
    let nothing = std::net::TcpListener::bind("127.0.0.1:0")?;
    let dead_addr = nothing.local_addr()?;
    drop(nothing);
    let good = FakeUpstream::start(FakeKind::OpenAi).await?;
    let mut dead = provider("good", &good, None)?;
    dead.name = "dead".into();
    dead.base_url = Some(format!("http://{dead_addr}/v1"));
    let mut config = catalog(vec![dead, provider("good", &good, None)?]);
    config.retry.max_attempts_per_model = 1;
    let mut harness = Harness::start(config).await?;
    let answer = harness
        .client
        .generate(request("chain", "hi"))
        .await?
        .into_inner();
    assert_eq!(answer.model, "good-model");
    assert_eq!(answer.attempts[0].error_kind, "connect");
    assert_eq!(answer.attempts[0].http_status, 0);
    harness.stop().await
}

// ---------------------------------------------------------------- streaming

#[tokio::test]
async fn openai_streams_ask_for_and_report_usage() -> TestResult {
    let upstream = FakeUpstream::start(FakeKind::OpenAi).await?;
    let mut harness =
        Harness::start(catalog(vec![provider("o", &upstream, Some("sk-o"))?])).await?;
    let (deltas, end, status) = harness.stream(request("o-model", "hi")).await?;
    assert!(status.is_none(), "{status:?}");
    assert_eq!(deltas.concat(), DEFAULT_ANSWER);
    let end = end.ok_or("no end event")?;
    let usage = end.usage.ok_or("no usage")?;
    assert_eq!((usage.input_tokens, usage.output_tokens), DEFAULT_USAGE);
    assert!(!usage.estimated);
    assert_eq!(end.finish_reason, pb::FinishReason::Stop as i32);
    assert!(end.error.is_none());
    assert!(end.attempts[0].first_token_micros > 0);
    let sent = &upstream.requests()[0];
    assert_eq!(sent.body["stream"], json!(true));
    assert_eq!(sent.body["stream_options"]["include_usage"], json!(true));
    harness.stop().await
}

#[tokio::test]
async fn a_stream_without_usage_is_counted_never_zero() -> TestResult {
    let upstream = FakeUpstream::start(FakeKind::OpenAi).await?;
    let mut harness = Harness::start(catalog(vec![provider("o", &upstream, None)?])).await?;
    upstream.push(FakeReply::sse(openai_stream(
        &split_words("one two three"),
        None,
        false,
    )));
    let (deltas, end, _) = harness
        .stream(request("o-model", "count these words"))
        .await?;
    assert_eq!(deltas.concat(), "one two three");
    let usage = end.ok_or("no end")?.usage.ok_or("no usage")?;
    assert!(usage.estimated);
    assert_eq!(
        usage.output_tokens, 3,
        "one two three is 3 tokens in o200k_base"
    );
    assert!(usage.input_tokens > 0);
    harness.stop().await
}

#[tokio::test]
async fn a_stream_falls_back_before_its_first_token() -> TestResult {
    let a = FakeUpstream::start(FakeKind::OpenAi).await?;
    let b = FakeUpstream::start(FakeKind::Anthropic).await?;
    let mut config = catalog(vec![
        provider("a", &a, None)?,
        provider("b", &b, Some("sk-ant"))?,
    ]);
    config.retry.max_attempts_per_model = 1;
    let mut harness = Harness::start(config).await?;
    // a accepts the stream, then breaks off before any text.
    a.push(FakeReply::sse(vec![
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"}}]}\n\n".into(),
    ]));
    let (deltas, end, status) = harness.stream(request("chain", "hi")).await?;
    assert!(status.is_none(), "{status:?}");
    assert_eq!(deltas.concat(), DEFAULT_ANSWER, "only b's text, once");
    let end = end.ok_or("no end")?;
    assert_eq!(end.model, "b-model");
    assert_eq!(
        statuses(&end.attempts),
        vec![
            ("a-model".into(), RetryableError),
            ("b-model".into(), Succeeded)
        ]
    );
    assert_eq!(end.attempts[0].error_kind, "malformed_response");
    harness.stop().await
}

#[tokio::test]
async fn a_stream_broken_after_tokens_ends_with_the_error_and_the_text_sent() -> TestResult {
    let a = FakeUpstream::start(FakeKind::OpenAi).await?;
    let b = FakeUpstream::start(FakeKind::OpenAi).await?;
    let mut harness = Harness::start(catalog(vec![
        provider("a", &a, None)?,
        provider("b", &b, None)?,
    ]))
    .await?;
    let mut frames = openai_stream(&split_words("partial answer that breaks"), None, false);
    frames.truncate(3); // role chunk + two words, no finish, no [DONE]
    a.push(FakeReply::sse(frames));
    let (deltas, end, status) = harness.stream(request("chain", "hi")).await?;
    assert_eq!(deltas.concat(), "partial answer ");
    let end = end.ok_or("no end event")?;
    assert_eq!(end.text, "partial answer ");
    assert_eq!(end.finish_reason, pb::FinishReason::Error as i32);
    let error = end.error.ok_or("no error in the end event")?;
    assert_eq!(error.code, tonic::Code::Unavailable as i32);
    assert_eq!(error.error_kind, "malformed_response");
    assert_eq!(
        statuses(&end.attempts),
        vec![("a-model".into(), Interrupted)]
    );
    let usage = end.usage.ok_or("no usage")?;
    assert!(usage.output_tokens > 0 && usage.estimated, "{usage:?}");
    assert_eq!(status.map(|s| s.code()), Some(tonic::Code::Unavailable));
    assert_eq!(
        b.request_count(),
        0,
        "never a silent duplicate from the next model"
    );
    harness.stop().await
}

#[tokio::test]
async fn mock_streams_deliver_the_unary_answer_in_pieces() -> TestResult {
    let mut harness = Harness::start(ProviderAdapterConfig::default()).await?;
    let unary = harness
        .client
        .generate(request("mock-premium", "stream me"))
        .await?
        .into_inner();
    let (deltas, end, status) = harness.stream(request("mock-premium", "stream me")).await?;
    assert!(status.is_none());
    assert!(deltas.len() > 1);
    assert_eq!(deltas.concat(), unary.text);
    let end = end.ok_or("no end")?;
    assert_eq!(end.usage, unary.usage);
    assert_eq!(end.cost_usd, unary.cost_usd);
    harness.stop().await
}

// ---------------------------------------------------------------- wire formats

#[tokio::test]
async fn openai_chat_sends_images_keys_and_reports_cached_tokens() -> TestResult {
    let upstream = FakeUpstream::start(FakeKind::OpenAi).await?;
    let mut harness = Harness::start(catalog(vec![provider(
        "o",
        &upstream,
        Some("sk-secret-123"),
    )?]))
    .await?;
    let mut body =
        tollgate_test_support::fake_upstream::openai_chat("It is a cat.", Some((100, 5)), None);
    body["usage"]["prompt_tokens_details"]["cached_tokens"] = json!(60);
    upstream.push(FakeReply::json(200, body));
    let mut ask = request("o-model", "what is this?");
    ask.messages[0].parts.push(png_image());
    ask.json_mode = true;
    ask.temperature = Some(0.5);
    let answer = harness.client.generate(ask).await?.into_inner();
    assert_eq!(answer.text, "It is a cat.");
    let usage = answer.usage.ok_or("no usage")?;
    assert_eq!(
        (
            usage.input_tokens,
            usage.cached_input_tokens,
            usage.output_tokens
        ),
        (100, 60, 5)
    );
    // 40 × 0.15 + 60 × 0.075 + 5 × 0.6 per million.
    assert_eq!(answer.cost_usd, "0.0000135");

    let sent = &upstream.requests()[0];
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(
        sent.headers.get("authorization").map(String::as_str),
        Some("Bearer sk-secret-123")
    );
    assert_eq!(sent.body["model"], json!("o-model-upstream"));
    assert_eq!(sent.body["response_format"], json!({"type": "json_object"}));
    let content = &sent.body["messages"][0]["content"];
    assert_eq!(content[0], json!({"type": "text", "text": "what is this?"}));
    assert_eq!(content[1]["type"], json!("image_url"));
    assert!(
        content[1]["image_url"]["url"]
            .as_str()
            .is_some_and(|url| url.starts_with("data:image/png;base64,")),
        "{content}"
    );
    harness.stop().await
}

#[tokio::test]
async fn token_id_prompts_use_legacy_completions_and_token_ids_pass_through() -> TestResult {
    let vllm = FakeUpstream::start(FakeKind::OpenAi).await?;
    let mut config = catalog(vec![provider("vllm", &vllm, None)?]);
    config.models[0].capabilities.push(Capability::TokenIds);
    let mut harness = Harness::start(config).await?;

    let ids_only = pb::GenerateRequest {
        model: "vllm-model".into(),
        prompt_token_ids: vec![9906, 1917, 0],
        max_tokens: 16,
        ..Default::default()
    };
    let answer = harness.client.generate(ids_only).await?.into_inner();
    assert_eq!(answer.text, DEFAULT_ANSWER);
    assert_eq!(answer.usage.ok_or("no usage")?.input_tokens, 3);
    let sent = &vllm.requests()[0];
    assert_eq!(sent.path, "/v1/completions");
    assert_eq!(sent.body["prompt"], json!([9906, 1917, 0]));
    assert_eq!(sent.body["max_tokens"], json!(16));

    // Streamed token-ID prompt.
    let (deltas, end, _) = harness
        .stream(pb::GenerateRequest {
            model: "vllm-model".into(),
            prompt_token_ids: vec![1, 2],
            ..Default::default()
        })
        .await?;
    assert_eq!(deltas.concat(), DEFAULT_ANSWER);
    assert_eq!(
        end.ok_or("no end")?.usage.ok_or("no usage")?.input_tokens,
        2
    );

    // Chat with return_token_ids: passed through, and the IDs come back.
    let mut chat = request("vllm-model", "hi");
    chat.return_token_ids = true;
    let answer = harness.client.generate(chat).await?.into_inner();
    assert_eq!(answer.prompt_token_ids, vec![101, 102, 103]);
    assert_eq!(answer.output_token_ids, vec![7, 8, 9]);
    assert_eq!(vllm.requests()[2].body["return_token_ids"], json!(true));

    // A model without token-ID input ignores the IDs and uses the messages.
    let plain = FakeUpstream::start(FakeKind::OpenAi).await?;
    let mut harness2 = Harness::start(catalog(vec![provider("plain", &plain, None)?])).await?;
    let mut both = request("plain-model", "hi");
    both.prompt_token_ids = vec![1, 2, 3];
    harness2.client.generate(both).await?;
    assert_eq!(plain.requests()[0].path, "/v1/chat/completions");
    harness2.stop().await?;
    harness.stop().await
}

#[tokio::test]
async fn openai_embeddings() -> TestResult {
    let upstream = FakeUpstream::start(FakeKind::OpenAi).await?;
    let mut config = catalog(vec![provider("o", &upstream, None)?]);
    config.models[0].capabilities = vec![Capability::Embeddings];
    let mut harness = Harness::start(config).await?;
    let answer = harness
        .client
        .embed(pb::EmbedRequest {
            model: "o-model".into(),
            inputs: vec!["a".into(), "b".into()],
            request_id: String::new(),
        })
        .await?
        .into_inner();
    assert_eq!(answer.embeddings.len(), 2);
    assert_eq!(answer.embeddings[1].values, vec![0.1, 0.2, 0.3, 1.0]);
    assert_eq!(answer.usage.ok_or("no usage")?.input_tokens, 6);
    assert_eq!(upstream.requests()[0].path, "/v1/embeddings");
    harness.stop().await
}

#[tokio::test]
async fn anthropic_messages_system_images_cache_usage_and_stream() -> TestResult {
    let upstream = FakeUpstream::start(FakeKind::Anthropic).await?;
    let mut harness = Harness::start(catalog(vec![provider(
        "ant",
        &upstream,
        Some("sk-ant-xyz"),
    )?]))
    .await?;
    let mut body = anthropic_message("A cat.", Some((10, 4)));
    body["usage"]["cache_read_input_tokens"] = json!(50);
    body["usage"]["cache_creation_input_tokens"] = json!(20);
    upstream.push(FakeReply::json(200, body));
    let mut ask = request("ant-model", "what is this?");
    ask.messages.insert(
        0,
        pb::Message {
            role: pb::Role::System as i32,
            text: "Be brief.".into(),
            ..Default::default()
        },
    );
    ask.messages[1].parts.push(png_image());
    let answer = harness.client.generate(ask).await?.into_inner();
    assert_eq!(answer.text, "A cat.");
    let usage = answer.usage.ok_or("no usage")?;
    assert_eq!(
        (
            usage.input_tokens,
            usage.cached_input_tokens,
            usage.cache_write_input_tokens,
            usage.output_tokens
        ),
        (80, 50, 20, 4)
    );
    let sent = &upstream.requests()[0];
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(
        sent.headers.get("x-api-key").map(String::as_str),
        Some("sk-ant-xyz")
    );
    assert!(sent.headers.contains_key("anthropic-version"));
    assert_eq!(sent.body["system"], json!("Be brief."));
    assert_eq!(
        sent.body["max_tokens"],
        json!(1024),
        "required: the model's maximum"
    );
    assert_eq!(
        sent.body["messages"][0]["content"][1]["source"]["type"],
        json!("base64")
    );

    let (deltas, end, status) = harness.stream(request("ant-model", "hi")).await?;
    assert!(status.is_none(), "{status:?}");
    assert_eq!(deltas.concat(), DEFAULT_ANSWER);
    let usage = end.ok_or("no end")?.usage.ok_or("no usage")?;
    assert_eq!((usage.input_tokens, usage.output_tokens), DEFAULT_USAGE);

    // An overloaded (529) answer is retryable; an error event mid-stream after text interrupts.
    upstream.push(FakeReply::error(FakeKind::Anthropic, 529, "Overloaded"));
    let answer = harness
        .client
        .generate(request("ant-model", "hi"))
        .await?
        .into_inner();
    assert_eq!(statuses(&answer.attempts)[0].1, RetryableError);
    harness.stop().await
}

#[tokio::test]
async fn gemini_generate_and_stream_with_the_key_in_a_header() -> TestResult {
    let upstream = FakeUpstream::start(FakeKind::Gemini).await?;
    let mut harness = Harness::start(catalog(vec![provider(
        "gem",
        &upstream,
        Some("AIza-secret"),
    )?]))
    .await?;
    let mut ask = request("gem-model", "describe");
    ask.messages[0].parts.push(png_image());
    ask.max_tokens = 100;
    let answer = harness.client.generate(ask).await?.into_inner();
    assert_eq!(answer.text, DEFAULT_ANSWER);
    let usage = answer.usage.ok_or("no usage")?;
    assert_eq!((usage.input_tokens, usage.output_tokens), DEFAULT_USAGE);
    let sent = &upstream.requests()[0];
    assert_eq!(
        sent.path,
        "/v1beta/models/gem-model-upstream:generateContent"
    );
    assert!(!sent.path.contains("AIza"), "the key never goes in the URL");
    assert_eq!(
        sent.headers.get("x-goog-api-key").map(String::as_str),
        Some("AIza-secret")
    );
    assert_eq!(sent.body["generationConfig"]["maxOutputTokens"], json!(100));
    assert_eq!(
        sent.body["contents"][0]["parts"][1]["inlineData"]["mimeType"],
        json!("image/png")
    );

    let (deltas, end, status) = harness.stream(request("gem-model", "hi")).await?;
    assert!(status.is_none(), "{status:?}");
    assert_eq!(deltas.concat(), DEFAULT_ANSWER);
    let usage = end.ok_or("no end")?.usage.ok_or("no usage")?;
    assert_eq!((usage.input_tokens, usage.output_tokens), DEFAULT_USAGE);
    assert!(
        upstream.requests()[1]
            .path
            .ends_with(":streamGenerateContent?alt=sse")
    );
    harness.stop().await
}

#[tokio::test]
async fn keys_never_appear_in_errors() -> TestResult {
    let upstream = FakeUpstream::start(FakeKind::OpenAi).await?;
    let mut config = catalog(vec![provider("o", &upstream, Some("sk-live-very-secret"))?]);
    config.retry.max_attempts_per_model = 1;
    let mut harness = Harness::start(config).await?;
    upstream.push(FakeReply::error(
        FakeKind::OpenAi,
        400,
        "Incorrect API key provided: sk-live-very-secret",
    ));
    let status = harness
        .client
        .generate(request("o-model", "hi"))
        .await
        .err()
        .ok_or("no error")?;
    assert!(
        !status.message().contains("sk-live-very-secret"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("<redacted>"),
        "{}",
        status.message()
    );
    harness.stop().await
}

#[tokio::test]
async fn a_missing_key_falls_back_without_calling_upstream() -> TestResult {
    let keyed = FakeUpstream::start(FakeKind::OpenAi).await?;
    let open = FakeUpstream::start(FakeKind::OpenAi).await?;
    let mut needs_key = provider("keyed", &keyed, None)?;
    needs_key.api_key_env = Some("TOLLGATE_TEST_SURELY_UNSET_KEY_VARIABLE".into());
    let mut harness =
        Harness::start(catalog(vec![needs_key, provider("open", &open, None)?])).await?;
    let answer = harness
        .client
        .generate(request("chain", "hi"))
        .await?
        .into_inner();
    assert_eq!(answer.model, "open-model");
    assert_eq!(answer.attempts[0].error_kind, "missing_credentials");
    assert!(
        answer.attempts[0]
            .error_message
            .contains("TOLLGATE_TEST_SURELY_UNSET_KEY_VARIABLE")
    );
    assert_eq!(keyed.request_count(), 0);
    harness.stop().await
}

#[tokio::test]
async fn a_failing_mock_falls_back_to_a_healthy_one() -> TestResult {
    let mut config = ProviderAdapterConfig::default();
    let mut broken = tollgate_provider_adapter::config::ProviderConfig::mock("broken-mock");
    broken.mock_failure_percent = 100;
    config.providers.push(broken);
    let mut flaky_model = config.models[1].clone();
    flaky_model.id = "flaky-cheap".into();
    flaky_model.provider = "broken-mock".into();
    config.models.push(flaky_model);
    config.groups = vec![tollgate_provider_adapter::config::GroupConfig::new(
        "resilient",
        &["flaky-cheap", "mock-cheap"],
    )];
    config.retry.max_attempts_per_model = 1;
    let mut harness = Harness::start(config).await?;
    let answer = harness
        .client
        .generate(request("resilient", "hi"))
        .await?
        .into_inner();
    assert_eq!(answer.model, "mock-cheap");
    assert_eq!(answer.attempts[0].http_status, 503);
    assert_eq!(answer.attempts[0].error_kind, "upstream_5xx");
    harness.stop().await
}

#[tokio::test]
async fn provider_stream_errors_before_and_after_text() -> TestResult {
    let ant = FakeUpstream::start(FakeKind::Anthropic).await?;
    let gem = FakeUpstream::start(FakeKind::Gemini).await?;
    let mut config = catalog(vec![
        provider("ant", &ant, Some("k1"))?,
        provider("gem", &gem, Some("k2"))?,
    ]);
    config.retry.max_attempts_per_model = 1;
    let mut harness = Harness::start(config).await?;

    // Anthropic's `error` event (overloaded) before any text: the stream falls back to Gemini.
    ant.push(FakeReply::sse(vec![
        tollgate_test_support::fake_upstream::sse_frame(
            Some("error"),
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        ),
    ]));
    let (deltas, end, status) = harness.stream(request("chain", "hi")).await?;
    assert!(status.is_none(), "{status:?}");
    assert_eq!(deltas.concat(), DEFAULT_ANSWER);
    let end = end.ok_or("no end")?;
    assert_eq!(end.model, "gem-model");
    assert_eq!(end.attempts[0].error_kind, "upstream_5xx");

    // Gemini cut after its first chunk (no finishReason): interrupted, never sent elsewhere.
    let mut frames =
        tollgate_test_support::fake_upstream::gemini_stream(&split_words("one two three"), None);
    frames.truncate(1);
    gem.push(FakeReply::sse(frames));
    let (deltas, end, status) = harness.stream(request("gem-model", "hi")).await?;
    assert_eq!(deltas.concat(), "one ");
    let end = end.ok_or("no end")?;
    assert_eq!(end.text, "one ");
    assert_eq!(
        statuses(&end.attempts),
        vec![("gem-model".into(), Interrupted)]
    );
    assert_eq!(status.map(|s| s.code()), Some(tonic::Code::Unavailable));
    harness.stop().await
}

#[tokio::test]
async fn rate_limited_everywhere_is_resource_exhausted_with_the_delay() -> TestResult {
    let upstream = FakeUpstream::start(FakeKind::OpenAi).await?;
    let mut harness = Harness::start(catalog(vec![provider("o", &upstream, None)?])).await?;
    upstream.push(FakeReply::rate_limited(FakeKind::OpenAi, 60));
    let status = harness
        .client
        .generate(request("o-model", "hi"))
        .await
        .err()
        .ok_or("no error")?;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        status
            .metadata()
            .get(tollgate_kit::error::RETRY_AFTER_MS_METADATA)
            .and_then(|v| v.to_str().ok()),
        Some("60000")
    );
    assert_eq!(
        upstream.request_count(),
        1,
        "a minute is too long to wait: no retry"
    );
    harness.stop().await
}

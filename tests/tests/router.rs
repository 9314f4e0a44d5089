//! The router end to end: all five services in one process (embedded stores, the offline mock
//! provider or a fake OpenAI upstream in its real wire format), driven through the Router's
//! gRPC API and checked against what the other services recorded.

mod common;

use std::time::Duration;

use common::{Router, ask, config, fake_openai_config, png, router, wait_for_spend};
use tollgate::config::Config;
use tollgate_proto::v1 as pb;
use tollgate_proto::v1::case_bank_client::CaseBankClient;
use tollgate_proto::v1::cost_tracker_client::CostTrackerClient;
use tollgate_test_support::fake_upstream::{FakeKind, FakeReply, FakeUpstream};
use tollgate_test_support::{ServiceTarget as Target, TestGateway, TestResult};

#[tokio::test]
async fn a_request_is_routed_answered_accounted_and_becomes_a_case() -> TestResult {
    let gateway = TestGateway::start_with(config(), Target::All).await?;
    let mut router = router(&gateway)?;

    let response = router.complete(ask("acme", "hi")).await?.into_inner();
    let decision = response.decision.clone().unwrap_or_default();
    assert_eq!(decision.model, "mock-cheap", "{decision:?}");
    assert_eq!(decision.tier, pb::Tier::Cheap as i32);
    assert!(
        decision.reasons.contains(&"complexity".to_owned()),
        "{decision:?}"
    );
    assert!(
        decision.reasons.contains(&"casebank_cold_start".to_owned()),
        "{decision:?}"
    );
    assert!(decision.switches.contains(&"routing=on".to_owned()));
    assert!(decision.explanation.ends_with('.'));
    assert!(!response.text.is_empty());
    let usage = response.usage.unwrap_or_default();
    assert!(
        usage.input_tokens > 0 && usage.output_tokens > 0,
        "{usage:?}"
    );
    assert_eq!(response.attempts.len(), 1);
    assert_eq!(response.case_id, format!("acme:{}", response.request_id));

    // Exactly the answer's cost reaches the ledger, once.
    let spend = wait_for_spend(&gateway, "acme", 1).await?;
    assert_eq!(spend.cost_usd, response.cost_usd);
    assert_eq!(spend.requests, 1);

    // The same request id and body again: the first answer, not a second call or charge.
    let mut again = ask("acme", "hi");
    again.request_id = response.request_id.clone();
    let replay = router.complete(again).await?.into_inner();
    assert_eq!(replay.text, response.text);
    let mut other_body = ask("acme", "hello there");
    other_body.request_id = response.request_id.clone();
    let refused = router
        .complete(other_body)
        .await
        .err()
        .ok_or("reuse accepted")?;
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("request_id"), "{refused:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(wait_for_spend(&gateway, "acme", 1).await?.requests, 1);

    // Feedback sets the reward of the stored case.
    let feedback = router
        .feedback(pb::FeedbackRequest {
            request_id: response.request_id.clone(),
            reward: 0.9,
            note: "good".into(),
        })
        .await;
    // Feedback acts for the caller's tenant; without auth that is "default", not "acme".
    assert_eq!(
        feedback.err().map(|s| s.code()),
        Some(tonic::Code::NotFound)
    );
    let mut casebank = CaseBankClient::new(gateway.channel(Target::Casebank)?);
    let stored = casebank
        .get_case(pb::GetCaseRequest {
            tenant: "acme".into(),
            case_id: response.case_id.clone(),
        })
        .await?
        .into_inner()
        .case
        .unwrap_or_default();
    assert_eq!(stored.task, "hi");
    assert_eq!(stored.action.unwrap_or_default().model, "mock-cheap");
    gateway.stop().await
}

#[tokio::test]
async fn critical_agents_get_premium_and_images_get_a_vision_model() -> TestResult {
    let gateway = TestGateway::start_with(config(), Target::All).await?;
    let mut router = router(&gateway)?;

    let mut legal = ask("acme", "hi");
    legal.agent = "legal".into();
    legal.hints = Some(pb::RoutingHints {
        force_tier: pb::Tier::Cheap as i32,
        ..Default::default()
    });
    let decision = router
        .route(pb::RouteRequest {
            request: Some(legal),
        })
        .await?
        .into_inner()
        .decision
        .unwrap_or_default();
    assert_eq!(decision.model, "mock-premium", "{decision:?}");
    assert!(decision.reasons.contains(&"critical_agent".to_owned()));

    let mut picture = ask("acme", "what is this?");
    picture.messages[0].parts.push(png());
    let response = router.complete(picture).await?.into_inner();
    let decision = response.decision.unwrap_or_default();
    // The cheap mock model has no vision: the cheapest vision model is the standard one.
    assert_eq!(decision.model, "mock-standard", "{decision:?}");
    assert!(decision.reasons.contains(&"vision".to_owned()));

    let mut broken = ask("acme", "what is this?");
    broken.messages[0].parts.push(pb::ContentPart {
        part: Some(pb::content_part::Part::Image(pb::Image {
            source: Some(pb::image::Source::Data(b"GIF89a".to_vec())),
            mime_type: "image/png".into(),
        })),
    });
    let refused = router
        .complete(broken)
        .await
        .err()
        .ok_or("malformed image accepted")?;
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("messages[0].parts[0].image"),
        "{refused:?}"
    );
    gateway.stop().await
}

#[tokio::test]
async fn a_hard_budget_refuses_and_records_nothing() -> TestResult {
    let gateway = TestGateway::start_with(config(), Target::All).await?;
    let mut router = router(&gateway)?;
    let mut cost = CostTrackerClient::new(gateway.channel(Target::CostTracker)?);
    cost.set_budget(pb::SetBudgetRequest {
        budget: Some(pb::Budget {
            scope: Some(pb::BudgetScope {
                tenant: "tight".into(),
                ..Default::default()
            }),
            period: pb::BudgetPeriod::Month as i32,
            soft_limit_usd: String::new(),
            hard_limit_usd: "0.000001".into(),
        }),
    })
    .await?;
    let refused = router
        .complete(ask("tight", "hi"))
        .await
        .err()
        .ok_or("over-budget request served")?;
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(refused.message().contains("budget"), "{refused:?}");

    let empty = router.complete(pb::CompleteRequest {
        tenant: "tight".into(),
        ..Default::default()
    });
    let refused = empty.await.err().ok_or("empty request served")?;
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("messages"));

    // A cap in the request itself.
    let mut capped = ask("acme", "hi");
    capped.hints = Some(pb::RoutingHints {
        max_cost_usd: "0.0000001".into(),
        ..Default::default()
    });
    let refused = router
        .complete(capped)
        .await
        .err()
        .ok_or("capped request served")?;
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("hints.max_cost_usd"),
        "{refused:?}"
    );

    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut client = CostTrackerClient::new(gateway.channel(Target::CostTracker)?);
    let spend = client
        .get_spend(pb::GetSpendRequest {
            filter: None,
            group_by: pb::SpendGroupBy::Tenant as i32,
            range: None,
        })
        .await?
        .into_inner();
    assert!(
        spend.rows.is_empty(),
        "refused requests were recorded: {spend:?}"
    );
    gateway.stop().await
}

#[tokio::test]
async fn a_stream_sends_decision_deltas_and_end_and_is_accounted() -> TestResult {
    let gateway = TestGateway::start_with(config(), Target::All).await?;
    let mut router = router(&gateway)?;
    let mut stream = router
        .complete_stream(pb::CompleteStreamRequest {
            request: Some(ask(
                "streamer",
                "Tell me a short story about a lighthouse keeper.",
            )),
        })
        .await?
        .into_inner();
    let mut kinds = Vec::new();
    let mut text = String::new();
    let mut end = None;
    while let Some(event) = stream.message().await? {
        match event.event {
            Some(pb::complete_stream_response::Event::Decision(_)) => kinds.push("decision"),
            Some(pb::complete_stream_response::Event::Delta(delta)) => {
                if kinds.last() != Some(&"delta") {
                    kinds.push("delta");
                }
                text.push_str(&delta.text);
            }
            Some(pb::complete_stream_response::Event::End(last)) => {
                kinds.push("end");
                end = Some(last);
            }
            None => {}
        }
    }
    assert_eq!(kinds, ["decision", "delta", "end"]);
    let end = end.ok_or("no end event")?;
    assert_eq!(end.text, text);
    let usage = end.usage.unwrap_or_default();
    assert!(
        usage.output_tokens > 0,
        "a stream must never be recorded as zero tokens"
    );
    let spend = wait_for_spend(&gateway, "streamer", 1).await?;
    assert_eq!(spend.cost_usd, end.cost_usd);
    assert_eq!(spend.output_tokens, usage.output_tokens);
    gateway.stop().await
}

#[tokio::test]
async fn a_refused_cheap_answer_escalates_and_both_attempts_are_accounted() -> TestResult {
    let upstream = FakeUpstream::start(FakeKind::OpenAi).await?;
    let gateway = TestGateway::start_with(fake_openai_config(&upstream), Target::All).await?;
    let mut router = router(&gateway)?;
    upstream.push(FakeReply::success(
        FakeKind::OpenAi,
        false,
        "I'm sorry, but I can't help with that.",
        Some((12, 9)),
    ));
    upstream.push(FakeReply::success(
        FakeKind::OpenAi,
        false,
        "Here is the answer.",
        Some((12, 5)),
    ));

    let response = router.complete(ask("acme", "hi")).await?.into_inner();
    assert_eq!(response.text, "Here is the answer.");
    let decision = response.decision.unwrap_or_default();
    assert!(decision.escalated, "{decision:?}");
    assert_eq!(decision.model, "fake-premium");
    assert!(decision.reasons.contains(&"escalated".to_owned()));
    let models: Vec<&str> = response.attempts.iter().map(|a| a.model.as_str()).collect();
    assert_eq!(models, ["fake-cheap", "fake-premium"]);
    let numbers: Vec<u32> = response.attempts.iter().map(|a| a.number).collect();
    assert_eq!(numbers, [1, 2]);
    // 21 tokens at $1/M plus 17 at $10/M.
    assert_eq!(response.cost_usd, "0.000191");
    let spend = wait_for_spend(&gateway, "acme", 2).await?;
    assert_eq!(spend.cost_usd, "0.000191");

    // Without escalation the refusal is the answer.
    upstream.push(FakeReply::success(
        FakeKind::OpenAi,
        false,
        "I'm sorry, I cannot do that.",
        Some((12, 7)),
    ));
    let mut no_cascade = ask("acme", "hi");
    no_cascade.hints = Some(pb::RoutingHints {
        allow_escalation: Some(false),
        ..Default::default()
    });
    let response = router.complete(no_cascade).await?.into_inner();
    assert_eq!(response.attempts.len(), 1);
    assert!(!response.decision.unwrap_or_default().escalated);
    gateway.stop().await
}

/// A family of tasks that keeps failing on the cheap tier: after a few bad rewards, the next
/// task of the family goes to a stronger tier, because the case bank says so.
#[tokio::test]
async fn a_family_of_tasks_that_fails_cheap_learns_to_go_strong() -> TestResult {
    let gateway = TestGateway::start_with(config(), Target::All).await?;
    let mut router = router(&gateway)?;
    let task = |n: u32| {
        format!("Convert the invoice number {n} of supplier ACME to the ledger code format")
    };

    let first = router.complete(ask("", &task(0))).await?.into_inner();
    let decision = first.decision.unwrap_or_default();
    assert_eq!(decision.tier, pb::Tier::Cheap as i32, "{decision:?}");
    assert!(
        decision.reasons.contains(&"casebank_cold_start".to_owned()),
        "{decision:?}"
    );
    router
        .feedback(pb::FeedbackRequest {
            request_id: first.request_id,
            reward: 0.0,
            note: "wrong format".into(),
        })
        .await?;
    for n in 1..4 {
        let response = router.complete(ask("", &task(n))).await?.into_inner();
        let feedback = router
            .feedback(pb::FeedbackRequest {
                request_id: response.request_id,
                reward: 0.0,
                note: String::new(),
            })
            .await?
            .into_inner();
        assert!(feedback.updated);
    }

    let learned = router.complete(ask("", &task(99))).await?.into_inner();
    let decision = learned.decision.unwrap_or_default();
    assert!(
        decision
            .reasons
            .contains(&"casebank_cheap_failed".to_owned()),
        "{decision:?}"
    );
    assert!(decision.tier > pb::Tier::Cheap as i32, "{decision:?}");
    let evidence = decision.casebank.unwrap_or_default();
    assert!(evidence.consulted && !evidence.cold_start);
    let cheap = evidence
        .estimates
        .iter()
        .find(|e| e.tier == pb::Tier::Cheap as i32)
        .ok_or("no cheap estimate")?;
    assert!(cheap.evidence >= 3 && cheap.success < 0.5, "{cheap:?}");

    // Another tenant's failures do not move this tenant's routing.
    let other = router.complete(ask("other", &task(99))).await?.into_inner();
    let decision = other.decision.unwrap_or_default();
    assert!(
        decision.reasons.contains(&"casebank_cold_start".to_owned()),
        "{decision:?}"
    );
    gateway.stop().await
}

/// Context documents go through the token cache: the second identical request hits L1.
#[tokio::test]
async fn context_documents_come_from_the_token_cache() -> TestResult {
    let gateway = TestGateway::start_with(config(), Target::All).await?;
    let mut router = router(&gateway)?;
    let with_context = || {
        let mut request = ask("acme", "Summarise the context.");
        request.context = Some(pb::ContextSpec {
            collection: "handbook".into(),
            documents: vec![
                pb::Document {
                    id: "d1".into(),
                    text: Some("The office opens at nine. ".repeat(40)),
                },
                pb::Document {
                    id: "d2".into(),
                    text: Some("Expenses are filed monthly. ".repeat(40)),
                },
            ],
            max_tokens: 0,
        });
        request
    };
    let first = router.complete(with_context()).await?.into_inner();
    let context = first.context.unwrap_or_default();
    assert_eq!(context.documents, 2);
    assert!(context.context_tokens > 100, "{context:?}");
    assert_eq!(context.misses, 2, "{context:?}");
    let second = router.complete(with_context()).await?.into_inner();
    let context = second.context.unwrap_or_default();
    assert_eq!(context.l1_hits, 2, "{context:?}");
    // The documents reached the model: the prompt is far longer than the question alone.
    assert!(second.usage.unwrap_or_default().input_tokens > 200);
    gateway.stop().await
}

/// A config whose peers are those of `all` except the case bank, which is `casebank`.
fn router_only_config(
    all: &TestGateway,
    casebank: &str,
    token_cache: Option<&str>,
) -> TestResult<Config> {
    let url = |target| all.service(target).map(|s| format!("http://{}", s.grpc));
    let mut config = config();
    config.router.policy.casebank.timeout_ms = 300;
    config.router.token_cache_timeout_ms = 300;
    config.peers.provider_adapter = url(Target::ProviderAdapter)?;
    config.peers.cost_tracker = url(Target::CostTracker)?;
    config.peers.token_cache = match token_cache {
        Some(address) => address.to_owned(),
        None => url(Target::TokenCache)?,
    };
    config.peers.casebank = casebank.to_owned();
    Ok(config)
}

/// The case bank stops mid-test, and the token cache is unreachable: requests are still
/// served, and the degraded mode shows in the decision.
#[tokio::test]
async fn requests_are_served_when_the_casebank_stops_and_the_token_cache_is_gone() -> TestResult {
    let all = TestGateway::start_with(config(), Target::All).await?;
    let casebank = TestGateway::start_with(config(), Target::Casebank).await?;
    let casebank_url = format!("http://{}", casebank.service(Target::Casebank)?.grpc);
    let front = TestGateway::start_with(
        router_only_config(&all, &casebank_url, Some("http://127.0.0.1:9"))?,
        Target::Router,
    )
    .await?;
    let mut router = router(&front)?;

    let mut request = ask("acme", "What is the capital of France?");
    request.context = Some(pb::ContextSpec {
        collection: String::new(),
        documents: vec![pb::Document {
            id: "d1".into(),
            text: Some("France is a country in Europe.".into()),
        }],
        max_tokens: 0,
    });
    let before = router.complete(request.clone()).await?.into_inner();
    let decision = before.decision.unwrap_or_default();
    assert!(
        decision.casebank.unwrap_or_default().consulted,
        "{:?}",
        decision.reasons
    );
    assert_eq!(decision.degraded, ["token_cache"]);
    assert!(!before.text.is_empty());

    casebank.stop().await?;
    let after = router.complete(request).await?.into_inner();
    let decision = after.decision.unwrap_or_default();
    assert!(!after.text.is_empty());
    assert!(
        decision
            .reasons
            .contains(&"casebank_unavailable".to_owned()),
        "{decision:?}"
    );
    assert!(
        decision.degraded.contains(&"casebank".to_owned()),
        "{decision:?}"
    );
    assert!(!decision.casebank.unwrap_or_default().consulted);
    // Both answers are in the ledger.
    wait_for_spend(&all, "acme", 2).await?;
    front.stop().await?;
    all.stop().await
}

/// Redis (the token cache's L2) is killed mid-test: the token cache keeps answering from its
/// process and the router keeps serving context requests.
#[tokio::test]
async fn requests_are_served_when_redis_is_killed() -> TestResult {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?.port()
    };
    let mut redis = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut config = config();
    config.storage.redis_url = Some(format!("redis://127.0.0.1:{port}"));
    let gateway = TestGateway::start_with(config, Target::All).await;
    let gateway = match gateway {
        Ok(gateway) => gateway,
        Err(error) => {
            let _ = redis.kill();
            return Err(error);
        }
    };
    let mut router = router(&gateway)?;
    let request = |n: u32| {
        let mut request = ask("acme", "Summarise the context.");
        request.context = Some(pb::ContextSpec {
            collection: "kb".into(),
            documents: vec![pb::Document {
                id: format!("doc-{n}"),
                text: Some(
                    format!("Document number {n} says the launch is on Tuesday. ").repeat(20),
                ),
            }],
            max_tokens: 0,
        });
        request
    };
    let before = router.complete(request(1)).await?.into_inner();
    assert!(before.context.unwrap_or_default().context_tokens > 0);
    redis.kill()?;
    let _ = redis.wait();
    for n in 2..5 {
        let after = router.complete(request(n)).await?.into_inner();
        assert!(!after.text.is_empty());
        assert!(after.context.unwrap_or_default().context_tokens > 0);
    }
    gateway.stop().await
}

/// The policy file is reloaded while requests keep flowing: none fails, and the new policy
/// takes over within a couple of seconds; an invalid version is refused and the last good one
/// stays in force.
#[tokio::test]
async fn the_policy_file_reloads_without_dropping_requests() -> TestResult {
    let dir = tollgate_test_support::temp_dir("policy")?;
    let path = dir.join("policy.toml");
    std::fs::write(&path, "default_tier = \"cheap\"\n")?;
    let mut config = config();
    config.router.policy_file = Some(path.clone());
    let gateway = TestGateway::start_with(config, Target::All).await?;
    let router = router(&gateway)?;
    let route = |mut client: Router| async move {
        client
            .route(pb::RouteRequest {
                request: Some(ask("acme", "hi")),
            })
            .await
            .map(|r| r.into_inner().decision.unwrap_or_default())
    };
    assert_eq!(route(router.clone()).await?.model, "mock-cheap");

    let load = {
        let router = router.clone();
        tokio::spawn(async move {
            let mut served = 0u32;
            for _ in 0..200 {
                route(router.clone()).await?;
                served += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok::<u32, tonic::Status>(served)
        })
    };
    std::fs::write(
        &path,
        "default_tier = \"premium\"\n[switches]\nrouting = false\n",
    )?;
    let mut reloaded = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let decision = route(router.clone()).await?;
        if decision.reasons.contains(&"routing_off".to_owned()) {
            reloaded = Some(decision);
            break;
        }
    }
    let decision = reloaded.ok_or("the new policy was never used")?;
    assert_eq!(decision.model, "mock-premium");
    assert!(decision.switches.contains(&"routing=off".to_owned()));

    std::fs::write(&path, "default_tier = \"platinum\"\n")?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(route(router.clone()).await?.model, "mock-premium");
    assert_eq!(load.await??, 200, "a request failed during the reload");
    gateway.stop().await?;
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

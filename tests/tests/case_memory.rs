//! Case-augmented prompting end to end: past cases of the tenant, stored in the case bank, reach
//! the model as examples (asserted on what the fake OpenAI upstream received), in order, with
//! negatives only when asked, never across tenants, trimmed to the model's window, counted in
//! usage, and switched off at run time by a policy reload.

mod common;

use std::time::Duration;

use common::{ask, config, fake_openai_config, router};
use tollgate::config::Config;
use tollgate_proto::v1 as pb;
use tollgate_proto::v1::case_bank_client::CaseBankClient;
use tollgate_test_support::fake_upstream::{FakeKind, FakeReply, FakeUpstream};
use tollgate_test_support::{ServiceTarget as Target, TestGateway, TestResult};

const QUESTION: &str = "How do I reset my password on the staff portal?";

/// A test config: examples for every request by default, and a similarity floor that the
/// built-in hashing embedder's paraphrases reach.
fn memory_config(upstream: &FakeUpstream) -> Config {
    let mut config = fake_openai_config(upstream);
    let memory = &mut config.router.policy.case_memory;
    memory.min_similarity = 0.3;
    memory.timeout_ms = 3000;
    config
}

async fn store(
    gateway: &TestGateway,
    tenant: &str,
    id: &str,
    task: &str,
    answer: &str,
    reward: f64,
) -> TestResult {
    let mut casebank = CaseBankClient::new(gateway.channel(Target::Casebank)?);
    casebank
        .store_case(pb::StoreCaseRequest {
            case: Some(pb::Case {
                id: id.into(),
                tenant: tenant.into(),
                task: task.into(),
                action: Some(pb::CaseAction {
                    tier: pb::Tier::Cheap as i32,
                    model: "fake-cheap".into(),
                    plan_json: serde_json::json!({ "answer": answer }).to_string(),
                }),
                reward: Some(reward),
                ..Default::default()
            }),
        })
        .await?;
    Ok(())
}

fn with_examples(tenant: &str, negatives: bool) -> pb::CompleteRequest {
    let mut request = ask(tenant, QUESTION);
    request.case_memory = pb::CaseMemory::Examples as i32;
    request.include_negative_examples = negatives;
    request
}

/// The system message the upstream received right before the user's message, if any.
fn examples_sent(upstream: &FakeUpstream) -> Option<String> {
    let last = upstream.requests().pop()?;
    let messages = last.body["messages"].as_array()?.clone();
    let user = messages.iter().rposition(|m| m["role"] == "user")?;
    let before = messages.get(user.checked_sub(1)?)?;
    (before["role"] == "system").then(|| before["content"].as_str().unwrap_or_default().to_owned())
}

fn reply(upstream: &FakeUpstream) {
    upstream.push(FakeReply::success(
        FakeKind::OpenAi,
        false,
        "Use the reset link.",
        None,
    ));
}

async fn seed(gateway: &TestGateway) -> TestResult {
    store(
        gateway,
        "acme",
        "p-exact",
        QUESTION,
        "Open the portal and click 'Forgot password'.",
        1.0,
    )
    .await?;
    store(
        gateway,
        "acme",
        "p-close",
        "How can I reset the password of my staff portal account?",
        "Ask IT to send a reset link.",
        0.8,
    )
    .await?;
    store(
        gateway,
        "acme",
        "n-bad",
        "How do I reset my password on the staff portal quickly?",
        "Create a new account instead.",
        0.1,
    )
    .await?;
    store(
        gateway,
        "other",
        "x-secret",
        QUESTION,
        "OTHER TENANT ANSWER",
        1.0,
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn examples_reach_the_model_in_order_negatives_only_when_asked_never_across_tenants()
-> TestResult {
    let upstream = FakeUpstream::start(FakeKind::OpenAi).await?;
    let gateway = TestGateway::start_with(memory_config(&upstream), Target::All).await?;
    seed(&gateway).await?;
    let mut router = router(&gateway)?;

    reply(&upstream);
    let response = router
        .complete(with_examples("acme", false))
        .await?
        .into_inner();
    let used: Vec<(&str, bool)> = response
        .cases_used
        .iter()
        .map(|c| (c.case_id.as_str(), c.positive))
        .collect();
    assert_eq!(used, [("p-exact", true), ("p-close", true)]);
    assert!(response.cases_used[0].similarity >= response.cases_used[1].similarity);
    let sent = examples_sent(&upstream).ok_or("no examples message before the user's")?;
    let first = sent.find("Forgot password").ok_or(sent.clone())?;
    let second = sent
        .find("Ask IT to send a reset link")
        .ok_or(sent.clone())?;
    assert!(first < second, "{sent}");
    assert!(sent.contains("Example 1 (worked, reward 1.00)"), "{sent}");
    assert!(
        !sent.contains("Create a new account"),
        "a negative without asking: {sent}"
    );
    assert!(
        !sent.contains("OTHER TENANT"),
        "another tenant's case: {sent}"
    );

    reply(&upstream);
    let response = router
        .complete(with_examples("acme", true))
        .await?
        .into_inner();
    let negatives: Vec<&str> = response
        .cases_used
        .iter()
        .filter(|c| !c.positive)
        .map(|c| c.case_id.as_str())
        .collect();
    assert_eq!(negatives, ["n-bad"]);
    let sent = examples_sent(&upstream).ok_or("no examples message")?;
    assert!(
        sent.contains("(failed, reward 0.10; do not repeat this)"),
        "{sent}"
    );
    assert!(sent.contains("Create a new account instead."), "{sent}");

    // Off (the default here) sends the conversation alone.
    reply(&upstream);
    let response = router.complete(ask("acme", QUESTION)).await?.into_inner();
    assert!(response.cases_used.is_empty());
    assert_eq!(examples_sent(&upstream), None);
    gateway.stop().await
}

#[tokio::test]
async fn example_tokens_are_counted_and_trimmed_to_the_window() -> TestResult {
    let upstream = FakeUpstream::start(FakeKind::OpenAi).await?;
    let mut config = memory_config(&upstream);
    // A small window: the question, the answer's 64 tokens and only the shorter examples fit.
    for model in &mut config.provider_adapter.models {
        model.context_window = 260;
        model.max_output_tokens = 64;
    }
    let gateway = TestGateway::start_with(config, Target::All).await?;
    seed(&gateway).await?;
    store(
        &gateway,
        "acme",
        "p-long",
        "How do I reset my staff portal password?",
        &"Step: open the portal, find the account page, and read every paragraph. ".repeat(12),
        0.9,
    )
    .await?;
    // The long case is among the retrieved candidates, so leaving it out is the trimming.
    let retrieved = CaseBankClient::new(gateway.channel(Target::Casebank)?)
        .retrieve(pb::RetrieveRequest {
            tenant: "acme".into(),
            task: QUESTION.into(),
            k: Some(4),
            min_reward: Some(0.6),
            min_similarity: Some(0.3),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(
        retrieved
            .positives
            .iter()
            .any(|c| c.case.as_ref().is_some_and(|c| c.id == "p-long")),
        "{retrieved:?}"
    );
    let mut router = router(&gateway)?;

    reply(&upstream);
    let mut plain = ask("acme", QUESTION);
    plain.max_tokens = 64;
    let without = router.complete(plain).await?.into_inner();
    reply(&upstream);
    let mut request = with_examples("acme", false);
    request.max_tokens = 64;
    let with = router.complete(request).await?.into_inner();
    let used: Vec<&str> = with.cases_used.iter().map(|c| c.case_id.as_str()).collect();
    assert!(!used.is_empty(), "every example was dropped");
    assert!(
        !used.contains(&"p-long"),
        "the longest example should be dropped first: {used:?}"
    );
    let sent = examples_sent(&upstream).ok_or("no examples message")?;
    assert!(!sent.contains("read every paragraph"), "{sent}");
    // The upstream reported no usage, so the adapter counted the prompt it sent: the examples'
    // tokens are in it, and in the cost.
    let tokens = |r: &pb::CompleteResponse| r.usage.unwrap_or_default().input_tokens;
    assert!(
        tokens(&with) > tokens(&without) + 20,
        "{} vs {}",
        tokens(&with),
        tokens(&without)
    );
    // Exact decimals; f64 only to order them in this assertion.
    assert!(with.cost_usd.parse::<f64>()? > without.cost_usd.parse::<f64>()?);
    gateway.stop().await
}

#[tokio::test]
async fn switching_case_memory_off_at_run_time_stops_examples_without_dropping_requests()
-> TestResult {
    let upstream = FakeUpstream::start(FakeKind::OpenAi).await?;
    let dir = tollgate_test_support::temp_dir("memory-switch")?;
    let path = dir.join("policy.toml");
    std::fs::write(
        &path,
        "[case_memory]\nmin_similarity = 0.3\ntimeout_ms = 3000\n",
    )?;
    let mut config = memory_config(&upstream);
    config.router.policy_file = Some(path.clone());
    let gateway = TestGateway::start_with(config, Target::All).await?;
    seed(&gateway).await?;
    let mut router = router(&gateway)?;

    reply(&upstream);
    let on = router
        .complete(with_examples("acme", false))
        .await?
        .into_inner();
    assert!(!on.cases_used.is_empty());
    let switches = on.decision.unwrap_or_default().switches;
    assert!(
        switches.contains(&"case_memory=on".to_owned()),
        "{switches:?}"
    );

    std::fs::write(
        &path,
        "[case_memory]\nmin_similarity = 0.3\ntimeout_ms = 3000\n[switches]\ncase_memory = false\n",
    )?;
    let mut switched = None;
    for _ in 0..40 {
        reply(&upstream);
        // Every request during the switch is served.
        let response = router
            .complete(with_examples("acme", false))
            .await?
            .into_inner();
        let decision = response.decision.clone().unwrap_or_default();
        if decision.switches.contains(&"case_memory=off".to_owned()) {
            switched = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let off = switched.ok_or("the switch never took effect")?;
    assert!(off.cases_used.is_empty());
    assert_eq!(examples_sent(&upstream), None);
    gateway.stop().await?;
    std::fs::remove_dir_all(dir)?;
    Ok(())
}

#[tokio::test]
async fn feedback_sets_the_reward_of_the_case_a_request_produced() -> TestResult {
    let gateway = TestGateway::start_with(config(), Target::All).await?;
    let mut router = router(&gateway)?;
    let response = router.complete(ask("", QUESTION)).await?.into_inner();
    let feedback = router
        .feedback(pb::FeedbackRequest {
            request_id: response.request_id.clone(),
            reward: 0.75,
            note: "correct but slow".into(),
        })
        .await?
        .into_inner();
    assert!(feedback.updated);
    assert_eq!(feedback.case_id, response.case_id);
    let mut casebank = CaseBankClient::new(gateway.channel(Target::Casebank)?);
    let case = casebank
        .get_case(pb::GetCaseRequest {
            tenant: "default".into(),
            case_id: response.case_id,
        })
        .await?
        .into_inner()
        .case
        .unwrap_or_default();
    assert_eq!(case.reward, Some(0.75));
    assert_eq!(case.outcome, "correct but slow");
    let plan: serde_json::Value = serde_json::from_str(&case.action.unwrap_or_default().plan_json)?;
    assert_eq!(plan["answer"], response.text.as_str());

    let bad = router
        .feedback(pb::FeedbackRequest {
            request_id: "x".into(),
            reward: 1.5,
            note: String::new(),
        })
        .await
        .err()
        .ok_or("reward 1.5 accepted")?;
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("reward"));
    gateway.stop().await
}

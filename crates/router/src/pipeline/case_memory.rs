//! Case-augmented prompting (Memento, arXiv 2508.16153): the K most similar past cases of the
//! same tenant, shown to the model before the user's message as examples of what worked (reward
//! ≥ min_reward) and, when asked, of what to avoid (low reward).
//!
//! The examples are one system message inserted just before the last user message, so that
//! chat models see them as instructions and completion models (token-ID prompts, which render
//! the conversation as text) see them in the same place. They count against the model's context
//! window, measured with the model's tokenizer through the token cache: when the prompt would not
//! fit, examples are dropped, longest first. Their tokens are ordinary input tokens, so usage and
//! cost include them.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tollgate_proto::v1 as pb;

use crate::catalog::CatalogModel;
use crate::pipeline::request::message_text;
use crate::pipeline::routing::Routed;
use crate::pipeline::{CompletionRequest, Degraded, Pipeline};

/// `case_memory: off | examples`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaseMemoryMode {
    Off,
    Examples,
}

/// `[router.policy.case_memory]`: defaults per agent, retrieval and the template.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CaseMemoryPolicy {
    /// For requests that leave `case_memory` unspecified.
    pub default: CaseMemoryMode,
    /// Per-agent defaults, e.g. `{ support = "examples" }`.
    pub agents: std::collections::BTreeMap<String, CaseMemoryMode>,
    /// Memento's defaults: K = 4, reward ≥ 0.6, similarity ≥ 0.8.
    pub k: u32,
    pub min_reward: f64,
    pub min_similarity: f64,
    pub timeout_ms: u64,
    pub template: ExampleTemplate,
}

impl Default for CaseMemoryPolicy {
    fn default() -> Self {
        Self {
            default: CaseMemoryMode::Off,
            agents: std::collections::BTreeMap::new(),
            k: 4,
            min_reward: 0.6,
            min_similarity: 0.8,
            timeout_ms: 100,
            template: ExampleTemplate::default(),
        }
    }
}

/// The example template. Placeholders: `{n}` (1-based), `{task}`, `{answer}` (the stored answer
/// or plan), `{outcome}` (the feedback note, or "no note"), `{reward}` (two decimals).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ExampleTemplate {
    pub header: String,
    pub positive: String,
    pub negative: String,
    pub footer: String,
}

impl Default for ExampleTemplate {
    fn default() -> Self {
        Self {
            header: "Here are similar tasks solved before and how they went. Use what worked; avoid what failed.\n".into(),
            positive: "\n### Example {n} (worked, reward {reward})\nTask: {task}\nAnswer: {answer}\nOutcome: {outcome}\n".into(),
            negative: "\n### Example {n} (failed, reward {reward}; do not repeat this)\nTask: {task}\nAnswer: {answer}\nOutcome: {outcome}\n".into(),
            footer: "\nNow the new task follows.".into(),
        }
    }
}

/// One past case chosen as an example.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub case_id: String,
    pub similarity: f64,
    pub positive: bool,
    pub task: String,
    pub answer: String,
    pub outcome: String,
    pub reward: f64,
}

/// The examples a request may use, before trimming to a model's window.
#[derive(Debug, Clone, Default)]
pub struct Examples {
    /// Positives (most similar first), then negatives.
    pub cases: Vec<Example>,
    pub degraded: bool,
}

impl Examples {
    pub fn used(&self) -> Vec<pb::UsedCase> {
        self.cases
            .iter()
            .map(|e| pb::UsedCase {
                case_id: e.case_id.clone(),
                similarity: e.similarity,
                positive: e.positive,
            })
            .collect()
    }
}

impl CaseMemoryPolicy {
    /// Whether `request` gets examples, after the switch, the request and the agent default.
    pub fn wanted(&self, switch_on: bool, request: &CompletionRequest) -> bool {
        if !switch_on {
            return false;
        }
        match request.case_memory {
            Some(mode) => mode == CaseMemoryMode::Examples,
            None => {
                self.agents
                    .get(&request.agent)
                    .copied()
                    .unwrap_or(self.default)
                    == CaseMemoryMode::Examples
            }
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.k == 0 || self.k > 64 {
            return Err(format!("case_memory.k must be in 1..=64, got {}", self.k));
        }
        if !(0.0..=1.0).contains(&self.min_reward) {
            return Err(format!(
                "case_memory.min_reward must be in [0, 1], got {}",
                self.min_reward
            ));
        }
        if !(-1.0..=1.0).contains(&self.min_similarity) {
            return Err(format!(
                "case_memory.min_similarity must be in [-1, 1], got {}",
                self.min_similarity
            ));
        }
        Ok(())
    }
}

/// The examples as the one message put before the user's message.
pub fn render(template: &ExampleTemplate, examples: &[Example]) -> String {
    let mut text = template.header.clone();
    for (index, example) in examples.iter().enumerate() {
        let pattern = if example.positive {
            &template.positive
        } else {
            &template.negative
        };
        let outcome = if example.outcome.is_empty() {
            "no note"
        } else {
            &example.outcome
        };
        text.push_str(
            &pattern
                .replace("{n}", &(index + 1).to_string())
                .replace("{reward}", &format!("{:.2}", example.reward))
                .replace("{task}", &example.task)
                .replace("{answer}", &example.answer)
                .replace("{outcome}", outcome),
        );
    }
    text.push_str(&template.footer);
    text
}

/// The answer stored with a case, for later examples: `plan_json` `{"answer": ...}` (written by
/// the router), a plan given by an agent, or nothing.
fn answer_of(case: &pb::Case) -> String {
    let plan = case
        .action
        .as_ref()
        .map(|a| a.plan_json.as_str())
        .unwrap_or_default();
    if plan.is_empty() {
        return String::new();
    }
    match serde_json::from_str::<serde_json::Value>(plan) {
        Ok(serde_json::Value::Object(map)) => match map.get("answer") {
            Some(serde_json::Value::String(answer)) => answer.clone(),
            _ => plan.to_owned(),
        },
        _ => plan.to_owned(),
    }
}

impl Pipeline {
    /// Retrieves this tenant's examples for `request` under `routed`'s policy (nothing when
    /// not wanted). A case bank that fails or is slow gives no examples and marks the request
    /// degraded.
    pub async fn examples(
        &self,
        tenant: &str,
        request: &CompletionRequest,
        routed: &mut Routed,
    ) -> Examples {
        let examples = self
            .retrieve_examples(
                tenant,
                request,
                &routed.policy.case_memory,
                routed.policy.switches.case_memory,
            )
            .await;
        if examples.degraded {
            routed.mark_degraded(Degraded::Casebank);
        }
        examples
    }

    async fn retrieve_examples(
        &self,
        tenant: &str,
        request: &CompletionRequest,
        policy: &CaseMemoryPolicy,
        switch_on: bool,
    ) -> Examples {
        if !policy.wanted(switch_on, request) {
            return Examples::default();
        }
        let budget = Duration::from_millis(policy.timeout_ms);
        let mut call = tonic::Request::new(pb::RetrieveRequest {
            tenant: tenant.to_owned(),
            task: request.task.clone(),
            k: Some(policy.k as i32),
            min_reward: Some(policy.min_reward),
            min_similarity: Some(policy.min_similarity),
            agent: String::new(),
            tags: Vec::new(),
            include_negatives: request.include_negative_examples,
        });
        call.set_timeout(budget);
        let mut client = self.deps.casebank.clone();
        let failure = match tokio::time::timeout(budget, client.retrieve(call)).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(format!("failed: {}", status.message())),
            Err(_) => Err(format!("no answer within {budget:?}")),
        };
        let response = match failure {
            Ok(response) => response,
            Err(reason) => {
                tracing::warn!(%reason, "case retrieval; no examples");
                Degraded::Casebank.count();
                return Examples {
                    cases: Vec::new(),
                    degraded: true,
                };
            }
        };
        let convert = |scored: &pb::ScoredCase, positive: bool| {
            let case = scored.case.as_ref()?;
            // The case of this very request (a replayed id) is no example of itself.
            if case.request_id == request.request_id {
                return None;
            }
            Some(Example {
                case_id: case.id.clone(),
                similarity: scored.similarity,
                positive,
                task: case.task.clone(),
                answer: answer_of(case),
                outcome: case.outcome.clone(),
                reward: case.reward.unwrap_or(0.0),
            })
        };
        let mut cases: Vec<Example> = response
            .positives
            .iter()
            .filter_map(|c| convert(c, true))
            .collect();
        if request.include_negative_examples {
            cases.extend(response.negatives.iter().filter_map(|c| convert(c, false)));
        }
        Examples {
            cases,
            degraded: false,
        }
    }

    /// Keeps the examples that fit `model`'s window with the rest of the prompt (`prompt_tokens`,
    /// counted by the caller) and the answer, dropping the longest first. Token counts come from
    /// the model's tokenizer (token cache); when it is unavailable, from a conservative estimate
    /// of three characters per token.
    pub async fn fit_examples(
        &self,
        examples: &Examples,
        template: &ExampleTemplate,
        model: &CatalogModel,
        prompt_tokens: u64,
        max_output_tokens: u64,
    ) -> Vec<Example> {
        if examples.cases.is_empty() {
            return Vec::new();
        }
        let window = model.context_window;
        let room = window.saturating_sub(prompt_tokens + max_output_tokens);
        // One count per example (they are dropped one by one) plus the header and footer, all
        // at once: K + 1 token-cache calls cost one round trip.
        let texts: Vec<String> = std::iter::once(render(template, &[]))
            .chain(
                examples
                    .cases
                    .iter()
                    .map(|example| render(template, std::slice::from_ref(example))),
            )
            .collect();
        let counts =
            futures_util::future::join_all(texts.iter().map(|text| self.count_tokens(model, text)))
                .await;
        let overhead = counts.first().copied().unwrap_or(0);
        let mut sized: Vec<(Example, u64)> = examples
            .cases
            .iter()
            .cloned()
            .zip(counts.into_iter().skip(1))
            .collect();
        let mut total: u64 = overhead + sized.iter().map(|(_, t)| t).sum::<u64>();
        while total > room && !sized.is_empty() {
            let longest = sized
                .iter()
                .enumerate()
                .max_by_key(|(_, (_, tokens))| *tokens)
                .map(|(index, _)| index)
                .unwrap_or(0);
            let (_, tokens) = sized.remove(longest);
            total -= tokens;
            metrics::counter!("tollgate_router_examples_trimmed_total").increment(1);
        }
        if sized.is_empty() {
            return Vec::new();
        }
        sized.into_iter().map(|(example, _)| example).collect()
    }

    /// Tokens of `text` with `model`'s tokenizer.
    pub async fn count_tokens(&self, model: &CatalogModel, text: &str) -> u64 {
        let mut call = tonic::Request::new(pb::CountTokensRequest {
            tokenizer: model.tokenizer.clone(),
            text: text.to_owned(),
        });
        call.set_timeout(self.timeouts.token_cache);
        let mut client = self.deps.token_cache.clone();
        match tokio::time::timeout(self.timeouts.token_cache, client.count_tokens(call)).await {
            Ok(Ok(response)) => response.into_inner().count,
            _ => (text.len() as u64).div_ceil(3),
        }
    }
}

/// Inserts the examples message before the last user message of `messages`.
pub fn insert_examples(
    messages: &mut Vec<pb::Message>,
    template: &ExampleTemplate,
    examples: &[Example],
) {
    if examples.is_empty() {
        return;
    }
    let message = pb::Message {
        role: pb::Role::System as i32,
        text: render(template, examples),
        ..Default::default()
    };
    let last_user = messages
        .iter()
        .rposition(|m| m.role == pb::Role::User as i32 || m.role == pb::Role::Unspecified as i32)
        .unwrap_or(messages.len());
    messages.insert(last_user, message);
}

/// Tokens of the conversation text, for the window check.
pub fn conversation_text(messages: &[pb::Message]) -> String {
    messages
        .iter()
        .map(message_text)
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(id: &str, positive: bool) -> Example {
        Example {
            case_id: id.into(),
            similarity: 0.9,
            positive,
            task: format!("task {id}"),
            answer: format!("answer {id}"),
            outcome: String::new(),
            reward: if positive { 1.0 } else { 0.0 },
        }
    }

    #[test]
    fn the_template_numbers_examples_and_marks_failures() {
        let text = render(
            &ExampleTemplate::default(),
            &[example("a", true), example("b", false)],
        );
        let first = text
            .find("Example 1 (worked, reward 1.00)")
            .unwrap_or(usize::MAX);
        let second = text
            .find("Example 2 (failed, reward 0.00; do not repeat this)")
            .unwrap_or(0);
        assert!(first < second, "{text}");
        assert!(text.contains("Task: task a\nAnswer: answer a\nOutcome: no note"));
        assert!(text.ends_with("Now the new task follows."));
    }

    #[test]
    fn examples_go_right_before_the_last_user_message() {
        let message = |role: pb::Role, text: &str| pb::Message {
            role: role as i32,
            text: text.into(),
            ..Default::default()
        };
        let mut messages = vec![
            message(pb::Role::System, "be brief"),
            message(pb::Role::User, "first"),
            message(pb::Role::Assistant, "reply"),
            message(pb::Role::User, "second"),
        ];
        insert_examples(
            &mut messages,
            &ExampleTemplate::default(),
            &[example("a", true)],
        );
        let roles: Vec<i32> = messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [
                pb::Role::System as i32,
                pb::Role::User as i32,
                pb::Role::Assistant as i32,
                pb::Role::System as i32,
                pb::Role::User as i32
            ]
        );
        assert!(messages[3].text.contains("task a"));
    }

    #[test]
    fn the_request_the_agent_default_and_the_switch_decide() {
        let mut policy = CaseMemoryPolicy::default();
        policy
            .agents
            .insert("support".into(), CaseMemoryMode::Examples);
        let request = |agent: &str, mode: Option<CaseMemoryMode>| {
            let mut request = match CompletionRequest::from_proto(pb::CompleteRequest {
                agent: agent.into(),
                messages: vec![pb::Message {
                    role: pb::Role::User as i32,
                    text: "x".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }) {
                Ok(request) => request,
                Err(status) => panic!("{status}"),
            };
            request.case_memory = mode;
            request
        };
        assert!(policy.wanted(true, &request("support", None)));
        assert!(!policy.wanted(true, &request("other", None)));
        assert!(policy.wanted(true, &request("other", Some(CaseMemoryMode::Examples))));
        assert!(!policy.wanted(true, &request("support", Some(CaseMemoryMode::Off))));
        assert!(!policy.wanted(false, &request("support", Some(CaseMemoryMode::Examples))));
    }
}

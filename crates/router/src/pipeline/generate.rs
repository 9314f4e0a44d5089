//! Calling the provider-adapter for an answer: candidates in order (provider fallback on
//! retryable failures: the next model of the tier, then a stronger one, never below the floor),
//! every attempt renumbered across calls so that `(request_id, attempt)` stays unique in the
//! ledger, and the cascade's answer checks.

use std::time::Instant;

use regex::Regex;
use tollgate_proto::v1 as pb;
use tonic::Status;

use crate::catalog::CatalogModel;
use crate::pipeline::case_memory::{ExampleTemplate, Examples, conversation_text};
use crate::pipeline::context::PreparedPrompt;
use crate::pipeline::{CompletionRequest, Pipeline};
use crate::policy::CascadeCheck;

/// A successful answer and the model that gave it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub response: pb::GenerateResponse,
    pub model: CatalogModel,
    pub prompt: PreparedPrompt,
    /// The past cases shown to the model as examples.
    pub examples_used: Vec<pb::UsedCase>,
}

/// Every attempt so far, numbered 1.. in order, whatever call they came from.
#[derive(Debug, Clone, Default)]
pub struct AttemptLog {
    pub attempts: Vec<pb::Attempt>,
}

impl AttemptLog {
    pub fn next_number(&self) -> u32 {
        self.attempts.len() as u32 + 1
    }

    /// Appends the adapter's attempts of one call, renumbered.
    pub fn extend(&mut self, attempts: impl IntoIterator<Item = pb::Attempt>) {
        for mut attempt in attempts {
            attempt.number = self.next_number();
            self.attempts.push(attempt);
        }
    }

    /// A call that failed as a whole: the adapter's own attempts are only in its message, so
    /// the call is logged as one failed attempt (no usage, cost 0) to keep the record complete.
    pub fn push_failed_call(&mut self, model: &CatalogModel, status: &Status, latency_micros: u64) {
        let number = self.next_number();
        self.attempts.push(pb::Attempt {
            number,
            provider: model.provider.clone(),
            model: model.id.clone(),
            status: if retryable(status) {
                pb::AttemptStatus::RetryableError as i32
            } else {
                pb::AttemptStatus::FatalError as i32
            },
            error_kind: format!("{:?}", status.code()).to_lowercase(),
            error_message: status.message().chars().take(500).collect(),
            latency_micros,
            usage: Some(pb::Usage::default()),
            cost_usd: "0".into(),
            tier: model.tier.to_proto() as i32,
            ..Default::default()
        });
    }
}

/// Failures worth another candidate: the model or its provider is down, slow or rate limited.
pub fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::ResourceExhausted
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unknown
            | tonic::Code::Internal
    )
}

impl Pipeline {
    /// Tries `candidates` in order until one answers. Returns the last error when none does.
    pub async fn generate(
        &self,
        request: &CompletionRequest,
        candidates: &[CatalogModel],
        use_token_cache: bool,
        examples: &ExampleSet<'_>,
        log: &mut AttemptLog,
    ) -> Result<Answer, Status> {
        let mut last_error = Status::unavailable("no candidate model");
        for model in candidates {
            let (prompt, examples_used) = self
                .prompt_for(request, model, use_token_cache, examples)
                .await?;
            let started = Instant::now();
            // No deadline of our own: the adapter enforces per-call deadlines and the router's
            // server timeout bounds the whole request.
            let call = tonic::Request::new(generate_request(request, model, &prompt));
            let mut client = self.deps.provider.clone();
            match client.generate(call).await {
                Ok(response) => {
                    let mut response = response.into_inner();
                    log.extend(std::mem::take(&mut response.attempts));
                    return Ok(Answer {
                        response,
                        model: model.clone(),
                        prompt,
                        examples_used,
                    });
                }
                Err(status) => {
                    let latency = started.elapsed().as_micros() as u64;
                    log.push_failed_call(model, &status, latency);
                    if !retryable(&status) {
                        return Err(status);
                    }
                    tracing::warn!(model = %model.id, code = ?status.code(), "model failed; trying the next candidate");
                    last_error = status;
                }
            }
        }
        Err(last_error)
    }
}

/// The examples a request may show and their template.
#[derive(Debug, Clone, Copy)]
pub struct ExampleSet<'a> {
    pub examples: &'a Examples,
    pub template: &'a ExampleTemplate,
}

impl Pipeline {
    /// The prompt for one candidate: the examples that fit its window, then the context.
    pub async fn prompt_for(
        &self,
        request: &CompletionRequest,
        model: &CatalogModel,
        use_token_cache: bool,
        examples: &ExampleSet<'_>,
    ) -> Result<(PreparedPrompt, Vec<pb::UsedCase>), Status> {
        let fitted = if examples.examples.cases.is_empty() {
            Vec::new()
        } else {
            let conversation = self
                .count_tokens(model, &conversation_text(&request.messages))
                .await;
            let context_estimate = request.context.as_ref().map_or(0, |context| {
                let inline: u64 = context
                    .documents
                    .iter()
                    .map(|d| d.text.as_ref().map_or(0, |t| t.len() as u64).div_ceil(3))
                    .sum();
                match u64::try_from(context.max_tokens) {
                    Ok(limit) if limit > 0 => inline.min(limit),
                    _ => inline,
                }
            });
            let output = u64::try_from(request.max_tokens)
                .ok()
                .filter(|t| *t > 0)
                .unwrap_or(model.max_output_tokens);
            self.fit_examples(
                examples.examples,
                examples.template,
                model,
                conversation + context_estimate,
                output,
            )
            .await
        };
        let prompt = self
            .prepare_prompt(request, model, use_token_cache, &fitted, examples.template)
            .await?;
        let used = Examples {
            cases: fitted,
            degraded: false,
        }
        .used();
        Ok((prompt, used))
    }
}

pub fn generate_request(
    request: &CompletionRequest,
    model: &CatalogModel,
    prompt: &PreparedPrompt,
) -> pb::GenerateRequest {
    pb::GenerateRequest {
        model: model.id.clone(),
        messages: prompt.messages.clone(),
        prompt_token_ids: prompt.prompt_token_ids.clone(),
        max_tokens: request.max_tokens,
        temperature: request.temperature,
        top_p: None,
        stop: Vec::new(),
        json_mode: request.json_mode,
        return_token_ids: false,
        disable_fallback: true,
        request_id: request.request_id.clone(),
        tenant: String::new(),
    }
}

/// The cascade's answer checks, compiled once.
#[derive(Debug, Clone)]
pub struct AnswerChecks {
    refusal: Regex,
}

impl AnswerChecks {
    pub fn new() -> Result<Self, regex::Error> {
        Ok(Self {
            // Refusals open the answer; a refusal buried in a long answer is not one.
            refusal: Regex::new(
                r"(?i)^\W*(?:i'?m sorry|i am sorry|sorry, (?:but )?i|i can(?:'|no)t (?:help|assist|do|answer|comply)|i cannot (?:help|assist|do|answer|comply)|i'?m (?:not able|unable) to|i am (?:not able|unable) to|as an ai\b)",
            )?,
        })
    }

    /// The first check the answer fails, if any.
    pub fn failed(
        &self,
        checks: &[CascadeCheck],
        answer: &pb::GenerateResponse,
        json_mode: bool,
    ) -> Option<CascadeCheck> {
        checks.iter().copied().find(|check| match check {
            CascadeCheck::Empty => answer.text.trim().is_empty(),
            CascadeCheck::Refusal => self.refusal.is_match(&answer.text),
            CascadeCheck::Truncated => answer.finish_reason == pb::FinishReason::Length as i32,
            CascadeCheck::InvalidJson => {
                json_mode
                    && !answer.text.trim().is_empty()
                    && serde_json::from_str::<serde_json::Value>(answer.text.trim()).is_err()
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(text: &str, finish: pb::FinishReason) -> pb::GenerateResponse {
        pb::GenerateResponse {
            text: text.into(),
            finish_reason: finish as i32,
            ..Default::default()
        }
    }

    #[test]
    fn each_check_catches_its_failure_and_passes_good_answers() {
        let checks = match AnswerChecks::new() {
            Ok(checks) => checks,
            Err(error) => panic!("{error}"),
        };
        let all = [
            CascadeCheck::Empty,
            CascadeCheck::Refusal,
            CascadeCheck::Truncated,
            CascadeCheck::InvalidJson,
        ];
        let stop = pb::FinishReason::Stop;
        assert_eq!(
            checks.failed(&all, &answer("  ", stop), false),
            Some(CascadeCheck::Empty)
        );
        assert_eq!(
            checks.failed(
                &all,
                &answer("I'm sorry, but I can't help with that.", stop),
                false
            ),
            Some(CascadeCheck::Refusal)
        );
        assert_eq!(
            checks.failed(
                &all,
                &answer("The answer is", pb::FinishReason::Length),
                false
            ),
            Some(CascadeCheck::Truncated)
        );
        assert_eq!(
            checks.failed(&all, &answer("{\"a\": ", stop), true),
            Some(CascadeCheck::InvalidJson)
        );
        assert_eq!(checks.failed(&all, &answer("{\"a\": 1}", stop), true), None);
        assert_eq!(
            checks.failed(&all, &answer("Paris. Sorry, I digress.", stop), false),
            None
        );
        assert_eq!(
            checks.failed(&[CascadeCheck::Empty], &answer("I'm sorry", stop), false),
            None
        );
    }

    #[test]
    fn attempts_are_renumbered_across_calls() {
        let mut log = AttemptLog::default();
        log.extend([
            pb::Attempt {
                number: 1,
                ..Default::default()
            },
            pb::Attempt {
                number: 2,
                ..Default::default()
            },
        ]);
        log.extend([pb::Attempt {
            number: 1,
            ..Default::default()
        }]);
        let numbers: Vec<u32> = log.attempts.iter().map(|a| a.number).collect();
        assert_eq!(numbers, [1, 2, 3]);
    }
}

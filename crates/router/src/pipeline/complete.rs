//! `Complete` (unary) and `Route` (the decision only), end to end.

use std::time::Instant;

use tollgate_kit::error::ErrorCode;
use tollgate_proto::v1 as pb;
use tonic::Status;

use crate::pipeline::accounting::{total_cost, total_usage};
use crate::pipeline::cases::Served;
use crate::pipeline::generate::{Answer, AnswerChecks, AttemptLog, ExampleSet};
use crate::pipeline::idempotency::Admission;
use crate::pipeline::routing::Routed;
use crate::pipeline::stages::Stage;
use crate::pipeline::{CompletionRequest, Pipeline, response};
use crate::policy::Reason;

impl Pipeline {
    /// The decision only: nothing is reserved, called, recorded or stored.
    pub async fn route_only(
        &self,
        tenant: &str,
        request: &CompletionRequest,
    ) -> Result<pb::Decision, Status> {
        let routed = self.route(tenant, request).await?;
        self.check_max_cost(request, &routed)?;
        Ok(response::decision(&routed, None))
    }

    pub async fn complete(
        &self,
        tenant: &str,
        request: CompletionRequest,
        checks: &AnswerChecks,
    ) -> Result<pb::CompleteResponse, Status> {
        match self
            .idempotency
            .admit(tenant, &request.request_id, request.body_sha256)?
        {
            Admission::Replay(response) => return Ok(*response),
            Admission::Run => {}
        }
        let result = self.complete_once(tenant, &request, checks).await;
        match &result {
            Ok(response) => self
                .idempotency
                .complete(tenant, &request.request_id, response),
            Err(_) => self.idempotency.abandon(tenant, &request.request_id),
        }
        result
    }

    async fn complete_once(
        &self,
        tenant: &str,
        request: &CompletionRequest,
        checks: &AnswerChecks,
    ) -> Result<pb::CompleteResponse, Status> {
        let started = Instant::now();
        let mut routed = self.route(tenant, request).await?;
        Stage::Route.observe(started);
        self.check_max_cost(request, &routed)?;
        let stage_started = Instant::now();
        let reservation = self.reserve(tenant, request, &mut routed).await?;
        Stage::Reserve.observe(stage_started);
        if reservation.soft_limit_reached {
            self.reroute_for_soft_limit(&mut routed, request).await?;
        }
        let use_token_cache = routed.policy.switches.token_cache;
        let policy = std::sync::Arc::clone(&routed.policy);
        let stage_started = Instant::now();
        let examples = self.examples(tenant, request, &mut routed).await;
        Stage::Examples.observe(stage_started);
        let example_set = ExampleSet {
            examples: &examples,
            template: &policy.case_memory.template,
        };
        let mut log = AttemptLog::default();
        let stage_started = Instant::now();
        let outcome = self
            .answer_with_cascade(
                request,
                &mut routed,
                use_token_cache,
                &example_set,
                checks,
                &mut log,
            )
            .await;
        Stage::Generate.observe(stage_started);
        let cost = total_cost(&log.attempts);
        let context_hits = match &outcome {
            Ok(answer) => cache_hit_tokens(&answer.prompt.info),
            Err(_) => 0,
        };
        let stage_started = Instant::now();
        self.record_attempts(tenant, request, &routed, &log.attempts, context_hits)
            .await;
        self.settle(&reservation, cost);
        Stage::Record.observe(stage_started);
        let answer = outcome?;
        if let Some(degraded) = answer.prompt.degraded {
            routed.mark_degraded(degraded);
        }
        let latency_micros = started.elapsed().as_micros() as u64;
        let case_id = self.store_case(
            tenant,
            request,
            &Served {
                model: &answer.model,
                answer: &answer.response.text,
                cost,
                latency_micros,
            },
            routed.policy.switches.casebank,
        );
        let decision = response::decision(&routed, Some(&answer.model));
        response::count_decision(&decision);
        Stage::Total.observe(started);
        Ok(pb::CompleteResponse {
            request_id: request.request_id.clone(),
            text: answer.response.text,
            finish_reason: answer.response.finish_reason,
            usage: Some(total_usage(&log.attempts)),
            cost_usd: cost.to_string(),
            decision: Some(decision),
            attempts: log.attempts,
            context: Some(answer.prompt.info),
            cases_used: answer.examples_used,
            case_id,
        })
    }

    /// The first answer, and when the cascade is on and that answer fails a check, one
    /// escalation to a stronger tier. Both answers' attempts are in `log`.
    async fn answer_with_cascade(
        &self,
        request: &CompletionRequest,
        routed: &mut Routed,
        use_token_cache: bool,
        examples: &ExampleSet<'_>,
        checks: &AnswerChecks,
        log: &mut AttemptLog,
    ) -> Result<Answer, Status> {
        let first = self
            .generate(request, &routed.candidates, use_token_cache, examples, log)
            .await?;
        if first.model.id != routed.model().id {
            routed.extra_reasons.push(Reason::ProviderFallback);
        }
        let cascade = &routed.policy.cascade;
        let allowed = routed.policy.switches.cascade
            && request
                .hints
                .allow_escalation
                .unwrap_or(cascade.escalate_by_default)
            && first.model.tier <= cascade.max_checked_tier
            && request.hints.force_model.is_none();
        if !allowed {
            return Ok(first);
        }
        let Some(failed) = checks.failed(&cascade.checks, &first.response, request.json_mode)
        else {
            return Ok(first);
        };
        let catalog = self.catalog.loaded().await?;
        let stronger: Vec<_> = catalog
            .candidates(
                &routed.policy.models,
                first.model.tier.up(),
                routed.decision.needs_vision,
            )
            .into_iter()
            .filter(|model| model.tier > first.model.tier)
            .take(crate::pipeline::routing::MAX_CANDIDATES)
            .cloned()
            .collect();
        if stronger.is_empty() {
            return Ok(first);
        }
        tracing::info!(check = ?failed, from = %first.model.id, "cheap answer failed a check; escalating");
        metrics::counter!("tollgate_router_escalations_total", "check" => format!("{failed:?}").to_lowercase())
            .increment(1);
        match self
            .generate(request, &stronger, use_token_cache, examples, log)
            .await
        {
            Ok(second) => {
                routed.extra_reasons.push(Reason::Escalated);
                Ok(second)
            }
            // The stronger tier failed: the first answer is still an answer.
            Err(status) => {
                tracing::warn!(code = ?status.code(), "escalation failed; answering with the first model");
                Ok(first)
            }
        }
    }

    /// `hints.max_cost_usd`: refuse before anything is spent.
    pub fn check_max_cost(
        &self,
        request: &CompletionRequest,
        routed: &Routed,
    ) -> Result<(), Status> {
        if let Some(max_cost) = request.max_cost
            && routed.estimated_cost > max_cost
        {
            return Err(ErrorCode::FailedPrecondition.status(format!(
                "hints.max_cost_usd: the estimated cost {} USD on {} exceeds the cap {max_cost} USD",
                routed.estimated_cost,
                routed.model().id
            )));
        }
        Ok(())
    }
}

/// Context tokens that came from the token cache rather than a tokenizer run (an estimate by
/// documents: spans that hit either layer).
pub fn cache_hit_tokens(info: &pb::ContextCacheInfo) -> u64 {
    if info.documents == 0 {
        return 0;
    }
    let hits = u64::from(info.l1_hits + info.l2_hits);
    info.context_tokens * hits / u64::from(info.documents)
}

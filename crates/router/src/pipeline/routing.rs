//! From a checked request to a decision: classify, ask the case bank (within its time budget),
//! decide the tier (policy::decide), pick the candidate models from the catalog and estimate the
//! cost. Shared by `Route` (the dry run), `Complete` and `CompleteStream`.

use std::sync::Arc;
use std::time::Duration;

use tollgate_kit::error::{ErrorCode, invalid_argument};
use tollgate_kit::money::Usd;
use tollgate_proto::v1 as pb;
use tonic::Status;

use crate::catalog::CatalogModel;
use crate::classify::Classification;
use crate::pipeline::{CompletionRequest, Degraded, Pipeline};
use crate::policy::{
    CasebankSignal, PolicyConfig, Reason, RoutingInput, TierDecision, TierEstimate,
};
use crate::tier::Tier;

/// At most this many candidate models are tried for one answer (provider fallback).
pub const MAX_CANDIDATES: usize = 3;
/// Output tokens assumed for the budget estimate when the request sets no max_tokens.
const DEFAULT_OUTPUT_ESTIMATE: u64 = 1024;

/// Everything the rest of the pipeline needs from the routing step.
#[derive(Debug, Clone)]
pub struct Routed {
    pub policy: Arc<PolicyConfig>,
    pub classification: Classification,
    pub casebank: CasebankSignal,
    pub decision: TierDecision,
    /// In the order to try them; never empty.
    pub candidates: Vec<CatalogModel>,
    pub estimated_cost: Usd,
    pub estimated_input_tokens: u64,
    pub degraded: Vec<Degraded>,
    /// Reasons added after the tier decision (fallback, escalation, degraded modes).
    pub extra_reasons: Vec<Reason>,
}

impl Routed {
    pub fn model(&self) -> &CatalogModel {
        &self.candidates[0]
    }

    /// Records a dependency that was unavailable for this request, once.
    pub fn mark_degraded(&mut self, degraded: Degraded) {
        if !self.degraded.contains(&degraded) {
            self.degraded.push(degraded);
        }
    }

    pub fn reasons(&self) -> Vec<String> {
        self.decision
            .reasons
            .iter()
            .chain(self.extra_reasons.iter())
            .map(|reason| reason.as_str().to_owned())
            .collect()
    }
}

impl Pipeline {
    /// Routes `request` for `tenant`. `budget_soft_limit` is known only after a reservation;
    /// the first call passes `false` and [`Pipeline::reroute_for_soft_limit`] adjusts.
    pub async fn route(&self, tenant: &str, request: &CompletionRequest) -> Result<Routed, Status> {
        let policy = self.policy.current();
        let classification = self
            .classifier
            .classify(&request.task, request.conversation_depth);
        let mut degraded = Vec::new();
        let casebank = if policy.switches.casebank {
            let started = std::time::Instant::now();
            let signal = self.casebank_signal(&policy, tenant, request).await;
            crate::pipeline::stages::Stage::Casebank.observe(started);
            signal
        } else {
            CasebankSignal::Off
        };
        if casebank == CasebankSignal::Unavailable {
            degraded.push(Degraded::Casebank);
            Degraded::Casebank.count();
        }
        let catalog = self.catalog.loaded().await.map_err(|status| {
            ErrorCode::Unavailable.status(format!(
                "the model catalog is not loaded (provider-adapter: {})",
                status.message()
            ))
        })?;
        let mut routed = Routed {
            decision: TierDecision {
                tier: Tier::Cheap,
                needs_vision: false,
                critical: false,
                floor: Tier::Local,
                reasons: Vec::new(),
                explanation: String::new(),
            },
            policy,
            classification,
            casebank,
            candidates: Vec::new(),
            estimated_cost: Usd::ZERO,
            estimated_input_tokens: estimate_input_tokens(request),
            degraded,
            extra_reasons: Vec::new(),
        };
        self.decide_and_pick(&mut routed, request, false, &catalog)?;
        Ok(routed)
    }

    /// Past a soft limit the policy may steer cheaper: decide again with that signal (no
    /// remote call is repeated).
    pub async fn reroute_for_soft_limit(
        &self,
        routed: &mut Routed,
        request: &CompletionRequest,
    ) -> Result<(), Status> {
        let catalog = self.catalog.loaded().await?;
        self.decide_and_pick(routed, request, true, &catalog)
    }

    fn decide_and_pick(
        &self,
        routed: &mut Routed,
        request: &CompletionRequest,
        budget_soft_limit: bool,
        catalog: &crate::catalog::Catalog,
    ) -> Result<(), Status> {
        let decision = crate::policy::decide(
            &routed.policy,
            &RoutingInput {
                agent: &request.agent,
                text: &request.task,
                has_images: request.has_images,
                classification: &routed.classification,
                casebank: &routed.casebank,
                hints: &request.hints,
                budget_soft_limit,
            },
        );
        let mut candidates: Vec<CatalogModel> = match &request.hints.force_model {
            Some(forced) if !decision.critical => {
                let model = catalog.get(forced).ok_or_else(|| {
                    invalid_argument(
                        "hints.force_model",
                        format!("{forced:?} is not a model of the catalog"),
                    )
                })?;
                if decision.needs_vision && !model.vision {
                    return Err(invalid_argument(
                        "hints.force_model",
                        format!("{forced:?} cannot read images"),
                    ));
                }
                vec![model.clone()]
            }
            _ => catalog
                .candidates(&routed.policy.models, decision.tier, decision.needs_vision)
                .into_iter()
                .cloned()
                .collect(),
        };
        if candidates.is_empty() {
            return Err(ErrorCode::FailedPrecondition.status(format!(
                "no {}model of tier {} or stronger in the catalog",
                if decision.needs_vision { "vision " } else { "" },
                decision.tier
            )));
        }
        candidates.truncate(MAX_CANDIDATES);
        routed.extra_reasons.retain(|r| *r != Reason::ForcedModel);
        if request.hints.force_model.is_some() && !decision.critical {
            routed.extra_reasons.push(Reason::ForcedModel);
        } else if candidates[0].tier > decision.tier {
            routed.extra_reasons.push(Reason::TierUnavailableUp);
        }
        let output = u64::try_from(request.max_tokens)
            .ok()
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_OUTPUT_ESTIMATE.min(candidates[0].max_output_tokens.max(1)));
        routed.estimated_cost = candidates[0].cost(routed.estimated_input_tokens, output);
        routed.decision = decision;
        routed.candidates = candidates;
        Ok(())
    }

    async fn casebank_signal(
        &self,
        policy: &PolicyConfig,
        tenant: &str,
        request: &CompletionRequest,
    ) -> CasebankSignal {
        let mut call = tonic::Request::new(pb::EstimateRequest {
            tenant: tenant.to_owned(),
            task: request.task.clone(),
            candidates: Vec::new(),
            neighbours: Some(policy.casebank.neighbours as i32),
            agent: String::new(),
            min_similarity: Some(policy.casebank.min_similarity),
        });
        let budget = Duration::from_millis(policy.casebank.timeout_ms);
        call.set_timeout(budget);
        let mut client = self.deps.casebank.clone();
        match tokio::time::timeout(budget, client.estimate(call)).await {
            Ok(Ok(response)) => {
                let response = response.into_inner();
                if response.cold_start {
                    return CasebankSignal::ColdStart;
                }
                let estimates = response
                    .estimates
                    .iter()
                    .filter_map(|estimate| {
                        let tier = Tier::from_proto(estimate.action.as_ref()?.tier)?;
                        Some(TierEstimate {
                            tier,
                            success: estimate.success,
                            evidence: estimate.evidence,
                            confidence: estimate.confidence,
                        })
                    })
                    .collect();
                CasebankSignal::Estimates(estimates)
            }
            Ok(Err(status)) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "casebank estimate failed; routing on the policy alone");
                CasebankSignal::Unavailable
            }
            Err(_elapsed) => {
                tracing::warn!(
                    ?budget,
                    "casebank estimate too slow; routing on the policy alone"
                );
                CasebankSignal::Unavailable
            }
        }
    }
}

/// A quick upper-bound estimate of the prompt's tokens (about four characters per token, plus
/// the inline context) for the budget reservation; the settlement uses the provider's count.
fn estimate_input_tokens(request: &CompletionRequest) -> u64 {
    let message_chars: usize = request
        .messages
        .iter()
        .map(|m| crate::pipeline::request::message_text(m).len())
        .sum();
    let context_chars: usize = request.context.as_ref().map_or(0, |context| {
        context
            .documents
            .iter()
            .map(|d| d.text.as_ref().map_or(0, String::len))
            .sum()
    });
    let images = request
        .messages
        .iter()
        .flat_map(|m| m.parts.iter())
        .filter(|p| matches!(p.part, Some(pb::content_part::Part::Image(_))))
        .count();
    // An image costs in the order of a thousand tokens at the providers' default detail.
    ((message_chars + context_chars) as u64).div_ceil(3) + 1000 * images as u64 + 16
}

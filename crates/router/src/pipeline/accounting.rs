//! Money: the budget reservation before the call, one ledger record per attempt after it
//! (through the outbox: never lost, never double counted, since `(request_id, attempt)` is the
//! ledger's key), and the settlement that replaces the reservation with the actual cost.

use std::time::{Duration, SystemTime};

use tollgate_kit::error::ErrorCode;
use tollgate_kit::money::Usd;
use tollgate_proto::v1 as pb;
use tonic::Status;

use crate::pipeline::routing::Routed;
use crate::pipeline::{CompletionRequest, Degraded, Pipeline};
use crate::policy::Reason;

/// A budget hold for one request.
#[derive(Debug, Clone, Default)]
pub struct Reservation {
    /// Empty when the cost-tracker could not be asked (fail-open).
    pub id: String,
    pub soft_limit_reached: bool,
}

impl Pipeline {
    /// Reserves the estimated cost. A hard limit → FAILED_PRECONDITION (nothing is recorded);
    /// the cost-tracker down → served unchecked when the policy fails open.
    pub async fn reserve(
        &self,
        tenant: &str,
        request: &CompletionRequest,
        routed: &mut Routed,
    ) -> Result<Reservation, Status> {
        let budget = &routed.policy.budget;
        let mut call = tonic::Request::new(pb::ReserveBudgetRequest {
            request_id: request.request_id.clone(),
            tenant: tenant.to_owned(),
            provider: routed.model().provider.clone(),
            model: routed.model().id.clone(),
            estimated_cost_usd: routed.estimated_cost.to_string(),
            ttl_seconds: budget.reservation_ttl_secs,
        });
        let timeout = Duration::from_millis(budget.timeout_ms);
        call.set_timeout(timeout);
        let mut client = self.deps.cost.clone();
        let outcome = tokio::time::timeout(timeout, client.reserve_budget(call)).await;
        let failure = match outcome {
            Ok(Ok(response)) => {
                let response = response.into_inner();
                return Ok(Reservation {
                    id: response.reservation_id,
                    soft_limit_reached: response.soft_limit_reached,
                });
            }
            Ok(Err(status)) if status.code() == tonic::Code::FailedPrecondition => {
                return Err(ErrorCode::FailedPrecondition.status(format!(
                    "budget: {} (estimated cost {} USD on {})",
                    status.message(),
                    routed.estimated_cost,
                    routed.model().id
                )));
            }
            Ok(Err(status)) if status.code() == tonic::Code::InvalidArgument => {
                return Err(status);
            }
            Ok(Err(status)) => status.message().to_owned(),
            Err(_elapsed) => format!("no answer within {timeout:?}"),
        };
        if !budget.fail_open {
            return Err(ErrorCode::Unavailable.status(format!(
                "the budget cannot be checked (cost-tracker: {failure}); retry later"
            )));
        }
        tracing::warn!(%failure, "budget not checked: cost-tracker unavailable (fail-open)");
        Degraded::CostTracker.count();
        routed.mark_degraded(Degraded::CostTracker);
        routed.extra_reasons.push(Reason::BudgetUnchecked);
        Ok(Reservation::default())
    }

    /// Replaces the hold with the actual cost, off the response path; a failure leaves the
    /// reservation to expire (its TTL), never a wrong amount.
    pub fn settle(&self, reservation: &Reservation, actual: Usd) {
        if reservation.id.is_empty() {
            return;
        }
        let mut client = self.deps.cost.clone();
        let call = pb::SettleBudgetRequest {
            reservation_id: reservation.id.clone(),
            actual_cost_usd: actual.to_string(),
        };
        // In the request's span, so that the settlement joins the request's trace.
        let settle = async move {
            let mut request = tonic::Request::new(call);
            request.set_timeout(Duration::from_secs(5));
            if let Err(status) = client.settle_budget(request).await {
                tracing::warn!(code = ?status.code(), message = status.message(), "budget settlement failed; the reservation will expire");
            }
        };
        self.shutdown
            .spawn_tracked(tracing::Instrument::in_current_span(settle));
    }

    /// Hands one ledger record per attempt to the outbox.
    pub async fn record_attempts(
        &self,
        tenant: &str,
        request: &CompletionRequest,
        routed: &Routed,
        attempts: &[pb::Attempt],
        token_cache_hit_tokens: u64,
    ) {
        let reasons = routed.reasons().join(",");
        let query_sha256 = request.query_sha256();
        for attempt in attempts {
            let record = pb::UsageRecord {
                request_id: request.request_id.clone(),
                attempt: attempt.number,
                timestamp: Some(prost_types::Timestamp::from(SystemTime::now())),
                tenant: tenant.to_owned(),
                user: request.user.clone(),
                agent: request.agent.clone(),
                provider: attempt.provider.clone(),
                model: attempt.model.clone(),
                tier: attempt.tier,
                usage: attempt.usage,
                cost_usd: if attempt.cost_usd.is_empty() {
                    "0".to_owned()
                } else {
                    attempt.cost_usd.clone()
                },
                latency_micros: attempt.latency_micros,
                token_cache_hit_tokens,
                routing_reason: reasons.clone(),
                query_sha256: query_sha256.clone(),
                status: attempt.status,
            };
            if let Err(error) = self.deps.outbox.submit(record).await {
                // The outbox spools to disk before returning; reaching here means the disk
                // failed too. Loud, because a cost record is about to be lost.
                tracing::error!(%error, request_id = %request.request_id, attempt = attempt.number, "cost record could not be queued or spooled");
                metrics::counter!("tollgate_router_cost_records_lost_total").increment(1);
            }
        }
    }
}

/// The exact sum of the attempts' costs.
pub fn total_cost(attempts: &[pb::Attempt]) -> Usd {
    attempts
        .iter()
        .filter_map(|attempt| Usd::parse("cost_usd", &attempt.cost_usd).ok())
        .fold(Usd::ZERO, |sum, cost| sum.checked_add(cost).unwrap_or(sum))
}

/// The sum of the attempts' usage.
pub fn total_usage(attempts: &[pb::Attempt]) -> pb::Usage {
    attempts
        .iter()
        .filter_map(|attempt| attempt.usage.as_ref())
        .fold(pb::Usage::default(), |mut sum, usage| {
            sum.input_tokens += usage.input_tokens;
            sum.output_tokens += usage.output_tokens;
            sum.cached_input_tokens += usage.cached_input_tokens;
            sum.cache_write_input_tokens += usage.cache_write_input_tokens;
            sum.estimated |= usage.estimated;
            sum
        })
}

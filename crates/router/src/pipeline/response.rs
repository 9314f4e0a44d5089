//! Domain → proto for what the router answers: the decision (with its evidence, switches and
//! degraded dependencies) and the decision metrics.

use tollgate_proto::v1 as pb;

use crate::classify::Level;
use crate::pipeline::routing::Routed;
use crate::policy::CasebankSignal;

pub fn level_to_proto(level: Level) -> pb::ComplexityLevel {
    match level {
        Level::Trivial => pb::ComplexityLevel::Trivial,
        Level::Simple => pb::ComplexityLevel::Simple,
        Level::Moderate => pb::ComplexityLevel::Moderate,
        Level::Complex => pb::ComplexityLevel::Complex,
        Level::Expert => pb::ComplexityLevel::Expert,
    }
}

/// The decision as answered, for the model that actually served (`served`, when it differs
/// from the first candidate after a fallback or an escalation).
pub fn decision(routed: &Routed, served: Option<&crate::catalog::CatalogModel>) -> pb::Decision {
    let model = served.unwrap_or(routed.model());
    let casebank = match &routed.casebank {
        CasebankSignal::Off | CasebankSignal::Unavailable => pb::CaseEvidence::default(),
        CasebankSignal::ColdStart => pb::CaseEvidence {
            consulted: true,
            cold_start: true,
            estimates: Vec::new(),
        },
        CasebankSignal::Estimates(estimates) => pb::CaseEvidence {
            consulted: true,
            cold_start: false,
            estimates: estimates
                .iter()
                .map(|e| pb::ActionEstimateSummary {
                    tier: e.tier.to_proto() as i32,
                    model: String::new(),
                    success: e.success,
                    evidence: e.evidence,
                    confidence: e.confidence,
                })
                .collect(),
        },
    };
    let escalated = routed
        .extra_reasons
        .contains(&crate::policy::Reason::Escalated);
    pb::Decision {
        tier: model.tier.to_proto() as i32,
        model: model.id.clone(),
        provider: model.provider.clone(),
        level: level_to_proto(routed.classification.level) as i32,
        confidence: routed.classification.confidence,
        reasons: routed.reasons(),
        explanation: routed.decision.explanation.clone(),
        casebank: Some(casebank),
        escalated,
        switches: routed.policy.switches.describe(),
        degraded: routed
            .degraded
            .iter()
            .map(|d| d.as_str().to_owned())
            .collect(),
        estimated_cost_usd: routed.estimated_cost.to_string(),
    }
}

/// Reasons by how much they say about the outcome: a decision is counted once, under the
/// first of these it carries, so that summing by tier counts each request exactly once.
const DECISIVE_REASONS: [&str; 12] = [
    "critical_agent",
    "forced_model",
    "forced_tier",
    "vision",
    "escalated",
    "casebank_cheap_failed",
    "casebank_cheap_ok",
    "budget_soft_limit",
    "min_tier",
    "low_confidence_up",
    "routing_off",
    "provider_fallback",
];

/// `tollgate_route_decisions_total{tier,reason}`: one increment per answered request, labelled
/// with its served tier and its most decisive reason ("complexity" when nothing else moved it).
pub fn count_decision(decision: &pb::Decision) {
    let tier = crate::tier::Tier::from_proto(decision.tier).map_or("unspecified", |t| t.as_str());
    let reason = DECISIVE_REASONS
        .iter()
        .find(|reason| decision.reasons.iter().any(|r| r == *reason))
        .copied()
        .unwrap_or("complexity");
    metrics::counter!("tollgate_route_decisions_total", "tier" => tier, "reason" => reason)
        .increment(1);
}

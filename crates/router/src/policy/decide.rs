//! The tier decision: a pure function from a request's signals to a tier, the reasons behind it
//! and one human sentence. Model choice within the tier comes after (see `crate::catalog`).
//!
//! Order matters and is part of the contract:
//! 1. a forced tier wins (still moved up to a vision-capable tier later, when images need it);
//! 2. with routing switched off, the default tier;
//! 3. otherwise the complexity level's tier, one up when the classifier is unsure;
//! 4. the case bank moves it: similar tasks succeeded cheaply → cheap; they failed → stronger;
//! 5. near a soft budget limit, one tier cheaper;
//! 6. floors last, so nothing above can undercut them: the request's min tier, then critical
//!    agents (always the strongest tier).

use crate::classify::Classification;
use crate::policy::PolicyConfig;
use crate::tier::Tier;

/// Stable machine-readable reason codes (metrics labels and response `reasons`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    ForcedTier,
    ForcedModel,
    RoutingOff,
    Complexity,
    LowConfidenceUp,
    CasebankColdStart,
    CasebankCheapOk,
    CasebankCheapFailed,
    CasebankInconclusive,
    CasebankOff,
    CasebankUnavailable,
    BudgetSoftLimit,
    BudgetUnchecked,
    MinTier,
    CriticalAgent,
    Vision,
    VisionKeywords,
    TierUnavailableUp,
    Escalated,
    ProviderFallback,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ForcedTier => "forced_tier",
            Reason::ForcedModel => "forced_model",
            Reason::RoutingOff => "routing_off",
            Reason::Complexity => "complexity",
            Reason::LowConfidenceUp => "low_confidence_up",
            Reason::CasebankColdStart => "casebank_cold_start",
            Reason::CasebankCheapOk => "casebank_cheap_ok",
            Reason::CasebankCheapFailed => "casebank_cheap_failed",
            Reason::CasebankInconclusive => "casebank_inconclusive",
            Reason::CasebankOff => "casebank_off",
            Reason::CasebankUnavailable => "casebank_unavailable",
            Reason::BudgetSoftLimit => "budget_soft_limit",
            Reason::BudgetUnchecked => "budget_unchecked",
            Reason::MinTier => "min_tier",
            Reason::CriticalAgent => "critical_agent",
            Reason::Vision => "vision",
            Reason::VisionKeywords => "vision_keywords",
            Reason::TierUnavailableUp => "tier_unavailable_up",
            Reason::Escalated => "escalated",
            Reason::ProviderFallback => "provider_fallback",
        }
    }
}

/// The case bank's success estimate for one tier among similar past tasks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TierEstimate {
    pub tier: Tier,
    /// Similarity-weighted mean reward in [0, 1].
    pub success: f64,
    /// Similar cases with a reward that took this tier.
    pub evidence: u32,
    pub confidence: f64,
}

/// What the case bank said, or why it said nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum CasebankSignal {
    /// Switched off (switches.casebank).
    Off,
    /// Asked, but it failed or was too slow: degraded mode.
    Unavailable,
    /// No similar case with a reward yet.
    ColdStart,
    Estimates(Vec<TierEstimate>),
}

/// The request's routing hints, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hints {
    pub force_tier: Option<Tier>,
    pub min_tier: Option<Tier>,
    pub force_model: Option<String>,
    pub allow_escalation: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct RoutingInput<'a> {
    pub agent: &'a str,
    /// The text the vision keywords are looked for in (the last user message).
    pub text: &'a str,
    pub has_images: bool,
    pub classification: &'a Classification,
    pub casebank: &'a CasebankSignal,
    pub hints: &'a Hints,
    pub budget_soft_limit: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TierDecision {
    pub tier: Tier,
    /// Only vision-capable models may serve it.
    pub needs_vision: bool,
    /// A critical agent: no model below the strongest tier, not even as a fallback.
    pub critical: bool,
    /// The tier no fallback may go below.
    pub floor: Tier,
    pub reasons: Vec<Reason>,
    pub explanation: String,
}

/// Decides the tier. See the module comment for the order of the rules.
pub fn decide(policy: &PolicyConfig, input: &RoutingInput<'_>) -> TierDecision {
    let mut reasons = Vec::new();
    let mut sentences: Vec<String> = Vec::new();
    let classification = input.classification;
    let level = classification.level.as_str();

    let mut tier = if let Some(forced) = input.hints.force_tier {
        reasons.push(Reason::ForcedTier);
        sentences.push(format!("the caller forced the {forced} tier"));
        // Not second-guessed by the case bank, but its state is still reported.
        note_casebank(input.casebank, &mut reasons);
        forced
    } else if !policy.switches.routing {
        reasons.push(Reason::RoutingOff);
        sentences.push(format!(
            "routing is switched off, so the default {} tier serves it",
            policy.default_tier
        ));
        note_casebank(input.casebank, &mut reasons);
        policy.default_tier
    } else {
        let mut tier = policy.levels.tier(classification.level);
        reasons.push(Reason::Complexity);
        sentences.push(format!("a {level} task goes to the {tier} tier"));
        if classification.confidence < policy.confidence_threshold {
            tier = tier.up();
            reasons.push(Reason::LowConfidenceUp);
            sentences.push(format!(
                "the classifier was unsure ({:.2}), so one tier up to {tier}",
                classification.confidence
            ));
        }
        tier = apply_casebank(policy, input.casebank, tier, &mut reasons, &mut sentences);
        tier
    };

    if input.budget_soft_limit
        && policy.budget.steer_cheaper_on_soft_limit
        && input.hints.force_tier.is_none()
    {
        let cheaper = tier.down();
        if cheaper != tier {
            tier = cheaper;
            reasons.push(Reason::BudgetSoftLimit);
            sentences.push(format!(
                "the tenant is past a soft budget limit, so one tier cheaper to {tier}"
            ));
        }
    }

    let mut floor = Tier::Local;
    if let Some(min_tier) = input.hints.min_tier {
        floor = floor.max(min_tier);
        if tier < min_tier {
            tier = min_tier;
            reasons.push(Reason::MinTier);
            sentences.push(format!("the caller asked for at least {min_tier}"));
        }
    }
    let critical = policy
        .critical_agents
        .iter()
        .any(|agent| agent == input.agent);
    if critical {
        tier = Tier::Premium;
        floor = Tier::Premium;
        reasons.push(Reason::CriticalAgent);
        sentences.push(format!(
            "agent {} is critical and always gets the strongest tier",
            input.agent
        ));
    }

    let keyword_vision = !input.has_images
        && policy.vision.keywords_enabled
        && mentions_any(input.text, &policy.vision.keywords);
    if input.has_images {
        reasons.push(Reason::Vision);
        sentences.push("it has images, so only a vision-capable model may serve it".into());
    } else if keyword_vision {
        reasons.push(Reason::VisionKeywords);
        sentences.push("it talks about images, so a vision-capable model serves it".into());
    }

    TierDecision {
        tier,
        needs_vision: input.has_images || keyword_vision,
        critical,
        floor,
        reasons,
        explanation: sentence(&sentences),
    }
}

fn apply_casebank(
    policy: &PolicyConfig,
    signal: &CasebankSignal,
    tier: Tier,
    reasons: &mut Vec<Reason>,
    sentences: &mut Vec<String>,
) -> Tier {
    let estimates = match signal {
        CasebankSignal::Estimates(estimates) => estimates,
        other => {
            note_casebank(other, reasons);
            if matches!(other, CasebankSignal::Unavailable) {
                sentences.push("the case bank did not answer, so the policy alone decided".into());
            }
            return tier;
        }
    };
    let rules = &policy.casebank;
    let cheap = estimates
        .iter()
        .find(|e| e.tier == Tier::Cheap && e.evidence >= rules.min_evidence);
    let Some(cheap) = cheap else {
        reasons.push(Reason::CasebankInconclusive);
        return tier;
    };
    let stronger_does_better = estimates
        .iter()
        .filter(|e| e.tier > Tier::Cheap && e.evidence >= rules.min_evidence)
        .any(|e| e.success >= cheap.success + (1.0 - rules.cheap_ok));
    if cheap.success >= rules.cheap_ok && !stronger_does_better {
        reasons.push(Reason::CasebankCheapOk);
        sentences.push(format!(
            "similar past tasks succeeded on the cheap tier ({:.0}% of {}), so cheap is enough",
            cheap.success * 100.0,
            cheap.evidence
        ));
        Tier::Cheap
    } else if cheap.success <= rules.cheap_fail {
        let stronger = tier.max(Tier::Standard);
        reasons.push(Reason::CasebankCheapFailed);
        sentences.push(format!(
            "similar past tasks failed on the cheap tier ({:.0}% of {} succeeded), so {stronger}",
            cheap.success * 100.0,
            cheap.evidence
        ));
        stronger
    } else {
        reasons.push(Reason::CasebankInconclusive);
        tier
    }
}

/// Records what the case bank's state was when it did not move the decision.
fn note_casebank(signal: &CasebankSignal, reasons: &mut Vec<Reason>) {
    let reason = match signal {
        CasebankSignal::Off => Reason::CasebankOff,
        CasebankSignal::Unavailable => Reason::CasebankUnavailable,
        CasebankSignal::ColdStart => Reason::CasebankColdStart,
        CasebankSignal::Estimates(_) => return,
    };
    if !reasons.contains(&reason) {
        reasons.push(reason);
    }
}

fn mentions_any(text: &str, keywords: &[String]) -> bool {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .any(|word| {
            keywords
                .iter()
                .any(|keyword| keyword.eq_ignore_ascii_case(word))
        })
}

/// "A; b; c." with the first letter capitalised.
fn sentence(parts: &[String]) -> String {
    let joined = parts.join("; ");
    let mut chars = joined.chars();
    match chars.next() {
        Some(first) => format!("{}{}.", first.to_uppercase(), chars.as_str()),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{Features, Level};

    fn classification(level: Level, confidence: f64) -> Classification {
        Classification {
            level,
            confidence,
            score: 0.0,
            features: Features::default(),
        }
    }

    fn run(
        policy: &PolicyConfig,
        level: Level,
        confidence: f64,
        agent: &str,
        casebank: CasebankSignal,
        hints: Hints,
    ) -> TierDecision {
        let classification = classification(level, confidence);
        decide(
            policy,
            &RoutingInput {
                agent,
                text: "what is in this picture",
                has_images: false,
                classification: &classification,
                casebank: &casebank,
                hints: &hints,
                budget_soft_limit: false,
            },
        )
    }

    fn estimate(tier: Tier, success: f64, evidence: u32) -> TierEstimate {
        TierEstimate {
            tier,
            success,
            evidence,
            confidence: 0.8,
        }
    }

    #[test]
    fn levels_map_to_tiers_and_low_confidence_goes_one_up() {
        let policy = PolicyConfig::default();
        let sure = run(
            &policy,
            Level::Simple,
            0.9,
            "",
            CasebankSignal::ColdStart,
            Hints::default(),
        );
        assert_eq!(sure.tier, Tier::Cheap);
        assert!(sure.reasons.contains(&Reason::CasebankColdStart));
        let unsure = run(
            &policy,
            Level::Simple,
            0.6,
            "",
            CasebankSignal::ColdStart,
            Hints::default(),
        );
        assert_eq!(unsure.tier, Tier::Standard);
        assert!(unsure.reasons.contains(&Reason::LowConfidenceUp));
        let expert = run(
            &policy,
            Level::Expert,
            0.9,
            "",
            CasebankSignal::Off,
            Hints::default(),
        );
        assert_eq!(expert.tier, Tier::Premium);
        assert!(expert.reasons.contains(&Reason::CasebankOff));
    }

    #[test]
    fn the_casebank_moves_the_decision_both_ways() {
        let policy = PolicyConfig::default();
        let succeeded = CasebankSignal::Estimates(vec![
            estimate(Tier::Cheap, 0.95, 6),
            estimate(Tier::Premium, 0.97, 4),
        ]);
        let cheap = run(
            &policy,
            Level::Complex,
            0.9,
            "",
            succeeded,
            Hints::default(),
        );
        assert_eq!(cheap.tier, Tier::Cheap);
        assert!(cheap.reasons.contains(&Reason::CasebankCheapOk));

        let failed = CasebankSignal::Estimates(vec![estimate(Tier::Cheap, 0.2, 5)]);
        let strong = run(&policy, Level::Trivial, 0.9, "", failed, Hints::default());
        assert_eq!(strong.tier, Tier::Standard);
        assert!(strong.reasons.contains(&Reason::CasebankCheapFailed));

        let thin = CasebankSignal::Estimates(vec![estimate(Tier::Cheap, 0.2, 1)]);
        let unmoved = run(&policy, Level::Trivial, 0.9, "", thin, Hints::default());
        assert_eq!(unmoved.tier, Tier::Cheap);
        assert!(unmoved.reasons.contains(&Reason::CasebankInconclusive));
    }

    #[test]
    fn cheap_success_is_not_enough_when_the_strong_tier_does_clearly_better() {
        let policy = PolicyConfig::default();
        let signal = CasebankSignal::Estimates(vec![
            estimate(Tier::Cheap, 0.8, 6),
            estimate(Tier::Premium, 1.0, 6),
        ]);
        let decision = run(&policy, Level::Complex, 0.9, "", signal, Hints::default());
        assert_eq!(decision.tier, Tier::Premium);
    }

    #[test]
    fn critical_agents_always_get_the_strongest_tier_whatever_else_says() {
        let policy = PolicyConfig::default();
        let signal = CasebankSignal::Estimates(vec![estimate(Tier::Cheap, 1.0, 50)]);
        let hints = Hints {
            force_tier: Some(Tier::Cheap),
            ..Hints::default()
        };
        let decision = run(&policy, Level::Trivial, 0.99, "legal", signal, hints);
        assert_eq!(decision.tier, Tier::Premium);
        assert_eq!(decision.floor, Tier::Premium);
        assert!(decision.critical);
        assert!(decision.reasons.contains(&Reason::CriticalAgent));
    }

    #[test]
    fn routing_off_uses_the_default_tier_and_min_tier_is_a_floor() {
        let mut policy = PolicyConfig::default();
        policy.switches.routing = false;
        let off = run(
            &policy,
            Level::Expert,
            0.9,
            "",
            CasebankSignal::Off,
            Hints::default(),
        );
        assert_eq!(off.tier, Tier::Cheap);
        assert_eq!(off.reasons[0], Reason::RoutingOff);
        let hints = Hints {
            min_tier: Some(Tier::Standard),
            ..Hints::default()
        };
        let floored = run(&policy, Level::Trivial, 0.9, "", CasebankSignal::Off, hints);
        assert_eq!(floored.tier, Tier::Standard);
        assert_eq!(floored.floor, Tier::Standard);
    }

    #[test]
    fn soft_limit_steers_one_tier_cheaper_but_not_below_the_floor() {
        let policy = PolicyConfig::default();
        let classification = classification(Level::Expert, 0.9);
        let hints = Hints {
            min_tier: Some(Tier::Premium),
            ..Hints::default()
        };
        let mut input = RoutingInput {
            agent: "",
            text: "",
            has_images: false,
            classification: &classification,
            casebank: &CasebankSignal::ColdStart,
            hints: &Hints::default(),
            budget_soft_limit: true,
        };
        let steered = decide(&policy, &input);
        assert_eq!(steered.tier, Tier::Standard);
        assert!(steered.reasons.contains(&Reason::BudgetSoftLimit));
        input.hints = &hints;
        assert_eq!(decide(&policy, &input).tier, Tier::Premium);
    }

    #[test]
    fn images_and_optional_keywords_need_vision() {
        let mut policy = PolicyConfig::default();
        let classification = classification(Level::Trivial, 0.9);
        let mut input = RoutingInput {
            agent: "",
            text: "Describe this Picture, please",
            has_images: false,
            classification: &classification,
            casebank: &CasebankSignal::ColdStart,
            hints: &Hints::default(),
            budget_soft_limit: false,
        };
        assert!(!decide(&policy, &input).needs_vision);
        policy.vision.keywords_enabled = true;
        let keywords = decide(&policy, &input);
        assert!(keywords.needs_vision);
        assert!(keywords.reasons.contains(&Reason::VisionKeywords));
        input.has_images = true;
        input.text = "";
        let images = decide(&policy, &input);
        assert!(images.needs_vision);
        assert!(images.reasons.contains(&Reason::Vision));
        assert!(images.explanation.ends_with('.'));
    }

    #[test]
    fn the_default_policy_is_valid_and_bad_values_are_named() {
        assert!(PolicyConfig::default().validate().is_ok());
        let mut policy = PolicyConfig::default();
        policy.casebank.cheap_fail = 0.9;
        let error = policy
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("casebank.cheap_fail"), "{error}");
    }
}

//! The routing policy: its TOML form ([`PolicyConfig`], the `[router.policy]` section or a file
//! of its own), the decision it makes ([`decide`]), and hot reloading ([`reload`]).
//!
//! The decision is a pure function of the request's signals (classification, images, agent,
//! hints, what the case bank said, the budget's state) so that it can be tested exhaustively and
//! replayed offline by `tollgate eval routing` exactly as the live router makes it.

pub mod decide;
pub mod reload;

use serde::{Deserialize, Serialize};

use crate::classify::Level;
use crate::tier::Tier;

pub use decide::{CasebankSignal, Hints, Reason, RoutingInput, TierDecision, TierEstimate, decide};
pub use reload::PolicyHandle;

/// `[router.policy]`: every knob of the routing policy. A policy file (`router.policy_file`)
/// has the same keys at its top level and replaces this section when set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// The tier when the routing switch is off, and the floor of nothing else.
    pub default_tier: Tier,
    /// Agents that always get the strongest tier; no cheaper model ever serves them.
    pub critical_agents: Vec<String>,
    /// Below this classifier confidence the request goes one tier up.
    pub confidence_threshold: f64,
    /// Complexity level → tier.
    pub levels: LevelTiers,
    pub vision: VisionPolicy,
    pub casebank: CasebankPolicy,
    pub cascade: CascadePolicy,
    pub budget: BudgetPolicy,
    /// Catalog models per tier, cheapest first; a tier left empty uses the catalog's models of
    /// that tier ordered by price.
    pub models: TierModels,
    /// Case-augmented prompting: per-agent defaults, retrieval and the example template.
    pub case_memory: crate::pipeline::case_memory::CaseMemoryPolicy,
    pub switches: Switches,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            default_tier: Tier::Cheap,
            critical_agents: ["safety", "security", "legal"].map(str::to_owned).to_vec(),
            confidence_threshold: 0.7,
            levels: LevelTiers::default(),
            vision: VisionPolicy::default(),
            casebank: CasebankPolicy::default(),
            cascade: CascadePolicy::default(),
            budget: BudgetPolicy::default(),
            models: TierModels::default(),
            case_memory: crate::pipeline::case_memory::CaseMemoryPolicy::default(),
            switches: Switches::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LevelTiers {
    pub trivial: Tier,
    pub simple: Tier,
    pub moderate: Tier,
    pub complex: Tier,
    pub expert: Tier,
}

impl Default for LevelTiers {
    fn default() -> Self {
        Self {
            trivial: Tier::Cheap,
            simple: Tier::Cheap,
            // Measured (`tollgate eval routing`): "moderate" → standard sent over 90% of the
            // development prompts to the strong tier; cheap, with the case bank free to move
            // them up, costs about half as much (see BENCHMARKS.md, routing evaluation).
            moderate: Tier::Cheap,
            complex: Tier::Premium,
            expert: Tier::Premium,
        }
    }
}

impl LevelTiers {
    pub fn tier(&self, level: Level) -> Tier {
        match level {
            Level::Trivial => self.trivial,
            Level::Simple => self.simple,
            Level::Moderate => self.moderate,
            Level::Complex => self.complex,
            Level::Expert => self.expert,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct VisionPolicy {
    /// Also treat text that mentions one of `keywords` as a vision request (off by default: a
    /// text-only request cannot use a vision model's eyes, but some agents describe images
    /// they attach out of band).
    pub keywords_enabled: bool,
    /// Matched case-insensitively as whole words.
    pub keywords: Vec<String>,
}

impl Default for VisionPolicy {
    fn default() -> Self {
        Self {
            keywords_enabled: false,
            keywords: [
                "image",
                "picture",
                "photo",
                "screenshot",
                "diagram",
                "chart",
            ]
            .map(str::to_owned)
            .to_vec(),
        }
    }
}

/// How the case bank's estimate for similar past tasks moves the decision.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CasebankPolicy {
    /// Nearest cases the estimate is made from.
    pub neighbours: u32,
    /// Cases with a reward for the cheap tier needed before they move the decision.
    pub min_evidence: u32,
    /// Similar tasks succeeded this often on the cheap tier → cheap is enough.
    pub cheap_ok: f64,
    /// Similar tasks succeeded at most this often on the cheap tier → go stronger.
    pub cheap_fail: f64,
    /// Neighbours less similar than this are ignored.
    pub min_similarity: f64,
    /// Time budget of the Estimate call; slower means "unavailable", and the policy goes on.
    pub timeout_ms: u64,
}

impl Default for CasebankPolicy {
    fn default() -> Self {
        Self {
            // 64 neighbours with a low floor: the built-in hashing embedder rarely puts a
            // paraphrase above 0.5, so a higher floor left the case bank silent (routing eval).
            neighbours: 64,
            min_evidence: 3,
            cheap_ok: 0.8,
            cheap_fail: 0.5,
            min_similarity: 0.2,
            timeout_ms: 50,
        }
    }
}

/// Checks a cheap answer must pass; a failure escalates to the next tier once.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum CascadeCheck {
    Empty,
    Refusal,
    Truncated,
    InvalidJson,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct CascadePolicy {
    /// Escalate by default (a request's `hints.allow_escalation` overrides it).
    pub escalate_by_default: bool,
    pub checks: Vec<CascadeCheck>,
    /// Only answers of this tier or cheaper are checked.
    pub max_checked_tier: Tier,
}

impl Default for CascadePolicy {
    fn default() -> Self {
        Self {
            escalate_by_default: true,
            checks: vec![
                CascadeCheck::Empty,
                CascadeCheck::Refusal,
                CascadeCheck::Truncated,
                CascadeCheck::InvalidJson,
            ],
            max_checked_tier: Tier::Standard,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetPolicy {
    /// Past a soft limit, go one tier cheaper (never below a floor the request or agent sets).
    pub steer_cheaper_on_soft_limit: bool,
    /// Serve requests when the cost-tracker cannot be asked (the records still reach it through
    /// the outbox); `false` refuses them with UNAVAILABLE instead.
    pub fail_open: bool,
    /// Reservations not settled within this time are released by the cost-tracker.
    pub reservation_ttl_secs: u32,
    pub timeout_ms: u64,
}

impl Default for BudgetPolicy {
    fn default() -> Self {
        Self {
            steer_cheaper_on_soft_limit: true,
            fail_open: true,
            reservation_ttl_secs: 300,
            timeout_ms: 200,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TierModels {
    pub local: Vec<String>,
    pub cheap: Vec<String>,
    pub standard: Vec<String>,
    pub premium: Vec<String>,
}

impl TierModels {
    pub fn for_tier(&self, tier: Tier) -> &[String] {
        match tier {
            Tier::Local => &self.local,
            Tier::Cheap => &self.cheap,
            Tier::Standard => &self.standard,
            Tier::Premium => &self.premium,
        }
    }
}

/// Feature switches: each capability can be turned off without a restart (config reload), for
/// A/B comparison and instant rollback. Responses and metrics say which were in effect.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Switches {
    /// Off: every request goes to `default_tier` (critical agents and vision still hold).
    pub routing: bool,
    /// Off: the case bank is neither asked for estimates nor sent new cases.
    pub casebank: bool,
    /// Off: no past cases are put in prompts, whatever the request asks.
    pub case_memory: bool,
    /// Off: context documents go as text, without the token cache.
    pub token_cache: bool,
    /// Off: cheap answers are never checked and escalated.
    pub cascade: bool,
}

impl Default for Switches {
    fn default() -> Self {
        Self {
            routing: true,
            casebank: true,
            case_memory: true,
            token_cache: true,
            cascade: true,
        }
    }
}

impl Switches {
    /// `["routing=on", "casebank=on", ...]`, as responses carry them.
    pub fn describe(&self) -> Vec<String> {
        let on = |flag: bool| if flag { "on" } else { "off" };
        vec![
            format!("routing={}", on(self.routing)),
            format!("casebank={}", on(self.casebank)),
            format!("case_memory={}", on(self.case_memory)),
            format!("token_cache={}", on(self.token_cache)),
            format!("cascade={}", on(self.cascade)),
        ]
    }
}

/// Why a policy is refused (at start-up or on reload, when the old one stays in force).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("routing policy: {0}")]
    Invalid(String),
    #[error("routing policy file {path}: {message}")]
    File { path: String, message: String },
}

impl PolicyConfig {
    /// Checks the values no type can: ranges and orderings. Errors name the key.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let unit = |key: &str, value: f64| {
            if (0.0..=1.0).contains(&value) {
                Ok(())
            } else {
                Err(PolicyError::Invalid(format!(
                    "{key} must be in [0, 1], got {value}"
                )))
            }
        };
        unit("confidence_threshold", self.confidence_threshold)?;
        unit("casebank.cheap_ok", self.casebank.cheap_ok)?;
        unit("casebank.cheap_fail", self.casebank.cheap_fail)?;
        if self.casebank.cheap_fail >= self.casebank.cheap_ok {
            return Err(PolicyError::Invalid(format!(
                "casebank.cheap_fail ({}) must be below casebank.cheap_ok ({})",
                self.casebank.cheap_fail, self.casebank.cheap_ok
            )));
        }
        if !(-1.0..=1.0).contains(&self.casebank.min_similarity) {
            return Err(PolicyError::Invalid(format!(
                "casebank.min_similarity must be in [-1, 1], got {}",
                self.casebank.min_similarity
            )));
        }
        self.case_memory.validate().map_err(PolicyError::Invalid)?;
        if self.casebank.neighbours == 0 || self.casebank.neighbours > 64 {
            return Err(PolicyError::Invalid(format!(
                "casebank.neighbours must be in 1..=64, got {}",
                self.casebank.neighbours
            )));
        }
        Ok(())
    }
}

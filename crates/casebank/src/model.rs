//! The domain of the case bank: cases, their actions, and the queries and answers of retrieval
//! and estimation. No tonic or sqlx types here: grpc.rs and the stores convert at their edges.

use chrono::{DateTime, Utc};
use tollgate_kit::money::Usd;

/// Model tiers, cheapest first (mirrors `tollgate.v1.Tier`; stored as its number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Tier {
    #[default]
    Unspecified,
    Local,
    Cheap,
    Standard,
    Premium,
}

impl Tier {
    pub fn as_i32(self) -> i32 {
        match self {
            Tier::Unspecified => 0,
            Tier::Local => 1,
            Tier::Cheap => 2,
            Tier::Standard => 3,
            Tier::Premium => 4,
        }
    }

    /// The tier of a stored number; unknown numbers (a newer writer) read as unspecified.
    pub fn from_i32(value: i32) -> Tier {
        match value {
            1 => Tier::Local,
            2 => Tier::Cheap,
            3 => Tier::Standard,
            4 => Tier::Premium,
            _ => Tier::Unspecified,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Tier::Unspecified => "unspecified",
            Tier::Local => "local",
            Tier::Cheap => "cheap",
            Tier::Standard => "standard",
            Tier::Premium => "premium",
        }
    }

    pub fn parse(name: &str) -> Option<Tier> {
        match name.to_ascii_lowercase().trim_start_matches("tier_") {
            "local" => Some(Tier::Local),
            "cheap" => Some(Tier::Cheap),
            "standard" => Some(Tier::Standard),
            "premium" => Some(Tier::Premium),
            _ => None,
        }
    }
}

/// What was done for a task.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct CaseAction {
    pub tier: Tier,
    pub model: String,
    pub plan_json: String,
}

impl CaseAction {
    /// Whether a case that took `taken` counts as evidence for this candidate: an unspecified
    /// tier or an empty model in the candidate matches anything.
    pub fn matches(&self, taken: &CaseAction) -> bool {
        (self.tier == Tier::Unspecified || self.tier == taken.tier)
            && (self.model.is_empty() || self.model == taken.model)
    }
}

/// One past task and how it went.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    pub id: String,
    pub tenant: String,
    pub agent: String,
    pub task: String,
    pub action: CaseAction,
    pub outcome: String,
    /// In [0, 1]; `None` until feedback arrives.
    pub reward: Option<f64>,
    pub cost_usd: Usd,
    pub latency_micros: u64,
    pub tags: Vec<String>,
    pub created_at: DateTime<Utc>,
    /// Identity of the embedder that embedded `task`.
    pub embedder: String,
    pub request_id: String,
}

/// A case with its similarity to a query, in [-1, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredCase {
    /// Shared with the store's in-memory copy: an Estimate over 64 neighbours copies no text.
    pub case: std::sync::Arc<Case>,
    pub similarity: f64,
}

/// Which rewards a nearest-neighbour search keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RewardFilter {
    /// Every case, with or without a reward.
    Any,
    /// Known reward >= the bound (positives).
    AtLeast(f64),
    /// Known reward < the bound (negatives).
    Below(f64),
}

impl RewardFilter {
    pub fn accepts(self, reward: Option<f64>) -> bool {
        match (self, reward) {
            (RewardFilter::Any, _) => true,
            (RewardFilter::AtLeast(bound), Some(reward)) => reward >= bound,
            (RewardFilter::Below(bound), Some(reward)) => reward < bound,
            (_, None) => false,
        }
    }

    /// The filter as SQL bounds `(reward >= at_least, reward < below)`; `None` is no bound. A
    /// bound excludes unrewarded cases (NULL fails the comparison), as [`Self::accepts`] does.
    pub fn bounds(self) -> (Option<f64>, Option<f64>) {
        match self {
            RewardFilter::Any => (None, None),
            RewardFilter::AtLeast(bound) => (Some(bound), None),
            RewardFilter::Below(bound) => (None, Some(bound)),
        }
    }
}

/// A k-nearest search inside one tenant, among cases of one embedder.
#[derive(Debug, Clone, PartialEq)]
pub struct NearestQuery {
    pub tenant: String,
    pub embedder: String,
    /// L2-normalised, so that cosine similarity is the dot product.
    pub embedding: Vec<f32>,
    pub limit: usize,
    pub agent_opt: Option<String>,
    /// A case must carry every one of these.
    pub tags: Vec<String>,
    pub reward: RewardFilter,
    pub min_similarity: f64,
}

impl NearestQuery {
    /// The metadata filters (everything but similarity).
    pub fn accepts(&self, case: &Case) -> bool {
        case.embedder == self.embedder && self.accepts_metadata(case)
    }

    /// The filters other than the embedder, for stores that keep each embedder's cases apart.
    pub fn accepts_metadata(&self, case: &Case) -> bool {
        self.reward.accepts(case.reward)
            && self
                .agent_opt
                .as_ref()
                .is_none_or(|agent| &case.agent == agent)
            && self.tags.iter().all(|tag| case.tags.contains(tag))
    }
}

/// Counts over a tenant's cases (or every tenant's).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CaseStats {
    pub cases: u64,
    pub with_reward: u64,
    pub mean_reward: f64,
}

/// Memento's defaults (arXiv 2508.16153): a small K, positives above 0.6, close neighbours only.
pub const DEFAULT_K: usize = 4;
pub const DEFAULT_MIN_REWARD: f64 = 0.6;
pub const DEFAULT_MIN_SIMILARITY: f64 = 0.8;
pub const MAX_K: usize = 64;
/// Routing estimates want more neighbours than examples for an agent (K of 16-64 beats 8 on the
/// routing evaluation data).
pub const DEFAULT_ESTIMATE_NEIGHBOURS: usize = 16;

/// A retrieval as the service runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrieveQuery {
    pub tenant: String,
    pub task: String,
    pub k: usize,
    pub min_reward: f64,
    pub min_similarity: f64,
    pub agent_opt: Option<String>,
    pub tags: Vec<String>,
    pub include_negatives: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Retrieved {
    pub positives: Vec<ScoredCase>,
    pub negatives: Vec<ScoredCase>,
    pub embedder: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EstimateQuery {
    pub tenant: String,
    pub task: String,
    pub candidates: Vec<CaseAction>,
    pub neighbours: usize,
    pub agent_opt: Option<String>,
    pub min_similarity: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ActionEstimate {
    pub action: CaseAction,
    /// Similarity-weighted mean reward in [0, 1]; 0 without evidence.
    pub success: f64,
    pub evidence: u32,
    pub confidence: f64,
    /// Mean cost of the evidence cases; `None` without evidence.
    pub mean_cost_usd_opt: Option<Usd>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Estimation {
    pub estimates: Vec<ActionEstimate>,
    pub cold_start: bool,
    pub neighbours_found: u32,
    pub embedder: String,
}

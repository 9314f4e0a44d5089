//! The case bank's logic, free of tonic and sqlx: embed the task, store or search, and turn
//! neighbours into routing estimates. grpc.rs validates input before it gets here.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate_kit::money::Usd;

use crate::embed::Embedder;
use crate::error::{CasebankError, CasebankResult};
use crate::model::{
    ActionEstimate, Case, CaseAction, CaseStats, EstimateQuery, Estimation, NearestQuery,
    RetrieveQuery, Retrieved, RewardFilter, ScoredCase, Tier,
};
use crate::store::{CaseStore, StoreError, StoreResult};

/// Evidence weight at which confidence reaches one half: two neighbours of similarity 1.
const CONFIDENCE_HALF_WEIGHT: f64 = 2.0;
/// A neighbour's weight never drops to zero, so that distant evidence still counts a little.
const MIN_WEIGHT: f64 = 0.01;

#[derive(Debug, Clone)]
pub struct CaseService {
    store: Arc<dyn CaseStore>,
    embedder: Arc<dyn Embedder>,
    store_timeout: Duration,
}

impl CaseService {
    pub fn new(
        store: Arc<dyn CaseStore>,
        embedder: Arc<dyn Embedder>,
        store_timeout: Duration,
    ) -> Self {
        Self {
            store,
            embedder,
            store_timeout,
        }
    }

    pub fn backend(&self) -> &'static str {
        self.store.backend()
    }

    pub fn embedder_identity(&self) -> &str {
        self.embedder.identity()
    }

    /// Sets the `tollgate_casebank_cases` gauge from the store (at start-up).
    pub async fn publish_case_count(&self) -> CasebankResult<()> {
        let stats = self.observe(self.store.stats(None).await)?;
        metrics::gauge!("tollgate_casebank_cases", "backend" => self.backend())
            .set(stats.cases as f64);
        Ok(())
    }

    /// Records store health for `tollgate_store_up` / `tollgate_store_errors_total`.
    fn observe<T>(&self, result: StoreResult<T>) -> CasebankResult<T> {
        let labels = [("service", "casebank"), ("backend", self.backend())];
        match result {
            Ok(value) => {
                metrics::gauge!("tollgate_store_up", &labels).set(1.0);
                Ok(value)
            }
            Err(error) => {
                metrics::counter!("tollgate_store_errors_total", &labels).increment(1);
                if matches!(error, StoreError::Unavailable(_)) {
                    metrics::gauge!("tollgate_store_up", &labels).set(0.0);
                }
                Err(error.into())
            }
        }
    }

    /// A store read bounded by the store timeout: Retrieve and Estimate must fail fast.
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = StoreResult<T>>,
    ) -> CasebankResult<T> {
        let result = match tokio::time::timeout(self.store_timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer within {:?}",
                self.store_timeout
            ))),
        };
        self.observe(result)
    }

    /// Stores `case` (its id generated when empty, its embedder set here); an existing id
    /// returns the stored case unchanged with `false`.
    pub async fn store_case(&self, mut case: Case) -> CasebankResult<(Case, bool)> {
        if case.id.is_empty() {
            case.id = uuid::Uuid::new_v4().to_string();
        }
        // Stores keep microseconds: the answer to a create must equal what a later read returns.
        if let Some(micros) =
            chrono::DateTime::from_timestamp_micros(case.created_at.timestamp_micros())
        {
            case.created_at = micros;
        }
        let embedding = self.embedder.embed(&case.task).await?;
        case.embedder = self.embedder.identity().to_owned();
        let (stored, created) = self.observe(self.store.insert(&case, &embedding).await)?;
        if created {
            metrics::gauge!("tollgate_casebank_cases", "backend" => self.backend()).increment(1.0);
        }
        Ok((stored, created))
    }

    pub async fn update_reward(
        &self,
        tenant: &str,
        id: &str,
        reward: f64,
        outcome_opt: Option<&str>,
    ) -> CasebankResult<Case> {
        self.observe(
            self.store
                .update_reward(tenant, id, reward, outcome_opt)
                .await,
        )?
        .ok_or_else(|| CasebankError::CaseNotFound { id: id.to_owned() })
    }

    pub async fn get_case(&self, tenant: &str, id: &str) -> CasebankResult<Case> {
        self.observe(self.store.get(tenant, id).await)?
            .ok_or_else(|| CasebankError::CaseNotFound { id: id.to_owned() })
    }

    pub async fn delete_case(&self, tenant: &str, id: &str) -> CasebankResult<bool> {
        let deleted = self.observe(self.store.delete(tenant, id).await)?;
        if deleted {
            metrics::gauge!("tollgate_casebank_cases", "backend" => self.backend()).decrement(1.0);
        }
        Ok(deleted)
    }

    pub async fn delete_tenant_cases(&self, tenant: &str) -> CasebankResult<u64> {
        let deleted = self.observe(self.store.delete_tenant(tenant).await)?;
        metrics::gauge!("tollgate_casebank_cases", "backend" => self.backend())
            .decrement(deleted as f64);
        Ok(deleted)
    }

    pub async fn stats(&self, tenant_opt: Option<&str>) -> CasebankResult<CaseStats> {
        self.observe(self.store.stats(tenant_opt).await)
    }

    /// Memento's retrieval: the k most similar positives, and the k most similar negatives
    /// when asked (failures are worth showing as what not to do).
    pub async fn retrieve(&self, query: RetrieveQuery) -> CasebankResult<Retrieved> {
        let started = Instant::now();
        let embedding = self.embedder.embed(&query.task).await?;
        let positives_query = NearestQuery {
            tenant: query.tenant.clone(),
            embedder: self.embedder.identity().to_owned(),
            embedding,
            limit: query.k,
            agent_opt: query.agent_opt.clone(),
            tags: query.tags.clone(),
            reward: RewardFilter::AtLeast(query.min_reward),
            min_similarity: query.min_similarity,
        };
        let (positives, negatives) = if query.include_negatives {
            let negatives_query = NearestQuery {
                reward: RewardFilter::Below(query.min_reward),
                ..positives_query.clone()
            };
            let mut answers = self
                .bounded(self.store.nearest_each(&[positives_query, negatives_query]))
                .await?;
            let negatives = answers.pop().unwrap_or_default();
            let positives = answers.pop().unwrap_or_default();
            (positives, negatives)
        } else {
            (
                self.bounded(self.store.nearest(&positives_query)).await?,
                Vec::new(),
            )
        };
        metrics::histogram!("tollgate_casebank_retrieve_seconds", "backend" => self.backend())
            .record(started.elapsed().as_secs_f64());
        Ok(Retrieved {
            positives,
            negatives,
            embedder: self.embedder.identity().to_owned(),
        })
    }

    /// For routing: from the nearest cases (whatever their reward), a similarity-weighted
    /// success per candidate action. Only cases with a known reward are evidence.
    pub async fn estimate(&self, query: EstimateQuery) -> CasebankResult<Estimation> {
        let started = Instant::now();
        let embedding = self.embedder.embed(&query.task).await?;
        let neighbours = self
            .bounded(self.store.nearest(&NearestQuery {
                tenant: query.tenant.clone(),
                embedder: self.embedder.identity().to_owned(),
                embedding,
                limit: query.neighbours,
                agent_opt: query.agent_opt.clone(),
                tags: Vec::new(),
                reward: RewardFilter::Any,
                min_similarity: query.min_similarity,
            }))
            .await?;
        let estimation = estimate_from(
            &neighbours,
            &query.candidates,
            self.embedder.identity().to_owned(),
        );
        metrics::histogram!("tollgate_casebank_estimate_seconds", "backend" => self.backend())
            .record(started.elapsed().as_secs_f64());
        Ok(estimation)
    }
}

/// The estimate of each candidate (every tier seen among the neighbours when none are given).
pub fn estimate_from(
    neighbours: &[ScoredCase],
    candidates: &[CaseAction],
    embedder: String,
) -> Estimation {
    let candidates: Vec<CaseAction> = if candidates.is_empty() {
        let tiers: BTreeSet<Tier> = neighbours
            .iter()
            .map(|scored| scored.case.action.tier)
            .filter(|tier| *tier != Tier::Unspecified)
            .collect();
        tiers
            .into_iter()
            .map(|tier| CaseAction {
                tier,
                ..CaseAction::default()
            })
            .collect()
    } else {
        candidates.to_vec()
    };
    let estimates = candidates
        .into_iter()
        .map(|candidate| estimate_action(neighbours, candidate))
        .collect();
    Estimation {
        estimates,
        cold_start: !neighbours.iter().any(|scored| scored.case.reward.is_some()),
        neighbours_found: u32::try_from(neighbours.len()).unwrap_or(u32::MAX),
        embedder,
    }
}

fn estimate_action(neighbours: &[ScoredCase], action: CaseAction) -> ActionEstimate {
    let mut weight_sum = 0.0;
    let mut weighted_reward = 0.0;
    let mut evidence: u32 = 0;
    let mut cost_picos: i128 = 0;
    let mut costs_known = true;
    for scored in neighbours {
        let Some(reward) = scored.case.reward else {
            continue;
        };
        if !action.matches(&scored.case.action) {
            continue;
        }
        let weight = scored.similarity.max(MIN_WEIGHT);
        weight_sum += weight;
        weighted_reward += weight * reward;
        evidence += 1;
        match scored.case.cost_usd.to_picos() {
            Some(picos) => cost_picos = cost_picos.saturating_add(picos),
            None => costs_known = false,
        }
    }
    if evidence == 0 {
        return ActionEstimate {
            action,
            success: 0.0,
            evidence: 0,
            confidence: 0.0,
            mean_cost_usd_opt: None,
        };
    }
    let mean_cost_usd_opt = if costs_known {
        Usd::from_picos(cost_picos / i128::from(evidence))
    } else {
        None
    };
    ActionEstimate {
        action,
        success: (weighted_reward / weight_sum).clamp(0.0, 1.0),
        evidence,
        confidence: weight_sum / (weight_sum + CONFIDENCE_HALF_WEIGHT),
        mean_cost_usd_opt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn neighbour(tier: Tier, reward: Option<f64>, similarity: f64, cost: &str) -> ScoredCase {
        ScoredCase {
            case: std::sync::Arc::new(Case {
                id: format!("{tier:?}-{similarity}"),
                tenant: "t".into(),
                agent: String::new(),
                task: "task".into(),
                action: CaseAction {
                    tier,
                    model: format!("{}-model", tier.name()),
                    plan_json: String::new(),
                },
                outcome: String::new(),
                reward,
                cost_usd: Usd::parse("cost", cost).unwrap_or_default(),
                latency_micros: 0,
                tags: Vec::new(),
                created_at: Utc::now(),
                embedder: "e".into(),
                request_id: String::new(),
            }),
            similarity,
        }
    }

    #[test]
    fn success_is_similarity_weighted_and_confidence_grows_with_evidence() {
        let neighbours = vec![
            neighbour(Tier::Cheap, Some(1.0), 0.9, "0.001"),
            neighbour(Tier::Cheap, Some(0.0), 0.3, "0.003"),
            neighbour(Tier::Premium, Some(1.0), 0.8, "0.02"),
            neighbour(Tier::Premium, None, 0.95, "0.02"),
        ];
        let estimation = estimate_from(&neighbours, &[], "e".into());
        assert!(!estimation.cold_start);
        assert_eq!(estimation.neighbours_found, 4);
        let cheap = &estimation.estimates[0];
        assert_eq!(cheap.action.tier, Tier::Cheap);
        assert_eq!(cheap.evidence, 2);
        assert!(
            (cheap.success - 0.9 / 1.2).abs() < 1e-9,
            "{}",
            cheap.success
        );
        assert_eq!(
            cheap.mean_cost_usd_opt.map(|c| c.to_string()),
            Some("0.002".into())
        );
        let premium = &estimation.estimates[1];
        assert_eq!(
            premium.evidence, 1,
            "the case without a reward is no evidence"
        );
        assert!(cheap.confidence > premium.confidence);
        assert!(cheap.confidence > 0.0 && cheap.confidence < 1.0);
    }

    #[test]
    fn no_rewarded_neighbour_is_a_cold_start() {
        let neighbours = vec![neighbour(Tier::Cheap, None, 0.9, "0")];
        let candidates = vec![CaseAction {
            tier: Tier::Premium,
            ..CaseAction::default()
        }];
        let estimation = estimate_from(&neighbours, &candidates, "e".into());
        assert!(estimation.cold_start);
        assert_eq!(estimation.estimates.len(), 1);
        assert_eq!(estimation.estimates[0].evidence, 0);
        assert_eq!(estimation.estimates[0].confidence, 0.0);
    }

    #[test]
    fn candidates_match_by_model_too() {
        let neighbours = vec![
            neighbour(Tier::Cheap, Some(1.0), 0.9, "0"),
            neighbour(Tier::Premium, Some(0.0), 0.9, "0"),
        ];
        let candidates = vec![CaseAction {
            tier: Tier::Unspecified,
            model: "premium-model".into(),
            plan_json: String::new(),
        }];
        let estimation = estimate_from(&neighbours, &candidates, "e".into());
        assert_eq!(estimation.estimates[0].evidence, 1);
        assert_eq!(estimation.estimates[0].success, 0.0);
    }
}

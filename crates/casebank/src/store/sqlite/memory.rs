//! The in-memory copy of one tenant's cases that [`super::SqliteCaseStore`] searches.
//!
//! Cases are grouped by embedder (and dimension), because a search only ever compares vectors
//! of one embedder; each group keeps its vectors in one contiguous array, row `i` belonging to
//! `cases[i]`. A search is then one linear pass over that array: no pointer chase per case, no
//! string comparison of embedder names per case, and a loop the compiler vectorises. Measured
//! in the router's pipeline benchmark, where the per-case layout and checks made the scan a
//! fifth of all CPU time (BENCHMARKS.md, "Router").
//!
//! Order inside a group is not meaningful (removal swaps the last case in); results are
//! ordered by similarity, then id, exactly as before.

use std::sync::Arc;

use crate::embed::dot;
use crate::model::{Case, NearestQuery, ScoredCase};

#[derive(Debug, Default)]
pub struct TenantCases {
    /// Few per tenant (one per embedder in use): a linear lookup beats hashing.
    groups: Vec<EmbedderGroup>,
}

#[derive(Debug)]
struct EmbedderGroup {
    embedder: String,
    dims: usize,
    cases: Vec<Arc<Case>>,
    /// `cases[i].reward`, kept beside the vectors: the reward filter of every search reads it
    /// for every case, and following each case's pointer instead costs a cache miss per case.
    rewards: Vec<Option<f64>>,
    /// `cases.len() * dims` values, row by row.
    vectors: Vec<f32>,
}

impl EmbedderGroup {
    fn row(&self, index: usize) -> &[f32] {
        &self.vectors[index * self.dims..(index + 1) * self.dims]
    }

    fn position(&self, id: &str) -> Option<usize> {
        self.cases.iter().position(|case| case.id == id)
    }

    fn swap_remove(&mut self, index: usize) {
        let last = self.cases.len() - 1;
        if index != last {
            let (dims, vectors) = (self.dims, &mut self.vectors);
            vectors.copy_within(last * dims..(last + 1) * dims, index * dims);
        }
        self.vectors.truncate(last * self.dims);
        self.cases.swap_remove(index);
        self.rewards.swap_remove(index);
    }
}

impl TenantCases {
    #[cfg(test)]
    fn len(&self) -> usize {
        self.groups.iter().map(|group| group.cases.len()).sum()
    }

    fn group(&self, embedder: &str, dims: usize) -> Option<&EmbedderGroup> {
        self.groups
            .iter()
            .find(|group| group.dims == dims && group.embedder == embedder)
    }

    /// How many vector values a search with this embedder reads (its cost, roughly).
    pub fn scan_values(&self, embedder: &str, dims: usize) -> usize {
        self.group(embedder, dims)
            .map_or(0, |group| group.vectors.len())
    }

    /// Adds a case the database has just stored (its id is new for the tenant).
    pub fn push(&mut self, case: Case, embedding: &[f32]) {
        let dims = embedding.len();
        let index = match self
            .groups
            .iter()
            .position(|group| group.dims == dims && group.embedder == case.embedder)
        {
            Some(index) => index,
            None => {
                self.groups.push(EmbedderGroup {
                    embedder: case.embedder.clone(),
                    dims,
                    cases: Vec::new(),
                    rewards: Vec::new(),
                    vectors: Vec::new(),
                });
                self.groups.len() - 1
            }
        };
        let group = &mut self.groups[index];
        group.vectors.extend_from_slice(embedding);
        group.rewards.push(case.reward);
        group.cases.push(Arc::new(case));
    }

    /// Replaces the stored fields of the case with `case.id` (its vector is unchanged).
    pub fn replace(&mut self, case: Case) {
        for group in &mut self.groups {
            if let Some(index) = group.position(&case.id) {
                group.rewards[index] = case.reward;
                group.cases[index] = Arc::new(case);
                return;
            }
        }
    }

    pub fn remove(&mut self, id: &str) {
        for group in &mut self.groups {
            if let Some(index) = group.position(id) {
                group.swap_remove(index);
                break;
            }
        }
        self.groups.retain(|group| !group.cases.is_empty());
    }

    /// Exact k-nearest for each of `queries`, which share one embedding (Retrieve's positives
    /// and negatives): each dot product is computed once however many queries want it, and
    /// only for cases that some query's metadata filters accept.
    pub fn nearest_each(&self, queries: &[NearestQuery]) -> Vec<Vec<ScoredCase>> {
        let Some(first) = queries.first() else {
            return Vec::new();
        };
        let Some(group) = self.group(&first.embedder, first.embedding.len()) else {
            return vec![Vec::new(); queries.len()];
        };
        let mut hits: Vec<Vec<(f32, usize)>> = vec![Vec::new(); queries.len()];
        for (index, reward) in group.rewards.iter().enumerate() {
            let mut similarity_opt = None;
            for (query, found) in queries.iter().zip(hits.iter_mut()) {
                if !query.reward.accepts(*reward) {
                    continue;
                }
                let other_filters = query.agent_opt.is_some() || !query.tags.is_empty();
                if other_filters && !query.accepts_metadata(&group.cases[index]) {
                    continue;
                }
                let similarity =
                    *similarity_opt.get_or_insert_with(|| dot(group.row(index), &first.embedding));
                if f64::from(similarity) >= query.min_similarity {
                    found.push((similarity, index));
                }
            }
        }
        queries
            .iter()
            .zip(hits)
            .map(|(query, hits)| top_k(&group.cases, query.limit, hits))
            .collect()
    }
}

fn top_k(cases: &[Arc<Case>], limit: usize, mut hits: Vec<(f32, usize)>) -> Vec<ScoredCase> {
    let by_similarity = |a: &(f32, usize), b: &(f32, usize)| {
        b.0.total_cmp(&a.0)
            .then_with(|| cases[a.1].id.cmp(&cases[b.1].id))
    };
    if hits.len() > limit && limit > 0 {
        hits.select_nth_unstable_by(limit - 1, by_similarity);
    }
    hits.truncate(limit);
    hits.sort_by(by_similarity);
    hits.into_iter()
        .map(|(similarity, index)| ScoredCase {
            case: Arc::clone(&cases[index]),
            similarity: f64::from(similarity).clamp(-1.0, 1.0),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RewardFilter;

    fn case(id: &str, embedder: &str) -> Case {
        Case {
            id: id.into(),
            tenant: "t".into(),
            agent: String::new(),
            task: id.into(),
            action: Default::default(),
            outcome: String::new(),
            reward: Some(1.0),
            cost_usd: tollgate_kit::money::Usd::ZERO,
            latency_micros: 0,
            tags: Vec::new(),
            created_at: chrono::Utc::now(),
            embedder: embedder.into(),
            request_id: String::new(),
        }
    }

    fn query(embedder: &str, embedding: Vec<f32>, limit: usize) -> NearestQuery {
        NearestQuery {
            tenant: "t".into(),
            embedder: embedder.into(),
            embedding,
            limit,
            agent_opt: None,
            tags: Vec::new(),
            reward: RewardFilter::Any,
            min_similarity: -1.0,
        }
    }

    fn ids(found: &[ScoredCase]) -> Vec<&str> {
        found.iter().map(|scored| scored.case.id.as_str()).collect()
    }

    #[test]
    fn removal_keeps_rows_and_cases_in_step() {
        let mut cases = TenantCases::default();
        cases.push(case("a", "e"), &[1.0, 0.0]);
        cases.push(case("b", "e"), &[0.0, 1.0]);
        cases.push(case("c", "e"), &[0.6, 0.8]);
        cases.remove("a");
        assert_eq!(cases.len(), 2);
        // "c" moved into "a"'s row; its vector must have moved with it.
        let found = cases.nearest_each(&[query("e", vec![0.6, 0.8], 1)]);
        assert_eq!(ids(&found[0]), ["c"]);
        assert!((found[0][0].similarity - 1.0).abs() < 1e-6);
        let found = cases.nearest_each(&[query("e", vec![0.0, 1.0], 2)]);
        assert_eq!(ids(&found[0]), ["b", "c"]);
    }

    #[test]
    fn embedders_and_dimensions_never_mix() {
        let mut cases = TenantCases::default();
        cases.push(case("a", "e1"), &[1.0, 0.0]);
        cases.push(case("b", "e2"), &[1.0, 0.0]);
        cases.push(case("c", "e1"), &[1.0, 0.0, 0.0]);
        let found = cases.nearest_each(&[query("e1", vec![1.0, 0.0], 4)]);
        assert_eq!(ids(&found[0]), ["a"]);
        let found = cases.nearest_each(&[query("e3", vec![1.0, 0.0], 4)]);
        assert!(found[0].is_empty());
    }

    #[test]
    fn replace_updates_fields_not_vectors() {
        let mut cases = TenantCases::default();
        cases.push(case("a", "e"), &[1.0, 0.0]);
        let mut updated = case("a", "e");
        updated.reward = Some(0.0);
        cases.replace(updated);
        let mut positives = query("e", vec![1.0, 0.0], 4);
        positives.reward = RewardFilter::AtLeast(0.5);
        let negatives = NearestQuery {
            reward: RewardFilter::Below(0.5),
            ..positives.clone()
        };
        let found = cases.nearest_each(&[positives, negatives]);
        assert!(found[0].is_empty());
        assert_eq!(ids(&found[1]), ["a"]);
    }
}

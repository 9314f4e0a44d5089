//! Where cases live: the [`CaseStore`] trait and its backends, [`postgres::PgCaseStore`]
//! (pgvector, HNSW index with cosine distance) and [`sqlite::SqliteCaseStore`] (the embedded
//! default, exact search over an in-memory copy of each tenant's embeddings). One shared test
//! suite (`tests/store_suite.rs`) runs against both.

pub mod postgres;
pub mod sqlite;

use std::fmt::Debug;

use crate::model::{Case, CaseStats, NearestQuery, ScoredCase};

pub use postgres::PgCaseStore;
pub use sqlite::SqliteCaseStore;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// The database cannot be reached in time; the caller may retry (writes are idempotent).
    #[error("case store unavailable: {0}")]
    Unavailable(String),
    #[error("case store error: {0}")]
    Internal(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(error.to_string()),
            other => StoreError::Internal(other.to_string()),
        }
    }
}

#[async_trait::async_trait]
pub trait CaseStore: Send + Sync + Debug {
    /// "postgres" or "sqlite": the `backend` label of metrics and of `CaseStats`.
    fn backend(&self) -> &'static str;

    /// Inserts `case` unless the tenant already has a case with its id; returns the stored case
    /// and whether it was created. An existing case is returned unchanged (idempotent retries).
    async fn insert(&self, case: &Case, embedding: &[f32]) -> StoreResult<(Case, bool)>;

    /// Sets the reward (and the outcome, when `outcome_opt` is given); `None` when no such case.
    async fn update_reward(
        &self,
        tenant: &str,
        id: &str,
        reward: f64,
        outcome_opt: Option<&str>,
    ) -> StoreResult<Option<Case>>;

    async fn get(&self, tenant: &str, id: &str) -> StoreResult<Option<Case>>;

    /// True when a case was deleted.
    async fn delete(&self, tenant: &str, id: &str) -> StoreResult<bool>;

    /// Deletes every case of `tenant`; returns how many.
    async fn delete_tenant(&self, tenant: &str) -> StoreResult<u64>;

    /// The `query.limit` cases most similar to `query.embedding` that pass its filters and have
    /// at least `query.min_similarity`, most similar first.
    async fn nearest(&self, query: &NearestQuery) -> StoreResult<Vec<ScoredCase>>;

    /// [`CaseStore::nearest`] for several queries of one tenant and one embedding (Retrieve's
    /// positives and negatives), in order. Backends that scan may answer all in one pass.
    async fn nearest_each(&self, queries: &[NearestQuery]) -> StoreResult<Vec<Vec<ScoredCase>>> {
        let mut answers = Vec::with_capacity(queries.len());
        for query in queries {
            answers.push(self.nearest(query).await?);
        }
        Ok(answers)
    }

    /// Counts over one tenant, or every tenant when `tenant_opt` is `None`.
    async fn stats(&self, tenant_opt: Option<&str>) -> StoreResult<CaseStats>;
}

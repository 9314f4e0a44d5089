//! Where the ledger, its rollups and the budgets live: the [`UsageStore`] trait, with one
//! struct per backend ([`postgres::PgUsageStore`], [`sqlite::SqliteUsageStore`]). One shared test
//! suite (`tests/store_suite.rs`) runs against both.
//!
//! Every implementation guarantees:
//! - `record_batch` is idempotent on `(request_id, attempt)`, also between concurrent writers,
//!   and updates the hourly rollups in the same transaction, only for rows it actually inserted;
//! - parallel writers never deadlock (rows are written in key order);
//! - `reserve` never lets the sum of spent and held amounts cross a hard limit, whatever the
//!   number of concurrent callers and instances;
//! - money is stored exactly.

pub mod postgres;
pub mod sqlite;

use std::future::Future;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tollgate_kit::money::Usd;

use crate::model::{
    Budget, BudgetPeriod, BudgetScope, BudgetStatus, ExportQuery, RecordOutcome, ReserveOutcome,
    ReserveRequest, SpendQuery, SpendRow, UsageEntry,
};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached (or no connection came free in time): retry later.
    #[error("the cost ledger's database is unavailable: {0}")]
    Unavailable(String),
    /// A value the backend cannot hold exactly (SQLite keeps money as 64-bit pico-dollars).
    #[error("{0}")]
    OutOfRange(String),
    #[error("cost ledger store error: {0}")]
    Internal(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The backend's name, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        }
    }
}

/// The usage ledger, its rollups and the budgets.
pub trait UsageStore: Send + Sync + 'static {
    fn backend(&self) -> Backend;

    /// Stores the entries that are not stored yet; one outcome per entry, in order.
    fn record_batch(
        &self,
        entries: &[UsageEntry],
    ) -> impl Future<Output = StoreResult<Vec<RecordOutcome>>> + Send;

    /// Spend grouped as asked, from the hourly rollups (never a scan of the raw ledger); rows
    /// ordered by key.
    fn spend(&self, query: &SpendQuery) -> impl Future<Output = StoreResult<Vec<SpendRow>>> + Send;

    /// Sends every ledger entry in the range that matches the filter, ordered by time, into
    /// `rows_tx`; stops early when the receiver is gone. Memory stays constant: rows are
    /// streamed from the database and the channel is bounded.
    fn export(
        &self,
        query: &ExportQuery,
        rows_tx: mpsc::Sender<UsageEntry>,
    ) -> impl Future<Output = StoreResult<u64>> + Send;

    /// Backends that render CSV themselves (Postgres `COPY ... TO STDOUT`, formatted in the
    /// server) stream it here in chunks of about `chunk_rows` rows, header first, byte for byte
    /// what [`crate::service::csv_bytes`] makes of [`UsageStore::export`]'s rows. False when the
    /// backend has no such path (nothing was sent): use `export` instead.
    fn export_csv(
        &self,
        query: &ExportQuery,
        chunk_rows: usize,
        chunks_tx: mpsc::Sender<StoreResult<(Vec<u8>, u32)>>,
    ) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Creates or replaces the budget of this scope and period.
    fn set_budget(
        &self,
        budget: &Budget,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<BudgetStatus>> + Send;

    fn delete_budget(
        &self,
        scope: &BudgetScope,
        period: BudgetPeriod,
    ) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Budgets (all, or those whose scope tenant is `tenant`) in their current period.
    fn list_budgets(
        &self,
        tenant_opt: Option<&str>,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<Vec<BudgetStatus>>> + Send;

    /// Holds the estimate against every matching budget, atomically, unless a hard limit would
    /// be crossed. Idempotent on the request id.
    fn reserve(
        &self,
        request: &ReserveRequest,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<ReserveOutcome>> + Send;

    /// Replaces the reservation's holds by `actual` spend; None when no such reservation.
    /// Settling twice changes nothing the second time.
    fn settle(
        &self,
        reservation_id: &str,
        actual: Usd,
        now: DateTime<Utc>,
    ) -> impl Future<Output = StoreResult<Option<Vec<BudgetStatus>>>> + Send;
}

/// Sorts entries by their key so that concurrent writers take row locks in the same order, and
/// keeps one entry per key (a batch may repeat a record): the positions of the originals are
/// returned so that outcomes can be mapped back.
pub(crate) fn sorted_unique(entries: &[UsageEntry]) -> Vec<(usize, &UsageEntry)> {
    let mut order: Vec<(usize, &UsageEntry)> = entries.iter().enumerate().collect();
    order.sort_by(|(_, a), (_, b)| {
        (a.request_id.as_str(), a.attempt).cmp(&(b.request_id.as_str(), b.attempt))
    });
    order.dedup_by(|(_, later), (_, first)| {
        later.request_id == first.request_id && later.attempt == first.attempt
    });
    order
}

/// Maps the keys a store inserted back to per-entry outcomes in the caller's order. Of several
/// equal entries in one batch, the first counts as stored and the rest as duplicates.
pub(crate) fn outcomes_for(
    entries: &[UsageEntry],
    unique: &[(usize, &UsageEntry)],
    inserted: &std::collections::HashSet<(String, u32)>,
) -> Vec<RecordOutcome> {
    let mut outcomes = vec![RecordOutcome::Duplicate; entries.len()];
    for (index, entry) in unique {
        if inserted.contains(&(entry.request_id.clone(), entry.attempt))
            && let Some(slot) = outcomes.get_mut(*index)
        {
            *slot = RecordOutcome::Stored;
        }
    }
    outcomes
}

/// The rollup key of an entry; entries are aggregated per key before rollups are updated, in
/// key order.
pub(crate) type RollupKey = (DateTime<Utc>, String, String, String, String, i16);

#[derive(Debug, Clone, Default)]
pub(crate) struct RollupDelta {
    pub cost_usd: Usd,
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_input_tokens: i64,
    pub estimated_requests: i64,
}

/// Sums inserted entries per rollup key, sorted by key.
pub(crate) fn rollup_deltas<'a>(
    inserted: impl Iterator<Item = &'a UsageEntry>,
) -> StoreResult<std::collections::BTreeMap<RollupKey, RollupDelta>> {
    let mut deltas: std::collections::BTreeMap<RollupKey, RollupDelta> = Default::default();
    for entry in inserted {
        let key = (
            entry.hour(),
            entry.tenant.clone(),
            entry.provider.clone(),
            entry.model.clone(),
            entry.agent.clone(),
            entry.tier,
        );
        let delta = deltas.entry(key).or_default();
        delta.cost_usd = delta
            .cost_usd
            .checked_add(entry.cost_usd)
            .ok_or_else(|| StoreError::OutOfRange("cost sum overflows".into()))?;
        delta.requests += 1;
        delta.input_tokens = delta.input_tokens.saturating_add(entry.input_tokens);
        delta.output_tokens = delta.output_tokens.saturating_add(entry.output_tokens);
        delta.cached_input_tokens = delta
            .cached_input_tokens
            .saturating_add(entry.cached_input_tokens);
        delta.estimated_requests += i64::from(entry.estimated);
    }
    Ok(deltas)
}

/// The same deltas summed per UTC day, for the daily rollups; sorted by key.
pub(crate) fn daily_deltas(
    hourly: &std::collections::BTreeMap<RollupKey, RollupDelta>,
) -> StoreResult<std::collections::BTreeMap<RollupKey, RollupDelta>> {
    let mut daily: std::collections::BTreeMap<RollupKey, RollupDelta> = Default::default();
    for ((hour, tenant, provider, model, agent, tier), delta) in hourly {
        let day = crate::model::BudgetPeriod::Day.start_of(*hour);
        let key = (
            day,
            tenant.clone(),
            provider.clone(),
            model.clone(),
            agent.clone(),
            *tier,
        );
        let sum = daily.entry(key).or_default();
        sum.cost_usd = sum
            .cost_usd
            .checked_add(delta.cost_usd)
            .ok_or_else(|| StoreError::OutOfRange("cost sum overflows".into()))?;
        sum.requests += delta.requests;
        sum.input_tokens = sum.input_tokens.saturating_add(delta.input_tokens);
        sum.output_tokens = sum.output_tokens.saturating_add(delta.output_tokens);
        sum.cached_input_tokens = sum
            .cached_input_tokens
            .saturating_add(delta.cached_input_tokens);
        sum.estimated_requests += delta.estimated_requests;
    }
    Ok(daily)
}

/// The whole UTC days inside `range`, [first, end): spend for them is read from the daily
/// rollups, the hours before and after from the hourly ones. An empty span (`end`, `end`) when
/// the range holds no whole day.
pub(crate) fn whole_days(range: &crate::model::TimeRange) -> (DateTime<Utc>, DateTime<Utc>) {
    let day = crate::model::BudgetPeriod::Day;
    let floor_start = day.start_of(range.start);
    let first = if floor_start == range.start {
        floor_start
    } else {
        floor_start + chrono::Duration::days(1)
    };
    let last = day.start_of(range.end);
    if first < last {
        (first, last)
    } else {
        (range.end, range.end)
    }
}

/// Maps sqlx errors: connection trouble is UNAVAILABLE (retry later), the rest internal.
pub(crate) fn from_sqlx(error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            StoreError::Unavailable(error.to_string())
        }
        sqlx::Error::Tls(_) => StoreError::Unavailable(error.to_string()),
        // Connection exceptions (08), insufficient resources (53: too many connections, disk
        // full) and operator intervention (57P: shutdown, starting up): retry later.
        sqlx::Error::Database(db)
            if db.code().is_some_and(|code| {
                code.starts_with("08") || code.starts_with("53") || code.starts_with("57P")
            }) =>
        {
            StoreError::Unavailable(error.to_string())
        }
        _ => StoreError::Internal(error.to_string()),
    }
}

/// Parses an amount the database produced (NUMERIC as text).
pub(crate) fn usd_from_db(text: &str) -> StoreResult<Usd> {
    Usd::parse("stored amount", text).map_err(|e| StoreError::Internal(e.to_string()))
}

//! [`SqliteUsageStore`]: the ledger in one SQLite file (`cost.sqlite` under `storage.data_dir`),
//! the embedded default.
//!
//! Money is INTEGER pico-dollars ([`Usd::to_picos`]) rather than TEXT: SQLite has no decimal
//! type, but it adds 64-bit integers exactly, so rollups and reports are summed by SQLite itself
//! without a float ever touching an amount. The price is a ceiling of about 9.2 million USD per
//! stored value or sum, refused (never rounded) beyond it; Postgres has no such ceiling.
//! Times are INTEGER microseconds since the Unix epoch.
//!
//! Every write transaction starts with `BEGIN IMMEDIATE`: SQLite then has one writer at a time,
//! so idempotency, rollups and hard limits hold trivially, and no two writers can deadlock on a
//! lock upgrade.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Transaction};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tollgate_kit::money::Usd;

use super::{
    Backend, StoreError, StoreResult, UsageStore, daily_deltas, from_sqlx, outcomes_for,
    rollup_deltas, sorted_unique, whole_days,
};
use crate::model::{
    Budget, BudgetPeriod, BudgetScope, BudgetStatus, ExportQuery, GroupBy, RecordOutcome,
    ReserveOutcome, ReserveRequest, SpendQuery, SpendRow, UsageEntry,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

#[derive(Debug, Clone)]
pub struct SqliteUsageStore {
    pool: SqlitePool,
    budget_scopes: Arc<BudgetScopeCache>,
}

/// The scopes that have a budget, in memory. Every `ReserveBudget` asks whether any budget
/// applies, and on SQLite each query is a hand-off to sqlx's connection thread (~0.3 ms on the
/// 2-core machine, a fifth of the router's whole pipeline); the answer changes only through
/// this store's own `set_budget` and `delete_budget`, because the embedded database file has
/// one cost-tracker. A write bumps the generation after its commit, and a load stores its
/// result only if no write happened meanwhile, so a stale list is never kept.
#[derive(Debug, Default)]
struct BudgetScopeCache {
    generation: AtomicU64,
    scopes: std::sync::RwLock<Option<(u64, Arc<Vec<BudgetScopeRow>>)>>,
}

/// `(tenant, provider, model)` of one budget; empty matches anything.
type BudgetScopeRow = (String, String, String);

impl BudgetScopeCache {
    fn current(&self, generation: u64) -> Option<Arc<Vec<BudgetScopeRow>>> {
        let cached = self.scopes.read().ok()?;
        match cached.as_ref() {
            Some((cached_generation, scopes)) if *cached_generation == generation => {
                Some(Arc::clone(scopes))
            }
            _ => None,
        }
    }

    fn store(&self, generation: u64, scopes: Arc<Vec<BudgetScopeRow>>) {
        if let Ok(mut cached) = self.scopes.write()
            && self.generation.load(Ordering::Acquire) == generation
        {
            *cached = Some((generation, scopes));
        }
    }

    fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

const EXPORT_COLUMNS: &str = "request_id, attempt, ts, tenant, user_id, agent, provider, model,
    tier, input_tokens, output_tokens, cached_input_tokens, cache_write_input_tokens, estimated,
    cost_picos, latency_micros, token_cache_hit_tokens, routing_reason, query_sha256, status";

/// Same shape as the Postgres query: $1 day start, $2 month start, $3 now (all micros),
/// $4 scope tenant filter, $5..$7 "applies to" filter (NULL: none).
const BUDGET_STATUS: &str = "
SELECT b.tenant, b.provider, b.model, b.period, b.soft_limit_picos, b.hard_limit_picos,
    COALESCE((SELECT p.spent_picos FROM budget_periods p
              WHERE p.budget_id = b.id
                AND p.period_start = CASE WHEN b.period = 1 THEN $1 ELSE $2 END), 0),
    COALESCE((SELECT sum(h.amount_picos) FROM reservation_holds h
              WHERE h.budget_id = b.id
                AND h.period_start = CASE WHEN b.period = 1 THEN $1 ELSE $2 END
                AND h.expires_at > $3), 0)
FROM budgets b
WHERE ($4 IS NULL OR b.tenant = $4)
  AND ($5 IS NULL OR (b.tenant IN ('', $5) AND b.provider IN ('', $6) AND b.model IN ('', $7)))
ORDER BY b.tenant, b.provider, b.model, b.period";

const UPSERT_ROLLUP: &str = "
INSERT INTO usage_hourly AS h (hour, tenant, provider, model, agent, tier, cost_picos, requests,
    input_tokens, output_tokens, cached_input_tokens, estimated_requests)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (hour, tenant, provider, model, agent, tier) DO UPDATE SET
    cost_picos = h.cost_picos + excluded.cost_picos,
    requests = h.requests + excluded.requests,
    input_tokens = h.input_tokens + excluded.input_tokens,
    output_tokens = h.output_tokens + excluded.output_tokens,
    cached_input_tokens = h.cached_input_tokens + excluded.cached_input_tokens,
    estimated_requests = h.estimated_requests + excluded.estimated_requests";

fn to_picos(amount: Usd, what: &str) -> StoreResult<i64> {
    amount
        .to_picos()
        .and_then(|picos| i64::try_from(picos).ok())
        .ok_or_else(|| {
            StoreError::OutOfRange(format!(
                "{what}: {amount} USD is beyond what the embedded SQLite ledger stores exactly (about 9.2 million USD); use Postgres"
            ))
        })
}

fn from_picos(picos: i64) -> StoreResult<Usd> {
    Usd::from_picos(i128::from(picos))
        .ok_or_else(|| StoreError::Internal(format!("stored amount {picos} picos")))
}

fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

fn from_micros(value: i64) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_micros(value)
        .ok_or_else(|| StoreError::Internal(format!("stored time {value}")))
}

impl SqliteUsageStore {
    /// Whether any budget covers this (tenant, provider, model); a read on the pool, outside
    /// any write transaction.
    async fn any_budget_applies(
        &self,
        (tenant, provider, model): (&str, &str, &str),
    ) -> StoreResult<bool> {
        let matches = |(t, p, m): &BudgetScopeRow| {
            (t.is_empty() || t == tenant)
                && (p.is_empty() || p == provider)
                && (m.is_empty() || m == model)
        };
        let cache = &self.budget_scopes;
        let generation = cache.generation.load(Ordering::Acquire);
        if let Some(scopes) = cache.current(generation) {
            return Ok(scopes.iter().any(matches));
        }
        let scopes: Vec<BudgetScopeRow> =
            sqlx::query_as("SELECT tenant, provider, model FROM budgets")
                .fetch_all(&self.pool)
                .await
                .map_err(from_sqlx)?;
        let applies = scopes.iter().any(matches);
        cache.store(generation, Arc::new(scopes));
        Ok(applies)
    }

    /// Opens (creating if needed) the database file and runs the embedded migrations.
    pub async fn open(path: &Path, acquire_timeout: Duration) -> StoreResult<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Unavailable(format!("creating {}: {e}", parent.display()))
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a record is acknowledged only once it survives a power loss.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(acquire_timeout)
            .connect_with(options)
            .await
            .map_err(from_sqlx)?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Internal(format!("migrations: {e}")))?;
        Ok(Self {
            pool,
            budget_scopes: Arc::default(),
        })
    }

    async fn write_tx(&self) -> StoreResult<Transaction<'static, sqlx::Sqlite>> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(from_sqlx)
    }

    async fn statuses(
        &self,
        now: DateTime<Utc>,
        tenant_opt: Option<&str>,
        applies_to_opt: Option<(&str, &str, &str)>,
    ) -> StoreResult<Vec<BudgetStatus>> {
        let rows = sqlx::query(BUDGET_STATUS)
            .bind(micros(BudgetPeriod::Day.start_of(now)))
            .bind(micros(BudgetPeriod::Month.start_of(now)))
            .bind(micros(now))
            .bind(tenant_opt)
            .bind(applies_to_opt.map(|(t, _, _)| t))
            .bind(applies_to_opt.map(|(_, p, _)| p))
            .bind(applies_to_opt.map(|(_, _, m)| m))
            .fetch_all(&self.pool)
            .await
            .map_err(from_sqlx)?;
        rows.iter().map(|row| status_from_row(row, now)).collect()
    }
}

fn status_from_row(row: &SqliteRow, now: DateTime<Utc>) -> StoreResult<BudgetStatus> {
    let period_code: i16 = row.try_get(3).map_err(from_sqlx)?;
    let period = BudgetPeriod::from_code(period_code)
        .ok_or_else(|| StoreError::Internal(format!("unknown budget period {period_code}")))?;
    let soft: Option<i64> = row.try_get(4).map_err(from_sqlx)?;
    let hard: Option<i64> = row.try_get(5).map_err(from_sqlx)?;
    Ok(BudgetStatus {
        budget: Budget {
            scope: BudgetScope {
                tenant: row.try_get(0).map_err(from_sqlx)?,
                provider: row.try_get(1).map_err(from_sqlx)?,
                model: row.try_get(2).map_err(from_sqlx)?,
            },
            period,
            soft_limit_usd: soft.map(from_picos).transpose()?,
            hard_limit_usd: hard.map(from_picos).transpose()?,
        },
        period_start: period.start_of(now),
        spent_usd: from_picos(row.try_get(6).map_err(from_sqlx)?)?,
        reserved_usd: from_picos(row.try_get(7).map_err(from_sqlx)?)?,
    })
}

fn entry_from_row(row: &SqliteRow) -> StoreResult<UsageEntry> {
    let attempt: i64 = row.try_get(1).map_err(from_sqlx)?;
    Ok(UsageEntry {
        request_id: row.try_get(0).map_err(from_sqlx)?,
        attempt: u32::try_from(attempt)
            .map_err(|_| StoreError::Internal(format!("stored attempt {attempt}")))?,
        timestamp: from_micros(row.try_get(2).map_err(from_sqlx)?)?,
        tenant: row.try_get(3).map_err(from_sqlx)?,
        user: row.try_get(4).map_err(from_sqlx)?,
        agent: row.try_get(5).map_err(from_sqlx)?,
        provider: row.try_get(6).map_err(from_sqlx)?,
        model: row.try_get(7).map_err(from_sqlx)?,
        tier: row.try_get(8).map_err(from_sqlx)?,
        input_tokens: row.try_get(9).map_err(from_sqlx)?,
        output_tokens: row.try_get(10).map_err(from_sqlx)?,
        cached_input_tokens: row.try_get(11).map_err(from_sqlx)?,
        cache_write_input_tokens: row.try_get(12).map_err(from_sqlx)?,
        estimated: row.try_get(13).map_err(from_sqlx)?,
        cost_usd: from_picos(row.try_get(14).map_err(from_sqlx)?)?,
        latency_micros: row.try_get(15).map_err(from_sqlx)?,
        token_cache_hit_tokens: row.try_get(16).map_err(from_sqlx)?,
        routing_reason: row.try_get(17).map_err(from_sqlx)?,
        query_sha256: row.try_get(18).map_err(from_sqlx)?,
        status: row.try_get(19).map_err(from_sqlx)?,
    })
}

impl UsageStore for SqliteUsageStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn record_batch(&self, entries: &[UsageEntry]) -> StoreResult<Vec<RecordOutcome>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let unique = sorted_unique(entries);
        let mut picos = Vec::with_capacity(unique.len());
        for (_, entry) in &unique {
            picos.push(to_picos(entry.cost_usd, "cost_usd")?);
        }
        let mut tx = self.write_tx().await?;
        let mut inserted: HashSet<(String, u32)> = HashSet::with_capacity(unique.len());
        for ((_, entry), cost_picos) in unique.iter().zip(picos) {
            let result = sqlx::query(
                "INSERT INTO usage_ledger (request_id, attempt, ts, tenant, user_id, agent,
                     provider, model, tier, input_tokens, output_tokens, cached_input_tokens,
                     cache_write_input_tokens, estimated, cost_picos, latency_micros,
                     token_cache_hit_tokens, routing_reason, query_sha256, status)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                     $17, $18, $19, $20)
                 ON CONFLICT (request_id, attempt) DO NOTHING",
            )
            .bind(&entry.request_id)
            .bind(i64::from(entry.attempt))
            .bind(micros(entry.timestamp))
            .bind(&entry.tenant)
            .bind(&entry.user)
            .bind(&entry.agent)
            .bind(&entry.provider)
            .bind(&entry.model)
            .bind(entry.tier)
            .bind(entry.input_tokens)
            .bind(entry.output_tokens)
            .bind(entry.cached_input_tokens)
            .bind(entry.cache_write_input_tokens)
            .bind(entry.estimated)
            .bind(cost_picos)
            .bind(entry.latency_micros)
            .bind(entry.token_cache_hit_tokens)
            .bind(&entry.routing_reason)
            .bind(&entry.query_sha256)
            .bind(entry.status)
            .execute(&mut *tx)
            .await
            .map_err(from_sqlx)?;
            if result.rows_affected() > 0 {
                inserted.insert((entry.request_id.clone(), entry.attempt));
            }
        }
        let deltas = rollup_deltas(
            unique
                .iter()
                .map(|(_, entry)| *entry)
                .filter(|entry| inserted.contains(&(entry.request_id.clone(), entry.attempt))),
        )?;
        let daily = daily_deltas(&deltas)?;
        for (table, column, rollups) in [
            ("usage_hourly", "hour", deltas),
            ("usage_daily", "day", daily),
        ] {
            // Table and column names are ours, never caller input.
            let sql = UPSERT_ROLLUP
                .replace("usage_hourly", table)
                .replace("(hour,", &format!("({column},"));
            for ((at, tenant, provider, model, agent, tier), delta) in rollups {
                sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                    .bind(micros(at))
                    .bind(tenant)
                    .bind(provider)
                    .bind(model)
                    .bind(agent)
                    .bind(tier)
                    .bind(to_picos(delta.cost_usd, "rollup cost")?)
                    .bind(delta.requests)
                    .bind(delta.input_tokens)
                    .bind(delta.output_tokens)
                    .bind(delta.cached_input_tokens)
                    .bind(delta.estimated_requests)
                    .execute(&mut *tx)
                    .await
                    .map_err(from_sqlx)?;
            }
        }
        tx.commit().await.map_err(from_sqlx)?;
        Ok(outcomes_for(entries, &unique, &inserted))
    }

    async fn spend(&self, query: &SpendQuery) -> StoreResult<Vec<SpendRow>> {
        let key = |column: &str| match query.group_by {
            GroupBy::Tenant => "tenant".to_owned(),
            GroupBy::Provider => "provider".to_owned(),
            GroupBy::Model => "model".to_owned(),
            GroupBy::Agent => "agent".to_owned(),
            GroupBy::Tier => "CAST(tier AS TEXT)".to_owned(),
            GroupBy::Day => format!("strftime('%Y-%m-%d', {column} / 1000000, 'unixepoch')"),
            GroupBy::Month => format!("strftime('%Y-%m', {column} / 1000000, 'unixepoch')"),
        };
        let filters = "($3 = '' OR tenant = $3) AND ($4 = '' OR provider = $4)
               AND ($5 = '' OR model = $5) AND ($6 = '' OR agent = $6)
               AND ($7 = 0 OR tier = $7)";
        // Whole days from the daily rollups, the partial days at the edges from the hourly
        // ones. The key expressions are fixed above, never caller input.
        let sql = format!(
            "SELECT key, sum(cost_picos), sum(requests), sum(input_tokens), sum(output_tokens),
                 sum(cached_input_tokens), sum(estimated_requests)
             FROM (
                 SELECT {hour_key} AS key, cost_picos, requests, input_tokens, output_tokens,
                     cached_input_tokens, estimated_requests
                 FROM usage_hourly
                 WHERE ((hour >= $1 AND hour < $8) OR (hour >= $9 AND hour < $2)) AND {filters}
                 UNION ALL
                 SELECT {day_key} AS key, cost_picos, requests, input_tokens, output_tokens,
                     cached_input_tokens, estimated_requests
                 FROM usage_daily
                 WHERE day >= $8 AND day < $9 AND {filters}
             )
             GROUP BY key ORDER BY key",
            hour_key = key("hour"),
            day_key = key("day"),
        );
        let (first_day, end_day) = whole_days(&query.range);
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(micros(query.range.start))
            .bind(micros(query.range.end))
            .bind(&query.filter.tenant)
            .bind(&query.filter.provider)
            .bind(&query.filter.model)
            .bind(&query.filter.agent)
            .bind(query.filter.tier)
            .bind(micros(first_day))
            .bind(micros(end_day))
            .fetch_all(&self.pool)
            .await
            .map_err(from_sqlx)?;
        rows.iter()
            .map(|row| {
                Ok(SpendRow {
                    key: row.try_get(0).map_err(from_sqlx)?,
                    cost_usd: from_picos(row.try_get(1).map_err(from_sqlx)?)?,
                    requests: row.try_get(2).map_err(from_sqlx)?,
                    input_tokens: row.try_get(3).map_err(from_sqlx)?,
                    output_tokens: row.try_get(4).map_err(from_sqlx)?,
                    cached_input_tokens: row.try_get(5).map_err(from_sqlx)?,
                    estimated_requests: row.try_get(6).map_err(from_sqlx)?,
                })
            })
            .collect()
    }

    async fn export(
        &self,
        query: &ExportQuery,
        rows_tx: mpsc::Sender<UsageEntry>,
    ) -> StoreResult<u64> {
        let sql = format!(
            "SELECT {EXPORT_COLUMNS} FROM usage_ledger
             WHERE ts >= $1 AND ts < $2
               AND ($3 = '' OR tenant = $3) AND ($4 = '' OR provider = $4)
               AND ($5 = '' OR model = $5) AND ($6 = '' OR agent = $6)
               AND ($7 = 0 OR tier = $7)
             ORDER BY ts, request_id, attempt"
        );
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(micros(query.range.start))
            .bind(micros(query.range.end))
            .bind(&query.filter.tenant)
            .bind(&query.filter.provider)
            .bind(&query.filter.model)
            .bind(&query.filter.agent)
            .bind(query.filter.tier)
            .fetch(&self.pool);
        let mut sent = 0u64;
        while let Some(row) = rows.next().await {
            let entry = entry_from_row(&row.map_err(from_sqlx)?)?;
            if rows_tx.send(entry).await.is_err() {
                break;
            }
            sent += 1;
        }
        Ok(sent)
    }

    async fn export_csv(
        &self,
        _query: &ExportQuery,
        _chunk_rows: usize,
        _chunks_tx: mpsc::Sender<StoreResult<(Vec<u8>, u32)>>,
    ) -> StoreResult<bool> {
        // SQLite has no server to format in; the generic path is as fast here.
        Ok(false)
    }

    async fn set_budget(&self, budget: &Budget, now: DateTime<Utc>) -> StoreResult<BudgetStatus> {
        let soft = budget
            .soft_limit_usd
            .map(|v| to_picos(v, "soft_limit_usd"))
            .transpose()?;
        let hard = budget
            .hard_limit_usd
            .map(|v| to_picos(v, "hard_limit_usd"))
            .transpose()?;
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO budgets (tenant, provider, model, period, soft_limit_picos, hard_limit_picos)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (tenant, provider, model, period) DO UPDATE SET
                 soft_limit_picos = excluded.soft_limit_picos,
                 hard_limit_picos = excluded.hard_limit_picos",
        )
        .bind(&budget.scope.tenant)
        .bind(&budget.scope.provider)
        .bind(&budget.scope.model)
        .bind(budget.period.code())
        .bind(soft)
        .bind(hard)
        .execute(&mut *tx)
        .await
        .map_err(from_sqlx)?;
        tx.commit().await.map_err(from_sqlx)?;
        self.budget_scopes.invalidate();
        self.statuses(now, Some(&budget.scope.tenant), None)
            .await?
            .into_iter()
            .find(|s| s.budget.scope == budget.scope && s.budget.period == budget.period)
            .ok_or_else(|| StoreError::Internal("budget vanished after it was set".into()))
    }

    async fn delete_budget(&self, scope: &BudgetScope, period: BudgetPeriod) -> StoreResult<bool> {
        let mut tx = self.write_tx().await?;
        let result = sqlx::query(
            "DELETE FROM budgets WHERE tenant = $1 AND provider = $2 AND model = $3 AND period = $4",
        )
        .bind(&scope.tenant)
        .bind(&scope.provider)
        .bind(&scope.model)
        .bind(period.code())
        .execute(&mut *tx)
        .await
        .map_err(from_sqlx)?;
        tx.commit().await.map_err(from_sqlx)?;
        self.budget_scopes.invalidate();
        Ok(result.rows_affected() > 0)
    }

    async fn list_budgets(
        &self,
        tenant_opt: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<BudgetStatus>> {
        self.statuses(now, tenant_opt, None).await
    }

    async fn reserve(
        &self,
        request: &ReserveRequest,
        now: DateTime<Utc>,
    ) -> StoreResult<ReserveOutcome> {
        let applies_to = (
            request.tenant.as_str(),
            request.provider.as_str(),
            request.model.as_str(),
        );
        // No budget applies: nothing to hold, and no write (the write transaction and its
        // fsync were the whole pipeline's throughput limit on SQLite). The answer has no
        // reservation id, so there is nothing to settle either.
        if !self.any_budget_applies(applies_to).await? {
            return Ok(ReserveOutcome::Held {
                reservation_id: String::new(),
                budgets: Vec::new(),
            });
        }
        let estimate = to_picos(request.estimated_cost_usd, "estimated_cost_usd")?;
        let expires_at = micros(now) + i64::from(request.ttl_seconds) * 1_000_000;
        let mut tx = self.write_tx().await?;
        let existing: Option<String> =
            sqlx::query_scalar("SELECT reservation_id FROM reservations WHERE reservation_id = $1")
                .bind(&request.request_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(from_sqlx)?;
        if existing.is_some() {
            tx.rollback().await.map_err(from_sqlx)?;
            return Ok(ReserveOutcome::Held {
                reservation_id: request.request_id.clone(),
                budgets: self.statuses(now, None, Some(applies_to)).await?,
            });
        }
        let budgets = sqlx::query(
            "SELECT id, period, hard_limit_picos, tenant, provider, model FROM budgets
             WHERE tenant IN ('', $1) AND provider IN ('', $2) AND model IN ('', $3)
             ORDER BY id",
        )
        .bind(&request.tenant)
        .bind(&request.provider)
        .bind(&request.model)
        .fetch_all(&mut *tx)
        .await
        .map_err(from_sqlx)?;
        let mut holds = Vec::with_capacity(budgets.len());
        for row in &budgets {
            let id: i64 = row.try_get(0).map_err(from_sqlx)?;
            let period_code: i16 = row.try_get(1).map_err(from_sqlx)?;
            let hard_opt: Option<i64> = row.try_get(2).map_err(from_sqlx)?;
            let period = BudgetPeriod::from_code(period_code).ok_or_else(|| {
                StoreError::Internal(format!("unknown budget period {period_code}"))
            })?;
            let period_start = micros(period.start_of(now));
            sqlx::query(
                "INSERT INTO budget_periods (budget_id, period_start) VALUES ($1, $2)
                 ON CONFLICT (budget_id, period_start) DO NOTHING",
            )
            .bind(id)
            .bind(period_start)
            .execute(&mut *tx)
            .await
            .map_err(from_sqlx)?;
            if let Some(hard) = hard_opt {
                let used: i64 = sqlx::query_scalar(
                    "SELECT (SELECT spent_picos FROM budget_periods
                             WHERE budget_id = $1 AND period_start = $2)
                          + COALESCE((SELECT sum(amount_picos) FROM reservation_holds
                             WHERE budget_id = $1 AND period_start = $2 AND expires_at > $3), 0)",
                )
                .bind(id)
                .bind(period_start)
                .bind(micros(now))
                .fetch_one(&mut *tx)
                .await
                .map_err(from_sqlx)?;
                if used.checked_add(estimate).is_none_or(|after| after > hard) {
                    tx.rollback().await.map_err(from_sqlx)?;
                    let scope = BudgetScope {
                        tenant: row.try_get(3).map_err(from_sqlx)?,
                        provider: row.try_get(4).map_err(from_sqlx)?,
                        model: row.try_get(5).map_err(from_sqlx)?,
                    };
                    let refused = self
                        .statuses(now, None, Some(applies_to))
                        .await?
                        .into_iter()
                        .find(|s| s.budget.scope == scope && s.budget.period == period)
                        .ok_or_else(|| StoreError::Internal("refusing budget vanished".into()))?;
                    return Ok(ReserveOutcome::Refused { budget: refused });
                }
            }
            holds.push((id, period_start));
        }
        sqlx::query(
            "INSERT INTO reservations (reservation_id, tenant, provider, model, estimated_picos,
                 created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&request.request_id)
        .bind(&request.tenant)
        .bind(&request.provider)
        .bind(&request.model)
        .bind(estimate)
        .bind(micros(now))
        .bind(expires_at)
        .execute(&mut *tx)
        .await
        .map_err(from_sqlx)?;
        for (id, period_start) in holds {
            sqlx::query(
                "INSERT INTO reservation_holds (reservation_id, budget_id, period_start,
                     amount_picos, expires_at)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&request.request_id)
            .bind(id)
            .bind(period_start)
            .bind(estimate)
            .bind(expires_at)
            .execute(&mut *tx)
            .await
            .map_err(from_sqlx)?;
        }
        tx.commit().await.map_err(from_sqlx)?;
        Ok(ReserveOutcome::Held {
            reservation_id: request.request_id.clone(),
            budgets: self.statuses(now, None, Some(applies_to)).await?,
        })
    }

    async fn settle(
        &self,
        reservation_id: &str,
        actual: Usd,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Vec<BudgetStatus>>> {
        let actual_picos = to_picos(actual, "actual_cost_usd")?;
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(
            "SELECT tenant, provider, model, settled_at IS NOT NULL FROM reservations
             WHERE reservation_id = $1",
        )
        .bind(reservation_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(from_sqlx)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let tenant: String = row.try_get(0).map_err(from_sqlx)?;
        let provider: String = row.try_get(1).map_err(from_sqlx)?;
        let model: String = row.try_get(2).map_err(from_sqlx)?;
        let settled: bool = row.try_get(3).map_err(from_sqlx)?;
        if !settled {
            sqlx::query(
                "UPDATE budget_periods SET spent_picos = spent_picos + $2
                 WHERE (budget_id, period_start) IN
                     (SELECT budget_id, period_start FROM reservation_holds WHERE reservation_id = $1)",
            )
            .bind(reservation_id)
            .bind(actual_picos)
            .execute(&mut *tx)
            .await
            .map_err(from_sqlx)?;
            sqlx::query("DELETE FROM reservation_holds WHERE reservation_id = $1")
                .bind(reservation_id)
                .execute(&mut *tx)
                .await
                .map_err(from_sqlx)?;
            sqlx::query(
                "UPDATE reservations SET settled_at = $2, actual_picos = $3 WHERE reservation_id = $1",
            )
            .bind(reservation_id)
            .bind(micros(now))
            .bind(actual_picos)
            .execute(&mut *tx)
            .await
            .map_err(from_sqlx)?;
        }
        tx.commit().await.map_err(from_sqlx)?;
        Ok(Some(
            self.statuses(now, None, Some((&tenant, &provider, &model)))
                .await?,
        ))
    }
}

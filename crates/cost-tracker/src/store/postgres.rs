//! [`PgUsageStore`]: the ledger on Postgres, for production and for several instances sharing
//! one database.
//!
//! - Batches go in as one `INSERT ... SELECT FROM UNNEST(...) ON CONFLICT DO NOTHING RETURNING`
//!   (one round trip whatever the batch size), sorted by key; the rollup rows of the entries
//!   actually inserted are upserted in the same transaction, in key order, so that parallel
//!   writers with overlapping keys wait for each other instead of deadlocking.
//! - Money is NUMERIC, read and written through its exact text form.
//! - A reservation locks its budgets' period rows (an upsert, which takes the row lock) in
//!   budget id order, then checks spent + held + estimate against the hard limit: concurrent
//!   reservations against one budget are serialised, whichever instance they reach.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{Row, Transaction};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tollgate_kit::money::Usd;

use super::{
    Backend, RollupDelta, RollupKey, StoreError, StoreResult, UsageStore, daily_deltas, from_sqlx,
    outcomes_for, rollup_deltas, sorted_unique, usd_from_db, whole_days,
};
use crate::model::{
    Budget, BudgetPeriod, BudgetScope, BudgetStatus, ExportQuery, GroupBy, RecordOutcome,
    ReserveOutcome, ReserveRequest, SpendQuery, SpendRow, UsageEntry,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The cost-tracker's own bookkeeping table: the casebank (and other services) may share the
/// database, and sqlx's default `_sqlx_migrations` would mix their histories (each service then
/// refuses to start on the other's migrations).
pub const MIGRATIONS_TABLE: &str = "_cost_tracker_migrations";

fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate::Migrator::with_migrations(MIGRATOR.iter().cloned().collect());
    migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
    migrator
}

#[derive(Debug, Clone)]
pub struct PgUsageStore {
    pool: PgPool,
}

const INSERT_LEDGER: &str = "
INSERT INTO usage_ledger (request_id, attempt, ts, tenant, user_id, agent, provider, model, tier,
    input_tokens, output_tokens, cached_input_tokens, cache_write_input_tokens, estimated,
    cost_usd, latency_micros, token_cache_hit_tokens, routing_reason, query_sha256, status)
SELECT * FROM UNNEST($1::text[], $2::int4[], $3::timestamptz[], $4::text[], $5::text[],
    $6::text[], $7::text[], $8::text[], $9::int2[], $10::int8[], $11::int8[], $12::int8[],
    $13::int8[], $14::bool[], $15::text[]::numeric[], $16::int8[], $17::int8[], $18::text[],
    $19::text[], $20::int2[])
ON CONFLICT (request_id, attempt) DO NOTHING
RETURNING request_id, attempt";

/// The rollup upsert for `usage_hourly` (`hour`) or `usage_daily` (`day`).
fn upsert_rollups_sql(table: &str, column: &str) -> String {
    UPSERT_ROLLUPS
        .replace("usage_hourly", table)
        .replace("(hour,", &format!("({column},"))
}

const UPSERT_ROLLUPS: &str = "
INSERT INTO usage_hourly AS h (hour, tenant, provider, model, agent, tier, cost_usd, requests,
    input_tokens, output_tokens, cached_input_tokens, estimated_requests)
SELECT * FROM UNNEST($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[],
    $6::int2[], $7::text[]::numeric[], $8::int8[], $9::int8[], $10::int8[], $11::int8[],
    $12::int8[])
ON CONFLICT (hour, tenant, provider, model, agent, tier) DO UPDATE SET
    cost_usd = h.cost_usd + EXCLUDED.cost_usd,
    requests = h.requests + EXCLUDED.requests,
    input_tokens = h.input_tokens + EXCLUDED.input_tokens,
    output_tokens = h.output_tokens + EXCLUDED.output_tokens,
    cached_input_tokens = h.cached_input_tokens + EXCLUDED.cached_input_tokens,
    estimated_requests = h.estimated_requests + EXCLUDED.estimated_requests";

const EXPORT_COLUMNS: &str = "request_id, attempt, ts, tenant, user_id, agent, provider, model,
    tier, input_tokens, output_tokens, cached_input_tokens, cache_write_input_tokens, estimated,
    cost_usd::text, latency_micros, token_cache_hit_tokens, routing_reason, query_sha256, status";

/// Budgets with their current period's spent and held amounts. $1 day start, $2 month start,
/// $3 now, $4 only this scope tenant (NULL: all), $5..$7 only budgets that apply to this
/// tenant/provider/model (NULL: no such filter).
const BUDGET_STATUS: &str = "
SELECT b.tenant, b.provider, b.model, b.period, b.soft_limit_usd::text, b.hard_limit_usd::text,
    COALESCE(p.spent_usd, 0)::text, COALESCE(held.amount, 0)::text
FROM budgets b
LEFT JOIN budget_periods p
    ON p.budget_id = b.id AND p.period_start = CASE WHEN b.period = 1 THEN $1 ELSE $2 END
LEFT JOIN LATERAL (
    SELECT sum(h.amount_usd) AS amount FROM reservation_holds h
    WHERE h.budget_id = b.id AND h.period_start = CASE WHEN b.period = 1 THEN $1 ELSE $2 END
      AND h.expires_at > $3
) held ON true
WHERE ($4::text IS NULL OR b.tenant = $4)
  AND ($5::text IS NULL OR (b.tenant IN ('', $5) AND b.provider IN ('', $6) AND b.model IN ('', $7)))
ORDER BY b.tenant, b.provider, b.model, b.period";

impl PgUsageStore {
    /// Whether any budget covers this (tenant, provider, model); a read on the pool, outside
    /// any write transaction.
    async fn any_budget_applies(
        &self,
        (tenant, provider, model): (&str, &str, &str),
    ) -> StoreResult<bool> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM budgets
             WHERE tenant IN ('', $1) AND provider IN ('', $2) AND model IN ('', $3))",
        )
        .bind(tenant)
        .bind(provider)
        .bind(model)
        .fetch_one(&self.pool)
        .await
        .map_err(from_sqlx)
    }

    /// Connects and runs the embedded migrations (under Postgres' advisory lock, so several
    /// instances may start at once).
    pub async fn connect(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> StoreResult<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            .connect(url)
            .await
            .map_err(from_sqlx)?;
        migrator()
            .run(&pool)
            .await
            .map_err(|e| StoreError::Internal(format!("migrations: {e}")))?;
        Ok(Self { pool })
    }

    /// The pool, for benchmarks that load data in bulk.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn statuses(
        &self,
        now: DateTime<Utc>,
        tenant_opt: Option<&str>,
        applies_to_opt: Option<(&str, &str, &str)>,
    ) -> StoreResult<Vec<BudgetStatus>> {
        let (day, month) = period_starts(now);
        let rows = sqlx::query(BUDGET_STATUS)
            .bind(day)
            .bind(month)
            .bind(now)
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

fn period_starts(now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    (
        BudgetPeriod::Day.start_of(now),
        BudgetPeriod::Month.start_of(now),
    )
}

fn opt_usd(text: Option<String>) -> StoreResult<Option<Usd>> {
    text.as_deref().map(usd_from_db).transpose()
}

fn status_from_row(row: &PgRow, now: DateTime<Utc>) -> StoreResult<BudgetStatus> {
    let period_code: i16 = row.try_get(3).map_err(from_sqlx)?;
    let period = BudgetPeriod::from_code(period_code)
        .ok_or_else(|| StoreError::Internal(format!("unknown budget period {period_code}")))?;
    let spent: String = row.try_get(6).map_err(from_sqlx)?;
    let held: String = row.try_get(7).map_err(from_sqlx)?;
    Ok(BudgetStatus {
        budget: Budget {
            scope: BudgetScope {
                tenant: row.try_get(0).map_err(from_sqlx)?,
                provider: row.try_get(1).map_err(from_sqlx)?,
                model: row.try_get(2).map_err(from_sqlx)?,
            },
            period,
            soft_limit_usd: opt_usd(row.try_get(4).map_err(from_sqlx)?)?,
            hard_limit_usd: opt_usd(row.try_get(5).map_err(from_sqlx)?)?,
        },
        period_start: period.start_of(now),
        spent_usd: usd_from_db(&spent)?,
        reserved_usd: usd_from_db(&held)?,
    })
}

fn entry_from_row(row: &PgRow) -> StoreResult<UsageEntry> {
    let attempt: i32 = row.try_get(1).map_err(from_sqlx)?;
    let cost: String = row.try_get(14).map_err(from_sqlx)?;
    Ok(UsageEntry {
        request_id: row.try_get(0).map_err(from_sqlx)?,
        attempt: u32::try_from(attempt)
            .map_err(|_| StoreError::Internal(format!("negative attempt {attempt}")))?,
        timestamp: row.try_get(2).map_err(from_sqlx)?,
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
        cost_usd: usd_from_db(&cost)?,
        latency_micros: row.try_get(15).map_err(from_sqlx)?,
        token_cache_hit_tokens: row.try_get(16).map_err(from_sqlx)?,
        routing_reason: row.try_get(17).map_err(from_sqlx)?,
        query_sha256: row.try_get(18).map_err(from_sqlx)?,
        status: row.try_get(19).map_err(from_sqlx)?,
    })
}

fn attempt_i32(attempt: u32) -> StoreResult<i32> {
    i32::try_from(attempt)
        .map_err(|_| StoreError::OutOfRange(format!("attempt {attempt} is too large")))
}

impl UsageStore for PgUsageStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn record_batch(&self, entries: &[UsageEntry]) -> StoreResult<Vec<RecordOutcome>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let unique = sorted_unique(entries);
        let n = unique.len();
        let mut request_ids = Vec::with_capacity(n);
        let mut attempts = Vec::with_capacity(n);
        let mut timestamps = Vec::with_capacity(n);
        let mut tenants = Vec::with_capacity(n);
        let mut users = Vec::with_capacity(n);
        let mut agents = Vec::with_capacity(n);
        let mut providers = Vec::with_capacity(n);
        let mut models = Vec::with_capacity(n);
        let mut tiers = Vec::with_capacity(n);
        let mut inputs = Vec::with_capacity(n);
        let mut outputs = Vec::with_capacity(n);
        let mut cached = Vec::with_capacity(n);
        let mut cache_writes = Vec::with_capacity(n);
        let mut estimated = Vec::with_capacity(n);
        let mut costs = Vec::with_capacity(n);
        let mut latencies = Vec::with_capacity(n);
        let mut hit_tokens = Vec::with_capacity(n);
        let mut reasons = Vec::with_capacity(n);
        let mut hashes = Vec::with_capacity(n);
        let mut statuses = Vec::with_capacity(n);
        for (_, entry) in &unique {
            request_ids.push(entry.request_id.clone());
            attempts.push(attempt_i32(entry.attempt)?);
            timestamps.push(entry.timestamp);
            tenants.push(entry.tenant.clone());
            users.push(entry.user.clone());
            agents.push(entry.agent.clone());
            providers.push(entry.provider.clone());
            models.push(entry.model.clone());
            tiers.push(entry.tier);
            inputs.push(entry.input_tokens);
            outputs.push(entry.output_tokens);
            cached.push(entry.cached_input_tokens);
            cache_writes.push(entry.cache_write_input_tokens);
            estimated.push(entry.estimated);
            costs.push(entry.cost_usd.to_string());
            latencies.push(entry.latency_micros);
            hit_tokens.push(entry.token_cache_hit_tokens);
            reasons.push(entry.routing_reason.clone());
            hashes.push(entry.query_sha256.clone());
            statuses.push(entry.status);
        }
        let mut tx = self.pool.begin().await.map_err(from_sqlx)?;
        let inserted_rows = sqlx::query(INSERT_LEDGER)
            .bind(request_ids)
            .bind(attempts)
            .bind(timestamps)
            .bind(tenants)
            .bind(users)
            .bind(agents)
            .bind(providers)
            .bind(models)
            .bind(tiers)
            .bind(inputs)
            .bind(outputs)
            .bind(cached)
            .bind(cache_writes)
            .bind(estimated)
            .bind(costs)
            .bind(latencies)
            .bind(hit_tokens)
            .bind(reasons)
            .bind(hashes)
            .bind(statuses)
            .fetch_all(&mut *tx)
            .await
            .map_err(from_sqlx)?;
        let mut inserted: HashSet<(String, u32)> = HashSet::with_capacity(inserted_rows.len());
        for row in &inserted_rows {
            let request_id: String = row.try_get(0).map_err(from_sqlx)?;
            let attempt: i32 = row.try_get(1).map_err(from_sqlx)?;
            inserted.insert((request_id, u32::try_from(attempt).unwrap_or_default()));
        }
        let deltas = rollup_deltas(
            unique
                .iter()
                .map(|(_, entry)| *entry)
                .filter(|entry| inserted.contains(&(entry.request_id.clone(), entry.attempt))),
        )?;
        if !deltas.is_empty() {
            let daily = daily_deltas(&deltas)?;
            upsert_rollups(&mut tx, "usage_hourly", "hour", deltas).await?;
            upsert_rollups(&mut tx, "usage_daily", "day", daily).await?;
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
            GroupBy::Tier => "tier::text".to_owned(),
            GroupBy::Day => format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD')"),
            GroupBy::Month => format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM')"),
        };
        let filters = "($3 = '' OR tenant = $3) AND ($4 = '' OR provider = $4)
               AND ($5 = '' OR model = $5) AND ($6 = '' OR agent = $6)
               AND ($7::int2 = 0 OR tier = $7)";
        // Whole days from the daily rollups, the partial days at the edges from the hourly
        // ones. The key expressions are fixed above, never caller input.
        let sql = format!(
            "SELECT key, sum(cost_usd)::text, sum(requests)::int8, sum(input_tokens)::int8,
                 sum(output_tokens)::int8, sum(cached_input_tokens)::int8,
                 sum(estimated_requests)::int8
             FROM (
                 SELECT {hour_key} AS key, cost_usd, requests, input_tokens, output_tokens,
                     cached_input_tokens, estimated_requests
                 FROM usage_hourly
                 WHERE ((hour >= $1 AND hour < $8) OR (hour >= $9 AND hour < $2)) AND {filters}
                 UNION ALL
                 SELECT {day_key} AS key, cost_usd, requests, input_tokens, output_tokens,
                     cached_input_tokens, estimated_requests
                 FROM usage_daily
                 WHERE day >= $8 AND day < $9 AND {filters}
             ) AS spend
             GROUP BY key ORDER BY key",
            hour_key = key("hour"),
            day_key = key("day"),
        );
        let (first_day, end_day) = whole_days(&query.range);
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(query.range.start)
            .bind(query.range.end)
            .bind(&query.filter.tenant)
            .bind(&query.filter.provider)
            .bind(&query.filter.model)
            .bind(&query.filter.agent)
            .bind(query.filter.tier)
            .bind(first_day)
            .bind(end_day)
            .fetch_all(&self.pool)
            .await
            .map_err(from_sqlx)?;
        rows.iter()
            .map(|row| {
                let cost: String = row.try_get(1).map_err(from_sqlx)?;
                Ok(SpendRow {
                    key: row.try_get(0).map_err(from_sqlx)?,
                    cost_usd: usd_from_db(&cost)?,
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
               AND ($7::int2 = 0 OR tier = $7)
             ORDER BY ts, request_id COLLATE \"C\", attempt"
        );
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(query.range.start)
            .bind(query.range.end)
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
        query: &ExportQuery,
        chunk_rows: usize,
        chunks_tx: mpsc::Sender<StoreResult<(Vec<u8>, u32)>>,
    ) -> StoreResult<bool> {
        use sqlx::postgres::PgPoolCopyExt;
        // COPY takes no bind parameters: every value below is a number, a timestamp we format,
        // or a caller string escaped by `literal`.
        let f = &query.filter;
        let statement = format!(
            "COPY (SELECT {CSV_COLUMNS} FROM usage_ledger
                   WHERE ts >= {start} AND ts < {end}
                     AND ({tenant} = '' OR tenant = {tenant})
                     AND ({provider} = '' OR provider = {provider})
                     AND ({model} = '' OR model = {model})
                     AND ({agent} = '' OR agent = {agent})
                     AND ({tier} = 0 OR tier = {tier})
                   ORDER BY ts, request_id COLLATE \"C\", attempt)
             TO STDOUT WITH (FORMAT csv, HEADER true)",
            start = timestamp_literal(query.range.start),
            end = timestamp_literal(query.range.end),
            tenant = literal(&f.tenant),
            provider = literal(&f.provider),
            model = literal(&f.model),
            agent = literal(&f.agent),
            tier = f.tier,
        );
        let mut stream = self
            .pool
            .copy_out_raw(&statement)
            .await
            .map_err(from_sqlx)?;
        let chunk_rows = chunk_rows.max(1);
        let mut chunk: Vec<u8> = Vec::with_capacity(256 * chunk_rows);
        let mut rows_in_chunk = 0usize;
        // Postgres sends COPY TO STDOUT one row per CopyData message (the header first), so
        // messages count rows without scanning the bytes.
        let mut header_done = false;
        while let Some(data) = stream.next().await {
            let data = match data {
                Ok(data) => data,
                Err(error) => {
                    let _ = chunks_tx.send(Err(from_sqlx(error))).await;
                    return Ok(true);
                }
            };
            chunk.extend_from_slice(&data);
            if header_done {
                rows_in_chunk += 1;
            } else {
                header_done = true;
            }
            if rows_in_chunk >= chunk_rows {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(256 * chunk_rows));
                let count = u32::try_from(rows_in_chunk).unwrap_or(u32::MAX);
                rows_in_chunk = 0;
                if chunks_tx.send(Ok((full, count))).await.is_err() {
                    return Ok(true);
                }
            }
        }
        if !chunk.is_empty() {
            let count = u32::try_from(rows_in_chunk).unwrap_or(u32::MAX);
            let _ = chunks_tx.send(Ok((chunk, count))).await;
        }
        Ok(true)
    }

    async fn set_budget(&self, budget: &Budget, now: DateTime<Utc>) -> StoreResult<BudgetStatus> {
        sqlx::query(
            "INSERT INTO budgets (tenant, provider, model, period, soft_limit_usd, hard_limit_usd)
             VALUES ($1, $2, $3, $4, $5::text::numeric, $6::text::numeric)
             ON CONFLICT (tenant, provider, model, period) DO UPDATE SET
                 soft_limit_usd = EXCLUDED.soft_limit_usd, hard_limit_usd = EXCLUDED.hard_limit_usd",
        )
        .bind(&budget.scope.tenant)
        .bind(&budget.scope.provider)
        .bind(&budget.scope.model)
        .bind(budget.period.code())
        .bind(budget.soft_limit_usd.map(|v| v.to_string()))
        .bind(budget.hard_limit_usd.map(|v| v.to_string()))
        .execute(&self.pool)
        .await
        .map_err(from_sqlx)?;
        let statuses = self.statuses(now, Some(&budget.scope.tenant), None).await?;
        statuses
            .into_iter()
            .find(|s| s.budget.scope == budget.scope && s.budget.period == budget.period)
            .ok_or_else(|| StoreError::Internal("budget vanished after it was set".into()))
    }

    async fn delete_budget(&self, scope: &BudgetScope, period: BudgetPeriod) -> StoreResult<bool> {
        let result = sqlx::query(
            "DELETE FROM budgets WHERE tenant = $1 AND provider = $2 AND model = $3 AND period = $4",
        )
        .bind(&scope.tenant)
        .bind(&scope.provider)
        .bind(&scope.model)
        .bind(period.code())
        .execute(&self.pool)
        .await
        .map_err(from_sqlx)?;
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
        let mut tx = self.pool.begin().await.map_err(from_sqlx)?;
        // Budget id order is the lock order of every transaction that locks period rows.
        let budgets = sqlx::query(
            "SELECT id, period, hard_limit_usd::text, tenant, provider, model FROM budgets
             WHERE tenant IN ('', $1) AND provider IN ('', $2) AND model IN ('', $3)
             ORDER BY id",
        )
        .bind(&request.tenant)
        .bind(&request.provider)
        .bind(&request.model)
        .fetch_all(&mut *tx)
        .await
        .map_err(from_sqlx)?;
        let mut locked = Vec::with_capacity(budgets.len());
        for row in &budgets {
            let id: i64 = row.try_get(0).map_err(from_sqlx)?;
            let period_code: i16 = row.try_get(1).map_err(from_sqlx)?;
            let hard_opt = opt_usd(row.try_get(2).map_err(from_sqlx)?)?;
            let period = BudgetPeriod::from_code(period_code).ok_or_else(|| {
                StoreError::Internal(format!("unknown budget period {period_code}"))
            })?;
            let period_start = period.start_of(now);
            let scope = BudgetScope {
                tenant: row.try_get(3).map_err(from_sqlx)?,
                provider: row.try_get(4).map_err(from_sqlx)?,
                model: row.try_get(5).map_err(from_sqlx)?,
            };
            // An upsert that changes nothing still takes the row lock, and creates the row the
            // first time: the equivalent of SELECT ... FOR UPDATE on a row that may not exist.
            let spent: String = sqlx::query_scalar(
                "INSERT INTO budget_periods (budget_id, period_start) VALUES ($1, $2)
                 ON CONFLICT (budget_id, period_start)
                 DO UPDATE SET spent_usd = budget_periods.spent_usd
                 RETURNING spent_usd::text",
            )
            .bind(id)
            .bind(period_start)
            .fetch_one(&mut *tx)
            .await
            .map_err(from_sqlx)?;
            locked.push((
                id,
                period_start,
                hard_opt,
                usd_from_db(&spent)?,
                scope,
                period,
            ));
        }
        let fresh: Option<String> = sqlx::query_scalar(
            "INSERT INTO reservations (reservation_id, tenant, provider, model, estimated_usd,
                 created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5::text::numeric, $6, $7)
             ON CONFLICT (reservation_id) DO NOTHING
             RETURNING reservation_id",
        )
        .bind(&request.request_id)
        .bind(&request.tenant)
        .bind(&request.provider)
        .bind(&request.model)
        .bind(request.estimated_cost_usd.to_string())
        .bind(now)
        .bind(expiry(now, request.ttl_seconds))
        .fetch_optional(&mut *tx)
        .await
        .map_err(from_sqlx)?;
        if fresh.is_none() {
            // Reserved before under this request id: hold nothing more.
            tx.rollback().await.map_err(from_sqlx)?;
            let budgets = self.statuses(now, None, Some(applies_to)).await?;
            return Ok(ReserveOutcome::Held {
                reservation_id: request.request_id.clone(),
                budgets,
            });
        }
        for (id, period_start, hard_opt, spent, scope, period) in &locked {
            let Some(hard) = hard_opt else { continue };
            let held = held_amount(&mut tx, *id, *period_start, now).await?;
            let after = spent
                .checked_add(held)
                .and_then(|v| v.checked_add(request.estimated_cost_usd))
                .ok_or_else(|| StoreError::OutOfRange("budget sum overflows".into()))?;
            if after > *hard {
                tx.rollback().await.map_err(from_sqlx)?;
                let statuses = self.statuses(now, None, Some(applies_to)).await?;
                let refused = statuses
                    .into_iter()
                    .find(|s| s.budget.scope == *scope && s.budget.period == *period)
                    .ok_or_else(|| StoreError::Internal("refusing budget vanished".into()))?;
                return Ok(ReserveOutcome::Refused { budget: refused });
            }
        }
        for (id, period_start, ..) in &locked {
            sqlx::query(
                "INSERT INTO reservation_holds (reservation_id, budget_id, period_start,
                     amount_usd, expires_at)
                 VALUES ($1, $2, $3, $4::text::numeric, $5)",
            )
            .bind(&request.request_id)
            .bind(id)
            .bind(period_start)
            .bind(request.estimated_cost_usd.to_string())
            .bind(expiry(now, request.ttl_seconds))
            .execute(&mut *tx)
            .await
            .map_err(from_sqlx)?;
        }
        tx.commit().await.map_err(from_sqlx)?;
        let budgets = self.statuses(now, None, Some(applies_to)).await?;
        Ok(ReserveOutcome::Held {
            reservation_id: request.request_id.clone(),
            budgets,
        })
    }

    async fn settle(
        &self,
        reservation_id: &str,
        actual: Usd,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Vec<BudgetStatus>>> {
        let mut tx = self.pool.begin().await.map_err(from_sqlx)?;
        let row = sqlx::query(
            "SELECT tenant, provider, model, settled_at IS NOT NULL FROM reservations
             WHERE reservation_id = $1 FOR UPDATE",
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
            let holds = sqlx::query(
                "SELECT budget_id, period_start FROM reservation_holds
                 WHERE reservation_id = $1 ORDER BY budget_id",
            )
            .bind(reservation_id)
            .fetch_all(&mut *tx)
            .await
            .map_err(from_sqlx)?;
            for hold in &holds {
                let budget_id: i64 = hold.try_get(0).map_err(from_sqlx)?;
                let period_start: DateTime<Utc> = hold.try_get(1).map_err(from_sqlx)?;
                sqlx::query(
                    "UPDATE budget_periods SET spent_usd = spent_usd + $3::text::numeric
                     WHERE budget_id = $1 AND period_start = $2",
                )
                .bind(budget_id)
                .bind(period_start)
                .bind(actual.to_string())
                .execute(&mut *tx)
                .await
                .map_err(from_sqlx)?;
            }
            sqlx::query("DELETE FROM reservation_holds WHERE reservation_id = $1")
                .bind(reservation_id)
                .execute(&mut *tx)
                .await
                .map_err(from_sqlx)?;
            sqlx::query(
                "UPDATE reservations SET settled_at = $2, actual_usd = $3::text::numeric
                 WHERE reservation_id = $1",
            )
            .bind(reservation_id)
            .bind(now)
            .bind(actual.to_string())
            .execute(&mut *tx)
            .await
            .map_err(from_sqlx)?;
        }
        tx.commit().await.map_err(from_sqlx)?;
        let budgets = self
            .statuses(now, None, Some((&tenant, &provider, &model)))
            .await?;
        Ok(Some(budgets))
    }
}

/// The export columns rendered by Postgres exactly as the generic CSV writer renders them:
/// RFC 3339 UTC times with microseconds, tier and status names, normalized decimals, and empty
/// strings as NULL (written unquoted and empty, like the generic writer does).
const CSV_COLUMNS: &str = "NULLIF(request_id, '') AS request_id, attempt,
    to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS \"timestamp\",
    NULLIF(tenant, '') AS tenant, NULLIF(user_id, '') AS \"user\", NULLIF(agent, '') AS agent,
    NULLIF(provider, '') AS provider, NULLIF(model, '') AS model,
    CASE tier WHEN 1 THEN 'local' WHEN 2 THEN 'cheap' WHEN 3 THEN 'standard'
        WHEN 4 THEN 'premium' ELSE 'unspecified' END AS tier,
    input_tokens, output_tokens, cached_input_tokens, cache_write_input_tokens,
    CASE WHEN estimated THEN 'true' ELSE 'false' END AS estimated,
    trim_scale(cost_usd)::text AS cost_usd, latency_micros, token_cache_hit_tokens,
    NULLIF(routing_reason, '') AS routing_reason, NULLIF(query_sha256, '') AS query_sha256,
    CASE status WHEN 1 THEN 'succeeded' WHEN 2 THEN 'retryable_error' WHEN 3 THEN 'fatal_error'
        WHEN 4 THEN 'interrupted' WHEN 5 THEN 'skipped_circuit_open' ELSE 'unspecified' END
        AS status";

/// A string constant that is safe whatever `standard_conforming_strings` says: the escape
/// form, with quotes and backslashes doubled (NUL cannot occur in Postgres text).
fn literal(value: &str) -> String {
    format!("E'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

fn timestamp_literal(at: DateTime<Utc>) -> String {
    format!(
        "'{}'::timestamptz",
        at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    )
}

/// Adds `deltas` to the rollup rows of `table`, in key order (the lock order of every writer).
async fn upsert_rollups(
    tx: &mut Transaction<'static, sqlx::Postgres>,
    table: &str,
    column: &str,
    deltas: std::collections::BTreeMap<RollupKey, RollupDelta>,
) -> StoreResult<()> {
    let m = deltas.len();
    let mut keys = Vec::with_capacity(m);
    let mut tenants = Vec::with_capacity(m);
    let mut providers = Vec::with_capacity(m);
    let mut models = Vec::with_capacity(m);
    let mut agents = Vec::with_capacity(m);
    let mut tiers = Vec::with_capacity(m);
    let mut costs = Vec::with_capacity(m);
    let mut requests = Vec::with_capacity(m);
    let mut inputs = Vec::with_capacity(m);
    let mut outputs = Vec::with_capacity(m);
    let mut cached = Vec::with_capacity(m);
    let mut estimated = Vec::with_capacity(m);
    for ((at, tenant, provider, model, agent, tier), delta) in deltas {
        keys.push(at);
        tenants.push(tenant);
        providers.push(provider);
        models.push(model);
        agents.push(agent);
        tiers.push(tier);
        costs.push(delta.cost_usd.to_string());
        requests.push(delta.requests);
        inputs.push(delta.input_tokens);
        outputs.push(delta.output_tokens);
        cached.push(delta.cached_input_tokens);
        estimated.push(delta.estimated_requests);
    }
    // Table and column names are ours, never caller input.
    sqlx::query(sqlx::AssertSqlSafe(upsert_rollups_sql(table, column)))
        .bind(keys)
        .bind(tenants)
        .bind(providers)
        .bind(models)
        .bind(agents)
        .bind(tiers)
        .bind(costs)
        .bind(requests)
        .bind(inputs)
        .bind(outputs)
        .bind(cached)
        .bind(estimated)
        .execute(&mut **tx)
        .await
        .map_err(from_sqlx)?;
    Ok(())
}

fn expiry(now: DateTime<Utc>, ttl_seconds: u32) -> DateTime<Utc> {
    now + chrono::Duration::seconds(i64::from(ttl_seconds))
}

async fn held_amount(
    tx: &mut Transaction<'static, sqlx::Postgres>,
    budget_id: i64,
    period_start: DateTime<Utc>,
    now: DateTime<Utc>,
) -> StoreResult<Usd> {
    let held: String = sqlx::query_scalar(
        "SELECT COALESCE(sum(amount_usd), 0)::text FROM reservation_holds
         WHERE budget_id = $1 AND period_start = $2 AND expires_at > $3",
    )
    .bind(budget_id)
    .bind(period_start)
    .bind(now)
    .fetch_one(&mut **tx)
    .await
    .map_err(from_sqlx)?;
    usd_from_db(&held)
}

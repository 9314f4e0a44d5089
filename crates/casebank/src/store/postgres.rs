//! [`PgCaseStore`]: cases on Postgres with pgvector. Similarity search uses an HNSW index over
//! the inner product (`vector_ip_ops`, operator `<#>`): every stored and queried embedding is
//! L2-normalised (`embed::normalise`), so the inner product *is* the cosine similarity, and it
//! costs one multiply-add per dimension where pgvector's cosine distance costs three (a dot
//! product and two norms), in every distance the graph search computes. Embeddings are stored
//! inline in the heap row (`STORAGE MAIN`, migration 2): out of line, each candidate the search
//! returns would cost a TOAST lookup to compute its similarity.
//!
//! pgvector filters HNSW candidates after the index scan, which yields at most `ef_search` of
//! them (pgvector 0.8's `hnsw.iterative_scan` would scan on, but it is off by default and this
//! store does not turn it on), so a small tenant among many, or strict filters, can leave fewer
//! than k rows: a search that comes back short is repeated as an exact scan of the tenant's rows.
//!
//! The `LIMIT` of every similarity search is formatted into the SQL, not bound: sqlx prepares
//! statements, and after five executions Postgres may switch to a generic plan, which cannot see
//! a bound limit, prices the HNSW scan as if it returned a tenth of the table and sorts a
//! sequential scan instead (measured: Retrieve p50 4.16 ms at 10k cases, 1.48 ms with the
//! literal; BENCHMARKS.md, "Casebank"). The numbers are the store's own (`usize`, `u32`), never
//! caller text.
//!
//! The pool's acquire timeout is short (250 ms by default): when Postgres is down, searches fail
//! fast with [`StoreError::Unavailable`] and the router routes without them.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use pgvector::Vector;
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use tollgate_kit::money::Usd;

use super::{CaseStore, StoreError, StoreResult};
use crate::model::{Case, CaseAction, CaseStats, NearestQuery, ScoredCase, Tier};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// The casebank's own bookkeeping table: the cost-tracker (and other services) may share the
/// database, and sqlx's default `_sqlx_migrations` would mix their histories (each service then
/// refuses to start on the other's migrations).
pub const MIGRATIONS_TABLE: &str = "_casebank_migrations";

fn migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate::Migrator::with_migrations(MIGRATOR.iter().cloned().collect());
    migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
    migrator
}

const COLUMNS: &str = "tenant, id, agent, task, tier, model, plan_json, outcome, reward, cost_usd, \
     latency_micros, tags, created_at, embedder, request_id";

/// HNSW graph parameters. `m` is pgvector's default; `ef_construction` is twice its default: a
/// better-connected graph reaches recall@4 >= 0.95 with fewer candidates per search, and searches
/// are what the request path waits for, inserts are not (BENCHMARKS.md, "Casebank").
const HNSW_M: u32 = 16;
const HNSW_EF_CONSTRUCTION: u32 = 128;

/// Largest dimension pgvector's HNSW index accepts for `vector`.
const MAX_INDEXED_DIMS: usize = 2000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgOptions {
    pub max_connections: u32,
    /// Bound on waiting for a connection, including connecting: how fast an outage shows.
    pub acquire_timeout: Duration,
    /// HNSW candidate list size per search: higher is slower and closer to exact.
    pub ef_search: u32,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_millis(250),
            ef_search: 100,
        }
    }
}

#[derive(Debug)]
pub struct PgCaseStore {
    pool: PgPool,
    /// The most candidates one HNSW index scan yields (`hnsw.ef_search`).
    ef_search: u32,
    /// Dimensions whose HNSW index is known to exist.
    indexed_dims: Mutex<HashSet<usize>>,
}

impl PgCaseStore {
    /// Connects to `url` and applies the migrations; fails when Postgres cannot be reached.
    pub async fn connect(url: &str, options: &PgOptions) -> StoreResult<Self> {
        let store = Self::connect_lazy(url, options)?;
        migrator().run(&store.pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(error) => StoreError::from(error),
            other => StoreError::Internal(format!("postgres migrations: {other}")),
        })?;
        Ok(store)
    }

    /// A store whose connections open on first use; no migrations are run. For callers that
    /// know the schema exists, and for tests of an unreachable server.
    pub fn connect_lazy(url: &str, options: &PgOptions) -> StoreResult<Self> {
        let connect_options: PgConnectOptions = url
            .parse()
            .map_err(|e| StoreError::Internal(format!("bad database url: {e}")))?;
        let ef_search = options.ef_search.max(1);
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .after_connect(move |connection, _meta| {
                Box::pin(async move {
                    // A number we own, formatted into SQL: SET takes no bind parameters.
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "SET hnsw.ef_search = {ef_search}"
                    )))
                    .execute(connection)
                    .await?;
                    Ok(())
                })
            })
            .connect_lazy_with(connect_options);
        Ok(Self {
            pool,
            ef_search,
            indexed_dims: Mutex::new(HashSet::new()),
        })
    }

    /// Creates the partial HNSW index for vectors of `dims` dimensions, once per process.
    /// Failure leaves searches exact (slower, still correct), so it is logged, not returned.
    pub async fn ensure_index(&self, dims: usize) {
        if dims == 0 || dims > MAX_INDEXED_DIMS {
            return;
        }
        if self
            .indexed_dims
            .lock()
            .is_ok_and(|known| known.contains(&dims))
        {
            return;
        }
        // `dims` is a number we own; DDL takes no bind parameters. The cosine-ops index of
        // earlier versions is dropped once the inner-product one exists: searches no longer
        // use it, and every insert would still pay for maintaining it.
        let ddl = format!(
            "CREATE INDEX IF NOT EXISTS cases_embedding_ip_d{dims} ON cases \
             USING hnsw ((embedding::vector({dims})) vector_ip_ops) \
             WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION}) WHERE dims = {dims}"
        );
        let drop_old = format!("DROP INDEX IF EXISTS cases_embedding_hnsw_d{dims}");
        let outcome = async {
            sqlx::query(sqlx::AssertSqlSafe(ddl))
                .execute(&self.pool)
                .await?;
            sqlx::query(sqlx::AssertSqlSafe(drop_old))
                .execute(&self.pool)
                .await
        }
        .await;
        match outcome {
            Ok(_) => {
                if let Ok(mut known) = self.indexed_dims.lock() {
                    known.insert(dims);
                }
            }
            Err(error) => tracing::warn!(%error, dims, "cannot create the HNSW index"),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn search(&self, query: &NearestQuery, exact: bool) -> StoreResult<Vec<ScoredCase>> {
        let dims = query.embedding.len();
        let (at_least, below) = query.reward.bounds();
        // `dims` is formatted in so that the expression matches the partial index's. `<#>` is
        // the negated inner product, the cosine similarity of unit vectors. The limit is a
        // literal too (see the module header).
        // Clamped: Postgres would refuse a LIMIT beyond bigint (the gRPC layer caps k at 64).
        let limit = query.limit.min(i64::MAX as usize);
        let sql = format!(
            "SELECT {COLUMNS}, -((embedding::vector({dims})) <#> $1) AS similarity \
             FROM cases \
             WHERE tenant = $2 AND embedder = $3 AND dims = {dims} \
               AND ($4::text IS NULL OR agent = $4) \
               AND tags @> $5::text[] \
               AND ($6::float8 IS NULL OR reward >= $6) \
               AND ($7::float8 IS NULL OR reward < $7) \
             ORDER BY (embedding::vector({dims})) <#> $1 \
             LIMIT {limit}"
        );
        let statement = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(Vector::from(query.embedding.clone()))
            .bind(&query.tenant)
            .bind(&query.embedder)
            .bind(query.agent_opt.as_deref())
            .bind(&query.tags)
            .bind(at_least)
            .bind(below);
        let rows = if exact {
            let mut transaction = self.pool.begin().await?;
            sqlx::query("SET LOCAL enable_indexscan = off")
                .execute(&mut *transaction)
                .await?;
            let rows = statement.fetch_all(&mut *transaction).await?;
            transaction.commit().await?;
            rows
        } else {
            statement.fetch_all(&self.pool).await?
        };
        let mut scored = Vec::with_capacity(rows.len());
        for row in &rows {
            let similarity: f64 = row.try_get("similarity")?;
            scored.push(ScoredCase {
                case: std::sync::Arc::new(decode(row)?),
                similarity: similarity.clamp(-1.0, 1.0),
            });
        }
        Ok(scored)
    }
}

/// Whether two queries ask the same search apart from the reward filter and the count
/// (Retrieve's positives and negatives).
fn differ_only_in_reward(a: &NearestQuery, b: &NearestQuery) -> bool {
    a.tenant == b.tenant
        && a.embedder == b.embedder
        && a.embedding == b.embedding
        && a.agent_opt == b.agent_opt
        && a.tags == b.tags
}

impl PgCaseStore {
    /// Several queries that differ only in their reward filter, from one HNSW index scan and
    /// in one round trip.
    ///
    /// pgvector filters HNSW candidates after the index scan: a filtered `ORDER BY ... LIMIT k`
    /// walks the scan's candidates (at most `ef_search`, see the module header), nearest first,
    /// and keeps the first k that pass. Two filtered queries would walk the same candidate list
    /// twice, at the cost of two graph searches. Here one statement scans once into a
    /// materialised candidate list (ids, rewards, similarities), picks each query's first
    /// `limit` passing candidates, and returns only those cases in full, together with the
    /// list's lowest similarity (its last candidate's, as the list is nearest first). A query
    /// that comes back short falls back to [`Self::nearest`] (which checks with an exact scan),
    /// exactly as its own search would have, unless the list already ran below the query's
    /// `min_similarity` (then nothing further down can pass).
    async fn nearest_sharing_one_scan(
        &self,
        queries: &[NearestQuery],
    ) -> StoreResult<Vec<Vec<ScoredCase>>> {
        let Some(first) = queries.first() else {
            return Ok(Vec::new());
        };
        let dims = first.embedding.len();
        if dims == 0 {
            return Ok(vec![Vec::new(); queries.len()]);
        }
        self.ensure_index(dims).await;
        // Each query's reward filter as SQL bounds (`crate::model::RewardFilter::bounds`).
        let mut at_least = Vec::with_capacity(queries.len());
        let mut below = Vec::with_capacity(queries.len());
        let mut takes = Vec::with_capacity(queries.len());
        for query in queries {
            let (low, high) = query.reward.bounds();
            at_least.push(low);
            below.push(high);
            takes.push(i64::try_from(query.limit).unwrap_or(i64::MAX));
        }
        // The limit is a literal (see the module header). The candidate list's columns are
        // renamed so that `{COLUMNS}` names only `cases`.
        // The outer `LEFT JOIN ... ON true` returns one row (the list's bounds) even when no
        // case is chosen.
        let ef_search = self.ef_search;
        let sql = format!(
            "WITH candidates AS MATERIALIZED ( \
               SELECT id AS candidate_id, reward AS candidate_reward, \
                      -((embedding::vector({dims})) <#> $1) AS similarity \
               FROM cases \
               WHERE tenant = $2 AND embedder = $3 AND dims = {dims} \
                 AND ($4::text IS NULL OR agent = $4) \
                 AND tags @> $5::text[] \
               ORDER BY (embedding::vector({dims})) <#> $1 \
               LIMIT {ef_search}), \
             chosen AS ( \
               SELECT DISTINCT picked.candidate_id, picked.similarity \
               FROM unnest($6::float8[], $7::float8[], $8::int8[]) AS q(at_least, below, take) \
               CROSS JOIN LATERAL ( \
                 SELECT candidate_id, similarity FROM candidates \
                 WHERE (q.at_least IS NULL OR candidate_reward >= q.at_least) \
                   AND (q.below IS NULL OR candidate_reward < q.below) \
                 ORDER BY similarity DESC \
                 LIMIT q.take) AS picked), \
             bounds AS (SELECT min(similarity) AS least_similarity FROM candidates) \
             SELECT bounds.least_similarity, chosen.similarity, {COLUMNS} \
             FROM bounds \
             LEFT JOIN (chosen JOIN cases ON cases.tenant = $2 AND cases.id = chosen.candidate_id) \
               ON true \
             ORDER BY chosen.similarity DESC NULLS LAST"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(Vector::from(first.embedding.clone()))
            .bind(&first.tenant)
            .bind(&first.embedder)
            .bind(first.agent_opt.as_deref())
            .bind(&first.tags)
            .bind(&at_least)
            .bind(&below)
            .bind(&takes)
            .fetch_all(&self.pool)
            .await?;
        // NULL when the scan found no candidate; the same on every row.
        let least_similar_opt = match rows.first() {
            Some(row) => row
                .try_get::<Option<f64>, _>("least_similarity")?
                .map(|least| least.clamp(-1.0, 1.0)),
            None => None,
        };
        let mut chosen = Vec::with_capacity(rows.len());
        for row in &rows {
            let similarity_opt: Option<f64> = row.try_get(1)?;
            if let Some(similarity) = similarity_opt {
                chosen.push(ScoredCase {
                    case: std::sync::Arc::new(decode(row)?),
                    similarity: similarity.clamp(-1.0, 1.0),
                });
            }
        }
        // The list is nearest first, so a case the scan did not reach is (as far as HNSW's order
        // goes) less similar than its last entry. A query asking for more similar cases than
        // that cannot gain from looking further: its answer is complete even when short, and
        // the exact scan of the tenant's rows (about 100 ms at 100k cases) is not needed.
        let mut answers = Vec::with_capacity(queries.len());
        for query in queries {
            let mut found: Vec<ScoredCase> = chosen
                .iter()
                .filter(|scored| query.reward.accepts(scored.case.reward))
                .take(query.limit)
                .cloned()
                .collect();
            let complete = found.len() == query.limit
                || least_similar_opt.is_some_and(|least| least < query.min_similarity);
            if complete {
                found.retain(|scored| scored.similarity >= query.min_similarity);
            } else {
                // Short: the query's own search decides.
                found = self.nearest(query).await?;
            }
            answers.push(found);
        }
        Ok(answers)
    }
}

fn decode(row: &PgRow) -> StoreResult<Case> {
    let cost_text: String = row.try_get("cost_usd")?;
    let cost_usd = Usd::parse("cost_usd", &cost_text)
        .map_err(|e| StoreError::Internal(format!("cost of a stored case: {e}")))?;
    let latency: i64 = row.try_get("latency_micros")?;
    let tier: i16 = row.try_get("tier")?;
    let created_at: DateTime<Utc> = row.try_get("created_at")?;
    Ok(Case {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        agent: row.try_get("agent")?,
        task: row.try_get("task")?,
        action: CaseAction {
            tier: Tier::from_i32(i32::from(tier)),
            model: row.try_get("model")?,
            plan_json: row.try_get("plan_json")?,
        },
        outcome: row.try_get("outcome")?,
        reward: row.try_get("reward")?,
        cost_usd,
        latency_micros: u64::try_from(latency).unwrap_or(0),
        tags: row.try_get("tags")?,
        created_at,
        embedder: row.try_get("embedder")?,
        request_id: row.try_get("request_id")?,
    })
}

#[async_trait::async_trait]
impl CaseStore for PgCaseStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn insert(&self, case: &Case, embedding: &[f32]) -> StoreResult<(Case, bool)> {
        self.ensure_index(embedding.len()).await;
        let tier = i16::try_from(case.action.tier.as_i32()).unwrap_or(0);
        let inserted = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO cases ({COLUMNS}, dims, embedding) VALUES ($1, $2, $3, $4, $5, $6, $7, \
             $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
             ON CONFLICT (tenant, id) DO NOTHING RETURNING {COLUMNS}"
        )))
        .bind(&case.tenant)
        .bind(&case.id)
        .bind(&case.agent)
        .bind(&case.task)
        .bind(tier)
        .bind(&case.action.model)
        .bind(&case.action.plan_json)
        .bind(&case.outcome)
        .bind(case.reward)
        .bind(case.cost_usd.to_string())
        .bind(i64::try_from(case.latency_micros).unwrap_or(i64::MAX))
        .bind(&case.tags)
        .bind(case.created_at)
        .bind(&case.embedder)
        .bind(&case.request_id)
        .bind(i32::try_from(embedding.len()).unwrap_or(i32::MAX))
        .bind(Vector::from(embedding.to_vec()))
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = inserted {
            return Ok((decode(&row)?, true));
        }
        let existing = self
            .get(&case.tenant, &case.id)
            .await?
            .ok_or_else(|| StoreError::Internal("case vanished between insert and read".into()))?;
        Ok((existing, false))
    }

    async fn update_reward(
        &self,
        tenant: &str,
        id: &str,
        reward: f64,
        outcome_opt: Option<&str>,
    ) -> StoreResult<Option<Case>> {
        let row_opt = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE cases SET reward = $3, outcome = COALESCE($4, outcome) \
             WHERE tenant = $1 AND id = $2 RETURNING {COLUMNS}"
        )))
        .bind(tenant)
        .bind(id)
        .bind(reward)
        .bind(outcome_opt)
        .fetch_optional(&self.pool)
        .await?;
        row_opt.as_ref().map(decode).transpose()
    }

    async fn get(&self, tenant: &str, id: &str) -> StoreResult<Option<Case>> {
        let row_opt = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM cases WHERE tenant = $1 AND id = $2"
        )))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row_opt.as_ref().map(decode).transpose()
    }

    async fn delete(&self, tenant: &str, id: &str) -> StoreResult<bool> {
        let result = sqlx::query("DELETE FROM cases WHERE tenant = $1 AND id = $2")
            .bind(tenant)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn delete_tenant(&self, tenant: &str) -> StoreResult<u64> {
        let result = sqlx::query("DELETE FROM cases WHERE tenant = $1")
            .bind(tenant)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected())
    }

    async fn nearest(&self, query: &NearestQuery) -> StoreResult<Vec<ScoredCase>> {
        if query.limit == 0 || query.embedding.is_empty() {
            return Ok(Vec::new());
        }
        self.ensure_index(query.embedding.len()).await;
        let mut found = self.search(query, false).await?;
        if found.len() < query.limit {
            // HNSW drops candidates that fail the filters after the scan; only an exact scan
            // knows whether there really are fewer than k matches.
            found = self.search(query, true).await?;
        }
        found.retain(|scored| scored.similarity >= query.min_similarity);
        Ok(found)
    }

    async fn nearest_each(&self, queries: &[NearestQuery]) -> StoreResult<Vec<Vec<ScoredCase>>> {
        match queries {
            [first, second] if differ_only_in_reward(first, second) => {
                self.nearest_sharing_one_scan(queries).await
            }
            [first, second] => {
                let (first, second) = tokio::join!(self.nearest(first), self.nearest(second));
                Ok(vec![first?, second?])
            }
            _ => {
                let mut answers = Vec::with_capacity(queries.len());
                for query in queries {
                    answers.push(self.nearest(query).await?);
                }
                Ok(answers)
            }
        }
    }

    async fn stats(&self, tenant_opt: Option<&str>) -> StoreResult<CaseStats> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS cases, COUNT(reward) AS with_reward, \
             COALESCE(AVG(reward), 0.0)::float8 AS mean_reward \
             FROM cases WHERE $1::text IS NULL OR tenant = $1",
        )
        .bind(tenant_opt)
        .fetch_one(&self.pool)
        .await?;
        let cases: i64 = row.try_get("cases")?;
        let with_reward: i64 = row.try_get("with_reward")?;
        Ok(CaseStats {
            cases: u64::try_from(cases).unwrap_or(0),
            with_reward: u64::try_from(with_reward).unwrap_or(0),
            mean_reward: row.try_get("mean_reward")?,
        })
    }
}

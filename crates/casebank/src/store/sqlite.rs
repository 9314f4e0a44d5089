//! [`SqliteCaseStore`]: the embedded default, a `casebank.sqlite` file under
//! `storage.data_dir`. Searches are exact: each tenant's cases are loaded into memory on first
//! use and kept in step with every write (writes go to SQLite first, then to the copy, under
//! one lock), so a search is a scan of dot products over contiguous vectors ([`memory`]), never
//! a read of BLOBs from disk. Exact search stays within a few milliseconds up to about 50k cases.

mod memory;

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use tollgate_kit::money::Usd;

use self::memory::TenantCases;
use super::{CaseStore, StoreError, StoreResult};
use crate::model::{Case, CaseAction, CaseStats, NearestQuery, ScoredCase, Tier};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// The file name under `storage.data_dir`.
pub const FILE_NAME: &str = "casebank.sqlite";

const COLUMNS: &str = "tenant, id, agent, task, tier, model, plan_json, outcome, reward, cost_usd, \
     latency_micros, tags, created_at, embedder, request_id, embedding";

type SharedTenantCases = Arc<RwLock<TenantCases>>;

/// Searches reading at most this many vector values (about 1,400 cases of 384 dimensions,
/// ~100 µs) run on the async worker; larger ones go to the blocking pool.
const INLINE_SCAN_VALUES: usize = 1 << 19;

#[derive(Debug)]
pub struct SqliteCaseStore {
    pool: SqlitePool,
    /// Loaded tenants only. Guarded by `write_lock` for loading and writing; searches take the
    /// read side of the tenant's own lock.
    cache: RwLock<HashMap<String, SharedTenantCases>>,
    write_lock: tokio::sync::Mutex<()>,
}

impl SqliteCaseStore {
    /// Opens (creating when missing) the database at `path` and applies its migrations.
    pub async fn open(path: &Path) -> StoreResult<Self> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Internal(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Internal(format!("sqlite migrations: {e}")))?;
        Ok(Self {
            pool,
            cache: RwLock::new(HashMap::new()),
            write_lock: tokio::sync::Mutex::new(()),
        })
    }

    fn cached(&self, tenant: &str) -> Option<SharedTenantCases> {
        self.cache
            .read()
            .ok()
            .and_then(|cache| cache.get(tenant).cloned())
    }

    /// The in-memory copy of `tenant`'s cases, loading it on first use.
    async fn tenant_cases(&self, tenant: &str) -> StoreResult<SharedTenantCases> {
        if let Some(cases) = self.cached(tenant) {
            return Ok(cases);
        }
        let _guard = self.write_lock.lock().await;
        if let Some(cases) = self.cached(tenant) {
            return Ok(cases);
        }
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM cases WHERE tenant = ?1"
        )))
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        let mut cases = TenantCases::default();
        for row in &rows {
            let (case, embedding) = decode(row)?;
            cases.push(case, &embedding);
        }
        let cases = Arc::new(RwLock::new(cases));
        self.cache
            .write()
            .map_err(|_| poisoned())?
            .insert(tenant.to_owned(), cases.clone());
        Ok(cases)
    }

    /// Applies `change` to the in-memory copy of `tenant`, when it is loaded. Callers hold
    /// `write_lock`, so the copy moves in step with the database.
    fn update_cached(
        &self,
        tenant: &str,
        change: impl FnOnce(&mut TenantCases),
    ) -> StoreResult<()> {
        if let Some(cases) = self.cached(tenant) {
            let mut cases = cases.write().map_err(|_| poisoned())?;
            change(&mut cases);
        }
        Ok(())
    }

    async fn fetch(&self, tenant: &str, id: &str) -> StoreResult<Option<(Case, Vec<f32>)>> {
        let row_opt = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM cases WHERE tenant = ?1 AND id = ?2"
        )))
        .bind(tenant)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row_opt.as_ref().map(decode).transpose()
    }
}

fn poisoned() -> StoreError {
    StoreError::Internal("case cache lock poisoned".into())
}

fn decode(row: &SqliteRow) -> StoreResult<(Case, Vec<f32>)> {
    let tags_json: String = row.try_get("tags")?;
    let tags: Vec<String> = serde_json::from_str(&tags_json)
        .map_err(|e| StoreError::Internal(format!("tags of a stored case: {e}")))?;
    let cost_text: String = row.try_get("cost_usd")?;
    let cost_usd = Usd::parse("cost_usd", &cost_text)
        .map_err(|e| StoreError::Internal(format!("cost of a stored case: {e}")))?;
    let created_micros: i64 = row.try_get("created_at")?;
    let created_at = DateTime::<Utc>::from_timestamp_micros(created_micros)
        .ok_or_else(|| StoreError::Internal("created_at of a stored case".into()))?;
    let latency: i64 = row.try_get("latency_micros")?;
    let tier: i32 = row.try_get("tier")?;
    let blob: Vec<u8> = row.try_get("embedding")?;
    let embedding = blob
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let case = Case {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        agent: row.try_get("agent")?,
        task: row.try_get("task")?,
        action: CaseAction {
            tier: Tier::from_i32(tier),
            model: row.try_get("model")?,
            plan_json: row.try_get("plan_json")?,
        },
        outcome: row.try_get("outcome")?,
        reward: row.try_get("reward")?,
        cost_usd,
        latency_micros: u64::try_from(latency).unwrap_or(0),
        tags,
        created_at,
        embedder: row.try_get("embedder")?,
        request_id: row.try_get("request_id")?,
    };
    Ok((case, embedding))
}

#[async_trait::async_trait]
impl CaseStore for SqliteCaseStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn insert(&self, case: &Case, embedding: &[f32]) -> StoreResult<(Case, bool)> {
        let _guard = self.write_lock.lock().await;
        let tags = serde_json::to_string(&case.tags)
            .map_err(|e| StoreError::Internal(format!("tags: {e}")))?;
        let blob: Vec<u8> = embedding.iter().flat_map(|v| v.to_le_bytes()).collect();
        let result = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO cases ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, \
             ?12, ?13, ?14, ?15, ?16) ON CONFLICT (tenant, id) DO NOTHING"
        )))
        .bind(&case.tenant)
        .bind(&case.id)
        .bind(&case.agent)
        .bind(&case.task)
        .bind(case.action.tier.as_i32())
        .bind(&case.action.model)
        .bind(&case.action.plan_json)
        .bind(&case.outcome)
        .bind(case.reward)
        .bind(case.cost_usd.to_string())
        .bind(i64::try_from(case.latency_micros).unwrap_or(i64::MAX))
        .bind(tags)
        .bind(case.created_at.timestamp_micros())
        .bind(&case.embedder)
        .bind(&case.request_id)
        .bind(blob)
        .execute(&self.pool)
        .await?;
        if result.rows_affected() == 1 {
            self.update_cached(&case.tenant, |cases| cases.push(case.clone(), embedding))?;
            return Ok((case.clone(), true));
        }
        let (existing, _) = self
            .fetch(&case.tenant, &case.id)
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
        let _guard = self.write_lock.lock().await;
        let result = sqlx::query(
            "UPDATE cases SET reward = ?3, outcome = COALESCE(?4, outcome) \
             WHERE tenant = ?1 AND id = ?2",
        )
        .bind(tenant)
        .bind(id)
        .bind(reward)
        .bind(outcome_opt)
        .execute(&self.pool)
        .await?;
        if result.rows_affected() == 0 {
            return Ok(None);
        }
        let Some((case, _)) = self.fetch(tenant, id).await? else {
            return Ok(None);
        };
        let updated = case.clone();
        self.update_cached(tenant, |cases| cases.replace(updated))?;
        Ok(Some(case))
    }

    async fn get(&self, tenant: &str, id: &str) -> StoreResult<Option<Case>> {
        Ok(self.fetch(tenant, id).await?.map(|(case, _)| case))
    }

    async fn delete(&self, tenant: &str, id: &str) -> StoreResult<bool> {
        let _guard = self.write_lock.lock().await;
        let result = sqlx::query("DELETE FROM cases WHERE tenant = ?1 AND id = ?2")
            .bind(tenant)
            .bind(id)
            .execute(&self.pool)
            .await?;
        self.update_cached(tenant, |cases| cases.remove(id))?;
        Ok(result.rows_affected() > 0)
    }

    async fn delete_tenant(&self, tenant: &str) -> StoreResult<u64> {
        let _guard = self.write_lock.lock().await;
        let result = sqlx::query("DELETE FROM cases WHERE tenant = ?1")
            .bind(tenant)
            .execute(&self.pool)
            .await?;
        self.cache.write().map_err(|_| poisoned())?.remove(tenant);
        Ok(result.rows_affected())
    }

    async fn nearest(&self, query: &NearestQuery) -> StoreResult<Vec<ScoredCase>> {
        let mut answers = self.nearest_each(std::slice::from_ref(query)).await?;
        Ok(answers.pop().unwrap_or_default())
    }

    async fn nearest_each(&self, queries: &[NearestQuery]) -> StoreResult<Vec<Vec<ScoredCase>>> {
        let Some(first) = queries.first() else {
            return Ok(Vec::new());
        };
        let shared = queries
            .iter()
            .all(|q| q.tenant == first.tenant && q.embedding == first.embedding);
        if !shared {
            let mut answers = Vec::with_capacity(queries.len());
            for query in queries {
                answers.push(
                    self.nearest_each(std::slice::from_ref(query))
                        .await?
                        .concat(),
                );
            }
            return Ok(answers);
        }
        let cases = self.tenant_cases(&first.tenant).await?;
        {
            // A small scan costs less than handing it to the blocking pool (a thread wake-up is
            // 50-100 µs on a busy 2-core machine); only large tenants leave the async worker.
            let loaded = cases.read().map_err(|_| poisoned())?;
            if loaded.scan_values(&first.embedder, first.embedding.len()) <= INLINE_SCAN_VALUES {
                return Ok(loaded.nearest_each(queries));
            }
        }
        let queries = queries.to_vec();
        tokio::task::spawn_blocking(move || {
            let cases = cases.read().map_err(|_| poisoned())?;
            Ok(cases.nearest_each(&queries))
        })
        .await
        .map_err(|e| StoreError::Internal(format!("search task failed: {e}")))?
    }

    async fn stats(&self, tenant_opt: Option<&str>) -> StoreResult<CaseStats> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS cases, COUNT(reward) AS with_reward, \
             COALESCE(AVG(reward), 0.0) AS mean_reward \
             FROM cases WHERE ?1 IS NULL OR tenant = ?1",
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

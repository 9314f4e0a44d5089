//! [`PgTenantStore`]: tenants in the shared Postgres database (`DATABASE_URL`), in the table
//! `router_tenants` (prefixed: the database is shared with the casebank and the cost-tracker).
//!
//! The schema is created at connect with `IF NOT EXISTS` under a transaction-scoped advisory
//! lock, because replicas starting together would otherwise race on Postgres's catalog
//! (concurrent `CREATE TABLE IF NOT EXISTS` can fail with a unique violation).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};

use super::key::ApiKey;
use super::model::{NewTenant, Tenant, now_micros, validate_tenant_name};
use super::store::{TenantStore, TenantStoreError, TenantStoreResult, limit_from_db};

/// Any constant both replicas agree on: the key of the schema's advisory lock ("tgtenant").
const SCHEMA_LOCK_KEY: i64 = 0x7467_7465_6e61_6e74;

const SCHEMA: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS router_tenants (
        name TEXT PRIMARY KEY,
        key_sha256 BYTEA NOT NULL,
        rate_limit_rps BIGINT NOT NULL,
        burst BIGINT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL,
        key_rotated_at TIMESTAMPTZ NOT NULL
    )",
    "CREATE UNIQUE INDEX IF NOT EXISTS router_tenants_key_sha256 ON router_tenants (key_sha256)",
];

const COLUMNS: &str = "name, rate_limit_rps, burst, created_at";

#[derive(Debug)]
pub struct PgTenantStore {
    pool: PgPool,
}

impl PgTenantStore {
    /// Connects to `url` and creates the schema when missing.
    pub async fn connect(url: &str) -> TenantStoreResult<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            // Lookups happen on the request path (on cache misses): an outage must show fast.
            .acquire_timeout(Duration::from_secs(2))
            .connect(url)
            .await?;
        let mut transaction = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SCHEMA_LOCK_KEY)
            .execute(&mut *transaction)
            .await?;
        for statement in SCHEMA {
            sqlx::query(statement).execute(&mut *transaction).await?;
        }
        transaction.commit().await?;
        Ok(Self { pool })
    }

    /// The pool, so tests can close it before dropping their database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

fn decode(row: &PgRow) -> TenantStoreResult<Tenant> {
    let created_at: DateTime<Utc> = row.try_get("created_at")?;
    Ok(Tenant {
        name: row.try_get("name")?,
        rate_limit_rps: limit_from_db("rate_limit_rps", row.try_get("rate_limit_rps")?)?,
        burst: limit_from_db("burst", row.try_get("burst")?)?,
        created_at: created_at.into(),
    })
}

#[async_trait::async_trait]
impl TenantStore for PgTenantStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn create(&self, new: &NewTenant) -> TenantStoreResult<(Tenant, ApiKey)> {
        validate_tenant_name("name", &new.name)?;
        let key = ApiKey::generate()?;
        let created_at = now_micros();
        let inserted = sqlx::query(
            "INSERT INTO router_tenants \
             (name, key_sha256, rate_limit_rps, burst, created_at, key_rotated_at) \
             VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&new.name)
        .bind(key.sha256().as_slice())
        .bind(i64::from(new.rate_limit_rps))
        .bind(i64::from(new.burst))
        .bind(DateTime::<Utc>::from(created_at))
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(TenantStoreError::AlreadyExists {
                name: new.name.clone(),
            });
        }
        let tenant = Tenant {
            name: new.name.clone(),
            rate_limit_rps: new.rate_limit_rps,
            burst: new.burst,
            created_at,
        };
        Ok((tenant, key))
    }

    async fn rotate_key(&self, name: &str) -> TenantStoreResult<ApiKey> {
        validate_tenant_name("name", name)?;
        let key = ApiKey::generate()?;
        let updated = sqlx::query(
            "UPDATE router_tenants SET key_sha256 = $2, key_rotated_at = $3 WHERE name = $1",
        )
        .bind(name)
        .bind(key.sha256().as_slice())
        .bind(DateTime::<Utc>::from(now_micros()))
        .execute(&self.pool)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(TenantStoreError::NotFound {
                name: name.to_owned(),
            });
        }
        Ok(key)
    }

    async fn find_by_key_hash(&self, hash: &[u8; 32]) -> TenantStoreResult<Option<Tenant>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM router_tenants WHERE key_sha256 = $1"
        )))
        .bind(hash.as_slice())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(decode).transpose()
    }

    async fn get(&self, name: &str) -> TenantStoreResult<Option<Tenant>> {
        validate_tenant_name("name", name)?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM router_tenants WHERE name = $1"
        )))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(decode).transpose()
    }

    async fn list(&self) -> TenantStoreResult<Vec<Tenant>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM router_tenants ORDER BY name COLLATE \"C\""
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode).collect()
    }
}

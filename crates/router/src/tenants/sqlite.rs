//! [`SqliteTenantStore`]: the embedded default, `router/tenants.db` under `storage.data_dir`.
//! The key hash is a BLOB with a unique index; times are whole microseconds since the epoch.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};

use super::key::ApiKey;
use super::model::{
    NewTenant, Tenant, from_unix_micros, now_micros, to_unix_micros, validate_tenant_name,
};
use super::store::{TenantStore, TenantStoreError, TenantStoreResult, limit_from_db};

const SCHEMA: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS tenants (
        name TEXT PRIMARY KEY NOT NULL,
        key_sha256 BLOB NOT NULL,
        rate_limit_rps INTEGER NOT NULL,
        burst INTEGER NOT NULL,
        created_at_micros INTEGER NOT NULL,
        key_rotated_at_micros INTEGER NOT NULL
    )",
    "CREATE UNIQUE INDEX IF NOT EXISTS tenants_key_sha256 ON tenants (key_sha256)",
];

const COLUMNS: &str = "name, rate_limit_rps, burst, created_at_micros";

#[derive(Debug)]
pub struct SqliteTenantStore {
    pool: SqlitePool,
}

impl SqliteTenantStore {
    /// Opens (creating when missing, with its directories) the database at `path` and creates
    /// the schema when missing.
    pub async fn open(path: &Path) -> TenantStoreResult<Self> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                TenantStoreError::Internal(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            // The CLI may write while a running router reads: wait instead of failing.
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        for statement in SCHEMA {
            sqlx::query(statement).execute(&pool).await?;
        }
        Ok(Self { pool })
    }

    /// The pool, so tests can close it before removing the file.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

fn decode(row: &SqliteRow) -> TenantStoreResult<Tenant> {
    Ok(Tenant {
        name: row.try_get("name")?,
        rate_limit_rps: limit_from_db("rate_limit_rps", row.try_get("rate_limit_rps")?)?,
        burst: limit_from_db("burst", row.try_get("burst")?)?,
        created_at: from_unix_micros(row.try_get("created_at_micros")?),
    })
}

#[async_trait::async_trait]
impl TenantStore for SqliteTenantStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn create(&self, new: &NewTenant) -> TenantStoreResult<(Tenant, ApiKey)> {
        validate_tenant_name("name", &new.name)?;
        let key = ApiKey::generate()?;
        let created_at = now_micros();
        let inserted = sqlx::query(
            "INSERT INTO tenants \
             (name, key_sha256, rate_limit_rps, burst, created_at_micros, key_rotated_at_micros) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?5) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&new.name)
        .bind(key.sha256().as_slice())
        .bind(i64::from(new.rate_limit_rps))
        .bind(i64::from(new.burst))
        .bind(to_unix_micros(created_at))
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
            "UPDATE tenants SET key_sha256 = ?2, key_rotated_at_micros = ?3 WHERE name = ?1",
        )
        .bind(name)
        .bind(key.sha256().as_slice())
        .bind(to_unix_micros(now_micros()))
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
            "SELECT {COLUMNS} FROM tenants WHERE key_sha256 = ?1"
        )))
        .bind(hash.as_slice())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(decode).transpose()
    }

    async fn get(&self, name: &str) -> TenantStoreResult<Option<Tenant>> {
        validate_tenant_name("name", name)?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM tenants WHERE name = ?1"
        )))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(decode).transpose()
    }

    async fn list(&self) -> TenantStoreResult<Vec<Tenant>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM tenants ORDER BY name"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(decode).collect()
    }
}

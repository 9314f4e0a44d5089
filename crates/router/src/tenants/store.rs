//! Where tenants live: the [`TenantStore`] trait, its error, and [`open_tenant_store`], which
//! picks the backend from `[storage]` the way every service does (Postgres when
//! `database_url` is set, otherwise SQLite under `data_dir`).

use std::fmt::Debug;
use std::sync::Arc;

use tollgate_kit::config::StorageConfig;
use tollgate_kit::error::{ErrorCode, HasErrorCode};

use super::key::ApiKey;
use super::model::{NewTenant, Tenant};
use super::postgres::PgTenantStore;
use super::sqlite::SqliteTenantStore;

/// Why a store call failed. The `Display` text is what a caller may see; details of outages are
/// in fields that [`HasErrorCode::to_status`] logs but does not return.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TenantStoreError {
    #[error("{field}: {problem}")]
    InvalidArgument { field: String, problem: String },
    #[error("tenant {name:?} already exists")]
    AlreadyExists { name: String },
    #[error("tenant {name:?} not found")]
    NotFound { name: String },
    /// The database cannot be reached in time; the caller may retry.
    #[error("tenant store unavailable")]
    Unavailable(String),
    #[error("tenant store error: {0}")]
    Internal(String),
}

pub type TenantStoreResult<T> = Result<T, TenantStoreError>;

impl HasErrorCode for TenantStoreError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidArgument { .. } => ErrorCode::InvalidArgument,
            Self::AlreadyExists { .. } => ErrorCode::AlreadyExists,
            Self::NotFound { .. } => ErrorCode::NotFound,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }

    fn to_status(&self) -> tonic::Status {
        match self {
            Self::Unavailable(detail) => tracing::warn!(%detail, "tenant store unavailable"),
            Self::Internal(detail) => tracing::error!(%detail, "tenant store error"),
            _ => {}
        }
        self.code().status(self.to_string())
    }
}

impl From<sqlx::Error> for TenantStoreError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => Self::Unavailable(error.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}

#[async_trait::async_trait]
pub trait TenantStore: Send + Sync + Debug {
    /// "postgres" or "sqlite", for logs.
    fn backend(&self) -> &'static str;

    /// Creates the tenant with a new key and returns both; the key is never readable again.
    /// `AlreadyExists` when the name is taken, `InvalidArgument` (field `name`) for a bad name.
    async fn create(&self, new: &NewTenant) -> TenantStoreResult<(Tenant, ApiKey)>;

    /// Replaces the tenant's key with a new one; the old key stops matching at once (callers
    /// that cache lookups see it after their TTL). `NotFound` when there is no such tenant.
    async fn rotate_key(&self, name: &str) -> TenantStoreResult<ApiKey>;

    /// The tenant whose current key hashes to `hash`.
    async fn find_by_key_hash(&self, hash: &[u8; 32]) -> TenantStoreResult<Option<Tenant>>;

    async fn get(&self, name: &str) -> TenantStoreResult<Option<Tenant>>;

    /// Every tenant, ordered by name (bytewise, the same on every backend).
    async fn list(&self) -> TenantStoreResult<Vec<Tenant>>;
}

/// The file under `storage.data_dir` for the SQLite backend.
pub const SQLITE_PATH: &str = "router/tenants.db";

/// Opens the store `storage` selects: Postgres when `database_url` is set (an unreachable
/// server fails here, at start-up), otherwise SQLite at `data_dir/router/tenants.db`
/// (directories created). The schema is created when missing.
pub async fn open_tenant_store(storage: &StorageConfig) -> TenantStoreResult<Arc<dyn TenantStore>> {
    Ok(match &storage.database_url {
        Some(url) => Arc::new(PgTenantStore::connect(url).await?),
        None => Arc::new(SqliteTenantStore::open(&storage.data_dir.join(SQLITE_PATH)).await?),
    })
}

/// Stored integers are signed 64-bit; limits are u32.
pub(crate) fn limit_from_db(field: &str, value: i64) -> TenantStoreResult<u32> {
    u32::try_from(value)
        .map_err(|_| TenantStoreError::Internal(format!("stored {field} {value} is not a u32")))
}

//! Tenants and their authentication: who may call the router, and how fast.
//!
//! - A tenant is a name plus a rate limit ([`Tenant`]). Each tenant has exactly one API key
//!   ([`ApiKey`]: `tg_` + 43 base64url characters, 256 random bits). Only the key's SHA-256 is
//!   stored, so a leaked database does not leak usable keys, and a lookup is one indexed equality
//!   on the hash. Because the key carries 256 bits of entropy, an unsalted fast hash is enough:
//!   there is nothing to brute-force.
//! - Storage sits behind [`TenantStore`] with one backend per database ([`PgTenantStore`],
//!   [`SqliteTenantStore`]); [`open_tenant_store`] picks one from `[storage]` like every other
//!   service does. The schema is created with `IF NOT EXISTS` statements at open rather than
//!   sqlx's migrator: several services share one Postgres database and sqlx's bookkeeping table
//!   (`_sqlx_migrations`) is global to it.
//! - [`Authenticator`] turns request metadata into an [`AuthenticatedTenant`]: it caches key
//!   hash → tenant for a few seconds (a rotation or a new tenant takes effect within that TTL,
//!   and the store is not hit per request), then applies the tenant's rate limit with an
//!   in-process, lock-free token bucket (GCRA) per tenant. Limits are per replica: N replicas
//!   admit up to N times the configured rate, the usual trade for not paying a Redis round trip
//!   on every request.
//! - [`admin`] holds the CreateTenant/ListTenants handlers, guarded by a separate admin key whose
//!   SHA-256 (hex) is configured in `[router.auth]`.
//!
//! Used by the router's gRPC layer and by the `tollgate tenant` CLI (which opens the store
//! directly, so operators can create keys with the router down).

pub mod admin;
pub mod auth;
pub mod key;
pub mod model;
pub mod postgres;
pub mod sqlite;
pub mod store;

pub use auth::{AuthConfig, AuthError, AuthenticatedTenant, Authenticator};
pub use key::ApiKey;
pub use model::{NewTenant, Tenant, validate_tenant_name};
pub use postgres::PgTenantStore;
pub use sqlite::SqliteTenantStore;
pub use store::{TenantStore, TenantStoreError, TenantStoreResult, open_tenant_store};

/// A fresh API key for the tenant `name`: creates it (unlimited rate) when missing, otherwise
/// rotates its key. `make run` uses it to print a ready-to-use development key on every start,
/// which is why an existing tenant is not an error here.
pub async fn ensure_dev_tenant(store: &dyn TenantStore, name: &str) -> TenantStoreResult<ApiKey> {
    let new = NewTenant {
        name: name.to_owned(),
        rate_limit_rps: 0,
        burst: 0,
    };
    match store.create(&new).await {
        Ok((_, key)) => Ok(key),
        Err(TenantStoreError::AlreadyExists { .. }) => store.rotate_key(name).await,
        Err(other) => Err(other),
    }
}

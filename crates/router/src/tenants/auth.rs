//! Request authentication: `authorization: Bearer <api key>` metadata → the calling tenant, then
//! the tenant's rate limit.
//!
//! Lookups go through a short-lived cache (key hash → tenant, misses included) so the store is
//! not hit per request and a flood of bad keys cannot hammer it; the price is that a rotated key
//! keeps working, and a changed limit stays old, for up to `cache_ttl_ms`. Rate limits are a
//! GCRA token bucket per tenant: one atomic "theoretical arrival time" updated by
//! compare-and-swap, so admission takes no lock on the hot path and nothing is held across an
//! await.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tollgate_kit::error::{ErrorCode, HasErrorCode};
use tonic::metadata::MetadataMap;

use super::key::{ApiKey, sha256};
use super::model::{Tenant, validate_tenant_name};
use super::store::{TenantStore, TenantStoreError};

/// The tenant of requests when authentication is off and the request names none.
pub const DEFAULT_TENANT: &str = "default";

/// Bound on cached key lookups; beyond it the cache evicts (TinyLFU keeps the busy keys).
const CACHE_CAPACITY: u64 = 100_000;

/// Longest accepted `cache_ttl_ms`: a rotated key must stop working within the hour (and moka
/// refuses absurd TTLs by panicking).
pub const MAX_CACHE_TTL_MS: u64 = 3_600_000;

/// `[router.auth]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Off: every request is accepted as the tenant it names (or `default`), without limits.
    /// For local development only.
    pub enabled: bool,
    /// SHA-256 (hex) of the admin key that CreateTenant/ListTenants require; unset means those
    /// RPCs are refused. Only the hash is configured so the config file holds no secret
    /// (`printf %s "$KEY" | sha256sum`).
    pub admin_key_sha256: Option<String>,
    /// How long a key lookup is trusted: the delay before a rotated key stops working and a
    /// changed rate limit applies. 0 looks every request up; at most one hour.
    pub cache_ttl_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            admin_key_sha256: None,
            cache_ttl_ms: 10_000,
        }
    }
}

impl AuthConfig {
    /// Checks what serde cannot: for start-up, so a typo fails loudly instead of locking the
    /// admin out. The message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(hex_text) = &self.admin_key_sha256
            && parse_sha256_hex(hex_text).is_none()
        {
            return Err(
                "router.auth.admin_key_sha256: must be 64 hexadecimal characters (a SHA-256)"
                    .to_owned(),
            );
        }
        if self.cache_ttl_ms > MAX_CACHE_TTL_MS {
            return Err(format!(
                "router.auth.cache_ttl_ms: must be at most {MAX_CACHE_TTL_MS} (one hour)"
            ));
        }
        Ok(())
    }
}

fn parse_sha256_hex(text: &str) -> Option<[u8; 32]> {
    let mut hash = [0_u8; 32];
    hex::decode_to_slice(text.trim(), &mut hash).ok()?;
    Some(hash)
}

/// Who is calling. `key_checked` is false when authentication is off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatedTenant {
    pub name: String,
    pub key_checked: bool,
}

/// Why a call was refused. Messages never contain the presented key.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing credentials: send `authorization: Bearer <api key>` metadata")]
    MissingCredentials,
    #[error("malformed authorization metadata: {0}")]
    MalformedCredentials(&'static str),
    #[error("unknown or revoked API key")]
    UnknownKey,
    #[error("tenant: the API key belongs to tenant {authenticated:?}, not {requested:?}")]
    TenantMismatch {
        requested: String,
        authenticated: String,
    },
    #[error(
        "tenant {tenant:?} is over its rate limit of {rps} requests per second; retry in {} ms",
        retry_after.as_millis()
    )]
    RateLimited {
        tenant: String,
        rps: u32,
        retry_after: Duration,
    },
    #[error("admin key not configured")]
    AdminKeyNotConfigured,
    #[error("this call needs the admin key")]
    NotAdmin,
    #[error(transparent)]
    Store(#[from] TenantStoreError),
}

impl HasErrorCode for AuthError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::MissingCredentials | Self::MalformedCredentials(_) | Self::UnknownKey => {
                ErrorCode::Unauthenticated
            }
            Self::TenantMismatch { .. } | Self::AdminKeyNotConfigured | Self::NotAdmin => {
                ErrorCode::PermissionDenied
            }
            Self::RateLimited { .. } => ErrorCode::ResourceExhausted,
            Self::Store(error) => error.code(),
        }
    }

    fn to_status(&self) -> tonic::Status {
        match self {
            Self::RateLimited { retry_after, .. } => self
                .code()
                .status_with_retry(self.to_string(), *retry_after),
            Self::Store(error) => error.to_status(),
            other => other.code().status(other.to_string()),
        }
    }
}

impl AuthError {
    /// The caller's status: RESOURCE_EXHAUSTED carries `retry-after-ms`; store outages are
    /// logged with their details and answered without them.
    pub fn into_status(self) -> tonic::Status {
        self.to_status()
    }
}

/// The token of `authorization: Bearer <token>`; the scheme is case-insensitive (RFC 9110).
fn bearer_token(metadata: &MetadataMap) -> Result<&str, AuthError> {
    let value = metadata
        .get("authorization")
        .ok_or(AuthError::MissingCredentials)?;
    let text = value.to_str().map_err(|_| {
        AuthError::MalformedCredentials("the authorization value is not printable ASCII")
    })?;
    let (scheme, token) = text
        .trim()
        .split_once(' ')
        .ok_or(AuthError::MalformedCredentials(
            "expected `Bearer <api key>`",
        ))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::MalformedCredentials(
            "the scheme must be `Bearer`",
        ));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::MalformedCredentials("the API key is empty"));
    }
    Ok(token)
}

/// Checks that the call carries the admin key configured in `config` (compared as SHA-256 in
/// constant time, so response timing says nothing about how close a guess was).
pub fn authenticate_admin(metadata: &MetadataMap, config: &AuthConfig) -> Result<(), AuthError> {
    let Some(configured) = &config.admin_key_sha256 else {
        return Err(AuthError::AdminKeyNotConfigured);
    };
    let Some(expected) = parse_sha256_hex(configured) else {
        tracing::error!("router.auth.admin_key_sha256 is not a hex SHA-256; admin calls refused");
        return Err(AuthError::AdminKeyNotConfigured);
    };
    let presented = sha256(bearer_token(metadata)?);
    if bool::from(presented.ct_eq(&expected)) {
        Ok(())
    } else {
        Err(AuthError::NotAdmin)
    }
}

/// Authenticates requests and applies per-tenant rate limits; one per router process, shared
/// by every call.
pub struct Authenticator {
    store: Arc<dyn TenantStore>,
    config: AuthConfig,
    /// Key hash → tenant, `None` for unknown keys (so repeated bad keys stay off the store).
    by_key_hash: moka::future::Cache<[u8; 32], Option<Tenant>>,
    limiters: RateLimiters,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("store", &self.store.backend())
            .field("config", &self.config)
            .field("cached_keys", &self.by_key_hash.entry_count())
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn new(store: Arc<dyn TenantStore>, config: AuthConfig) -> Self {
        let by_key_hash = moka::future::Cache::builder()
            .max_capacity(CACHE_CAPACITY)
            .time_to_live(Duration::from_millis(
                config.cache_ttl_ms.min(MAX_CACHE_TTL_MS),
            ))
            .build();
        Self {
            store,
            config,
            by_key_hash,
            limiters: RateLimiters::new(),
        }
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// The tenant calling, or why not. `requested_tenant` is the request's `tenant` field
    /// (empty when unset): with authentication on, a non-empty value must name the key's
    /// tenant; with it off, it names the tenant (`default` when empty).
    pub async fn authenticate(
        &self,
        metadata: &MetadataMap,
        requested_tenant: &str,
    ) -> Result<AuthenticatedTenant, AuthError> {
        if !self.config.enabled {
            let name = if requested_tenant.is_empty() {
                DEFAULT_TENANT
            } else {
                validate_tenant_name("tenant", requested_tenant)?;
                requested_tenant
            };
            return Ok(AuthenticatedTenant {
                name: name.to_owned(),
                key_checked: false,
            });
        }
        let key = ApiKey::parse(bearer_token(metadata)?).ok_or(AuthError::MalformedCredentials(
            "not a tollgate API key (`tg_` followed by 43 base64url characters)",
        ))?;
        let hash = key.sha256();
        let store = &self.store;
        let tenant = self
            .by_key_hash
            .try_get_with(hash, async move { store.find_by_key_hash(&hash).await })
            .await
            .map_err(|error| AuthError::Store(error.as_ref().clone()))?
            .ok_or(AuthError::UnknownKey)?;
        if !requested_tenant.is_empty() && requested_tenant != tenant.name {
            return Err(AuthError::TenantMismatch {
                requested: requested_tenant.to_owned(),
                authenticated: tenant.name,
            });
        }
        self.limiters
            .admit(&tenant)
            .map_err(|retry_after| AuthError::RateLimited {
                tenant: tenant.name.clone(),
                rps: tenant.rate_limit_rps,
                retry_after,
            })?;
        Ok(AuthenticatedTenant {
            name: tenant.name,
            key_checked: true,
        })
    }
}

/// One limiter per rate-limited tenant, in this process.
#[derive(Debug)]
struct RateLimiters {
    epoch: Instant,
    by_tenant: RwLock<HashMap<String, Arc<Gcra>>>,
}

impl RateLimiters {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            by_tenant: RwLock::new(HashMap::new()),
        }
    }

    /// Ok, or how long until the tenant may send again.
    fn admit(&self, tenant: &Tenant) -> Result<(), Duration> {
        if tenant.rate_limit_rps == 0 {
            return Ok(());
        }
        let limiter = self.limiter(tenant);
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        limiter.try_acquire(now)
    }

    /// The tenant's limiter; a new one (full bucket) when its limits changed.
    fn limiter(&self, tenant: &Tenant) -> Arc<Gcra> {
        let matches = |gcra: &Gcra| gcra.rps == tenant.rate_limit_rps && gcra.burst == tenant.burst;
        {
            let map = self
                .by_tenant
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(gcra) = map.get(&tenant.name)
                && matches(gcra)
            {
                return gcra.clone();
            }
        }
        let mut map = self
            .by_tenant
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match map.get(&tenant.name) {
            Some(gcra) if matches(gcra) => gcra.clone(),
            _ => {
                let gcra = Arc::new(Gcra::new(tenant.rate_limit_rps, tenant.burst));
                map.insert(tenant.name.clone(), gcra.clone());
                gcra
            }
        }
    }
}

/// Generic cell rate algorithm: the token bucket as one timestamp. A request is admitted when
/// the bucket's "theoretical arrival time" is no more than `tolerance` ahead of now; admitting
/// pushes it one `interval` further.
#[derive(Debug)]
struct Gcra {
    rps: u32,
    burst: u32,
    interval_nanos: u64,
    tolerance_nanos: u64,
    /// Nanoseconds since [`RateLimiters::epoch`].
    theoretical_arrival_nanos: AtomicU64,
}

impl Gcra {
    fn new(rps: u32, burst: u32) -> Self {
        let interval_nanos = (1_000_000_000 / u64::from(rps.max(1))).max(1);
        let capacity = if burst == 0 { rps.max(1) } else { burst };
        Self {
            rps,
            burst,
            interval_nanos,
            tolerance_nanos: interval_nanos.saturating_mul(u64::from(capacity - 1)),
            theoretical_arrival_nanos: AtomicU64::new(0),
        }
    }

    fn try_acquire(&self, now: u64) -> Result<(), Duration> {
        let mut current = self.theoretical_arrival_nanos.load(Ordering::Acquire);
        loop {
            let start = current.max(now);
            let ahead = start - now;
            if ahead > self.tolerance_nanos {
                // Whole milliseconds, rounded up: a client that waits exactly this long succeeds.
                let wait_nanos = ahead - self.tolerance_nanos;
                return Err(Duration::from_millis(wait_nanos.div_ceil(1_000_000)));
            }
            match self.theoretical_arrival_nanos.compare_exchange_weak(
                current,
                start.saturating_add(self.interval_nanos),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => current = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests;

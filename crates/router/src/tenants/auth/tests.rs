//! Tests of the authenticator and the admin check, against a real SQLite store. A counting
//! wrapper shows when the store is (not) consulted.

use std::sync::atomic::AtomicUsize;

use tollgate_kit::error::RETRY_AFTER_MS_METADATA;
use tollgate_test_support::{TestResult, temp_dir};

use super::*;
use crate::tenants::model::NewTenant;
use crate::tenants::sqlite::SqliteTenantStore;
use crate::tenants::store::TenantStoreResult;

#[derive(Debug)]
struct CountingStore {
    inner: SqliteTenantStore,
    lookups: AtomicUsize,
    dir: std::path::PathBuf,
}

impl Drop for CountingStore {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[async_trait::async_trait]
impl TenantStore for CountingStore {
    fn backend(&self) -> &'static str {
        "counting"
    }
    async fn create(&self, new: &NewTenant) -> TenantStoreResult<(Tenant, ApiKey)> {
        self.inner.create(new).await
    }
    async fn rotate_key(&self, name: &str) -> TenantStoreResult<ApiKey> {
        self.inner.rotate_key(name).await
    }
    async fn find_by_key_hash(&self, hash: &[u8; 32]) -> TenantStoreResult<Option<Tenant>> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.inner.find_by_key_hash(hash).await
    }
    async fn get(&self, name: &str) -> TenantStoreResult<Option<Tenant>> {
        self.inner.get(name).await
    }
    async fn list(&self) -> TenantStoreResult<Vec<Tenant>> {
        self.inner.list().await
    }
}

/// A store that must not be reached.
#[derive(Debug)]
struct NoStore;

#[async_trait::async_trait]
impl TenantStore for NoStore {
    fn backend(&self) -> &'static str {
        "none"
    }
    async fn create(&self, _: &NewTenant) -> TenantStoreResult<(Tenant, ApiKey)> {
        Err(TenantStoreError::Internal("no store".into()))
    }
    async fn rotate_key(&self, _: &str) -> TenantStoreResult<ApiKey> {
        Err(TenantStoreError::Internal("no store".into()))
    }
    async fn find_by_key_hash(&self, _: &[u8; 32]) -> TenantStoreResult<Option<Tenant>> {
        Err(TenantStoreError::Unavailable(
            "connection refused to 10.0.0.3".into(),
        ))
    }
    async fn get(&self, _: &str) -> TenantStoreResult<Option<Tenant>> {
        Err(TenantStoreError::Internal("no store".into()))
    }
    async fn list(&self) -> TenantStoreResult<Vec<Tenant>> {
        Err(TenantStoreError::Internal("no store".into()))
    }
}

#[tokio::test]
async fn a_store_outage_is_unavailable_without_details() -> TestResult {
    let auth = Authenticator::new(Arc::new(NoStore), config(10_000));
    let status = status_of(
        auth.authenticate(&with_key(&ApiKey::generate()?)?, "")
            .await,
    )?;
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(status.message(), "tenant store unavailable");
    Ok(())
}

async fn store() -> TestResult<Arc<CountingStore>> {
    let dir = temp_dir("tenants-auth")?;
    Ok(Arc::new(CountingStore {
        inner: SqliteTenantStore::open(&dir.join("tenants.db")).await?,
        lookups: AtomicUsize::new(0),
        dir,
    }))
}

fn config(cache_ttl_ms: u64) -> AuthConfig {
    AuthConfig {
        cache_ttl_ms,
        ..AuthConfig::default()
    }
}

fn bearer(value: &str) -> TestResult<MetadataMap> {
    let mut metadata = MetadataMap::new();
    metadata.insert("authorization", value.parse()?);
    Ok(metadata)
}

fn with_key(key: &ApiKey) -> TestResult<MetadataMap> {
    bearer(&format!("Bearer {}", key.expose()))
}

async fn tenant(store: &CountingStore, name: &str, rps: u32, burst: u32) -> TestResult<ApiKey> {
    let new = NewTenant {
        name: name.into(),
        rate_limit_rps: rps,
        burst,
    };
    Ok(store.create(&new).await?.1)
}

fn status_of(result: Result<AuthenticatedTenant, AuthError>) -> TestResult<tonic::Status> {
    match result {
        Ok(tenant) => Err(format!("accepted as {tenant:?}").into()),
        Err(error) => Ok(error.into_status()),
    }
}

#[tokio::test]
async fn a_valid_key_authenticates_its_tenant() -> TestResult {
    let store = store().await?;
    let key = tenant(&store, "acme", 0, 0).await?;
    let auth = Authenticator::new(store.clone(), config(10_000));
    let expected = AuthenticatedTenant {
        name: "acme".into(),
        key_checked: true,
    };
    assert_eq!(auth.authenticate(&with_key(&key)?, "").await?, expected);
    assert_eq!(auth.authenticate(&with_key(&key)?, "acme").await?, expected);
    // The scheme is case-insensitive.
    let lower = bearer(&format!("bearer {}", key.expose()))?;
    assert_eq!(auth.authenticate(&lower, "").await?, expected);
    Ok(())
}

#[tokio::test]
async fn missing_and_malformed_credentials_are_unauthenticated() -> TestResult {
    let store = store().await?;
    let key = tenant(&store, "acme", 0, 0).await?;
    let auth = Authenticator::new(store.clone(), config(10_000));

    let status = status_of(auth.authenticate(&MetadataMap::new(), "").await)?;
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(
        status.message().contains("authorization: Bearer"),
        "{}",
        status.message()
    );

    for (value, says) in [
        (format!("Basic {}", key.expose()), "scheme must be `Bearer`"),
        (key.expose().to_owned(), "expected `Bearer <api key>`"),
        ("Bearer ".to_owned(), "expected `Bearer <api key>`"),
        ("Bearer    x".to_owned(), "not a tollgate API key"),
        ("Bearer sk-live-123456".to_owned(), "not a tollgate API key"),
    ] {
        let status = status_of(auth.authenticate(&bearer(&value)?, "").await)?;
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{value}");
        assert!(
            status.message().contains(says),
            "{value}: {}",
            status.message()
        );
        assert!(
            !status.message().contains(&key.expose()[3..]),
            "the key is never echoed"
        );
        assert!(
            !status.message().contains("sk-live"),
            "the key is never echoed"
        );
    }
    assert_eq!(
        store.lookups.load(Ordering::SeqCst),
        0,
        "malformed keys never reach the store"
    );
    Ok(())
}

#[tokio::test]
async fn unknown_keys_are_unauthenticated_and_not_echoed() -> TestResult {
    let store = store().await?;
    let auth = Authenticator::new(store.clone(), config(10_000));
    let stranger = ApiKey::generate()?;
    for _ in 0..3 {
        let status = status_of(auth.authenticate(&with_key(&stranger)?, "").await)?;
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(status.message(), "unknown or revoked API key");
    }
    assert_eq!(
        store.lookups.load(Ordering::SeqCst),
        1,
        "the miss is cached too"
    );
    Ok(())
}

#[tokio::test]
async fn another_tenants_name_is_permission_denied() -> TestResult {
    let store = store().await?;
    let key = tenant(&store, "acme", 0, 0).await?;
    tenant(&store, "globex", 0, 0).await?;
    let auth = Authenticator::new(store.clone(), config(10_000));
    let status = status_of(auth.authenticate(&with_key(&key)?, "globex").await)?;
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status.message().starts_with("tenant: "),
        "{}",
        status.message()
    );
    assert!(status.message().contains("\"acme\""));
    Ok(())
}

#[tokio::test]
async fn disabled_auth_takes_the_requested_tenant_or_default() -> TestResult {
    let store = store().await?;
    let auth = Authenticator::new(
        store.clone(),
        AuthConfig {
            enabled: false,
            ..config(10_000)
        },
    );
    let anonymous = auth.authenticate(&MetadataMap::new(), "").await?;
    assert_eq!(
        anonymous,
        AuthenticatedTenant {
            name: "default".into(),
            key_checked: false
        }
    );
    let named = auth
        .authenticate(&bearer("Bearer whatever")?, "team-a")
        .await?;
    assert_eq!(named.name, "team-a");
    let status = status_of(auth.authenticate(&MetadataMap::new(), "bad name").await)?;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().starts_with("tenant: "),
        "{}",
        status.message()
    );
    assert_eq!(store.lookups.load(Ordering::SeqCst), 0);
    Ok(())
}

#[tokio::test]
async fn rate_limit_exhaustion_says_when_to_retry_then_recovers() -> TestResult {
    let store = store().await?;
    // 1 per second with a burst of 3: three at once, then one a second (long enough that a
    // loaded machine does not refill the bucket between two calls of this test).
    let key = tenant(&store, "acme", 1, 3).await?;
    let unlimited = tenant(&store, "free", 0, 0).await?;
    let auth = Authenticator::new(store.clone(), config(10_000));
    for _ in 0..3 {
        auth.authenticate(&with_key(&key)?, "").await?;
    }
    let status = status_of(auth.authenticate(&with_key(&key)?, "").await)?;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(
        status.message().contains("\"acme\""),
        "{}",
        status.message()
    );
    let retry_after_ms: u64 = status
        .metadata()
        .get(RETRY_AFTER_MS_METADATA)
        .ok_or("no retry-after-ms")?
        .to_str()?
        .parse()?;
    assert!(
        (1..=1000).contains(&retry_after_ms),
        "one token's worth at most: {retry_after_ms}"
    );
    // Other tenants are not affected.
    for _ in 0..20 {
        auth.authenticate(&with_key(&unlimited)?, "").await?;
    }
    tokio::time::sleep(Duration::from_millis(retry_after_ms)).await;
    auth.authenticate(&with_key(&key)?, "").await?;
    let status = status_of(auth.authenticate(&with_key(&key)?, "").await)?;
    assert_eq!(
        status.code(),
        tonic::Code::ResourceExhausted,
        "one token came back, not the burst"
    );
    Ok(())
}

#[test]
fn the_bucket_admits_burst_then_rate() {
    let gcra = Gcra::new(10, 0); // burst 0 = one second's worth
    let second = 1_000_000_000;
    let admitted = (0..50).filter(|_| gcra.try_acquire(second).is_ok()).count();
    assert_eq!(admitted, 10);
    assert_eq!(
        gcra.try_acquire(second),
        Err(Duration::from_millis(100)),
        "the next token is 100 ms away"
    );
    assert_eq!(
        gcra.try_acquire(second + 99_000_000),
        Err(Duration::from_millis(1))
    );
    assert_eq!(gcra.try_acquire(second + 100_000_000), Ok(()));
    // After a long quiet spell the bucket is full again, never fuller.
    let later = 60 * second;
    let admitted = (0..50).filter(|_| gcra.try_acquire(later).is_ok()).count();
    assert_eq!(admitted, 10);
}

#[tokio::test]
async fn the_cache_spares_the_store_and_sees_rotation_after_its_ttl() -> TestResult {
    let store = store().await?;
    let old_key = tenant(&store, "acme", 0, 0).await?;
    // Long enough that the steps before the "still trusted" check fit in it on a busy machine.
    let ttl = Duration::from_millis(1000);
    let auth = Authenticator::new(store.clone(), config(1000));
    for _ in 0..5 {
        auth.authenticate(&with_key(&old_key)?, "").await?;
    }
    assert_eq!(
        store.lookups.load(Ordering::SeqCst),
        1,
        "one lookup, then the cache"
    );

    let new_key = store.rotate_key("acme").await?;
    assert_eq!(
        auth.authenticate(&with_key(&new_key)?, "").await?.name,
        "acme",
        "a new key works at once"
    );
    // Within the TTL the old key is still trusted: that is the documented delay.
    auth.authenticate(&with_key(&old_key)?, "").await?;
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    let status = status_of(auth.authenticate(&with_key(&old_key)?, "").await)?;
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    auth.authenticate(&with_key(&new_key)?, "").await?;
    Ok(())
}

#[test]
fn changed_limits_take_a_new_bucket() {
    let limiters = RateLimiters::new();
    let mut tenant = Tenant {
        name: "acme".into(),
        rate_limit_rps: 1,
        burst: 1,
        created_at: std::time::SystemTime::now(),
    };
    assert_eq!(limiters.admit(&tenant), Ok(()));
    assert!(
        limiters.admit(&tenant).is_err(),
        "the bucket of one is empty"
    );
    // The store now says 100/s (seen once the cached lookup expires): the old bucket goes.
    tenant.rate_limit_rps = 100;
    tenant.burst = 5;
    let admitted = (0..10).filter(|_| limiters.admit(&tenant).is_ok()).count();
    assert_eq!(admitted, 5);
    tenant.rate_limit_rps = 0;
    assert!(
        (0..100).all(|_| limiters.admit(&tenant).is_ok()),
        "0 is unlimited"
    );
}

fn admin_config(key: &str) -> AuthConfig {
    AuthConfig {
        admin_key_sha256: Some(hex::encode(sha256(key))),
        ..AuthConfig::default()
    }
}

#[test]
fn the_admin_key_is_checked_by_its_hash() -> TestResult {
    let config = admin_config("s3cret-admin");
    assert_eq!(config.validate(), Ok(()));
    assert_eq!(
        authenticate_admin(&bearer("Bearer s3cret-admin")?, &config),
        Ok(())
    );
    assert_eq!(
        authenticate_admin(&bearer("Bearer s3cret-admiN")?, &config),
        Err(AuthError::NotAdmin)
    );
    assert_eq!(
        authenticate_admin(&MetadataMap::new(), &config),
        Err(AuthError::MissingCredentials)
    );
    let status = AuthError::NotAdmin.into_status();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    Ok(())
}

#[test]
fn no_admin_key_means_no_admin_calls() -> TestResult {
    let status = authenticate_admin(&bearer("Bearer anything")?, &AuthConfig::default())
        .err()
        .ok_or("admitted")?
        .into_status();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(status.message(), "admin key not configured");
    let typo = AuthConfig {
        admin_key_sha256: Some("abc".into()),
        ..AuthConfig::default()
    };
    assert!(
        typo.validate()
            .is_err_and(|e| e.starts_with("router.auth.admin_key_sha256"))
    );
    assert_eq!(
        authenticate_admin(&bearer("Bearer abc")?, &typo),
        Err(AuthError::AdminKeyNotConfigured)
    );
    Ok(())
}

#[test]
fn config_defaults_and_unknown_keys() -> TestResult {
    let parsed: AuthConfig = serde_json::from_str("{}")?;
    assert_eq!(parsed, AuthConfig::default());
    assert!(parsed.enabled);
    assert_eq!(parsed.cache_ttl_ms, 10_000);
    assert!(serde_json::from_str::<AuthConfig>(r#"{"enabeld": false}"#).is_err());
    let forever = AuthConfig {
        cache_ttl_ms: u64::MAX,
        ..AuthConfig::default()
    };
    assert!(
        forever
            .validate()
            .is_err_and(|e| e.starts_with("router.auth.cache_ttl_ms"))
    );
    // Even unvalidated, a huge TTL is clamped rather than panicking inside the cache.
    let _ = Authenticator::new(Arc::new(NoStore), forever);
    Ok(())
}

fn require_send<T: Send>(_: &T) {}

/// tonic handlers need Send futures; so does anything the router spawns.
#[test]
fn futures_and_the_authenticator_are_send() {
    fn require_send_sync<T: Send + Sync>() {}
    require_send_sync::<Authenticator>();
    let auth = Authenticator::new(Arc::new(NoStore), AuthConfig::default());
    let metadata = MetadataMap::new();
    require_send(&auth.authenticate(&metadata, ""));
    let config = AuthConfig::default();
    let store = NoStore;
    require_send(&crate::tenants::admin::create_tenant(
        &store,
        &config,
        tonic::Request::new(tollgate_proto::v1::CreateTenantRequest::default()),
    ));
    require_send(&crate::tenants::admin::list_tenants(
        &store,
        &config,
        tonic::Request::new(tollgate_proto::v1::ListTenantsRequest::default()),
    ));
}

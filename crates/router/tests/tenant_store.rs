//! The one test suite of the `TenantStore` trait, run against every backend: SQLite (a fresh
//! file per test) and Postgres (a fresh database per test on `DATABASE_URL`, required).

use std::time::{Duration, SystemTime};

use tollgate_router::tenants::{
    ApiKey, NewTenant, PgTenantStore, SqliteTenantStore, TenantStore, TenantStoreError,
    ensure_dev_tenant, open_tenant_store,
};
use tollgate_test_support::postgres::TestDatabase;
use tollgate_test_support::{TestResult, temp_dir};

fn new_tenant(name: &str, rps: u32, burst: u32) -> NewTenant {
    NewTenant {
        name: name.to_owned(),
        rate_limit_rps: rps,
        burst,
    }
}

async fn create_then_find_by_key_hash(store: &dyn TenantStore) -> TestResult {
    let before = SystemTime::now() - Duration::from_secs(1);
    let (created, key) = store.create(&new_tenant("acme", 50, 100)).await?;
    assert_eq!(created.name, "acme");
    assert_eq!((created.rate_limit_rps, created.burst), (50, 100));
    assert!(created.created_at >= before && created.created_at <= SystemTime::now());
    assert!(
        ApiKey::parse(key.expose()).is_some(),
        "a tollgate-shaped key"
    );

    assert_eq!(
        store.find_by_key_hash(&key.sha256()).await?,
        Some(created.clone()),
        "every field round-trips"
    );
    assert_eq!(store.get("acme").await?, Some(created));
    assert_eq!(store.get("nobody").await?, None);
    assert_eq!(store.find_by_key_hash(&[7; 32]).await?, None);
    Ok(())
}

async fn duplicate_names_are_refused(store: &dyn TenantStore) -> TestResult {
    let (first, first_key) = store.create(&new_tenant("acme", 1, 1)).await?;
    let duplicate = store.create(&new_tenant("acme", 9, 9)).await;
    assert_eq!(
        duplicate.err(),
        Some(TenantStoreError::AlreadyExists {
            name: "acme".into()
        })
    );
    // The first tenant and its key are untouched.
    assert_eq!(store.get("acme").await?, Some(first.clone()));
    assert_eq!(
        store.find_by_key_hash(&first_key.sha256()).await?,
        Some(first)
    );
    // Names are case-sensitive, as everywhere else in tollgate.
    store.create(&new_tenant("ACME", 0, 0)).await?;
    Ok(())
}

async fn rotation_kills_the_old_key(store: &dyn TenantStore) -> TestResult {
    let (tenant, old_key) = store.create(&new_tenant("acme", 5, 0)).await?;
    let (other, other_key) = store.create(&new_tenant("other", 0, 0)).await?;
    let new_key = store.rotate_key("acme").await?;
    assert_ne!(new_key, old_key);
    assert_eq!(store.find_by_key_hash(&old_key.sha256()).await?, None);
    assert_eq!(
        store.find_by_key_hash(&new_key.sha256()).await?,
        Some(tenant.clone()),
        "same tenant, same limits and creation time"
    );
    assert_eq!(
        store.find_by_key_hash(&other_key.sha256()).await?,
        Some(other),
        "other tenants keep their keys"
    );
    let missing = store.rotate_key("nobody").await;
    assert_eq!(
        missing.err(),
        Some(TenantStoreError::NotFound {
            name: "nobody".into()
        })
    );
    Ok(())
}

async fn list_is_ordered_by_name(store: &dyn TenantStore) -> TestResult {
    assert!(store.list().await?.is_empty());
    for name in ["beta", "Zulu", "alpha", "a_b", "a-b", "a.b", "9", "10"] {
        store.create(&new_tenant(name, 0, 0)).await?;
    }
    let names: Vec<String> = store.list().await?.into_iter().map(|t| t.name).collect();
    // Bytewise, not a locale's order (which would put "Zulu" last and ignore punctuation);
    // Postgres sorts with COLLATE "C" whatever the database's collation.
    assert_eq!(
        names,
        ["10", "9", "Zulu", "a-b", "a.b", "a_b", "alpha", "beta"],
        "bytewise order"
    );
    Ok(())
}

async fn names_are_validated(store: &dyn TenantStore) -> TestResult {
    for bad in ["", "has space", "slash/y", "ü", &"x".repeat(65)] {
        match store.create(&new_tenant(bad, 0, 0)).await {
            Err(TenantStoreError::InvalidArgument { field, .. }) => assert_eq!(field, "name"),
            other => panic!("{bad:?} accepted or wrongly refused: {other:?}"),
        }
        assert!(matches!(
            store.rotate_key(bad).await,
            Err(TenantStoreError::InvalidArgument { .. })
        ));
    }
    let longest = "x".repeat(64);
    store.create(&new_tenant(&longest, 0, 0)).await?;
    store.create(&new_tenant("a.b_c-9", 0, 0)).await?;
    assert_eq!(store.list().await?.len(), 2, "nothing invalid was stored");
    Ok(())
}

async fn limits_keep_their_full_range(store: &dyn TenantStore) -> TestResult {
    let (created, key) = store.create(&new_tenant("max", u32::MAX, u32::MAX)).await?;
    let found = store.find_by_key_hash(&key.sha256()).await?;
    assert_eq!(
        found.map(|t| (t.rate_limit_rps, t.burst)),
        Some((u32::MAX, u32::MAX))
    );
    assert_eq!(created.rate_limit_rps, u32::MAX);
    Ok(())
}

async fn dev_tenant_gets_a_fresh_key_each_time(store: &dyn TenantStore) -> TestResult {
    let first = ensure_dev_tenant(store, "dev").await?;
    let second = ensure_dev_tenant(store, "dev").await?;
    assert_ne!(first, second);
    assert_eq!(store.find_by_key_hash(&first.sha256()).await?, None);
    let found = store.find_by_key_hash(&second.sha256()).await?;
    assert_eq!(found.map(|t| t.name), Some("dev".to_owned()));
    assert_eq!(store.list().await?.len(), 1);
    Ok(())
}

/// Runs each check against a fresh store of each backend.
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() -> TestResult {
                    let dir = temp_dir(concat!("tenants-", stringify!($name)))?;
                    let store = SqliteTenantStore::open(&dir.join("tenants.db")).await?;
                    let result = super::$name(&store).await;
                    store.pool().close().await;
                    let _ = std::fs::remove_dir_all(&dir);
                    result
                }
            )*
        }
        mod postgres {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() -> TestResult {
                    let database = TestDatabase::create().await?;
                    let store = PgTenantStore::connect(&database.url).await?;
                    let result = super::$name(&store).await;
                    store.pool().close().await;
                    database.drop_database().await?;
                    result
                }
            )*
        }
    };
}

suite!(
    create_then_find_by_key_hash,
    duplicate_names_are_refused,
    rotation_kills_the_old_key,
    list_is_ordered_by_name,
    names_are_validated,
    limits_keep_their_full_range,
    dev_tenant_gets_a_fresh_key_each_time,
);

#[tokio::test]
async fn open_picks_sqlite_under_the_data_dir_and_reopens_it() -> TestResult {
    let dir = temp_dir("tenants-open")?;
    let storage = tollgate_kit::config::StorageConfig {
        data_dir: dir.join("nested"),
        ..Default::default()
    };
    let store = open_tenant_store(&storage).await?;
    assert_eq!(store.backend(), "sqlite");
    let (_, key) = store.create(&new_tenant("acme", 0, 0)).await?;
    drop(store);
    assert!(dir.join("nested/router/tenants.db").is_file());
    let reopened = open_tenant_store(&storage).await?;
    let found = reopened.find_by_key_hash(&key.sha256()).await?;
    assert_eq!(found.map(|t| t.name), Some("acme".to_owned()));
    drop(reopened);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test]
async fn open_picks_postgres_when_a_url_is_set_and_the_schema_is_idempotent() -> TestResult {
    let database = TestDatabase::create().await?;
    let storage = tollgate_kit::config::StorageConfig {
        database_url: Some(database.url.clone()),
        ..Default::default()
    };
    // Replicas starting together each create the schema.
    let (first, second) = tokio::join!(open_tenant_store(&storage), open_tenant_store(&storage));
    let (first, second) = (first?, second?);
    assert_eq!(first.backend(), "postgres");
    let (_, key) = first.create(&new_tenant("acme", 0, 0)).await?;
    let found = second.find_by_key_hash(&key.sha256()).await?;
    assert_eq!(found.map(|t| t.name), Some("acme".to_owned()));
    drop((first, second));
    database.drop_database().await?;
    Ok(())
}

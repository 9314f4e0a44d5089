//! The test stores `make test` provides are real and isolated: a fresh Postgres database with
//! pgvector per test, and Redis with a key prefix per test.

use tollgate_test_support::TestResult;
use tollgate_test_support::postgres::TestDatabase;

#[tokio::test]
async fn each_test_gets_its_own_postgres_database_with_pgvector() -> TestResult {
    let first = TestDatabase::create().await?;
    let second = TestDatabase::create().await?;
    assert_ne!(first.name, second.name);
    let pool = sqlx::PgPool::connect(&first.url).await?;
    sqlx::query("CREATE TABLE only_here (embedding vector(3))")
        .execute(&pool)
        .await?;
    let distance: f64 = sqlx::query_scalar("SELECT '[1,0,0]'::vector <=> '[0,1,0]'::vector")
        .fetch_one(&pool)
        .await?;
    assert!(
        (distance - 1.0).abs() < 1e-9,
        "cosine distance of orthogonal vectors is 1, got {distance}"
    );
    pool.close().await;

    let other = sqlx::PgPool::connect(&second.url).await?;
    let tables: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE tablename = 'only_here'")
            .fetch_one(&other)
            .await?;
    assert_eq!(tables, 0, "databases are isolated");
    other.close().await;

    first.drop_database().await?;
    second.drop_database().await
}

#[tokio::test]
async fn redis_prefixes_isolate_and_clean_up() -> TestResult {
    let url = tollgate_test_support::redis::redis_url()?;
    let prefix = tollgate_test_support::redis::unique_prefix();
    assert_ne!(prefix, tollgate_test_support::redis::unique_prefix());
    let client = redis::Client::open(url.as_str())?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}a"))
        .arg("1")
        .query_async(&mut connection)
        .await?;
    tollgate_test_support::redis::delete_prefix(&url, &prefix).await?;
    let left: Option<String> = redis::cmd("GET")
        .arg(format!("{prefix}a"))
        .query_async(&mut connection)
        .await?;
    assert_eq!(left, None);
    Ok(())
}

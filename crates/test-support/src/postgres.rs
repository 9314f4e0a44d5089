//! A fresh Postgres database per test, on the server `DATABASE_URL` names (`make test` sets it
//! up with pgvector through scripts/services.sh). Tests never share tables, so they run in
//! parallel and leave nothing behind when they finish.

use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::Connection;
use sqlx::postgres::PgConnection;

use crate::TestResult;

/// One database, created for one test. Call [`TestDatabase::drop_database`] at the end; a test
/// that fails before leaves its database (named `tollgate_test_*`) behind for inspection.
#[derive(Debug)]
pub struct TestDatabase {
    pub url: String,
    pub name: String,
    admin_url: String,
}

/// The Postgres server for tests: `DATABASE_URL`, required (no silent skipping).
pub fn database_url() -> TestResult<String> {
    std::env::var("DATABASE_URL").map_err(|_| {
        "DATABASE_URL is not set: run the tests with `make test`, or `eval \"$(scripts/services.sh env)\"` first".into()
    })
}

impl TestDatabase {
    /// Creates an empty database with the `vector` extension available.
    pub async fn create() -> TestResult<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let admin_url = database_url()?;
        let name = format!(
            "tollgate_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .subsec_nanos()
        );
        // The name is ours (digits and underscores only), so formatting it into SQL is safe.
        let mut admin = PgConnection::connect(&admin_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        let url = with_database(&admin_url, &name)?;
        let mut connection = PgConnection::connect(&url).await?;
        sqlx::query("CREATE EXTENSION IF NOT EXISTS vector")
            .execute(&mut connection)
            .await?;
        connection.close().await?;
        Ok(Self {
            url,
            name,
            admin_url,
        })
    }

    /// Drops the database, disconnecting whoever is still connected.
    pub async fn drop_database(self) -> TestResult {
        let mut admin = PgConnection::connect(&self.admin_url).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut admin)
        .await?;
        admin.close().await?;
        Ok(())
    }
}

/// `url` with its database path replaced by `name`.
fn with_database(url: &str, name: &str) -> TestResult<String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base
        .find("://")
        .map(|i| i + 3)
        .ok_or("DATABASE_URL has no scheme")?;
    let path_start = base[authority_start..]
        .find('/')
        .map(|i| i + authority_start)
        .unwrap_or(base.len());
    let mut rebuilt = format!("{}/{name}", &base[..path_start]);
    if let Some(query) = query {
        rebuilt.push('?');
        rebuilt.push_str(query);
    }
    Ok(rebuilt)
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_the_database_keeping_the_query() {
        assert_eq!(
            super::with_database("postgres://u@h:5433/postgres?sslmode=disable", "t1").ok(),
            Some("postgres://u@h:5433/t1?sslmode=disable".to_owned())
        );
        assert_eq!(
            super::with_database("postgres://u@h:5433", "t1").ok(),
            Some("postgres://u@h:5433/t1".to_owned())
        );
    }
}

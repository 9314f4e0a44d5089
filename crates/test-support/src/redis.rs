//! Redis for tests: the server `REDIS_URL` names (`make test` sets it up), and a key prefix of
//! its own per test so that parallel tests never see each other's keys.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::TestResult;

/// The Redis server for tests: `REDIS_URL`, required (no silent skipping).
pub fn redis_url() -> TestResult<String> {
    std::env::var("REDIS_URL").map_err(|_| {
        "REDIS_URL is not set: run the tests with `make test`, or `eval \"$(scripts/services.sh env)\"` first".into()
    })
}

/// A key prefix unique to this test: `tollgate-test:<pid>:<n>:`.
pub fn unique_prefix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "tollgate-test:{}:{}:",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Deletes every key under `prefix` (SCAN, never KEYS, so a shared server is not blocked).
pub async fn delete_prefix(url: &str, prefix: &str) -> TestResult {
    let client = redis::Client::open(url)?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut connection)
            .await?;
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut connection)
                .await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

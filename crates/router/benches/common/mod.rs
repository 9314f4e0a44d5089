//! Helpers shared by the router's gateway benchmarks: environment knobs, percentiles, and a
//! development key so that the benchmarks run with authentication on.
#![allow(dead_code)]

use std::time::Duration;

use tollgate::config::Config;
use tollgate_test_support::TestResult;

pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The p-th percentile (nearest rank) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Moves `config`'s stores to a fresh directory and creates tenant `bench` there, so that
/// authentication stays on (a cached key lookup and a rate-limit check per request). Returns
/// the directory (remove it afterwards) and the tenant's API key.
pub async fn bench_tenant(
    config: &mut Config,
    label: &str,
) -> TestResult<(std::path::PathBuf, String)> {
    let data_dir = tollgate_test_support::temp_dir(label)?;
    config.storage.data_dir = data_dir.clone();
    let tenants = tollgate_router::tenants::open_tenant_store(&config.storage).await?;
    let key = tollgate_router::tenants::ensure_dev_tenant(tenants.as_ref(), "bench").await?;
    Ok((data_dir, key.expose().to_owned()))
}

/// `message` with the API key as `authorization: Bearer` metadata.
pub fn authed<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = format!("Bearer {key}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

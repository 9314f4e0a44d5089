//! Helpers shared by the cost-tracker's integration tests: usage entries and temporary
//! directories.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, TimeZone, Utc};
use tollgate_cost_tracker::model::UsageEntry;
use tollgate_kit::money::Usd;

pub fn usd(text: &str) -> Usd {
    Usd::parse("test", text).unwrap_or_else(|e| panic!("{e}"))
}

pub fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
        .single()
        .unwrap_or_else(|| panic!("bad date"))
}

/// A deterministic entry; `n` picks tenant, model, tier, time and an awkward cost.
pub fn entry(request_id: &str, attempt: u32, n: u64) -> UsageEntry {
    let tenants = ["acme", "globex", "initech"];
    let models = [
        ("openai", "gpt-4o-mini"),
        ("anthropic", "claude-haiku"),
        ("vllm", "qwen"),
    ];
    let (provider, model) = models[(n % 3) as usize];
    UsageEntry {
        request_id: request_id.to_owned(),
        attempt,
        timestamp: at(
            2026,
            3,
            1 + (n % 20) as u32,
            (n % 24) as u32,
            (n % 60) as u32,
        ) + chrono::Duration::microseconds((n * 7919 % 1_000_000) as i64),
        tenant: tenants[(n % 3) as usize].to_owned(),
        user: format!("user-{}", n % 5),
        agent: if n.is_multiple_of(2) {
            "coder".into()
        } else {
            "support, \"tier 1\"".into()
        },
        provider: provider.to_owned(),
        model: model.to_owned(),
        tier: (1 + n % 4) as i16,
        input_tokens: (100 + n) as i64,
        output_tokens: (10 + n % 50) as i64,
        cached_input_tokens: (n % 100) as i64,
        cache_write_input_tokens: 0,
        estimated: n.is_multiple_of(7),
        // Sub-micro-dollar digits: sums must stay exact.
        cost_usd: Usd::from_picos(i128::from(37_500 + n * 1_000_003)).unwrap_or_default(),
        latency_micros: (1000 + n) as i64,
        token_cache_hit_tokens: (n % 13) as i64,
        routing_reason: "complexity_low,casebank_hit".into(),
        query_sha256: format!("{:064x}", n),
        status: 1,
    }
}

/// A fresh directory under the system temp dir.
pub fn temp_dir(label: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tollgate-cost-{label}-{}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        Utc::now().timestamp_micros()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    dir
}

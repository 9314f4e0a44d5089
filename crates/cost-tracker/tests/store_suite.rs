//! The one test suite of the `UsageStore` trait, run against every backend: Postgres (a fresh
//! database per test on DATABASE_URL) and SQLite (a fresh file per test).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{at, entry, usd};
use tokio::sync::mpsc;
use tollgate_cost_tracker::model::{
    Budget, BudgetPeriod, BudgetScope, ExportQuery, GroupBy, RecordOutcome, ReserveOutcome,
    ReserveRequest, SpendFilter, SpendQuery, TimeRange, UsageEntry,
};
use tollgate_cost_tracker::store::UsageStore;
use tollgate_kit::money::Usd;
use tollgate_test_support::TestResult;

fn march() -> TimeRange {
    TimeRange {
        start: at(2026, 3, 1, 0, 0),
        end: at(2026, 4, 1, 0, 0),
    }
}

fn query(group_by: GroupBy) -> SpendQuery {
    SpendQuery {
        filter: SpendFilter::default(),
        group_by,
        range: march(),
    }
}

async fn export_all<S: UsageStore>(store: &S, range: TimeRange) -> TestResult<Vec<UsageEntry>> {
    let (rows_tx, mut rows_rx) = mpsc::channel(16);
    let export_query = ExportQuery {
        filter: SpendFilter::default(),
        range,
    };
    let (sent, rows) = tokio::join!(store.export(&export_query, rows_tx), async move {
        let mut rows = Vec::new();
        while let Some(row) = rows_rx.recv().await {
            rows.push(row);
        }
        rows
    });
    assert_eq!(sent? as usize, rows.len());
    Ok(rows)
}

fn total(rows: &[tollgate_cost_tracker::model::SpendRow]) -> Usd {
    rows.iter().fold(Usd::ZERO, |sum, row| {
        sum.checked_add(row.cost_usd).unwrap_or_default()
    })
}

async fn a_record_sent_twice_counts_once<S: UsageStore + Clone>(store: &S) -> TestResult {
    let a = entry("req-a", 1, 1);
    let b = entry("req-a", 2, 2);
    let outcomes = store
        .record_batch(&[a.clone(), b.clone(), a.clone()])
        .await?;
    assert_eq!(
        outcomes,
        vec![
            RecordOutcome::Stored,
            RecordOutcome::Stored,
            RecordOutcome::Duplicate
        ]
    );
    let again = store.record_batch(&[b.clone(), a.clone()]).await?;
    assert_eq!(
        again,
        vec![RecordOutcome::Duplicate, RecordOutcome::Duplicate]
    );
    let rows = store.spend(&query(GroupBy::Tenant)).await?;
    assert_eq!(rows.iter().map(|r| r.requests).sum::<i64>(), 2);
    assert_eq!(
        total(&rows),
        a.cost_usd.checked_add(b.cost_usd).unwrap_or_default()
    );
    Ok(())
}

async fn concurrent_duplicates_and_overlapping_writers_count_once<S: UsageStore + Clone>(
    store: &S,
) -> TestResult {
    let entries: Vec<UsageEntry> = (0..200)
        .map(|n| entry(&format!("req-{n:04}"), 1, n))
        .collect();
    let mut tasks = Vec::new();
    for writer in 0..12u64 {
        let store = store.clone();
        // Each writer sends an overlapping window, in its own order, in several batches.
        let mut mine: Vec<UsageEntry> = entries
            .iter()
            .filter(|e| {
                !(e.request_id.len() as u64 + writer).is_multiple_of(3) || writer.is_multiple_of(2)
            })
            .cloned()
            .collect();
        if writer % 2 == 1 {
            mine.reverse();
        }
        let shift = (writer as usize * 17) % mine.len().max(1);
        mine.rotate_left(shift);
        tasks.push(tokio::spawn(async move {
            let mut stored = 0usize;
            for batch in mine.chunks(37) {
                let outcomes = store.record_batch(batch).await?;
                stored += outcomes
                    .iter()
                    .filter(|o| **o == RecordOutcome::Stored)
                    .count();
            }
            Ok::<usize, tollgate_cost_tracker::store::StoreError>(stored)
        }));
    }
    let mut stored = 0;
    for task in tasks {
        stored += task.await??;
    }
    assert_eq!(
        stored,
        entries.len(),
        "each record stored exactly once across writers"
    );
    let rows = store.spend(&query(GroupBy::Model)).await?;
    assert_eq!(rows.iter().map(|r| r.requests).sum::<i64>(), 200);
    let expected = entries.iter().fold(Usd::ZERO, |sum, e| {
        sum.checked_add(e.cost_usd).unwrap_or_default()
    });
    assert_eq!(total(&rows), expected);
    assert_eq!(export_all(store, march()).await?.len(), 200);
    Ok(())
}

async fn rollups_equal_raw_sums_exactly<S: UsageStore + Clone>(store: &S) -> TestResult {
    let entries: Vec<UsageEntry> = (0..600)
        .map(|n| entry(&format!("r{n}"), 1 + (n % 2) as u32, n))
        .collect();
    for batch in entries.chunks(100) {
        store.record_batch(batch).await?;
    }
    for group_by in [
        GroupBy::Tenant,
        GroupBy::Provider,
        GroupBy::Model,
        GroupBy::Agent,
        GroupBy::Tier,
        GroupBy::Day,
        GroupBy::Month,
    ] {
        let mut expected: BTreeMap<String, (Usd, i64, i64, i64, i64, i64)> = BTreeMap::new();
        for e in &entries {
            let key = match group_by {
                GroupBy::Tenant => e.tenant.clone(),
                GroupBy::Provider => e.provider.clone(),
                GroupBy::Model => e.model.clone(),
                GroupBy::Agent => e.agent.clone(),
                GroupBy::Tier => e.tier.to_string(),
                GroupBy::Day => e.timestamp.format("%Y-%m-%d").to_string(),
                GroupBy::Month => e.timestamp.format("%Y-%m").to_string(),
            };
            let slot = expected.entry(key).or_insert((Usd::ZERO, 0, 0, 0, 0, 0));
            slot.0 = slot.0.checked_add(e.cost_usd).unwrap_or_default();
            slot.1 += 1;
            slot.2 += e.input_tokens;
            slot.3 += e.output_tokens;
            slot.4 += e.cached_input_tokens;
            slot.5 += i64::from(e.estimated);
        }
        let rows = store.spend(&query(group_by)).await?;
        let got: BTreeMap<String, (Usd, i64, i64, i64, i64, i64)> = rows
            .into_iter()
            .map(|r| {
                (
                    r.key,
                    (
                        r.cost_usd,
                        r.requests,
                        r.input_tokens,
                        r.output_tokens,
                        r.cached_input_tokens,
                        r.estimated_requests,
                    ),
                )
            })
            .collect();
        assert_eq!(got, expected, "group by {group_by:?}");
    }
    // Filters and a range of whole hours.
    let filtered = store
        .spend(&SpendQuery {
            filter: SpendFilter {
                tenant: "acme".into(),
                tier: 2,
                ..Default::default()
            },
            group_by: GroupBy::Model,
            range: TimeRange {
                start: at(2026, 3, 2, 0, 0),
                end: at(2026, 3, 10, 5, 0),
            },
        })
        .await?;
    let expected = entries
        .iter()
        .filter(|e| e.tenant == "acme" && e.tier == 2)
        .filter(|e| e.timestamp >= at(2026, 3, 2, 0, 0) && e.timestamp < at(2026, 3, 10, 5, 0))
        .fold(Usd::ZERO, |sum, e| {
            sum.checked_add(e.cost_usd).unwrap_or_default()
        });
    assert_eq!(total(&filtered), expected);
    // Partial days at both edges (hourly rollups) around whole days (daily rollups), and a
    // range inside one day.
    for (start, end) in [
        (at(2026, 3, 4, 13, 0), at(2026, 3, 7, 2, 0)),
        (at(2026, 3, 5, 3, 0), at(2026, 3, 5, 17, 0)),
    ] {
        let rows = store
            .spend(&SpendQuery {
                filter: SpendFilter::default(),
                group_by: GroupBy::Day,
                range: TimeRange { start, end },
            })
            .await?;
        let inside: Vec<&UsageEntry> = entries
            .iter()
            .filter(|e| e.timestamp >= start && e.timestamp < end)
            .collect();
        let expected = inside.iter().fold(Usd::ZERO, |sum, e| {
            sum.checked_add(e.cost_usd).unwrap_or_default()
        });
        assert_eq!(total(&rows), expected, "{start}..{end}");
        assert_eq!(
            rows.iter().map(|r| r.requests).sum::<i64>(),
            inside.len() as i64
        );
    }
    Ok(())
}

async fn exports_return_every_field_in_time_order<S: UsageStore + Clone>(store: &S) -> TestResult {
    let mut entries: Vec<UsageEntry> = (0..300).map(|n| entry(&format!("e{n}"), 1, n)).collect();
    store.record_batch(&entries).await?;
    entries.sort_by(|a, b| {
        (a.timestamp, &a.request_id, a.attempt).cmp(&(b.timestamp, &b.request_id, b.attempt))
    });
    let exported = export_all(store, march()).await?;
    assert_eq!(exported, entries);
    let one_day = export_all(
        store,
        TimeRange {
            start: at(2026, 3, 5, 0, 0),
            end: at(2026, 3, 6, 0, 0),
        },
    )
    .await?;
    assert!(!one_day.is_empty());
    assert!(
        one_day
            .iter()
            .all(|e| e.timestamp.format("%d").to_string() == "05")
    );
    Ok(())
}

async fn csv_exports_match_the_generic_writer_byte_for_byte<S: UsageStore + Clone>(
    store: &S,
) -> TestResult {
    let mut entries: Vec<UsageEntry> = (0..250).map(|n| entry(&format!("c{n}"), 1, n)).collect();
    entries[0].routing_reason = String::new();
    entries[1].user = "multi\nline \\ 'quoted'".into();
    entries[2].cost_usd = Usd::ZERO;
    store.record_batch(&entries).await?;
    let exported = export_all(store, march()).await?;
    let expected = tollgate_cost_tracker::service::csv_bytes(&exported);
    let (chunks_tx, mut chunks_rx) = mpsc::channel(4);
    let export_query = ExportQuery {
        filter: SpendFilter::default(),
        range: march(),
    };
    let (used, collected) =
        tokio::join!(store.export_csv(&export_query, 40, chunks_tx), async move {
            let (mut bytes, mut rows) = (Vec::new(), 0u32);
            while let Some(chunk) = chunks_rx.recv().await {
                let (chunk, count) = chunk?;
                bytes.extend_from_slice(&chunk);
                rows += count;
            }
            Ok::<_, tollgate_cost_tracker::store::StoreError>((bytes, rows))
        });
    let (bytes, rows) = collected?;
    if used? {
        assert_eq!(rows, 250);
        assert_eq!(String::from_utf8(bytes)?, String::from_utf8(expected)?);
    } else {
        assert!(
            bytes.is_empty(),
            "a backend without its own CSV path sends nothing"
        );
    }
    // Filters with a quote and a backslash in them are values, never SQL.
    let hostile = ExportQuery {
        filter: SpendFilter {
            tenant: "x' OR '1'='1 \\".into(),
            ..Default::default()
        },
        range: march(),
    };
    let (chunks_tx, mut chunks_rx) = mpsc::channel(4);
    let (used, total) = tokio::join!(store.export_csv(&hostile, 40, chunks_tx), async move {
        let mut rows = 0;
        while let Some(Ok((_, count))) = chunks_rx.recv().await {
            rows += count;
        }
        rows
    });
    if used? {
        assert_eq!(total, 0);
    }
    Ok(())
}

fn budget(tenant: &str, hard: &str) -> Budget {
    Budget {
        scope: BudgetScope {
            tenant: tenant.into(),
            ..Default::default()
        },
        period: BudgetPeriod::Month,
        soft_limit_usd: Some(usd("0.5")),
        hard_limit_usd: Some(usd(hard)),
    }
}

fn reservation(id: &str, tenant: &str, estimate: &str, ttl_seconds: u32) -> ReserveRequest {
    ReserveRequest {
        request_id: id.into(),
        tenant: tenant.into(),
        provider: "openai".into(),
        model: "gpt-4o".into(),
        estimated_cost_usd: usd(estimate),
        ttl_seconds,
    }
}

async fn budgets_reserve_settle_and_expire<S: UsageStore + Clone>(store: &S) -> TestResult {
    let now = at(2026, 3, 15, 12, 0);
    let status = store.set_budget(&budget("acme", "1"), now).await?;
    assert_eq!(status.spent_usd, Usd::ZERO);
    assert_eq!(status.remaining_usd(), Some(usd("1")));
    // A provider-wide budget also applies to acme's requests.
    let provider_wide = Budget {
        scope: BudgetScope {
            provider: "openai".into(),
            ..Default::default()
        },
        period: BudgetPeriod::Day,
        soft_limit_usd: None,
        hard_limit_usd: Some(usd("100")),
    };
    store.set_budget(&provider_wide, now).await?;

    let ReserveOutcome::Held { budgets, .. } = store
        .reserve(&reservation("r1", "acme", "0.6", 300), now)
        .await?
    else {
        panic!("r1 should be held");
    };
    assert_eq!(budgets.len(), 2, "both budgets apply");
    let acme = budgets
        .iter()
        .find(|b| b.budget.scope.tenant == "acme")
        .unwrap_or_else(|| panic!("acme budget"));
    assert_eq!(acme.reserved_usd, usd("0.6"));
    assert!(acme.soft_limit_reached());
    // Same request id again: idempotent, nothing more held.
    store
        .reserve(&reservation("r1", "acme", "0.6", 300), now)
        .await?;
    // 0.6 + 0.6 > 1: refused.
    match store
        .reserve(&reservation("r2", "acme", "0.6", 300), now)
        .await?
    {
        ReserveOutcome::Refused { budget } => {
            assert_eq!(budget.budget.scope.tenant, "acme");
            assert_eq!(budget.remaining_usd(), Some(usd("0.4")));
        }
        held => panic!("r2 should be refused, got {held:?}"),
    }
    // Another tenant is not affected by acme's budget.
    assert!(matches!(
        store
            .reserve(&reservation("r3", "globex", "0.6", 300), now)
            .await?,
        ReserveOutcome::Held { .. }
    ));
    // Settling replaces the hold by the actual cost.
    let settled = store
        .settle("r1", usd("0.25"), now)
        .await?
        .unwrap_or_else(|| panic!("r1 exists"));
    let acme = settled
        .iter()
        .find(|b| b.budget.scope.tenant == "acme")
        .unwrap_or_else(|| panic!("acme budget"));
    assert_eq!(
        (acme.spent_usd, acme.reserved_usd),
        (usd("0.25"), Usd::ZERO)
    );
    // Settling twice changes nothing.
    let again = store
        .settle("r1", usd("0.25"), now)
        .await?
        .unwrap_or_default();
    assert!(
        again
            .iter()
            .any(|b| b.budget.scope.tenant == "acme" && b.spent_usd == usd("0.25"))
    );
    assert!(store.settle("missing", usd("1"), now).await?.is_none());

    // A reservation that is never settled stops counting when it expires.
    assert!(matches!(
        store
            .reserve(&reservation("r4", "acme", "0.7", 60), now)
            .await?,
        ReserveOutcome::Held { .. }
    ));
    assert!(matches!(
        store
            .reserve(&reservation("r5", "acme", "0.7", 60), now)
            .await?,
        ReserveOutcome::Refused { .. }
    ));
    let later = now + chrono::Duration::seconds(61);
    assert!(matches!(
        store
            .reserve(&reservation("r5", "acme", "0.7", 60), later)
            .await?,
        ReserveOutcome::Held { .. }
    ));

    let listed = store.list_budgets(Some("acme"), later).await?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].reserved_usd, usd("0.7"));
    assert_eq!(store.list_budgets(None, later).await?.len(), 2);
    // A new month starts from zero.
    let next_month = store
        .list_budgets(Some("acme"), at(2026, 4, 1, 0, 0))
        .await?;
    assert_eq!(
        (next_month[0].spent_usd, next_month[0].reserved_usd),
        (Usd::ZERO, Usd::ZERO)
    );

    assert!(
        store
            .delete_budget(&budget("acme", "1").scope, BudgetPeriod::Month)
            .await?
    );
    assert!(
        !store
            .delete_budget(&budget("acme", "1").scope, BudgetPeriod::Month)
            .await?
    );
    assert!(store.list_budgets(Some("acme"), later).await?.is_empty());
    Ok(())
}

async fn parallel_reservations_never_cross_the_hard_limit<S: UsageStore + Clone>(
    store: &S,
) -> TestResult {
    let now = chrono::Utc::now();
    store.set_budget(&budget("acme", "50"), now).await?;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .reserve(&reservation(&format!("p{i}"), "acme", "1", 300), now)
                .await
        }));
    }
    let mut held = 0;
    for task in tasks {
        if let ReserveOutcome::Held { .. } = task.await?? {
            held += 1;
        }
    }
    assert_eq!(held, 50);
    let listed = store.list_budgets(Some("acme"), now).await?;
    assert_eq!(listed[0].reserved_usd, usd("50"));
    Ok(())
}

/// Whether any budget applies is asked on every reservation (and cached where the store can):
/// a budget set after a budget-free reservation is enforced at once, and one deleted stops
/// holding at once.
async fn budgets_apply_as_soon_as_they_are_set_or_deleted<S: UsageStore + Clone>(
    store: &S,
) -> TestResult {
    let now = at(2026, 3, 15, 12, 0);
    let held_id = |outcome: ReserveOutcome| match outcome {
        ReserveOutcome::Held { reservation_id, .. } => reservation_id,
        other => panic!("expected a hold, got {other:?}"),
    };
    let free = store
        .reserve(&reservation("f1", "acme", "0.2", 300), now)
        .await?;
    assert_eq!(held_id(free), "", "no budget: nothing is held");
    store.set_budget(&budget("acme", "1"), now).await?;
    let held = store
        .reserve(&reservation("f2", "acme", "0.2", 300), now)
        .await?;
    assert_eq!(held_id(held), "f2", "the new budget holds the estimate");
    let other_tenant = store
        .reserve(&reservation("f3", "zeta", "0.2", 300), now)
        .await?;
    assert_eq!(
        held_id(other_tenant),
        "",
        "acme's budget does not apply to zeta"
    );
    assert!(
        store
            .delete_budget(&budget("acme", "1").scope, BudgetPeriod::Month)
            .await?
    );
    let freed = store
        .reserve(&reservation("f4", "acme", "0.2", 300), now)
        .await?;
    assert_eq!(held_id(freed), "", "a deleted budget holds nothing");
    Ok(())
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod postgres {
            use super::*;
            use tollgate_cost_tracker::store::postgres::PgUsageStore;
            use tollgate_test_support::postgres::TestDatabase;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() -> TestResult {
                    let database = TestDatabase::create().await?;
                    let store = PgUsageStore::connect(&database.url, 8, Duration::from_secs(10)).await?;
                    super::$case(&store).await?;
                    store.pool().close().await;
                    database.drop_database().await
                }
            )*
        }
        mod sqlite {
            use super::*;
            use tollgate_cost_tracker::store::sqlite::SqliteUsageStore;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() -> TestResult {
                    let dir = common::temp_dir("suite");
                    let store = SqliteUsageStore::open(&dir.join("cost.sqlite"), Duration::from_secs(10)).await?;
                    super::$case(&store).await?;
                    let _ = std::fs::remove_dir_all(&dir);
                    Ok(())
                }
            )*
        }
    };
}

suite!(
    a_record_sent_twice_counts_once,
    concurrent_duplicates_and_overlapping_writers_count_once,
    rollups_equal_raw_sums_exactly,
    exports_return_every_field_in_time_order,
    csv_exports_match_the_generic_writer_byte_for_byte,
    budgets_reserve_settle_and_expire,
    budgets_apply_as_soon_as_they_are_set_or_deleted,
    parallel_reservations_never_cross_the_hard_limit,
);

/// Postgres out of reach at request time (here: no pooled connection comes free) is UNAVAILABLE
/// after the bounded acquire timeout, never a hang; the store serves again once it can.
#[tokio::test]
async fn postgres_out_of_reach_is_unavailable_quickly() -> TestResult {
    use tollgate_cost_tracker::store::StoreError;
    use tollgate_cost_tracker::store::postgres::PgUsageStore;
    use tollgate_kit::error::ErrorCode;
    let database = tollgate_test_support::postgres::TestDatabase::create().await?;
    let store = PgUsageStore::connect(&database.url, 1, Duration::from_millis(300)).await?;
    let held = store.pool().acquire().await?;
    let error = store
        .record_batch(&[entry("u1", 1, 1)])
        .await
        .err()
        .ok_or("a store without a free connection answered")?;
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    assert_eq!(error.code(), ErrorCode::Unavailable);
    drop(held);
    assert_eq!(
        store.record_batch(&[entry("u1", 1, 1)]).await?,
        vec![RecordOutcome::Stored]
    );
    store.pool().close().await;
    database.drop_database().await
}

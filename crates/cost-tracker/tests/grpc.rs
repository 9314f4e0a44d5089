//! The CostTracker over real gRPC: validation errors that name the field, records, spend and
//! exports read back, the budget race across several instances on one Postgres database, and
//! the client outbox replaying after the service was down.

mod common;

use std::time::Duration;

use tollgate::config::Config;
use tollgate_kit::shutdown::Shutdown;
use tollgate_proto::v1 as pb;
use tollgate_proto::v1::cost_tracker_client::CostTrackerClient;
use tollgate_test_support::postgres::TestDatabase;
use tollgate_test_support::{ServiceTarget, TestGateway, TestResult};

type Client = CostTrackerClient<tollgate_kit::grpc::client::TracedChannel>;

fn embedded_config(dir: &std::path::Path) -> Config {
    let mut config = Config::default();
    config.storage.data_dir = dir.to_owned();
    config.storage.database_url = None;
    config
}

async fn start(config: Config) -> TestResult<(TestGateway, Client)> {
    let gateway = TestGateway::start_with(config, ServiceTarget::CostTracker).await?;
    let client = CostTrackerClient::new(gateway.channel(ServiceTarget::CostTracker)?);
    Ok((gateway, client))
}

fn ts(at: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

fn record(request_id: &str, attempt: u32, cost: &str) -> pb::UsageRecord {
    pb::UsageRecord {
        request_id: request_id.into(),
        attempt,
        timestamp: Some(ts(chrono::Utc::now())),
        tenant: "acme".into(),
        user: "u1".into(),
        agent: "coder".into(),
        provider: "openai".into(),
        model: "gpt-4o-mini".into(),
        tier: pb::Tier::Cheap as i32,
        usage: Some(pb::Usage {
            input_tokens: 1200,
            output_tokens: 300,
            cached_input_tokens: 200,
            cache_write_input_tokens: 0,
            estimated: false,
        }),
        cost_usd: cost.into(),
        latency_micros: 850_000,
        token_cache_hit_tokens: 100,
        routing_reason: "complexity_low".into(),
        query_sha256: "ab".repeat(32),
        status: pb::AttemptStatus::Succeeded as i32,
    }
}

fn expect_invalid<T: std::fmt::Debug>(result: Result<T, tonic::Status>, field: &str) {
    match result {
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            assert!(
                status.message().starts_with(field),
                "message {:?} should name {field}",
                status.message()
            );
        }
        Ok(response) => panic!("accepted, expected INVALID_ARGUMENT on {field}: {response:?}"),
    }
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field() -> TestResult {
    let dir = common::temp_dir("grpc-invalid");
    let (gateway, mut client) = start(embedded_config(&dir)).await?;
    let one = |r: pb::UsageRecord| pb::RecordRequest { record: Some(r) };

    let mut r = record("", 1, "0.1");
    expect_invalid(client.record(one(r.clone())).await, "record.request_id");
    r = record("x", 0, "0.1");
    expect_invalid(client.record(one(r)).await, "record.attempt");
    r = record("x", 1, "0.1");
    r.timestamp = Some(ts(chrono::Utc::now() + chrono::Duration::minutes(10)));
    expect_invalid(client.record(one(r)).await, "record.timestamp");
    r = record("x", 1, "1e-3");
    expect_invalid(client.record(one(r)).await, "record.cost_usd");
    r = record("x", 1, "-1");
    expect_invalid(client.record(one(r)).await, "record.cost_usd");
    // No cost and no configured price for the model.
    r = record("x", 1, "");
    expect_invalid(client.record(one(r)).await, "record.cost_usd");
    let batch = pb::RecordBatchRequest {
        records: vec![
            record("a", 1, "0.1"),
            record("b", 1, "0.1"),
            record("c", 1, "0.1"),
            record("d", 1, "abc"),
        ],
    };
    expect_invalid(client.record_batch(batch).await, "records[3].cost_usd");

    expect_invalid(
        client
            .get_spend(pb::GetSpendRequest {
                group_by: pb::SpendGroupBy::Unspecified as i32,
                ..Default::default()
            })
            .await,
        "group_by",
    );
    expect_invalid(
        client
            .get_spend(pb::GetSpendRequest {
                group_by: 42,
                ..Default::default()
            })
            .await,
        "group_by",
    );
    expect_invalid(
        client
            .set_budget(pb::SetBudgetRequest {
                budget: Some(pb::Budget {
                    period: pb::BudgetPeriod::Month as i32,
                    hard_limit_usd: "ten".into(),
                    ..Default::default()
                }),
            })
            .await,
        "budget.hard_limit_usd",
    );
    expect_invalid(
        client
            .set_budget(pb::SetBudgetRequest {
                budget: Some(pb::Budget {
                    hard_limit_usd: "10".into(),
                    ..Default::default()
                }),
            })
            .await,
        "budget.period",
    );
    expect_invalid(
        client
            .reserve_budget(pb::ReserveBudgetRequest {
                request_id: "r".into(),
                ..Default::default()
            })
            .await,
        "estimated_cost_usd",
    );
    let export = client
        .export(pb::ExportRequest {
            format: pb::ExportFormat::Unspecified as i32,
            ..Default::default()
        })
        .await;
    expect_invalid(export.map(|_| ()), "format");
    gateway.stop().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn parse_csv_line(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', true) => quoted = false,
            ('"', false) => quoted = true,
            (',', false) => fields.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    fields.push(field);
    fields
}

async fn export_text(client: &mut Client, format: pb::ExportFormat) -> TestResult<(String, u32)> {
    let mut stream = client
        .export(pb::ExportRequest {
            format: format as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut bytes = Vec::new();
    let mut rows = 0;
    while let Some(chunk) = stream.message().await? {
        bytes.extend_from_slice(&chunk.chunk);
        rows += chunk.rows;
    }
    Ok((String::from_utf8(bytes)?, rows))
}

#[tokio::test]
async fn records_spend_and_exports_agree() -> TestResult {
    let dir = common::temp_dir("grpc-ledger");
    let mut config = embedded_config(&dir);
    config.cost_tracker.export_chunk_rows = 7;
    config.cost_tracker.prices.insert(
        "gpt-4o-mini".into(),
        tollgate_cost_tracker::config::PriceConfig {
            input_per_mtok_usd: "0.15".into(),
            output_per_mtok_usd: "0.6".into(),
            cached_input_per_mtok_usd: "0.075".into(),
            cache_write_per_mtok_usd: String::new(),
        },
    );
    let (gateway, mut client) = start(config).await?;

    // Priced from the configured table: 1000 × 0.15 + 200 × 0.075 + 300 × 0.6 per million.
    let priced = client
        .record(pb::RecordRequest {
            record: Some(record("priced", 1, "")),
        })
        .await?
        .into_inner();
    assert_eq!(priced.cost_usd, "0.000345");
    assert!(!priced.duplicate);

    let mut records: Vec<pb::UsageRecord> = (0..40)
        .map(|i| {
            record(
                &format!("req-{i}"),
                1 + i % 2,
                &format!("0.00000{}", 1 + i % 9),
            )
        })
        .collect();
    records[3].agent = "agent, with \"quotes\"".into();
    let first = client
        .record_batch(pb::RecordBatchRequest {
            records: records.clone(),
        })
        .await?
        .into_inner();
    assert_eq!((first.stored, first.duplicates), (40, 0));
    let again = client
        .record_batch(pb::RecordBatchRequest {
            records: records.clone(),
        })
        .await?
        .into_inner();
    assert_eq!((again.stored, again.duplicates), (0, 40));
    assert!(again.results.iter().all(|r| r.duplicate));

    let spend = client
        .get_spend(pb::GetSpendRequest {
            group_by: pb::SpendGroupBy::Tier as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(spend.rows.len(), 1);
    assert_eq!(spend.rows[0].key, "cheap");
    assert_eq!(spend.rows[0].requests, 41);
    let expected_total = records
        .iter()
        .map(|r| common::usd(&r.cost_usd))
        .fold(common::usd("0.000345"), |sum, c| {
            sum.checked_add(c).unwrap_or_default()
        });
    assert_eq!(spend.total_cost_usd, expected_total.to_string());

    let (csv, rows) = export_text(&mut client, pb::ExportFormat::Csv).await?;
    assert_eq!(rows, 41);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 42, "header and 41 rows");
    let header = parse_csv_line(lines[0]);
    let cost_column = header
        .iter()
        .position(|h| h == "cost_usd")
        .unwrap_or(usize::MAX);
    let agent_column = header
        .iter()
        .position(|h| h == "agent")
        .unwrap_or(usize::MAX);
    let mut csv_total = common::usd("0");
    for line in &lines[1..] {
        let fields = parse_csv_line(line);
        assert_eq!(fields.len(), header.len(), "{line}");
        csv_total = csv_total
            .checked_add(common::usd(&fields[cost_column]))
            .unwrap_or_default();
    }
    assert_eq!(csv_total, expected_total);
    assert!(
        lines
            .iter()
            .any(|l| parse_csv_line(l)[agent_column] == "agent, with \"quotes\"")
    );

    let (jsonl, rows) = export_text(&mut client, pb::ExportFormat::Jsonl).await?;
    assert_eq!(rows, 41);
    let mut json_total = common::usd("0");
    let mut ids = std::collections::BTreeSet::new();
    for line in jsonl.lines() {
        let value: serde_json::Value = serde_json::from_str(line)?;
        json_total = json_total
            .checked_add(common::usd(value["cost_usd"].as_str().unwrap_or("x")))
            .unwrap_or_default();
        ids.insert((
            value["request_id"].as_str().unwrap_or_default().to_owned(),
            value["attempt"].as_u64().unwrap_or_default(),
        ));
    }
    assert_eq!(json_total, expected_total);
    assert_eq!(ids.len(), 41);
    gateway.stop().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// 200 parallel reservations of $1 against a $50 hard limit, spread over three service
/// instances on one Postgres database: exactly 50 are held, the rest FAILED_PRECONDITION.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_hard_limit_holds_across_instances_under_concurrency() -> TestResult {
    let database = TestDatabase::create().await?;
    let dir = common::temp_dir("grpc-race");
    let mut config = embedded_config(&dir);
    config.storage.database_url = Some(database.url.clone());
    config.cost_tracker.max_connections = 8;
    // 200 reservations on one budget are serialised by its row lock; on a loaded test machine
    // the last ones wait longer than the production default before getting a connection.
    config.cost_tracker.acquire_timeout_ms = 60_000;
    let mut gateways = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (gateway, client) = start(config.clone()).await?;
        gateways.push(gateway);
        clients.push(client);
    }
    clients[0]
        .set_budget(pb::SetBudgetRequest {
            budget: Some(pb::Budget {
                scope: Some(pb::BudgetScope {
                    tenant: "acme".into(),
                    ..Default::default()
                }),
                period: pb::BudgetPeriod::Day as i32,
                soft_limit_usd: "40".into(),
                hard_limit_usd: "50".into(),
            }),
        })
        .await?;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let mut client = clients[i % 3].clone();
        tasks.push(tokio::spawn(async move {
            client
                .reserve_budget(pb::ReserveBudgetRequest {
                    request_id: format!("req-{i}"),
                    tenant: "acme".into(),
                    provider: "openai".into(),
                    model: "gpt-4o".into(),
                    estimated_cost_usd: "1".into(),
                    ttl_seconds: 600,
                })
                .await
        }));
    }
    let (mut held, mut refused) = (0, 0);
    let mut held_ids = Vec::new();
    for task in tasks {
        match task.await? {
            Ok(response) => {
                held += 1;
                held_ids.push(response.into_inner().reservation_id);
            }
            Err(status) if status.code() == tonic::Code::FailedPrecondition => refused += 1,
            Err(status) => return Err(format!("unexpected {status:?}").into()),
        }
    }
    assert_eq!((held, refused), (50, 150));
    let listed = clients[1]
        .list_budgets(pb::ListBudgetsRequest {
            tenant: "acme".into(),
        })
        .await?
        .into_inner();
    assert_eq!(listed.budgets[0].reserved_usd, "50");
    assert_eq!(listed.budgets[0].remaining_usd, "0");
    assert!(listed.budgets[0].soft_limit_reached);
    // Settling one frees room for exactly one more.
    clients[2]
        .settle_budget(pb::SettleBudgetRequest {
            reservation_id: held_ids[0].clone(),
            actual_cost_usd: "0".into(),
        })
        .await?;
    let retry = clients[2]
        .reserve_budget(pb::ReserveBudgetRequest {
            request_id: "late".into(),
            tenant: "acme".into(),
            estimated_cost_usd: "1".into(),
            ..Default::default()
        })
        .await;
    assert!(retry.is_ok(), "{retry:?}");
    for gateway in gateways {
        gateway.stop().await?;
    }
    database.drop_database().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn wait_until_flushed(outbox: &tollgate_cost_outbox::CostOutbox) -> TestResult {
    for _ in 0..600 {
        if outbox.pending() == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("outbox still has {} pending records", outbox.pending()).into())
}

/// The service is down while records are submitted and when the first outbox shuts down: they
/// go to the spool. A second outbox on the same spool replays them once the service is up, and
/// replaying again changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_outbox_replays_after_the_service_was_down() -> TestResult {
    use tollgate_cost_outbox::{CostOutbox, OutboxConfig};
    let dir = common::temp_dir("grpc-outbox");
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        probe.local_addr()?.port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let mut outbox_config = OutboxConfig::new(dir.join("spool"));
    outbox_config.initial_backoff = Duration::from_millis(50);
    outbox_config.max_backoff = Duration::from_millis(400);
    outbox_config.call_timeout = Duration::from_secs(2);
    outbox_config.batch_size = 16;

    let records: Vec<pb::UsageRecord> = (0..60)
        .map(|i| record(&format!("outbox-{i}"), 1, "0.000125"))
        .collect();
    let first_shutdown = Shutdown::new();
    let channel = tollgate_kit::grpc::connect_lazy(&url, Duration::from_millis(200))?;
    let first = CostOutbox::start(outbox_config.clone(), channel, &first_shutdown)?;
    for record in &records {
        first.submit(record.clone()).await?;
    }
    first_shutdown.trigger();
    assert!(first_shutdown.wait_for_tasks(Duration::from_secs(30)).await);
    assert_eq!(
        first.pending(),
        60,
        "nothing delivered while the service is down"
    );

    // The service comes up on the address the outbox knows.
    let mut config = embedded_config(&dir);
    config.cost_tracker.listen = tollgate_kit::config::ListenConfig::loopback(port, 0);
    let service_shutdown = Shutdown::new();
    let gateway =
        tollgate::serve::start(config, ServiceTarget::CostTracker, service_shutdown.clone())
            .await?;

    let second_shutdown = Shutdown::new();
    let channel = tollgate_kit::grpc::connect_lazy(&url, Duration::from_millis(500))?;
    let second = CostOutbox::start(outbox_config.clone(), channel.clone(), &second_shutdown)?;
    assert_eq!(second.pending(), 60, "the spool survived the first outbox");
    wait_until_flushed(&second).await?;
    // The same records again (a caller retrying): counted once.
    for record in &records[..10] {
        second.submit(record.clone()).await?;
    }
    wait_until_flushed(&second).await?;
    second_shutdown.trigger();
    assert!(
        second_shutdown
            .wait_for_tasks(Duration::from_secs(30))
            .await
    );

    let spend = CostTrackerClient::new(channel)
        .get_spend(pb::GetSpendRequest {
            group_by: pb::SpendGroupBy::Tenant as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(spend.rows.len(), 1);
    assert_eq!(spend.rows[0].requests, 60);
    assert_eq!(spend.total_cost_usd, "0.0075");
    service_shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(30), gateway.wait()).await??;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// With the service up, shutdown flushes what is still queued; a record the service refuses as
/// invalid is kept in `rejected.spool` instead of being retried forever or dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_outbox_flushes_on_shutdown_and_keeps_refused_records() -> TestResult {
    use tollgate_cost_outbox::{CostOutbox, OutboxConfig};
    let dir = common::temp_dir("grpc-outbox-flush");
    let (gateway, mut client) = start(embedded_config(&dir)).await?;
    let mut outbox_config = OutboxConfig::new(dir.join("spool"));
    outbox_config.batch_size = 8;
    let shutdown = Shutdown::new();
    let outbox = CostOutbox::start(
        outbox_config,
        gateway.channel(ServiceTarget::CostTracker)?,
        &shutdown,
    )?;
    for i in 0..30 {
        outbox
            .submit(record(&format!("flush-{i}"), 1, "0.01"))
            .await?;
        if i == 12 {
            outbox.submit(record("refused", 1, "not money")).await?;
        }
    }
    shutdown.trigger();
    assert!(shutdown.wait_for_tasks(Duration::from_secs(30)).await);
    assert_eq!(outbox.pending(), 0);
    let spend = client
        .get_spend(pb::GetSpendRequest {
            group_by: pb::SpendGroupBy::Tenant as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(spend.rows[0].requests, 30);
    assert_eq!(spend.total_cost_usd, "0.3");
    let rejected = std::fs::read(dir.join("spool").join("rejected.spool"))?;
    assert!(
        rejected.windows(7).any(|w| w == b"refused"),
        "the refused record is kept on disk"
    );
    gateway.stop().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

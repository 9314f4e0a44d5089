//! The cost-tracker's logic, between grpc.rs (validated domain input) and the [`UsageStore`]:
//! metrics, budget refusals, spend totals, export formatting. No tonic or sqlx types here.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tollgate_kit::money::Usd;

use crate::error::{CostTrackerError, CostTrackerResult};
use crate::model::{
    Budget, BudgetPeriod, BudgetScope, BudgetStatus, ExportQuery, RecordOutcome, ReserveOutcome,
    ReserveRequest, SpendQuery, SpendRow, UsageEntry, status_name, tier_name,
};
use crate::pricing::PriceTable;
use crate::store::{StoreError, StoreResult, UsageStore};

/// Default lifetime of a reservation that is never settled.
pub const DEFAULT_RESERVATION_TTL_SECS: u32 = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Csv,
    Jsonl,
}

/// A piece of an export: bytes to append, and how many rows they hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportChunk {
    pub bytes: Vec<u8>,
    pub rows: u32,
}

#[derive(Debug)]
pub struct CostTrackerService<S> {
    store: S,
    prices: PriceTable,
    export_chunk_rows: usize,
}

impl<S: UsageStore> CostTrackerService<S> {
    pub fn new(store: S, prices: PriceTable, export_chunk_rows: usize) -> Self {
        Self {
            store,
            prices,
            export_chunk_rows: export_chunk_rows.max(1),
        }
    }

    pub fn prices(&self) -> &PriceTable {
        &self.prices
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// Watches every store call: `tollgate_store_up` and `tollgate_store_errors_total`.
    fn observe<T>(&self, result: StoreResult<T>) -> CostTrackerResult<T> {
        let backend = self.store.backend().name();
        match &result {
            Ok(_) => {
                metrics::gauge!("tollgate_store_up", "service" => "cost-tracker", "backend" => backend)
                    .set(1.0);
            }
            Err(error) => {
                if matches!(error, StoreError::Unavailable(_)) {
                    metrics::gauge!("tollgate_store_up", "service" => "cost-tracker", "backend" => backend)
                        .set(0.0);
                }
                if !matches!(error, StoreError::OutOfRange(_)) {
                    metrics::counter!("tollgate_store_errors_total", "service" => "cost-tracker", "backend" => backend)
                        .increment(1);
                    tracing::warn!(%error, backend, "cost ledger store call failed");
                }
            }
        }
        result.map_err(CostTrackerError::from)
    }

    /// Stores the entries not stored yet (idempotent on request id and attempt).
    pub async fn record_batch(
        &self,
        entries: &[UsageEntry],
    ) -> CostTrackerResult<Vec<RecordOutcome>> {
        let outcomes = self.observe(self.store.record_batch(entries).await)?;
        for (entry, outcome) in entries.iter().zip(&outcomes) {
            if *outcome == RecordOutcome::Stored {
                // A float is fine for a metric; the ledger itself is exact.
                let amount: f64 = entry.cost_usd.to_string().parse().unwrap_or(0.0);
                metrics::gauge!(
                    "tollgate_cost_usd_total",
                    "tenant" => entry.tenant.clone(),
                    "provider" => entry.provider.clone(),
                    "model" => entry.model.clone()
                )
                .increment(amount);
            }
        }
        Ok(outcomes)
    }

    /// Spend rows ordered by key, and their exact total.
    pub async fn spend(&self, query: &SpendQuery) -> CostTrackerResult<(Vec<SpendRow>, Usd)> {
        let mut rows = self.observe(self.store.spend(query).await)?;
        if query.group_by == crate::model::GroupBy::Tier {
            for row in &mut rows {
                let code: i16 = row.key.parse().unwrap_or(0);
                row.key = tier_name(code).to_owned();
            }
        }
        let total = rows
            .iter()
            .try_fold(Usd::ZERO, |sum, row| sum.checked_add(row.cost_usd))
            .ok_or_else(|| {
                CostTrackerError::Store(StoreError::OutOfRange("total overflows".into()))
            })?;
        Ok((rows, total))
    }

    /// Streams the export as chunks of `export_chunk_rows` rows. Memory is bounded by the small
    /// channels between the store, the formatter and the caller. CSV is formatted by the
    /// database when the backend can (Postgres COPY), otherwise here.
    pub fn export(
        self: &Arc<Self>,
        query: ExportQuery,
        format: ExportFormat,
    ) -> mpsc::Receiver<CostTrackerResult<ExportChunk>> {
        let (chunk_tx, chunk_rx) = mpsc::channel::<CostTrackerResult<ExportChunk>>(4);
        let service = Arc::clone(self);
        tokio::spawn(async move {
            if format == ExportFormat::Csv {
                let (raw_tx, mut raw_rx) = mpsc::channel::<StoreResult<(Vec<u8>, u32)>>(4);
                let forward_tx = chunk_tx.clone();
                let forward = async move {
                    while let Some(item) = raw_rx.recv().await {
                        let item = item
                            .map(|(bytes, rows)| ExportChunk { bytes, rows })
                            .map_err(CostTrackerError::from);
                        if forward_tx.send(item).await.is_err() {
                            break;
                        }
                    }
                };
                let (used, ()) = tokio::join!(
                    service
                        .store
                        .export_csv(&query, service.export_chunk_rows, raw_tx),
                    forward
                );
                match service.observe(used) {
                    Ok(true) => return,
                    Ok(false) => {}
                    Err(error) => {
                        let _ = chunk_tx.send(Err(error)).await;
                        return;
                    }
                }
            }
            service.export_rows(query, format, chunk_tx).await;
        });
        chunk_rx
    }

    /// The generic export: rows from the store, formatted here.
    async fn export_rows(
        self: Arc<Self>,
        query: ExportQuery,
        format: ExportFormat,
        chunk_tx: mpsc::Sender<CostTrackerResult<ExportChunk>>,
    ) {
        let chunk_rows = self.export_chunk_rows;
        let (rows_tx, mut rows_rx) = mpsc::channel::<UsageEntry>(chunk_rows * 2);
        let service = Arc::clone(&self);
        let store_done_tx = chunk_tx.clone();
        tokio::spawn(async move {
            let result = service.store.export(&query, rows_tx).await;
            if let Err(error) = service.observe(result) {
                let _ = store_done_tx.send(Err(error)).await;
            }
        });
        let mut chunk = ExportChunk {
            bytes: Vec::with_capacity(256 * chunk_rows),
            rows: 0,
        };
        if format == ExportFormat::Csv {
            chunk.bytes.extend_from_slice(CSV_HEADER.as_bytes());
        }
        while let Some(entry) = rows_rx.recv().await {
            match format {
                ExportFormat::Csv => write_csv_row(&mut chunk.bytes, &entry),
                ExportFormat::Jsonl => {
                    if let Err(error) = write_json_row(&mut chunk.bytes, &entry) {
                        let _ = chunk_tx
                            .send(Err(CostTrackerError::Store(StoreError::Internal(
                                error.to_string(),
                            ))))
                            .await;
                        return;
                    }
                }
            }
            chunk.rows += 1;
            if chunk.rows as usize >= chunk_rows {
                let full = std::mem::replace(
                    &mut chunk,
                    ExportChunk {
                        bytes: Vec::with_capacity(256 * chunk_rows),
                        rows: 0,
                    },
                );
                if chunk_tx.send(Ok(full)).await.is_err() {
                    return;
                }
            }
        }
        // The store task has finished (its error, if any, is already queued before the
        // channel closed); the last partial chunk goes out.
        if !chunk.bytes.is_empty() {
            let _ = chunk_tx.send(Ok(chunk)).await;
        }
    }

    pub async fn set_budget(&self, budget: &Budget) -> CostTrackerResult<BudgetStatus> {
        let status = self.observe(self.store.set_budget(budget, Utc::now()).await)?;
        publish_budget_gauges(std::slice::from_ref(&status));
        Ok(status)
    }

    pub async fn delete_budget(
        &self,
        scope: &BudgetScope,
        period: BudgetPeriod,
    ) -> CostTrackerResult<bool> {
        self.observe(self.store.delete_budget(scope, period).await)
    }

    pub async fn list_budgets(
        &self,
        tenant_opt: Option<&str>,
    ) -> CostTrackerResult<Vec<BudgetStatus>> {
        let statuses = self.observe(self.store.list_budgets(tenant_opt, Utc::now()).await)?;
        publish_budget_gauges(&statuses);
        Ok(statuses)
    }

    /// Holds the estimate, or fails with FAILED_PRECONDITION naming the budget that refused.
    pub async fn reserve(
        &self,
        request: &ReserveRequest,
    ) -> CostTrackerResult<(String, Vec<BudgetStatus>)> {
        self.reserve_at(request, Utc::now()).await
    }

    pub async fn reserve_at(
        &self,
        request: &ReserveRequest,
        now: DateTime<Utc>,
    ) -> CostTrackerResult<(String, Vec<BudgetStatus>)> {
        match self.observe(self.store.reserve(request, now).await)? {
            ReserveOutcome::Held {
                reservation_id,
                budgets,
            } => {
                publish_budget_gauges(&budgets);
                Ok((reservation_id, budgets))
            }
            ReserveOutcome::Refused { budget } => {
                publish_budget_gauges(std::slice::from_ref(&budget));
                let scope = scope_label(&budget);
                metrics::counter!("tollgate_budget_refusals_total", "scope" => scope.clone())
                    .increment(1);
                Err(CostTrackerError::BudgetExceeded {
                    scope: budget.budget.scope.label(),
                    period: period_name(budget.budget.period),
                    remaining_usd: budget
                        .remaining_usd()
                        .map(|v| v.to_string())
                        .unwrap_or_default(),
                    hard_limit_usd: budget
                        .budget
                        .hard_limit_usd
                        .map(|v| v.to_string())
                        .unwrap_or_default(),
                    estimate_usd: request.estimated_cost_usd.to_string(),
                })
            }
        }
    }

    pub async fn settle(
        &self,
        reservation_id: &str,
        actual: Usd,
    ) -> CostTrackerResult<Vec<BudgetStatus>> {
        match self.observe(self.store.settle(reservation_id, actual, Utc::now()).await)? {
            Some(budgets) => {
                publish_budget_gauges(&budgets);
                Ok(budgets)
            }
            None => Err(CostTrackerError::NotFound(format!(
                "reservation_id: no reservation {reservation_id:?}"
            ))),
        }
    }
}

pub fn period_name(period: BudgetPeriod) -> &'static str {
    match period {
        BudgetPeriod::Day => "day",
        BudgetPeriod::Month => "month",
    }
}

/// The `scope` label of budget metrics: `tenant=a,model=m/month`.
fn scope_label(status: &BudgetStatus) -> String {
    format!(
        "{}/{}",
        status.budget.scope.label(),
        period_name(status.budget.period)
    )
}

fn as_f64(amount: Usd) -> f64 {
    amount.to_string().parse().unwrap_or(0.0)
}

fn publish_budget_gauges(statuses: &[BudgetStatus]) {
    for status in statuses {
        let scope = scope_label(status);
        if let Some(remaining) = status.remaining_usd() {
            metrics::gauge!("tollgate_budget_remaining_usd", "scope" => scope.clone())
                .set(as_f64(remaining));
        }
        if let Some(hard) = status.budget.hard_limit_usd {
            metrics::gauge!("tollgate_budget_limit_usd", "scope" => scope.clone(), "kind" => "hard")
                .set(as_f64(hard));
        }
        if let Some(soft) = status.budget.soft_limit_usd {
            metrics::gauge!("tollgate_budget_limit_usd", "scope" => scope, "kind" => "soft")
                .set(as_f64(soft));
        }
    }
}

/// The columns of both export formats, in order.
pub const CSV_HEADER: &str = "request_id,attempt,timestamp,tenant,user,agent,provider,model,tier,input_tokens,output_tokens,cached_input_tokens,cache_write_input_tokens,estimated,cost_usd,latency_micros,token_cache_hit_tokens,routing_reason,query_sha256,status\n";

/// The generic CSV of `entries`, header first: what every backend's CSV export must equal.
pub fn csv_bytes(entries: &[UsageEntry]) -> Vec<u8> {
    let mut out = CSV_HEADER.as_bytes().to_vec();
    for entry in entries {
        write_csv_row(&mut out, entry);
    }
    out
}

fn timestamp_text(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// RFC 4180: a field with a comma, quote or line break is quoted, quotes doubled.
fn push_csv_field(out: &mut Vec<u8>, field: &str) {
    if field.contains([',', '"', '\n', '\r']) {
        out.push(b'"');
        out.extend_from_slice(field.replace('"', "\"\"").as_bytes());
        out.push(b'"');
    } else {
        out.extend_from_slice(field.as_bytes());
    }
}

fn write_csv_row(out: &mut Vec<u8>, entry: &UsageEntry) {
    use std::io::Write;
    push_csv_field(out, &entry.request_id);
    let _ = write!(
        out,
        ",{},{},",
        entry.attempt,
        timestamp_text(entry.timestamp)
    );
    for field in [
        &entry.tenant,
        &entry.user,
        &entry.agent,
        &entry.provider,
        &entry.model,
    ] {
        push_csv_field(out, field);
        out.push(b',');
    }
    let _ = write!(
        out,
        "{},{},{},{},{},{},{},{},{},",
        tier_name(entry.tier),
        entry.input_tokens,
        entry.output_tokens,
        entry.cached_input_tokens,
        entry.cache_write_input_tokens,
        entry.estimated,
        entry.cost_usd,
        entry.latency_micros,
        entry.token_cache_hit_tokens
    );
    push_csv_field(out, &entry.routing_reason);
    out.push(b',');
    push_csv_field(out, &entry.query_sha256);
    let _ = writeln!(out, ",{}", status_name(entry.status));
}

#[derive(serde::Serialize)]
struct JsonRow<'a> {
    request_id: &'a str,
    attempt: u32,
    timestamp: String,
    tenant: &'a str,
    user: &'a str,
    agent: &'a str,
    provider: &'a str,
    model: &'a str,
    tier: &'static str,
    input_tokens: i64,
    output_tokens: i64,
    cached_input_tokens: i64,
    cache_write_input_tokens: i64,
    estimated: bool,
    cost_usd: Usd,
    latency_micros: i64,
    token_cache_hit_tokens: i64,
    routing_reason: &'a str,
    query_sha256: &'a str,
    status: &'static str,
}

fn write_json_row(out: &mut Vec<u8>, entry: &UsageEntry) -> serde_json::Result<()> {
    serde_json::to_writer(
        &mut *out,
        &JsonRow {
            request_id: &entry.request_id,
            attempt: entry.attempt,
            timestamp: timestamp_text(entry.timestamp),
            tenant: &entry.tenant,
            user: &entry.user,
            agent: &entry.agent,
            provider: &entry.provider,
            model: &entry.model,
            tier: tier_name(entry.tier),
            input_tokens: entry.input_tokens,
            output_tokens: entry.output_tokens,
            cached_input_tokens: entry.cached_input_tokens,
            cache_write_input_tokens: entry.cache_write_input_tokens,
            estimated: entry.estimated,
            cost_usd: entry.cost_usd,
            latency_micros: entry.latency_micros,
            token_cache_hit_tokens: entry.token_cache_hit_tokens,
            routing_reason: &entry.routing_reason,
            query_sha256: &entry.query_sha256,
            status: status_name(entry.status),
        },
    )?;
    out.push(b'\n');
    Ok(())
}

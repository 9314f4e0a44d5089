//! proto <-> domain for `tollgate.v1.CostTracker`. Input is checked here, at the boundary:
//! every problem is INVALID_ARGUMENT naming the field (`records[3].cost_usd`), and what passes
//! becomes a domain type for [`crate::service`].

use std::pin::Pin;
use std::sync::Arc;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use tokio_stream::StreamExt;
use tollgate_kit::error::HasErrorCode;
use tollgate_kit::money::Usd;
use tollgate_proto::v1 as pb;
use tollgate_proto::v1::cost_tracker_server::CostTracker;
use tonic::{Request, Response, Status};

use crate::error::{CostTrackerError, CostTrackerResult};
use crate::model::{
    Budget, BudgetPeriod, BudgetScope, BudgetStatus, ExportQuery, GroupBy, RecordOutcome,
    ReserveRequest, SpendFilter, SpendQuery, TimeRange, UsageEntry, truncate_to_micros,
};
use crate::pricing::{PriceTable, TokenCounts};
use crate::service::{CostTrackerService, DEFAULT_RESERVATION_TTL_SECS, ExportFormat};
use crate::store::UsageStore;

/// Records further in the future than this are refused: a clock that far off would put spend in
/// the wrong period.
const MAX_FUTURE_SKEW_SECS: i64 = 300;
/// Largest RecordBatch; bigger batches should be split by the caller.
pub const MAX_BATCH_RECORDS: usize = 10_000;
/// Longest identifier or label accepted (request ids, tenants, models, ...).
const MAX_TEXT_LEN: usize = 512;
/// Longest reservation lifetime.
const MAX_TTL_SECS: u32 = 86_400;

#[derive(Debug)]
pub struct CostTrackerApi<S> {
    service: Arc<CostTrackerService<S>>,
}

impl<S> CostTrackerApi<S> {
    pub fn new(service: Arc<CostTrackerService<S>>) -> Self {
        Self { service }
    }
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> CostTrackerError {
    CostTrackerError::invalid(field, problem)
}

fn status_of(error: CostTrackerError) -> Status {
    error.to_status()
}

fn bounded_text(field: &str, value: &str) -> CostTrackerResult<()> {
    if value.len() > MAX_TEXT_LEN {
        return Err(invalid(field, format!("at most {MAX_TEXT_LEN} bytes")));
    }
    Ok(())
}

fn count(field: &str, value: u64) -> CostTrackerResult<i64> {
    i64::try_from(value).map_err(|_| invalid(field, format!("{value} is too large")))
}

fn to_datetime(field: &str, ts: &prost_types::Timestamp) -> CostTrackerResult<DateTime<Utc>> {
    let nanos = u32::try_from(ts.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .ok_or_else(|| invalid(field, format!("nanos {} out of range", ts.nanos)))?;
    DateTime::from_timestamp(ts.seconds, nanos)
        .ok_or_else(|| invalid(field, format!("seconds {} out of range", ts.seconds)))
}

fn to_timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// Validates one record; `prefix` is `record` or `records[3]`. A record without a cost gets
/// the cost of its tokens at the configured price of its model.
pub fn entry_from_proto(
    prefix: &str,
    record: pb::UsageRecord,
    prices: &PriceTable,
    now: DateTime<Utc>,
) -> CostTrackerResult<UsageEntry> {
    let field = |name: &str| format!("{prefix}.{name}");
    if record.request_id.is_empty() {
        return Err(invalid(field("request_id"), "must not be empty"));
    }
    for (name, value) in [
        ("request_id", &record.request_id),
        ("tenant", &record.tenant),
        ("user", &record.user),
        ("agent", &record.agent),
        ("provider", &record.provider),
        ("model", &record.model),
        ("routing_reason", &record.routing_reason),
    ] {
        bounded_text(&field(name), value)?;
    }
    if record.attempt == 0 {
        return Err(invalid(field("attempt"), "attempts are numbered from 1"));
    }
    let timestamp = match &record.timestamp {
        Some(ts) => to_datetime(&field("timestamp"), ts)?,
        None => now,
    };
    if timestamp > now + chrono::Duration::seconds(MAX_FUTURE_SKEW_SECS) {
        return Err(invalid(
            field("timestamp"),
            format!("{timestamp} is more than {MAX_FUTURE_SKEW_SECS} s in the future"),
        ));
    }
    let tier = pb::Tier::try_from(record.tier)
        .map_err(|_| invalid(field("tier"), format!("unknown tier {}", record.tier)))?;
    let status = pb::AttemptStatus::try_from(record.status)
        .map_err(|_| invalid(field("status"), format!("unknown status {}", record.status)))?;
    let usage = record.usage.unwrap_or_default();
    if usage.cached_input_tokens > usage.input_tokens {
        return Err(invalid(
            field("usage.cached_input_tokens"),
            "cached input tokens are part of input_tokens and cannot exceed them",
        ));
    }
    if !record.query_sha256.is_empty()
        && (record.query_sha256.len() != 64
            || !record.query_sha256.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(invalid(
            field("query_sha256"),
            "must be 64 hexadecimal digits (a SHA-256)",
        ));
    }
    let cost_usd = if record.cost_usd.is_empty() {
        let tokens = TokenCounts {
            input: usage.input_tokens,
            output: usage.output_tokens,
            cached_input: usage.cached_input_tokens,
            cache_write: usage.cache_write_input_tokens,
        };
        prices.cost(&record.model, tokens).ok_or_else(|| {
            invalid(
                field("cost_usd"),
                format!(
                    "no cost given and no price configured for model {:?} (cost_tracker.prices)",
                    record.model
                ),
            )
        })?
    } else {
        Usd::parse_non_negative(&field("cost_usd"), &record.cost_usd)
            .map_err(|e| invalid(e.field, e.problem))?
    };
    Ok(UsageEntry {
        timestamp: truncate_to_micros(timestamp),
        tier: tier as i16,
        input_tokens: count(&field("usage.input_tokens"), usage.input_tokens)?,
        output_tokens: count(&field("usage.output_tokens"), usage.output_tokens)?,
        cached_input_tokens: count(
            &field("usage.cached_input_tokens"),
            usage.cached_input_tokens,
        )?,
        cache_write_input_tokens: count(
            &field("usage.cache_write_input_tokens"),
            usage.cache_write_input_tokens,
        )?,
        estimated: usage.estimated,
        cost_usd,
        latency_micros: count(&field("latency_micros"), record.latency_micros)?,
        token_cache_hit_tokens: count(
            &field("token_cache_hit_tokens"),
            record.token_cache_hit_tokens,
        )?,
        status: status as i16,
        request_id: record.request_id,
        attempt: record.attempt,
        tenant: record.tenant,
        user: record.user,
        agent: record.agent,
        provider: record.provider,
        model: record.model,
        routing_reason: record.routing_reason,
        query_sha256: record.query_sha256.to_ascii_lowercase(),
    })
}

fn record_response(entry: &UsageEntry, outcome: RecordOutcome) -> pb::RecordResponse {
    pb::RecordResponse {
        duplicate: outcome == RecordOutcome::Duplicate,
        cost_usd: entry.cost_usd.to_string(),
    }
}

fn filter_from_proto(
    prefix: &str,
    filter: Option<pb::SpendFilter>,
) -> CostTrackerResult<SpendFilter> {
    let filter = filter.unwrap_or_default();
    let tier = pb::Tier::try_from(filter.tier).map_err(|_| {
        invalid(
            format!("{prefix}.tier"),
            format!("unknown tier {}", filter.tier),
        )
    })?;
    Ok(SpendFilter {
        tenant: filter.tenant,
        provider: filter.provider,
        model: filter.model,
        agent: filter.agent,
        tier: tier as i16,
    })
}

/// The current UTC calendar month.
fn current_month(now: DateTime<Utc>) -> TimeRange {
    let start = BudgetPeriod::Month.start_of(now);
    let (year, month) = if start.month() == 12 {
        (start.year() + 1, 1)
    } else {
        (start.year(), start.month() + 1)
    };
    let end = Utc
        .with_ymd_and_hms(year, month, 1, 0, 0, 0)
        .single()
        .unwrap_or(start);
    TimeRange { start, end }
}

fn range_from_proto(
    range: Option<pb::TimeRange>,
    whole_hours: bool,
) -> CostTrackerResult<TimeRange> {
    let Some(range) = range else {
        return Ok(current_month(Utc::now()));
    };
    let start = range
        .start
        .as_ref()
        .ok_or_else(|| invalid("range.start", "required when a range is given"))
        .and_then(|ts| to_datetime("range.start", ts))?;
    let end = range
        .end
        .as_ref()
        .ok_or_else(|| invalid("range.end", "required when a range is given"))
        .and_then(|ts| to_datetime("range.end", ts))?;
    if whole_hours {
        for (name, at) in [("range.start", start), ("range.end", end)] {
            if at.timestamp() % 3600 != 0 || at.timestamp_subsec_nanos() != 0 {
                return Err(invalid(
                    name,
                    format!("{at} is not a whole UTC hour (spend is kept per hour)"),
                ));
            }
        }
    }
    if end <= start {
        return Err(invalid("range.end", "must be after range.start"));
    }
    Ok(TimeRange { start, end })
}

fn scope_from_proto(
    prefix: &str,
    scope: Option<pb::BudgetScope>,
) -> CostTrackerResult<BudgetScope> {
    let scope = scope.unwrap_or_default();
    for (name, value) in [
        ("tenant", &scope.tenant),
        ("provider", &scope.provider),
        ("model", &scope.model),
    ] {
        bounded_text(&format!("{prefix}.{name}"), value)?;
    }
    Ok(BudgetScope {
        tenant: scope.tenant,
        provider: scope.provider,
        model: scope.model,
    })
}

fn period_from_proto(field: &str, period: i32) -> CostTrackerResult<BudgetPeriod> {
    match pb::BudgetPeriod::try_from(period) {
        Ok(pb::BudgetPeriod::Day) => Ok(BudgetPeriod::Day),
        Ok(pb::BudgetPeriod::Month) => Ok(BudgetPeriod::Month),
        _ => Err(invalid(
            field,
            "must be BUDGET_PERIOD_DAY or BUDGET_PERIOD_MONTH",
        )),
    }
}

fn optional_limit(field: &str, text: &str) -> CostTrackerResult<Option<Usd>> {
    if text.is_empty() {
        return Ok(None);
    }
    Usd::parse_non_negative(field, text)
        .map(Some)
        .map_err(|e| invalid(e.field, e.problem))
}

pub fn budget_from_proto(budget: Option<pb::Budget>) -> CostTrackerResult<Budget> {
    let budget = budget.ok_or_else(|| invalid("budget", "required"))?;
    let soft_limit_usd = optional_limit("budget.soft_limit_usd", &budget.soft_limit_usd)?;
    let hard_limit_usd = optional_limit("budget.hard_limit_usd", &budget.hard_limit_usd)?;
    if soft_limit_usd.is_none() && hard_limit_usd.is_none() {
        return Err(invalid(
            "budget.hard_limit_usd",
            "set a hard limit, a soft limit or both",
        ));
    }
    Ok(Budget {
        scope: scope_from_proto("budget.scope", budget.scope)?,
        period: period_from_proto("budget.period", budget.period)?,
        soft_limit_usd,
        hard_limit_usd,
    })
}

fn budget_to_proto(budget: &Budget) -> pb::Budget {
    pb::Budget {
        scope: Some(pb::BudgetScope {
            tenant: budget.scope.tenant.clone(),
            provider: budget.scope.provider.clone(),
            model: budget.scope.model.clone(),
        }),
        period: match budget.period {
            BudgetPeriod::Day => pb::BudgetPeriod::Day as i32,
            BudgetPeriod::Month => pb::BudgetPeriod::Month as i32,
        },
        soft_limit_usd: budget
            .soft_limit_usd
            .map(|v| v.to_string())
            .unwrap_or_default(),
        hard_limit_usd: budget
            .hard_limit_usd
            .map(|v| v.to_string())
            .unwrap_or_default(),
    }
}

pub fn status_to_proto(status: &BudgetStatus) -> pb::BudgetStatus {
    pb::BudgetStatus {
        budget: Some(budget_to_proto(&status.budget)),
        period_start: Some(to_timestamp(status.period_start)),
        spent_usd: status.spent_usd.to_string(),
        reserved_usd: status.reserved_usd.to_string(),
        remaining_usd: status
            .remaining_usd()
            .map(|v| v.to_string())
            .unwrap_or_default(),
        soft_limit_reached: status.soft_limit_reached(),
    }
}

fn group_by_from_proto(value: i32) -> CostTrackerResult<GroupBy> {
    use pb::SpendGroupBy as G;
    match G::try_from(value) {
        Ok(G::Tenant) => Ok(GroupBy::Tenant),
        Ok(G::Provider) => Ok(GroupBy::Provider),
        Ok(G::Model) => Ok(GroupBy::Model),
        Ok(G::Agent) => Ok(GroupBy::Agent),
        Ok(G::Tier) => Ok(GroupBy::Tier),
        Ok(G::Day) => Ok(GroupBy::Day),
        Ok(G::Month) => Ok(GroupBy::Month),
        _ => Err(invalid(
            "group_by",
            "must be one of SPEND_GROUP_BY_TENANT, _PROVIDER, _MODEL, _AGENT, _TIER, _DAY, _MONTH",
        )),
    }
}

#[tonic::async_trait]
impl<S: UsageStore> CostTracker for CostTrackerApi<S> {
    async fn record(
        &self,
        request: Request<pb::RecordRequest>,
    ) -> Result<Response<pb::RecordResponse>, Status> {
        let record = request
            .into_inner()
            .record
            .ok_or_else(|| status_of(invalid("record", "required")))?;
        let entry = entry_from_proto("record", record, self.service.prices(), Utc::now())
            .map_err(status_of)?;
        let outcomes = self
            .service
            .record_batch(std::slice::from_ref(&entry))
            .await
            .map_err(status_of)?;
        let outcome = outcomes
            .first()
            .copied()
            .unwrap_or(RecordOutcome::Duplicate);
        Ok(Response::new(record_response(&entry, outcome)))
    }

    async fn record_batch(
        &self,
        request: Request<pb::RecordBatchRequest>,
    ) -> Result<Response<pb::RecordBatchResponse>, Status> {
        let records = request.into_inner().records;
        if records.len() > MAX_BATCH_RECORDS {
            return Err(status_of(invalid(
                "records",
                format!(
                    "at most {MAX_BATCH_RECORDS} records per batch, got {}",
                    records.len()
                ),
            )));
        }
        let now = Utc::now();
        let entries = records
            .into_iter()
            .enumerate()
            .map(|(i, record)| {
                entry_from_proto(&format!("records[{i}]"), record, self.service.prices(), now)
            })
            .collect::<CostTrackerResult<Vec<_>>>()
            .map_err(status_of)?;
        let outcomes = self
            .service
            .record_batch(&entries)
            .await
            .map_err(status_of)?;
        let results: Vec<pb::RecordResponse> = entries
            .iter()
            .zip(&outcomes)
            .map(|(entry, outcome)| record_response(entry, *outcome))
            .collect();
        let duplicates = results.iter().filter(|r| r.duplicate).count();
        Ok(Response::new(pb::RecordBatchResponse {
            stored: u32::try_from(results.len() - duplicates).unwrap_or(u32::MAX),
            duplicates: u32::try_from(duplicates).unwrap_or(u32::MAX),
            results,
        }))
    }

    async fn reserve_budget(
        &self,
        request: Request<pb::ReserveBudgetRequest>,
    ) -> Result<Response<pb::ReserveBudgetResponse>, Status> {
        let request = request.into_inner();
        let reserve = (|| {
            if request.request_id.is_empty() {
                return Err(invalid("request_id", "must not be empty"));
            }
            for (name, value) in [
                ("request_id", &request.request_id),
                ("tenant", &request.tenant),
                ("provider", &request.provider),
                ("model", &request.model),
            ] {
                bounded_text(name, value)?;
            }
            if request.estimated_cost_usd.is_empty() {
                return Err(invalid("estimated_cost_usd", "must not be empty"));
            }
            let estimated_cost_usd =
                Usd::parse_non_negative("estimated_cost_usd", &request.estimated_cost_usd)
                    .map_err(|e| invalid(e.field, e.problem))?;
            if request.ttl_seconds > MAX_TTL_SECS {
                return Err(invalid(
                    "ttl_seconds",
                    format!("at most {MAX_TTL_SECS} seconds"),
                ));
            }
            Ok(ReserveRequest {
                request_id: request.request_id.clone(),
                tenant: request.tenant.clone(),
                provider: request.provider.clone(),
                model: request.model.clone(),
                estimated_cost_usd,
                ttl_seconds: if request.ttl_seconds == 0 {
                    DEFAULT_RESERVATION_TTL_SECS
                } else {
                    request.ttl_seconds
                },
            })
        })()
        .map_err(status_of)?;
        let (reservation_id, budgets) = self.service.reserve(&reserve).await.map_err(status_of)?;
        Ok(Response::new(pb::ReserveBudgetResponse {
            reservation_id,
            soft_limit_reached: budgets.iter().any(BudgetStatus::soft_limit_reached),
            budgets: budgets.iter().map(status_to_proto).collect(),
        }))
    }

    async fn settle_budget(
        &self,
        request: Request<pb::SettleBudgetRequest>,
    ) -> Result<Response<pb::SettleBudgetResponse>, Status> {
        let request = request.into_inner();
        if request.reservation_id.is_empty() {
            return Err(status_of(invalid("reservation_id", "must not be empty")));
        }
        if request.actual_cost_usd.is_empty() {
            return Err(status_of(invalid(
                "actual_cost_usd",
                "must not be empty (\"0\" releases the reservation)",
            )));
        }
        let actual = Usd::parse_non_negative("actual_cost_usd", &request.actual_cost_usd)
            .map_err(|e| status_of(invalid(e.field, e.problem)))?;
        let budgets = self
            .service
            .settle(&request.reservation_id, actual)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::SettleBudgetResponse {
            budgets: budgets.iter().map(status_to_proto).collect(),
        }))
    }

    async fn set_budget(
        &self,
        request: Request<pb::SetBudgetRequest>,
    ) -> Result<Response<pb::SetBudgetResponse>, Status> {
        let budget = budget_from_proto(request.into_inner().budget).map_err(status_of)?;
        let status = self.service.set_budget(&budget).await.map_err(status_of)?;
        Ok(Response::new(pb::SetBudgetResponse {
            status: Some(status_to_proto(&status)),
        }))
    }

    async fn delete_budget(
        &self,
        request: Request<pb::DeleteBudgetRequest>,
    ) -> Result<Response<pb::DeleteBudgetResponse>, Status> {
        let request = request.into_inner();
        let scope = scope_from_proto("scope", request.scope).map_err(status_of)?;
        let period = period_from_proto("period", request.period).map_err(status_of)?;
        let deleted = self
            .service
            .delete_budget(&scope, period)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::DeleteBudgetResponse { deleted }))
    }

    async fn list_budgets(
        &self,
        request: Request<pb::ListBudgetsRequest>,
    ) -> Result<Response<pb::ListBudgetsResponse>, Status> {
        let tenant = request.into_inner().tenant;
        let tenant_opt = (!tenant.is_empty()).then_some(tenant.as_str());
        let budgets = self
            .service
            .list_budgets(tenant_opt)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::ListBudgetsResponse {
            budgets: budgets.iter().map(status_to_proto).collect(),
        }))
    }

    async fn get_spend(
        &self,
        request: Request<pb::GetSpendRequest>,
    ) -> Result<Response<pb::GetSpendResponse>, Status> {
        let request = request.into_inner();
        let query = (|| {
            Ok(SpendQuery {
                group_by: group_by_from_proto(request.group_by)?,
                filter: filter_from_proto("filter", request.filter.clone())?,
                range: range_from_proto(request.range, true)?,
            })
        })()
        .map_err(status_of)?;
        let (rows, total) = self.service.spend(&query).await.map_err(status_of)?;
        let unsigned = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(Response::new(pb::GetSpendResponse {
            rows: rows
                .into_iter()
                .map(|row| pb::SpendRow {
                    key: row.key,
                    cost_usd: row.cost_usd.to_string(),
                    requests: unsigned(row.requests),
                    input_tokens: unsigned(row.input_tokens),
                    output_tokens: unsigned(row.output_tokens),
                    cached_input_tokens: unsigned(row.cached_input_tokens),
                    estimated_requests: unsigned(row.estimated_requests),
                })
                .collect(),
            total_cost_usd: total.to_string(),
        }))
    }

    async fn export(
        &self,
        request: Request<pb::ExportRequest>,
    ) -> Result<
        Response<
            Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ExportResponse, Status>> + Send>>,
        >,
        Status,
    > {
        let request = request.into_inner();
        let (query, format) = (|| {
            let format = match pb::ExportFormat::try_from(request.format) {
                Ok(pb::ExportFormat::Csv) => ExportFormat::Csv,
                Ok(pb::ExportFormat::Jsonl) => ExportFormat::Jsonl,
                _ => {
                    return Err(invalid(
                        "format",
                        "must be EXPORT_FORMAT_CSV or EXPORT_FORMAT_JSONL",
                    ));
                }
            };
            let query = ExportQuery {
                filter: filter_from_proto("filter", request.filter.clone())?,
                range: range_from_proto(request.range, false)?,
            };
            Ok((query, format))
        })()
        .map_err(status_of)?;
        let chunks = self.service.export(query, format);
        let stream = tokio_stream::wrappers::ReceiverStream::new(chunks).map(|chunk| {
            chunk
                .map(|chunk| pb::ExportResponse {
                    chunk: chunk.bytes,
                    rows: chunk.rows,
                })
                .map_err(status_of)
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

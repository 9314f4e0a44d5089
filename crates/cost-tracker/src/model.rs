//! Domain types of the ledger and of budgets: what grpc.rs produces from the contract after
//! validation, what the store keeps, what service.rs reasons about. No tonic or sqlx types here.

use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use tollgate_kit::money::Usd;

/// One stored attempt of one request: the ledger's row. `(request_id, attempt)` is its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageEntry {
    pub request_id: String,
    pub attempt: u32,
    /// Microsecond precision (what both stores keep).
    pub timestamp: DateTime<Utc>,
    pub tenant: String,
    pub user: String,
    pub agent: String,
    pub provider: String,
    pub model: String,
    /// `tollgate.v1.Tier` number (0 unspecified .. 4 premium).
    pub tier: i16,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_input_tokens: i64,
    pub cache_write_input_tokens: i64,
    pub estimated: bool,
    pub cost_usd: Usd,
    pub latency_micros: i64,
    pub token_cache_hit_tokens: i64,
    pub routing_reason: String,
    pub query_sha256: String,
    /// `tollgate.v1.AttemptStatus` number.
    pub status: i16,
}

impl UsageEntry {
    /// The UTC hour this entry is rolled up into.
    pub fn hour(&self) -> DateTime<Utc> {
        truncate_to_hour(self.timestamp)
    }
}

/// Whether a record was stored now or had been stored before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordOutcome {
    Stored,
    Duplicate,
}

/// The filters shared by spend reports and exports; empty strings and tier 0 match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpendFilter {
    pub tenant: String,
    pub provider: String,
    pub model: String,
    pub agent: String,
    pub tier: i16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Tenant,
    Provider,
    Model,
    Agent,
    Tier,
    Day,
    Month,
}

/// A half-open UTC range [start, end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendQuery {
    pub filter: SpendFilter,
    pub group_by: GroupBy,
    pub range: TimeRange,
}

/// One group of a spend report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpendRow {
    pub key: String,
    pub cost_usd: Usd,
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_input_tokens: i64,
    pub estimated_requests: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportQuery {
    pub filter: SpendFilter,
    pub range: TimeRange,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BudgetPeriod {
    Day,
    Month,
}

impl BudgetPeriod {
    pub fn code(self) -> i16 {
        match self {
            BudgetPeriod::Day => 1,
            BudgetPeriod::Month => 2,
        }
    }

    pub fn from_code(code: i16) -> Option<Self> {
        match code {
            1 => Some(BudgetPeriod::Day),
            2 => Some(BudgetPeriod::Month),
            _ => None,
        }
    }

    /// The start of the period that contains `at`.
    pub fn start_of(self, at: DateTime<Utc>) -> DateTime<Utc> {
        let day = at.date_naive();
        let first = match self {
            BudgetPeriod::Day => day,
            BudgetPeriod::Month => day.with_day(1).unwrap_or(day),
        };
        Utc.from_utc_datetime(&first.and_time(chrono::NaiveTime::MIN))
    }
}

/// What a budget applies to; empty fields match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BudgetScope {
    pub tenant: String,
    pub provider: String,
    pub model: String,
}

impl BudgetScope {
    /// Short label for metrics and error messages: `tenant=a,model=gpt-4o`, `all` when empty.
    pub fn label(&self) -> String {
        let parts: Vec<String> = [
            ("tenant", &self.tenant),
            ("provider", &self.provider),
            ("model", &self.model),
        ]
        .iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
        if parts.is_empty() {
            "all".to_owned()
        } else {
            parts.join(",")
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub scope: BudgetScope,
    pub period: BudgetPeriod,
    pub soft_limit_usd: Option<Usd>,
    pub hard_limit_usd: Option<Usd>,
}

/// A budget in the period that contains "now".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetStatus {
    pub budget: Budget,
    pub period_start: DateTime<Utc>,
    pub spent_usd: Usd,
    pub reserved_usd: Usd,
}

impl BudgetStatus {
    /// hard limit - spent - reserved; None without a hard limit.
    pub fn remaining_usd(&self) -> Option<Usd> {
        let hard = self.budget.hard_limit_usd?;
        hard.checked_sub(self.spent_usd)?
            .checked_sub(self.reserved_usd)
    }

    pub fn soft_limit_reached(&self) -> bool {
        match (
            self.budget.soft_limit_usd,
            self.spent_usd.checked_add(self.reserved_usd),
        ) {
            (Some(soft), Some(used)) => used >= soft,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveRequest {
    pub request_id: String,
    pub tenant: String,
    pub provider: String,
    pub model: String,
    pub estimated_cost_usd: Usd,
    pub ttl_seconds: u32,
}

/// What a reservation attempt ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveOutcome {
    /// Held (or already held under this request id: idempotent).
    Held {
        reservation_id: String,
        budgets: Vec<BudgetStatus>,
    },
    /// The hard limit of `budget` would be crossed; nothing was held.
    Refused { budget: BudgetStatus },
}

pub fn truncate_to_hour(at: DateTime<Utc>) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(at.year(), at.month(), at.day(), at.hour(), 0, 0)
        .single()
        .unwrap_or(at)
}

/// `at` with sub-microsecond digits dropped, the precision both stores keep.
pub fn truncate_to_micros(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at)
}

/// The short name of a `tollgate.v1.Tier` number, as reports show it.
pub fn tier_name(tier: i16) -> &'static str {
    match tier {
        1 => "local",
        2 => "cheap",
        3 => "standard",
        4 => "premium",
        _ => "unspecified",
    }
}

/// The short name of a `tollgate.v1.AttemptStatus` number, as exports show it.
pub fn status_name(status: i16) -> &'static str {
    match status {
        1 => "succeeded",
        2 => "retryable_error",
        3 => "fatal_error",
        4 => "interrupted",
        5 => "skipped_circuit_open",
        _ => "unspecified",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_start_at_utc_midnight_and_on_the_first() {
        let at = Utc
            .with_ymd_and_hms(2026, 3, 17, 13, 45, 10)
            .single()
            .unwrap();
        assert_eq!(
            BudgetPeriod::Day.start_of(at),
            Utc.with_ymd_and_hms(2026, 3, 17, 0, 0, 0).single().unwrap()
        );
        assert_eq!(
            BudgetPeriod::Month.start_of(at),
            Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).single().unwrap()
        );
        assert_eq!(
            truncate_to_hour(at),
            Utc.with_ymd_and_hms(2026, 3, 17, 13, 0, 0)
                .single()
                .unwrap()
        );
    }

    #[test]
    fn scope_labels_name_only_what_is_set() {
        let scope = BudgetScope {
            tenant: "a".into(),
            model: "m".into(),
            ..Default::default()
        };
        assert_eq!(scope.label(), "tenant=a,model=m");
        assert_eq!(BudgetScope::default().label(), "all");
    }
}

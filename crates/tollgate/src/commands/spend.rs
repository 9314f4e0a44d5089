//! `tollgate spend --by model|provider|tenant|agent|tier|day|month [--since DATE] [--until DATE]
//! [--format table|csv|json]`: a spend report from the cost-tracker's rollups.

use std::io::Write;
use std::time::Duration;

use chrono::{NaiveDate, TimeZone, Utc};
use clap::{Args, ValueEnum};
use tollgate_proto::v1 as pb;
use tollgate_proto::v1::cost_tracker_client::CostTrackerClient;

type CommandResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SpendBy {
    Tenant,
    Provider,
    Model,
    Agent,
    Tier,
    Day,
    Month,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Csv,
    Json,
}

#[derive(Debug, Args)]
pub struct SpendArgs {
    /// How to group the spend.
    #[arg(long)]
    pub by: SpendBy,
    /// First UTC day included (YYYY-MM-DD); default: the first of this month.
    #[arg(long)]
    pub since: Option<NaiveDate>,
    /// Last UTC day included (YYYY-MM-DD); default: the end of this month.
    #[arg(long)]
    pub until: Option<NaiveDate>,
    #[arg(long)]
    pub tenant: Option<String>,
    #[arg(long)]
    pub provider: Option<String>,
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
    /// The cost-tracker's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:50054")]
    pub addr: String,
}

fn timestamp(day: NaiveDate) -> prost_types::Timestamp {
    let at = Utc.from_utc_datetime(&day.and_time(chrono::NaiveTime::MIN));
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: 0,
    }
}

fn range(since: Option<NaiveDate>, until: Option<NaiveDate>) -> Option<pb::TimeRange> {
    if since.is_none() && until.is_none() {
        return None; // the service's default: this calendar month
    }
    let today = Utc::now().date_naive();
    let first_of_month = NaiveDate::from_ymd_opt(
        chrono::Datelike::year(&today),
        chrono::Datelike::month(&today),
        1,
    )
    .unwrap_or(today);
    let start = since.unwrap_or(first_of_month);
    let end = until.and_then(|day| day.succ_opt()).unwrap_or_else(|| {
        first_of_month
            .checked_add_months(chrono::Months::new(1))
            .unwrap_or(today)
    });
    Some(pb::TimeRange {
        start: Some(timestamp(start)),
        end: Some(timestamp(end)),
    })
}

pub fn run(args: SpendArgs) -> std::process::ExitCode {
    super::block_on(report(args))
}

async fn report(args: SpendArgs) -> CommandResult {
    let channel = tollgate_kit::grpc::connect_lazy(&args.addr, Duration::from_secs(3))?;
    let group_by = match args.by {
        SpendBy::Tenant => pb::SpendGroupBy::Tenant,
        SpendBy::Provider => pb::SpendGroupBy::Provider,
        SpendBy::Model => pb::SpendGroupBy::Model,
        SpendBy::Agent => pb::SpendGroupBy::Agent,
        SpendBy::Tier => pb::SpendGroupBy::Tier,
        SpendBy::Day => pb::SpendGroupBy::Day,
        SpendBy::Month => pb::SpendGroupBy::Month,
    };
    let response = CostTrackerClient::new(channel)
        .get_spend(pb::GetSpendRequest {
            filter: Some(pb::SpendFilter {
                tenant: args.tenant.unwrap_or_default(),
                provider: args.provider.unwrap_or_default(),
                model: args.model.unwrap_or_default(),
                ..Default::default()
            }),
            group_by: group_by as i32,
            range: range(args.since, args.until),
        })
        .await?
        .into_inner();
    let mut out = std::io::stdout().lock();
    match args.format {
        OutputFormat::Json => {
            let rows: Vec<serde_json::Value> = response
                .rows
                .iter()
                .map(|row| {
                    serde_json::json!({
                        "key": row.key,
                        "cost_usd": row.cost_usd,
                        "requests": row.requests,
                        "input_tokens": row.input_tokens,
                        "output_tokens": row.output_tokens,
                        "cached_input_tokens": row.cached_input_tokens,
                        "estimated_requests": row.estimated_requests,
                    })
                })
                .collect();
            let document =
                serde_json::json!({"rows": rows, "total_cost_usd": response.total_cost_usd});
            writeln!(out, "{}", serde_json::to_string_pretty(&document)?)?;
        }
        OutputFormat::Csv => {
            writeln!(
                out,
                "key,cost_usd,requests,input_tokens,output_tokens,cached_input_tokens,estimated_requests"
            )?;
            for row in &response.rows {
                let key = if row.key.contains([',', '"', '\n']) {
                    format!("\"{}\"", row.key.replace('"', "\"\""))
                } else {
                    row.key.clone()
                };
                writeln!(
                    out,
                    "{key},{},{},{},{},{},{}",
                    row.cost_usd,
                    row.requests,
                    row.input_tokens,
                    row.output_tokens,
                    row.cached_input_tokens,
                    row.estimated_requests
                )?;
            }
        }
        OutputFormat::Table => {
            let width = response
                .rows
                .iter()
                .map(|row| row.key.len())
                .chain([5])
                .max()
                .unwrap_or(5);
            writeln!(
                out,
                "{:<width$}  {:>18}  {:>10}  {:>14}  {:>14}",
                "key", "cost_usd", "requests", "input_tokens", "output_tokens"
            )?;
            for row in &response.rows {
                writeln!(
                    out,
                    "{:<width$}  {:>18}  {:>10}  {:>14}  {:>14}",
                    row.key, row.cost_usd, row.requests, row.input_tokens, row.output_tokens
                )?;
            }
            writeln!(out, "{:<width$}  {:>18}", "total", response.total_cost_usd)?;
        }
    }
    Ok(())
}

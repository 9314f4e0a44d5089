//! `tollgate budget set|show|delete`: manage the cost-tracker's budgets.

use std::io::Write;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use tollgate_proto::v1 as pb;
use tollgate_proto::v1::cost_tracker_client::CostTrackerClient;

type CommandResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Period {
    Day,
    Month,
}

#[derive(Debug, Args)]
pub struct BudgetArgs {
    #[command(subcommand)]
    pub action: BudgetAction,
    /// The cost-tracker's gRPC address.
    #[arg(long, global = true, default_value = "http://127.0.0.1:50054")]
    pub addr: String,
}

#[derive(Debug, Args)]
pub struct ScopeArgs {
    /// Empty scope fields match anything.
    #[arg(long, default_value = "")]
    pub tenant: String,
    #[arg(long, default_value = "")]
    pub provider: String,
    #[arg(long, default_value = "")]
    pub model: String,
    #[arg(long, value_enum)]
    pub period: Period,
}

#[derive(Debug, Subcommand)]
pub enum BudgetAction {
    /// Create or replace the budget of a scope and period.
    Set {
        #[command(flatten)]
        scope: ScopeArgs,
        /// Alert above this spend (USD, exact decimal).
        #[arg(long)]
        soft: Option<String>,
        /// Refuse reservations beyond this spend (USD, exact decimal).
        #[arg(long)]
        hard: Option<String>,
    },
    /// Budgets in their current period: spent, reserved, remaining.
    Show {
        /// Only budgets whose scope tenant is this.
        #[arg(long)]
        tenant: Option<String>,
    },
    Delete {
        #[command(flatten)]
        scope: ScopeArgs,
    },
}

fn scope_and_period(scope: ScopeArgs) -> (pb::BudgetScope, i32) {
    let period = match scope.period {
        Period::Day => pb::BudgetPeriod::Day,
        Period::Month => pb::BudgetPeriod::Month,
    };
    (
        pb::BudgetScope {
            tenant: scope.tenant,
            provider: scope.provider,
            model: scope.model,
        },
        period as i32,
    )
}

pub fn run(args: BudgetArgs) -> std::process::ExitCode {
    super::block_on(execute(args))
}

fn print_statuses(statuses: &[pb::BudgetStatus]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<32}  {:<6}  {:>12}  {:>12}  {:>14}  {:>14}  {:>14}  soft_reached",
        "scope", "period", "soft", "hard", "spent", "reserved", "remaining"
    )?;
    for status in statuses {
        let budget = status.budget.clone().unwrap_or_default();
        let scope = budget.scope.unwrap_or_default();
        let mut parts = Vec::new();
        for (name, value) in [
            ("tenant", &scope.tenant),
            ("provider", &scope.provider),
            ("model", &scope.model),
        ] {
            if !value.is_empty() {
                parts.push(format!("{name}={value}"));
            }
        }
        let label = if parts.is_empty() {
            "all".to_owned()
        } else {
            parts.join(",")
        };
        let period = match pb::BudgetPeriod::try_from(budget.period) {
            Ok(pb::BudgetPeriod::Day) => "day",
            Ok(pb::BudgetPeriod::Month) => "month",
            _ => "?",
        };
        let or_dash = |s: &str| {
            if s.is_empty() {
                "-".to_owned()
            } else {
                s.to_owned()
            }
        };
        writeln!(
            out,
            "{label:<32}  {period:<6}  {:>12}  {:>12}  {:>14}  {:>14}  {:>14}  {}",
            or_dash(&budget.soft_limit_usd),
            or_dash(&budget.hard_limit_usd),
            status.spent_usd,
            status.reserved_usd,
            or_dash(&status.remaining_usd),
            status.soft_limit_reached
        )?;
    }
    Ok(())
}

async fn execute(args: BudgetArgs) -> CommandResult {
    let channel = tollgate_kit::grpc::connect_lazy(&args.addr, Duration::from_secs(3))?;
    let mut client = CostTrackerClient::new(channel);
    match args.action {
        BudgetAction::Set { scope, soft, hard } => {
            let (scope, period) = scope_and_period(scope);
            let response = client
                .set_budget(pb::SetBudgetRequest {
                    budget: Some(pb::Budget {
                        scope: Some(scope),
                        period,
                        soft_limit_usd: soft.unwrap_or_default(),
                        hard_limit_usd: hard.unwrap_or_default(),
                    }),
                })
                .await?
                .into_inner();
            print_statuses(&response.status.into_iter().collect::<Vec<_>>())?;
        }
        BudgetAction::Show { tenant } => {
            let response = client
                .list_budgets(pb::ListBudgetsRequest {
                    tenant: tenant.unwrap_or_default(),
                })
                .await?
                .into_inner();
            print_statuses(&response.budgets)?;
        }
        BudgetAction::Delete { scope } => {
            let (scope, period) = scope_and_period(scope);
            let response = client
                .delete_budget(pb::DeleteBudgetRequest {
                    scope: Some(scope),
                    period,
                })
                .await?
                .into_inner();
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{}",
                if response.deleted {
                    "deleted"
                } else {
                    "no such budget"
                }
            )?;
        }
    }
    Ok(())
}

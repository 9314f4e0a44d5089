//! The command line: `tollgate serve --target ...` and, as the service issues land, client
//! subcommands (models, cache, cases, spend, budget, complete, route, tenant, eval, bench).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "tollgate",
    version,
    about = "tollgate: an LLM gateway that routes each request to the cheapest model that will do"
)]
pub struct Cli {
    /// TOML configuration file; `TOLLGATE_*` environment variables override it.
    #[arg(long, global = true, env = "TOLLGATE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one service, or all five in one process (the default, with embedded stores).
    Serve {
        #[arg(long, value_enum, default_value_t = Target::All)]
        target: Target,
    },
    /// Spend report from the cost-tracker: `tollgate spend --by model`.
    Spend(crate::commands::spend::SpendArgs),
    /// Budgets of the cost-tracker: `tollgate budget set|show|delete`.
    Budget(crate::commands::budget::BudgetArgs),
    /// Offline evaluations: `tollgate eval routing --data FILE.jsonl`.
    Eval(crate::commands::eval::EvalArgs),
    /// The case bank: add a case, search similar ones, stats.
    Cases(crate::commands::cases::CasesArgs),
    /// List the provider-adapter's model catalog with prices and endpoint health.
    Models(crate::commands::models::ModelsArgs),
    /// Token-cache client commands (`cache stats`).
    Cache(crate::commands::cache::CacheArgs),
    /// One request through the router: `tollgate complete "text" [--image F] [--agent A] [--json]`.
    Complete(crate::commands::complete::RequestArgs),
    /// The routing decision only (a dry run): `tollgate route "text" [--json]`.
    Route(crate::commands::complete::RequestArgs),
    /// Print the token IDs of a file or stdin; needs no running server.
    Tokenize(crate::commands::tokenize::TokenizeArgs),
    /// The router's tenants and API keys: `tollgate tenant add|rotate|list` (opens the store
    /// from `[storage]` directly; needs no running server).
    Tenant(crate::commands::tenant::TenantArgs),
}

/// Which service(s) this process runs. The same image runs one target per pod in production.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub enum Target {
    All,
    Router,
    TokenCache,
    Casebank,
    CostTracker,
    ProviderAdapter,
}

impl Target {
    /// The services, in the order of their default ports.
    pub const SERVICES: [Target; 5] = [
        Target::Router,
        Target::TokenCache,
        Target::Casebank,
        Target::CostTracker,
        Target::ProviderAdapter,
    ];

    pub fn services(self) -> Vec<Target> {
        match self {
            Target::All => Self::SERVICES.to_vec(),
            one => vec![one],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Target::All => "all",
            Target::Router => "router",
            Target::TokenCache => "token-cache",
            Target::Casebank => "casebank",
            Target::CostTracker => "cost-tracker",
            Target::ProviderAdapter => "provider-adapter",
        }
    }
}

//! `tollgate tenant add|rotate|list`: manage the router's tenants and their API keys. Opens the
//! tenant store named by the configuration (`[storage]`) directly rather than calling the
//! router, so an operator can issue the first keys before any router runs and needs no admin key
//! on the machine that holds the database credentials anyway.

use std::io::Write;

use clap::{Args, Subcommand};
use serde_json::json;
use tollgate_router::tenants::{ApiKey, NewTenant, Tenant, open_tenant_store};

type CommandResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

#[derive(Debug, Args)]
pub struct TenantArgs {
    #[command(subcommand)]
    pub action: TenantAction,
}

#[derive(Debug, Subcommand)]
pub enum TenantAction {
    /// Create a tenant and print its API key (shown this once only).
    Add {
        /// 1-64 characters of A-Z, a-z, 0-9, '.', '_', '-'.
        name: String,
        /// Sustained requests per second; 0 is unlimited.
        #[arg(long, default_value_t = 0)]
        rps: u32,
        /// Requests allowed at once after a quiet spell; 0 is one second's worth (--rps).
        #[arg(long, default_value_t = 0)]
        burst: u32,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Replace a tenant's API key; the old one stops working within the router's cache TTL.
    Rotate {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Every tenant with its rate limit (never keys: they are not stored).
    List {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: TenantArgs, config: &crate::config::Config) -> std::process::ExitCode {
    let storage = config.storage.clone();
    super::block_on(async move { execute(args, &storage).await })
}

async fn execute(args: TenantArgs, storage: &tollgate_kit::config::StorageConfig) -> CommandResult {
    let store = open_tenant_store(storage).await?;
    let mut out = std::io::stdout().lock();
    match args.action {
        TenantAction::Add {
            name,
            rps,
            burst,
            json,
        } => {
            let new = NewTenant {
                name,
                rate_limit_rps: rps,
                burst,
            };
            let (tenant, key) = store.create(&new).await?;
            print_key(&mut out, "created", &tenant, &key, json)?;
        }
        TenantAction::Rotate { name, json } => {
            let key = store.rotate_key(&name).await?;
            let tenant = store
                .get(&name)
                .await?
                .ok_or_else(|| format!("tenant {name:?} disappeared during rotation"))?;
            print_key(&mut out, "rotated", &tenant, &key, json)?;
        }
        TenantAction::List { json } => {
            let tenants = store.list().await?;
            if json {
                let listed: Vec<_> = tenants.iter().map(tenant_json).collect();
                writeln!(out, "{:#}", json!({ "tenants": listed }))?;
            } else {
                writeln!(
                    out,
                    "{:<32}  {:>10}  {:>10}  created_at",
                    "name", "rps", "burst"
                )?;
                for tenant in &tenants {
                    writeln!(
                        out,
                        "{:<32}  {:>10}  {:>10}  {}",
                        tenant.name,
                        limit_text(tenant.rate_limit_rps),
                        tenant.burst,
                        rfc3339(tenant)
                    )?;
                }
            }
        }
    }
    Ok(())
}

const ONCE_NOTE: &str = "store it now: only its SHA-256 is kept, so it cannot be shown again";

fn print_key(
    out: &mut impl Write,
    what: &str,
    tenant: &Tenant,
    key: &ApiKey,
    json: bool,
) -> std::io::Result<()> {
    if json {
        writeln!(
            out,
            "{:#}",
            json!({ "tenant": tenant_json(tenant), "api_key": key.expose(), "note": ONCE_NOTE })
        )
    } else {
        writeln!(
            out,
            "tenant {:?} {what} (rate limit: {})\napi key: {}\n{ONCE_NOTE}; \
             send it as `authorization: Bearer <api key>`.",
            tenant.name,
            describe_limit(tenant),
            key.expose()
        )
    }
}

/// The limit as the router applies it (a burst of 0 means one second's worth).
fn describe_limit(tenant: &Tenant) -> String {
    match (tenant.rate_limit_rps, tenant.burst) {
        (0, _) => "unlimited".to_owned(),
        (rps, 0) => format!("{rps} rps, burst {rps}"),
        (rps, burst) => format!("{rps} rps, burst {burst}"),
    }
}

fn limit_text(rps: u32) -> String {
    if rps == 0 {
        "unlimited".to_owned()
    } else {
        rps.to_string()
    }
}

fn rfc3339(tenant: &Tenant) -> String {
    chrono::DateTime::<chrono::Utc>::from(tenant.created_at)
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn tenant_json(tenant: &Tenant) -> serde_json::Value {
    json!({
        "name": tenant.name,
        "rate_limit_rps": tenant.rate_limit_rps,
        "burst": tenant.burst,
        "created_at": rfc3339(tenant),
    })
}

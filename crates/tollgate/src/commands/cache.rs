//! `tollgate cache stats [--json] [--addr URL]`: the token-cache's hit and miss counts, hit
//! rates, sizes and Redis errors, from a running service over gRPC.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use tollgate_proto::v1::token_cache_client::TokenCacheClient;
use tollgate_proto::v1::{CacheLayerStats, StatsRequest};

#[derive(Debug, Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub command: CacheCommand,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Hits, misses, hit rate, entries, bytes and tokens per layer (L1 in process, L2 Redis).
    Stats {
        /// The token-cache's gRPC address (default: `peers.token_cache`, http://127.0.0.1:50052).
        #[arg(long)]
        addr: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: CacheArgs, config: &crate::config::Config) -> ExitCode {
    let CacheCommand::Stats { addr, json } = args.command;
    let addr = addr.unwrap_or_else(|| config.peers.token_cache.clone());
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|runtime| runtime.block_on(stats(&addr, json)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            let _ = writeln!(std::io::stderr(), "tollgate cache stats: {message}");
            ExitCode::from(1)
        }
    }
}

async fn stats(addr: &str, json: bool) -> Result<(), String> {
    let channel = tollgate_kit::grpc::connect_lazy(addr, Duration::from_secs(3))
        .map_err(|e| e.to_string())?;
    let stats = TokenCacheClient::new(channel)
        .stats(StatsRequest {})
        .await
        .map_err(|status| format!("{addr}: {}: {}", status.code(), status.message()))?
        .into_inner();
    let l1 = stats.l1.unwrap_or_default();
    let l2 = stats.l2.unwrap_or_default();
    let mut out = std::io::stdout().lock();
    let written = if json {
        let layer = |s: &CacheLayerStats| {
            serde_json::json!({
                "hits": s.hits, "misses": s.misses, "hit_rate": s.hit_rate,
                "entries": s.entries, "bytes": s.bytes, "tokens": s.tokens,
                "errors": s.errors, "available": s.available,
            })
        };
        let value = serde_json::json!({
            "l1": layer(&l1),
            "l2": layer(&l2),
            "tokens_tokenized": stats.tokens_tokenized,
        });
        writeln!(out, "{value}")
    } else {
        let row = |name: &str, s: &CacheLayerStats| {
            format!(
                "{name:<6}{:>10}{:>10}{:>9.1}%{:>10}{:>14}{:>12}{:>8}  {}",
                s.hits,
                s.misses,
                s.hit_rate * 100.0,
                s.entries,
                s.bytes,
                s.tokens,
                s.errors,
                if s.available { "up" } else { "off/down" }
            )
        };
        writeln!(
            out,
            "{:<6}{:>10}{:>10}{:>10}{:>10}{:>14}{:>12}{:>8}  state\n{}\n{}\ntokens tokenized afresh: {}",
            "layer",
            "hits",
            "misses",
            "hit rate",
            "entries",
            "bytes",
            "tokens",
            "errors",
            row("l1", &l1),
            row("l2", &l2),
            stats.tokens_tokenized
        )
    };
    written.map_err(|e| format!("writing the output: {e}"))
}

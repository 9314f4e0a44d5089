//! `tollgate models [--json]`: the provider-adapter's catalog (prices per million tokens,
//! capabilities, context window) with each endpoint's circuit state, from a running service.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;
use tollgate_proto::v1 as pb;
use tollgate_proto::v1::provider_adapter_client::ProviderAdapterClient;

use crate::config::Config;

#[derive(Debug, clap::Args)]
pub struct ModelsArgs {
    /// The provider-adapter's gRPC address; default: `peers.provider_adapter` from config
    /// (http://127.0.0.1:50055).
    #[arg(long)]
    pub addr: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(config: &Config, args: &ModelsArgs) -> ExitCode {
    let addr = args
        .addr
        .clone()
        .unwrap_or_else(|| config.peers.provider_adapter.clone());
    let addr = if addr.contains("://") {
        addr
    } else {
        format!("http://{addr}")
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&error.to_string()),
    };
    let listed = runtime.block_on(async {
        let channel = tollgate_kit::grpc::connect_lazy(&addr, Duration::from_secs(3))
            .map_err(|e| e.to_string())?;
        let mut request = tonic::Request::new(pb::ListModelsRequest {});
        request.set_timeout(Duration::from_secs(10));
        ProviderAdapterClient::new(channel)
            .list_models(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| format!("ListModels at {addr}: {}", status.message()))
    });
    let listed = match listed {
        Ok(listed) => listed,
        Err(message) => return fail(&message),
    };
    let text = if args.json {
        format!("{:#}\n", to_json(&listed))
    } else {
        table(&listed)
    };
    match std::io::stdout().write_all(text.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error.to_string()),
    }
}

fn fail(message: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "tollgate models: {message}");
    ExitCode::from(1)
}

fn tier(value: i32) -> &'static str {
    match pb::Tier::try_from(value) {
        Ok(pb::Tier::Local) => "local",
        Ok(pb::Tier::Cheap) => "cheap",
        Ok(pb::Tier::Standard) => "standard",
        Ok(pb::Tier::Premium) => "premium",
        _ => "unspecified",
    }
}

fn circuit(health: Option<&pb::EndpointHealth>) -> &'static str {
    match health.map(|h| pb::CircuitState::try_from(h.circuit)) {
        Some(Ok(pb::CircuitState::Closed)) => "closed",
        Some(Ok(pb::CircuitState::Open)) => "open",
        Some(Ok(pb::CircuitState::HalfOpen)) => "half-open",
        _ => "unknown",
    }
}

fn capabilities(caps: Option<&pb::Capabilities>) -> Vec<&'static str> {
    let Some(caps) = caps else {
        return Vec::new();
    };
    [
        (caps.vision, "vision"),
        (caps.tools, "tools"),
        (caps.token_ids, "token_ids"),
        (caps.embeddings, "embeddings"),
        (caps.json_mode, "json_mode"),
        (caps.streaming, "streaming"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect()
}

fn to_json(listed: &pb::ListModelsResponse) -> serde_json::Value {
    let models: Vec<serde_json::Value> = listed
        .models
        .iter()
        .map(|model| {
            let price = model.price.clone().unwrap_or_default();
            let health = model.health.as_ref();
            json!({
                "id": model.id,
                "provider": model.provider,
                "provider_kind": model.provider_kind,
                "upstream_model": model.upstream_model,
                "tier": tier(model.tier),
                "capabilities": capabilities(model.capabilities.as_ref()),
                "context_window": model.context_window,
                "max_output_tokens": model.max_output_tokens,
                "tokenizer": model.tokenizer,
                "price_per_mtok_usd": {
                    "input": price.input_per_mtok_usd,
                    "output": price.output_per_mtok_usd,
                    "cached_input": price.cached_input_per_mtok_usd,
                    "cache_write": price.cache_write_per_mtok_usd,
                },
                "health": {
                    "circuit": circuit(health),
                    "consecutive_failures": health.map(|h| h.consecutive_failures).unwrap_or(0),
                    "last_error_kind": health.map(|h| h.last_error_kind.clone()).unwrap_or_default(),
                },
            })
        })
        .collect();
    let groups: serde_json::Map<String, serde_json::Value> = listed
        .groups
        .iter()
        .map(|group| (group.name.clone(), json!(group.models)))
        .collect();
    json!({ "models": models, "groups": groups })
}

fn table(listed: &pb::ListModelsResponse) -> String {
    let header = [
        "MODEL",
        "PROVIDER",
        "TIER",
        "CONTEXT",
        "IN $/MTOK",
        "OUT $/MTOK",
        "CACHED $/MTOK",
        "CIRCUIT",
        "CAPABILITIES",
    ];
    let rows: Vec<Vec<String>> = listed
        .models
        .iter()
        .map(|model| {
            let price = model.price.clone().unwrap_or_default();
            vec![
                model.id.clone(),
                format!("{} ({})", model.provider, model.provider_kind),
                tier(model.tier).to_owned(),
                model.context_window.to_string(),
                price.input_per_mtok_usd,
                price.output_per_mtok_usd,
                price.cached_input_per_mtok_usd,
                circuit(model.health.as_ref()).to_owned(),
                capabilities(model.capabilities.as_ref()).join(","),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        out.push_str(&line(row));
    }
    if !listed.groups.is_empty() {
        out.push_str("\nGROUPS (fallback chains, tried in order)\n");
        for group in &listed.groups {
            out.push_str(&format!("{}: {}\n", group.name, group.models.join(" -> ")));
        }
    }
    out
}

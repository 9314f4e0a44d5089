//! `tollgate complete TEXT` and `tollgate route TEXT`: one request to a running router, with
//! the answer (complete) or only the routing decision (route, a dry run), as text or JSON.
//!
//! The API key comes from `--api-key` or `TOLLGATE_API_KEY` and is sent as
//! `authorization: Bearer ...`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;
use tollgate_proto::v1 as pb;
use tollgate_proto::v1::router_client::RouterClient;

use crate::config::Config;

#[derive(Debug, clap::Args)]
pub struct RequestArgs {
    /// The user message.
    pub text: String,
    /// An image to send with it (PNG, JPEG, WebP or GIF).
    #[arg(long)]
    pub image: Option<PathBuf>,
    #[arg(long, default_value = "")]
    pub agent: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// The router's gRPC address; default: `peers.router` from config (http://127.0.0.1:50051).
    #[arg(long)]
    pub addr: Option<String>,
    #[arg(long, env = "TOLLGATE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

pub fn run_complete(config: &Config, args: RequestArgs) -> ExitCode {
    super::block_on(async move {
        let (mut client, request) = prepare(config, &args)?;
        let response = client
            .complete(authorized(request, args.api_key.as_deref())?)
            .await?
            .into_inner();
        let decision = response.decision.clone().unwrap_or_default();
        let text = if args.json {
            let usage = response.usage.unwrap_or_default();
            format!(
                "{:#}\n",
                json!({
                    "request_id": response.request_id,
                    "text": response.text,
                    "cost_usd": response.cost_usd,
                    "input_tokens": usage.input_tokens,
                    "output_tokens": usage.output_tokens,
                    "case_id": response.case_id,
                    "decision": decision_json(&decision),
                })
            )
        } else {
            format!(
                "{}\n\n— {} ({}, {}), {} USD, {}\n",
                response.text,
                decision.model,
                tier_name(decision.tier),
                level_name(decision.level),
                response.cost_usd,
                decision.explanation
            )
        };
        std::io::stdout().write_all(text.as_bytes())?;
        Ok(())
    })
}

pub fn run_route(config: &Config, args: RequestArgs) -> ExitCode {
    super::block_on(async move {
        let (mut client, request) = prepare(config, &args)?;
        let route = pb::RouteRequest {
            request: Some(request),
        };
        let decision = client
            .route(authorized(route, args.api_key.as_deref())?)
            .await?
            .into_inner()
            .decision
            .unwrap_or_default();
        let text = if args.json {
            format!("{:#}\n", decision_json(&decision))
        } else {
            format!(
                "{} on {} ({} tier, {} task, confidence {:.2})\nreasons: {}\n{}\n",
                decision.model,
                decision.provider,
                tier_name(decision.tier),
                level_name(decision.level),
                decision.confidence,
                decision.reasons.join(", "),
                decision.explanation
            )
        };
        std::io::stdout().write_all(text.as_bytes())?;
        Ok(())
    })
}

type Client = RouterClient<tollgate_kit::grpc::client::TracedChannel>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn prepare(config: &Config, args: &RequestArgs) -> Result<(Client, pb::CompleteRequest), BoxError> {
    let addr = args
        .addr
        .clone()
        .unwrap_or_else(|| config.peers.router.clone());
    let addr = if addr.contains("://") {
        addr
    } else {
        format!("http://{addr}")
    };
    let channel = tollgate_kit::grpc::connect_lazy(&addr, Duration::from_secs(3))?;
    let mut message = pb::Message {
        role: pb::Role::User as i32,
        text: args.text.clone(),
        ..Default::default()
    };
    if let Some(path) = &args.image {
        message.parts.push(image_part(path)?);
    }
    let request = pb::CompleteRequest {
        agent: args.agent.clone(),
        messages: vec![message],
        ..Default::default()
    };
    Ok((RouterClient::new(channel), request))
}

fn authorized<T>(message: T, api_key: Option<&str>) -> Result<tonic::Request<T>, BoxError> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(Duration::from_secs(120));
    if let Some(key) = api_key.filter(|key| !key.is_empty()) {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse()?);
    }
    Ok(request)
}

fn image_part(path: &Path) -> Result<pb::ContentPart, BoxError> {
    let data = std::fs::read(path).map_err(|e| format!("--image {}: {e}", path.display()))?;
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let mime_type = match extension.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        other => {
            return Err(format!(
                "--image {}: unsupported type {other:?} (png, jpeg, webp or gif)",
                path.display()
            )
            .into());
        }
    };
    Ok(pb::ContentPart {
        part: Some(pb::content_part::Part::Image(pb::Image {
            source: Some(pb::image::Source::Data(data)),
            mime_type: mime_type.to_owned(),
        })),
    })
}

/// The JSON keys of a decision: tier, model, provider, level, confidence, reasons (and the
/// explanation, switches and degraded dependencies).
fn decision_json(decision: &pb::Decision) -> serde_json::Value {
    json!({
        "tier": tier_name(decision.tier),
        "model": decision.model,
        "provider": decision.provider,
        "level": level_name(decision.level),
        "confidence": decision.confidence,
        "reasons": decision.reasons,
        "explanation": decision.explanation,
        "escalated": decision.escalated,
        "switches": decision.switches,
        "degraded": decision.degraded,
        "estimated_cost_usd": decision.estimated_cost_usd,
    })
}

fn tier_name(value: i32) -> &'static str {
    tollgate_router::tier::Tier::from_proto(value).map_or("unspecified", |tier| tier.as_str())
}

fn level_name(value: i32) -> &'static str {
    match pb::ComplexityLevel::try_from(value) {
        Ok(pb::ComplexityLevel::Trivial) => "trivial",
        Ok(pb::ComplexityLevel::Simple) => "simple",
        Ok(pb::ComplexityLevel::Moderate) => "moderate",
        Ok(pb::ComplexityLevel::Complex) => "complex",
        Ok(pb::ComplexityLevel::Expert) => "expert",
        _ => "unspecified",
    }
}

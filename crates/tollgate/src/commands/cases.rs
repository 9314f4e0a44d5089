//! `tollgate cases add|search|stats`: the case bank from the command line, over gRPC to a
//! running casebank (`--addr`, default the casebank's default port on 127.0.0.1).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use tollgate_proto::v1 as pb;
use tollgate_proto::v1::case_bank_client::CaseBankClient;

#[derive(Debug, Args)]
pub struct CasesArgs {
    /// The casebank's gRPC address.
    #[arg(long, global = true, default_value = "http://127.0.0.1:50053")]
    pub addr: String,
    /// Tenant whose cases to use.
    #[arg(long, global = true, default_value = "default")]
    pub tenant: String,
    #[command(subcommand)]
    pub command: CasesCommand,
}

#[derive(Debug, Subcommand)]
pub enum CasesCommand {
    /// Store a case: a task, the tier or model that handled it, and how well it went.
    Add {
        #[arg(long)]
        task: String,
        /// A tier (local, cheap, standard, premium) or a model id.
        #[arg(long)]
        action: String,
        /// How well it went, in [0, 1].
        #[arg(long)]
        reward: f64,
        #[arg(long, default_value = "")]
        agent: String,
        /// Case id; generated when omitted. Storing the same id again changes nothing.
        #[arg(long, default_value = "")]
        id: String,
    },
    /// The most similar past cases of a task.
    Search {
        text: String,
        #[arg(long, default_value_t = 4)]
        k: i32,
        /// Cosine similarity in [-1, 1]; the server's default (0.8) when omitted.
        #[arg(long)]
        min_similarity: Option<f64>,
        /// Reward in [0, 1]; the server's default (0.6) when omitted.
        #[arg(long)]
        min_reward: Option<f64>,
        /// Also list failed cases (reward under min_reward).
        #[arg(long)]
        negatives: bool,
        /// A JSON list of {id, similarity, reward, action, task} instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Counts of stored cases (of `--tenant`, or of every tenant with `--all`).
    Stats {
        #[arg(long)]
        all: bool,
    },
}

pub fn run(args: CasesArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&error),
    };
    match runtime.block_on(execute(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => match error.downcast_ref::<tonic::Status>() {
            Some(status) => fail(&format!("{:?}: {}", status.code(), status.message())),
            None => fail(&error),
        },
    }
}

fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "tollgate cases: {error}");
    ExitCode::from(1)
}

type CliResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// `cheap` → the tier; anything else is a model id.
fn parse_action(text: &str) -> pb::CaseAction {
    let tier = match text.to_ascii_lowercase().trim_start_matches("tier_") {
        "local" => Some(pb::Tier::Local),
        "cheap" => Some(pb::Tier::Cheap),
        "standard" => Some(pb::Tier::Standard),
        "premium" => Some(pb::Tier::Premium),
        _ => None,
    };
    match tier {
        Some(tier) => pb::CaseAction {
            tier: tier as i32,
            ..Default::default()
        },
        None => pb::CaseAction {
            model: text.to_owned(),
            ..Default::default()
        },
    }
}

/// The model when one was recorded, otherwise the tier's name.
fn describe_action(action_opt: Option<&pb::CaseAction>) -> String {
    let Some(action) = action_opt else {
        return String::new();
    };
    let tier = pb::Tier::try_from(action.tier)
        .map(|tier| {
            tier.as_str_name()
                .trim_start_matches("TIER_")
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    match (action.model.is_empty(), action.tier == 0) {
        (true, _) => tier,
        (false, true) => action.model.clone(),
        (false, false) => format!("{tier}/{}", action.model),
    }
}

async fn execute(args: CasesArgs) -> CliResult {
    let channel = tollgate_kit::grpc::connect_lazy(&args.addr, Duration::from_secs(3))?;
    let mut client = CaseBankClient::new(channel);
    let mut out = std::io::stdout().lock();
    match args.command {
        CasesCommand::Add {
            task,
            action,
            reward,
            agent,
            id,
        } => {
            let response = client
                .store_case(pb::StoreCaseRequest {
                    case: Some(pb::Case {
                        id,
                        tenant: args.tenant,
                        agent,
                        task,
                        action: Some(parse_action(&action)),
                        reward: Some(reward),
                        ..Default::default()
                    }),
                })
                .await?
                .into_inner();
            let case = response.case.unwrap_or_default();
            let verb = if response.created {
                "stored"
            } else {
                "already stored"
            };
            writeln!(out, "{verb} case {} ({})", case.id, case.embedder)?;
        }
        CasesCommand::Search {
            text,
            k,
            min_similarity,
            min_reward,
            negatives,
            json,
        } => {
            let response = client
                .retrieve(pb::RetrieveRequest {
                    tenant: args.tenant,
                    task: text,
                    k: Some(k),
                    min_reward,
                    min_similarity,
                    include_negatives: negatives,
                    ..Default::default()
                })
                .await?
                .into_inner();
            let rows: Vec<(bool, pb::ScoredCase)> = response
                .positives
                .into_iter()
                .map(|scored| (true, scored))
                .chain(response.negatives.into_iter().map(|scored| (false, scored)))
                .collect();
            if json {
                let list: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|(positive, scored)| {
                        let case = scored.case.clone().unwrap_or_default();
                        let mut object = serde_json::json!({
                            "id": case.id,
                            "similarity": scored.similarity,
                            "reward": case.reward,
                            "action": describe_action(case.action.as_ref()),
                            "task": case.task,
                        });
                        if negatives && let Some(map) = object.as_object_mut() {
                            map.insert("negative".into(), serde_json::json!(!positive));
                        }
                        object
                    })
                    .collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
            } else if rows.is_empty() {
                writeln!(out, "no similar case")?;
            } else {
                writeln!(
                    out,
                    "{:<38} {:>6} {:>6}  {:<20} task",
                    "id", "sim", "reward", "action"
                )?;
                for (positive, scored) in &rows {
                    let case = scored.case.clone().unwrap_or_default();
                    let reward = case.reward.map_or("-".into(), |r| format!("{r:.2}"));
                    let marker = if *positive { "" } else { " (negative)" };
                    let task: String = case.task.chars().take(60).collect();
                    writeln!(
                        out,
                        "{:<38} {:>6.3} {:>6}  {:<20} {}{marker}",
                        case.id,
                        scored.similarity,
                        reward,
                        describe_action(case.action.as_ref()),
                        task.replace('\n', " ")
                    )?;
                }
            }
        }
        CasesCommand::Stats { all } => {
            let tenant = if all { String::new() } else { args.tenant };
            let stats = client
                .case_stats(pb::CaseStatsRequest { tenant })
                .await?
                .into_inner();
            writeln!(out, "cases:       {}", stats.cases)?;
            writeln!(out, "with reward: {}", stats.with_reward)?;
            writeln!(out, "mean reward: {:.3}", stats.mean_reward)?;
            writeln!(out, "embedder:    {}", stats.embedder)?;
            writeln!(out, "backend:     {}", stats.backend)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_tiers_or_models() {
        assert_eq!(parse_action("cheap").tier, pb::Tier::Cheap as i32);
        assert_eq!(parse_action("TIER_PREMIUM").tier, pb::Tier::Premium as i32);
        let model = parse_action("gpt-4o-mini");
        assert_eq!((model.tier, model.model.as_str()), (0, "gpt-4o-mini"));
        assert_eq!(describe_action(Some(&model)), "gpt-4o-mini");
        assert_eq!(describe_action(Some(&parse_action("cheap"))), "cheap");
    }
}

//! proto <-> domain for `tollgate.v1.CaseBank`: every request is checked here and becomes a
//! domain value, or an INVALID_ARGUMENT naming the offending field.

use chrono::{DateTime, Utc};
use tollgate_kit::error::HasErrorCode;
use tollgate_kit::money::Usd;
use tollgate_proto::v1 as pb;
use tollgate_proto::v1::case_bank_server::CaseBank;
use tonic::{Request, Response, Status};

use crate::error::{CasebankError, CasebankResult};
use crate::model::{
    ActionEstimate, Case, CaseAction, DEFAULT_ESTIMATE_NEIGHBOURS, DEFAULT_K, DEFAULT_MIN_REWARD,
    DEFAULT_MIN_SIMILARITY, EstimateQuery, MAX_K, RetrieveQuery, ScoredCase, Tier,
};
use crate::service::CaseService;

/// Largest id, tenant, agent, tag or model name accepted.
const MAX_NAME_BYTES: usize = 256;
const MAX_TAGS: usize = 32;
/// Neighbours an estimate may consider.
const MAX_NEIGHBOURS: usize = 256;
/// Estimate counts every neighbour with some similarity unless the caller asks for closer ones.
const DEFAULT_ESTIMATE_MIN_SIMILARITY: f64 = 0.0;

#[derive(Debug, Clone)]
pub struct CaseBankApi {
    service: CaseService,
    max_task_bytes: usize,
}

impl CaseBankApi {
    pub fn new(service: CaseService, max_task_bytes: usize) -> Self {
        Self {
            service,
            max_task_bytes,
        }
    }

    fn task(&self, field: &str, task: String) -> CasebankResult<String> {
        if task.trim().is_empty() {
            return Err(CasebankError::invalid(field, "must not be empty"));
        }
        if task.len() > self.max_task_bytes {
            return Err(CasebankError::invalid(
                field,
                format!(
                    "is {} bytes, more than the limit of {}",
                    task.len(),
                    self.max_task_bytes
                ),
            ));
        }
        Ok(task)
    }
}

fn status(error: CasebankError) -> Status {
    error.to_status()
}

fn required_name(field: &str, value: String) -> CasebankResult<String> {
    if value.trim().is_empty() {
        return Err(CasebankError::invalid(field, "must not be empty"));
    }
    optional_name(field, value)
}

fn optional_name(field: &str, value: String) -> CasebankResult<String> {
    if value.len() > MAX_NAME_BYTES {
        return Err(CasebankError::invalid(
            field,
            format!("must be at most {MAX_NAME_BYTES} bytes"),
        ));
    }
    Ok(value)
}

fn reward(field: &str, value: f64) -> CasebankResult<f64> {
    if !(0.0..=1.0).contains(&value) {
        return Err(CasebankError::invalid(field, "must be in [0, 1]"));
    }
    Ok(value)
}

fn similarity(field: &str, value_opt: Option<f64>, default: f64) -> CasebankResult<f64> {
    let value = value_opt.unwrap_or(default);
    if !(-1.0..=1.0).contains(&value) {
        return Err(CasebankError::invalid(field, "must be in [-1, 1]"));
    }
    Ok(value)
}

fn count(field: &str, value_opt: Option<i32>, default: usize, max: usize) -> CasebankResult<usize> {
    let Some(value) = value_opt else {
        return Ok(default);
    };
    match usize::try_from(value) {
        Ok(value) if (1..=max).contains(&value) => Ok(value),
        _ => Err(CasebankError::invalid(
            field,
            format!("must be in 1..={max}, got {value}"),
        )),
    }
}

fn tags(field: &str, values: Vec<String>) -> CasebankResult<Vec<String>> {
    if values.len() > MAX_TAGS {
        return Err(CasebankError::invalid(
            field,
            format!("at most {MAX_TAGS} tags"),
        ));
    }
    values
        .into_iter()
        .enumerate()
        .map(|(i, tag)| required_name(&format!("{field}[{i}]"), tag))
        .collect()
}

fn tier(field: &str, value: i32) -> CasebankResult<Tier> {
    let parsed = pb::Tier::try_from(value)
        .map_err(|_| CasebankError::invalid(field, format!("unknown tier {value}")))?;
    Ok(match parsed {
        pb::Tier::Unspecified => Tier::Unspecified,
        pb::Tier::Local => Tier::Local,
        pb::Tier::Cheap => Tier::Cheap,
        pb::Tier::Standard => Tier::Standard,
        pb::Tier::Premium => Tier::Premium,
    })
}

fn action(field: &str, action_opt: Option<pb::CaseAction>) -> CasebankResult<CaseAction> {
    let action = action_opt.unwrap_or_default();
    let plan_json = action.plan_json;
    if !plan_json.is_empty() && serde_json::from_str::<serde_json::Value>(&plan_json).is_err() {
        return Err(CasebankError::invalid(
            format!("{field}.plan_json"),
            "must be valid JSON",
        ));
    }
    Ok(CaseAction {
        tier: tier(&format!("{field}.tier"), action.tier)?,
        model: optional_name(&format!("{field}.model"), action.model)?,
        plan_json,
    })
}

fn proto_tier(tier: Tier) -> pb::Tier {
    match tier {
        Tier::Unspecified => pb::Tier::Unspecified,
        Tier::Local => pb::Tier::Local,
        Tier::Cheap => pb::Tier::Cheap,
        Tier::Standard => pb::Tier::Standard,
        Tier::Premium => pb::Tier::Premium,
    }
}

fn proto_action(action: CaseAction) -> pb::CaseAction {
    pb::CaseAction {
        tier: proto_tier(action.tier) as i32,
        model: action.model,
        plan_json: action.plan_json,
    }
}

fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// The stored case as the caller sees it.
pub fn proto_case(case: Case) -> pb::Case {
    pb::Case {
        id: case.id,
        tenant: case.tenant,
        agent: case.agent,
        task: case.task,
        action: Some(proto_action(case.action)),
        outcome: case.outcome,
        reward: case.reward,
        cost_usd: case.cost_usd.to_string(),
        latency_micros: case.latency_micros,
        tags: case.tags,
        created_at: Some(timestamp(case.created_at)),
        embedder: case.embedder,
        request_id: case.request_id,
    }
}

fn proto_scored(scored: ScoredCase) -> pb::ScoredCase {
    pb::ScoredCase {
        case: Some(proto_case(std::sync::Arc::unwrap_or_clone(scored.case))),
        similarity: scored.similarity,
    }
}

fn proto_estimate(estimate: ActionEstimate) -> pb::ActionEstimate {
    pb::ActionEstimate {
        action: Some(proto_action(estimate.action)),
        success: estimate.success,
        evidence: estimate.evidence,
        confidence: estimate.confidence,
        mean_cost_usd: estimate
            .mean_cost_usd_opt
            .map(|cost| cost.to_string())
            .unwrap_or_default(),
    }
}

impl CaseBankApi {
    fn new_case(&self, case_opt: Option<pb::Case>) -> CasebankResult<Case> {
        let case = case_opt.ok_or_else(|| CasebankError::invalid("case", "is required"))?;
        let reward = case
            .reward
            .map(|value| reward("case.reward", value))
            .transpose()?;
        let cost_usd = if case.cost_usd.is_empty() {
            Usd::ZERO
        } else {
            Usd::parse_non_negative("case.cost_usd", &case.cost_usd)
                .map_err(|e| CasebankError::invalid("case.cost_usd", e.to_string()))?
        };
        let created_at = match case.created_at {
            None => Utc::now(),
            Some(at) => u32::try_from(at.nanos)
                .ok()
                .and_then(|nanos| DateTime::<Utc>::from_timestamp(at.seconds, nanos))
                .ok_or_else(|| CasebankError::invalid("case.created_at", "out of range"))?,
        };
        Ok(Case {
            id: optional_name("case.id", case.id)?,
            tenant: required_name("case.tenant", case.tenant)?,
            agent: optional_name("case.agent", case.agent)?,
            task: self.task("case.task", case.task)?,
            action: action("case.action", case.action)?,
            outcome: case.outcome,
            reward,
            cost_usd,
            latency_micros: case.latency_micros,
            tags: tags("case.tags", case.tags)?,
            created_at,
            // Set by the service: the caller cannot choose the embedder.
            embedder: String::new(),
            request_id: optional_name("case.request_id", case.request_id)?,
        })
    }
}

fn non_empty_opt(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

#[tonic::async_trait]
impl CaseBank for CaseBankApi {
    async fn store_case(
        &self,
        request: Request<pb::StoreCaseRequest>,
    ) -> Result<Response<pb::StoreCaseResponse>, Status> {
        let case = self.new_case(request.into_inner().case).map_err(status)?;
        let (case, created) = self.service.store_case(case).await.map_err(status)?;
        Ok(Response::new(pb::StoreCaseResponse {
            case: Some(proto_case(case)),
            created,
        }))
    }

    async fn update_reward(
        &self,
        request: Request<pb::UpdateRewardRequest>,
    ) -> Result<Response<pb::UpdateRewardResponse>, Status> {
        let request = request.into_inner();
        let tenant = required_name("tenant", request.tenant).map_err(status)?;
        let id = required_name("case_id", request.case_id).map_err(status)?;
        let value = reward("reward", request.reward).map_err(status)?;
        let outcome_opt = non_empty_opt(request.outcome);
        let case = self
            .service
            .update_reward(&tenant, &id, value, outcome_opt.as_deref())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::UpdateRewardResponse {
            case: Some(proto_case(case)),
        }))
    }

    async fn get_case(
        &self,
        request: Request<pb::GetCaseRequest>,
    ) -> Result<Response<pb::GetCaseResponse>, Status> {
        let request = request.into_inner();
        let tenant = required_name("tenant", request.tenant).map_err(status)?;
        let id = required_name("case_id", request.case_id).map_err(status)?;
        let case = self.service.get_case(&tenant, &id).await.map_err(status)?;
        Ok(Response::new(pb::GetCaseResponse {
            case: Some(proto_case(case)),
        }))
    }

    async fn delete_case(
        &self,
        request: Request<pb::DeleteCaseRequest>,
    ) -> Result<Response<pb::DeleteCaseResponse>, Status> {
        let request = request.into_inner();
        let tenant = required_name("tenant", request.tenant).map_err(status)?;
        let id = required_name("case_id", request.case_id).map_err(status)?;
        let deleted = self
            .service
            .delete_case(&tenant, &id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteCaseResponse { deleted }))
    }

    async fn delete_tenant_cases(
        &self,
        request: Request<pb::DeleteTenantCasesRequest>,
    ) -> Result<Response<pb::DeleteTenantCasesResponse>, Status> {
        let tenant = required_name("tenant", request.into_inner().tenant).map_err(status)?;
        let deleted = self
            .service
            .delete_tenant_cases(&tenant)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeleteTenantCasesResponse { deleted }))
    }

    async fn retrieve(
        &self,
        request: Request<pb::RetrieveRequest>,
    ) -> Result<Response<pb::RetrieveResponse>, Status> {
        let request = request.into_inner();
        let query = (|| -> CasebankResult<RetrieveQuery> {
            Ok(RetrieveQuery {
                tenant: required_name("tenant", request.tenant)?,
                task: self.task("task", request.task)?,
                k: count("k", request.k, DEFAULT_K, MAX_K)?,
                min_reward: reward(
                    "min_reward",
                    request.min_reward.unwrap_or(DEFAULT_MIN_REWARD),
                )?,
                min_similarity: similarity(
                    "min_similarity",
                    request.min_similarity,
                    DEFAULT_MIN_SIMILARITY,
                )?,
                agent_opt: non_empty_opt(optional_name("agent", request.agent)?),
                tags: tags("tags", request.tags)?,
                include_negatives: request.include_negatives,
            })
        })()
        .map_err(status)?;
        let retrieved = self.service.retrieve(query).await.map_err(status)?;
        Ok(Response::new(pb::RetrieveResponse {
            positives: retrieved.positives.into_iter().map(proto_scored).collect(),
            negatives: retrieved.negatives.into_iter().map(proto_scored).collect(),
            embedder: retrieved.embedder,
        }))
    }

    async fn estimate(
        &self,
        request: Request<pb::EstimateRequest>,
    ) -> Result<Response<pb::EstimateResponse>, Status> {
        let request = request.into_inner();
        let query = (|| -> CasebankResult<EstimateQuery> {
            let candidates = request
                .candidates
                .into_iter()
                .enumerate()
                .map(|(i, candidate)| action(&format!("candidates[{i}]"), Some(candidate)))
                .collect::<CasebankResult<Vec<_>>>()?;
            Ok(EstimateQuery {
                tenant: required_name("tenant", request.tenant)?,
                task: self.task("task", request.task)?,
                candidates,
                neighbours: count(
                    "neighbours",
                    request.neighbours,
                    DEFAULT_ESTIMATE_NEIGHBOURS,
                    MAX_NEIGHBOURS,
                )?,
                agent_opt: non_empty_opt(optional_name("agent", request.agent)?),
                min_similarity: similarity(
                    "min_similarity",
                    request.min_similarity,
                    DEFAULT_ESTIMATE_MIN_SIMILARITY,
                )?,
            })
        })()
        .map_err(status)?;
        let estimation = self.service.estimate(query).await.map_err(status)?;
        Ok(Response::new(pb::EstimateResponse {
            estimates: estimation
                .estimates
                .into_iter()
                .map(proto_estimate)
                .collect(),
            cold_start: estimation.cold_start,
            neighbours_found: estimation.neighbours_found,
            embedder: estimation.embedder,
        }))
    }

    async fn case_stats(
        &self,
        request: Request<pb::CaseStatsRequest>,
    ) -> Result<Response<pb::CaseStatsResponse>, Status> {
        let tenant_opt = non_empty_opt(request.into_inner().tenant);
        let stats = self
            .service
            .stats(tenant_opt.as_deref())
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CaseStatsResponse {
            cases: stats.cases,
            with_reward: stats.with_reward,
            mean_reward: stats.mean_reward,
            embedder: self.service.embedder_identity().to_owned(),
            backend: self.service.backend().to_owned(),
        }))
    }
}

//! The case of each completed request (stored in the background, reward unknown until
//! feedback) and `Feedback`, which sets that reward. Case ids are derived from tenant and request
//! id ([`crate::pipeline::case_id`]), so feedback needs no lookup table and can never reach
//! another tenant's case.

use std::time::Duration;

use tollgate_kit::error::{ErrorCode, invalid_argument};
use tollgate_kit::money::Usd;
use tollgate_proto::v1 as pb;
use tonic::Status;

use crate::catalog::CatalogModel;
use crate::pipeline::{CompletionRequest, Degraded, Pipeline, case_id};

/// Feedback may arrive before the background store finished: it retries this often.
const FEEDBACK_RETRIES: u32 = 10;
const FEEDBACK_RETRY_DELAY: Duration = Duration::from_millis(50);
/// Longer answers are cut: an example needs the gist, and the case bank stays small.
const MAX_STORED_ANSWER_CHARS: usize = 2000;

fn truncate(text: &str, max_chars: usize) -> &str {
    match text.char_indices().nth(max_chars) {
        Some((index, _)) => &text[..index],
        None => text,
    }
}

/// What answered a request, as its case records it.
#[derive(Debug, Clone, Copy)]
pub struct Served<'a> {
    pub model: &'a CatalogModel,
    pub answer: &'a str,
    pub cost: Usd,
    pub latency_micros: u64,
}

impl Pipeline {
    /// Stores the request's case in the background (tracked: shutdown waits for it). Returns
    /// the case id, or empty when no case is stored.
    pub fn store_case(
        &self,
        tenant: &str,
        request: &CompletionRequest,
        served: &Served<'_>,
        casebank_enabled: bool,
    ) -> String {
        let Served {
            model,
            answer,
            cost,
            latency_micros,
        } = *served;
        if !casebank_enabled || request.store_case == Some(false) {
            return String::new();
        }
        let id = case_id(tenant, &request.request_id);
        let case = pb::Case {
            id: id.clone(),
            tenant: tenant.to_owned(),
            agent: request.agent.clone(),
            task: request.task.clone(),
            action: Some(pb::CaseAction {
                tier: model.tier.to_proto() as i32,
                model: model.id.clone(),
                // The answer, so that later requests can be shown this case as an example.
                plan_json:
                    serde_json::json!({ "answer": truncate(answer, MAX_STORED_ANSWER_CHARS) })
                        .to_string(),
            }),
            outcome: String::new(),
            reward: None,
            cost_usd: cost.to_string(),
            latency_micros,
            tags: request.tags.clone(),
            created_at: None,
            embedder: String::new(),
            request_id: request.request_id.clone(),
        };
        let mut client = self.deps.casebank.clone();
        let timeout = self.timeouts.case_store;
        // In the request's span, so that the store joins the request's trace.
        let store = async move {
            let mut call = tonic::Request::new(pb::StoreCaseRequest { case: Some(case) });
            call.set_timeout(timeout);
            if let Err(status) = client.store_case(call).await {
                Degraded::Casebank.count();
                tracing::warn!(code = ?status.code(), message = status.message(), "case not stored");
            }
        };
        self.shutdown
            .spawn_tracked(tracing::Instrument::in_current_span(store));
        id
    }

    pub async fn feedback(
        &self,
        tenant: &str,
        request: pb::FeedbackRequest,
    ) -> Result<pb::FeedbackResponse, Status> {
        if request.request_id.is_empty() {
            return Err(invalid_argument("request_id", "is required"));
        }
        if !(0.0..=1.0).contains(&request.reward) {
            return Err(invalid_argument(
                "reward",
                format!("must be in [0, 1], got {}", request.reward),
            ));
        }
        let id = case_id(tenant, &request.request_id);
        let mut client = self.deps.casebank.clone();
        for attempt in 0..=FEEDBACK_RETRIES {
            let mut call = tonic::Request::new(pb::UpdateRewardRequest {
                tenant: tenant.to_owned(),
                case_id: id.clone(),
                reward: request.reward,
                outcome: request.note.clone(),
            });
            call.set_timeout(Duration::from_secs(2));
            match client.update_reward(call).await {
                Ok(_) => {
                    return Ok(pb::FeedbackResponse {
                        case_id: id,
                        updated: true,
                    });
                }
                Err(status) if status.code() == tonic::Code::NotFound => {
                    if attempt < FEEDBACK_RETRIES {
                        tokio::time::sleep(FEEDBACK_RETRY_DELAY).await;
                    }
                }
                Err(status) if status.code() == tonic::Code::InvalidArgument => return Err(status),
                Err(status) => {
                    return Err(ErrorCode::Unavailable.status(format!(
                        "the case bank cannot take feedback now ({}); retry later",
                        status.message()
                    )));
                }
            }
        }
        Err(ErrorCode::NotFound.status(format!(
            "request_id: no case for request {:?} (unknown, not stored, or of another tenant)",
            request.request_id
        )))
    }
}

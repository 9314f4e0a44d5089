//! `CompleteStream`: one `decision` event, then `delta`s, then exactly one `end`.
//!
//! Accounting holds for streams as for unary calls: every attempt is recorded once, with the
//! usage of the adapter's final event. When the caller goes away mid-stream the upstream is still
//! read to its end, so that the usage (what the provider bills) is known; when the adapter itself
//! is lost mid-stream, the usage is estimated from what was sent (marked estimated), never zero.
//! Fallback to the next candidate happens only before the first token; the cascade does not run
//! on streams (what was sent cannot be taken back).

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tollgate_kit::money::Usd;
use tollgate_proto::v1 as pb;
use tonic::Status;

use crate::pipeline::accounting::{Reservation, total_cost, total_usage};
use crate::pipeline::cases::Served;
use crate::pipeline::complete::cache_hit_tokens;
use crate::pipeline::generate::{AttemptLog, ExampleSet, generate_request, retryable};
use crate::pipeline::idempotency::Admission;
use crate::pipeline::routing::Routed;
use crate::pipeline::{CompletionRequest, Pipeline, response};
use crate::policy::Reason;

pub type EventSender = mpsc::Sender<Result<pb::CompleteStreamResponse, Status>>;

impl Pipeline {
    /// Runs the stream into `events`. Errors before the first event are returned (the RPC then
    /// fails with that status); later ones end the stream with an `end` carrying the error and
    /// then the status itself.
    pub async fn start_stream(
        self: &Arc<Self>,
        tenant: String,
        request: CompletionRequest,
        events: EventSender,
    ) -> Result<(), Status> {
        match self
            .idempotency
            .admit(&tenant, &request.request_id, request.body_sha256)?
        {
            Admission::Replay(done) => {
                replay(&events, *done).await;
                return Ok(());
            }
            Admission::Run => {}
        }
        let prepared = async {
            let mut routed = self.route(&tenant, &request).await?;
            self.check_max_cost(&request, &routed)?;
            let reservation = self.reserve(&tenant, &request, &mut routed).await?;
            if reservation.soft_limit_reached {
                self.reroute_for_soft_limit(&mut routed, &request).await?;
            }
            Ok::<_, Status>((routed, reservation))
        }
        .await;
        let (routed, reservation) = match prepared {
            Ok(prepared) => prepared,
            Err(status) => {
                self.idempotency.abandon(&tenant, &request.request_id);
                return Err(status);
            }
        };
        let pipeline = Arc::clone(self);
        // The stream runs in its own task (tracked), so that accounting finishes even when the
        // caller disconnects and tonic drops the response.
        let run = async move {
            pipeline
                .run_stream(tenant, request, routed, reservation, events)
                .await;
        };
        self.shutdown
            .spawn_tracked(tracing::Instrument::in_current_span(run));
        Ok(())
    }

    async fn run_stream(
        &self,
        tenant: String,
        request: CompletionRequest,
        mut routed: Routed,
        reservation: Reservation,
        events: EventSender,
    ) {
        let started = Instant::now();
        let use_token_cache = routed.policy.switches.token_cache;
        let mut log = AttemptLog::default();
        let mut caller = Caller {
            events,
            connected: true,
            request_id: request.request_id.clone(),
        };
        let mut outcome: Result<StreamedAnswer, Status> =
            Err(Status::unavailable("no candidate model"));
        let candidates = routed.candidates.clone();
        let policy = Arc::clone(&routed.policy);
        let examples = self.examples(&tenant, &request, &mut routed).await;
        let example_set = ExampleSet {
            examples: &examples,
            template: &policy.case_memory.template,
        };
        for model in &candidates {
            let (prompt, examples_used) = match self
                .prompt_for(&request, model, use_token_cache, &example_set)
                .await
            {
                Ok(prepared) => prepared,
                Err(status) => {
                    outcome = Err(status);
                    break;
                }
            };
            if let Some(degraded) = prompt.degraded {
                routed.mark_degraded(degraded);
            }
            let call_started = Instant::now();
            let call = pb::GenerateStreamRequest {
                request: Some(generate_request(&request, model, &prompt)),
            };
            let mut client = self.deps.provider.clone();
            let mut upstream = match client.generate_stream(call).await {
                Ok(response) => response.into_inner(),
                Err(status) => {
                    log.push_failed_call(model, &status, call_started.elapsed().as_micros() as u64);
                    let again = retryable(&status);
                    outcome = Err(status);
                    if again {
                        continue;
                    }
                    break;
                }
            };
            let mut text = String::new();
            let mut sent_decision = false;
            let mut end: Option<pb::GenerationEnd> = None;
            let mut failure: Option<Status> = None;
            while let Some(item) = upstream.next().await {
                match item {
                    Ok(pb::GenerateStreamResponse {
                        event: Some(pb::generate_stream_response::Event::Delta(delta)),
                    }) => {
                        if !sent_decision {
                            caller.send_decision(&mut routed, model).await;
                            sent_decision = true;
                        }
                        text.push_str(&delta.text);
                        caller
                            .send(pb::complete_stream_response::Event::Delta(delta))
                            .await;
                    }
                    Ok(pb::GenerateStreamResponse {
                        event: Some(pb::generate_stream_response::Event::End(last)),
                    }) => {
                        end = Some(last);
                    }
                    Ok(_) => {}
                    Err(status) => {
                        failure = Some(status);
                        break;
                    }
                }
            }
            match (end, failure) {
                (Some(mut end), _) => {
                    log.extend(std::mem::take(&mut end.attempts));
                    if !sent_decision {
                        caller.send_decision(&mut routed, model).await;
                    }
                    outcome = Ok(StreamedAnswer {
                        model: model.clone(),
                        text: if end.text.is_empty() {
                            text
                        } else {
                            end.text.clone()
                        },
                        end,
                        info: prompt.info,
                        examples_used,
                    });
                    break;
                }
                (None, Some(status)) if !sent_decision && retryable(&status) => {
                    log.push_failed_call(model, &status, call_started.elapsed().as_micros() as u64);
                    outcome = Err(status);
                }
                (None, failure) => {
                    // The adapter went away without its final event: estimate what was used.
                    let status = failure.unwrap_or_else(|| {
                        Status::unavailable("upstream stream ended without its final event")
                    });
                    log.attempts.push(estimated_attempt(
                        log.next_number(),
                        model,
                        routed.estimated_input_tokens,
                        &text,
                        &status,
                        call_started.elapsed().as_micros() as u64,
                    ));
                    outcome = Err(status);
                    break;
                }
            }
        }

        let cost = total_cost(&log.attempts);
        let hits = outcome
            .as_ref()
            .map_or(0, |answer| cache_hit_tokens(&answer.info));
        self.record_attempts(&tenant, &request, &routed, &log.attempts, hits)
            .await;
        self.settle(&reservation, cost);

        match outcome {
            Ok(answer) => {
                let case_id = if answer.end.error.is_none() {
                    self.store_case(
                        &tenant,
                        &request,
                        &Served {
                            model: &answer.model,
                            answer: &answer.text,
                            cost,
                            latency_micros: started.elapsed().as_micros() as u64,
                        },
                        routed.policy.switches.casebank,
                    )
                } else {
                    String::new()
                };
                let decision = response::decision(&routed, Some(&answer.model));
                response::count_decision(&decision);
                let end = pb::CompleteStreamEnd {
                    finish_reason: answer.end.finish_reason,
                    usage: Some(total_usage(&log.attempts)),
                    cost_usd: cost.to_string(),
                    attempts: log.attempts.clone(),
                    context: Some(answer.info),
                    cases_used: answer.examples_used.clone(),
                    case_id: case_id.clone(),
                    error: answer.end.error,
                    text: answer.text.clone(),
                };
                let error = end.error.clone();
                caller
                    .send(pb::complete_stream_response::Event::End(end))
                    .await;
                if let Some(error) = error {
                    self.idempotency.abandon(&tenant, &request.request_id);
                    caller
                        .fail(Status::new(tonic::Code::from(error.code), error.message))
                        .await;
                } else {
                    self.idempotency.complete(
                        &tenant,
                        &request.request_id,
                        &pb::CompleteResponse {
                            request_id: request.request_id.clone(),
                            text: answer.text,
                            finish_reason: answer.end.finish_reason,
                            usage: Some(total_usage(&log.attempts)),
                            cost_usd: cost.to_string(),
                            decision: Some(decision),
                            attempts: log.attempts,
                            context: Some(answer.info),
                            cases_used: answer.examples_used,
                            case_id,
                        },
                    );
                }
            }
            Err(status) => {
                self.idempotency.abandon(&tenant, &request.request_id);
                caller.fail(status).await;
            }
        }
    }
}

#[derive(Debug)]
struct StreamedAnswer {
    model: crate::catalog::CatalogModel,
    text: String,
    end: pb::GenerationEnd,
    info: pb::ContextCacheInfo,
    examples_used: Vec<pb::UsedCase>,
}

/// The caller's side of the stream; a caller that went away stops receiving, nothing else stops.
struct Caller {
    events: EventSender,
    connected: bool,
    request_id: String,
}

impl Caller {
    async fn send(&mut self, event: pb::complete_stream_response::Event) {
        if !self.connected {
            return;
        }
        let message = pb::CompleteStreamResponse {
            event: Some(event),
            request_id: self.request_id.clone(),
        };
        if self.events.send(Ok(message)).await.is_err() {
            self.connected = false;
            tracing::info!(request_id = %self.request_id, "caller left mid-stream; reading the upstream to its end for accounting");
        }
    }

    /// The decision event, naming the model that is about to answer (a fallback when it is not
    /// the first candidate).
    async fn send_decision(&mut self, routed: &mut Routed, model: &crate::catalog::CatalogModel) {
        if model.id != routed.model().id {
            routed.extra_reasons.push(Reason::ProviderFallback);
        }
        self.send(pb::complete_stream_response::Event::Decision(
            response::decision(routed, Some(model)),
        ))
        .await;
    }

    async fn fail(&mut self, status: Status) {
        if self.connected {
            let _ = self.events.send(Err(status)).await;
        }
    }
}

/// A replayed stream: the first answer again, as decision, one delta and end.
async fn replay(events: &EventSender, done: pb::CompleteResponse) {
    let request_id = done.request_id.clone();
    let wrap = |event| {
        Ok(pb::CompleteStreamResponse {
            event: Some(event),
            request_id: request_id.clone(),
        })
    };
    let mut messages = Vec::new();
    if let Some(decision) = done.decision.clone() {
        messages.push(wrap(pb::complete_stream_response::Event::Decision(
            decision,
        )));
    }
    messages.push(wrap(pb::complete_stream_response::Event::Delta(
        pb::GenerationDelta {
            text: done.text.clone(),
            ..Default::default()
        },
    )));
    messages.push(wrap(pb::complete_stream_response::Event::End(
        pb::CompleteStreamEnd {
            finish_reason: done.finish_reason,
            usage: done.usage,
            cost_usd: done.cost_usd,
            attempts: done.attempts,
            context: done.context,
            cases_used: done.cases_used,
            case_id: done.case_id,
            error: None,
            text: done.text,
        },
    )));
    for message in messages {
        if events.send(message).await.is_err() {
            return;
        }
    }
}

/// An attempt whose final usage event never arrived: input as estimated for the budget, output
/// counted from the text sent (about four characters per token), priced at list price.
fn estimated_attempt(
    number: u32,
    model: &crate::catalog::CatalogModel,
    input_tokens: u64,
    text: &str,
    status: &Status,
    latency_micros: u64,
) -> pb::Attempt {
    let output_tokens = (text.chars().count() as u64).div_ceil(4);
    let cost: Usd = model.cost(input_tokens, output_tokens);
    pb::Attempt {
        number,
        provider: model.provider.clone(),
        model: model.id.clone(),
        status: pb::AttemptStatus::Interrupted as i32,
        error_kind: "stream_lost".into(),
        error_message: status.message().chars().take(500).collect(),
        latency_micros,
        usage: Some(pb::Usage {
            input_tokens,
            output_tokens,
            estimated: true,
            ..Default::default()
        }),
        cost_usd: cost.to_string(),
        tier: model.tier.to_proto() as i32,
        ..Default::default()
    }
}

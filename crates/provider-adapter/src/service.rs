//! The provider-adapter's logic, free of gRPC types: check a request against the catalog, then
//! try its chain of models (retries with backoff on the same model, then the next model) under
//! one deadline, with a circuit breaker per provider, and report every attempt with its usage
//! and exact cost.
//!
//! Streams follow the same chain until the first token reaches the caller. After that a failure
//! cannot be retried without sending text twice, so the stream ends with the error and the text
//! sent so far, and the usage of what was sent (counted with the tokenizer when the provider
//! reported none): a streamed request is never accounted as zero tokens.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tollgate_kit::error::ErrorCode;
use tollgate_kit::money::Usd;

use crate::catalog::{Catalog, ModelEntry, Prices, ProviderEntry, Tier};
use crate::config::{LimitsConfig, ProviderAdapterConfig};
use crate::error::{AdapterError, AdapterResult};
use crate::providers::{
    self, ChatRequest, Completion, Embeddings, ErrorKind, FinishReason, Part, Provider,
    ProviderError, StreamEvent, Usage, count_prompt_tokens, prompt_token_bound,
};
use crate::resilience::breaker::{Breaker, HealthSnapshot, Permit};
use crate::resilience::retry::{NextStep, RetryPolicy};

/// Prompts longer than this (bytes of text) are counted on the blocking pool.
const INLINE_COUNT_LIMIT: usize = 16 * 1024;

#[derive(Debug, Clone)]
pub struct GenerateInput {
    /// A model id or a group name.
    pub model: String,
    pub request: ChatRequest,
    pub disable_fallback: bool,
    /// For logs; not interpreted.
    pub request_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptStatus {
    Succeeded,
    RetryableError,
    FatalError,
    Interrupted,
    SkippedCircuitOpen,
}

#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub number: u32,
    pub provider: String,
    pub model: String,
    pub upstream_model: String,
    pub tier: Tier,
    pub status: AttemptStatus,
    pub http_status: u16,
    pub error_kind: String,
    pub error_message: String,
    pub latency: Duration,
    pub first_token: Option<Duration>,
    pub usage: Option<Usage>,
    pub cost: Option<Usd>,
}

#[derive(Debug, Clone)]
pub struct GenerateOutput {
    pub text: String,
    pub finish: FinishReason,
    pub usage: Usage,
    pub cost: Usd,
    pub model: Arc<ModelEntry>,
    pub attempts: Vec<AttemptRecord>,
    pub prompt_token_ids: Vec<u32>,
    pub output_token_ids: Vec<u32>,
}

/// The end of a stream; `error` is set when it failed after tokens were sent.
#[derive(Debug, Clone)]
pub struct StreamEnd {
    pub finish: FinishReason,
    pub usage: Usage,
    pub cost: Usd,
    pub model: Option<Arc<ModelEntry>>,
    pub attempts: Vec<AttemptRecord>,
    pub text: String,
    pub error: Option<StreamError>,
}

#[derive(Debug, Clone)]
pub struct StreamError {
    pub code: ErrorCode,
    pub message: String,
    pub error_kind: String,
}

#[derive(Debug, Clone)]
pub enum StreamItem {
    Delta { text: String, token_ids: Vec<u32> },
    End(Box<StreamEnd>),
}

#[derive(Debug, Clone)]
pub struct EmbedOutput {
    pub vectors: Vec<Vec<f32>>,
    pub model: Arc<ModelEntry>,
    pub usage: Usage,
    pub cost: Usd,
}

/// A checked request: the models to try, in order, and the request.
#[derive(Debug, Clone)]
pub struct Plan {
    chain: Vec<Arc<ModelEntry>>,
    request: Arc<ChatRequest>,
    pub request_id: String,
}

struct Endpoint {
    provider: Arc<dyn Provider>,
    entry: Arc<ProviderEntry>,
    breaker: Breaker,
}

pub struct AdapterService {
    catalog: Arc<Catalog>,
    endpoints: HashMap<String, Endpoint>,
    policy: RetryPolicy,
    limits: LimitsConfig,
}

impl std::fmt::Debug for AdapterService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdapterService")
            .field("models", &self.catalog.models.len())
            .finish_non_exhaustive()
    }
}

/// The output of one successful unary call.
enum CallOutput {
    Completion(Completion),
    Embeddings(Embeddings),
}

impl AdapterService {
    /// Builds the endpoints. HTTP clients are shared: one per distinct connect timeout (reqwest
    /// sets it per client), so every provider with the default timeout uses the same pool.
    pub fn new(config: &ProviderAdapterConfig, catalog: Catalog) -> Result<Self, reqwest::Error> {
        let mut clients: HashMap<Duration, reqwest::Client> = HashMap::new();
        let mut endpoints = HashMap::new();
        for entry in &catalog.providers {
            let client = match clients.get(&entry.connect_timeout) {
                Some(client) => client.clone(),
                None => {
                    let client = providers::http_client(entry.connect_timeout)?;
                    clients.insert(entry.connect_timeout, client.clone());
                    client
                }
            };
            let endpoint = Endpoint {
                provider: providers::build(Arc::clone(entry), client),
                entry: Arc::clone(entry),
                breaker: Breaker::new(
                    &entry.name,
                    config.breaker.failure_threshold,
                    Duration::from_millis(config.breaker.cool_down_ms),
                ),
            };
            endpoints.insert(entry.name.clone(), endpoint);
        }
        Ok(Self {
            catalog: Arc::new(catalog),
            endpoints,
            policy: RetryPolicy::new(&config.retry),
            limits: config.limits.clone(),
        })
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    pub fn health(&self, provider: &str) -> Option<HealthSnapshot> {
        self.endpoints.get(provider).map(|e| e.breaker.snapshot())
    }

    fn endpoint(&self, model: &ModelEntry) -> AdapterResult<&Endpoint> {
        self.endpoints.get(&model.provider.name).ok_or_else(|| {
            AdapterError::Internal(format!("no endpoint for provider {}", model.provider.name))
        })
    }

    /// The exact cost of `usage` on `model`.
    pub fn estimate_cost(&self, model: &str, usage: &Usage) -> AdapterResult<(Usd, Prices)> {
        let entry = self
            .catalog
            .model(model)
            .ok_or_else(|| AdapterError::UnknownModel {
                field: "model".into(),
                model: model.to_owned(),
            })?;
        let cost = entry
            .prices
            .cost(usage)
            .ok_or_else(|| AdapterError::invalid("usage", "token counts too large to price"))?;
        Ok((cost, entry.prices))
    }

    /// Checks `input` against the catalog: the model exists, images go to vision models, the
    /// prompt fits the context window, max_tokens fits the model. Models of a fallback chain
    /// that cannot take the request are left out of it; the first model must take it.
    pub async fn plan(&self, input: GenerateInput) -> AdapterResult<Plan> {
        let request = &input.request;
        let chain = self
            .catalog
            .chain(&input.model, !input.disable_fallback)
            .ok_or_else(|| AdapterError::UnknownModel {
                field: "model".into(),
                model: input.model.clone(),
            })?;
        let is_group = self.catalog.group(&input.model).is_some();
        let token_prompt_possible =
            !request.prompt_token_ids.is_empty() && chain.iter().any(|m| m.capabilities.token_ids);
        if request.messages.is_empty() && !token_prompt_possible {
            return Err(AdapterError::invalid(
                "messages",
                if request.prompt_token_ids.is_empty() {
                    format!("must not be empty (model {})", input.model)
                } else {
                    format!(
                        "must not be empty: prompt_token_ids need a model with token-ID input, and {} has none",
                        input.model
                    )
                },
            ));
        }
        if request.messages.len() > self.limits.max_messages {
            return Err(AdapterError::invalid(
                "messages",
                format!("at most {} messages", self.limits.max_messages),
            ));
        }
        if request.stop.len() > self.limits.max_stop_sequences {
            return Err(AdapterError::invalid(
                "stop",
                format!("at most {} stop sequences", self.limits.max_stop_sequences),
            ));
        }

        let image_field = first_image_field(request);
        let mut candidates: Vec<Arc<ModelEntry>> = chain;
        if let Some(field) = &image_field {
            let first = candidates.first().map(|m| m.id.clone()).unwrap_or_default();
            if !is_group && candidates.first().is_some_and(|m| !m.capabilities.vision) {
                return Err(AdapterError::invalid(
                    field.clone(),
                    format!("model {first} does not accept images (no vision capability)"),
                ));
            }
            candidates.retain(|m| m.capabilities.vision);
            if candidates.is_empty() {
                return Err(AdapterError::invalid(
                    field.clone(),
                    format!("no model of group {} accepts images", input.model),
                ));
            }
        }
        // A model that needs messages cannot serve a request that has only token IDs.
        if request.messages.is_empty() {
            candidates.retain(|m| m.capabilities.token_ids);
        }

        let counted = self.count_prompts(&candidates, request).await?;
        let first = candidates
            .first()
            .cloned()
            .ok_or_else(|| AdapterError::invalid("model", "no model can serve this request"))?;
        let first_tokens = counted.first().copied().unwrap_or(0);
        if first_tokens > first.context_window {
            return Err(AdapterError::invalid(
                if request.uses_token_ids(&first) {
                    "prompt_token_ids"
                } else {
                    "messages"
                },
                format!(
                    "the prompt is {first_tokens} tokens, beyond the context window of {} tokens of model {}",
                    first.context_window, first.id
                ),
            ));
        }
        if let Some(max_tokens) = request.max_tokens
            && first.max_output_tokens > 0
            && max_tokens > first.max_output_tokens
        {
            return Err(AdapterError::invalid(
                "max_tokens",
                format!(
                    "at most {} for model {}, got {max_tokens}",
                    first.max_output_tokens, first.id
                ),
            ));
        }
        let chain = candidates
            .into_iter()
            .zip(counted)
            .filter(|(model, tokens)| *tokens <= model.context_window)
            .map(|(model, _)| model)
            .collect();
        Ok(Plan {
            chain,
            request: Arc::new(input.request),
            request_id: input.request_id,
        })
    }

    /// The prompt's size for each model, exact where it matters: when a cheap upper bound (a
    /// BPE token covers at least one byte) already fits the model's context window, the bound
    /// is returned and nothing is tokenized; otherwise the prompt is counted with the model's
    /// tokenizer (once per tokenizer, off the runtime for big prompts).
    async fn count_prompts(
        &self,
        models: &[Arc<ModelEntry>],
        request: &ChatRequest,
    ) -> AdapterResult<Vec<u64>> {
        let bounds: Vec<u64> = models
            .iter()
            .map(|model| prompt_token_bound(model, request))
            .collect();
        if models
            .iter()
            .zip(&bounds)
            .all(|(model, bound)| *bound <= model.context_window)
        {
            return Ok(bounds);
        }
        let count = |models: &[Arc<ModelEntry>], bounds: &[u64], request: &ChatRequest| {
            let mut by_tokenizer: HashMap<(String, bool), u64> = HashMap::new();
            models
                .iter()
                .zip(bounds)
                .map(|(model, bound)| {
                    if *bound <= model.context_window {
                        return *bound;
                    }
                    let key = (model.tokenizer_name.clone(), request.uses_token_ids(model));
                    *by_tokenizer
                        .entry(key)
                        .or_insert_with(|| count_prompt_tokens(model, request))
                })
                .collect::<Vec<u64>>()
        };
        let text_bytes = bounds.iter().copied().max().unwrap_or(0);
        if text_bytes <= INLINE_COUNT_LIMIT as u64 {
            return Ok(count(models, &bounds, request));
        }
        let (models, request) = (models.to_vec(), request.clone());
        tokio::task::spawn_blocking(move || count(&models, &bounds, &request))
            .await
            .map_err(|e| AdapterError::Internal(format!("token counting task failed: {e}")))
    }

    /// One completion: the plan's chain tried in order until one answers.
    pub async fn generate(&self, plan: &Plan, deadline: Instant) -> AdapterResult<GenerateOutput> {
        let mut attempts = Vec::new();
        let (model, output, usage) = self
            .run_unary(&plan.chain, deadline, &mut attempts, |model| {
                CallOwned::Generate(clamp(&plan.request, model))
            })
            .await
            .map_err(|e| e.into_error(&attempts))?;
        let CallOutput::Completion(completion) = output else {
            return Err(AdapterError::Internal(
                "embeddings answer to a generation".into(),
            ));
        };
        let cost = model.prices.cost(&usage).unwrap_or_default();
        Ok(GenerateOutput {
            text: completion.text,
            finish: completion.finish,
            usage,
            cost,
            model,
            attempts,
            prompt_token_ids: completion.prompt_token_ids,
            output_token_ids: completion.output_token_ids,
        })
    }

    pub async fn embed(
        &self,
        model_id: &str,
        inputs: &[String],
        deadline: Instant,
    ) -> AdapterResult<EmbedOutput> {
        let model =
            self.catalog
                .model(model_id)
                .cloned()
                .ok_or_else(|| AdapterError::UnknownModel {
                    field: "model".into(),
                    model: model_id.to_owned(),
                })?;
        if !model.capabilities.embeddings {
            return Err(AdapterError::invalid(
                "model",
                format!("model {model_id} does not produce embeddings"),
            ));
        }
        if inputs.is_empty() {
            return Err(AdapterError::invalid("inputs", "must not be empty"));
        }
        if inputs.len() > self.limits.max_embed_inputs {
            return Err(AdapterError::invalid(
                "inputs",
                format!("at most {} inputs", self.limits.max_embed_inputs),
            ));
        }
        if let Some(index) = inputs.iter().position(|i| i.is_empty()) {
            return Err(AdapterError::invalid(
                format!("inputs[{index}]"),
                "must not be empty",
            ));
        }
        let mut attempts = Vec::new();
        let (model, output, usage) = self
            .run_unary(&[model], deadline, &mut attempts, |_| {
                CallOwned::Embed(inputs)
            })
            .await
            .map_err(|e| e.into_error(&attempts))?;
        let CallOutput::Embeddings(embeddings) = output else {
            return Err(AdapterError::Internal(
                "generation answer to embeddings".into(),
            ));
        };
        let cost = model.prices.cost(&usage).unwrap_or_default();
        Ok(EmbedOutput {
            vectors: embeddings.vectors,
            model,
            usage,
            cost,
        })
    }

    /// The retry and fallback loop for unary calls. Returns the model that answered, its
    /// output and its usage (counted when the provider reported none).
    async fn run_unary<'r>(
        &self,
        chain: &[Arc<ModelEntry>],
        deadline: Instant,
        attempts: &mut Vec<AttemptRecord>,
        call_for: impl Fn(&ModelEntry) -> CallOwned<'r>,
    ) -> Result<(Arc<ModelEntry>, CallOutput, Usage), ChainFailure> {
        let mut last_error: Option<ProviderError> = None;
        for model in chain {
            let endpoint = self.endpoint(model).map_err(ChainFailure::Adapter)?;
            let call = call_for(model);
            let mut tries = 0;
            loop {
                let Some(time_left) = remaining(deadline) else {
                    return Err(ChainFailure::Deadline);
                };
                let Some(permit) = endpoint.breaker.try_acquire() else {
                    attempts.push(skipped(attempts.len(), model));
                    count_attempt(model, "circuit_open");
                    break;
                };
                tries += 1;
                let timeout = endpoint.entry.timeout.min(time_left);
                let started = Instant::now();
                let future = match &call {
                    CallOwned::Generate(request) => {
                        let future = endpoint.provider.generate(model, request.as_ref());
                        tokio::time::timeout(timeout, async {
                            future.await.map(CallOutput::Completion)
                        })
                        .await
                    }
                    CallOwned::Embed(inputs) => {
                        let future = endpoint.provider.embed(model, inputs);
                        tokio::time::timeout(timeout, async {
                            future.await.map(CallOutput::Embeddings)
                        })
                        .await
                    }
                };
                let latency = started.elapsed();
                let result = future.unwrap_or_else(|_| Err(timeout_error(timeout)));
                histogram(model, latency);
                match result {
                    Ok(output) => {
                        permit.success();
                        let usage = match (&output, &call) {
                            (CallOutput::Completion(c), CallOwned::Generate(request)) => {
                                c.usage.unwrap_or_else(|| estimate(model, request, &c.text))
                            }
                            (CallOutput::Embeddings(e), CallOwned::Embed(inputs)) => {
                                e.usage.unwrap_or_else(|| Usage {
                                    input: inputs.iter().map(|i| model.count_tokens(i)).sum(),
                                    estimated: true,
                                    ..Usage::default()
                                })
                            }
                            _ => Usage::default(),
                        };
                        let cost = model.prices.cost(&usage);
                        attempts.push(AttemptRecord {
                            usage: Some(usage),
                            cost,
                            ..record(attempts.len(), model, AttemptStatus::Succeeded, latency)
                        });
                        count_attempt(model, "ok");
                        count_tokens(model, &usage);
                        return Ok((Arc::clone(model), output, usage));
                    }
                    Err(error) => {
                        report_to_breaker(permit, &error);
                        let status = if error.kind.falls_back() {
                            AttemptStatus::RetryableError
                        } else {
                            AttemptStatus::FatalError
                        };
                        attempts.push(failed(attempts.len(), model, status, latency, &error));
                        count_attempt(
                            model,
                            if error.kind.falls_back() {
                                "retryable_error"
                            } else {
                                "fatal_error"
                            },
                        );
                        tracing::debug!(model = %model.id, provider = %model.provider.name, error_kind = error.kind.as_str(), error = %error.message, "attempt failed");
                        if !error.kind.falls_back() {
                            return Err(ChainFailure::Fatal(error));
                        }
                        let out_of_time = remaining(deadline).is_none();
                        last_error = Some(error.clone());
                        if out_of_time {
                            return Err(ChainFailure::Deadline);
                        }
                        if !error.kind.retry_same() {
                            break;
                        }
                        match self.policy.next_step(tries, error.retry_after, deadline) {
                            NextStep::RetryAfter(wait) => tokio::time::sleep(wait).await,
                            NextStep::NextModel => break,
                        }
                    }
                }
            }
        }
        Err(match last_error {
            Some(error) => ChainFailure::Exhausted(error),
            None => ChainFailure::AllOpen,
        })
    }

    /// Streams a completion into the returned channel: deltas, then one [`StreamItem::End`];
    /// after an End with an error, the error itself follows.
    pub fn generate_stream(
        self: &Arc<Self>,
        plan: Plan,
        deadline: Instant,
    ) -> mpsc::Receiver<Result<StreamItem, AdapterError>> {
        let (items_tx, items_rx) = mpsc::channel(32);
        let service = Arc::clone(self);
        tokio::spawn(async move {
            let result = service.run_stream(&plan, deadline, &items_tx).await;
            if let Err(error) = result {
                let _ = items_tx.send(Err(error)).await;
            }
        });
        items_rx
    }

    async fn run_stream(
        &self,
        plan: &Plan,
        deadline: Instant,
        items_tx: &mpsc::Sender<Result<StreamItem, AdapterError>>,
    ) -> AdapterResult<()> {
        let mut attempts: Vec<AttemptRecord> = Vec::new();
        let mut last_error: Option<ProviderError> = None;
        for model in &plan.chain {
            let endpoint = self.endpoint(model)?;
            let request = clamp(&plan.request, model);
            let mut tries = 0;
            loop {
                let Some(remaining_time) = remaining(deadline) else {
                    return Err(ChainFailure::Deadline.into_error(&attempts));
                };
                let Some(permit) = endpoint.breaker.try_acquire() else {
                    attempts.push(skipped(attempts.len(), model));
                    count_attempt(model, "circuit_open");
                    break;
                };
                tries += 1;
                let started = Instant::now();
                let first_token_by = started + endpoint.entry.timeout.min(remaining_time);
                let outcome = self
                    .stream_attempt(
                        model,
                        endpoint,
                        &request,
                        started,
                        first_token_by,
                        deadline,
                        items_tx,
                    )
                    .await;
                let latency = started.elapsed();
                histogram(model, latency);
                match outcome {
                    AttemptOutcome::Completed {
                        text,
                        finish,
                        usage,
                        first_token,
                    } => {
                        permit.success();
                        let usage = usage
                            .filter(|u| u.input > 0 || u.output > 0 || text.is_empty())
                            .unwrap_or_else(|| estimate(model, &request, &text));
                        let cost = model.prices.cost(&usage).unwrap_or_default();
                        attempts.push(AttemptRecord {
                            usage: Some(usage),
                            cost: Some(cost),
                            first_token,
                            ..record(attempts.len(), model, AttemptStatus::Succeeded, latency)
                        });
                        count_attempt(model, "ok");
                        count_tokens(model, &usage);
                        let end = StreamEnd {
                            finish,
                            usage,
                            cost,
                            model: Some(Arc::clone(model)),
                            attempts,
                            text: String::new(),
                            error: None,
                        };
                        let _ = items_tx.send(Ok(StreamItem::End(Box::new(end)))).await;
                        return Ok(());
                    }
                    AttemptOutcome::CallerGone => {
                        drop(permit);
                        return Ok(());
                    }
                    AttemptOutcome::Interrupted {
                        error,
                        text,
                        usage,
                        first_token,
                        deadline_hit,
                    } => {
                        report_to_breaker(permit, &error);
                        // The caller has the text: charge for it, counted if need be.
                        let usage = usage
                            .filter(|u| u.output > 0)
                            .unwrap_or_else(|| estimate(model, &request, &text));
                        let cost = model.prices.cost(&usage).unwrap_or_default();
                        attempts.push(AttemptRecord {
                            usage: Some(usage),
                            cost: Some(cost),
                            first_token,
                            ..failed(
                                attempts.len(),
                                model,
                                AttemptStatus::Interrupted,
                                latency,
                                &error,
                            )
                        });
                        count_attempt(model, "retryable_error");
                        count_tokens(model, &usage);
                        let failure = if deadline_hit {
                            ChainFailure::Deadline
                        } else {
                            ChainFailure::Exhausted(error.clone())
                        };
                        let adapter_error = failure.into_error(&attempts);
                        let end = StreamEnd {
                            finish: FinishReason::Error,
                            usage,
                            cost,
                            model: Some(Arc::clone(model)),
                            attempts,
                            text,
                            error: Some(StreamError {
                                code: tollgate_kit::error::HasErrorCode::code(&adapter_error),
                                message: adapter_error.to_string(),
                                error_kind: if deadline_hit {
                                    "deadline_exceeded".into()
                                } else {
                                    error.kind.as_str().into()
                                },
                            }),
                        };
                        let _ = items_tx.send(Ok(StreamItem::End(Box::new(end)))).await;
                        return Err(adapter_error);
                    }
                    AttemptOutcome::FailedBeforeFirstToken(error) => {
                        report_to_breaker(permit, &error);
                        let status = if error.kind.falls_back() {
                            AttemptStatus::RetryableError
                        } else {
                            AttemptStatus::FatalError
                        };
                        attempts.push(failed(attempts.len(), model, status, latency, &error));
                        count_attempt(
                            model,
                            if error.kind.falls_back() {
                                "retryable_error"
                            } else {
                                "fatal_error"
                            },
                        );
                        if !error.kind.falls_back() {
                            return Err(ChainFailure::Fatal(error).into_error(&attempts));
                        }
                        if remaining(deadline).is_none() {
                            return Err(ChainFailure::Deadline.into_error(&attempts));
                        }
                        last_error = Some(error.clone());
                        if !error.kind.retry_same() {
                            break;
                        }
                        match self.policy.next_step(tries, error.retry_after, deadline) {
                            NextStep::RetryAfter(wait) => tokio::time::sleep(wait).await,
                            NextStep::NextModel => break,
                        }
                    }
                }
            }
        }
        Err(match last_error {
            Some(error) => ChainFailure::Exhausted(error),
            None => ChainFailure::AllOpen,
        }
        .into_error(&attempts))
    }

    #[allow(clippy::too_many_arguments)]
    async fn stream_attempt(
        &self,
        model: &ModelEntry,
        endpoint: &Endpoint,
        request: &ChatRequest,
        started: Instant,
        first_token_by: Instant,
        deadline: Instant,
        items_tx: &mpsc::Sender<Result<StreamItem, AdapterError>>,
    ) -> AttemptOutcome {
        let open_timeout = first_token_by.saturating_duration_since(Instant::now());
        let opened = tokio::select! {
            () = items_tx.closed() => return AttemptOutcome::CallerGone,
            opened = tokio::time::timeout(open_timeout, endpoint.provider.stream(model, request)) => opened,
        };
        let mut events = match opened {
            Ok(Ok(events)) => events,
            Ok(Err(error)) => return AttemptOutcome::FailedBeforeFirstToken(error),
            Err(_) => return AttemptOutcome::FailedBeforeFirstToken(timeout_error(open_timeout)),
        };
        let mut text = String::new();
        let mut first_token: Option<Duration> = None;
        let mut finish = None;
        let mut usage: Option<Usage> = None;
        loop {
            let now = Instant::now();
            let until = if first_token.is_some() {
                (now + endpoint.entry.stream_idle_timeout).min(deadline)
            } else {
                first_token_by
            };
            let wait = until.saturating_duration_since(now);
            // A caller that hangs up stops the upstream call at once (its connection goes back
            // to the pool or is closed) instead of at the next chunk.
            let next = tokio::select! {
                () = items_tx.closed() => return AttemptOutcome::CallerGone,
                next = tokio::time::timeout(wait, events.next()) => match next {
                    Ok(next) => next,
                    Err(_) => Some(Err(timeout_error(wait))),
                },
            };
            match next {
                None => {
                    return AttemptOutcome::Completed {
                        text,
                        finish: finish.unwrap_or_default(),
                        usage,
                        first_token,
                    };
                }
                Some(Ok(StreamEvent::Delta {
                    text: piece,
                    token_ids,
                })) => {
                    if first_token.is_none() {
                        let elapsed = started.elapsed();
                        first_token = Some(elapsed);
                        metrics::histogram!(
                            "tollgate_provider_first_token_seconds",
                            "provider" => model.provider.name.clone(),
                            "model" => model.id.clone()
                        )
                        .record(elapsed.as_secs_f64());
                    }
                    text.push_str(&piece);
                    let delta = StreamItem::Delta {
                        text: piece,
                        token_ids,
                    };
                    if items_tx.send(Ok(delta)).await.is_err() {
                        return AttemptOutcome::CallerGone;
                    }
                }
                Some(Ok(StreamEvent::Finish {
                    finish: reason,
                    usage: reported,
                })) => {
                    finish = reason.or(finish);
                    usage = reported.or(usage);
                }
                Some(Err(error)) => {
                    if first_token.is_none() {
                        return AttemptOutcome::FailedBeforeFirstToken(error);
                    }
                    return AttemptOutcome::Interrupted {
                        deadline_hit: remaining(deadline).is_none(),
                        error,
                        text,
                        usage,
                        first_token,
                    };
                }
            }
        }
    }
}

enum AttemptOutcome {
    Completed {
        text: String,
        finish: FinishReason,
        usage: Option<Usage>,
        first_token: Option<Duration>,
    },
    FailedBeforeFirstToken(ProviderError),
    Interrupted {
        error: ProviderError,
        text: String,
        usage: Option<Usage>,
        first_token: Option<Duration>,
        deadline_hit: bool,
    },
    CallerGone,
}

/// A call with its request adjusted to the model (max_tokens clamped to what it allows).
enum CallOwned<'r> {
    Generate(std::borrow::Cow<'r, ChatRequest>),
    Embed(&'r [String]),
}

fn clamp<'r>(request: &'r ChatRequest, model: &ModelEntry) -> std::borrow::Cow<'r, ChatRequest> {
    match request.max_tokens {
        Some(max) if model.max_output_tokens > 0 && max > model.max_output_tokens => {
            let mut clamped = request.clone();
            clamped.max_tokens = Some(model.max_output_tokens);
            std::borrow::Cow::Owned(clamped)
        }
        _ => std::borrow::Cow::Borrowed(request),
    }
}

/// How a chain ended without an answer.
#[derive(Debug)]
enum ChainFailure {
    Adapter(AdapterError),
    /// A request error from upstream: not retried, not sent elsewhere.
    Fatal(ProviderError),
    /// Every model failed; the last error decides the code.
    Exhausted(ProviderError),
    Deadline,
    AllOpen,
}

impl ChainFailure {
    fn into_error(self, attempts: &[AttemptRecord]) -> AdapterError {
        let summary = summarize(attempts);
        match self {
            Self::Adapter(error) => error,
            Self::Fatal(error) => AdapterError::Upstream {
                code: if error.kind == ErrorKind::Unsupported
                    || error.kind == ErrorKind::InvalidRequest
                {
                    ErrorCode::InvalidArgument
                } else {
                    ErrorCode::Unavailable
                },
                message: format!(
                    "upstream rejected the request: {}; {summary}",
                    error.message
                ),
                retry_after: None,
            },
            Self::Exhausted(error) => {
                let (code, retry_after) = match error.kind {
                    ErrorKind::RateLimited => (
                        ErrorCode::ResourceExhausted,
                        Some(error.retry_after.unwrap_or(Duration::from_secs(1))),
                    ),
                    _ => (ErrorCode::Unavailable, None),
                };
                AdapterError::Upstream {
                    code,
                    message: format!("every attempt failed; {summary}"),
                    retry_after,
                }
            }
            Self::Deadline => AdapterError::Upstream {
                code: ErrorCode::DeadlineExceeded,
                message: format!("deadline exceeded before an answer; {summary}"),
                retry_after: None,
            },
            Self::AllOpen => AdapterError::Upstream {
                code: ErrorCode::Unavailable,
                message: format!(
                    "every provider of the chain has an open circuit breaker; {summary}"
                ),
                retry_after: None,
            },
        }
    }
}

/// `attempts: #1 mock-cheap (mock): upstream_5xx HTTP 503; #2 ...`, bounded in length.
fn summarize(attempts: &[AttemptRecord]) -> String {
    if attempts.is_empty() {
        return "no attempt was made".into();
    }
    let parts: Vec<String> = attempts
        .iter()
        .map(|a| {
            let status = match a.status {
                AttemptStatus::SkippedCircuitOpen => "skipped, circuit open".to_owned(),
                AttemptStatus::Succeeded => "ok".to_owned(),
                _ if a.http_status > 0 => format!("{} HTTP {}", a.error_kind, a.http_status),
                _ => a.error_kind.clone(),
            };
            format!("#{} {} ({}): {status}", a.number, a.model, a.provider)
        })
        .collect();
    let mut text = format!("attempts: {}", parts.join("; "));
    if let Some(last) = attempts.iter().rev().find(|a| !a.error_message.is_empty()) {
        text.push_str(&format!("; last error: {}", last.error_message));
    }
    providers::truncate(&text, 1_000)
}

fn remaining(deadline: Instant) -> Option<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    (!left.is_zero()).then_some(left)
}

fn timeout_error(after: Duration) -> ProviderError {
    ProviderError::new(
        ErrorKind::Timeout,
        format!("no answer within {} ms", after.as_millis()),
    )
}

fn report_to_breaker(permit: Permit, error: &ProviderError) {
    if error.kind.endpoint_failure() {
        permit.failure(error.kind.as_str());
    } else if error.kind == ErrorKind::InvalidRequest {
        // The endpoint answered sensibly; the request was at fault.
        permit.success();
    }
    // Otherwise (missing key, unsupported): says nothing about the endpoint; the permit is
    // released by dropping it.
}

/// Usage counted with the model's tokenizer, for providers that reported none.
fn estimate(model: &ModelEntry, request: &ChatRequest, output: &str) -> Usage {
    Usage {
        input: count_prompt_tokens(model, request),
        output: model.count_tokens(output),
        cached_input: 0,
        cache_write_input: 0,
        estimated: true,
    }
}

fn record(
    index: usize,
    model: &ModelEntry,
    status: AttemptStatus,
    latency: Duration,
) -> AttemptRecord {
    AttemptRecord {
        number: u32::try_from(index + 1).unwrap_or(u32::MAX),
        provider: model.provider.name.clone(),
        model: model.id.clone(),
        upstream_model: model.upstream_model.clone(),
        tier: model.tier,
        status,
        http_status: 0,
        error_kind: String::new(),
        error_message: String::new(),
        latency,
        first_token: None,
        usage: None,
        cost: None,
    }
}

fn skipped(index: usize, model: &ModelEntry) -> AttemptRecord {
    AttemptRecord {
        error_kind: "circuit_open".into(),
        ..record(
            index,
            model,
            AttemptStatus::SkippedCircuitOpen,
            Duration::ZERO,
        )
    }
}

fn failed(
    index: usize,
    model: &ModelEntry,
    status: AttemptStatus,
    latency: Duration,
    error: &ProviderError,
) -> AttemptRecord {
    AttemptRecord {
        http_status: error.http_status,
        error_kind: error.kind.as_str().into(),
        error_message: error.message.clone(),
        ..record(index, model, status, latency)
    }
}

fn count_attempt(model: &ModelEntry, outcome: &'static str) {
    metrics::counter!(
        "tollgate_provider_requests_total",
        "provider" => model.provider.name.clone(),
        "model" => model.id.clone(),
        "outcome" => outcome
    )
    .increment(1);
}

fn histogram(model: &ModelEntry, latency: Duration) {
    metrics::histogram!(
        "tollgate_provider_request_seconds",
        "provider" => model.provider.name.clone(),
        "model" => model.id.clone()
    )
    .record(latency.as_secs_f64());
}

fn count_tokens(model: &ModelEntry, usage: &Usage) {
    for (kind, tokens) in [
        ("input", usage.input),
        ("output", usage.output),
        ("cached_input", usage.cached_input),
    ] {
        if tokens > 0 {
            metrics::counter!(
                "tollgate_provider_tokens_total",
                "provider" => model.provider.name.clone(),
                "model" => model.id.clone(),
                "kind" => kind
            )
            .increment(tokens);
        }
    }
}

/// `messages[i].parts[j].image` of the first image, for errors that name the field.
fn first_image_field(request: &ChatRequest) -> Option<String> {
    request
        .messages
        .iter()
        .enumerate()
        .find_map(|(i, message)| {
            message
                .parts
                .iter()
                .position(|p| matches!(p, Part::Image(_)))
                .map(|j| {
                    let proto_index = if message.text_shortcut {
                        j.saturating_sub(1)
                    } else {
                        j
                    };
                    format!("messages[{i}].parts[{proto_index}].image")
                })
        })
}

/// For ListModels: seconds since the Unix epoch.
pub fn unix_time(time: SystemTime) -> Option<Duration> {
    time.duration_since(SystemTime::UNIX_EPOCH).ok()
}

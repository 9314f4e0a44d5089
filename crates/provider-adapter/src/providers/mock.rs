//! The built-in offline provider: deterministic answers derived from the input (the same request
//! always gets the same answer), usage counted with the model's real tokenizer, configurable
//! latency and failure rate (a simulated 503), token-ID prompts, streaming and embeddings. It is
//! the embedded default, so the gateway works with no keys and no network.

use std::sync::Arc;

use super::{
    ChatRequest, Completion, Embeddings, ErrorKind, EventStream, FinishReason, Provider,
    ProviderError, ProviderFuture, ProviderResult, Role, StreamEvent, Usage, count_prompt_tokens,
};
use crate::catalog::{ModelEntry, ProviderEntry};

pub struct Mock {
    provider: Arc<ProviderEntry>,
}

impl Mock {
    pub fn new(provider: Arc<ProviderEntry>) -> Self {
        Self { provider }
    }

    async fn delay_or_fail(&self) -> ProviderResult<()> {
        if !self.provider.mock_latency.is_zero() {
            tokio::time::sleep(self.provider.mock_latency).await;
        }
        let percent = self.provider.mock_failure_percent;
        if percent > 0 && fastrand::u8(0..100) < percent {
            return Err(ProviderError {
                kind: ErrorKind::Upstream5xx,
                http_status: 503,
                message: format!(
                    "simulated failure of mock provider {} (mock_failure_percent = {percent})",
                    self.provider.name
                ),
                retry_after: None,
            });
        }
        Ok(())
    }

    async fn call(&self, model: &ModelEntry, request: &ChatRequest) -> ProviderResult<Completion> {
        self.delay_or_fail().await?;
        Ok(complete(model, request))
    }

    async fn open_stream(
        &self,
        model: &ModelEntry,
        request: &ChatRequest,
    ) -> ProviderResult<EventStream> {
        self.delay_or_fail().await?;
        let completion = complete(model, request);
        let mut events: Vec<ProviderResult<StreamEvent>> = completion
            .text
            .split_inclusive(' ')
            .map(|piece| {
                Ok(StreamEvent::Delta {
                    text: piece.to_owned(),
                    token_ids: if request.return_token_ids {
                        model.tokenizer.encode_with_special_tokens(piece)
                    } else {
                        Vec::new()
                    },
                })
            })
            .collect();
        events.push(Ok(StreamEvent::Finish {
            finish: Some(completion.finish),
            usage: completion.usage,
        }));
        let gap = self.provider.mock_latency / 10;
        if gap.is_zero() {
            return Ok(Box::pin(tokio_stream::iter(events)));
        }
        let (events_tx, events_rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            for event in events {
                tokio::time::sleep(gap).await;
                if events_tx.send(event).await.is_err() {
                    return;
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(
            events_rx,
        )))
    }

    async fn call_embed(
        &self,
        model: &ModelEntry,
        inputs: &[String],
    ) -> ProviderResult<Embeddings> {
        self.delay_or_fail().await?;
        let vectors = inputs
            .iter()
            .map(|input| embedding(input, model.embedding_dimensions))
            .collect();
        let input_tokens = inputs.iter().map(|input| model.count_tokens(input)).sum();
        Ok(Embeddings {
            vectors,
            usage: Some(Usage {
                input: input_tokens,
                ..Usage::default()
            }),
        })
    }
}

impl Provider for Mock {
    fn generate<'a>(
        &'a self,
        model: &'a ModelEntry,
        request: &'a ChatRequest,
    ) -> ProviderFuture<'a, Completion> {
        Box::pin(self.call(model, request))
    }

    fn stream<'a>(
        &'a self,
        model: &'a ModelEntry,
        request: &'a ChatRequest,
    ) -> ProviderFuture<'a, EventStream> {
        Box::pin(self.open_stream(model, request))
    }

    fn embed<'a>(
        &'a self,
        model: &'a ModelEntry,
        inputs: &'a [String],
    ) -> ProviderFuture<'a, Embeddings> {
        Box::pin(self.call_embed(model, inputs))
    }
}

/// Token IDs back to text; a cut inside a character becomes U+FFFD rather than nothing.
fn decode(model: &ModelEntry, ids: &[u32]) -> String {
    model
        .tokenizer
        .decode_bytes(ids)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// FNV-1a: stable across runs and platforms, unlike std's hasher.
fn fnv1a(bytes: impl IntoIterator<Item = u8>, seed: u64) -> u64 {
    let mut hash = seed ^ 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The answer: what was asked, briefly, and a digest of the whole input, so that different
/// inputs get different answers and equal inputs equal ones.
fn complete(model: &ModelEntry, request: &ChatRequest) -> Completion {
    let prompt_text = if request.uses_token_ids(model) {
        decode(model, &request.prompt_token_ids)
    } else {
        request
            .messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.text())
            .unwrap_or_default()
    };
    let mut digest = fnv1a(prompt_text.bytes(), 0);
    for message in &request.messages {
        digest = fnv1a(message.text().bytes(), digest);
    }
    let excerpt: Vec<&str> = prompt_text.split_whitespace().take(12).collect();
    let excerpt = excerpt.join(" ");
    let images: usize = request
        .messages
        .iter()
        .map(|m| {
            m.parts
                .iter()
                .filter(|p| matches!(p, super::Part::Image(_)))
                .count()
        })
        .sum();
    let full = if request.json_mode {
        serde_json::json!({
            "model": model.upstream_model,
            "answer": excerpt,
            "images": images,
            "digest": format!("{digest:016x}"),
        })
        .to_string()
    } else {
        let seen = if images > 0 {
            format!(" and {images} image(s)")
        } else {
            String::new()
        };
        format!(
            "Mock answer from {} to \"{excerpt}\"{seen}. Digest {digest:016x}.",
            model.upstream_model
        )
    };
    let full_ids = model.tokenizer.encode_with_special_tokens(&full);
    let limit = request.max_tokens.unwrap_or(model.max_output_tokens).max(1) as usize;
    let (text, output_ids, finish) = if full_ids.len() > limit {
        let kept = full_ids[..limit].to_vec();
        let text = decode(model, &kept);
        (text, kept, FinishReason::Length)
    } else {
        (full, full_ids, FinishReason::Stop)
    };
    let input = count_prompt_tokens(model, request);
    Completion {
        usage: Some(Usage {
            input,
            output: output_ids.len() as u64,
            ..Usage::default()
        }),
        prompt_token_ids: if request.return_token_ids {
            if request.uses_token_ids(model) {
                request.prompt_token_ids.clone()
            } else {
                model.tokenizer.encode_with_special_tokens(&prompt_text)
            }
        } else {
            Vec::new()
        },
        output_token_ids: if request.return_token_ids {
            output_ids
        } else {
            Vec::new()
        },
        text,
        finish,
    }
}

/// A unit vector derived from the input (splitmix64 seeded with its hash).
fn embedding(input: &str, dimensions: u32) -> Vec<f32> {
    let mut state = fnv1a(input.bytes(), 0);
    let mut values: Vec<f32> = (0..dimensions)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    let norm = values.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        for value in &mut values {
            *value /= norm;
        }
    }
    values
}

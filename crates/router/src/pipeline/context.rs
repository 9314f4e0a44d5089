//! Context documents into the prompt, for one model.
//!
//! - A model that accepts token IDs (vLLM, OpenAI legacy completions) gets the token cache's IDs
//!   of the assembled context followed by the IDs of the conversation: context it has seen is
//!   never tokenized again, and no text → tokens → text round trip can drift.
//! - Any other model gets the documents as text in a system message; when the token cache
//!   truncated the context to its token budget, only the documents that fit whole are sent.
//! - With the token cache switched off or unavailable, inline documents go as text; documents by
//!   reference then cannot be resolved, and the request is refused with UNAVAILABLE.

use std::time::Duration;

use tollgate_kit::error::{ErrorCode, invalid_argument};
use tollgate_proto::v1 as pb;
use tonic::Status;

use crate::catalog::CatalogModel;
use crate::pipeline::case_memory::{Example, ExampleTemplate, insert_examples};
use crate::pipeline::request::message_text;
use crate::pipeline::{CompletionRequest, Degraded, Pipeline};

/// What goes to the provider-adapter for one model.
#[derive(Debug, Clone, Default)]
pub struct PreparedPrompt {
    pub messages: Vec<pb::Message>,
    pub prompt_token_ids: Vec<u32>,
    pub info: pb::ContextCacheInfo,
    pub degraded: Option<Degraded>,
}

impl Pipeline {
    /// The prompt for `model`: the request's messages with `examples` (already fitted to the
    /// model's window) before the last user message, and the context documents.
    pub async fn prepare_prompt(
        &self,
        request: &CompletionRequest,
        model: &CatalogModel,
        use_token_cache: bool,
        examples: &[Example],
        template: &ExampleTemplate,
    ) -> Result<PreparedPrompt, Status> {
        let mut messages = request.messages.clone();
        insert_examples(&mut messages, template, examples);
        let Some(context) = &request.context else {
            return Ok(PreparedPrompt {
                messages,
                ..PreparedPrompt::default()
            });
        };
        let by_reference = context.documents.iter().position(|d| d.text.is_none());
        if !use_token_cache {
            if let Some(index) = by_reference {
                return Err(invalid_argument(
                    &format!("context.documents[{index}]"),
                    "documents by reference need the token cache, which is switched off; send the text inline",
                ));
            }
            return Ok(text_prompt(messages, &context.documents, None));
        }
        let token_ids_prompt = model.token_ids && !request.has_images;
        match self.fetch_context(context, model).await {
            Ok(fetched) => {
                let info = cache_info(&fetched);
                if token_ids_prompt {
                    let conversation = self.tokenize(model, &render_conversation(&messages)).await;
                    if let Ok(conversation) = conversation {
                        let mut ids = fetched.token_ids;
                        ids.extend(conversation);
                        return Ok(PreparedPrompt {
                            messages,
                            prompt_token_ids: ids,
                            info,
                            degraded: None,
                        });
                    }
                }
                if let Some(index) = by_reference {
                    return Err(invalid_argument(
                        &format!("context.documents[{index}]"),
                        format!(
                            "documents by reference need a model that accepts token IDs, and {} does not; send the text inline",
                            model.id
                        ),
                    ));
                }
                let fitting: Vec<&str> = fetched
                    .spans
                    .iter()
                    .filter(|span| !span.truncated)
                    .map(|span| span.id.as_str())
                    .collect();
                let mut prompt = text_prompt(messages, &context.documents, Some(&fitting));
                prompt.info = info;
                Ok(prompt)
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "token cache unavailable; context goes as text");
                Degraded::TokenCache.count();
                if by_reference.is_some() {
                    return Err(ErrorCode::Unavailable.status(
                        "context: the token cache is unavailable, so documents by reference cannot be resolved; retry or send the text inline",
                    ));
                }
                let mut prompt = text_prompt(messages, &context.documents, None);
                prompt.degraded = Some(Degraded::TokenCache);
                Ok(prompt)
            }
        }
    }

    async fn fetch_context(
        &self,
        context: &pb::ContextSpec,
        model: &CatalogModel,
    ) -> Result<pb::GetContextResponse, Status> {
        let budget = if context.max_tokens > 0 {
            context.max_tokens
        } else {
            // What the window leaves after the answer.
            i64::try_from(model.context_window.saturating_sub(model.max_output_tokens))
                .unwrap_or(i64::MAX)
        };
        let mut call = tonic::Request::new(pb::GetContextRequest {
            collection: context.collection.clone(),
            documents: context.documents.clone(),
            tokenizer: model.tokenizer.clone(),
            max_tokens: budget,
            separator: None,
        });
        call.set_timeout(self.timeouts.token_cache);
        let mut client = self.deps.token_cache.clone();
        with_timeout(self.timeouts.token_cache, client.get_context(call))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn tokenize(&self, model: &CatalogModel, text: &str) -> Result<Vec<u32>, Status> {
        let mut call = tonic::Request::new(pb::TokenizeRequest {
            tokenizer: model.tokenizer.clone(),
            text: text.to_owned(),
        });
        call.set_timeout(self.timeouts.token_cache);
        let mut client = self.deps.token_cache.clone();
        with_timeout(self.timeouts.token_cache, client.tokenize(call))
            .await
            .map(|response| response.into_inner().token_ids)
    }
}

async fn with_timeout<T>(
    budget: Duration,
    call: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    tokio::time::timeout(budget, call)
        .await
        .unwrap_or_else(|_| Err(Status::deadline_exceeded("token cache too slow")))
}

fn cache_info(response: &pb::GetContextResponse) -> pb::ContextCacheInfo {
    let hit = pb::CacheOutcome::Hit as i32;
    let miss = pb::CacheOutcome::Miss as i32;
    let mut info = pb::ContextCacheInfo {
        context_tokens: response.token_ids.len() as u64,
        documents: response.spans.len() as u32,
        truncated: response.truncated,
        ..Default::default()
    };
    for span in &response.spans {
        if span.l1 == hit {
            info.l1_hits += 1;
        } else if span.l2 == hit {
            info.l2_hits += 1;
        } else if span.l1 == miss || span.l2 == miss {
            info.misses += 1;
        }
    }
    info
}

/// The documents (those in `only` when given) as one system message before the conversation.
fn text_prompt(
    conversation: Vec<pb::Message>,
    documents: &[pb::Document],
    only: Option<&[&str]>,
) -> PreparedPrompt {
    let texts: Vec<&str> = documents
        .iter()
        .filter(|d| only.is_none_or(|ids| ids.contains(&d.id.as_str())))
        .filter_map(|d| d.text.as_deref())
        .collect();
    let mut messages = Vec::with_capacity(conversation.len() + 1);
    if !texts.is_empty() {
        messages.push(pb::Message {
            role: pb::Role::System as i32,
            text: format!("Context:\n\n{}", texts.join("\n\n")),
            ..Default::default()
        });
    }
    messages.extend(conversation);
    PreparedPrompt {
        messages,
        info: pb::ContextCacheInfo {
            documents: texts.len() as u32,
            truncated: texts.len() < documents.len(),
            ..Default::default()
        },
        ..PreparedPrompt::default()
    }
}

/// The conversation as completion-model text after the context: one "role: text" line per
/// message, ending with the assistant's turn.
fn render_conversation(messages: &[pb::Message]) -> String {
    let mut text = String::from("\n\n");
    for message in messages {
        let role = match pb::Role::try_from(message.role) {
            Ok(pb::Role::System) => "System",
            Ok(pb::Role::Assistant) => "Assistant",
            Ok(pb::Role::Tool) => "Tool",
            _ => "User",
        };
        text.push_str(role);
        text.push_str(": ");
        text.push_str(&message_text(message));
        text.push('\n');
    }
    text.push_str("Assistant:");
    text
}

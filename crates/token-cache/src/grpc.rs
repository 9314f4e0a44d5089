//! proto <-> domain for `tollgate.v1.TokenCache`: requests are checked here (INVALID_ARGUMENT
//! naming the field) and become domain types through `TryFrom`; domain errors become statuses
//! through the shared code table.

use std::sync::Arc;
use std::time::Duration;

use tollgate_kit::error::HasErrorCode;
use tollgate_proto::v1 as pb;
use tollgate_proto::v1::token_cache_server::TokenCache;
use tonic::{Request, Response, Status};

use crate::error::TokenCacheError;
use crate::service::{
    ContextRequest, DEFAULT_SEPARATOR, DocumentInput, LayerOutcome, LayerStats, PutRequest,
    TokenCacheService,
};

/// Limits the boundary enforces, from configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_documents: usize,
    pub max_document_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct TokenCacheApi {
    service: Arc<TokenCacheService>,
    limits: Limits,
}

impl TokenCacheApi {
    pub fn new(service: Arc<TokenCacheService>) -> Self {
        let limits = Limits {
            max_documents: service.config().max_documents,
            max_document_bytes: service.config().max_document_bytes,
        };
        Self { service, limits }
    }
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> TokenCacheError {
    TokenCacheError::invalid(field, problem)
}

fn check_collection(collection: &str) -> Result<(), TokenCacheError> {
    if collection.len() > 256 {
        return Err(invalid("collection", "must be at most 256 bytes"));
    }
    Ok(())
}

// The checks take the field's name as a closure: it is only formatted when the check fails
// (a request of many documents would otherwise build two strings per document).

fn check_text(
    field: impl FnOnce() -> String,
    text: &str,
    limits: Limits,
) -> Result<(), TokenCacheError> {
    if text.len() > limits.max_document_bytes {
        return Err(invalid(
            field(),
            format!(
                "is {} bytes, over the limit of {} bytes (token_cache.max_document_bytes)",
                text.len(),
                limits.max_document_bytes
            ),
        ));
    }
    Ok(())
}

fn check_id(field: impl FnOnce() -> String, id: &str) -> Result<(), TokenCacheError> {
    if id.is_empty() {
        return Err(invalid(field(), "must not be empty"));
    }
    if id.len() > 512 {
        return Err(invalid(field(), "must be at most 512 bytes"));
    }
    Ok(())
}

fn check_count(field: &str, count: usize, limits: Limits) -> Result<(), TokenCacheError> {
    if count > limits.max_documents {
        return Err(invalid(
            field,
            format!(
                "{count} documents, over the limit of {} (token_cache.max_documents)",
                limits.max_documents
            ),
        ));
    }
    Ok(())
}

impl TryFrom<(pb::GetContextRequest, Limits)> for ContextRequest {
    type Error = TokenCacheError;

    fn try_from((request, limits): (pb::GetContextRequest, Limits)) -> Result<Self, Self::Error> {
        check_collection(&request.collection)?;
        if request.tokenizer.is_empty() {
            return Err(invalid("tokenizer", "must not be empty"));
        }
        if request.max_tokens < 0 {
            return Err(invalid(
                "max_tokens",
                format!(
                    "must not be negative (got {}); 0 means no limit",
                    request.max_tokens
                ),
            ));
        }
        check_count("documents", request.documents.len(), limits)?;
        let documents = request
            .documents
            .into_iter()
            .enumerate()
            .map(|(index, document)| {
                check_id(|| format!("documents[{index}].id"), &document.id)?;
                Ok(match document.text {
                    Some(text) => {
                        check_text(|| format!("documents[{index}].text"), &text, limits)?;
                        DocumentInput::Inline {
                            id: document.id,
                            text,
                        }
                    }
                    None => DocumentInput::Reference { id: document.id },
                })
            })
            .collect::<Result<Vec<_>, TokenCacheError>>()?;
        Ok(ContextRequest {
            collection: request.collection,
            documents,
            tokenizer: request.tokenizer,
            max_tokens: (request.max_tokens > 0)
                .then(|| usize::try_from(request.max_tokens).unwrap_or(usize::MAX)),
            separator: request
                .separator
                .unwrap_or_else(|| DEFAULT_SEPARATOR.to_owned()),
        })
    }
}

impl TryFrom<(pb::PutDocumentsRequest, Limits)> for PutRequest {
    type Error = TokenCacheError;

    fn try_from((request, limits): (pb::PutDocumentsRequest, Limits)) -> Result<Self, Self::Error> {
        if request.collection.is_empty() {
            return Err(invalid("collection", "must not be empty"));
        }
        check_collection(&request.collection)?;
        check_count("documents", request.documents.len(), limits)?;
        let documents = request
            .documents
            .into_iter()
            .enumerate()
            .map(|(index, document)| {
                check_id(|| format!("documents[{index}].id"), &document.id)?;
                let text = document.text.ok_or_else(|| {
                    invalid(
                        format!("documents[{index}].text"),
                        "must be set: PutDocuments registers the text",
                    )
                })?;
                check_text(|| format!("documents[{index}].text"), &text, limits)?;
                Ok((document.id, text))
            })
            .collect::<Result<Vec<_>, TokenCacheError>>()?;
        Ok(PutRequest {
            collection: request.collection,
            documents,
            tokenizers: request.tokenizers,
            ttl: (request.ttl_seconds > 0)
                .then(|| Duration::from_secs(u64::from(request.ttl_seconds))),
        })
    }
}

impl From<LayerOutcome> for pb::CacheOutcome {
    fn from(outcome: LayerOutcome) -> Self {
        match outcome {
            LayerOutcome::Hit => pb::CacheOutcome::Hit,
            LayerOutcome::Miss => pb::CacheOutcome::Miss,
            LayerOutcome::Skipped => pb::CacheOutcome::Skipped,
            LayerOutcome::Error => pb::CacheOutcome::Error,
        }
    }
}

impl From<LayerStats> for pb::CacheLayerStats {
    fn from(stats: LayerStats) -> Self {
        Self {
            hits: stats.hits,
            misses: stats.misses,
            hit_rate: stats.hit_rate,
            entries: stats.entries,
            bytes: stats.bytes,
            tokens: stats.tokens,
            errors: stats.errors,
            available: stats.available,
        }
    }
}

fn status(error: TokenCacheError) -> Status {
    error.to_status()
}

fn check_tokenize(tokenizer: &str, text: &str, limits: Limits) -> Result<(), Status> {
    if tokenizer.is_empty() {
        return Err(status(invalid("tokenizer", "must not be empty")));
    }
    check_text(|| "text".into(), text, limits).map_err(status)
}

#[tonic::async_trait]
impl TokenCache for TokenCacheApi {
    async fn get_context(
        &self,
        request: Request<pb::GetContextRequest>,
    ) -> Result<Response<pb::GetContextResponse>, Status> {
        let request =
            ContextRequest::try_from((request.into_inner(), self.limits)).map_err(status)?;
        let context = self.service.get_context(request).await.map_err(status)?;
        Ok(Response::new(pb::GetContextResponse {
            token_ids: context.token_ids,
            spans: context
                .spans
                .into_iter()
                .map(|span| pb::DocumentSpan {
                    id: span.id,
                    start: span.start,
                    end: span.end,
                    l1: pb::CacheOutcome::from(span.l1).into(),
                    l2: pb::CacheOutcome::from(span.l2).into(),
                    truncated: span.truncated,
                })
                .collect(),
            untruncated_tokens: context.untruncated_tokens,
            truncated: context.truncated,
            tokenizer_id: context.tokenizer_id,
        }))
    }

    async fn tokenize(
        &self,
        request: Request<pb::TokenizeRequest>,
    ) -> Result<Response<pb::TokenizeResponse>, Status> {
        let request = request.into_inner();
        check_tokenize(&request.tokenizer, &request.text, self.limits)?;
        let (token_ids, tokenizer_id) = self
            .service
            .tokenize(&request.tokenizer, request.text)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::TokenizeResponse {
            token_ids,
            tokenizer_id,
        }))
    }

    async fn count_tokens(
        &self,
        request: Request<pb::CountTokensRequest>,
    ) -> Result<Response<pb::CountTokensResponse>, Status> {
        let request = request.into_inner();
        check_tokenize(&request.tokenizer, &request.text, self.limits)?;
        let (token_ids, tokenizer_id) = self
            .service
            .tokenize(&request.tokenizer, request.text)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::CountTokensResponse {
            count: token_ids.len() as u64,
            tokenizer_id,
        }))
    }

    async fn put_documents(
        &self,
        request: Request<pb::PutDocumentsRequest>,
    ) -> Result<Response<pb::PutDocumentsResponse>, Status> {
        let request = PutRequest::try_from((request.into_inner(), self.limits)).map_err(status)?;
        let stored = self.service.put_documents(request).await.map_err(status)?;
        Ok(Response::new(pb::PutDocumentsResponse { stored }))
    }

    async fn invalidate(
        &self,
        request: Request<pb::InvalidateRequest>,
    ) -> Result<Response<pb::InvalidateResponse>, Status> {
        let request = request.into_inner();
        if request.collection.is_empty() {
            return Err(status(invalid("collection", "must not be empty")));
        }
        check_collection(&request.collection).map_err(status)?;
        for (index, id) in request.ids.iter().enumerate() {
            check_id(|| format!("ids[{index}]"), id).map_err(status)?;
        }
        let invalidated = self
            .service
            .invalidate(&request.collection, &request.ids)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::InvalidateResponse { invalidated }))
    }

    async fn clear(
        &self,
        request: Request<pb::ClearRequest>,
    ) -> Result<Response<pb::ClearResponse>, Status> {
        let request = request.into_inner();
        if request.collection.is_empty() {
            return Err(status(invalid("collection", "must not be empty")));
        }
        check_collection(&request.collection).map_err(status)?;
        let removed = self
            .service
            .clear(&request.collection)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ClearResponse { removed }))
    }

    async fn stats(
        &self,
        _request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let stats = self.service.stats().await;
        Ok(Response::new(pb::StatsResponse {
            l1: Some(stats.l1.into()),
            l2: Some(stats.l2.into()),
            tokens_tokenized: stats.tokens_tokenized,
        }))
    }

    async fn list_tokenizers(
        &self,
        _request: Request<pb::ListTokenizersRequest>,
    ) -> Result<Response<pb::ListTokenizersResponse>, Status> {
        let tokenizers = self
            .service
            .list_tokenizers()
            .await
            .map_err(status)?
            .into_iter()
            .map(|listing| pb::TokenizerInfo {
                name: listing.name,
                tokenizer_id: listing.tokenizer_id,
                kind: listing.kind,
                models: listing.models,
            })
            .collect();
        Ok(Response::new(pb::ListTokenizersResponse { tokenizers }))
    }
}

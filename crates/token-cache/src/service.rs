//! The token cache's logic, free of tonic types: assemble contexts from cached segments (L1 in
//! process, L2 in Redis, tokenizing afresh on a miss), register and invalidate documents, report
//! statistics.
//!
//! A request looks its segments up in L1 by lookup key (XXH3-128, see `keys`) and takes a value
//! found there only if it was tokenized from the request's very text. For the segments left, it
//! starts one Redis read and computes their content keys (from the documents' SHA-256) while
//! Redis answers: a Redis value is used only when its content key equals the request's.
//!
//! A miss for a segment is loaded once however many requests want it at the same time: the L1's
//! `try_get_with` runs one loader per key and the others wait for its value (single flight). The
//! loader uses what Redis returned, within its time budget, and tokenizes when Redis missed,
//! failed or held a corrupted value (which is then overwritten).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::future::Cache;
use moka::notification::RemovalCause;

use crate::codec::{self, DecodeError, SegmentTokens};
use crate::config::TokenCacheConfig;
use crate::error::{TokenCacheError, TokenCacheResult};
use crate::keys::{Digest32, LookupKey, content_hash, lookup_hash};
use crate::lookup_metrics::LookupMetrics;
use crate::segments::{Assembly, SegmentPlan, SegmentSource, token_starts};
use crate::store::memory::MemoryDocumentStore;
use crate::store::redis::RedisStore;
use crate::store::{DocumentStore, StoreError, StoredDocument};
use crate::tokenizer::{Tokenizer, TokenizerRegistry, UnknownTokenizer};

/// The separator when a request sets none.
pub const DEFAULT_SEPARATOR: &str = "\n\n";

/// What one cache layer did for a document's segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerOutcome {
    Hit,
    Miss,
    /// Not consulted: off, or an earlier layer hit.
    Skipped,
    /// Failed (Redis down or over budget); the request went on without it.
    Error,
}

/// A document of a GetContext request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocumentInput {
    Inline { id: String, text: String },
    Reference { id: String },
}

impl DocumentInput {
    pub fn id(&self) -> &str {
        match self {
            Self::Inline { id, .. } | Self::Reference { id } => id,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextRequest {
    pub collection: String,
    pub documents: Vec<DocumentInput>,
    pub tokenizer: String,
    /// None: no limit.
    pub max_tokens: Option<usize>,
    pub separator: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub id: String,
    pub start: u64,
    pub end: u64,
    pub l1: LayerOutcome,
    pub l2: LayerOutcome,
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub token_ids: Vec<u32>,
    pub spans: Vec<Span>,
    pub untruncated_tokens: u64,
    pub truncated: bool,
    pub tokenizer_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutRequest {
    pub collection: String,
    /// (id, text)
    pub documents: Vec<(String, String)>,
    pub tokenizers: Vec<String>,
    /// None: the collection's TTL.
    pub ttl: Option<Duration>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct LayerStats {
    pub hits: u64,
    pub misses: u64,
    pub hit_rate: f64,
    pub entries: u64,
    pub bytes: u64,
    pub tokens: u64,
    pub errors: u64,
    pub available: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub l1: LayerStats,
    pub l2: LayerStats,
    pub tokens_tokenized: u64,
}

#[derive(Debug, Clone)]
pub struct TokenizerListing {
    pub name: String,
    pub tokenizer_id: String,
    pub kind: String,
    pub models: Vec<String>,
}

/// A document's text: the request's own (not copied), or a registered document's.
enum DocumentText<'a> {
    Inline(&'a str),
    Registered(Arc<str>),
}

impl DocumentText<'_> {
    fn as_str(&self) -> &str {
        match self {
            Self::Inline(text) => text,
            Self::Registered(text) => text,
        }
    }
}

/// One segment a request wants and L1 did not have: where its text comes from, its content
/// key, its TTL.
#[derive(Clone, Copy)]
struct Wanted<'a> {
    tokenizer: &'a Arc<Tokenizer>,
    assembly: &'a Assembly<'a>,
    plan: &'a SegmentPlan,
    key: &'a Digest32,
    ttl: Duration,
}

/// Why L1 could not give a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum L1Miss {
    /// Nothing under its lookup key.
    Missing,
    /// A segment of other content under the same lookup key.
    OtherContent,
}

/// A segment of a request and its L1 and L2 outcomes.
type Loaded = (Arc<CachedSegment>, LayerOutcome, LayerOutcome);

/// What L2 answered for a segment that L1 lacked.
#[derive(Debug, Clone)]
enum L2Value {
    /// No L2 (Redis off), or L1 had the segment.
    NotAsked,
    /// The Redis call failed or ran over its budget.
    Failed,
    /// The stored value, if any, and how long the lookup took (for the latency histogram).
    Fetched(Option<Vec<u8>>, Duration),
}

/// A segment's tokens as cached in L1, with what they were tokenized from (a hit is checked
/// against it) and where the value came from when it was loaded.
#[derive(Debug)]
struct CachedSegment {
    source: SegmentSource,
    tokens: SegmentTokens,
    ttl: Duration,
    l2: LayerOutcome,
}

impl CachedSegment {
    fn weight(&self) -> u32 {
        // Fixed overhead (the struct, moka's entry), the token arrays and the source text.
        let bytes = 128
            + 4 * (self.tokens.ids.len() + self.tokens.doc_starts.len())
            + self.source.heap_bytes();
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }

    fn is_for(&self, wanted: &Wanted<'_>) -> bool {
        self.source
            .matches(wanted.tokenizer.id(), wanted.assembly, wanted.plan)
    }
}

struct SegmentExpiry;

impl moka::Expiry<LookupKey, Arc<CachedSegment>> for SegmentExpiry {
    fn expire_after_create(
        &self,
        _key: &LookupKey,
        value: &Arc<CachedSegment>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _key: &LookupKey,
        value: &Arc<CachedSegment>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

#[derive(Debug, Default)]
struct Counters {
    l1_hits: AtomicU64,
    l1_misses: AtomicU64,
    l1_bytes: AtomicU64,
    l1_tokens: AtomicU64,
    l2_hits: AtomicU64,
    l2_misses: AtomicU64,
    l2_entries_written: AtomicU64,
    l2_bytes_written: AtomicU64,
    l2_tokens_written: AtomicU64,
    tokens_tokenized: AtomicU64,
}

enum Documents {
    Memory(MemoryDocumentStore),
    Redis(RedisStore),
}

impl Documents {
    async fn put(
        &self,
        collection: &str,
        documents: &[(String, StoredDocument)],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        match self {
            Self::Memory(store) => store.put(collection, documents, ttl).await,
            Self::Redis(store) => store.put(collection, documents, ttl).await,
        }
    }
    async fn get(
        &self,
        collection: &str,
        ids: &[String],
    ) -> Result<Vec<Option<StoredDocument>>, StoreError> {
        match self {
            Self::Memory(store) => store.get(collection, ids).await,
            Self::Redis(store) => store.get(collection, ids).await,
        }
    }
    async fn remove(&self, collection: &str, ids: &[String]) -> Result<u64, StoreError> {
        match self {
            Self::Memory(store) => store.remove(collection, ids).await,
            Self::Redis(store) => store.remove(collection, ids).await,
        }
    }
    async fn clear(&self, collection: &str) -> Result<u64, StoreError> {
        match self {
            Self::Memory(store) => store.clear(collection).await,
            Self::Redis(store) => store.clear(collection).await,
        }
    }
}

/// The token cache of one service instance.
pub struct TokenCacheService {
    config: TokenCacheConfig,
    /// Shared with the blocking pool, where a tokenizer still being built is waited for.
    registry: Arc<TokenizerRegistry>,
    l1: Cache<LookupKey, Arc<CachedSegment>>,
    redis: Option<RedisStore>,
    documents: Documents,
    counters: Arc<Counters>,
    lookups: LookupMetrics,
}

impl std::fmt::Debug for TokenCacheService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCacheService")
            .field("redis", &self.redis)
            .finish_non_exhaustive()
    }
}

impl TokenCacheService {
    /// L1 only when `redis_url_opt` is None; otherwise L1 + Redis (connected lazily, so Redis
    /// being down at start is no error).
    pub fn new(
        config: TokenCacheConfig,
        redis_url_opt: Option<&str>,
    ) -> Result<Self, crate::TokenCacheStartError> {
        let registry = TokenizerRegistry::new(&config.models, &config.tokenizers)
            .map(Arc::new)
            .map_err(crate::TokenCacheStartError::Config)?;
        let counters = Arc::new(Counters::default());
        let listener_counters = counters.clone();
        let l1 = Cache::builder()
            .max_capacity(config.l1_max_bytes)
            .weigher(|_key: &LookupKey, value: &Arc<CachedSegment>| value.weight())
            .expire_after(SegmentExpiry)
            .eviction_listener(
                move |_key, value: Arc<CachedSegment>, _cause: RemovalCause| {
                    // Every value was counted when loaded (`admit`), replaced ones included.
                    listener_counters
                        .l1_bytes
                        .fetch_sub(u64::from(value.weight()), Ordering::Relaxed);
                    listener_counters
                        .l1_tokens
                        .fetch_sub(value.tokens.ids.len() as u64, Ordering::Relaxed);
                    metrics::gauge!("tollgate_token_cache_stored_bytes", "layer" => "l1")
                        .set(listener_counters.l1_bytes.load(Ordering::Relaxed) as f64);
                    metrics::gauge!("tollgate_token_cache_stored_tokens", "layer" => "l1")
                        .set(listener_counters.l1_tokens.load(Ordering::Relaxed) as f64);
                },
            )
            .build();
        let redis = match redis_url_opt {
            Some(url) => Some(
                RedisStore::new(url, &config.key_prefix, config.redis_timeout())
                    .map_err(|e| crate::TokenCacheStartError::Config(format!("redis url: {e}")))?,
            ),
            None => None,
        };
        let documents = match &redis {
            Some(store) => Documents::Redis(store.clone()),
            None => Documents::Memory(MemoryDocumentStore::new()),
        };
        Ok(Self {
            config,
            registry,
            l1,
            redis,
            documents,
            counters,
            lookups: LookupMetrics::register(),
        })
    }

    /// Builds every tokenizer now (a few hundred milliseconds of CPU each, once per process), so
    /// that the first requests do not pay for it.
    pub fn warm_up_tokenizers(&self) {
        let _ = self.registry.list();
    }

    pub fn config(&self) -> &TokenCacheConfig {
        &self.config
    }

    /// The Redis store, when L2 is on (tests use it to corrupt values on purpose).
    pub fn redis(&self) -> Option<&RedisStore> {
        self.redis.as_ref()
    }

    /// The tokenizer a request names (`field`). One whose tiktoken encoding is still being built
    /// (by the warm-up, in the first moments of the process) is waited for on the blocking pool:
    /// on a runtime worker the wait would stall every task of that worker.
    pub async fn tokenizer(&self, name: &str, field: &str) -> TokenCacheResult<Arc<Tokenizer>> {
        let resolved = match self.registry.resolve_built(name) {
            Some(resolved) => resolved,
            None => {
                let registry = self.registry.clone();
                let name = name.to_owned();
                on_blocking_pool(move || registry.resolve(&name)).await?
            }
        };
        resolved.map_err(|UnknownTokenizer { name, known }| {
            TokenCacheError::invalid(
                field,
                format!("unknown tokenizer or model {name:?} (known tokenizers: {known}; models map to them in token_cache.models)"),
            )
        })
    }

    /// Every tokenizer, built first where needed (on the blocking pool, see [`Self::tokenizer`]).
    pub async fn list_tokenizers(&self) -> TokenCacheResult<Vec<TokenizerListing>> {
        let registry = self.registry.clone();
        let listed = on_blocking_pool(move || registry.list()).await?;
        Ok(listed
            .into_iter()
            .map(|(tokenizer, models)| TokenizerListing {
                name: tokenizer.name().to_owned(),
                tokenizer_id: tokenizer.id().to_owned(),
                kind: tokenizer.kind().to_owned(),
                models,
            })
            .collect())
    }

    pub async fn get_context(&self, request: ContextRequest) -> TokenCacheResult<Context> {
        let tokenizer = self.tokenizer(&request.tokenizer, "tokenizer").await?;
        let resolved = self
            .resolve_documents(&request.collection, &request.documents)
            .await?;
        let texts: Vec<&str> = resolved.iter().map(|(text, _)| text.as_str()).collect();
        let lookups: Vec<LookupKey> = texts.iter().map(|text| lookup_hash(text)).collect();
        let hashes: Vec<Option<Digest32>> = resolved.iter().map(|(_, hash)| *hash).collect();
        let assembly = Assembly {
            texts: &texts,
            lookups: &lookups,
            separator: &request.separator,
        };
        let plans = assembly.plan(tokenizer.id(), tokenizer.cut_rule());
        let ttl = self.config.ttl_for(&request.collection);
        let loaded = self
            .segments(&tokenizer, &assembly, &plans, &hashes, ttl)
            .await?;

        let total: usize = loaded
            .iter()
            .map(|(segment, _, _)| segment.tokens.ids.len())
            .sum();
        let mut token_ids = Vec::with_capacity(match request.max_tokens {
            Some(limit) => limit.min(total),
            None => total,
        });
        let mut doc_starts = vec![0u64; request.documents.len()];
        let mut outcomes =
            vec![(LayerOutcome::Skipped, LayerOutcome::Skipped); request.documents.len()];
        for (plan, (segment, l1, l2)) in plans.iter().zip(&loaded) {
            let offset = token_ids.len() as u64;
            for ((document, _), start) in plan.documents.iter().zip(&segment.tokens.doc_starts) {
                doc_starts[*document] = offset + u64::from(*start);
                outcomes[*document] = (*l1, *l2);
            }
            token_ids.extend_from_slice(&segment.tokens.ids);
        }
        let untruncated = token_ids.len() as u64;
        let limit = request
            .max_tokens
            .map_or(untruncated, |limit| (limit as u64).min(untruncated));
        token_ids.truncate(limit as usize);
        let spans = request
            .documents
            .iter()
            .enumerate()
            .map(|(index, document)| {
                let start = doc_starts[index];
                let end = doc_starts.get(index + 1).copied().unwrap_or(untruncated);
                Span {
                    id: document.id().to_owned(),
                    start: start.min(limit),
                    end: end.min(limit),
                    l1: outcomes[index].0,
                    l2: outcomes[index].1,
                    truncated: end > limit,
                }
            })
            .collect();
        Ok(Context {
            token_ids,
            spans,
            untruncated_tokens: untruncated,
            truncated: untruncated > limit,
            tokenizer_id: tokenizer.id().to_owned(),
        })
    }

    /// Token IDs of one text, through the cache (it is one segment of one document).
    pub async fn tokenize(
        &self,
        tokenizer: &str,
        text: String,
    ) -> TokenCacheResult<(Vec<u32>, String)> {
        let context = self
            .get_context(ContextRequest {
                collection: String::new(),
                documents: vec![DocumentInput::Inline {
                    id: "text".into(),
                    text,
                }],
                tokenizer: tokenizer.to_owned(),
                max_tokens: None,
                separator: String::new(),
            })
            .await?;
        Ok((context.token_ids, context.tokenizer_id))
    }

    /// The texts of a request's documents, references resolved, with the content hashes known
    /// already (those of registered documents; inline ones are hashed later, see `segments`).
    async fn resolve_documents<'a>(
        &self,
        collection: &str,
        documents: &'a [DocumentInput],
    ) -> TokenCacheResult<Vec<(DocumentText<'a>, Option<Digest32>)>> {
        let references: Vec<(usize, String)> = documents
            .iter()
            .enumerate()
            .filter_map(|(index, document)| match document {
                DocumentInput::Reference { id } => Some((index, id.clone())),
                DocumentInput::Inline { .. } => None,
            })
            .collect();
        let mut registered = Vec::new();
        if let Some((first, _)) = references.first() {
            if collection.is_empty() {
                return Err(TokenCacheError::invalid(
                    "collection",
                    format!(
                        "must be set when documents are passed by reference (documents[{first}] has no text)"
                    ),
                ));
            }
            let ids: Vec<String> = references.iter().map(|(_, id)| id.clone()).collect();
            registered = self
                .documents
                .get(collection, &ids)
                .await
                .map_err(|error| {
                    tracing::warn!(%error, "resolving registered documents failed");
                    TokenCacheError::DocumentsUnavailable {
                        field: format!("documents[{first}]"),
                    }
                })?;
        }
        let mut registered = registered.into_iter();
        let mut resolved = Vec::with_capacity(documents.len());
        for (index, document) in documents.iter().enumerate() {
            match document {
                DocumentInput::Inline { text, .. } => {
                    resolved.push((DocumentText::Inline(text), None));
                }
                DocumentInput::Reference { id } => match registered.next().flatten() {
                    Some(stored) => resolved.push((
                        DocumentText::Registered(stored.text),
                        Some(stored.content_hash),
                    )),
                    None => {
                        return Err(TokenCacheError::DocumentNotFound {
                            field: format!("documents[{index}]"),
                            collection: collection.to_owned(),
                            id: id.clone(),
                        });
                    }
                },
            }
        }
        Ok(resolved)
    }

    /// The segments of `plans`, in order, each with its L1 and L2 outcome. L1 first, each value
    /// found checked against the request's text. For the rest, one L2 round trip, during which
    /// their content keys are computed (from the documents' SHA-256, those not in `hashes`
    /// already); then each segment that neither layer had is loaded once.
    async fn segments(
        &self,
        tokenizer: &Arc<Tokenizer>,
        assembly: &Assembly<'_>,
        plans: &[SegmentPlan],
        hashes: &[Option<Digest32>],
        ttl: Duration,
    ) -> TokenCacheResult<Vec<Loaded>> {
        let mut loaded: Vec<Option<Loaded>> = Vec::with_capacity(plans.len());
        let mut pending = Vec::new();
        for (index, (plan, found)) in plans
            .iter()
            .zip(self.l1_lookup(tokenizer, assembly, plans).await)
            .enumerate()
        {
            match found {
                Ok(segment) => {
                    loaded.push(Some((segment, LayerOutcome::Hit, LayerOutcome::Skipped)))
                }
                Err(miss) => {
                    loaded.push(None);
                    pending.push((index, plan, miss));
                }
            }
        }
        if !pending.is_empty() {
            let content_keys = async {
                let mut known = hashes.to_vec();
                pending
                    .iter()
                    .map(|(_, plan, _)| {
                        assembly.content_key(tokenizer.id(), plan, |document| {
                            *known[document]
                                .get_or_insert_with(|| content_hash(assembly.texts[document]))
                        })
                    })
                    .collect::<Vec<Digest32>>()
            };
            let missing: Vec<LookupKey> = pending
                .iter()
                .filter(|(_, _, miss)| *miss == L1Miss::Missing)
                .map(|(_, plan, _)| plan.lookup)
                .collect();
            // The Redis read is polled first: on a pooled connection (the usual case) its
            // command is written before the hashing starts; a connection still to be opened
            // waits for it.
            let (stored, keys) =
                futures_util::future::join(self.l2_lookup(&missing), content_keys).await;
            let mut stored = stored.into_iter();
            let segments = futures_util::future::join_all(pending.iter().zip(&keys).map(
                |((_, plan, miss), key)| {
                    // `l2_lookup` answers one entry per missing segment, in plan order. One of
                    // other content in L1 was not asked for.
                    let stored = match miss {
                        L1Miss::Missing => stored.next().unwrap_or(L2Value::NotAsked),
                        L1Miss::OtherContent => L2Value::NotAsked,
                    };
                    let wanted = Wanted {
                        tokenizer,
                        assembly,
                        plan,
                        key,
                        ttl,
                    };
                    self.segment(wanted, *miss, stored)
                },
            ))
            .await;
            for ((index, _, _), segment) in pending.iter().zip(segments) {
                loaded[*index] = Some(segment?);
            }
        }
        // Every pending plan was filled in above; a gap would be a bug, never a shorter context.
        loaded
            .into_iter()
            .collect::<Option<Vec<Loaded>>>()
            .ok_or_else(|| {
                TokenCacheError::Internal("a segment of the context was not loaded".into())
            })
    }

    /// What L1 holds for each plan, checked against the request's text (a value under a plan's
    /// lookup key may be other content's), counted as L1 hits or misses with its lookup time.
    async fn l1_lookup(
        &self,
        tokenizer: &Arc<Tokenizer>,
        assembly: &Assembly<'_>,
        plans: &[SegmentPlan],
    ) -> Vec<Result<Arc<CachedSegment>, L1Miss>> {
        let mut found = Vec::with_capacity(plans.len());
        for plan in plans {
            let started = Instant::now();
            let segment = match self.l1.get(&plan.lookup).await {
                Some(segment) if segment.source.matches(tokenizer.id(), assembly, plan) => {
                    Ok(segment)
                }
                Some(_) => Err(L1Miss::OtherContent),
                None => Err(L1Miss::Missing),
            };
            let took = started.elapsed();
            if segment.is_ok() {
                self.counters.l1_hits.fetch_add(1, Ordering::Relaxed);
                self.lookups.l1_hit.record(took);
            } else {
                self.counters.l1_misses.fetch_add(1, Ordering::Relaxed);
                self.lookups.l1_miss.record(took);
            }
            found.push(segment);
        }
        found
    }

    /// What L2 holds under each of `keys` (segments L1 lacks), in order, asked for in one round
    /// trip: a context's segments cost one Redis call, not one each. A failed call is `Failed`
    /// for each of them (the request goes on without L2). The read happens before single
    /// flight: requests that miss the same segments at the same moment each read them (one
    /// tokenizes, see `segment`), a cheap, idempotent read against a segment tokenized twice.
    async fn l2_lookup(&self, keys: &[LookupKey]) -> Vec<L2Value> {
        let Some(redis) = &self.redis else {
            return Vec::new();
        };
        if keys.is_empty() {
            return Vec::new();
        }
        let started = Instant::now();
        match redis.get_segments(keys).await {
            Ok(values) => {
                let took = started.elapsed();
                values
                    .into_iter()
                    .map(|value| L2Value::Fetched(value, took))
                    .collect()
            }
            Err(_) => vec![L2Value::Failed; keys.len()],
        }
    }

    /// One segment L1 did not have: loaded once (single flight) from what L2 returned or by
    /// tokenizing.
    async fn segment(
        &self,
        wanted: Wanted<'_>,
        miss: L1Miss,
        stored: L2Value,
    ) -> TokenCacheResult<Loaded> {
        if miss == L1Miss::OtherContent {
            let segment = self.load_uncached(wanted, "l1").await?;
            return Ok((segment, LayerOutcome::Miss, LayerOutcome::Skipped));
        }
        let loaded_here = AtomicBool::new(false);
        let loading = self.l1.try_get_with(wanted.plan.lookup, async {
            loaded_here.store(true, Ordering::Relaxed);
            self.load(wanted, stored).await
        });
        let segment = match loading.await {
            Ok(segment) => segment,
            // Another request's load failed. Its error is its content's: this request's content
            // may differ (one lookup key, a crafted collision), so it tokenizes its own.
            Err(_) if !loaded_here.load(Ordering::Relaxed) => {
                let segment = self.tokenize_uncached(wanted).await?;
                return Ok((segment, LayerOutcome::Miss, LayerOutcome::Skipped));
            }
            Err(error) => return Err((*error).clone()),
        };
        if !segment.is_for(&wanted) {
            // A concurrent load of other content under the same lookup key got there first.
            let segment = self.load_uncached(wanted, "l1").await?;
            return Ok((segment, LayerOutcome::Miss, LayerOutcome::Skipped));
        }
        // A request that waited for another's load took that load's value: its L2 outcome is the
        // loader's, not its own (what its own read returned was not used).
        let l2 = if loaded_here.load(Ordering::Relaxed) {
            segment.l2
        } else {
            LayerOutcome::Skipped
        };
        Ok((segment, LayerOutcome::Miss, l2))
    }

    async fn load(
        &self,
        wanted: Wanted<'_>,
        stored: L2Value,
    ) -> TokenCacheResult<Arc<CachedSegment>> {
        let Wanted {
            tokenizer,
            assembly,
            plan,
            key,
            ttl,
        } = wanted;
        // The lookup key's Redis value is replaced unless it is other content's, intact.
        let mut overwrite = true;
        let l2 = match stored {
            L2Value::NotAsked => LayerOutcome::Skipped,
            L2Value::Failed => LayerOutcome::Error,
            L2Value::Fetched(None, took) => self.l2_miss(took),
            L2Value::Fetched(Some(bytes), took) => match codec::decode(key, &bytes) {
                Ok(tokens) if fits(&tokens, plan) => {
                    self.counters.l2_hits.fetch_add(1, Ordering::Relaxed);
                    self.lookups.l2_hit.record(took);
                    let text = assembly.text(plan.parts.clone());
                    return Ok(self.admit(CachedSegment {
                        source: SegmentSource::new(tokenizer.id(), plan, text),
                        tokens,
                        ttl,
                        l2: LayerOutcome::Hit,
                    }));
                }
                Err(DecodeError::OtherContent) => {
                    overwrite = false;
                    record_collision("l2");
                    self.l2_miss(took)
                }
                Ok(_) | Err(_) => {
                    tracing::warn!(key = %hex::encode(plan.lookup), "corrupted token-cache value in Redis; treating it as a miss and overwriting it");
                    self.l2_miss(took)
                }
            },
        };
        let (tokens, text) = self.tokenize_segment(wanted).await?;
        if let Some(redis) = &self.redis {
            // After a failed read, a write would only spend another time budget.
            if l2 != LayerOutcome::Error && overwrite {
                let value = codec::encode(key, &tokens);
                if redis.put_segment(&plan.lookup, &value, ttl).await.is_ok() {
                    self.counters
                        .l2_entries_written
                        .fetch_add(1, Ordering::Relaxed);
                    let bytes = self
                        .counters
                        .l2_bytes_written
                        .fetch_add(value.len() as u64, Ordering::Relaxed)
                        + value.len() as u64;
                    let stored_tokens = self
                        .counters
                        .l2_tokens_written
                        .fetch_add(tokens.ids.len() as u64, Ordering::Relaxed)
                        + tokens.ids.len() as u64;
                    metrics::gauge!("tollgate_token_cache_stored_bytes", "layer" => "l2")
                        .set(bytes as f64);
                    metrics::gauge!("tollgate_token_cache_stored_tokens", "layer" => "l2")
                        .set(stored_tokens as f64);
                }
            }
        }
        Ok(self.admit(CachedSegment {
            source: SegmentSource::new(tokenizer.id(), plan, text),
            tokens,
            ttl,
            l2,
        }))
    }

    /// A segment whose lookup key holds other content in `layer`: tokenized for this request
    /// only, cached nowhere. A lookup key belongs to the content that got there first, so two
    /// contents made to collide (XXH3 is no defence against crafted inputs) cannot evict each
    /// other: the later one goes uncached, as without a cache.
    async fn load_uncached(
        &self,
        wanted: Wanted<'_>,
        layer: &'static str,
    ) -> TokenCacheResult<Arc<CachedSegment>> {
        record_collision(layer);
        self.tokenize_uncached(wanted).await
    }

    /// A segment tokenized for one request and cached nowhere.
    async fn tokenize_uncached(&self, wanted: Wanted<'_>) -> TokenCacheResult<Arc<CachedSegment>> {
        let (tokens, text) = self.tokenize_segment(wanted).await?;
        Ok(Arc::new(CachedSegment {
            source: SegmentSource::new(wanted.tokenizer.id(), wanted.plan, text),
            tokens,
            ttl: wanted.ttl,
            l2: LayerOutcome::Skipped,
        }))
    }

    /// Counts an L2 miss (none stored, or a value that cannot be used) and its lookup time.
    fn l2_miss(&self, took: Duration) -> LayerOutcome {
        self.counters.l2_misses.fetch_add(1, Ordering::Relaxed);
        self.lookups.l2_miss.record(took);
        LayerOutcome::Miss
    }

    /// Counts a value about to enter L1 (the eviction listener subtracts it again).
    fn admit(&self, segment: CachedSegment) -> Arc<CachedSegment> {
        let bytes = self
            .counters
            .l1_bytes
            .fetch_add(u64::from(segment.weight()), Ordering::Relaxed)
            + u64::from(segment.weight());
        let tokens = self
            .counters
            .l1_tokens
            .fetch_add(segment.tokens.ids.len() as u64, Ordering::Relaxed)
            + segment.tokens.ids.len() as u64;
        metrics::gauge!("tollgate_token_cache_stored_bytes", "layer" => "l1").set(bytes as f64);
        metrics::gauge!("tollgate_token_cache_stored_tokens", "layer" => "l1").set(tokens as f64);
        Arc::new(segment)
    }

    /// Tokenizes a segment (on the blocking pool when it is long), counting the tokens; returns
    /// them with the segment's text.
    async fn tokenize_segment(
        &self,
        wanted: Wanted<'_>,
    ) -> TokenCacheResult<(SegmentTokens, String)> {
        let Wanted {
            tokenizer,
            assembly,
            plan,
            ..
        } = wanted;
        let text = assembly.text(plan.parts.clone());
        let run_inline = text.len() < self.config.blocking_threshold_bytes;
        let offsets: Vec<usize> = plan.documents.iter().map(|(_, offset)| *offset).collect();
        let work = {
            let tokenizer = tokenizer.clone();
            move || {
                let (ids, starts) = tokenizer
                    .encode_with_starts(&text)
                    .map_err(|error| TokenCacheError::invalid("tokenizer", error.to_string()))?;
                let doc_starts = token_starts(&starts, &offsets);
                Ok((SegmentTokens { ids, doc_starts }, text))
            }
        };
        let (tokens, text) = if run_inline {
            work()?
        } else {
            on_blocking_pool(work).await??
        };
        self.counters
            .tokens_tokenized
            .fetch_add(tokens.ids.len() as u64, Ordering::Relaxed);
        metrics::counter!("tollgate_token_cache_tokenized_tokens_total", "tokenizer" => tokenizer.name().to_owned())
            .increment(tokens.ids.len() as u64);
        Ok((tokens, text))
    }

    pub async fn put_documents(&self, request: PutRequest) -> TokenCacheResult<u32> {
        let mut tokenizers = Vec::with_capacity(request.tokenizers.len());
        for (index, name) in request.tokenizers.iter().enumerate() {
            tokenizers.push(
                self.tokenizer(name, &format!("tokenizers[{index}]"))
                    .await?,
            );
        }
        let ttl = request
            .ttl
            .unwrap_or_else(|| self.config.ttl_for(&request.collection));
        let documents: Vec<(String, StoredDocument)> = request
            .documents
            .iter()
            .map(|(id, text)| (id.clone(), StoredDocument::new(text)))
            .collect();
        self.documents
            .put(&request.collection, &documents, ttl)
            .await
            .map_err(|error| {
                tracing::warn!(%error, "registering documents failed");
                TokenCacheError::DocumentsUnavailable {
                    field: "documents".into(),
                }
            })?;
        // Warm the segments these documents form on their own and in the middle of a context
        // joined by the default separator.
        for tokenizer in &tokenizers {
            for (_, document) in &documents {
                let lookup = lookup_hash(&document.text);
                for copies in [1, 3] {
                    let texts = vec![document.text.as_ref(); copies];
                    let lookups = vec![lookup; copies];
                    let hashes = vec![Some(document.content_hash); copies];
                    let assembly = Assembly {
                        texts: &texts,
                        lookups: &lookups,
                        separator: DEFAULT_SEPARATOR,
                    };
                    // One plan at a time: a segment repeated in the tripled text is then an L1
                    // hit the second time.
                    for plan in assembly.plan(tokenizer.id(), tokenizer.cut_rule()) {
                        self.segments(
                            tokenizer,
                            &assembly,
                            std::slice::from_ref(&plan),
                            &hashes,
                            ttl,
                        )
                        .await?;
                    }
                }
            }
        }
        Ok(documents.len() as u32)
    }

    pub async fn invalidate(&self, collection: &str, ids: &[String]) -> TokenCacheResult<u32> {
        let removed = self
            .documents
            .remove(collection, ids)
            .await
            .map_err(|error| {
                tracing::warn!(%error, "invalidating documents failed");
                TokenCacheError::DocumentsUnavailable {
                    field: "ids".into(),
                }
            })?;
        Ok(u32::try_from(removed).unwrap_or(u32::MAX))
    }

    pub async fn clear(&self, collection: &str) -> TokenCacheResult<u64> {
        self.documents.clear(collection).await.map_err(|error| {
            tracing::warn!(%error, "clearing a collection failed");
            TokenCacheError::DocumentsUnavailable {
                field: "collection".into(),
            }
        })
    }

    pub async fn stats(&self) -> Stats {
        self.l1.run_pending_tasks().await;
        let c = &self.counters;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let l1 = LayerStats {
            hits: load(&c.l1_hits),
            misses: load(&c.l1_misses),
            hit_rate: hit_rate(load(&c.l1_hits), load(&c.l1_misses)),
            entries: self.l1.entry_count(),
            bytes: load(&c.l1_bytes),
            tokens: load(&c.l1_tokens),
            errors: 0,
            available: true,
        };
        let l2 = match &self.redis {
            Some(redis) => LayerStats {
                hits: load(&c.l2_hits),
                misses: load(&c.l2_misses),
                hit_rate: hit_rate(load(&c.l2_hits), load(&c.l2_misses)),
                entries: load(&c.l2_entries_written),
                bytes: load(&c.l2_bytes_written),
                tokens: load(&c.l2_tokens_written),
                errors: redis.health().errors.load(Ordering::Relaxed),
                available: redis.health().available.load(Ordering::Relaxed),
            },
            None => LayerStats::default(),
        };
        Stats {
            l1,
            l2,
            tokens_tokenized: load(&c.tokens_tokenized),
        }
    }
}

/// A stored value must describe exactly the documents the plan puts in the segment.
fn fits(tokens: &SegmentTokens, plan: &SegmentPlan) -> bool {
    tokens.doc_starts.len() == plan.documents.len()
        && tokens
            .doc_starts
            .iter()
            .all(|start| *start as usize <= tokens.ids.len())
        && tokens.doc_starts.windows(2).all(|pair| pair[0] <= pair[1])
}

fn hit_rate(hits: u64, misses: u64) -> f64 {
    if hits + misses == 0 {
        0.0
    } else {
        hits as f64 / (hits + misses) as f64
    }
}

/// Counts a lookup key found holding other content (see `load_uncached`).
/// Runs `work` on the blocking pool. A panic in it (a tokenizer's) is resumed here rather than
/// guessed at; a pool that is shutting down no longer runs work, which is an internal error.
async fn on_blocking_pool<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> TokenCacheResult<T> {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => Ok(value),
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(_) => Err(TokenCacheError::Internal(
            "the blocking pool is shutting down".into(),
        )),
    }
}

fn record_collision(layer: &'static str) {
    metrics::counter!("tollgate_token_cache_lookup_collisions_total", "layer" => layer)
        .increment(1);
    tracing::debug!(layer, "a token-cache lookup key holds other content");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{Part, segment_lookup_key};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn request(text: &str) -> ContextRequest {
        ContextRequest {
            collection: "kb".into(),
            documents: vec![DocumentInput::Inline {
                id: "d".into(),
                text: text.into(),
            }],
            tokenizer: "cl100k_base".into(),
            max_tokens: None,
            separator: DEFAULT_SEPARATOR.into(),
        }
    }

    /// What two contents with one lookup key would do to each other in L1: the segment under a
    /// document's lookup key is another document's. The document is a miss, tokenized for the
    /// request, never given the other's tokens, and the other keeps the key (the first content
    /// there keeps it, so crafted collisions cannot evict anything).
    #[tokio::test]
    async fn a_segment_of_other_content_in_l1_is_a_miss_and_keeps_its_key() -> TestResult {
        let service = TokenCacheService::new(TokenCacheConfig::default(), None)?;
        let text = "The document a request asks for.";
        let other = "Another document, whose segment sits under the first one's lookup key.";
        let expected = service.get_context(request(text)).await?.token_ids;
        service.get_context(request(other)).await?;
        let tokenizer = service.tokenizer("cl100k_base", "tokenizer").await?;
        let lookup_of = |text: &str| {
            segment_lookup_key(
                tokenizer.id(),
                DEFAULT_SEPARATOR,
                &[Part::Document(&lookup_hash(text))],
            )
        };
        let other_segment = service
            .l1
            .get(&lookup_of(other))
            .await
            .ok_or("the other document's segment is in L1")?;
        let planted = service.admit(CachedSegment {
            source: other_segment.source.clone(),
            tokens: other_segment.tokens.clone(),
            ttl: other_segment.ttl,
            l2: other_segment.l2,
        });
        service.l1.insert(lookup_of(text), planted).await;

        for _ in 0..2 {
            let context = service.get_context(request(text)).await?;
            assert_eq!(
                context.token_ids, expected,
                "never the other content's tokens"
            );
            assert_eq!(context.spans[0].l1, LayerOutcome::Miss);
        }
        let kept = service
            .l1
            .get(&lookup_of(text))
            .await
            .ok_or("still there")?;
        assert_eq!(
            kept.source, other_segment.source,
            "the first content keeps the key"
        );
        Ok(())
    }
}

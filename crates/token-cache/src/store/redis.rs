//! Redis: the shared L2 of token segments and the registered documents of every collection.
//!
//! Two kinds of connection, both with TCP_NODELAY and both connected lazily (the service starts
//! even when Redis is down, and recovers on its own when Redis comes back):
//! - the MGETs on the request path (segments, registered documents) go through `DirectMget`:
//!   pooled connections that the calling task writes and reads itself;
//! - everything else (writes, Clear's SMEMBERS) through one redis-rs `ConnectionManager`, a
//!   multiplexed connection that reconnects by itself after a failed command. A write that fails
//!   because that connection had dropped (Redis restarted while only reads ran) is sent once more,
//!   on the new connection: every write here is idempotent.
//!
//! Every call is bounded by the configured time budget (20 ms by default) with a tokio timeout,
//! counted in `tollgate_token_cache_redis_calls_total{op}` and, when it fails or runs over, in
//! `tollgate_token_cache_redis_errors_total{op}`.
//!
//! Keys (`P` is `token_cache.key_prefix`; collection names are length-prefixed so that no
//! collection/id pair can collide with another):
//! - `P seg:v<format version>:<hex lookup key>`: a segment's tokens in the format of
//!   [`crate::codec`] (which carries the segment's content key), with the TTL of the collection
//!   that wrote it. The lookup key is an XXH3-128 (`crate::keys`): until the fifth session it was
//!   the SHA-256 content key, so keys of the two schemes differ in length and never meet;
//! - `P doc:<len>:<collection>:<id>`: a registered document, `sha256(text) || text`;
//! - `P docs:<len>:<collection>`: the set of registered ids of a collection, for Clear.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, RedisError};

use super::direct_mget::{DirectMget, MgetError};
use super::{DocumentStore, StoreError, StoreResult, StoredDocument};
use crate::keys::{Digest32, LookupKey};

#[derive(Clone)]
pub struct RedisStore {
    manager: ConnectionManager,
    /// None when Redis is not plain TCP (TLS, a Unix socket): MGETs then use `manager`.
    direct: Option<Arc<DirectMget>>,
    prefix: Arc<str>,
    timeout: Duration,
    health: Arc<RedisHealth>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Errors and availability as seen by this process, for Stats.
#[derive(Debug)]
pub struct RedisHealth {
    pub errors: AtomicU64,
    /// False after a failed call, true again after a successful one.
    pub available: AtomicBool,
}

impl RedisStore {
    /// A store on `url` that connects on first use. Fails only on a malformed URL.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self, RedisError> {
        let info = url
            .into_connection_info()?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let direct = DirectMget::for_connection(&info, timeout).map(Arc::new);
        let client = redis::Client::open(info)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(250))))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            manager,
            direct,
            prefix: Arc::from(prefix),
            timeout,
            health: Arc::new(RedisHealth {
                errors: AtomicU64::new(0),
                available: AtomicBool::new(true),
            }),
        })
    }

    /// Connects now (the connection is otherwise made by the first request, inside its time
    /// budget). Failure is only logged: requests go on without Redis and retry the connection.
    pub async fn connect(&self) {
        let mut connection = self.manager.clone();
        let command = redis::cmd("PING");
        let ping = command.query_async::<String>(&mut connection);
        match tokio::time::timeout(Duration::from_secs(2), ping).await {
            Ok(Ok(_)) => tracing::debug!("connected to redis"),
            Ok(Err(error)) => {
                tracing::warn!(%error, "redis is unreachable at start; going on without it")
            }
            Err(_) => tracing::warn!("redis did not answer at start; going on without it"),
        }
        if let Some(direct) = &self.direct {
            match tokio::time::timeout(Duration::from_secs(2), direct.warm()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(%error, "redis reads: no connection at start; going on without it")
                }
                Err(_) => tracing::warn!("redis reads: no connection within 2 s at start"),
            }
        }
    }

    pub fn health(&self) -> &RedisHealth {
        &self.health
    }

    /// A command on the connection manager, sent once more if it failed because the connection
    /// had dropped (the manager then reconnects, and the second attempt waits for that). Only
    /// for idempotent commands.
    async fn manager_call<T, F, Fut>(&self, op: &'static str, mut attempt: F) -> StoreResult<T>
    where
        F: FnMut(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        self.call(op, async {
            match attempt(self.manager.clone()).await {
                Err(error) if error.is_connection_dropped() => {
                    tracing::debug!(op, %error, "redis connection had dropped; sending again");
                    attempt(self.manager.clone()).await
                }
                outcome => outcome,
            }
        })
        .await
    }

    /// Runs one Redis call within the time budget, counting it and its failure.
    async fn call<T, E, F>(&self, op: &'static str, call: F) -> StoreResult<T>
    where
        E: std::fmt::Display,
        F: Future<Output = Result<T, E>>,
    {
        metrics::counter!("tollgate_token_cache_redis_calls_total", "op" => op).increment(1);
        let outcome = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        };
        match outcome {
            Ok(value) => {
                self.health.available.store(true, Ordering::Relaxed);
                Ok(value)
            }
            Err(reason) => {
                metrics::counter!("tollgate_token_cache_redis_errors_total", "op" => op)
                    .increment(1);
                self.health.errors.fetch_add(1, Ordering::Relaxed);
                self.health.available.store(false, Ordering::Relaxed);
                tracing::debug!(op, %reason, "redis call failed");
                Err(StoreError::Unavailable(reason))
            }
        }
    }

    /// The value format's version is part of the key: replicas of two versions (a rollout) each
    /// keep their own values rather than overwrite the other's as corrupted.
    fn segment_key(&self, key: &LookupKey) -> String {
        format!(
            "{}seg:v{}:{}",
            self.prefix,
            crate::codec::FORMAT_VERSION,
            hex::encode(key)
        )
    }

    fn document_key(&self, collection: &str, id: &str) -> String {
        format!("{}doc:{}:{collection}:{id}", self.prefix, collection.len())
    }

    fn index_key(&self, collection: &str) -> String {
        format!("{}docs:{}:{collection}", self.prefix, collection.len())
    }

    /// The stored values of several segments, in order, in one round trip (one MGET): a
    /// context's segments that L1 lacks are asked for together.
    pub async fn get_segments(&self, keys: &[LookupKey]) -> StoreResult<Vec<Option<Vec<u8>>>> {
        self.mget(keys.iter().map(|key| self.segment_key(key)).collect())
            .await
    }

    /// One MGET: the values of `keys`, in order (empty keys ask nothing).
    async fn mget(&self, keys: Vec<String>) -> StoreResult<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let wanted = keys.len();
        let values = self
            .call("get", async {
                if let Some(direct) = &self.direct {
                    match direct.mget(&keys).await {
                        Err(MgetError::Saturated) => {}
                        outcome => return outcome.map_err(|error| error.to_string()),
                    }
                }
                // No direct connections (TLS, a Unix socket) or all of them busy.
                let mut connection = self.manager.clone();
                redis::cmd("MGET")
                    .arg(&keys)
                    .query_async::<Vec<Option<Vec<u8>>>>(&mut connection)
                    .await
                    .map_err(|error| error.to_string())
            })
            .await?;
        if values.len() != wanted {
            // Counted as `call` counts a failed call: the answer cannot be matched to the keys.
            metrics::counter!("tollgate_token_cache_redis_errors_total", "op" => "get")
                .increment(1);
            self.health.errors.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::Unavailable(format!(
                "MGET of {wanted} keys answered {} values",
                values.len()
            )));
        }
        Ok(values)
    }

    pub async fn put_segment(
        &self,
        key: &LookupKey,
        value: &[u8],
        ttl: Duration,
    ) -> StoreResult<()> {
        let redis_key = self.segment_key(key);
        let ttl_secs = ttl.as_secs().max(1);
        self.manager_call("set", |mut connection| {
            let command = redis::cmd("SET")
                .arg(&redis_key)
                .arg(value)
                .arg("EX")
                .arg(ttl_secs)
                .clone();
            async move { command.query_async::<()>(&mut connection).await }
        })
        .await
    }

    /// Overwrites a segment's stored value with raw bytes: for tests of corrupted values.
    pub async fn put_raw_segment(&self, key: &LookupKey, value: &[u8]) -> StoreResult<()> {
        self.put_segment(key, value, Duration::from_secs(60)).await
    }
}

fn decode_document(raw: &[u8]) -> Option<StoredDocument> {
    let (hash, text) = raw.split_at_checked(32)?;
    let text = std::str::from_utf8(text).ok()?;
    let content_hash: Digest32 = hash.try_into().ok()?;
    Some(StoredDocument {
        text: Arc::from(text),
        content_hash,
    })
}

impl DocumentStore for RedisStore {
    async fn put(
        &self,
        collection: &str,
        documents: &[(String, StoredDocument)],
        ttl: Duration,
    ) -> StoreResult<()> {
        if documents.is_empty() {
            return Ok(());
        }
        let ttl_secs = ttl.as_secs().max(1);
        let index = self.index_key(collection);
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (id, document) in documents {
            let mut value = Vec::with_capacity(32 + document.text.len());
            value.extend_from_slice(&document.content_hash);
            value.extend_from_slice(document.text.as_bytes());
            pipe.cmd("SET")
                .arg(self.document_key(collection, id))
                .arg(value)
                .arg("EX")
                .arg(ttl_secs)
                .ignore();
            pipe.cmd("SADD").arg(&index).arg(id).ignore();
        }
        // The index lives as long as its longest-lived document (NX sets a first expiry, GT
        // only ever extends it).
        pipe.cmd("EXPIRE")
            .arg(&index)
            .arg(ttl_secs)
            .arg("NX")
            .ignore();
        pipe.cmd("EXPIRE")
            .arg(&index)
            .arg(ttl_secs)
            .arg("GT")
            .ignore();
        self.manager_call("set", |mut connection| {
            let pipe = pipe.clone();
            async move { pipe.query_async::<()>(&mut connection).await }
        })
        .await
    }

    async fn get(
        &self,
        collection: &str,
        ids: &[String],
    ) -> StoreResult<Vec<Option<StoredDocument>>> {
        let keys: Vec<String> = ids
            .iter()
            .map(|id| self.document_key(collection, id))
            .collect();
        let raw = self.mget(keys).await?;
        Ok(raw
            .into_iter()
            .map(|value| value.as_deref().and_then(decode_document))
            .collect())
    }

    async fn remove(&self, collection: &str, ids: &[String]) -> StoreResult<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let keys: Vec<String> = ids
            .iter()
            .map(|id| self.document_key(collection, id))
            .collect();
        let index = self.index_key(collection);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("DEL")
            .arg(keys)
            .cmd("SREM")
            .arg(index)
            .arg(ids)
            .ignore();
        // A second attempt (after a dropped connection) may count fewer removals than there
        // were, when the first was carried out but its answer lost; the removal itself is exact.
        let (removed,): (u64,) = self
            .manager_call("del", |mut connection| {
                let pipe = pipe.clone();
                async move { pipe.query_async(&mut connection).await }
            })
            .await?;
        Ok(removed)
    }

    async fn clear(&self, collection: &str) -> StoreResult<u64> {
        let index = self.index_key(collection);
        let ids: Vec<String> = self
            .manager_call("get", |mut connection| {
                let command = redis::cmd("SMEMBERS").arg(&index).clone();
                async move { command.query_async(&mut connection).await }
            })
            .await?;
        let mut keys: Vec<String> = ids
            .iter()
            .map(|id| self.document_key(collection, id))
            .collect();
        let documents = keys.len();
        keys.push(index);
        let mut pipe = redis::pipe();
        pipe.atomic();
        // One DEL for the documents (its count is the answer), one for the index.
        if documents > 0 {
            pipe.cmd("DEL").arg(&keys[..documents]);
        }
        pipe.cmd("DEL").arg(&keys[documents..]).ignore();
        let removed: Vec<u64> = self
            .manager_call("del", |mut connection| {
                let pipe = pipe.clone();
                async move { pipe.query_async(&mut connection).await }
            })
            .await?;
        Ok(removed.first().copied().unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis_url() -> String {
        std::env::var("REDIS_URL").expect(
            "REDIS_URL is not set: run the tests with `make test`, or `eval \"$(scripts/services.sh env)\"` first",
        )
    }

    fn prefix() -> String {
        format!(
            "tollgate-test:{}:{}:",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        )
    }

    #[tokio::test]
    async fn passes_the_document_store_suite() {
        let store = RedisStore::new(&redis_url(), &prefix(), Duration::from_secs(2)).unwrap();
        crate::store::tests::document_store_suite(&store, "kb:with:colons").await;
    }

    #[tokio::test]
    async fn an_unreachable_server_is_an_error_within_the_budget() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let store = RedisStore::new(
            &format!("redis://127.0.0.1:{port}"),
            &prefix(),
            Duration::from_millis(20),
        )
        .unwrap();
        assert!(store.get_segments(&[[0; 16]]).await.is_err());
        assert!(!store.health().available.load(Ordering::Relaxed));
        assert_eq!(store.health().errors.load(Ordering::Relaxed), 1);
    }
}

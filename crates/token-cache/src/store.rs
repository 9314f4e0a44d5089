//! Registered documents (PutDocuments / Invalidate / Clear): the text of each document id of a
//! collection, so that later requests may pass ids only.
//!
//! Two backends: [`memory::MemoryDocumentStore`] for the embedded default (one process) and
//! [`redis::RedisStore`] when `REDIS_URL` is set. With Redis, every reference is resolved in Redis
//! on each request (one MGET, pipelined), never from a process-local copy: an Invalidate or Clear
//! on any replica is therefore seen by every replica on its very next request.
//!
//! The shared test suite for this trait is `tests::document_store_suite`, run against both backends.

pub(crate) mod direct_mget;
pub mod memory;
pub mod redis;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// A registered document: its text and the SHA-256 of the text (computed once at registration,
/// so that resolving a reference does not rehash it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDocument {
    pub text: Arc<str>,
    pub content_hash: [u8; 32],
}

impl StoredDocument {
    pub fn new(text: &str) -> Self {
        Self {
            text: Arc::from(text),
            content_hash: crate::keys::content_hash(text),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The backend did not answer within its time budget or failed; details are in the logs.
    #[error("document store unavailable: {0}")]
    Unavailable(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

pub trait DocumentStore: Send + Sync {
    /// Registers (or replaces) documents of a collection for `ttl`.
    fn put(
        &self,
        collection: &str,
        documents: &[(String, StoredDocument)],
        ttl: Duration,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// The documents registered under `ids`, in order; `None` for ids that are not registered.
    fn get(
        &self,
        collection: &str,
        ids: &[String],
    ) -> impl Future<Output = StoreResult<Vec<Option<StoredDocument>>>> + Send;

    /// Removes the given ids; returns how many were registered.
    fn remove(
        &self,
        collection: &str,
        ids: &[String],
    ) -> impl Future<Output = StoreResult<u64>> + Send;

    /// Removes every document of the collection; returns how many there were.
    fn clear(&self, collection: &str) -> impl Future<Output = StoreResult<u64>> + Send;
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn docs(pairs: &[(&str, &str)]) -> Vec<(String, StoredDocument)> {
        pairs
            .iter()
            .map(|(id, text)| ((*id).to_owned(), StoredDocument::new(text)))
            .collect()
    }

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|id| (*id).to_owned()).collect()
    }

    /// Every backend must pass this. `collection` must be unused in the store.
    pub(crate) async fn document_store_suite<S: DocumentStore>(store: &S, collection: &str) {
        let other = format!("{collection}-other");
        let ttl = Duration::from_secs(60);
        store
            .put(collection, &docs(&[("a", "alpha"), ("b", "beta")]), ttl)
            .await
            .unwrap();
        store
            .put(&other, &docs(&[("a", "other alpha")]), ttl)
            .await
            .unwrap();

        let got = store
            .get(collection, &ids(&["b", "missing", "a"]))
            .await
            .unwrap();
        assert_eq!(got[0], Some(StoredDocument::new("beta")));
        assert_eq!(got[1], None);
        assert_eq!(got[2], Some(StoredDocument::new("alpha")));

        // Replacing a document changes its text and hash.
        store
            .put(collection, &docs(&[("a", "alpha v2")]), ttl)
            .await
            .unwrap();
        let got = store.get(collection, &ids(&["a"])).await.unwrap();
        assert_eq!(got[0], Some(StoredDocument::new("alpha v2")));

        // Collections are separate.
        let got = store.get(&other, &ids(&["a", "b"])).await.unwrap();
        assert_eq!(got, vec![Some(StoredDocument::new("other alpha")), None]);

        assert_eq!(
            store
                .remove(collection, &ids(&["a", "nope"]))
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            store.get(collection, &ids(&["a"])).await.unwrap(),
            vec![None]
        );

        store
            .put(collection, &docs(&[("c", "gamma")]), ttl)
            .await
            .unwrap();
        assert_eq!(store.clear(collection).await.unwrap(), 2, "b and c");
        assert_eq!(
            store.get(collection, &ids(&["b", "c"])).await.unwrap(),
            vec![None, None]
        );
        assert_eq!(store.clear(collection).await.unwrap(), 0);
        assert_eq!(
            store.get(&other, &ids(&["a"])).await.unwrap(),
            vec![Some(StoredDocument::new("other alpha"))],
            "clearing one collection leaves the others"
        );

        // Expiry.
        store
            .put(
                collection,
                &docs(&[("short", "lived")]),
                Duration::from_secs(1),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(
            store.get(collection, &ids(&["short"])).await.unwrap(),
            vec![None]
        );
        store.clear(&other).await.unwrap();
    }
}

//! Registered documents in this process only: the embedded default, without Redis.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{DocumentStore, StoreError, StoreResult, StoredDocument};

/// collection -> id -> (document, expiry)
type Collections = HashMap<String, HashMap<String, (StoredDocument, Instant)>>;

#[derive(Debug, Default)]
pub struct MemoryDocumentStore {
    collections: Mutex<Collections>,
}

impl MemoryDocumentStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Collections) -> T) -> StoreResult<T> {
        let mut guard = self
            .collections
            .lock()
            .map_err(|_| StoreError::Unavailable("document map lock poisoned".into()))?;
        Ok(f(&mut guard))
    }
}

impl DocumentStore for MemoryDocumentStore {
    async fn put(
        &self,
        collection: &str,
        documents: &[(String, StoredDocument)],
        ttl: Duration,
    ) -> StoreResult<()> {
        let expires = Instant::now() + ttl;
        self.with(|collections| {
            let entries = collections.entry(collection.to_owned()).or_default();
            let now = Instant::now();
            entries.retain(|_, (_, expiry)| *expiry > now);
            for (id, document) in documents {
                entries.insert(id.clone(), (document.clone(), expires));
            }
        })
    }

    async fn get(
        &self,
        collection: &str,
        ids: &[String],
    ) -> StoreResult<Vec<Option<StoredDocument>>> {
        let now = Instant::now();
        self.with(|collections| {
            let entries = collections.get(collection);
            ids.iter()
                .map(|id| {
                    entries
                        .and_then(|entries| entries.get(id))
                        .filter(|(_, expiry)| *expiry > now)
                        .map(|(document, _)| document.clone())
                })
                .collect()
        })
    }

    async fn remove(&self, collection: &str, ids: &[String]) -> StoreResult<u64> {
        let now = Instant::now();
        self.with(|collections| {
            let Some(entries) = collections.get_mut(collection) else {
                return 0;
            };
            ids.iter()
                .filter_map(|id| entries.remove(id))
                .filter(|(_, expiry)| *expiry > now)
                .count() as u64
        })
    }

    async fn clear(&self, collection: &str) -> StoreResult<u64> {
        let now = Instant::now();
        self.with(|collections| {
            collections.remove(collection).map_or(0, |entries| {
                entries.values().filter(|(_, expiry)| *expiry > now).count() as u64
            })
        })
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn passes_the_document_store_suite() {
        let store = super::MemoryDocumentStore::new();
        crate::store::tests::document_store_suite(&store, "kb").await;
    }
}

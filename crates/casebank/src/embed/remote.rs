//! The production embedder: a real embedding model (an OpenAI-compatible `/v1/embeddings`
//! endpoint) reached through the provider-adapter's `Embed` RPC, so that provider keys, retries,
//! fallbacks and costs stay in one place.

use std::time::Duration;

use tollgate_kit::grpc::client::TracedChannel;
use tollgate_proto::v1::EmbedRequest;
use tollgate_proto::v1::provider_adapter_client::ProviderAdapterClient;

use super::{EmbedError, Embedder, normalise};

#[derive(Debug, Clone)]
pub struct RemoteEmbedder {
    client: ProviderAdapterClient<TracedChannel>,
    model: String,
    identity: String,
    timeout: Duration,
}

impl RemoteEmbedder {
    /// `channel` is a (lazy) channel to the provider-adapter; `model` a catalog model id.
    pub fn new(channel: TracedChannel, model: &str, timeout: Duration) -> Self {
        Self {
            client: ProviderAdapterClient::new(channel),
            model: model.to_owned(),
            identity: format!("remote-{model}"),
            timeout,
        }
    }
}

#[async_trait::async_trait]
impl Embedder for RemoteEmbedder {
    fn identity(&self) -> &str {
        &self.identity
    }

    async fn embed(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        let mut request = tonic::Request::new(EmbedRequest {
            model: self.model.clone(),
            inputs: vec![text.to_owned()],
            request_id: String::new(),
        });
        request.set_timeout(self.timeout);
        let response = self
            .client
            .clone()
            .embed(request)
            .await
            .map_err(|status| {
                EmbedError::Unavailable(format!(
                    "provider-adapter Embed: {:?}: {}",
                    status.code(),
                    status.message()
                ))
            })?
            .into_inner();
        let count = response.embeddings.len();
        let mut vector = match <[_; 1]>::try_from(response.embeddings) {
            Ok([embedding]) => embedding.values,
            Err(_) => {
                return Err(EmbedError::Malformed(format!(
                    "expected 1 embedding, got {count}"
                )));
            }
        };
        if vector.iter().any(|v| !v.is_finite()) || !normalise(&mut vector) {
            return Err(EmbedError::Malformed(
                "embedding is empty, zero or not finite".into(),
            ));
        }
        Ok(vector)
    }
}

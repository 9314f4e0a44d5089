//! Shared helpers for the provider-adapter's gRPC tests: a gateway running only the
//! provider-adapter on 127.0.0.1:0 with a catalog pointing at fake upstreams.

#![allow(dead_code)]

use std::path::PathBuf;

use tokio_stream::StreamExt;
use tollgate::config::Config;
use tollgate_kit::grpc::client::TracedChannel;
use tollgate_proto::v1 as pb;
use tollgate_proto::v1::provider_adapter_client::ProviderAdapterClient;
use tollgate_provider_adapter::config::{
    Capability, GroupConfig, ModelConfig, ProviderAdapterConfig, ProviderConfig, ProviderKind,
    TierName,
};
use tollgate_test_support::fake_upstream::{FakeKind, FakeUpstream};
use tollgate_test_support::{ServiceTarget as Target, TestGateway, TestResult};

pub struct Harness {
    pub gateway: TestGateway,
    pub client: ProviderAdapterClient<TracedChannel>,
}

impl Harness {
    pub async fn start(adapter: ProviderAdapterConfig) -> TestResult<Self> {
        let config = Config {
            provider_adapter: adapter,
            ..Config::default()
        };
        let gateway = TestGateway::start_with(config, Target::ProviderAdapter).await?;
        let client = ProviderAdapterClient::new(gateway.channel(Target::ProviderAdapter)?);
        Ok(Self { gateway, client })
    }

    pub async fn stop(self) -> TestResult {
        self.gateway.stop().await
    }

    /// Deltas' text, the End event and the final error status of a stream.
    pub async fn stream(
        &mut self,
        request: pb::GenerateRequest,
    ) -> Result<
        (
            Vec<String>,
            Option<pb::GenerationEnd>,
            Option<tonic::Status>,
        ),
        tonic::Status,
    > {
        let mut events = self
            .client
            .generate_stream(pb::GenerateStreamRequest {
                request: Some(request),
            })
            .await?
            .into_inner();
        let mut deltas = Vec::new();
        let mut end = None;
        let mut status = None;
        while let Some(event) = events.next().await {
            match event {
                Ok(pb::GenerateStreamResponse {
                    event: Some(pb::generate_stream_response::Event::Delta(delta)),
                }) => deltas.push(delta.text),
                Ok(pb::GenerateStreamResponse {
                    event: Some(pb::generate_stream_response::Event::End(last)),
                }) => end = Some(last),
                Ok(_) => {}
                Err(error) => {
                    status = Some(error);
                    break;
                }
            }
        }
        Ok((deltas, end, status))
    }
}

pub fn kind_of(kind: FakeKind) -> ProviderKind {
    match kind {
        FakeKind::OpenAi => ProviderKind::Openai,
        FakeKind::Anthropic => ProviderKind::Anthropic,
        FakeKind::Gemini => ProviderKind::Gemini,
    }
}

/// A file holding `secret`, for `api_key_file` (environment variables are process-wide, and
/// tests run in parallel).
pub fn key_file(secret: &str) -> TestResult<PathBuf> {
    let path = std::env::temp_dir().join(format!(
        "tollgate-test-key-{}-{}",
        std::process::id(),
        fastrand_name()
    ));
    std::fs::write(&path, format!("{secret}\n"))?;
    Ok(path)
}

fn fastrand_name() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    NEXT.fetch_add(1, Ordering::Relaxed) * 1_000_000_000 + u64::from(nanos)
}

pub fn provider(
    name: &str,
    upstream: &FakeUpstream,
    key: Option<&str>,
) -> TestResult<ProviderConfig> {
    let mut config = ProviderConfig::new(name, kind_of(upstream.kind), &upstream.base_url());
    if let Some(secret) = key {
        config.api_key_file = Some(key_file(secret)?);
    }
    Ok(config)
}

pub fn model(id: &str, provider: &str, tier: TierName) -> ModelConfig {
    ModelConfig {
        id: id.to_owned(),
        provider: provider.to_owned(),
        upstream_model: Some(format!("{id}-upstream")),
        tier,
        capabilities: vec![Capability::Streaming, Capability::Vision],
        context_window: 8_192,
        max_output_tokens: 1_024,
        input_per_mtok_usd: "0.15".into(),
        output_per_mtok_usd: "0.6".into(),
        cached_input_per_mtok_usd: Some("0.075".into()),
        cache_write_per_mtok_usd: None,
        tokenizer: "o200k_base".into(),
        embedding_dimensions: None,
    }
}

/// A catalog of the given providers, one model per provider named `{provider}-model`, and a
/// group `chain` over them in order. Retries are quick so that tests do not wait.
pub fn catalog(providers: Vec<ProviderConfig>) -> ProviderAdapterConfig {
    let mut config = ProviderAdapterConfig::default();
    let models: Vec<ModelConfig> = providers
        .iter()
        .map(|p| model(&format!("{}-model", p.name), &p.name, TierName::Cheap))
        .collect();
    config.groups = vec![GroupConfig {
        name: "chain".to_owned(),
        models: models.iter().map(|m| m.id.clone()).collect(),
    }];
    config.models = models;
    config.providers = providers;
    config.retry.initial_backoff_ms = 1;
    config.retry.max_backoff_ms = 5;
    config
}

pub fn user(text: &str) -> pb::Message {
    pb::Message {
        role: pb::Role::User as i32,
        text: text.to_owned(),
        parts: Vec::new(),
        name: String::new(),
    }
}

pub fn request(model: &str, text: &str) -> pb::GenerateRequest {
    pb::GenerateRequest {
        model: model.to_owned(),
        messages: vec![user(text)],
        ..Default::default()
    }
}

pub fn statuses(attempts: &[pb::Attempt]) -> Vec<(String, pb::AttemptStatus)> {
    attempts
        .iter()
        .map(|a| {
            (
                a.model.clone(),
                pb::AttemptStatus::try_from(a.status).unwrap_or(pb::AttemptStatus::Unspecified),
            )
        })
        .collect()
}

pub fn png_image() -> pb::ContentPart {
    pb::ContentPart {
        part: Some(pb::content_part::Part::Image(pb::Image {
            source: Some(pb::image::Source::Data(vec![
                0x89, b'P', b'N', b'G', 1, 2, 3,
            ])),
            mime_type: "image/png".into(),
        })),
    }
}

//! The model catalog, checked once at start-up: providers with their keys, models with their
//! prices, capabilities and tokenizers, and the fallback chains of each group.
//!
//! Every problem found here stops start-up with a message naming the key
//! (`provider_adapter.models[3].input_per_mtok_usd`). A missing API key does not: the provider's
//! attempts then fail with `missing_credentials` and the chain moves on, so one unset key does not
//! take the whole gateway down.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tiktoken_rs::CoreBPE;
use tollgate_kit::money::Usd;

use crate::config::{Capability, ProviderAdapterConfig, ProviderKind, TierName};
use crate::providers::Usage;

/// A secret that never shows in Debug output, logs or errors.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

#[derive(Debug)]
pub struct ProviderEntry {
    pub name: String,
    pub kind: ProviderKind,
    /// Without a trailing slash.
    pub base_url: String,
    pub api_key: Option<ApiKey>,
    /// Where the key should have come from, for the `missing_credentials` message.
    pub key_source: Option<String>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub stream_idle_timeout: Duration,
    pub retryable_statuses: Vec<u16>,
    pub mock_latency: Duration,
    pub mock_failure_percent: u8,
}

impl ProviderEntry {
    /// `text` with this provider's key replaced, for anything shown or logged.
    pub fn redact(&self, text: &str) -> String {
        match &self.api_key {
            Some(key) if key.0.len() >= 4 => text.replace(&key.0, "<redacted>"),
            _ => text.to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub vision: bool,
    pub tools: bool,
    pub token_ids: bool,
    pub embeddings: bool,
    pub json_mode: bool,
    pub streaming: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    Local,
    Cheap,
    Standard,
    Premium,
}

impl From<TierName> for Tier {
    fn from(name: TierName) -> Self {
        match name {
            TierName::Local => Tier::Local,
            TierName::Cheap => Tier::Cheap,
            TierName::Standard => Tier::Standard,
            TierName::Premium => Tier::Premium,
        }
    }
}

/// Prices per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prices {
    pub input: Usd,
    pub output: Usd,
    pub cached_input: Usd,
    pub cache_write: Usd,
}

impl Prices {
    /// The exact cost of `usage`: uncached input, cached input, cache writes and output each at
    /// their own price. None only on overflow.
    pub fn cost(&self, usage: &Usage) -> Option<Usd> {
        let uncached = usage
            .input
            .saturating_sub(usage.cached_input)
            .saturating_sub(usage.cache_write_input);
        let parts = [
            Usd::cost_of_tokens(uncached, self.input)?,
            Usd::cost_of_tokens(usage.cached_input, self.cached_input)?,
            Usd::cost_of_tokens(usage.cache_write_input, self.cache_write)?,
            Usd::cost_of_tokens(usage.output, self.output)?,
        ];
        parts
            .into_iter()
            .try_fold(Usd::ZERO, |sum, part| sum.checked_add(part))
    }
}

pub struct ModelEntry {
    pub id: String,
    pub provider: Arc<ProviderEntry>,
    pub upstream_model: String,
    pub tier: Tier,
    pub capabilities: Capabilities,
    pub context_window: u64,
    pub max_output_tokens: u64,
    pub prices: Prices,
    pub tokenizer_name: String,
    pub tokenizer: &'static CoreBPE,
    pub embedding_dimensions: u32,
}

impl std::fmt::Debug for ModelEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelEntry")
            .field("id", &self.id)
            .field("provider", &self.provider.name)
            .field("upstream_model", &self.upstream_model)
            .finish_non_exhaustive()
    }
}

impl ModelEntry {
    pub fn count_tokens(&self, text: &str) -> u64 {
        self.tokenizer.encode_with_special_tokens(text).len() as u64
    }
}

/// The tiktoken encodings tollgate knows, built once per process (the first call takes tens of
/// milliseconds, so [`Catalog::from_config`] makes it at start-up).
pub fn tokenizer(name: &str) -> Option<&'static CoreBPE> {
    match name {
        "o200k_base" => Some(tiktoken_rs::o200k_base_singleton()),
        "cl100k_base" => Some(tiktoken_rs::cl100k_base_singleton()),
        "p50k_base" => Some(tiktoken_rs::p50k_base_singleton()),
        "r50k_base" => Some(tiktoken_rs::r50k_base_singleton()),
        _ => None,
    }
}

#[derive(Debug)]
pub struct Catalog {
    pub providers: Vec<Arc<ProviderEntry>>,
    pub models: Vec<Arc<ModelEntry>>,
    by_id: HashMap<String, Arc<ModelEntry>>,
    /// In config order.
    pub groups: Vec<(String, Vec<Arc<ModelEntry>>)>,
}

impl Catalog {
    /// Checks and builds the catalog. Reads key files; blocking, call before serving.
    pub fn from_config(config: &ProviderAdapterConfig) -> Result<Catalog, String> {
        let mut providers: Vec<Arc<ProviderEntry>> = Vec::new();
        for (index, provider) in config.providers.iter().enumerate() {
            let key = format!("provider_adapter.providers[{index}]");
            if provider.name.trim().is_empty() {
                return Err(format!("{key}.name: must not be empty"));
            }
            if providers.iter().any(|p| p.name == provider.name) {
                return Err(format!(
                    "{key}.name: provider {:?} is defined twice",
                    provider.name
                ));
            }
            if provider.mock_failure_percent > 100 {
                return Err(format!(
                    "{key}.mock_failure_percent: must be 0-100, got {}",
                    provider.mock_failure_percent
                ));
            }
            for status in &provider.retryable_statuses {
                if !(400..=599).contains(status) {
                    return Err(format!(
                        "{key}.retryable_statuses: {status} is not an HTTP error status"
                    ));
                }
            }
            let base_url = provider
                .base_url
                .clone()
                .unwrap_or_else(|| provider.kind.default_base_url().to_owned())
                .trim_end_matches('/')
                .to_owned();
            if provider.kind != ProviderKind::Mock
                && !(base_url.starts_with("http://") || base_url.starts_with("https://"))
            {
                return Err(format!(
                    "{key}.base_url: expected an http:// or https:// URL, got {base_url:?}"
                ));
            }
            let (api_key, key_source) = read_api_key(provider, &key)?;
            providers.push(Arc::new(ProviderEntry {
                name: provider.name.clone(),
                kind: provider.kind,
                base_url,
                api_key,
                key_source,
                connect_timeout: Duration::from_millis(provider.connect_timeout_ms),
                timeout: Duration::from_millis(provider.timeout_ms.max(1)),
                stream_idle_timeout: Duration::from_millis(provider.stream_idle_timeout_ms.max(1)),
                retryable_statuses: provider.retryable_statuses.clone(),
                mock_latency: Duration::from_millis(provider.mock_latency_ms),
                mock_failure_percent: provider.mock_failure_percent,
            }));
        }

        let mut models = Vec::new();
        let mut by_id: HashMap<String, Arc<ModelEntry>> = HashMap::new();
        for (index, model) in config.models.iter().enumerate() {
            let key = format!("provider_adapter.models[{index}]");
            if model.id.trim().is_empty() {
                return Err(format!("{key}.id: must not be empty"));
            }
            if by_id.contains_key(&model.id) {
                return Err(format!("{key}.id: model {:?} is defined twice", model.id));
            }
            if config.groups.iter().any(|g| g.name == model.id) {
                return Err(format!(
                    "{key}.id: {:?} is also a group name; ids and group names must differ",
                    model.id
                ));
            }
            let provider = providers
                .iter()
                .find(|p| p.name == model.provider)
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "{key}.provider: no provider named {:?} in provider_adapter.providers",
                        model.provider
                    )
                })?;
            let price = |field: &str, text: &str| {
                Usd::parse_price(&format!("{key}.{field}"), text).map_err(|e| e.to_string())
            };
            let input = price("input_per_mtok_usd", &model.input_per_mtok_usd)?;
            let output = price("output_per_mtok_usd", &model.output_per_mtok_usd)?;
            let cached_input = match &model.cached_input_per_mtok_usd {
                Some(text) => price("cached_input_per_mtok_usd", text)?,
                None => input,
            };
            let cache_write = match &model.cache_write_per_mtok_usd {
                Some(text) => price("cache_write_per_mtok_usd", text)?,
                None => input,
            };
            let tokenizer = tokenizer(&model.tokenizer).ok_or_else(|| {
                format!(
                    "{key}.tokenizer: unknown tokenizer {:?}; known: o200k_base, cl100k_base, p50k_base, r50k_base",
                    model.tokenizer
                )
            })?;
            if model.context_window == 0 {
                return Err(format!("{key}.context_window: must be positive"));
            }
            let has = |capability| model.capabilities.contains(&capability);
            let capabilities = Capabilities {
                vision: has(Capability::Vision),
                tools: has(Capability::Tools),
                token_ids: has(Capability::TokenIds),
                embeddings: has(Capability::Embeddings),
                json_mode: has(Capability::JsonMode),
                streaming: has(Capability::Streaming),
            };
            if capabilities.token_ids
                && provider.kind != ProviderKind::Openai
                && provider.kind != ProviderKind::Mock
            {
                return Err(format!(
                    "{key}.capabilities: token_ids needs an openai-compatible provider (legacy /v1/completions)"
                ));
            }
            let entry = Arc::new(ModelEntry {
                id: model.id.clone(),
                provider,
                upstream_model: model
                    .upstream_model
                    .clone()
                    .unwrap_or_else(|| model.id.clone()),
                tier: model.tier.into(),
                capabilities,
                context_window: model.context_window,
                max_output_tokens: model.max_output_tokens,
                prices: Prices {
                    input,
                    output,
                    cached_input,
                    cache_write,
                },
                tokenizer_name: model.tokenizer.clone(),
                tokenizer,
                embedding_dimensions: model.embedding_dimensions.unwrap_or(64).max(1),
            });
            by_id.insert(model.id.clone(), Arc::clone(&entry));
            models.push(entry);
        }

        let mut groups: Vec<(String, Vec<Arc<ModelEntry>>)> = Vec::new();
        for (group_index, group) in config.groups.iter().enumerate() {
            let (name, members) = (&group.name, &group.models);
            let key = format!("provider_adapter.groups[{group_index}]");
            if name.trim().is_empty() {
                return Err(format!("{key}.name: must not be empty"));
            }
            if groups.iter().any(|(existing, _)| existing == name) {
                return Err(format!("{key}.name: group {name:?} is defined twice"));
            }
            if members.is_empty() {
                return Err(format!("{key}: a group needs at least one model"));
            }
            let mut chain = Vec::new();
            for (index, id) in members.iter().enumerate() {
                let model = by_id.get(id).cloned().ok_or_else(|| {
                    format!("{key}.models[{index}]: no model {id:?} in provider_adapter.models")
                })?;
                chain.push(model);
            }
            groups.push((name.clone(), chain));
        }
        Ok(Catalog {
            providers,
            models,
            by_id,
            groups,
        })
    }

    pub fn model(&self, id: &str) -> Option<&Arc<ModelEntry>> {
        self.by_id.get(id)
    }

    pub fn group(&self, name: &str) -> Option<&[Arc<ModelEntry>]> {
        self.groups
            .iter()
            .find(|(group, _)| group == name)
            .map(|(_, chain)| chain.as_slice())
    }

    /// The models to try for `name`, in order: a group's chain; or a model followed, unless
    /// `fallback` is off, by the models after it in the first group that contains it (groups
    /// run from cheap to strong, so a fallback never goes to a weaker model). None: unknown.
    pub fn chain(&self, name: &str, fallback: bool) -> Option<Vec<Arc<ModelEntry>>> {
        if let Some(chain) = self.group(name) {
            return Some(if fallback {
                chain.to_vec()
            } else {
                chain.iter().take(1).cloned().collect()
            });
        }
        let model = self.model(name)?;
        let mut chain = vec![Arc::clone(model)];
        if fallback
            && let Some((_, group)) = self
                .groups
                .iter()
                .find(|(_, group)| group.iter().any(|m| m.id == model.id))
        {
            let after = group
                .iter()
                .skip_while(|m| m.id != model.id)
                .skip(1)
                .filter(|m| m.id != model.id);
            chain.extend(after.cloned());
        }
        Some(chain)
    }
}

fn read_api_key(
    provider: &crate::config::ProviderConfig,
    key: &str,
) -> Result<(Option<ApiKey>, Option<String>), String> {
    match (&provider.api_key_env, &provider.api_key_file) {
        (Some(_), Some(_)) => Err(format!("{key}: set api_key_env or api_key_file, not both")),
        (Some(var), None) => {
            let source = format!("environment variable {var}");
            match std::env::var(var) {
                Ok(value) if !value.trim().is_empty() => {
                    Ok((Some(ApiKey(value.trim().to_owned())), Some(source)))
                }
                _ => {
                    tracing::warn!(provider = %provider.name, variable = %var, "API key variable is not set; calls to this provider will fail over");
                    Ok((None, Some(source)))
                }
            }
        }
        (None, Some(path)) => {
            let source = format!("file {}", path.display());
            // The file's content never reaches the message: only whether it could be read.
            let value = std::fs::read_to_string(path).map_err(|e| {
                format!(
                    "{key}.api_key_file: cannot read {}: {}",
                    path.display(),
                    e.kind()
                )
            })?;
            if value.trim().is_empty() {
                return Err(format!("{key}.api_key_file: {} is empty", path.display()));
            }
            Ok((Some(ApiKey(value.trim().to_owned())), Some(source)))
        }
        (None, None) => Ok((None, None)),
    }
}

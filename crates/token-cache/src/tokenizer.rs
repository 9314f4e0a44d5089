//! The tokenizers the cache serves: the tiktoken encodings embedded in tiktoken-rs, each built once
//! per process and shared, and the registry that resolves a request's `tokenizer` field (a tokenizer
//! name or a catalog model id mapped to one).
//!
//! A tokenizer's identity is its name plus a hash of its definition (the whole vocabulary, byte
//! string by rank, and its special tokens), so that IDs cached for one vocabulary can never be
//! served for another, even if a library upgrade changed an encoding under the same name.
//!
//! Text is always encoded "ordinary": special-token text such as `<|endoftext|>` inside a document
//! is tokenized as plain text, never turned into a control token.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use sha2::{Digest, Sha256};
use tiktoken_rs::CoreBPE;

/// The encodings served, with the highest rank each defines (special tokens included), so that
/// the identity hash covers the whole vocabulary.
const TIKTOKEN_ENCODINGS: [(&str, u32); 4] = [
    ("cl100k_base", 100_276),
    ("o200k_base", 200_018),
    ("p50k_base", 50_280),
    ("r50k_base", 50_256),
];

/// Where a tokenizer's pre-tokenizer regex always splits, so that tokenizing the text on each
/// side separately gives exactly the tokens of the whole (BPE merges never cross a regex piece).
///
/// Derived from each encoding's split pattern as tiktoken-rs 0.12 compiles it, and checked by the
/// property tests in `tests/zero_drift.rs`. Neither pattern has a lookbehind or a `^`, so the text
/// after a piece boundary is split the same whether or not text precedes it; the rules below make
/// sure the boundary is one and that the text before it splits the same with or without the text
/// after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutRule {
    /// cl100k_base: right after a `\n` when what follows is a run of spaces or tabs (no line
    /// break, possibly empty) and then a non-whitespace character. No piece holds a newline followed
    /// by other whitespace than newlines or by text: the punctuation alternative
    /// (` ?[^\s\p{L}\p{N}]++[\r\n]*+`) ends at its last newline, and in a whitespace run
    /// `\s*[\r\n]` (tried before `\s+(?!\S)`) ends at the run's last newline. Cut off after that
    /// newline, the text before ends in the same piece through `\s++$` instead.
    AfterNewline,
    /// o200k_base: as cl100k_base (with `\s*[\r\n]+`), except that its punctuation alternative
    /// (` ?[^\s\p{L}\p{N}]+[\r\n/]*`) may go on with `/` right after a newline.
    AfterNewlineNotSlash,
    /// r50k_base / p50k_base: between a non-whitespace character and a whitespace character. Every
    /// non-whitespace alternative (` ?\p{L}++`, ` ?\p{N}++`, ` ?[^\s\p{L}\p{N}]++`, contractions) stops
    /// at whitespace, and no lookahead or `$` is evaluated inside the text before the cut. (Cutting
    /// after a newline is NOT exact here: `\s++$` makes a trailing `\n\n` one piece on its own but
    /// `\s+(?!\S)` splits it when text follows.)
    BeforeWhitespace,
}

impl CutRule {
    /// Whether the boundary between the text ending in `before` and the text `after` (its
    /// characters in order; only the first few are read) is one where tokenizing each side alone
    /// equals tokenizing the whole.
    pub fn is_safe_cut(self, before: char, mut after: impl Iterator<Item = char>) -> bool {
        match self {
            CutRule::AfterNewline | CutRule::AfterNewlineNotSlash => {
                if before != '\n' {
                    return false;
                }
                let mut indented = false;
                for next in after.by_ref() {
                    if next == '\n' || next == '\r' {
                        return false;
                    }
                    if next.is_whitespace() {
                        indented = true;
                        continue;
                    }
                    return !(self == CutRule::AfterNewlineNotSlash && !indented && next == '/');
                }
                // Only whitespace up to the end: `\s++$` would take the whole run.
                false
            }
            CutRule::BeforeWhitespace => {
                !before.is_whitespace() && after.next().is_some_and(char::is_whitespace)
            }
        }
    }
}

/// How a tokenizer tokenizes.
enum Backend {
    Tiktoken {
        bpe: &'static CoreBPE,
        /// Each rank's length in bytes (0 for a rank with no bytes): where each token starts in
        /// the text without decoding every token to learn its length.
        byte_lengths: Vec<u32>,
    },
    HuggingFace(Box<tokenizers::Tokenizer>),
}

/// Why a text could not be tokenized (Hugging Face models can refuse input, e.g. a word-level
/// vocabulary without an unknown token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tokenizer {tokenizer}: {reason}")]
pub struct TokenizeError {
    pub tokenizer: String,
    pub reason: String,
}

/// One tokenizer, ready to use; shared by every request (cheap to clone through `Arc`).
pub struct Tokenizer {
    name: String,
    id: String,
    kind: &'static str,
    backend: Backend,
    cut_rule: Option<CutRule>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("name", &self.name)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `name:hash`, the identity every cache key includes.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// "tiktoken" or "huggingface".
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Where contexts may be cut into separately cached segments; None: nowhere (Hugging Face
    /// tokenizers, whose pre-tokenizers and normalizers are arbitrary: their contexts are cached
    /// whole, which is always exact).
    pub fn cut_rule(&self) -> Option<CutRule> {
        self.cut_rule
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizeError> {
        match &self.backend {
            Backend::Tiktoken { bpe, .. } => Ok(bpe.encode_ordinary(text)),
            Backend::HuggingFace(tokenizer) => tokenizer
                .encode(text, false)
                .map(|encoding| encoding.get_ids().to_vec())
                .map_err(|e| self.error(e.to_string())),
        }
    }

    /// The IDs and the byte offset where each token starts.
    pub fn encode_with_starts(&self, text: &str) -> Result<(Vec<u32>, Vec<usize>), TokenizeError> {
        match &self.backend {
            Backend::Tiktoken { bpe, byte_lengths } => {
                let ids = bpe.encode_ordinary(text);
                let mut starts = Vec::with_capacity(ids.len());
                let mut offset = 0;
                for id in &ids {
                    starts.push(offset);
                    // A token may hold part of a UTF-8 character: these are bytes.
                    offset += match byte_lengths.get(*id as usize) {
                        Some(length) => *length as usize,
                        // Beyond the table (not an ordinary rank): ask the encoding itself.
                        None => bpe
                            .decode_bytes(std::slice::from_ref(id))
                            .map_or(0, |bytes| bytes.len()),
                    };
                }
                Ok((ids, starts))
            }
            Backend::HuggingFace(tokenizer) => {
                let encoding = tokenizer
                    .encode(text, false)
                    .map_err(|e| self.error(e.to_string()))?;
                let starts = encoding
                    .get_offsets()
                    .iter()
                    .map(|(start, _)| *start)
                    .collect();
                Ok((encoding.get_ids().to_vec(), starts))
            }
        }
    }

    fn error(&self, reason: String) -> TokenizeError {
        TokenizeError {
            tokenizer: self.name.clone(),
            reason,
        }
    }

    /// A Hugging Face `tokenizer.json` (its bytes), named; truncation and padding are turned off
    /// so that every text is tokenized whole.
    pub fn hugging_face(name: &str, definition: &[u8]) -> Result<Self, String> {
        let mut tokenizer =
            tokenizers::Tokenizer::from_bytes(definition).map_err(|e| e.to_string())?;
        tokenizer
            .with_truncation(None)
            .map_err(|e| e.to_string())?
            .with_padding(None);
        let hash = Sha256::digest(definition);
        Ok(Self {
            name: name.to_owned(),
            id: format!("{name}:{}", hex::encode(&hash[..8])),
            kind: "huggingface",
            backend: Backend::HuggingFace(Box::new(tokenizer)),
            cut_rule: None,
        })
    }
}

/// The process-wide tiktoken encodings, in the order of `TIKTOKEN_ENCODINGS`: building one takes
/// a few hundred milliseconds, so each is built on first use and then shared by every service
/// instance and request of the process.
static TIKTOKEN_CELLS: [OnceLock<Option<Arc<Tokenizer>>>; 4] = [
    OnceLock::new(),
    OnceLock::new(),
    OnceLock::new(),
    OnceLock::new(),
];

/// The tiktoken encoding at `index` of `TIKTOKEN_ENCODINGS`, built on first use (callers wait
/// while another thread builds it).
fn tiktoken(index: usize) -> Option<Arc<Tokenizer>> {
    TIKTOKEN_CELLS[index]
        .get_or_init(|| {
            let (name, max_rank) = TIKTOKEN_ENCODINGS[index];
            let (bpe, cut_rule): (&'static CoreBPE, CutRule) = match name {
                "cl100k_base" => (tiktoken_rs::cl100k_base_singleton(), CutRule::AfterNewline),
                "o200k_base" => (
                    tiktoken_rs::o200k_base_singleton(),
                    CutRule::AfterNewlineNotSlash,
                ),
                "p50k_base" => (
                    tiktoken_rs::p50k_base_singleton(),
                    CutRule::BeforeWhitespace,
                ),
                "r50k_base" => (
                    tiktoken_rs::r50k_base_singleton(),
                    CutRule::BeforeWhitespace,
                ),
                _ => return None,
            };
            let (hash, byte_lengths) = vocabulary(name, bpe, max_rank);
            Some(Arc::new(Tokenizer {
                name: name.to_owned(),
                id: format!("{name}:{hash}"),
                kind: "tiktoken",
                backend: Backend::Tiktoken { bpe, byte_lengths },
                cut_rule: Some(cut_rule),
            }))
        })
        .clone()
}

/// One pass over the vocabulary: the definition hash (SHA-256 over each rank's bytes and the
/// special tokens, first 16 hex digits) and each rank's length in bytes.
fn vocabulary(name: &str, bpe: &CoreBPE, max_rank: u32) -> (String, Vec<u32>) {
    let mut hasher = Sha256::new();
    hasher.update(b"tiktoken\0");
    hasher.update(name.as_bytes());
    let mut byte_lengths = Vec::with_capacity(max_rank as usize + 1);
    for rank in 0..=max_rank {
        match bpe.decode_bytes(&[rank]) {
            Ok(bytes) => {
                hasher.update((bytes.len() as u32).to_le_bytes());
                hasher.update(&bytes);
                byte_lengths.push(bytes.len() as u32);
            }
            Err(_) => {
                hasher.update(u32::MAX.to_le_bytes());
                byte_lengths.push(0);
            }
        }
    }
    let mut specials: Vec<&str> = bpe.special_tokens().into_iter().collect();
    specials.sort_unstable();
    for special in specials {
        hasher.update(special.as_bytes());
        hasher.update([0]);
    }
    (hex::encode(&hasher.finalize()[..8]), byte_lengths)
}

/// Why a tokenizer name could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown tokenizer or model {name:?} (known tokenizers: {known})")]
pub struct UnknownTokenizer {
    pub name: String,
    pub known: String,
}

/// A Hugging Face tokenizer named in configuration: `[[token_cache.tokenizers]]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerFile {
    pub name: String,
    /// A `tokenizer.json` file.
    pub path: std::path::PathBuf,
}

/// Where [`TokenizerRegistry::find`] found a tokenizer.
enum Found<'a> {
    File(&'a Arc<Tokenizer>),
    /// The index of a tiktoken encoding in `TIKTOKEN_ENCODINGS`.
    Tiktoken(usize),
    Nothing,
}

/// Resolves the `tokenizer` field of a request: a tokenizer name, or a model id mapped to one by
/// configuration, or an OpenAI model name tiktoken-rs knows.
#[derive(Debug, Clone)]
pub struct TokenizerRegistry {
    /// model id -> tokenizer name, from configuration.
    models: BTreeMap<String, String>,
    /// Hugging Face tokenizers by name, loaded once at start.
    files: BTreeMap<String, Arc<Tokenizer>>,
}

impl TokenizerRegistry {
    /// The tiktoken encodings only, no model map.
    pub fn builtin() -> Self {
        Self {
            models: BTreeMap::new(),
            files: BTreeMap::new(),
        }
    }

    /// Loads the configured tokenizer files and checks the model map. Fails (naming the key) on
    /// a file that cannot be read or parsed, a name given twice or taken by a tiktoken encoding,
    /// and a model mapped to a tokenizer that does not exist.
    pub fn new(models: &BTreeMap<String, String>, files: &[TokenizerFile]) -> Result<Self, String> {
        let mut loaded = BTreeMap::new();
        for (index, file) in files.iter().enumerate() {
            let key = format!("tokenizers[{index}]");
            if file.name.is_empty() {
                return Err(format!("{key}.name: must not be empty"));
            }
            if TIKTOKEN_ENCODINGS.iter().any(|(n, _)| *n == file.name)
                || loaded.contains_key(&file.name)
            {
                return Err(format!(
                    "{key}.name: {:?} is already a tokenizer",
                    file.name
                ));
            }
            let bytes = std::fs::read(&file.path)
                .map_err(|e| format!("{key}.path: {}: {e}", file.path.display()))?;
            let tokenizer = Tokenizer::hugging_face(&file.name, &bytes).map_err(|e| {
                format!(
                    "{key}.path: {}: not a tokenizer.json: {e}",
                    file.path.display()
                )
            })?;
            loaded.insert(file.name.clone(), Arc::new(tokenizer));
        }
        let registry = Self {
            models: models.clone(),
            files: loaded,
        };
        for (model, tokenizer) in models {
            if !registry.names().contains(tokenizer) {
                return Err(format!(
                    "models.{model}: unknown tokenizer {tokenizer:?} (known: {})",
                    registry.names().join(", ")
                ));
            }
        }
        Ok(registry)
    }

    /// Every tokenizer name: the tiktoken encodings, then the configured files.
    pub fn names(&self) -> Vec<String> {
        TIKTOKEN_ENCODINGS
            .iter()
            .map(|(name, _)| (*name).to_owned())
            .chain(self.files.keys().cloned())
            .collect()
    }

    /// The tokenizer for a name or a model id. Building a tiktoken encoding the first time is CPU
    /// work of a few hundred milliseconds (seconds in a debug build), and a caller waits while
    /// another thread builds it: async code calls [`Self::resolve_built`] first.
    pub fn resolve(&self, name_or_model: &str) -> Result<Arc<Tokenizer>, UnknownTokenizer> {
        match self.find(name_or_model) {
            Found::File(tokenizer) => Ok(tokenizer.clone()),
            Found::Tiktoken(encoding) => {
                tiktoken(encoding).ok_or_else(|| self.unknown(name_or_model))
            }
            Found::Nothing => Err(self.unknown(name_or_model)),
        }
    }

    /// [`Self::resolve`] when it would answer at once; `None` when the tiktoken encoding it needs
    /// is not built yet (by no one, or by another thread right now).
    pub fn resolve_built(
        &self,
        name_or_model: &str,
    ) -> Option<Result<Arc<Tokenizer>, UnknownTokenizer>> {
        match self.find(name_or_model) {
            Found::Tiktoken(encoding) => {
                let built = TIKTOKEN_CELLS[encoding].get()?;
                Some(built.clone().ok_or_else(|| self.unknown(name_or_model)))
            }
            Found::File(tokenizer) => Some(Ok(tokenizer.clone())),
            Found::Nothing => Some(Err(self.unknown(name_or_model))),
        }
    }

    /// Where the tokenizer of `name_or_model` comes from: a configured model maps to a name; a
    /// name is a configured file, a tiktoken encoding, or an OpenAI model tiktoken-rs knows.
    fn find(&self, name_or_model: &str) -> Found<'_> {
        let name = match self.models.get(name_or_model) {
            Some(mapped) => mapped.as_str(),
            None => name_or_model,
        };
        if let Some(tokenizer) = self.files.get(name) {
            return Found::File(tokenizer);
        }
        let encoding_index =
            |encoding: &str| TIKTOKEN_ENCODINGS.iter().position(|(n, _)| *n == encoding);
        if let Some(index) = encoding_index(name) {
            return Found::Tiktoken(index);
        }
        use tiktoken_rs::tokenizer::Tokenizer as Model;
        let encoding = match tiktoken_rs::tokenizer::get_tokenizer(name) {
            Some(Model::Cl100kBase) => "cl100k_base",
            Some(Model::O200kBase) => "o200k_base",
            Some(Model::P50kBase) => "p50k_base",
            Some(Model::R50kBase | Model::Gpt2) => "r50k_base",
            _ => return Found::Nothing,
        };
        encoding_index(encoding).map_or(Found::Nothing, Found::Tiktoken)
    }

    fn unknown(&self, name_or_model: &str) -> UnknownTokenizer {
        UnknownTokenizer {
            name: name_or_model.to_owned(),
            known: self.names().join(", "),
        }
    }

    /// Every tokenizer with the configured models mapped to it.
    pub fn list(&self) -> Vec<(Arc<Tokenizer>, Vec<String>)> {
        let mut models_by_tokenizer: HashMap<&str, Vec<String>> = HashMap::new();
        for (model, tokenizer) in &self.models {
            models_by_tokenizer
                .entry(tokenizer.as_str())
                .or_default()
                .push(model.clone());
        }
        self.names()
            .into_iter()
            .filter_map(|name| {
                let models = models_by_tokenizer
                    .remove(name.as_str())
                    .unwrap_or_default();
                self.resolve(&name)
                    .ok()
                    .map(|tokenizer| (tokenizer, models))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names, OpenAI model names and configured models find their encoding; an unknown name is
    /// answered at once, without the blocking pool.
    #[test]
    fn names_and_models_resolve_to_their_encoding() {
        let models = BTreeMap::from([("my-model".to_owned(), "p50k_base".to_owned())]);
        let registry = TokenizerRegistry::new(&models, &[]).unwrap_or_else(|e| panic!("{e}"));
        for (name, encoding) in [
            ("r50k_base", "r50k_base"),
            ("gpt-4o", "o200k_base"),
            ("gpt-3.5-turbo", "cl100k_base"),
            ("my-model", "p50k_base"),
        ] {
            let tokenizer = registry
                .resolve(name)
                .unwrap_or_else(|_| panic!("{name} resolves"));
            assert_eq!(tokenizer.name(), encoding, "{name}");
            let built = registry.resolve_built(name).and_then(Result::ok);
            assert_eq!(
                built.map(|t| t.id().to_owned()),
                Some(tokenizer.id().to_owned())
            );
        }
        let unknown = registry.resolve_built("no-such-model");
        assert!(
            matches!(&unknown, Some(Err(UnknownTokenizer { name, .. })) if name == "no-such-model"),
            "{unknown:?}"
        );
    }

    #[test]
    fn token_starts_are_byte_offsets_into_the_text() {
        // ASCII, accents, CJK and an emoji: tokens that hold parts of a UTF-8 character.
        let text = "Expenses, café receipts — 日本語のテキスト 🦀🦀 and\n\tcode() { x += 1; }";
        let registry = TokenizerRegistry::builtin();
        for (name, _) in TIKTOKEN_ENCODINGS {
            let tokenizer = registry.resolve(name).unwrap_or_else(|_| panic!("{name}"));
            let Backend::Tiktoken { bpe, .. } = &tokenizer.backend else {
                panic!("{name} is not a tiktoken encoding");
            };
            let (ids, starts) = tokenizer
                .encode_with_starts(text)
                .unwrap_or_else(|_| panic!("{name} encodes"));
            assert_eq!(ids.len(), starts.len());
            for (index, (id, start)) in ids.iter().zip(&starts).enumerate() {
                let bytes = bpe
                    .decode_bytes(std::slice::from_ref(id))
                    .unwrap_or_else(|_| panic!("{name}: rank {id} decodes"));
                let end = starts.get(index + 1).copied().unwrap_or(text.len());
                assert_eq!(&text.as_bytes()[*start..end], bytes.as_slice(), "{name}");
            }
        }
    }
}

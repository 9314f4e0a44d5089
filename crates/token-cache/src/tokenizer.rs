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

/// One tokenizer, ready to use; shared by every request (cheap to clone through `Arc`).
pub struct Tokenizer {
    name: String,
    id: String,
    kind: &'static str,
    bpe: &'static CoreBPE,
    cut_rule: CutRule,
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

    /// "tiktoken" (Hugging Face tokenizers would be "huggingface").
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    pub fn cut_rule(&self) -> CutRule {
        self.cut_rule
    }

    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.bpe.encode_ordinary(text)
    }

    /// The byte length of each token's text, in order (a token may hold part of a UTF-8
    /// character, so these are bytes, not characters).
    pub fn token_byte_lengths(&self, ids: &[u32]) -> Vec<usize> {
        ids.iter()
            .map(|id| {
                self.bpe
                    .decode_bytes(std::slice::from_ref(id))
                    .map_or(0, |bytes| bytes.len())
            })
            .collect()
    }
}

/// The process-wide tiktoken encodings: building one takes a few hundred milliseconds, so each is
/// built on first use and then shared by every service instance and request of the process.
fn tiktoken(name: &str) -> Option<Arc<Tokenizer>> {
    static CELLS: [OnceLock<Option<Arc<Tokenizer>>>; 4] = [
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
    ];
    let index = TIKTOKEN_ENCODINGS.iter().position(|(n, _)| *n == name)?;
    CELLS[index]
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
            let id = format!("{name}:{}", definition_hash(name, bpe, max_rank));
            Some(Arc::new(Tokenizer {
                name: name.to_owned(),
                id,
                kind: "tiktoken",
                bpe,
                cut_rule,
            }))
        })
        .clone()
}

/// SHA-256 over the vocabulary (each rank's bytes) and the special tokens, first 16 hex digits.
fn definition_hash(name: &str, bpe: &CoreBPE, max_rank: u32) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"tiktoken\0");
    hasher.update(name.as_bytes());
    for rank in 0..=max_rank {
        match bpe.decode_bytes(&[rank]) {
            Ok(bytes) => {
                hasher.update((bytes.len() as u32).to_le_bytes());
                hasher.update(&bytes);
            }
            Err(_) => hasher.update(u32::MAX.to_le_bytes()),
        }
    }
    let mut specials: Vec<&str> = bpe.special_tokens().into_iter().collect();
    specials.sort_unstable();
    for special in specials {
        hasher.update(special.as_bytes());
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..8])
}

/// Why a tokenizer name could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown tokenizer or model {name:?} (known tokenizers: {known})")]
pub struct UnknownTokenizer {
    pub name: String,
    pub known: String,
}

/// Resolves the `tokenizer` field of a request: a tokenizer name, or a model id mapped to one by
/// configuration, or an OpenAI model name tiktoken-rs knows.
#[derive(Debug, Clone)]
pub struct TokenizerRegistry {
    /// model id -> tokenizer name, from configuration.
    models: BTreeMap<String, String>,
}

impl TokenizerRegistry {
    /// Fails when the configuration maps a model to a tokenizer that does not exist.
    pub fn new(models: &BTreeMap<String, String>) -> Result<Self, UnknownTokenizer> {
        for tokenizer in models.values() {
            if !Self::names().contains(&tokenizer.as_str()) {
                return Err(UnknownTokenizer {
                    name: tokenizer.clone(),
                    known: Self::names().join(", "),
                });
            }
        }
        Ok(Self {
            models: models.clone(),
        })
    }

    pub fn names() -> Vec<&'static str> {
        TIKTOKEN_ENCODINGS.iter().map(|(name, _)| *name).collect()
    }

    /// The tokenizer for a name or a model id. Building it the first time is CPU work of a few
    /// hundred milliseconds: async callers go through `spawn_blocking`.
    pub fn resolve(&self, name_or_model: &str) -> Result<Arc<Tokenizer>, UnknownTokenizer> {
        let name = match self.models.get(name_or_model) {
            Some(mapped) => mapped.as_str(),
            None => name_or_model,
        };
        if let Some(tokenizer) = tiktoken(name) {
            return Ok(tokenizer);
        }
        let from_model = tiktoken_rs::tokenizer::get_tokenizer(name).and_then(|t| match t {
            tiktoken_rs::tokenizer::Tokenizer::Cl100kBase => tiktoken("cl100k_base"),
            tiktoken_rs::tokenizer::Tokenizer::O200kBase => tiktoken("o200k_base"),
            tiktoken_rs::tokenizer::Tokenizer::P50kBase => tiktoken("p50k_base"),
            tiktoken_rs::tokenizer::Tokenizer::R50kBase
            | tiktoken_rs::tokenizer::Tokenizer::Gpt2 => tiktoken("r50k_base"),
            _ => None,
        });
        from_model.ok_or_else(|| UnknownTokenizer {
            name: name_or_model.to_owned(),
            known: Self::names().join(", "),
        })
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
        Self::names()
            .into_iter()
            .filter_map(|name| {
                let models = models_by_tokenizer.remove(name).unwrap_or_default();
                tiktoken(name).map(|tokenizer| (tokenizer, models))
            })
            .collect()
    }
}

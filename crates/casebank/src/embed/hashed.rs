//! The built-in embedder: feature hashing of word unigrams and bigrams and of character 3- to
//! 5-grams (of each word framed as `<word>`, the fastText scheme, which tolerates typos and
//! inflections), with sublinear term frequency (1 + ln tf) and a hash-chosen sign per feature
//! (so collisions cancel out on average rather than pile up), L2-normalised.
//!
//! No model files, microseconds per task, and the same vector in every process: features are
//! hashed with xxh3 and fixed seeds, and counted in sorted order so that float sums are always
//! added in the same order.

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::{EmbedError, Embedder, normalise};

/// Seeds per feature kind, so that the word "the" and the trigram "the" are different features.
const SEED_WORD: u64 = 0x7461_736b_0001;
const SEED_BIGRAM: u64 = 0x7461_736b_0002;
const SEED_CHARS: u64 = 0x7461_736b_0003;

/// Weights per feature kind: a word yields about three character n-grams per letter, so those
/// weigh less each, leaving words and character shapes about equal shares of the vector.
const WEIGHT_WORD: f32 = 1.0;
const WEIGHT_BIGRAM: f32 = 0.7;
const WEIGHT_CHARS: f32 = 0.35;

/// Longer words only add character n-grams of their first part; beyond that they are noise
/// (base64 blobs, hashes) and cost time.
const MAX_WORD_CHARS: usize = 40;

#[derive(Debug, Clone)]
pub struct HashEmbedder {
    dimension: usize,
    identity: String,
}

impl HashEmbedder {
    /// 384 measured as a good trade on the routing evaluation data (see BENCHMARKS.md).
    pub const DEFAULT_DIMENSION: usize = 384;

    pub fn new(dimension: usize) -> Self {
        let dimension = dimension.max(1);
        Self {
            dimension,
            identity: format!("hash-ngram-v1-d{dimension}"),
        }
    }

    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// The vector of `text`, computed on the calling thread.
    pub fn embed_now(&self, text: &str) -> Vec<f32> {
        let lowered = text.to_lowercase();
        let words: Vec<&str> = lowered
            .split(|c: char| !c.is_alphanumeric())
            .filter(|word| !word.is_empty())
            .collect();
        // (hash, weight) per occurrence; sorted later so equal features become runs.
        let mut features: Vec<(u64, u8)> = Vec::with_capacity(words.len() * 12);
        for (i, word) in words.iter().enumerate() {
            features.push((xxh3_64_with_seed(word.as_bytes(), SEED_WORD), 0));
            if let Some(next) = words.get(i + 1) {
                let mut bigram = String::with_capacity(word.len() + next.len() + 1);
                bigram.push_str(word);
                bigram.push(' ');
                bigram.push_str(next);
                features.push((xxh3_64_with_seed(bigram.as_bytes(), SEED_BIGRAM), 1));
            }
            push_char_ngrams(word, &mut features);
        }
        if features.is_empty() {
            // No letters or digits at all ("???"): the text itself is the only feature.
            features.push((xxh3_64_with_seed(text.trim().as_bytes(), SEED_WORD), 0));
        }
        features.sort_unstable();

        let mut vector = vec![0.0f32; self.dimension];
        let mut start = 0;
        while start < features.len() {
            let feature = features[start];
            let mut end = start + 1;
            while end < features.len() && features[end] == feature {
                end += 1;
            }
            let count = (end - start) as f32;
            let (hash, kind) = feature;
            let weight = match kind {
                0 => WEIGHT_WORD,
                1 => WEIGHT_BIGRAM,
                _ => WEIGHT_CHARS,
            };
            let slot = (hash % self.dimension as u64) as usize;
            let sign = if hash >> 63 == 0 { 1.0 } else { -1.0 };
            vector[slot] += sign * weight * (1.0 + count.ln());
            start = end;
        }
        normalise(&mut vector);
        vector
    }
}

impl Default for HashEmbedder {
    fn default() -> Self {
        Self::new(Self::DEFAULT_DIMENSION)
    }
}

/// Character 3-, 4- and 5-grams of `<word>`.
fn push_char_ngrams(word: &str, features: &mut Vec<(u64, u8)>) {
    let mut framed = String::with_capacity(word.len() + 2);
    framed.push('<');
    framed.extend(word.chars().take(MAX_WORD_CHARS));
    framed.push('>');
    let bounds: Vec<usize> = framed
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(framed.len()))
        .collect();
    let chars = bounds.len() - 1;
    for n in 3..=5 {
        if chars < n {
            break;
        }
        for start in 0..=chars - n {
            let gram = &framed.as_bytes()[bounds[start]..bounds[start + n]];
            features.push((xxh3_64_with_seed(gram, SEED_CHARS), 2));
        }
    }
}

#[async_trait::async_trait]
impl Embedder for HashEmbedder {
    fn identity(&self) -> &str {
        &self.identity
    }

    async fn embed(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        // Tens of microseconds for a prompt; only very long tasks go to the blocking pool.
        if text.len() <= 16 * 1024 {
            return Ok(self.embed_now(text));
        }
        let embedder = self.clone();
        let text = text.to_owned();
        tokio::task::spawn_blocking(move || embedder.embed_now(&text))
            .await
            .map_err(|e| EmbedError::Unavailable(format!("embedding task failed: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::dot;

    fn cosine(a: &str, b: &str) -> f32 {
        let embedder = HashEmbedder::default();
        dot(&embedder.embed_now(a), &embedder.embed_now(b))
    }

    #[test]
    fn vectors_are_unit_length_and_deterministic() {
        let embedder = HashEmbedder::default();
        let a = embedder.embed_now("Summarise the quarterly report for the board");
        assert_eq!(a.len(), 384);
        let norm: f32 = a.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        assert_eq!(
            a,
            embedder.embed_now("Summarise the quarterly report for the board")
        );
        // Pinned values: a change of hashing, weights or tokenisation must change the identity.
        let pinned: Vec<String> = a[..4].iter().map(|v| format!("{v:.6}")).collect();
        assert_eq!(
            pinned, PINNED_PREFIX,
            "embedder output changed: bump its identity"
        );
    }

    const PINNED_PREFIX: [&str; 4] = ["0.000000", "0.000000", "0.071005", "0.000000"];

    #[test]
    fn similar_tasks_are_closer_than_unrelated_ones() {
        let close = cosine(
            "Translate this paragraph into French",
            "Translate the following paragraph into French please",
        );
        let far = cosine(
            "Translate this paragraph into French",
            "What is the derivative of x squared?",
        );
        assert!(close > 0.5, "{close}");
        assert!(far < 0.2, "{far}");
        assert!(
            (cosine("same text", "same text") - 1.0).abs() < 1e-5,
            "identical texts"
        );
    }

    #[test]
    fn text_without_words_still_gets_a_unit_vector() {
        let vector = HashEmbedder::new(64).embed_now("???");
        let norm: f32 = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }

    #[test]
    fn identity_names_the_dimension() {
        assert_eq!(HashEmbedder::new(256).identity(), "hash-ngram-v1-d256");
    }
}

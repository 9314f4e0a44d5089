//! Embeddings behind a trait, so that the case bank can run with no model files (the built-in
//! [`hashed::HashEmbedder`], the default) or with a real embedding model behind the
//! provider-adapter ([`remote::RemoteEmbedder`]).
//!
//! Every embedder has an identity that names it and its parameters; each case records the
//! identity of the embedder that embedded it, and searches only ever compare cases of the
//! current embedder, because vectors of different embedders live in unrelated spaces.

pub mod hashed;
pub mod remote;

use std::fmt::Debug;

pub use hashed::HashEmbedder;
pub use remote::RemoteEmbedder;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EmbedError {
    /// The embedding service cannot be reached or answered with an error worth retrying.
    #[error("embedder unavailable: {0}")]
    Unavailable(String),
    /// The embedding service answered something unusable (wrong count, wrong dimension).
    #[error("embedder answered badly: {0}")]
    Malformed(String),
}

#[async_trait::async_trait]
pub trait Embedder: Send + Sync + Debug {
    /// Names the embedder and every parameter that changes its vectors (`hash-ngram-v1-d384`).
    fn identity(&self) -> &str;

    /// The vector of `text`, L2-normalised (so that cosine similarity is a dot product).
    async fn embed(&self, text: &str) -> Result<Vec<f32>, EmbedError>;
}

/// Scales `vector` to unit length in place; false when it is all zeros (nothing to scale).
pub fn normalise(vector: &mut [f32]) -> bool {
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return false;
    }
    for value in vector.iter_mut() {
        *value /= norm;
    }
    true
}

/// Dot product in four independent lanes, which the compiler vectorises; for unit vectors this
/// is the cosine similarity.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks_a = a.chunks_exact(8);
    let chunks_b = b.chunks_exact(8);
    let rest: f32 = chunks_a
        .remainder()
        .iter()
        .zip(chunks_b.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (ca, cb) in chunks_a.zip(chunks_b) {
        for i in 0..8 {
            lanes[i] += ca[i] * cb[i];
        }
    }
    lanes.iter().sum::<f32>() + rest
}

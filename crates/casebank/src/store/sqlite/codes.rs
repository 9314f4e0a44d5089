//! 8-bit codes of the stored vectors, with a bound on what the rounding can change, so that the
//! exact search reads a quarter of the bytes and still returns exactly what a full f32 scan
//! returns.
//!
//! A vector `x` is stored as `scale * code` with `scale = max|x| / 127` and each `code` an i8,
//! so each component is off by at most `scale / 2`; the query is coded the same way. For a
//! query `q` and a case `x`, the coded dot product `s` differs from `q · x` by at most
//! `|q|₁ · scale_x / 2 + |x̂|₁ · scale_q / 2` (Hölder, twice), where `x̂` is the coded case. A
//! search keeps every case whose upper bound reaches the k-th best lower bound, then ranks only
//! those by the exact f32 dot product (the same function a full scan uses), so no case that a
//! full scan would return can be left out.
//!
//! Why: the scan over f32 vectors (1.5 KB per case at 384 dimensions) was memory-bound and a
//! third of all CPU in the router's pipeline benchmark at 5k cases (BENCHMARKS.md, "Router").

/// Slack for f32 rounding in the bound arithmetic itself (the bound is on exact reals).
const ROUNDING_SLACK: f32 = 1e-4;

/// The codes of one embedder group's vectors, row `i` for case `i`.
#[derive(Debug, Default)]
pub struct Codes {
    dims: usize,
    codes: Vec<i8>,
    scales: Vec<f32>,
    /// `|x̂|₁` of each coded vector.
    l1_norms: Vec<f32>,
}

/// A query vector coded for [`Codes::estimate`].
#[derive(Debug)]
pub struct QueryCodes {
    codes: Vec<i8>,
    scale: f32,
    /// `|q|₁` of the original query.
    l1_norm: f32,
}

fn quantise(vector: &[f32]) -> (Vec<i8>, f32) {
    if vector.iter().any(|v| !v.is_finite()) {
        // Not a number somewhere: scale NaN makes every estimate and bound NaN, so the case is
        // never kept, as a full scan never keeps it (its dot product is NaN too).
        return (vec![0; vector.len()], f32::NAN);
    }
    let max = vector.iter().fold(0.0f32, |max, v| max.max(v.abs()));
    if max == 0.0 {
        return (vec![0; vector.len()], 0.0);
    }
    let scale = max / 127.0;
    let codes = vector
        .iter()
        .map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8)
        .collect();
    (codes, scale)
}

impl QueryCodes {
    pub fn new(query: &[f32]) -> Self {
        let (codes, scale) = quantise(query);
        Self {
            codes,
            scale,
            l1_norm: query.iter().map(|v| v.abs()).sum(),
        }
    }
}

impl Codes {
    pub fn new(dims: usize) -> Self {
        Self {
            dims,
            ..Self::default()
        }
    }

    pub fn push(&mut self, vector: &[f32]) {
        let (codes, scale) = quantise(vector);
        let l1_norm = codes
            .iter()
            .map(|c| f32::from(c.unsigned_abs()))
            .sum::<f32>()
            * scale;
        self.codes.extend_from_slice(&codes);
        self.scales.push(scale);
        self.l1_norms.push(l1_norm);
    }

    /// Moves the last row into row `index` and drops the last, as `Vec::swap_remove` does.
    pub fn swap_remove(&mut self, index: usize) {
        let last = self.scales.len() - 1;
        if index != last {
            let dims = self.dims;
            self.codes
                .copy_within(last * dims..(last + 1) * dims, index * dims);
        }
        self.codes.truncate(last * self.dims);
        self.scales.swap_remove(index);
        self.l1_norms.swap_remove(index);
    }

    /// `(estimate, bound)`: the exact dot product of the query and case `index` lies within
    /// `estimate ± bound`.
    pub fn estimate(&self, index: usize, query: &QueryCodes) -> (f32, f32) {
        let row = &self.codes[index * self.dims..(index + 1) * self.dims];
        let scale = self.scales[index];
        let estimate = integer_dot(row, &query.codes) as f32 * scale * query.scale;
        let bound =
            0.5 * (query.l1_norm * scale + self.l1_norms[index] * query.scale) + ROUNDING_SLACK;
        (estimate, bound)
    }
}

/// Sixteen independent i32 lanes, which the compiler vectorises (no overflow: 16 products of at
/// most 127² per lane per 16 values would need over 8,000 dimensions to reach i32::MAX / 16).
fn integer_dot(a: &[i8], b: &[i8]) -> i32 {
    let mut lanes = [0i32; 16];
    let chunks_a = a.chunks_exact(16);
    let chunks_b = b.chunks_exact(16);
    let rest: i32 = chunks_a
        .remainder()
        .iter()
        .zip(chunks_b.remainder())
        .map(|(x, y)| i32::from(*x) * i32::from(*y))
        .sum();
    for (ca, cb) in chunks_a.zip(chunks_b) {
        for i in 0..16 {
            lanes[i] += i32::from(ca[i]) * i32::from(cb[i]);
        }
    }
    lanes.iter().sum::<i32>() + rest
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::{dot, normalise};
    use proptest::prelude::*;

    fn unit(values: Vec<f32>) -> Vec<f32> {
        let mut values = values;
        normalise(&mut values);
        values
    }

    proptest! {
        #[test]
        fn the_bound_always_holds(
            case in prop::collection::vec(-1.0f32..1.0, 1..70),
            query_seed in prop::collection::vec(-1.0f32..1.0, 70),
        ) {
            let case = unit(case);
            let query = unit(query_seed[..case.len()].to_vec());
            let mut codes = Codes::new(case.len());
            codes.push(&case);
            let (estimate, bound) = codes.estimate(0, &QueryCodes::new(&query));
            let exact = dot(&case, &query);
            prop_assert!((exact - estimate).abs() <= bound, "exact {exact}, estimate {estimate} ± {bound}");
        }
    }

    #[test]
    fn removal_moves_the_last_row() {
        let mut codes = Codes::new(2);
        codes.push(&[1.0, 0.0]);
        codes.push(&[0.0, 1.0]);
        codes.push(&[0.6, 0.8]);
        codes.swap_remove(0);
        let query = QueryCodes::new(&[0.6, 0.8]);
        let (estimate, bound) = codes.estimate(0, &query);
        assert!((estimate - 1.0).abs() <= bound);
        assert!(bound < 0.05, "a tight bound, got {bound}");
    }

    #[test]
    fn zero_and_non_finite_vectors() {
        let mut codes = Codes::new(2);
        codes.push(&[0.0, 0.0]);
        codes.push(&[f32::NAN, 1.0]);
        let query = QueryCodes::new(&[1.0, 0.0]);
        let (estimate, bound) = codes.estimate(0, &query);
        assert_eq!(estimate, 0.0);
        assert!(bound < 0.01);
        let (estimate, _) = codes.estimate(1, &query);
        assert!(estimate.is_nan(), "never kept by any comparison");
    }
}

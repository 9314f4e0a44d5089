//! The fast complexity classifier: cheap text features (no model call, microseconds) turned into
//! one of five levels, a confidence, and the continuous score the routing policy and
//! `tollgate eval routing` rank prompts by.
//!
//! The score's core is the prior found in `research/routing_prototype.py`: log of the length, plus
//! relational/quantitative cues (comparisons, multiples, fractions: each one more step of
//! reasoning), plus a negated question (NOT, EXCEPT). On the development data that prior alone
//! reaches APGR 0.635 (mmlu_dev) and 0.638 (gsm8k), above prompt length (0.625 / 0.601). Code,
//! explicit multi-step instructions, constraints and several questions add to it: they are the
//! cues the issue names, kept small so that they move a prompt by about one level at most.
//!
//! Only the first [`MAX_SCANNED_BYTES`] are scanned for cues, so that the cost stays bounded for
//! huge prompts; the length itself is always exact.

use regex::Regex;

/// Cue scanning stops here (at a character boundary); the p99 cost stays in microseconds.
pub const MAX_SCANNED_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Trivial,
    Simple,
    Moderate,
    Complex,
    Expert,
}

impl Level {
    pub const ALL: [Level; 5] = [
        Level::Trivial,
        Level::Simple,
        Level::Moderate,
        Level::Complex,
        Level::Expert,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trivial => "trivial",
            Level::Simple => "simple",
            Level::Moderate => "moderate",
            Level::Complex => "complex",
            Level::Expert => "expert",
        }
    }
}

/// What the classifier saw; kept so that a decision can explain itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Features {
    pub chars: usize,
    pub relational_cues: usize,
    pub negation: bool,
    pub code: bool,
    pub math_symbols: usize,
    pub multi_step_cues: usize,
    pub reasoning_cues: usize,
    pub constraint_cues: usize,
    pub questions: usize,
    /// Earlier turns of the conversation (messages before the last user message).
    pub conversation_depth: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Classification {
    pub level: Level,
    /// In [0.5, 1]: 0.5 on a boundary between two levels, 1 deep inside one.
    pub confidence: f64,
    /// Higher means harder; comparable across prompts (the ranking score of the routing eval).
    pub score: f64,
    pub features: Features,
}

/// Level boundaries on the score: a one-line question is trivial (e^3 ≈ 20 characters scores 3),
/// a paragraph moderate, a page with cues expert.
const LEVEL_BOUNDARIES: [f64; 4] = [4.0, 5.0, 6.0, 7.0];

/// The compiled cue patterns: built once at start-up and shared, never per request.
#[derive(Debug, Clone)]
pub struct Classifier {
    relational: Regex,
    negation: Regex,
    code: Regex,
    math_symbols: Regex,
    multi_step: Regex,
    reasoning: Regex,
    constraints: Regex,
}

impl Classifier {
    pub fn new() -> Result<Self, regex::Error> {
        Ok(Self {
            relational: ascii_regex(
                r"(?i)\b(?:more|less|fewer|longer|shorter|older|younger|larger|smaller) than\b|\b(?:times|twice|double|triple|half|third|quarter|thrice)\b|\d+/\d+",
            )?,
            negation: ascii_regex(r"(?i)\b(?:not|except|least|false|incorrect)\b")?,
            code: ascii_regex(
                r"(?m)```|\bfn \w+\(|\bdef \w+\(|\bclass \w+[:({]|#include\b|^\s*import \w+|=>|\w+\([^)]*\)\s*\{|;\s*$",
            )?,
            math_symbols: ascii_regex(r"[=^√∑∫≤≥±×÷]|\\(?:frac|sum|int|sqrt)")?,
            multi_step: ascii_regex(
                r"(?im)\bstep[- ]by[- ]step\b|\bfirst\b.*\bthen\b|\bfinally\b|^\s*(?:\d+[.)]|[-*])\s+\w",
            )?,
            reasoning: ascii_regex(
                r"(?i)\b(?:why|explain|prove|derive|analy[sz]e|compare|justify|evaluate|design|optimi[sz]e|trade-?offs?)\b",
            )?,
            constraints: ascii_regex(
                r"(?i)\b(?:must|exactly|at least|at most|no more than|without|only if|ensure|in json|format)\b",
            )?,
        })
    }

    /// Classifies the last user message, `conversation_depth` messages into a conversation.
    pub fn classify(&self, text: &str, conversation_depth: usize) -> Classification {
        let scanned = prefix_at_char_boundary(text, MAX_SCANNED_BYTES);
        let features = Features {
            chars: text.chars().count(),
            relational_cues: self.relational.find_iter(scanned).count(),
            negation: self.negation.is_match(scanned),
            code: self.code.is_match(scanned),
            math_symbols: self.math_symbols.find_iter(scanned).count(),
            multi_step_cues: self.multi_step.find_iter(scanned).count(),
            reasoning_cues: self.reasoning.find_iter(scanned).count(),
            constraint_cues: self.constraints.find_iter(scanned).count(),
            questions: scanned.matches('?').count(),
            conversation_depth,
        };
        let score = score(&features);
        let (level, confidence) = level_of(score);
        Classification {
            level,
            confidence,
            score,
            features,
        }
    }
}

/// Compiles a cue pattern with ASCII word classes (`\b`, `\w`, `\d`, `\s`). The cues are
/// English words and ASCII symbols anyway, and Unicode word boundaries keep the regex crate off
/// its fast DFA for any prompt with a non-ASCII character (measured: p99 0.9 ms instead of
/// microseconds, `cargo bench --bench classifier`).
fn ascii_regex(pattern: &str) -> Result<Regex, regex::Error> {
    let ascii = pattern
        .replace(r"\b", r"(?-u:\b)")
        .replace(r"\w", "[0-9A-Za-z_]")
        .replace(r"\d", "[0-9]")
        .replace(r"\s", r"[\t\n\x0B\x0C\r ]");
    Regex::new(&ascii)
}

fn score(f: &Features) -> f64 {
    let ln1p = |n: usize| (n as f64).ln_1p();
    (f.chars.max(1) as f64).ln()
        + 0.5 * ln1p(f.relational_cues)
        + if f.negation { 0.5 } else { 0.0 }
        + if f.code { 0.25 } else { 0.0 }
        + 0.1 * ln1p(f.math_symbols)
        + 0.1 * ln1p(f.multi_step_cues)
        + 0.1 * ln1p(f.reasoning_cues)
        + 0.1 * ln1p(f.constraint_cues)
        + 0.1 * ln1p(f.questions.saturating_sub(1))
        + 0.1 * ln1p(f.conversation_depth / 2)
}

fn level_of(score: f64) -> (Level, f64) {
    let index = LEVEL_BOUNDARIES
        .iter()
        .filter(|boundary| score >= **boundary)
        .count();
    let level = Level::ALL[index.min(Level::ALL.len() - 1)];
    // Distance to the nearest boundary, in units of the level width (1.0): 0 → 0.5, ≥ 0.5 → 1.
    let distance = LEVEL_BOUNDARIES
        .iter()
        .map(|boundary| (score - boundary).abs())
        .fold(f64::INFINITY, f64::min);
    let confidence = 0.5 + distance.min(0.5);
    (level, confidence)
}

fn prefix_at_char_boundary(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(text: &str, depth: usize) -> Classification {
        match Classifier::new() {
            Ok(classifier) => classifier.classify(text, depth),
            Err(error) => panic!("patterns must compile: {error}"),
        }
    }

    #[test]
    fn cue_patterns_find_what_they_are_for() {
        assert_eq!(
            classify("Ann has twice as many, 3/4 more than Tom", 0)
                .features
                .relational_cues,
            3
        );
        assert!(classify("```rust\nfn main() {}\n```", 0).features.code);
        assert!(!classify("A plain sentence about apples.", 0).features.code);
        assert_eq!(
            classify("1. read\n2. think\n3. answer", 0)
                .features
                .multi_step_cues,
            3
        );
        assert!(classify("Which is NOT true?", 0).features.negation);
    }

    #[test]
    fn levels_grow_with_difficulty() {
        let trivial = classify("hi", 0);
        let simple = classify("What is the capital of France and why?", 0);
        let expert = classify(
            &format!(
                "Design a lock-free queue. Explain why it is linearizable, prove it step by step, \
                 compare it with a mutex-based queue, and ensure it uses at most 2 CAS per operation. \
                 ```rust\nfn push(&self, v: T) {{ }}\n``` {}",
                "Consider the memory ordering of every atomic operation and its trade-offs. "
                    .repeat(20)
            ),
            6,
        );
        assert_eq!(trivial.level, Level::Trivial);
        assert!(simple.level <= Level::Moderate, "{simple:?}");
        assert_eq!(expert.level, Level::Expert, "{expert:?}");
        assert!(trivial.score < simple.score && simple.score < expert.score);
    }

    #[test]
    fn relational_cues_and_negation_raise_the_score_of_equal_length_prompts() {
        let plain = classify(
            "Tom has 3 apples and Ann has 5 apples. How many apples are there?",
            0,
        );
        let relational = classify(
            "Tom has 3 apples; Ann has twice as many. How many more than Tom?",
            0,
        );
        assert!(relational.score > plain.score);
        let negated = classify("Which of the following is NOT a prime number?", 0);
        let positive = classify("Which of the following is a real prime number?", 0);
        assert!(negated.score > positive.score);
    }

    #[test]
    fn confidence_is_lowest_on_a_boundary() {
        let (level, confidence) = level_of(LEVEL_BOUNDARIES[1]);
        assert_eq!(level, Level::Moderate);
        assert!((confidence - 0.5).abs() < 1e-9);
        let (_, deep) = level_of(LEVEL_BOUNDARIES[1] + 0.5);
        assert!((deep - 1.0).abs() < 1e-9);
    }

    #[test]
    fn huge_and_multibyte_prompts_are_bounded_and_safe() {
        let text = "é".repeat(MAX_SCANNED_BYTES);
        let classification = classify(&text, 0);
        assert_eq!(classification.features.chars, MAX_SCANNED_BYTES);
        assert_eq!(prefix_at_char_boundary(&text, 3).len(), 2);
    }
}

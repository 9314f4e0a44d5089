//! Cost of the complexity classifier per request (router issue target: p99 ≤ 50 µs).
//!
//! Classifies every prompt of the routing-eval development files (real MMLU and GSM8K prompts)
//! and a few long synthetic ones, timing each call, and prints p50/p99/max.
//!
//!     cargo bench --workspace --bench classifier
//!
//! `TOLLGATE_ROUTING_EVAL_DIR` points at the data (default `../shared/routing-eval` from the
//! workspace root).

use std::time::Instant;

use tollgate_router::classify::Classifier;

const ROUNDS: usize = 5;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::var("TOLLGATE_ROUTING_EVAL_DIR").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/routing-eval").to_owned()
    });
    let mut prompts = Vec::new();
    for file in ["mmlu_dev.jsonl", "gsm8k.jsonl"] {
        let text = std::fs::read_to_string(format!("{dir}/{file}"))?;
        for line in text.lines() {
            let row: serde_json::Value = serde_json::from_str(line)?;
            if let Some(prompt) = row["prompt"].as_str() {
                prompts.push(prompt.to_owned());
            }
        }
    }
    let real = prompts.len();
    for repeat in [10, 100, 1000] {
        prompts.push(
            "Explain why the queue is linearizable, then compare it with a lock. ".repeat(repeat),
        );
    }

    let classifier = Classifier::new()?;
    let mut nanos = Vec::with_capacity(prompts.len() * ROUNDS);
    let mut checksum = 0.0;
    for _ in 0..ROUNDS {
        for prompt in &prompts {
            let started = Instant::now();
            let classification = classifier.classify(prompt, 2);
            nanos.push(started.elapsed().as_nanos() as u64);
            checksum += classification.score;
        }
    }
    nanos.sort_unstable();
    let at = |q: f64| nanos[((nanos.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "classifier: {} prompts ({real} real, 3 long synthetic up to 69k chars) x {ROUNDS} rounds",
        prompts.len()
    )?;
    writeln!(
        out,
        "p50 {:.1} µs   p99 {:.1} µs   max {:.1} µs   (checksum {checksum:.1})",
        at(0.5),
        at(0.99),
        at(1.0)
    )?;
    Ok(())
}

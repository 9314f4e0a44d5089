//! A request whose tiktoken encoding is not built yet waits for it off the runtime.
//!
//! Its own test binary, so that no other test of the process has built o200k_base before: the
//! encodings are process-wide. Building one takes hundreds of milliseconds (seconds in a debug
//! build); in `tollgate serve` the warm-up thread builds them at start, and a request arriving
//! meanwhile used to wait on its runtime worker, stalling every other task of that worker.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tollgate_token_cache::TokenCacheConfig;
use tollgate_token_cache::service::{ContextRequest, DocumentInput, TokenCacheService};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// On a current-thread runtime (one thread for every task), a ticker keeps ticking while the
/// first o200k_base request waits for the encoding to be built.
#[tokio::test]
async fn other_tasks_run_while_a_request_waits_for_its_tokenizer_to_be_built() -> TestResult {
    let service = TokenCacheService::new(TokenCacheConfig::default(), None)?;
    let ticks = Arc::new(AtomicU64::new(0));
    let ticker = tokio::spawn({
        let ticks = ticks.clone();
        async move {
            let mut interval = tokio::time::interval(Duration::from_millis(1));
            loop {
                interval.tick().await;
                ticks.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    // Let the ticker start, then count only what it does during the request.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let before = ticks.load(Ordering::Relaxed);
    let started = Instant::now();
    let context = service
        .get_context(ContextRequest {
            collection: "kb".into(),
            documents: vec![DocumentInput::Inline {
                id: "d".into(),
                text: "Tokenized with an encoding this process has not built yet.".into(),
            }],
            tokenizer: "o200k_base".into(),
            max_tokens: None,
            separator: "\n\n".into(),
        })
        .await?;
    let during = ticks.load(Ordering::Relaxed) - before;
    let took = started.elapsed();
    ticker.abort();

    assert!(!context.token_ids.is_empty());
    assert!(
        context.tokenizer_id.starts_with("o200k_base:"),
        "{}",
        context.tokenizer_id
    );
    // Blocked, the thread would not tick at all until the request returned.
    assert!(
        during >= 10,
        "the runtime ticked {during} times in the {took:?} the request took"
    );
    Ok(())
}

//! The retry policy: how long to wait before the next attempt on the same model (exponential
//! backoff with full jitter, or the upstream's Retry-After), and the call's deadline (the
//! shorter of the caller's grpc-timeout and `retry.overall_timeout_ms`), which bounds every
//! attempt and every wait.

use std::time::{Duration, Instant};

use crate::config::RetryConfig;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts_per_model: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    max_retry_after: Duration,
    pub overall_timeout: Duration,
}

/// What to do after a retryable failure on one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    /// Wait this long, then try the same model again.
    RetryAfter(Duration),
    /// Move on to the next model of the chain.
    NextModel,
}

impl RetryPolicy {
    pub fn new(config: &RetryConfig) -> Self {
        Self {
            max_attempts_per_model: config.max_attempts_per_model.max(1),
            initial_backoff: Duration::from_millis(config.initial_backoff_ms),
            max_backoff: Duration::from_millis(
                config.max_backoff_ms.max(config.initial_backoff_ms),
            ),
            max_retry_after: Duration::from_millis(config.max_retry_after_ms),
            overall_timeout: Duration::from_millis(config.overall_timeout_ms.max(1)),
        }
    }

    /// After the `attempt`-th (1-based) failed attempt on a model: retry, after how long, or
    /// move on. A Retry-After longer than `max_retry_after`, or a wait that would not leave
    /// time for the attempt before the deadline, moves on.
    pub fn next_step(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        deadline: Instant,
    ) -> NextStep {
        if attempt >= self.max_attempts_per_model {
            return NextStep::NextModel;
        }
        let wait = match retry_after {
            Some(asked) if asked > self.max_retry_after => return NextStep::NextModel,
            Some(asked) => asked,
            None => self.backoff(attempt),
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if wait >= remaining {
            return NextStep::NextModel;
        }
        NextStep::RetryAfter(wait)
    }

    /// Full jitter: uniform in [0, min(max, initial × 2^(attempt-1))].
    fn backoff(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(20);
        let ceiling = self
            .initial_backoff
            .saturating_mul(1u32 << exponent)
            .min(self.max_backoff);
        let micros = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(fastrand::u64(0..=micros))
    }

    /// The call's deadline: now + the shorter of the caller's timeout and the configured one.
    pub fn deadline(&self, caller_timeout: Option<Duration>) -> Instant {
        let budget = caller_timeout.map_or(self.overall_timeout, |t| t.min(self.overall_timeout));
        Instant::now() + budget
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy::new(&RetryConfig {
            max_attempts_per_model: 3,
            initial_backoff_ms: 100,
            max_backoff_ms: 250,
            max_retry_after_ms: 1_000,
            overall_timeout_ms: 10_000,
        })
    }

    #[test]
    fn backoff_grows_with_jitter_up_to_the_cap() {
        let policy = policy();
        for _ in 0..200 {
            assert!(policy.backoff(1) <= Duration::from_millis(100));
            assert!(policy.backoff(3) <= Duration::from_millis(250));
        }
    }

    #[test]
    fn retry_after_is_honoured_or_moves_on() {
        let policy = policy();
        let far = Instant::now() + Duration::from_secs(60);
        assert_eq!(
            policy.next_step(1, Some(Duration::from_millis(500)), far),
            NextStep::RetryAfter(Duration::from_millis(500))
        );
        assert_eq!(
            policy.next_step(1, Some(Duration::from_secs(30)), far),
            NextStep::NextModel,
            "too long a Retry-After: another model instead"
        );
        assert_eq!(policy.next_step(3, None, far), NextStep::NextModel);
        let near = Instant::now() + Duration::from_millis(100);
        assert_eq!(
            policy.next_step(1, Some(Duration::from_millis(500)), near),
            NextStep::NextModel,
            "no waiting past the deadline"
        );
    }
}

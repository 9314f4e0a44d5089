//! A circuit breaker per provider endpoint. Closed: calls pass, consecutive endpoint failures are
//! counted. At `failure_threshold` it opens: calls are refused (reported as skipped attempts) for
//! `cool_down`. Then it is half-open: one probe call passes; its success closes the circuit, its
//! failure opens it for another cool-down. A probe that is abandoned (the caller went away)
//! frees the slot for the next one.
//!
//! State changes are published as `tollgate_provider_circuit_state{provider}` (0 closed,
//! 1 half-open, 2 open) and in ListModels.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    HalfOpen,
    Open,
}

impl CircuitState {
    pub fn gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::HalfOpen => 1.0,
            Self::Open => 2.0,
        }
    }
}

/// What ListModels shows about an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSnapshot {
    pub state: CircuitState,
    pub consecutive_failures: u32,
    pub last_error_kind: String,
    pub last_failure_at: Option<SystemTime>,
    pub last_success_at: Option<SystemTime>,
}

#[derive(Debug)]
struct Inner {
    state: CircuitState,
    consecutive_failures: u32,
    opened_at: Option<Instant>,
    probe_in_flight: bool,
    last_error_kind: String,
    last_failure_at: Option<SystemTime>,
    last_success_at: Option<SystemTime>,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    provider: String,
    threshold: u32,
    cool_down: Duration,
    inner: Arc<Mutex<Inner>>,
}

/// Permission for one call. Report its result with [`Permit::success`] or [`Permit::failure`];
/// dropped without a report (a cancelled call), a probe slot is released and nothing counted.
#[derive(Debug)]
pub struct Permit {
    breaker: Breaker,
    probe: bool,
    reported: bool,
}

impl Breaker {
    pub fn new(provider: &str, threshold: u32, cool_down: Duration) -> Self {
        let breaker = Self {
            provider: provider.to_owned(),
            threshold: threshold.max(1),
            cool_down,
            inner: Arc::new(Mutex::new(Inner {
                state: CircuitState::Closed,
                consecutive_failures: 0,
                opened_at: None,
                probe_in_flight: false,
                last_error_kind: String::new(),
                last_failure_at: None,
                last_success_at: None,
            })),
        };
        breaker.publish(CircuitState::Closed);
        breaker
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the counters inconsistent enough to
        // matter; keep serving rather than poisoning every later call.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn publish(&self, state: CircuitState) {
        metrics::gauge!("tollgate_provider_circuit_state", "provider" => self.provider.clone())
            .set(state.gauge());
    }

    /// A permit, or None while the circuit is open (or half-open with its probe out).
    pub fn try_acquire(&self) -> Option<Permit> {
        let mut inner = self.lock();
        let probe = match inner.state {
            CircuitState::Closed => false,
            CircuitState::Open => {
                let cooled = inner
                    .opened_at
                    .is_none_or(|opened| opened.elapsed() >= self.cool_down);
                if !cooled {
                    return None;
                }
                inner.state = CircuitState::HalfOpen;
                inner.probe_in_flight = true;
                self.publish(CircuitState::HalfOpen);
                tracing::info!(provider = %self.provider, "circuit half-open: probing");
                true
            }
            CircuitState::HalfOpen => {
                if inner.probe_in_flight {
                    return None;
                }
                inner.probe_in_flight = true;
                true
            }
        };
        Some(Permit {
            breaker: self.clone(),
            probe,
            reported: false,
        })
    }

    pub fn snapshot(&self) -> HealthSnapshot {
        let inner = self.lock();
        // An open circuit whose cool-down has passed admits the next call: show it half-open.
        let state = match inner.state {
            CircuitState::Open
                if inner
                    .opened_at
                    .is_some_and(|opened| opened.elapsed() >= self.cool_down) =>
            {
                CircuitState::HalfOpen
            }
            state => state,
        };
        HealthSnapshot {
            state,
            consecutive_failures: inner.consecutive_failures,
            last_error_kind: inner.last_error_kind.clone(),
            last_failure_at: inner.last_failure_at,
            last_success_at: inner.last_success_at,
        }
    }

    fn on_success(&self, probe: bool) {
        let mut inner = self.lock();
        if probe {
            inner.probe_in_flight = false;
        }
        inner.consecutive_failures = 0;
        inner.last_success_at = Some(SystemTime::now());
        if inner.state != CircuitState::Closed {
            inner.state = CircuitState::Closed;
            inner.opened_at = None;
            self.publish(CircuitState::Closed);
            tracing::info!(provider = %self.provider, "circuit closed");
        }
    }

    fn on_failure(&self, probe: bool, kind: &str) {
        let mut inner = self.lock();
        if probe {
            inner.probe_in_flight = false;
        }
        inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
        inner.last_error_kind = kind.to_owned();
        inner.last_failure_at = Some(SystemTime::now());
        let open = match inner.state {
            CircuitState::HalfOpen => true,
            CircuitState::Closed => inner.consecutive_failures >= self.threshold,
            CircuitState::Open => false,
        };
        if open {
            inner.state = CircuitState::Open;
            inner.opened_at = Some(Instant::now());
            self.publish(CircuitState::Open);
            tracing::warn!(provider = %self.provider, failures = inner.consecutive_failures, error_kind = kind, "circuit opened");
        }
    }

    fn on_abandoned(&self, probe: bool) {
        if probe {
            self.lock().probe_in_flight = false;
        }
    }
}

impl Permit {
    /// The endpoint answered (also with an error the request caused: the endpoint is healthy).
    pub fn success(mut self) {
        self.reported = true;
        self.breaker.on_success(self.probe);
    }

    pub fn failure(mut self, error_kind: &str) {
        self.reported = true;
        self.breaker.on_failure(self.probe, error_kind);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.reported {
            self.breaker.on_abandoned(self.probe);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(breaker: &Breaker, kind: &str) {
        match breaker.try_acquire() {
            Some(permit) => permit.failure(kind),
            None => panic!("a call was refused while it should have passed"),
        }
    }

    #[test]
    fn opens_after_threshold_then_probes_and_closes() {
        let breaker = Breaker::new("p", 2, Duration::from_millis(0));
        fail(&breaker, "timeout");
        assert_eq!(
            breaker.lock().state,
            CircuitState::Closed,
            "one failure is not enough"
        );
        fail(&breaker, "timeout");
        assert_eq!(breaker.lock().state, CircuitState::Open);
        // Zero cool-down: the next call is the probe, a concurrent one is refused.
        let probe = breaker.try_acquire();
        assert!(breaker.try_acquire().is_none(), "one probe at a time");
        match probe {
            Some(permit) => permit.success(),
            None => panic!("no probe after the cool-down"),
        }
        assert_eq!(breaker.snapshot().state, CircuitState::Closed);
        assert_eq!(breaker.snapshot().consecutive_failures, 0);
    }

    #[test]
    fn a_failed_probe_reopens_and_an_abandoned_one_frees_the_slot() {
        let breaker = Breaker::new("p", 1, Duration::from_secs(3600));
        fail(&breaker, "upstream_5xx");
        assert!(breaker.try_acquire().is_none(), "open during the cool-down");
        assert_eq!(breaker.snapshot().state, CircuitState::Open);

        let half_open = Breaker::new("q", 1, Duration::ZERO);
        fail(&half_open, "connect");
        fail(&half_open, "connect"); // the probe fails: open again
        assert_eq!(half_open.lock().state, CircuitState::Open);
        drop(half_open.try_acquire()); // a probe abandoned by its caller
        assert!(
            half_open.try_acquire().is_some(),
            "slot freed after abandon"
        );
    }
}

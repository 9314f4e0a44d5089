//! Resilience shared by every provider kind: a circuit breaker per provider ([`breaker`]) and the
//! retry policy with exponential backoff, jitter and Retry-After ([`retry`]).

pub mod breaker;
pub mod retry;

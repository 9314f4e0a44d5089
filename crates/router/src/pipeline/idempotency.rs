//! Request ids as idempotency keys: a retried request (same tenant, id and body) gets the first
//! answer again instead of a second model call and a second charge; the same id with another
//! body is refused; a duplicate that arrives while the first is still running is told so.
//!
//! Held in process (a bounded moka cache, one hour): a retry normally reaches the same replica
//! over the caller's HTTP/2 connection. Across replicas the cost ledger's (request_id, attempt)
//! key still prevents double counting.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use moka::sync::Cache;
use tollgate_kit::error::{ErrorCode, invalid_argument};
use tollgate_proto::v1 as pb;
use tonic::Status;

const CAPACITY: u64 = 100_000;
const TIME_TO_LIVE: Duration = Duration::from_secs(3600);

#[derive(Debug)]
struct Entry {
    body_sha256: [u8; 32],
    /// `None` while the first request runs.
    response: Mutex<Option<pb::CompleteResponse>>,
}

#[derive(Debug, Clone)]
pub struct Idempotency {
    entries: Cache<String, Arc<Entry>>,
}

/// What to do with a request.
#[derive(Debug)]
pub enum Admission {
    /// New: run it, then call [`Idempotency::complete`] or [`Idempotency::abandon`].
    Run,
    /// Already answered: send this again.
    Replay(Box<pb::CompleteResponse>),
}

impl Default for Idempotency {
    fn default() -> Self {
        Self {
            entries: Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(TIME_TO_LIVE)
                .build(),
        }
    }
}

impl Idempotency {
    fn key(tenant: &str, request_id: &str) -> String {
        format!("{tenant}\u{1f}{request_id}")
    }

    pub fn admit(
        &self,
        tenant: &str,
        request_id: &str,
        body_sha256: [u8; 32],
    ) -> Result<Admission, Status> {
        let entry = self
            .entries
            .entry(Self::key(tenant, request_id))
            .or_insert_with(|| {
                Arc::new(Entry {
                    body_sha256,
                    response: Mutex::new(None),
                })
            });
        if entry.is_fresh() {
            return Ok(Admission::Run);
        }
        let existing = entry.into_value();
        if existing.body_sha256 != body_sha256 {
            return Err(invalid_argument(
                "request_id",
                format!("{request_id:?} was already used with a different request body"),
            ));
        }
        let response = match existing.response.lock() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        match response {
            Some(response) => Ok(Admission::Replay(Box::new(response))),
            None => Err(ErrorCode::AlreadyExists.status(format!(
                "request_id: a request with id {request_id:?} is still in progress"
            ))),
        }
    }

    pub fn complete(&self, tenant: &str, request_id: &str, response: &pb::CompleteResponse) {
        if let Some(entry) = self.entries.get(&Self::key(tenant, request_id)) {
            match entry.response.lock() {
                Ok(mut guard) => *guard = Some(response.clone()),
                Err(poisoned) => *poisoned.into_inner() = Some(response.clone()),
            }
        }
    }

    /// The request failed (or was a stream, which cannot be replayed): a retry runs afresh.
    pub fn abandon(&self, tenant: &str, request_id: &str) {
        self.entries.invalidate(&Self::key(tenant, request_id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_body_replays_other_body_is_refused_in_flight_is_told() {
        let idempotency = Idempotency::default();
        assert!(matches!(
            idempotency.admit("t", "r1", [1; 32]),
            Ok(Admission::Run)
        ));
        let in_flight = idempotency.admit("t", "r1", [1; 32]);
        assert_eq!(
            in_flight.err().map(|s| s.code()),
            Some(tonic::Code::AlreadyExists)
        );
        let other = idempotency.admit("t", "r1", [2; 32]);
        assert!(other.is_err_and(
            |s| s.code() == tonic::Code::InvalidArgument && s.message().contains("request_id")
        ));
        let response = pb::CompleteResponse {
            request_id: "r1".into(),
            text: "answer".into(),
            ..Default::default()
        };
        idempotency.complete("t", "r1", &response);
        match idempotency.admit("t", "r1", [1; 32]) {
            Ok(Admission::Replay(replayed)) => assert_eq!(replayed.text, "answer"),
            other => panic!("expected a replay, got {other:?}"),
        }
        // Tenants do not share ids.
        assert!(matches!(
            idempotency.admit("u", "r1", [2; 32]),
            Ok(Admission::Run)
        ));
        idempotency.abandon("u", "r1");
        assert!(matches!(
            idempotency.admit("u", "r1", [3; 32]),
            Ok(Admission::Run)
        ));
    }
}

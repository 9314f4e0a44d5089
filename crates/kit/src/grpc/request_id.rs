//! Gives every request an id: the caller's `x-request-id` when it sent a usable one, a fresh one
//! otherwise. The id is put in the request extensions (for handlers), on the response (for the
//! caller) and in the request's tracing span (by [`super::trace_context`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use tower_layer::Layer;
use tower_service::Service;

pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Longer ids are replaced: they are logged and stored, and must stay bounded.
const MAX_ID_LEN: usize = 128;

/// The id of the current request, in its extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

#[derive(Debug, Clone, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIdService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestIdService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestIdService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let id = request
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|value| value.to_str().ok())
            .filter(|value| !value.is_empty() && value.len() <= MAX_ID_LEN)
            .map(str::to_owned)
            .unwrap_or_else(new_request_id);
        let header_opt = HeaderValue::from_str(&id).ok();
        if let Some(header) = &header_opt {
            request
                .headers_mut()
                .insert(REQUEST_ID_HEADER, header.clone());
        }
        request.extensions_mut().insert(RequestId(id));
        let future = self.inner.call(request);
        Box::pin(async move {
            let mut response = future.await?;
            if let Some(header) = header_opt {
                response.headers_mut().insert(REQUEST_ID_HEADER, header);
            }
            Ok(response)
        })
    }
}

/// 32 hex digits: process start time, process id and a counter, hashed. Unique across
/// replicas without a random number generator on the hot path.
pub fn new_request_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static SEED: std::sync::OnceLock<(u64, std::collections::hash_map::RandomState)> =
        std::sync::OnceLock::new();
    let (seed, state) = SEED.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        (
            nanos ^ u64::from(std::process::id()).rotate_left(32),
            std::collections::hash_map::RandomState::new(),
        )
    });
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut hasher = state.build_hasher();
    hasher.write_u64(*seed);
    hasher.write_u64(count);
    format!("{:016x}{:016x}", hasher.finish(), seed.wrapping_add(count))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_unique_and_bounded() {
        let ids: std::collections::HashSet<String> =
            (0..10_000).map(|_| super::new_request_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|id| id.len() == 32));
    }
}

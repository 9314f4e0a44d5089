//! In-process calls between the services of one `tollgate serve --target all` process.
//!
//! Every service still listens on its port (grpcurl and other processes use it), but a peer
//! that runs in the same process is called without the socket: the request goes through the
//! same server stack as a network call (request id, trace context, go-grpc-prometheus metrics,
//! concurrency limit, deadline, the generated server with its message-size limits, protobuf
//! encoding on both sides), minus HTTP/2 framing and loopback TCP. On the 2-core machine a
//! loopback hop costs 120-270 µs of wake-ups and syscalls, and a `Complete` makes five to seven
//! of them (BENCHMARKS.md, "Router"); in process they cost a few microseconds each.
//!
//! The pieces: [`InProcessPeers`] is the registry one process shares (the binary creates it,
//! every service gets it in its `ServiceEnv`); [`GrpcServer`](super::GrpcServer) registers its
//! stack there while it accepts calls; [`PeerChannel`] is the client transport, which looks the
//! peer up on every call and falls back to its network channel when the peer is not registered
//! (not started yet, shutting down, or in another process), so a stopped service fails the same
//! way in both modes.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tonic::body::Body;
use tonic::transport::Channel;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;
use tower_service::Service;

use super::deadline::parse_grpc_timeout;
use super::end_of_stream::EndOfStreamLookahead;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A server's whole stack (layers and routes), callable without a connection.
pub type InProcessService = BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>;

/// The services of this process that can be called in process, by the address they listen on.
/// The default is disabled: nothing registers and every call goes over the network.
#[derive(Clone, Default)]
pub struct InProcessPeers {
    registry: Option<Arc<RwLock<HashMap<SocketAddr, Registered>>>>,
}

/// A registered server: its stack and its upper bound per call (`server.request_timeout_secs`).
#[derive(Clone)]
struct Registered {
    service: InProcessService,
    request_timeout: Duration,
}

impl std::fmt::Debug for InProcessPeers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let registered: Vec<SocketAddr> = self
            .registry
            .as_ref()
            .and_then(|registry| {
                registry
                    .read()
                    .ok()
                    .map(|map| map.keys().copied().collect())
            })
            .unwrap_or_default();
        f.debug_struct("InProcessPeers")
            .field("enabled", &self.registry.is_some())
            .field("registered", &registered)
            .finish()
    }
}

impl InProcessPeers {
    /// A registry for one process's services.
    pub fn enabled() -> Self {
        Self {
            registry: Some(Arc::default()),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.registry.is_some()
    }

    /// Makes `service` reachable in process as the server listening on `addr`; no call runs
    /// longer than `request_timeout`, as on the network.
    pub fn register(&self, addr: SocketAddr, service: InProcessService, request_timeout: Duration) {
        if let Some(mut map) = self.registry.as_ref().and_then(|r| r.write().ok()) {
            let registered = Registered {
                service,
                request_timeout,
            };
            map.insert(loopback_if_unspecified(addr), registered);
        }
    }

    /// Called when the server stops accepting calls: later calls go over the network (and fail
    /// there as they would from another process).
    pub fn deregister(&self, addr: SocketAddr) {
        if let Some(mut map) = self.registry.as_ref().and_then(|r| r.write().ok()) {
            map.remove(&loopback_if_unspecified(addr));
        }
    }

    fn lookup(&self, addr: SocketAddr) -> Option<Registered> {
        let map = self.registry.as_ref()?.read().ok()?;
        map.get(&addr).cloned()
    }
}

/// A server bound to 0.0.0.0 (or ::) is the one a client of this process reaches on loopback.
pub fn loopback_if_unspecified(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        let loopback = match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        };
        SocketAddr::new(loopback, addr.port())
    } else {
        addr
    }
}

/// The address in a peer URL like `http://127.0.0.1:50053`, when it is a literal socket
/// address (a host name is never a peer of this process).
pub(crate) fn literal_addr(url: &str) -> Option<SocketAddr> {
    let authority = url.strip_prefix("http://")?.trim_end_matches('/');
    authority.parse().ok()
}

/// The client transport of every tollgate channel: the peer in process when it is registered,
/// the network channel otherwise.
#[derive(Clone)]
pub struct PeerChannel {
    remote: Channel,
    in_process: Option<(InProcessPeers, SocketAddr)>,
    /// The in-process server `poll_ready` found, used by the `call` that follows.
    ready: Option<Registered>,
}

impl std::fmt::Debug for PeerChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerChannel")
            .field(
                "in_process",
                &self.in_process.as_ref().map(|(_, addr)| addr),
            )
            .finish()
    }
}

impl PeerChannel {
    pub fn new(remote: Channel, url: &str, peers: &InProcessPeers) -> Self {
        let in_process = match literal_addr(url) {
            Some(addr) if peers.is_enabled() => {
                Some((peers.clone(), loopback_if_unspecified(addr)))
            }
            _ => None,
        };
        Self {
            remote,
            in_process,
            ready: None,
        }
    }
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

impl Service<Request<Body>> for PeerChannel {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.ready = self
            .in_process
            .as_ref()
            .and_then(|(peers, addr)| peers.lookup(*addr));
        if self.ready.is_some() {
            return Poll::Ready(Ok(()));
        }
        Service::poll_ready(&mut self.remote, cx).map_err(BoxError::from)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        match self.ready.take() {
            Some(registered) => Box::pin(call_in_process(registered, request)),
            None => {
                // The last DATA frame of a unary call then carries END_STREAM (one write fewer).
                let request = request.map(|body| Body::new(EndOfStreamLookahead::new(body)));
                let response = Service::call(&mut self.remote, request);
                Box::pin(async move { response.await.map_err(BoxError::from) })
            }
        }
    }
}

/// Runs the call in the caller's task, under the deadline the client sent (`grpc-timeout`),
/// as the network server would.
async fn call_in_process(
    registered: Registered,
    request: Request<Body>,
) -> Result<Response<Body>, BoxError> {
    let deadline = request
        .headers()
        .get("grpc-timeout")
        .and_then(|value| value.to_str().ok())
        .and_then(parse_grpc_timeout)
        .map_or(registered.request_timeout, |asked| {
            asked.min(registered.request_timeout)
        });
    match tokio::time::timeout(deadline, registered.service.oneshot(request)).await {
        Ok(result) => result,
        Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
            "deadline of {deadline:?} exceeded"
        ))
        .into_http()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_literal_loopback_style_urls_can_be_in_process() {
        assert_eq!(
            literal_addr("http://127.0.0.1:50053"),
            Some("127.0.0.1:50053".parse().unwrap())
        );
        assert_eq!(literal_addr("http://casebank:50053"), None);
        assert_eq!(literal_addr("https://127.0.0.1:50053"), None);
    }

    #[test]
    fn unspecified_addresses_are_reached_on_loopback() {
        let any: SocketAddr = "0.0.0.0:50053".parse().unwrap();
        assert_eq!(loopback_if_unspecified(any).to_string(), "127.0.0.1:50053");
    }
}

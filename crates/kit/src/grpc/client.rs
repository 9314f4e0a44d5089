//! Client channels to other tollgate services: TCP_NODELAY (without it a small request can wait
//! 40 ms for a delayed ACK), HTTP/2 keepalive, a bounded connect time, lazy connection (a peer
//! that is down at start-up does not stop this service from starting), and W3C trace context
//! written into every call.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tower_layer::Layer;

use super::trace_context::{ClientTrace, ClientTraceLayer};

/// A channel whose calls carry the caller's trace context. Generated clients accept it:
/// `RouterClient::new(channel)`.
pub type TracedChannel = ClientTrace<Channel>;

#[derive(Debug, thiserror::Error)]
#[error("peer address {url:?}: {reason}")]
pub struct ClientError {
    pub url: String,
    pub reason: String,
}

/// A channel to `url` (`http://host:port`) that connects on first use and reconnects after
/// failures. One channel serves many concurrent calls over one HTTP/2 connection: clone it,
/// never create one per request.
pub fn connect_lazy(url: &str, connect_timeout: Duration) -> Result<TracedChannel, ClientError> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| ClientError {
            url: url.to_owned(),
            reason: e.to_string(),
        })?
        .tcp_nodelay(true)
        .connect_timeout(connect_timeout)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    Ok(ClientTraceLayer.layer(endpoint.connect_lazy()))
}

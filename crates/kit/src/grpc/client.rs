//! Client channels to other tollgate services: TCP_NODELAY (without it a small request can wait
//! 40 ms for a delayed ACK), HTTP/2 keepalive, windows large enough that a token-ID response or
//! a request with inline documents never waits for a WINDOW_UPDATE round trip, frames large
//! enough to carry such a message whole, the last DATA frame of a unary call marked END_STREAM
//! ([`super::end_of_stream`]), a bounded
//! connect time, lazy connection (a peer that is down at start-up does not stop this service
//! from starting), W3C trace context written into every call, and in-process calls to peers of
//! the same process ([`super::in_process`]).

use std::time::Duration;

use tonic::transport::Endpoint;
use tower_layer::Layer;

use super::in_process::{InProcessPeers, PeerChannel};
use super::trace_context::{ClientTrace, ClientTraceLayer};

/// HTTP/2 flow-control windows of every tollgate connection (client and server). The protocol
/// default, 64 KiB, makes any larger message (8 documents of 1k tokens are ~32 KiB of text in
/// and ~20 KiB of token IDs out; 20k-token contexts are several times that) wait one round trip
/// per window. Memory is only used by data in flight.
pub const STREAM_WINDOW_BYTES: u32 = 4 << 20;
pub const CONNECTION_WINDOW_BYTES: u32 = 16 << 20;

/// The largest HTTP/2 frame every tollgate connection accepts (client and server advertise it).
/// The protocol default, 16 KiB, cuts a GetContext with 28 KiB of inline documents into two DATA
/// frames, and h2 hands each large frame to the socket in its own `writev`; the peer then reads
/// and wakes per frame. 128 KiB carries the requests and answers of 2 x 10k-token contexts in one
/// frame each, and one frame delays the other streams of a connection by ~0.1 ms at most on a
/// 10 Gbit/s link.
pub const MAX_FRAME_BYTES: u32 = 128 << 10;

/// A channel whose calls carry the caller's trace context. Generated clients accept it:
/// `RouterClient::new(channel)`.
pub type TracedChannel = ClientTrace<PeerChannel>;

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
    connect_peer(url, connect_timeout, &InProcessPeers::default())
}

/// [`connect_lazy`], but calls go in process while a server of `peers` listens on `url`'s
/// address (services of one `tollgate serve --target all`).
pub fn connect_peer(
    url: &str,
    connect_timeout: Duration,
    peers: &InProcessPeers,
) -> Result<TracedChannel, ClientError> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|e| ClientError {
            url: url.to_owned(),
            reason: e.to_string(),
        })?
        .tcp_nodelay(true)
        .connect_timeout(connect_timeout)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let channel = PeerChannel::new(endpoint.connect_lazy(), url, peers);
    Ok(ClientTraceLayer.layer(channel))
}

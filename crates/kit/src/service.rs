//! What a service's `serve` function receives from the binary besides its own config section:
//! the process-wide settings, its already-bound gRPC listener, and the shutdown handle.
//!
//! Listeners are bound by the caller so that port 0 works (tests, several instances on one host)
//! and so that `--target all` knows every real address before any service starts.

use tokio::net::TcpListener;

use crate::config::{PeersConfig, ServerConfig, StorageConfig};
use crate::grpc::InProcessPeers;
use crate::shutdown::Shutdown;

#[derive(Debug)]
pub struct ServiceEnv {
    pub server: ServerConfig,
    pub peers: PeersConfig,
    pub storage: StorageConfig,
    pub listener: TcpListener,
    pub shutdown: Shutdown,
    /// The services of this process that can be called without a socket (disabled when the
    /// process runs one service, or with `peers.in_process = false`). A service registers its
    /// server there and reaches its peers through it.
    pub in_process: InProcessPeers,
}

//! `tollgate serve`: bind every listener of the selected services first (so that port 0 works
//! and, in `--target all`, each service learns its peers' real addresses), start the metrics
//! HTTP servers and the gRPC services, and on shutdown wait for all of them and for tracked
//! background tasks.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tollgate_kit::config::{ListenConfig, PeersConfig};
use tollgate_kit::grpc::InProcessPeers;
use tollgate_kit::grpc::in_process::loopback_if_unspecified;
use tollgate_kit::metrics::Readiness;
use tollgate_kit::service::ServiceEnv;
use tollgate_kit::shutdown::Shutdown;

use crate::cli::Target;
use crate::config::Config;

/// Time for tracked background tasks (flushers) after the servers have drained.
const BACKGROUND_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{target}: cannot listen on {addr}: {source}")]
    Bind {
        target: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Metrics(#[from] tollgate_kit::metrics::MetricsError),
}

#[derive(Debug, thiserror::Error)]
#[error("{target} stopped with an error: {reason}")]
pub struct ServiceFailure {
    pub target: &'static str,
    pub reason: String,
}

/// Where one running service actually listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundService {
    pub target: Target,
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
}

/// The running services of this process.
#[derive(Debug)]
pub struct Gateway {
    pub services: Vec<BoundService>,
    shutdown: Shutdown,
    grpc_tasks: JoinSet<Result<(), ServiceFailure>>,
    /// The metrics HTTP servers outlive the gRPC drain, so that `/healthz` answers 503 (not
    /// "connection refused") and Prometheus can scrape the last figures while draining.
    metrics_tasks: JoinSet<Result<(), ServiceFailure>>,
    metrics_stop: Shutdown,
}

impl Gateway {
    pub fn service(&self, target: Target) -> Option<BoundService> {
        self.services
            .iter()
            .copied()
            .find(|service| service.target == target)
    }

    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Waits until every server has stopped (after shutdown, or when one fails: then the others
    /// are shut down too), then for tracked background tasks. Returns the first failure.
    pub async fn wait(mut self) -> Result<(), ServiceFailure> {
        let mut first_failure = None;
        loop {
            let joined = tokio::select! {
                Some(joined) = self.grpc_tasks.join_next() => joined,
                // Before `metrics_stop`, a metrics server only stops on error: a failure too.
                Some(joined) = self.metrics_tasks.join_next() => joined,
                else => break,
            };
            let result = joined
                .map_err(|e| ServiceFailure {
                    target: "runtime",
                    reason: e.to_string(),
                })
                .and_then(|r| r);
            if let Err(failure) = result {
                tracing::error!(%failure, "service failed; shutting down the others");
                self.shutdown.trigger();
                first_failure.get_or_insert(failure);
            }
            if self.grpc_tasks.is_empty() {
                self.metrics_stop.trigger();
            }
        }
        if !self.shutdown.wait_for_tasks(BACKGROUND_FLUSH_TIMEOUT).await {
            tracing::warn!(timeout = ?BACKGROUND_FLUSH_TIMEOUT, "background tasks did not finish in time");
        }
        first_failure.map_or(Ok(()), Err)
    }
}

/// Binds and starts the services of `target`. Returns once every listener is bound, so callers
/// can connect at once.
pub async fn start(
    config: Config,
    target: Target,
    shutdown: Shutdown,
) -> Result<Gateway, StartError> {
    let handle = tollgate_kit::metrics::install(&config.telemetry.track)?;
    let readiness = Readiness::default();

    let mut bound = Vec::new();
    for service in target.services() {
        let listen = listen_config(&config, service);
        let grpc = bind(service, listen.grpc).await?;
        let metrics = bind(service, listen.metrics).await?;
        bound.push((service, grpc, metrics));
    }
    let mut services = Vec::new();
    for (service, grpc, metrics) in &bound {
        services.push(BoundService {
            target: *service,
            grpc: local_addr(*service, grpc)?,
            metrics: local_addr(*service, metrics)?,
        });
    }
    let peers = peers_for(&config.peers, &services);
    let in_process = if config.peers.in_process && services.len() > 1 {
        InProcessPeers::enabled()
    } else {
        InProcessPeers::default()
    };

    let mut grpc_tasks = JoinSet::new();
    let mut metrics_tasks = JoinSet::new();
    let metrics_stop = Shutdown::new();
    for (service, grpc, metrics) in bound {
        let env = ServiceEnv {
            server: config.server.clone(),
            peers: peers.clone(),
            storage: config.storage.clone(),
            listener: grpc,
            shutdown: shutdown.clone(),
            in_process: in_process.clone(),
        };
        grpc_tasks.spawn(run_service(service, config.clone(), env));
        let (handle, readiness, metrics_stop) =
            (handle.clone(), readiness.clone(), metrics_stop.clone());
        metrics_tasks.spawn(async move {
            tollgate_kit::metrics::serve_http(metrics, handle, readiness, metrics_stop)
                .await
                .map_err(|e| ServiceFailure {
                    target: service.name(),
                    reason: format!("metrics server: {e}"),
                })
        });
    }
    readiness.set_ready(true);
    let watcher = shutdown.clone();
    tokio::spawn(async move {
        watcher.triggered().await;
        readiness.set_ready(false);
    });
    Ok(Gateway {
        services,
        shutdown,
        grpc_tasks,
        metrics_tasks,
        metrics_stop,
    })
}

async fn run_service(
    target: Target,
    config: Config,
    env: ServiceEnv,
) -> Result<(), ServiceFailure> {
    let failure = |reason: String| ServiceFailure {
        target: target.name(),
        reason,
    };
    match target {
        Target::Router => tollgate_router::serve(config.router, env)
            .await
            .map_err(|e| failure(e.to_string())),
        Target::TokenCache => tollgate_token_cache::serve(config.token_cache, env)
            .await
            .map_err(|e| failure(e.to_string())),
        Target::Casebank => tollgate_casebank::serve(config.casebank, env)
            .await
            .map_err(|e| failure(e.to_string())),
        Target::CostTracker => tollgate_cost_tracker::serve(config.cost_tracker, env)
            .await
            .map_err(|e| failure(e.to_string())),
        Target::ProviderAdapter => tollgate_provider_adapter::serve(config.provider_adapter, env)
            .await
            .map_err(|e| failure(e.to_string())),
        Target::All => Err(failure("`all` is not a single service".into())),
    }
}

fn listen_config(config: &Config, target: Target) -> ListenConfig {
    match target {
        Target::Router | Target::All => config.router.listen.clone(),
        Target::TokenCache => config.token_cache.listen.clone(),
        Target::Casebank => config.casebank.listen.clone(),
        Target::CostTracker => config.cost_tracker.listen.clone(),
        Target::ProviderAdapter => config.provider_adapter.listen.clone(),
    }
}

/// Peers started in this process are reached at their real addresses; the others where the
/// configuration says.
fn peers_for(configured: &PeersConfig, local: &[BoundService]) -> PeersConfig {
    let mut peers = configured.clone();
    for service in local {
        let url = format!("http://{}", loopback_if_unspecified(service.grpc));
        match service.target {
            Target::Router => peers.router = url,
            Target::TokenCache => peers.token_cache = url,
            Target::Casebank => peers.casebank = url,
            Target::CostTracker => peers.cost_tracker = url,
            Target::ProviderAdapter => peers.provider_adapter = url,
            Target::All => {}
        }
    }
    peers
}

async fn bind(target: Target, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            target: target.name(),
            addr,
            source,
        })
}

fn local_addr(target: Target, listener: &TcpListener) -> Result<SocketAddr, StartError> {
    listener.local_addr().map_err(|source| StartError::Bind {
        target: target.name(),
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_peers_get_their_real_addresses() {
        let local = [BoundService {
            target: Target::Casebank,
            grpc: SocketAddr::from(([0, 0, 0, 0], 41234)),
            metrics: SocketAddr::from(([0, 0, 0, 0], 41235)),
        }];
        let peers = peers_for(&PeersConfig::default(), &local);
        assert_eq!(peers.casebank, "http://127.0.0.1:41234");
        assert_eq!(
            peers.router,
            PeersConfig::default().router,
            "remote peers keep their configured address"
        );
    }
}

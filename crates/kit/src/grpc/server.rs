//! The gRPC server every service runs. One place decides what every server has: grpc.health.v1,
//! reflection v1 and v1alpha (grpcurl 1.8 speaks only v1alpha), request ids, trace context,
//! go-grpc-prometheus metrics, a concurrency limit, timeouts, HTTP/2 keepalive, TCP_NODELAY and
//! graceful shutdown.
//!
//! With [`GrpcServer::in_process`], the same stack is also callable by the other services of
//! this process without a socket ([`super::in_process`]).
//!
//! Shutdown, in order: health turns NOT_SERVING; after `shutdown_delay` (load balancers notice)
//! the listener closes (and in-process callers are sent to the network, which now refuses);
//! in-flight calls get `grace_period` to finish; then `serve` returns.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::limit::ConcurrencyLimitLayer;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};

use super::client::{CONNECTION_WINDOW_BYTES, MAX_FRAME_BYTES, STREAM_WINDOW_BYTES};
use super::in_process::{BoxError, InProcessPeers};

use super::metrics_layer::GrpcMetricsLayer;
use super::request_id::RequestIdLayer;
use super::trace_context::ServerTraceLayer;
use crate::config::ServerConfig;
use crate::shutdown::Shutdown;

const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
const REFLECTION_V1: &str = "grpc.reflection.v1.ServerReflection";
const REFLECTION_V1ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("reflection descriptors for {server}: {reason}")]
    Reflection { server: String, reason: String },
    #[error("gRPC server {server} failed: {reason}")]
    Transport { server: String, reason: String },
}

/// A gRPC server being assembled: bound listener, shared config, and the services added so far.
pub struct GrpcServer {
    name: String,
    listener: TcpListener,
    config: ServerConfig,
    routes: RoutesBuilder,
    service_names: Vec<&'static str>,
    descriptor_sets: Vec<&'static [u8]>,
    health_reporter: HealthReporter,
    in_process: InProcessPeers,
}

impl std::fmt::Debug for GrpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcServer")
            .field("name", &self.name)
            .field("services", &self.service_names)
            .finish()
    }
}

impl GrpcServer {
    /// `name` labels logs ("router"); `descriptor_set` is the encoded FileDescriptorSet that
    /// describes the services added later, for reflection.
    pub fn new(
        name: impl Into<String>,
        listener: TcpListener,
        config: &ServerConfig,
        descriptor_set: &'static [u8],
    ) -> Self {
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        let mut routes = RoutesBuilder::default();
        routes.add_service(health_service);
        Self {
            name: name.into(),
            listener,
            config: config.clone(),
            routes,
            service_names: Vec::new(),
            descriptor_sets: vec![descriptor_set, tonic_health::pb::FILE_DESCRIPTOR_SET],
            health_reporter,
            in_process: InProcessPeers::default(),
        }
    }

    /// Also serves the services of this process through `peers`, while the listener accepts.
    pub fn in_process(mut self, peers: &InProcessPeers) -> Self {
        self.in_process = peers.clone();
        self
    }

    /// Adds a generated service (configured by the caller, e.g. with its message size limits).
    /// It reports SERVING from the moment `serve` starts until shutdown.
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: tower_service::Service<http::Request<tonic::body::Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.service_names.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The health reporter, for services that change their status at run time (a dependency lost).
    pub fn health_reporter(&self) -> HealthReporter {
        self.health_reporter.clone()
    }

    /// Serves until `shutdown` triggers, then drains as described in the module header.
    pub async fn serve(self, shutdown: Shutdown) -> Result<(), ServeError> {
        let GrpcServer {
            name,
            listener,
            config,
            mut routes,
            service_names,
            descriptor_sets,
            health_reporter,
            in_process,
        } = self;
        let addr = listener.local_addr().map_err(|e| ServeError::Transport {
            server: name.clone(),
            reason: e.to_string(),
        })?;

        add_reflection(&mut routes, &service_names, &descriptor_sets).map_err(|reason| {
            ServeError::Reflection {
                server: name.clone(),
                reason,
            }
        })?;

        let layers = ServiceBuilder::new()
            .layer(RequestIdLayer)
            .layer(ServerTraceLayer)
            .layer(GrpcMetricsLayer)
            .layer(ConcurrencyLimitLayer::new(config.concurrency_limit.max(1)))
            .into_inner();
        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(Duration::from_secs(60)));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let routes = routes.routes();
        if in_process.is_enabled() {
            let stack = ServiceBuilder::new()
                .layer(layers.clone())
                .service(routes.clone());
            type InRequest = http::Request<tonic::body::Body>;
            let stack = ServiceExt::<InRequest>::map_response(stack, |response| {
                response.map(tonic::body::Body::new)
            });
            let stack = ServiceExt::<InRequest>::map_err(stack, |never: Infallible| -> BoxError {
                match never {}
            });
            in_process.register(
                addr,
                BoxCloneSyncService::new(stack),
                config.request_timeout(),
            );
        }
        let server = Server::builder()
            .timeout(config.request_timeout())
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .max_frame_size(MAX_FRAME_BYTES)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .layer(layers)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop_rx.await;
            });
        tokio::pin!(server);

        set_status(&health_reporter, &service_names, ServingStatus::Serving).await;
        tracing::info!(server = %name, %addr, services = ?service_names, "grpc server listening");

        let transport_error = |e: tonic::transport::Error| ServeError::Transport {
            server: name.clone(),
            reason: e.to_string(),
        };
        tokio::select! {
            result = &mut server => {
                in_process.deregister(addr);
                return result.map_err(transport_error);
            }
            () = shutdown.triggered() => {}
        }

        set_status(&health_reporter, &service_names, ServingStatus::NotServing).await;
        let delay = config.shutdown_delay();
        if !delay.is_zero() {
            tracing::info!(server = %name, ?delay, "health is NOT_SERVING; still accepting during the shutdown delay");
            tokio::select! {
                result = &mut server => {
                    in_process.deregister(addr);
                    return result.map_err(transport_error);
                }
                () = tokio::time::sleep(delay) => {}
            }
        }
        in_process.deregister(addr);
        let _ = stop_tx.send(());
        match tokio::time::timeout(config.grace_period(), &mut server).await {
            Ok(result) => {
                tracing::info!(server = %name, "grpc server drained");
                result.map_err(transport_error)
            }
            Err(_) => {
                tracing::warn!(server = %name, grace_period = ?config.grace_period(), "grace period over; closing the remaining connections");
                Ok(())
            }
        }
    }
}

fn add_reflection(
    routes: &mut RoutesBuilder,
    service_names: &[&'static str],
    descriptor_sets: &[&'static [u8]],
) -> Result<(), String> {
    // Advertise exactly what this server serves, not every service in the shared descriptor set.
    let advertised =
        service_names
            .iter()
            .copied()
            .chain([HEALTH_SERVICE, REFLECTION_V1, REFLECTION_V1ALPHA]);
    let mut v1 = tonic_reflection::server::Builder::configure();
    let mut v1alpha = tonic_reflection::server::Builder::configure();
    for set in descriptor_sets {
        v1 = v1.register_encoded_file_descriptor_set(set);
        v1alpha = v1alpha.register_encoded_file_descriptor_set(set);
    }
    for name in advertised {
        v1 = v1.with_service_name(name);
        v1alpha = v1alpha.with_service_name(name);
    }
    routes.add_service(v1.build_v1().map_err(|e| e.to_string())?);
    routes.add_service(v1alpha.build_v1alpha().map_err(|e| e.to_string())?);
    Ok(())
}

async fn set_status(
    reporter: &HealthReporter,
    service_names: &[&'static str],
    status: ServingStatus,
) {
    // "" is the server as a whole: what Kubernetes' gRPC probe asks by default.
    for name in service_names.iter().copied().chain([""]) {
        reporter.set_service_status(name, status).await;
    }
}

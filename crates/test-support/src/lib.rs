//! Dev-only helpers for tests that need a running gateway: start any selection of services on
//! 127.0.0.1:0 in this process, connect real gRPC clients to them, ask health and reflection,
//! and find the tools (grpcurl) that `make test` installs.
//!
//! - [`postgres`]: a fresh database per test on `DATABASE_URL`;
//! - [`redis`]: `REDIS_URL` and a key prefix per test;
//! - [`fake_upstream`]: fake LLM provider APIs (OpenAI, Anthropic, Gemini wire formats).
//!
//! Used by the system tests in `tests/` and by service crates' own tests; never by production code.

pub mod fake_upstream;
pub mod postgres;
pub mod redis;

use std::time::Duration;

use tokio_stream::StreamExt;
use tollgate::cli::Target;
use tollgate::config::Config;
use tollgate::serve::{BoundService, Gateway};
use tollgate_kit::grpc::client::TracedChannel;
use tollgate_kit::shutdown::Shutdown;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

pub use tollgate::cli::Target as ServiceTarget;

/// A gateway running in this process on ephemeral loopback ports. Shut it down with
/// [`TestGateway::stop`]; dropping it triggers shutdown without waiting.
#[derive(Debug)]
pub struct TestGateway {
    pub services: Vec<BoundService>,
    shutdown: Shutdown,
    gateway_opt: Option<Gateway>,
    /// The temporary data directory this gateway made, removed by [`TestGateway::stop`].
    data_dir_opt: Option<std::path::PathBuf>,
}

pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

impl TestGateway {
    /// Starts `target` with the default (embedded) configuration on ephemeral ports.
    pub async fn start(target: Target) -> TestResult<Self> {
        Self::start_with(Config::default(), target).await
    }

    /// Starts `target` with `config`, its listeners moved to ephemeral ports and, when it
    /// uses the default `./data`, its embedded stores moved to a fresh temporary directory
    /// (tests must never write into the source tree or share files).
    pub async fn start_with(mut config: Config, target: Target) -> TestResult<Self> {
        let mut data_dir_opt = None;
        if config.storage.data_dir == tollgate_kit::config::StorageConfig::default().data_dir {
            let dir = temp_dir("gateway")?;
            config.storage.data_dir = dir.clone();
            data_dir_opt = Some(dir);
        }
        let shutdown = Shutdown::new();
        let gateway =
            tollgate::serve::start(config.with_ephemeral_ports(), target, shutdown.clone()).await?;
        Ok(Self {
            services: gateway.services.clone(),
            shutdown,
            gateway_opt: Some(gateway),
            data_dir_opt,
        })
    }

    pub fn service(&self, target: Target) -> TestResult<BoundService> {
        self.services
            .iter()
            .copied()
            .find(|service| service.target == target)
            .ok_or_else(|| format!("{} is not running in this gateway", target.name()).into())
    }

    /// A client channel to `target`'s gRPC port.
    pub fn channel(&self, target: Target) -> TestResult<TracedChannel> {
        let service = self.service(target)?;
        Ok(tollgate_kit::grpc::connect_lazy(
            &format!("http://{}", service.grpc),
            Duration::from_secs(5),
        )?)
    }

    /// Triggers shutdown and waits for every server to drain.
    pub async fn stop(mut self) -> TestResult {
        self.shutdown.trigger();
        if let Some(gateway) = self.gateway_opt.take() {
            tokio::time::timeout(Duration::from_secs(30), gateway.wait()).await??;
        }
        if let Some(dir) = self.data_dir_opt.take() {
            std::fs::remove_dir_all(dir)?;
        }
        Ok(())
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// A new empty directory under the system temp dir, unique to this process and call.
pub fn temp_dir(label: &str) -> TestResult<std::path::PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "tollgate-test-{label}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The health status of `service` ("" for the server as a whole).
pub async fn health_status(channel: TracedChannel, service: &str) -> TestResult<ServingStatus> {
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?;
    Ok(ServingStatus::try_from(response.into_inner().status)?)
}

/// The service names a server lists through reflection v1.
pub async fn reflected_services(channel: TracedChannel) -> TestResult<Vec<String>> {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::once(request))
        .await?
        .into_inner();
    let mut names = Vec::new();
    while let Some(response) = responses.next().await {
        match response?.message_response {
            Some(MessageResponse::ListServicesResponse(list)) => {
                names.extend(list.service.into_iter().map(|service| service.name));
            }
            Some(MessageResponse::ErrorResponse(error)) => return Err(error.error_message.into()),
            _ => {}
        }
    }
    Ok(names)
}

/// GETs `http://{addr}{path}` with a plain HTTP/1.1 request and returns (status, body): enough
/// for `/metrics` and `/healthz`, without an HTTP client dependency.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> TestResult<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or("no HTTP status line")?;
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The grpcurl binary: `$GRPCURL`, else `.tools/venv/bin/grpcurl` at the workspace root (both set
/// up by `make test` via scripts/tools.sh), else `grpcurl` on PATH.
pub fn grpcurl_path() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("GRPCURL") {
        return path.into();
    }
    let local =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/venv/bin/grpcurl");
    if local.exists() {
        local
    } else {
        "grpcurl".into()
    }
}

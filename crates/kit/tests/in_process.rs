//! In-process calls (`tollgate_kit::grpc::in_process`): a registered server answers without a
//! socket, the caller's deadline holds, and once the server leaves the registry the call goes
//! to the network again. A real `GrpcServer` is used for the end-to-end case.

use std::net::SocketAddr;
use std::time::Duration;

use tollgate_kit::config::ServerConfig;
use tollgate_kit::grpc::in_process::InProcessService;
use tollgate_kit::grpc::{GrpcServer, InProcessPeers, connect_peer};
use tollgate_kit::shutdown::Shutdown;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A port nothing listens on: a call that reaches the network fails there.
async fn closed_port() -> Result<SocketAddr, std::io::Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    listener.local_addr()
}

/// A Health client for the peer at `addr`: in process while it is registered in `peers`.
fn health_client(
    addr: SocketAddr,
    connect_timeout: Duration,
    peers: &InProcessPeers,
) -> Result<HealthClient<tollgate_kit::grpc::client::TracedChannel>, Box<dyn std::error::Error>> {
    let channel = connect_peer(&format!("http://{addr}"), connect_timeout, peers)?;
    Ok(HealthClient::new(channel))
}

/// tonic-health's Health service (SERVING for ""), answering after `delay`.
fn slow_health(delay: Duration) -> InProcessService {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let service = tower::service_fn(move |request: http::Request<tonic::body::Body>| {
        let health = health.clone();
        async move {
            tokio::time::sleep(delay).await;
            let response = health
                .oneshot(request)
                .await
                .map_err(|never| match never {})?;
            Ok::<_, tollgate_kit::grpc::in_process::BoxError>(response)
        }
    });
    BoxCloneSyncService::new(service)
}

#[tokio::test]
async fn a_registered_peer_answers_without_a_socket_until_it_leaves() -> TestResult {
    let addr = closed_port().await?;
    let peers = InProcessPeers::enabled();
    peers.register(addr, slow_health(Duration::ZERO), Duration::from_secs(5));
    let mut client = health_client(addr, Duration::from_millis(200), &peers)?;
    let status = client
        .check(HealthCheckRequest::default())
        .await?
        .into_inner();
    assert_eq!(status.status, ServingStatus::Serving as i32);

    peers.deregister(addr);
    let refused = client.check(HealthCheckRequest::default()).await;
    assert_eq!(
        refused.map_err(|status| status.code()).err(),
        Some(tonic::Code::Unavailable),
        "after deregistration the call goes to the (closed) port"
    );
    Ok(())
}

/// The code of a Check on a Health registered at a closed port that answers after 3 s, with
/// `request_timeout` as the server's limit and `caller_timeout_opt` as the caller's deadline.
async fn slow_check_code(
    peers: &InProcessPeers,
    request_timeout: Duration,
    caller_timeout_opt: Option<Duration>,
) -> Result<Option<tonic::Code>, Box<dyn std::error::Error>> {
    let addr = closed_port().await?;
    peers.register(addr, slow_health(Duration::from_secs(3)), request_timeout);
    let mut client = health_client(addr, Duration::from_millis(200), peers)?;
    let mut call = tonic::Request::new(HealthCheckRequest::default());
    if let Some(timeout) = caller_timeout_opt {
        call.set_timeout(timeout);
    }
    let result = client.check(call).await;
    Ok(result.map_err(|status| status.code()).err())
}

#[tokio::test]
async fn the_callers_deadline_and_the_servers_limit_hold_in_process() -> TestResult {
    let peers = InProcessPeers::enabled();
    let started = std::time::Instant::now();
    let code = slow_check_code(
        &peers,
        Duration::from_secs(30),
        Some(Duration::from_millis(50)),
    )
    .await?;
    assert_eq!(code, Some(tonic::Code::DeadlineExceeded));
    assert!(started.elapsed() < Duration::from_secs(1));

    // No deadline from the caller: the server's own request timeout bounds the call.
    let code = slow_check_code(&peers, Duration::from_millis(50), None).await?;
    assert_eq!(code, Some(tonic::Code::DeadlineExceeded));
    Ok(())
}

#[tokio::test]
async fn a_grpc_server_registers_while_it_serves_and_leaves_at_shutdown() -> TestResult {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let peers = InProcessPeers::enabled();
    let shutdown = Shutdown::new();
    let server = GrpcServer::new(
        "test",
        listener,
        &ServerConfig::default(),
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    )
    .in_process(&peers);
    let serving = tokio::spawn(server.serve(shutdown.clone()));
    let mut client = health_client(addr, Duration::from_millis(500), &peers)?;
    let mut registered = false;
    for _ in 0..100 {
        if format!("{peers:?}").contains(&addr.to_string()) {
            registered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(registered, "the server registered itself: {peers:?}");
    let status = client
        .check(HealthCheckRequest::default())
        .await?
        .into_inner();
    assert_eq!(status.status, ServingStatus::Serving as i32);

    shutdown.trigger();
    serving.await??;
    assert!(
        !format!("{peers:?}").contains(&addr.to_string()),
        "a stopped server is no longer reachable in process: {peers:?}"
    );
    Ok(())
}

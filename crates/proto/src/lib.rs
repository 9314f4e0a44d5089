//! tollgate-proto: the gRPC contracts of every tollgate service (package `tollgate.v1`), generated
//! at build time from `proto/tollgate/v1`, and the encoded descriptor set that server reflection
//! serves.
//!
//! Every service crate and every client depends on this crate; it depends on nothing of ours.
//! Services meet only through these types: a service crate never depends on another one.

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

pub mod codec;
mod token_ids;

/// Package `tollgate.v1`: messages, enums, a client and a server module per service.
pub mod v1 {
    tonic::include_proto!("tollgate.v1");
}

/// The encoded `FileDescriptorSet` of every tollgate proto and its imports, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tollgate_descriptor.bin"));

/// Fully qualified gRPC service names, as clients and health checks spell them.
pub mod service_names {
    pub const ROUTER: &str = "tollgate.v1.Router";
    pub const PROVIDER_ADAPTER: &str = "tollgate.v1.ProviderAdapter";
    pub const TOKEN_CACHE: &str = "tollgate.v1.TokenCache";
    pub const CASE_BANK: &str = "tollgate.v1.CaseBank";
    pub const COST_TRACKER: &str = "tollgate.v1.CostTracker";
}

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn descriptor_set_holds_every_service_and_its_imports() {
        let set =
            prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).unwrap_or_default();
        let services: Vec<String> = set
            .file
            .iter()
            .flat_map(|file| {
                let package = file.package().to_owned();
                file.service
                    .iter()
                    .map(move |service| format!("{package}.{}", service.name()))
            })
            .collect();
        for name in [
            super::service_names::ROUTER,
            super::service_names::PROVIDER_ADAPTER,
            super::service_names::TOKEN_CACHE,
            super::service_names::CASE_BANK,
            super::service_names::COST_TRACKER,
        ] {
            assert!(
                services.iter().any(|s| s == name),
                "{name} missing from {services:?}"
            );
        }
        assert!(
            set.file
                .iter()
                .any(|f| f.name() == "google/protobuf/timestamp.proto"),
            "imports must be included for reflection clients"
        );
    }
}

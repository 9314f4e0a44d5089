//! proto <-> domain for `tollgate.v1.Router`.
//!
//! Placeholder until the router issue: the generated trait's default methods answer every RPC
//! with UNIMPLEMENTED, so the service is already reachable, healthy and listed by reflection.

use tollgate_proto::v1::router_server::Router;

#[derive(Debug, Default)]
pub struct RouterApi;

impl Router for RouterApi {}

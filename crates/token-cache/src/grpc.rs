//! proto <-> domain for `tollgate.v1.TokenCache`.
//!
//! Placeholder until the token-cache issue: the generated trait's default methods answer every RPC
//! with UNIMPLEMENTED, so the service is already reachable, healthy and listed by reflection.

use tollgate_proto::v1::token_cache_server::TokenCache;

#[derive(Debug, Default)]
pub struct TokenCacheApi;

impl TokenCache for TokenCacheApi {}

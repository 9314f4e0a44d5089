//! proto <-> domain for `tollgate.v1.CaseBank`.
//!
//! Placeholder until the casebank issue: the generated trait's default methods answer every RPC
//! with UNIMPLEMENTED, so the service is already reachable, healthy and listed by reflection.

use tollgate_proto::v1::case_bank_server::CaseBank;

#[derive(Debug, Default)]
pub struct CaseBankApi;

impl CaseBank for CaseBankApi {}

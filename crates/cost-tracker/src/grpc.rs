//! proto <-> domain for `tollgate.v1.CostTracker`.
//!
//! Placeholder until the cost-tracker issue: the generated trait's default methods answer every RPC
//! with UNIMPLEMENTED, so the service is already reachable, healthy and listed by reflection.

use tollgate_proto::v1::cost_tracker_server::CostTracker;

#[derive(Debug, Default)]
pub struct CostTrackerApi;

impl CostTracker for CostTrackerApi {}

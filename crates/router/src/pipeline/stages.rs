//! Where a request's time goes: `tollgate_router_stage_seconds{stage}`, one histogram per
//! pipeline stage, so that an operator (and the pipeline benchmark) can see which dependency a
//! slow request waited on without a trace collector.

use std::time::Instant;

/// A timed part of `Complete`. `Route` covers classification, the case bank and the decision;
/// `Casebank` is the case-bank part of it alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The whole `Complete` handler: authentication, request checks, the pipeline.
    Handler,
    Route,
    Casebank,
    Reserve,
    Examples,
    /// Context tokens and the provider call(s), the cascade included.
    Generate,
    Record,
    Total,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Handler => "handler",
            Stage::Route => "route",
            Stage::Casebank => "casebank",
            Stage::Reserve => "reserve",
            Stage::Examples => "examples",
            Stage::Generate => "generate",
            Stage::Record => "record",
            Stage::Total => "total",
        }
    }

    /// Records the time since `started` for this stage.
    pub fn observe(self, started: Instant) {
        metrics::histogram!("tollgate_router_stage_seconds", "stage" => self.as_str())
            .record(started.elapsed().as_secs_f64());
    }
}

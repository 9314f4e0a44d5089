//! Every Postgres-backed service on one database (how compose and the Helm chart deploy them):
//! each keeps its own migration history, so each starts whatever the others did before, and
//! again on restart.

use std::time::Duration;

use tollgate_casebank::store::postgres::{PgCaseStore, PgOptions};
use tollgate_cost_tracker::store::postgres::PgUsageStore;
use tollgate_router::tenants::PgTenantStore;
use tollgate_test_support::TestResult;
use tollgate_test_support::postgres::TestDatabase;

#[tokio::test]
async fn casebank_cost_tracker_and_router_share_one_database() -> TestResult {
    let database = TestDatabase::create().await?;
    for _restart in 0..2 {
        PgCaseStore::connect(&database.url, &PgOptions::default()).await?;
        PgUsageStore::connect(&database.url, 4, Duration::from_secs(5)).await?;
        PgTenantStore::connect(&database.url).await?;
    }
    database.drop_database().await
}

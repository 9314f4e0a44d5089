-- Daily rollups next to the hourly ones (see the Postgres migration of the same name).
CREATE TABLE usage_daily (
    day                 INTEGER NOT NULL,
    tenant              TEXT    NOT NULL,
    provider            TEXT    NOT NULL,
    model               TEXT    NOT NULL,
    agent               TEXT    NOT NULL,
    tier                INTEGER NOT NULL,
    cost_picos          INTEGER NOT NULL,
    requests            INTEGER NOT NULL,
    input_tokens        INTEGER NOT NULL,
    output_tokens       INTEGER NOT NULL,
    cached_input_tokens INTEGER NOT NULL,
    estimated_requests  INTEGER NOT NULL,
    PRIMARY KEY (day, tenant, provider, model, agent, tier)
);

-- Daily rollups next to the hourly ones, maintained in the same transactions: a monthly report
-- reads about 31 rows per group instead of about 744, and only the partial days at the edges
-- of a range come from the hourly table.
CREATE TABLE usage_daily (
    day                 timestamptz NOT NULL,
    tenant              text        NOT NULL,
    provider            text        NOT NULL,
    model               text        NOT NULL,
    agent               text        NOT NULL,
    tier                smallint    NOT NULL,
    cost_usd            numeric     NOT NULL,
    requests            bigint      NOT NULL,
    input_tokens        bigint      NOT NULL,
    output_tokens       bigint      NOT NULL,
    cached_input_tokens bigint      NOT NULL,
    estimated_requests  bigint      NOT NULL,
    PRIMARY KEY (day, tenant, provider, model, agent, tier)
);

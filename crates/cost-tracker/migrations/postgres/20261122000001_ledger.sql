-- The usage ledger: one row per attempt of a request; (request_id, attempt) is the idempotency key.
-- Money is NUMERIC: exact, and sums stay exact.
CREATE TABLE usage_ledger (
    request_id               text        NOT NULL,
    attempt                  integer     NOT NULL,
    ts                       timestamptz NOT NULL,
    tenant                   text        NOT NULL,
    user_id                  text        NOT NULL,
    agent                    text        NOT NULL,
    provider                 text        NOT NULL,
    model                    text        NOT NULL,
    tier                     smallint    NOT NULL,
    input_tokens             bigint      NOT NULL,
    output_tokens            bigint      NOT NULL,
    cached_input_tokens      bigint      NOT NULL,
    cache_write_input_tokens bigint      NOT NULL,
    estimated                boolean     NOT NULL,
    cost_usd                 numeric     NOT NULL,
    latency_micros           bigint      NOT NULL,
    token_cache_hit_tokens   bigint      NOT NULL,
    routing_reason           text        NOT NULL,
    query_sha256             text        NOT NULL,
    status                   smallint    NOT NULL,
    recorded_at              timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (request_id, attempt)
);
-- Exports read a time range in order.
CREATE INDEX usage_ledger_ts ON usage_ledger (ts);

-- Hourly rollups, maintained in the same transaction as the ledger rows they sum. Spend reports
-- read only these (a month is at most 744 hours times the distinct groups).
CREATE TABLE usage_hourly (
    hour                timestamptz NOT NULL,
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
    PRIMARY KEY (hour, tenant, provider, model, agent, tier)
);

-- Budgets: empty scope fields match anything. period: 1 = UTC day, 2 = UTC month.
CREATE TABLE budgets (
    id             bigserial PRIMARY KEY,
    tenant         text     NOT NULL,
    provider       text     NOT NULL,
    model          text     NOT NULL,
    period         smallint NOT NULL,
    soft_limit_usd numeric,
    hard_limit_usd numeric,
    UNIQUE (tenant, provider, model, period)
);

-- Settled spend per budget and period. Reservations lock this row (FOR UPDATE) while they
-- check the hard limit, so concurrent reservations against one budget are serialised.
CREATE TABLE budget_periods (
    budget_id    bigint      NOT NULL REFERENCES budgets (id) ON DELETE CASCADE,
    period_start timestamptz NOT NULL,
    spent_usd    numeric     NOT NULL DEFAULT 0,
    PRIMARY KEY (budget_id, period_start)
);

CREATE TABLE reservations (
    reservation_id text        PRIMARY KEY,
    tenant         text        NOT NULL,
    provider       text        NOT NULL,
    model          text        NOT NULL,
    estimated_usd  numeric     NOT NULL,
    created_at     timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL,
    settled_at     timestamptz,
    actual_usd     numeric
);

-- What a reservation holds against each budget it matched. A hold counts until it expires or
-- its reservation is settled (then it is deleted and its actual cost added to spent_usd).
CREATE TABLE reservation_holds (
    reservation_id text        NOT NULL REFERENCES reservations (reservation_id) ON DELETE CASCADE,
    budget_id      bigint      NOT NULL REFERENCES budgets (id) ON DELETE CASCADE,
    period_start   timestamptz NOT NULL,
    amount_usd     numeric     NOT NULL,
    expires_at     timestamptz NOT NULL,
    PRIMARY KEY (reservation_id, budget_id)
);
CREATE INDEX reservation_holds_budget ON reservation_holds (budget_id, period_start, expires_at);

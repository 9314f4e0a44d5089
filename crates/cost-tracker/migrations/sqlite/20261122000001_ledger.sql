-- SQLite twin of the Postgres schema. Money is INTEGER pico-dollars (Usd::to_picos): exact, and
-- SQLite sums integers exactly (an overflow past 9.2 million USD is an error, never a rounding).
-- Times are INTEGER microseconds since the Unix epoch (UTC).
CREATE TABLE usage_ledger (
    request_id               TEXT        NOT NULL,
    attempt                  INTEGER     NOT NULL,
    ts                       INTEGER NOT NULL,
    tenant                   TEXT        NOT NULL,
    user_id                  TEXT        NOT NULL,
    agent                    TEXT        NOT NULL,
    provider                 TEXT        NOT NULL,
    model                    TEXT        NOT NULL,
    tier                     INTEGER    NOT NULL,
    input_tokens             INTEGER      NOT NULL,
    output_tokens            INTEGER      NOT NULL,
    cached_input_tokens      INTEGER      NOT NULL,
    cache_write_input_tokens INTEGER      NOT NULL,
    estimated                INTEGER     NOT NULL,
    cost_picos INTEGER     NOT NULL,
    latency_micros           INTEGER      NOT NULL,
    token_cache_hit_tokens   INTEGER      NOT NULL,
    routing_reason           TEXT        NOT NULL,
    query_sha256             TEXT        NOT NULL,
    status                   INTEGER    NOT NULL,
    recorded_at              INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)),
    PRIMARY KEY (request_id, attempt)
);
-- Exports read a time range in order.
CREATE INDEX usage_ledger_ts ON usage_ledger (ts);

-- Hourly rollups, maintained in the same transaction as the ledger rows they sum. Spend reports
-- read only these (a month is at most 744 hours times the distinct groups).
CREATE TABLE usage_hourly (
    hour                INTEGER NOT NULL,
    tenant              TEXT        NOT NULL,
    provider            TEXT        NOT NULL,
    model               TEXT        NOT NULL,
    agent               TEXT        NOT NULL,
    tier                INTEGER    NOT NULL,
    cost_picos INTEGER     NOT NULL,
    requests            INTEGER      NOT NULL,
    input_tokens        INTEGER      NOT NULL,
    output_tokens       INTEGER      NOT NULL,
    cached_input_tokens INTEGER      NOT NULL,
    estimated_requests  INTEGER      NOT NULL,
    PRIMARY KEY (hour, tenant, provider, model, agent, tier)
);

-- Budgets: empty scope fields match anything. period: 1 = UTC day, 2 = UTC month.
CREATE TABLE budgets (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant         TEXT     NOT NULL,
    provider       TEXT     NOT NULL,
    model          TEXT     NOT NULL,
    period         INTEGER NOT NULL,
    soft_limit_picos INTEGER,
    hard_limit_picos INTEGER,
    UNIQUE (tenant, provider, model, period)
);

-- Settled spend per budget and period. Reservations lock this row (FOR UPDATE) while they
-- check the hard limit, so concurrent reservations against one budget are serialised.
CREATE TABLE budget_periods (
    budget_id    INTEGER      NOT NULL REFERENCES budgets (id) ON DELETE CASCADE,
    period_start INTEGER NOT NULL,
    spent_picos    INTEGER     NOT NULL DEFAULT 0,
    PRIMARY KEY (budget_id, period_start)
);

CREATE TABLE reservations (
    reservation_id TEXT        PRIMARY KEY,
    tenant         TEXT        NOT NULL,
    provider       TEXT        NOT NULL,
    model          TEXT        NOT NULL,
    estimated_picos  INTEGER     NOT NULL,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    settled_at     INTEGER,
    actual_picos     INTEGER
);

-- What a reservation holds against each budget it matched. A hold counts until it expires or
-- its reservation is settled (then it is deleted and its actual cost added to spent_picos).
CREATE TABLE reservation_holds (
    reservation_id TEXT        NOT NULL REFERENCES reservations (reservation_id) ON DELETE CASCADE,
    budget_id      INTEGER      NOT NULL REFERENCES budgets (id) ON DELETE CASCADE,
    period_start   INTEGER NOT NULL,
    amount_picos     INTEGER     NOT NULL,
    expires_at     INTEGER NOT NULL,
    PRIMARY KEY (reservation_id, budget_id)
);
CREATE INDEX reservation_holds_budget ON reservation_holds (budget_id, period_start, expires_at);

-- Cases on Postgres. `embedding` is an untyped pgvector column so that embedders of any
-- dimension can share the table; the store creates one partial HNSW index per dimension in use
-- (on `embedding::vector(D)`, cosine ops), see PgCaseStore::ensure_index.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE IF NOT EXISTS cases (
    tenant          TEXT             NOT NULL,
    id              TEXT             NOT NULL,
    agent           TEXT             NOT NULL,
    task            TEXT             NOT NULL,
    tier            SMALLINT         NOT NULL,
    model           TEXT             NOT NULL,
    plan_json       TEXT             NOT NULL,
    outcome         TEXT             NOT NULL,
    reward          DOUBLE PRECISION,
    cost_usd        TEXT             NOT NULL, -- exact decimal string, never a float
    latency_micros  BIGINT           NOT NULL,
    tags            TEXT[]           NOT NULL,
    created_at      TIMESTAMPTZ      NOT NULL,
    embedder        TEXT             NOT NULL,
    request_id      TEXT             NOT NULL,
    dims            INTEGER          NOT NULL,
    embedding       vector           NOT NULL,
    PRIMARY KEY (tenant, id)
);

CREATE INDEX IF NOT EXISTS cases_tenant_embedder ON cases (tenant, embedder);

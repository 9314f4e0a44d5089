-- Cases of the embedded default. Embeddings are little-endian f32 BLOBs; similarity search is
-- exact, in Rust, over an in-memory copy of each tenant's cases.
CREATE TABLE IF NOT EXISTS cases (
    tenant          TEXT    NOT NULL,
    id              TEXT    NOT NULL,
    agent           TEXT    NOT NULL,
    task            TEXT    NOT NULL,
    tier            INTEGER NOT NULL,
    model           TEXT    NOT NULL,
    plan_json       TEXT    NOT NULL,
    outcome         TEXT    NOT NULL,
    reward          REAL,
    cost_usd        TEXT    NOT NULL,
    latency_micros  INTEGER NOT NULL,
    tags            TEXT    NOT NULL, -- JSON array of strings
    created_at      INTEGER NOT NULL, -- microseconds since the Unix epoch, UTC
    embedder        TEXT    NOT NULL,
    request_id      TEXT    NOT NULL,
    embedding       BLOB    NOT NULL,
    PRIMARY KEY (tenant, id)
);

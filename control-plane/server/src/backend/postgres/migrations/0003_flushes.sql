-- Version 3: one row per process, which its flushes update. PostgreSQL flushes the WAL at a
-- synchronous commit only when the transaction wrote WAL of its own; writing this row makes it
-- so, and the flush of its commit record carries every earlier (lazy) commit to disk.
CREATE TABLE tern_flushes (
    origin BIGINT      PRIMARY KEY,
    at     TIMESTAMPTZ NOT NULL
);

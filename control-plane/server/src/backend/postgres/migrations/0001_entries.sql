-- Version 1: every store's records as ordered byte keys and values, per table (the backend
-- contract of `backend`): one relation, keyed by the table's name and the key.
CREATE TABLE tern_entries (
    tbl   TEXT  NOT NULL,
    key   BYTEA NOT NULL,
    value BYTEA NOT NULL,
    PRIMARY KEY (tbl, key)
);

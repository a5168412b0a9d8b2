-- Version 2: the changes of a commit too large for a notification's payload, which the
-- notification names by id; pruned after an hour by the processes that write them.
CREATE TABLE tern_notices (
    id      BIGSERIAL   PRIMARY KEY,
    created TIMESTAMPTZ NOT NULL DEFAULT now(),
    body    BYTEA       NOT NULL
);

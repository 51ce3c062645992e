-- +goose Up
-- attempts counts publishes that failed because of the row itself (its
-- exchange does not exist, or nothing routes it even after the topology was
-- declared again); broker outages, nacks and timeouts never count.
ALTER TABLE outbox
    ADD COLUMN attempts   int  NOT NULL DEFAULT 0,
    ADD COLUMN last_error text;

-- Rows the relay gave up on after MaxAttempts such failures, for an
-- operator to inspect and move back into outbox once the cause is fixed.
CREATE TABLE outbox_failed (
    id           bigint PRIMARY KEY,
    event_id     uuid        NOT NULL,
    event_type   text        NOT NULL,
    exchange     text        NOT NULL,
    routing_key  text        NOT NULL,
    body         bytea       NOT NULL,
    headers      jsonb       NOT NULL,
    created_at   timestamptz NOT NULL,
    attempts     int         NOT NULL,
    last_error   text        NOT NULL,
    failed_at    timestamptz NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE outbox_failed;
ALTER TABLE outbox DROP COLUMN last_error, DROP COLUMN attempts;

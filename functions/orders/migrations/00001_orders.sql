-- +goose Up
CREATE TABLE orders (
    id           uuid PRIMARY KEY,
    customer_id  text        NOT NULL CHECK (length(customer_id) BETWEEN 1 AND 64),
    total_amount bigint      NOT NULL CHECK (total_amount > 0),
    currency     char(3)     NOT NULL,
    status       text        NOT NULL DEFAULT 'pending',
    items        jsonb       NOT NULL DEFAULT '[]',
    created_at   timestamptz NOT NULL
);
-- Keyset pages per customer, newest first (ids are UUIDv7, ordered by time).
CREATE INDEX orders_customer_id ON orders (customer_id, id);

CREATE TABLE outbox (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id     uuid        NOT NULL,
    event_type   text        NOT NULL,
    exchange     text        NOT NULL,
    routing_key  text        NOT NULL,
    body         bytea       NOT NULL,
    headers      jsonb       NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now()
);
-- Every row is an event not yet confirmed by the broker; the relay deletes
-- rows in the transaction that commits after the broker's confirms.

-- Responses of POST /orders sent with an Idempotency-Key, replayed on retry.
CREATE TABLE idempotency_keys (
    key          text PRIMARY KEY,
    request_hash bytea       NOT NULL,
    status       int         NOT NULL,
    location     text        NOT NULL,
    body         bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);

-- +goose Down
DROP TABLE idempotency_keys;
DROP TABLE outbox;
DROP TABLE orders;

-- +goose Up
-- One row per calendar year (UTC) holding the last invoice number issued.
-- Issuing locks the row, so numbers are handed out in commit order; a rolled
-- back batch rolls the counter back too, which leaves no gap.
CREATE TABLE invoice_counters (
    year int    PRIMARY KEY,
    last bigint NOT NULL CHECK (last >= 0)
);

CREATE TABLE invoices (
    id               uuid PRIMARY KEY,
    number           text        NOT NULL UNIQUE,
    year             int         NOT NULL,
    seq              bigint      NOT NULL CHECK (seq > 0),
    order_id         uuid        NOT NULL UNIQUE,
    event_id         uuid        NOT NULL,
    customer_id      text        NOT NULL,
    amount           bigint      NOT NULL CHECK (amount > 0),
    currency         char(3)     NOT NULL,
    status           text        NOT NULL DEFAULT 'issued',
    order_created_at timestamptz,
    issued_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (year, seq)
);
CREATE INDEX invoices_customer_id ON invoices (customer_id, id);

-- +goose Down
DROP TABLE invoices;
DROP TABLE invoice_counters;

-- +goose Up
-- The number is made from (year, seq), which is unique on its own: a second
-- unique index on the text cost every invoice an index insert and its WAL.
ALTER TABLE invoices DROP CONSTRAINT invoices_number_key;

-- +goose Down
ALTER TABLE invoices ADD CONSTRAINT invoices_number_key UNIQUE (number);

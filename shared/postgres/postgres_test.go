package postgres

import "testing"

func TestSpanName(t *testing.T) {
	for sql, want := range map[string]string{
		"INSERT INTO orders (id) VALUES ($1)": "INSERT orders",
		"\n WITH ins AS (\n INSERT INTO outbox (a) SELECT * FROM unnest($1) RETURNING 1) SELECT pg_notify('outbox', '') FROM ins": "INSERT outbox",
		"SELECT id FROM outbox WHERE id > 0":                     "SELECT outbox",
		"UPDATE invoice_counters SET last = $2":                  "UPDATE invoice_counters",
		"DELETE FROM outbox WHERE id IN (SELECT id FROM outbox)": "DELETE outbox",
		"WITH input AS (SELECT * FROM unnest($1)), fresh AS (SELECT * FROM input WHERE NOT EXISTS (SELECT 1 FROM invoices)) , ins AS (INSERT INTO invoices SELECT * FROM fresh RETURNING id), c AS (UPDATE invoice_counters SET last = 1) SELECT * FROM ins": "INSERT invoices",
		"UPDATE outbox SET body = $1 WHERE id IN (SELECT id FROM outbox)": "UPDATE outbox",
		"INSERT INTO orders (id) SELECT id FROM unnest($1::uuid[])":       "INSERT orders",
		"begin":                                "BEGIN",
		"SELECT pg_try_advisory_xact_lock($1)": "SELECT",
		"":                                     "SQL",
	} {
		if got := spanName(sql); got != want {
			t.Errorf("spanName(%q) = %q, want %q", sql, got, want)
		}
	}
}

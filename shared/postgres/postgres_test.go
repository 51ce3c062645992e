package postgres

import "testing"

func TestSpanName(t *testing.T) {
	for sql, want := range map[string]string{
		"INSERT INTO orders (id) VALUES ($1)": "INSERT orders",
		"\n WITH ins AS (\n INSERT INTO outbox (a) SELECT * FROM unnest($1) RETURNING 1) SELECT pg_notify('outbox', '') FROM ins": "INSERT outbox",
		"SELECT id FROM outbox WHERE published_at IS NULL":                                                                        "SELECT outbox",
		"UPDATE invoice_counters SET last = $2":                                                                                   "UPDATE invoice_counters",
		"DELETE FROM outbox WHERE published_at < now()":                                                                           "DELETE outbox",
		"begin":                                "BEGIN",
		"SELECT pg_try_advisory_xact_lock($1)": "SELECT",
		"":                                     "SQL",
	} {
		if got := spanName(sql); got != want {
			t.Errorf("spanName(%q) = %q, want %q", sql, got, want)
		}
	}
}

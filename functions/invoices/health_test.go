package invoices

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"invoicing/shared/rabbit"
	"invoicing/shared/testenv"
	"invoicing/shared/web"
)

// Readiness of the read API is its database; the consumer's broker is
// shown but does not fail it. Liveness touches neither. No answer carries
// a driver's error.
func TestHealthEndpoints(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	up, err := pgxpool.New(context.Background(), testenv.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(up.Close)
	down, err := pgxpool.New(context.Background(), "postgres://secretuser@127.0.0.1:1/secretdb?sslmode=disable&connect_timeout=1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(down.Close)
	deadBroker := rabbit.NewSession("amqp://guest:guest@127.0.0.1:1/", "dead", log)
	t.Cleanup(func() { deadBroker.Close() })

	cases := []struct {
		name           string
		db             *pgxpool.Pool
		ready          int
		status, broker string
	}{
		{"broker away", up, http.StatusOK, "degraded", "unavailable"},
		{"database away", down, http.StatusServiceUnavailable, "unavailable", "unavailable"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := NewServer(log, &Store{pool: tc.db}, map[string]web.Check{"postgres": tc.db.Ping, "rabbitmq": deadBroker.Check})
			get := func(path string) (int, string, map[string]any) {
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
				var body map[string]any
				if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
					t.Fatalf("%s: %v: %s", path, err, rec.Body)
				}
				return rec.Code, rec.Body.String(), body
			}
			for _, path := range []string{"/health", "/health/ready"} {
				code, raw, body := get(path)
				checks, _ := body["checks"].(map[string]any)
				if code != tc.ready || body["status"] != tc.status || checks["rabbitmq"] != tc.broker {
					t.Errorf("%s: %d %s", path, code, raw)
				}
				if strings.Contains(raw, "127.0.0.1") || strings.Contains(raw, "secret") {
					t.Errorf("%s shows driver detail: %s", path, raw)
				}
			}
			if code, raw, body := get("/health/live"); code != http.StatusOK || body["status"] != "ok" {
				t.Errorf("/health/live: %d %s", code, raw)
			}
		})
	}
}

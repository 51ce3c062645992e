package orders

import (
	"time"

	"invoicing/shared/config"
)

// Config is everything the orders service reads from its environment.
type Config struct {
	config.Common
	RelayInterval  time.Duration
	RelayBatchSize int
	RelayWorkers   int
	PublishTimeout time.Duration
	IdempotencyTTL time.Duration
	DBMaxConns     int
	Writers        int
	WriteBatchMax  int
	// DBTimeout bounds a create's database work, from the request reaching
	// the store to its COMMIT; DBLookupTimeout bounds finding out whether a
	// COMMIT that went unanswered took effect.
	DBTimeout       time.Duration
	DBLookupTimeout time.Duration
}

func loadConfig(getenv func(string) string) (Config, error) {
	r := config.NewReader(getenv)
	c := Config{
		Common:          config.ReadCommon(r, 3333, "orders"),
		RelayInterval:   r.Duration("RELAY_INTERVAL", time.Second, 10*time.Millisecond, time.Hour),
		RelayBatchSize:  r.Int("RELAY_BATCH_SIZE", 500, 1, 10000),
		RelayWorkers:    r.Int("RELAY_WORKERS", 1, 1, 64),
		PublishTimeout:  r.Duration("PUBLISH_TIMEOUT", 10*time.Second, 100*time.Millisecond, 5*time.Minute),
		IdempotencyTTL:  r.Duration("IDEMPOTENCY_TTL", 24*time.Hour, 24*time.Hour, 30*24*time.Hour),
		DBMaxConns:      r.Int("DB_MAX_CONNS", config.ByMode(r, 16, 2), 2, 1000),
		Writers:         r.Int("WRITERS", 1, 1, 256),
		WriteBatchMax:   r.Int("WRITE_BATCH_MAX", 64, 1, 5000),
		DBTimeout:       r.Duration("DB_TIMEOUT", DefaultTimeouts.DB, 100*time.Millisecond, 5*time.Minute),
		DBLookupTimeout: r.Duration("DB_LOOKUP_TIMEOUT", DefaultTimeouts.Lookup, 100*time.Millisecond, time.Minute),
	}
	return c, r.Err()
}

// ConfigVariables lists every environment variable the service's
// configuration reads (telemetry reads the OTEL_* ones).
func ConfigVariables() []string {
	return config.Variables(func(getenv func(string) string) { _, _ = loadConfig(getenv) })
}

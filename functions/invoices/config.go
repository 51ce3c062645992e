package invoices

import (
	"time"

	"invoicing/shared/config"
)

// Config is everything the invoices service reads from its environment.
type Config struct {
	config.Common
	// Prefetch is how many unacked deliveries the broker may hand out.
	Prefetch int
	// BatchSize is how many deliveries one database transaction issues.
	BatchSize int
	// BatchWait is the longest a batch waits to fill after its first
	// delivery; it closes sooner when deliveries pause. 0 sends every
	// delivery alone.
	BatchWait  time.Duration
	DBMaxConns int
	// DBTimeout bounds each issuing transaction and the consumer's check
	// that the database answers. Keep it below ShutdownTimeout: a batch in
	// hand at SIGTERM gets this long to finish.
	DBTimeout time.Duration
}

func loadConfig(getenv func(string) string) (Config, error) {
	r := config.NewReader(getenv)
	c := Config{
		Common:     config.ReadCommon(r, 3334, "invoices"),
		Prefetch:   r.Int("PREFETCH", 500, 1, 65535),
		BatchSize:  r.Int("BATCH_SIZE", 200, 1, 5000),
		BatchWait:  r.Duration("BATCH_WAIT", 5*time.Millisecond, 0, time.Second),
		DBMaxConns: r.Int("DB_MAX_CONNS", config.ByMode(r, 8, 2), 2, 1000),
		DBTimeout:  r.Duration("DB_TIMEOUT", defaultDBTimeout, 100*time.Millisecond, 5*time.Minute),
	}
	if c.BatchSize > c.Prefetch {
		c.BatchSize = c.Prefetch // a batch can never hold more than the broker hands out
	}
	return c, r.Err()
}

// ConfigVariables lists every environment variable the service's
// configuration reads (telemetry reads the OTEL_* ones).
func ConfigVariables() []string {
	return config.Variables(func(getenv func(string) string) { _, _ = loadConfig(getenv) })
}

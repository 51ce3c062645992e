// Package orders is the orders service: the HTTP API that stores orders and
// their order.created events in one transaction, and the outbox relay that
// publishes those events to RabbitMQ. cmd/orders is its binary.
package orders

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"time"

	"invoicing/functions/orders/migrations"
	"invoicing/shared/outbox"
	"invoicing/shared/rabbit"
	"invoicing/shared/runtime"
	"invoicing/shared/telemetry"
	"invoicing/shared/web"
)

// Run is the whole service program; the binary calls it with the process's
// environment, tests with their own.
func Run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	cfg, err := loadConfig(getenv)
	if err != nil {
		return err
	}
	if runtime.IsHealthcheck(args) {
		return runtime.Healthcheck(ctx, args, cfg.Port, stdout)
	}
	base, err := runtime.Start(ctx, runtime.Service{
		Name: "orders", Config: cfg.Common, DBMaxConns: cfg.DBMaxConns,
		Migrations: migrations.FS, DeploymentMode: telemetry.ModeServer,
	}, args, getenv, stdout)
	if err != nil {
		return err
	}
	defer base.Close()
	if base.Command == runtime.CommandMigrate {
		return nil
	}
	log, pool := base.Log, base.Pool

	session := rabbit.NewSession(cfg.BrokerURL, "orders", log)
	defer session.Close()
	store := NewStore(pool, cfg.Writers, cfg.WriteBatchMax,
		WithTimeouts(Timeouts{DB: cfg.DBTimeout, Lookup: cfg.DBLookupTimeout}))
	defer store.Close() // after the HTTP server has drained
	relay := &outbox.Relay{
		Pool:           pool,
		Publisher:      rabbit.NewPublisher(session),
		Log:            log,
		BatchSize:      cfg.RelayBatchSize,
		PublishTimeout: cfg.PublishTimeout,
		Interval:       cfg.RelayInterval,
		Workers:        cfg.RelayWorkers,
	}
	if err := relay.RegisterMetrics(); err != nil {
		return err
	}
	checks := map[string]web.Check{"postgres": pool.Ping, "rabbitmq": session.Check}
	return runtime.Server{
		Log:             log,
		Addr:            ":" + strconv.Itoa(cfg.Port),
		Handler:         NewServer(log, store, cfg.BodyLimit, checks),
		ShutdownTimeout: cfg.ShutdownTimeout,
		PprofAddr:       cfg.PprofAddr,
		Workers:         []runtime.Worker{relay.Run, pruneIdempotencyKeys(store, cfg.IdempotencyTTL, log)},
	}.Serve(ctx)
}

func pruneIdempotencyKeys(store *Store, ttl time.Duration, log *slog.Logger) runtime.Worker {
	return func(ctx context.Context) error {
		t := time.NewTicker(time.Hour)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
				if _, err := store.PruneIdempotencyKeys(ctx, ttl); err != nil {
					log.Warn("prune idempotency keys failed", "err", err)
				}
			}
		}
	}
}

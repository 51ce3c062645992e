// Command orders is the orders service: the HTTP API that stores orders and
// their order.created events in one transaction, and the outbox relay that
// publishes those events to RabbitMQ.
//
//	orders            serve the API and run the relay
//	orders migrate    apply the database migrations and exit
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"invoicing/functions/orders/migrations"
	"invoicing/shared/outbox"
	"invoicing/shared/postgres"
	"invoicing/shared/rabbit"
	"invoicing/shared/runtime"
	"invoicing/shared/web"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "orders:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	cfg, err := loadConfig(getenv)
	if err != nil {
		return err
	}
	log := runtime.NewLogger(stdout, cfg.LogLevel).With("service", "orders")
	command := "serve"
	if len(args) > 0 {
		command = args[0]
	}
	if command != "serve" && command != "migrate" {
		return fmt.Errorf("unknown command %q (want serve or migrate)", command)
	}

	if cfg.CreateDatabase {
		if err := postgres.EnsureDatabase(ctx, cfg.DatabaseURL); err != nil {
			return err
		}
	}
	pool, err := postgres.Open(ctx, cfg.DatabaseURL, func(c *pgxpool.Config) {
		c.MaxConns = int32(cfg.DBMaxConns)
	})
	if err != nil {
		return err
	}
	defer pool.Close()
	if command == "migrate" || cfg.AutoMigrate {
		if err := postgres.Migrate(ctx, pool, migrations.FS, log); err != nil {
			return err
		}
	}
	if command == "migrate" {
		return nil
	}

	session := rabbit.NewSession(cfg.BrokerURL, "orders", log)
	defer session.Close()
	store := &Store{pool: pool}
	relay := &outbox.Relay{
		Pool:           pool,
		Publisher:      rabbit.NewPublisher(session),
		Log:            log,
		BatchSize:      cfg.RelayBatchSize,
		PublishTimeout: cfg.PublishTimeout,
		Interval:       cfg.RelayInterval,
		Retention:      cfg.OutboxRetention,
	}
	checks := map[string]web.Check{"postgres": pool.Ping, "rabbitmq": session.Check}
	return runtime.Server{
		Log:             log,
		Addr:            ":" + strconv.Itoa(cfg.Port),
		Handler:         NewServer(log, store, cfg.BodyLimit, checks),
		ShutdownTimeout: cfg.ShutdownTimeout,
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

// Command invoices is the invoices service: the consumer that turns every
// order.created event into exactly one invoice, and the read API over them.
//
//	invoices            serve the API and run the consumer
//	invoices migrate    apply the database migrations and exit
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/jackc/pgx/v5/pgxpool"

	"invoicing/functions/invoices/migrations"
	"invoicing/shared/postgres"
	"invoicing/shared/rabbit"
	"invoicing/shared/runtime"
	"invoicing/shared/web"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "invoices:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	cfg, err := loadConfig(getenv)
	if err != nil {
		return err
	}
	log := runtime.NewLogger(stdout, cfg.LogLevel).With("service", "invoices")
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

	session := rabbit.NewSession(cfg.BrokerURL, "invoices", log)
	defer session.Close()
	store := &Store{pool: pool}
	consumer := &Consumer{
		Session: session, Store: store, Log: log,
		Prefetch: cfg.Prefetch, BatchSize: cfg.BatchSize, BatchWait: cfg.BatchWait,
	}
	checks := map[string]web.Check{"postgres": pool.Ping, "rabbitmq": session.Check}
	return runtime.Server{
		Log:             log,
		Addr:            ":" + strconv.Itoa(cfg.Port),
		Handler:         NewServer(log, store, checks),
		ShutdownTimeout: cfg.ShutdownTimeout,
		Workers:         []runtime.Worker{consumer.Run},
	}.Serve(ctx)
}

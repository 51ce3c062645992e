// Package invoices is the invoices service: the consumer that turns every
// order.created event into exactly one invoice, and the read API over them.
// cmd/invoices is its binary.
package invoices

import (
	"context"
	"io"
	"strconv"
	"time"

	"invoicing/functions/invoices/migrations"
	"invoicing/shared/postgres"
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
	log := runtime.NewLogger(stdout, cfg.LogLevel).With("service", "invoices")
	tel, err := telemetry.Setup(ctx, telemetry.Config{ServiceName: "invoices", DeploymentMode: telemetry.ModeServer, Getenv: getenv})
	if err != nil {
		return err
	}
	defer tel.Close(5*time.Second, log)
	command, err := runtime.ParseCommand(args)
	if err != nil {
		return err
	}
	pool, err := postgres.Prepare(ctx, postgres.Setup{
		URL: cfg.DatabaseURL, MaxConns: cfg.DBMaxConns, Create: cfg.CreateDatabase,
		Migrate: cfg.AutoMigrate || command == runtime.CommandMigrate, Migrations: migrations.FS, Log: log,
	})
	if err != nil {
		return err
	}
	defer pool.Close()
	if command == runtime.CommandMigrate {
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
		PprofAddr:       cfg.PprofAddr,
		Workers:         []runtime.Worker{consumer.Run},
	}.Serve(ctx)
}

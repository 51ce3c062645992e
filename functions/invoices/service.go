// Package invoices is the invoices service: the consumer that turns every
// order.created event into exactly one invoice, and the read API over them.
// cmd/invoices is its binary.
package invoices

import (
	"context"
	"io"
	"strconv"

	"invoicing/functions/invoices/migrations"
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
		Name: "invoices", Config: cfg.Common, DBMaxConns: cfg.DBMaxConns,
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

	session := rabbit.NewSession(cfg.BrokerURL, "invoices", log)
	defer session.Close()
	store := &Store{pool: pool}
	consumer := &Consumer{
		Session: session, Store: store, Log: log,
		Prefetch: cfg.Prefetch, BatchSize: cfg.BatchSize, BatchWait: cfg.BatchWait, DBTimeout: cfg.DBTimeout,
	}
	if err := registerLag(session); err != nil {
		return err
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

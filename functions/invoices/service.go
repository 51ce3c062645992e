// Package invoices is the invoices service: the consumer that turns every
// order.created event into exactly one invoice, and the read API over them.
// cmd/invoices is its binary.
package invoices

import (
	"context"
	"io"
	"time"

	"invoicing/functions/invoices/migrations"
	"invoicing/shared/rabbit"
	"invoicing/shared/runtime"
	"invoicing/shared/web"
)

// Run is the whole service program; the binary calls it with the process's
// environment, tests with their own. It serves as a long-lived server or as
// a Lambda function; shared/runtime decides which.
func Run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	cfg, err := loadConfig(getenv)
	if err != nil {
		return err
	}
	svc := runtime.Service{Name: "invoices", Config: cfg.Common, DBMaxConns: cfg.DBMaxConns, Migrations: migrations.FS}
	return runtime.Run(ctx, svc, args, getenv, stdout, func(_ context.Context, base *runtime.Base) (runtime.Handlers, func(), error) {
		return handlers(cfg, base)
	})
}

// handlers builds what the service serves: the read API and the consumer
// (a long-lived consumer in a server; a queue drain per schedule, or the
// batches of an Amazon MQ event source mapping, in Lambda).
func handlers(cfg Config, base *runtime.Base) (runtime.Handlers, func(), error) {
	log, pool := base.Log, base.Pool
	session := rabbit.NewSession(cfg.BrokerURL, "invoices", log)
	store := &Store{pool: pool}
	consumer := &Consumer{
		Session: session, Store: store, Log: log, Publisher: rabbit.NewPublisher(session),
		Prefetch: cfg.Prefetch, BatchSize: cfg.BatchSize, BatchWait: cfg.BatchWait, DBTimeout: cfg.DBTimeout,
	}
	checks := map[string]web.Check{"postgres": pool.Ping, "rabbitmq": session.Check}
	h := runtime.Handlers{
		HTTP:    NewServer(log, store, checks),
		Workers: []runtime.Worker{consumer.Run},
		Metrics: func() error { return registerLag(session) },
		Scheduled: func(ctx context.Context) (any, error) {
			ctx, cancel := context.WithTimeout(ctx, runtime.Remaining(ctx, drainMargin))
			defer cancel()
			return consumer.Drain(ctx)
		},
		Messages: consumer.HandleMessages,
	}
	return h, func() { _ = session.Close() }, nil
}

// drainMargin is kept back from a scheduled invocation's time so the batch
// in hand can commit and be acked, and telemetry flushed.
const drainMargin = 5 * time.Second

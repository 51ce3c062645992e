// Package orders is the orders service: the HTTP API that stores orders and
// their order.created events in one transaction, and the outbox relay that
// publishes those events to RabbitMQ. cmd/orders is its binary.
package orders

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"time"

	"invoicing/functions/orders/migrations"
	"invoicing/shared/outbox"
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
	svc := runtime.Service{Name: "orders", Config: cfg.Common, DBMaxConns: cfg.DBMaxConns, Migrations: migrations.FS}
	return runtime.Run(ctx, svc, args, getenv, stdout, func(_ context.Context, base *runtime.Base) (runtime.Handlers, func(), error) {
		return handlers(cfg, base)
	})
}

// handlers builds what the service serves: the API, the relay (a loop in a
// server; a sweep per schedule and a publish after each create in Lambda)
// and the pruning of idempotency keys.
func handlers(cfg Config, base *runtime.Base) (runtime.Handlers, func(), error) {
	log, pool := base.Log, base.Pool
	session := rabbit.NewSession(cfg.BrokerURL, "orders", log)
	relay := &outbox.Relay{
		Pool:           pool,
		Publisher:      rabbit.NewPublisher(session),
		Log:            log,
		BatchSize:      cfg.RelayBatchSize,
		PublishTimeout: cfg.PublishTimeout,
		DBTimeout:      cfg.DBTimeout,
		Interval:       cfg.RelayInterval,
		Workers:        cfg.RelayWorkers,
	}
	store := NewStore(pool, cfg.Writers, cfg.WriteBatchMax,
		WithTimeouts(Timeouts{DB: cfg.DBTimeout, Lookup: cfg.DBLookupTimeout}), OnCommit(relay.Wake))
	checks := map[string]web.Check{"postgres": pool.Ping, "rabbitmq": session.Check}
	h := runtime.Handlers{
		HTTP:      NewServer(log, store, cfg.BodyLimit, checks),
		Workers:   []runtime.Worker{relay.Run, pruneIdempotencyKeys(store, cfg.IdempotencyTTL, log)},
		Metrics:   relay.RegisterMetrics,
		Scheduled: sweep(relay, store, cfg.IdempotencyTTL, log),
		AfterHTTP: publishCreated(relay, min(cfg.PublishTimeout, afterCreatePublishTimeout), log),
	}
	return h, func() {
		store.Close() // after the HTTP server has drained
		_ = session.Close()
	}, nil
}

// afterCreatePublishTimeout bounds the publish that follows a create in
// Lambda mode: the client waits for it, and the scheduled sweep publishes
// whatever it could not.
const afterCreatePublishTimeout = time.Second

// publishCreated publishes the outbox after a create answered 201, so that
// in Lambda mode the invoice does not wait for the next scheduled sweep.
// The 201 does not depend on it: the order and its event are committed.
func publishCreated(relay *outbox.Relay, timeout time.Duration, log *slog.Logger) func(context.Context, *http.Request, int) {
	return func(ctx context.Context, r *http.Request, status int) {
		if r.Method != http.MethodPost || status != http.StatusCreated {
			return
		}
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
		defer cancel()
		if _, err := relay.PublishBatch(ctx); err != nil {
			log.WarnContext(ctx, "publish after create failed; the scheduled sweep will publish it", "err", err)
		}
	}
}

// sweepMargin is kept back from a scheduled invocation's time so the batch
// in hand can commit and telemetry can flush.
const sweepMargin = 3 * time.Second

// sweep is one scheduled round in Lambda mode: prune old idempotency keys,
// then publish the outbox until it is empty or the time runs short.
func sweep(relay *outbox.Relay, store *Store, ttl time.Duration, log *slog.Logger) func(context.Context) (any, error) {
	return func(ctx context.Context) (any, error) {
		ctx, cancel := context.WithTimeout(ctx, runtime.Remaining(ctx, sweepMargin))
		defer cancel()
		pruned, err := store.PruneIdempotencyKeys(ctx, ttl)
		if err != nil {
			log.WarnContext(ctx, "prune idempotency keys failed", "err", err)
		}
		published, err := relay.Sweep(ctx)
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil {
			err = nil // out of time; the next schedule goes on
		}
		return map[string]int64{"published": int64(published), "prunedIdempotencyKeys": pruned}, err
	}
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

package outbox

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgxlisten"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"invoicing/shared/postgres"
	"invoicing/shared/rabbit"
)

var tracer = otel.Tracer("invoicing/shared/outbox")

type publisher interface {
	Publish(ctx context.Context, msgs []rabbit.Message) error
}

// Relay moves stored events to the broker. Several relays (processes or
// goroutines) may run at once: each claims rows with FOR UPDATE SKIP LOCKED.
type Relay struct {
	Pool      *pgxpool.Pool
	Publisher publisher
	Log       *slog.Logger
	// BatchSize is how many rows one transaction claims and publishes.
	BatchSize int
	// PublishTimeout bounds one batch's publish and confirms.
	PublishTimeout time.Duration
	// DBTimeout bounds a batch's database work (the claim, putting rows
	// back, the COMMIT): a batch has DBTimeout + PublishTimeout in all, and
	// PublishTimeout more for each message it publishes again one at a
	// time. 0 means DefaultDBTimeout.
	DBTimeout time.Duration
	// Interval is how often Run sweeps without a notification.
	Interval time.Duration
	// Workers is how many batches Run publishes at once, so that one
	// batch's wait for confirms overlaps another's; at least 1.
	Workers int
	// MaxAttempts is how many publishes of a row may fail because of the
	// row itself (see rabbit.IsMessageFault) before the row is set aside
	// in outbox_failed; 0 means DefaultMaxAttempts.
	MaxAttempts int
	// Meter makes the relay's instruments; nil means the global provider's.
	Meter metric.Meter

	metricsOnce sync.Once
	setAside    metric.Int64Counter

	wakesOnce sync.Once
	wakes     []chan struct{} // one per worker of Run
}

func (r *Relay) wakeChannels() []chan struct{} {
	r.wakesOnce.Do(func() {
		r.wakes = make([]chan struct{}, max(r.Workers, 1))
		for i := range r.wakes {
			r.wakes[i] = make(chan struct{}, 1)
		}
	})
	return r.wakes
}

// Wake makes Run sweep now, as a committed write of new events should: it
// never blocks, and wake-ups that come while a sweep is due already merge
// into it. Without Run it does nothing.
func (r *Relay) Wake() {
	for _, w := range r.wakeChannels() {
		select {
		case w <- struct{}{}:
		default:
		}
	}
}

// DefaultDBTimeout is DBTimeout when it is not set.
const DefaultDBTimeout = 10 * time.Second

func (r *Relay) dbTimeout() time.Duration {
	if r.DBTimeout > 0 {
		return r.DBTimeout
	}
	return DefaultDBTimeout
}

// ErrBatchTimeout is returned, wrapped, by a batch that ran out of its time
// (see Relay.DBTimeout): a database or broker that stopped answering. Its
// rows stay in the outbox.
var ErrBatchTimeout = fmt.Errorf("outbox batch out of time: %w", context.DeadlineExceeded)

// budget is a batch's deadline, which can be pushed back: when it passes,
// ctx is cancelled with ErrBatchTimeout as its cause.
type budget struct {
	ctx    context.Context
	cancel context.CancelCauseFunc

	mu    sync.Mutex
	at    time.Time
	timer *time.Timer
}

func newBudget(parent context.Context, d time.Duration) *budget {
	ctx, cancel := context.WithCancelCause(parent)
	b := &budget{ctx: ctx, cancel: cancel, at: time.Now().Add(d)}
	b.timer = time.AfterFunc(d, func() { cancel(ErrBatchTimeout) })
	return b
}

// extend pushes the deadline back by d, unless it has passed already.
func (b *budget) extend(d time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.at = b.at.Add(d)
	if b.timer.Stop() {
		b.timer.Reset(time.Until(b.at))
	}
}

func (b *budget) end() {
	b.timer.Stop()
	b.cancel(nil)
}

// DefaultMaxAttempts is MaxAttempts when it is not set. Attempts are a sweep
// apart, so a row is set aside only after failing for several Intervals.
const DefaultMaxAttempts = 5

func (r *Relay) meter() metric.Meter {
	if r.Meter != nil {
		return r.Meter
	}
	return otel.Meter("invoicing/shared/outbox")
}

func (r *Relay) instruments() {
	r.metricsOnce.Do(func() {
		r.setAside, _ = r.meter().Int64Counter("outbox.set_aside", metric.WithUnit("{row}"),
			metric.WithDescription("Outbox rows moved to outbox_failed after repeated failures of their own"))
	})
}

var noopSpan = trace.SpanFromContext(context.Background())

// untraced returns ctx under an unsampled parent, so that statements run
// with it are not recorded by a parent-based sampler (the default).
func untraced(ctx context.Context) context.Context {
	return trace.ContextWithSpanContext(ctx, trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1}, SpanID: trace.SpanID{1}, // valid but never exported
	}))
}

// claimSQL locks up to $1 rows (skipping rows another relay holds) and
// deletes them, returning their contents. The delete only lasts if the
// transaction commits, which PublishBatch does after the broker confirmed
// every row; otherwise the rollback brings them back. Deleting at once,
// rather than marking rows and pruning them later, writes each row once.
const claimSQL = `
DELETE FROM outbox
WHERE id IN (
    SELECT id FROM outbox
    ORDER BY id
    LIMIT $1
    FOR UPDATE SKIP LOCKED)
RETURNING id, event_id, event_type, exchange, routing_key, body, headers, created_at, attempts`

// retrySQL puts a row that failed by itself back, under its own id so it
// keeps its place, with one more attempt counted.
const retrySQL = `
INSERT INTO outbox (id, event_id, event_type, exchange, routing_key, body, headers, created_at, attempts, last_error)
OVERRIDING SYSTEM VALUE
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`

// setAsideSQL moves a row that failed by itself MaxAttempts times where an
// operator sees it.
const setAsideSQL = `
INSERT INTO outbox_failed (id, event_id, event_type, exchange, routing_key, body, headers, created_at, attempts, last_error)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`

type row struct {
	id        int64
	msg       Message
	createdAt time.Time
	attempts  int
}

// PublishBatch claims up to BatchSize rows, deleting them, publishes them,
// and commits only after the broker confirmed them all. It returns how many
// rows it published.
//
// When the batch fails because of one of its messages (rabbit.IsMessageFault)
// rather than the broker, it publishes the rows one at a time, so that a row
// that can never be published does not hold back the rows behind it: that
// row goes back into the outbox with its attempt counted, or, after
// MaxAttempts, into outbox_failed. Any other failure rolls the whole batch
// back, uncounted.
//
// The batch has a deadline of its own (see DBTimeout), so a database or
// broker that stopped answering fails it, with ErrBatchTimeout, rather than
// holding it; it also ends when ctx does.
func (r *Relay) PublishBatch(ctx context.Context) (n int, err error) {
	return r.publishBatch(ctx, nil)
}

// publishBatch is PublishBatch that also gives up when stop ends before it
// has claimed rows, and thus before it has published any; once it has rows
// it finishes, within its deadline, whatever stop does.
func (r *Relay) publishBatch(ctx, stop context.Context) (n int, err error) {
	r.instruments()
	start := time.Now()
	b := newBudget(ctx, r.dbTimeout()+r.PublishTimeout)
	defer b.end()
	ctx = b.ctx
	abort := func() bool { return true }
	if stop != nil {
		abort = context.AfterFunc(stop, func() { b.cancel(stop.Err()) })
		defer abort()
	}
	defer func() {
		if err != nil && errors.Is(context.Cause(b.ctx), ErrBatchTimeout) && !errors.Is(err, ErrBatchTimeout) {
			err = fmt.Errorf("%w after %s, cutting short: %w", ErrBatchTimeout, time.Since(start).Round(time.Millisecond), err)
		}
	}()
	var setAside []row
	defer func() {
		if err == nil {
			for _, x := range setAside {
				r.setAside.Add(ctx, 1, metric.WithAttributes(attribute.String("messaging.destination.name", x.msg.Exchange)))
			}
		}
	}()
	var span trace.Span = noopSpan
	defer func() {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}()
	// The claim runs untraced so that the sweeps that find nothing, once a
	// second, leave no traces; a batch's span starts once it has rows.
	var batch []row
	err = postgres.InTx(untraced(ctx), r.Pool, func(b *pgx.Batch) {
		// Losing the delete in a crash only means publishing these rows
		// again, which consumers tolerate, so the commit need not wait for
		// its own WAL flush.
		b.Queue(`SET LOCAL synchronous_commit = off`)
		// The outbox is a queue: a few live rows among many dead ones,
		// and statistics that say little about either. pgx keeps the
		// plan prepared while the table was small, and the planner then
		// deletes through a hash join over a scan of the whole table,
		// dead rows included, on every claim. Going through the primary
		// key costs a batch its own rows, whatever the table holds.
		b.Queue(`SET LOCAL enable_seqscan = off`)
		b.Queue(claimSQL, r.BatchSize).Query(func(rows pgx.Rows) error {
			var err error
			batch, err = pgx.CollectRows(rows, func(cr pgx.CollectableRow) (row, error) {
				var x row
				err := cr.Scan(&x.id, &x.msg.EventID, &x.msg.Type, &x.msg.Exchange, &x.msg.RoutingKey, &x.msg.Body, &x.msg.Headers, &x.createdAt, &x.attempts)
				return x, err
			})
			return err
		})
	}, func(tx pgx.Tx) error {
		if len(batch) == 0 {
			return nil
		}
		if !abort() {
			return fmt.Errorf("stopped before publishing: %w", context.Cause(ctx))
		}
		// RETURNING has no order; publish in the order the events were stored.
		slices.SortFunc(batch, func(a, b row) int { return cmp.Compare(a.id, b.id) })
		ctx, span = tracer.Start(ctx, "outbox publish batch", trace.WithTimestamp(start),
			trace.WithAttributes(attribute.Int("outbox.batch.size", len(batch))))
		msgs := make([]rabbit.Message, len(batch))
		for i, x := range batch {
			parent := otel.GetTextMapPropagator().Extract(ctx, propagation.MapCarrier(x.msg.Headers))
			span.AddLink(trace.LinkFromContext(parent))
			msgs[i] = rabbit.Message{
				Context:  parent,
				Exchange: x.msg.Exchange, RoutingKey: x.msg.RoutingKey,
				MessageID: x.msg.EventID.String(), Type: x.msg.Type,
				Timestamp: x.createdAt, Body: x.msg.Body,
			}
		}
		err := r.publish(ctx, msgs)
		if err == nil {
			n = len(batch)
			return nil
		}
		if !rabbit.IsMessageFault(err) {
			return fmt.Errorf("publish %d events: %w", len(msgs), err)
		}
		r.Log.WarnContext(ctx, "outbox batch failed on a message; publishing one at a time", "rows", len(batch), "err", err)
		for i, x := range batch {
			b.extend(r.PublishTimeout)
			err := r.publish(ctx, msgs[i:i+1])
			if err == nil {
				n++
				continue
			}
			if !rabbit.IsMessageFault(err) {
				return fmt.Errorf("publish event %s: %w", x.msg.EventID, err)
			}
			aside, err := r.fail(ctx, tx, x, err)
			if err != nil {
				return err
			}
			if aside {
				setAside = append(setAside, x)
			}
		}
		return nil
	})
	if err != nil {
		n = 0
	}
	return n, err
}

func (r *Relay) publish(ctx context.Context, msgs []rabbit.Message) error {
	ctx, cancel := context.WithTimeout(ctx, r.PublishTimeout)
	defer cancel()
	return r.Publisher.Publish(ctx, msgs)
}

// fail records a failure of row x's own in tx: the row goes back into the
// outbox with one more attempt, or into outbox_failed once it has had
// MaxAttempts. It reports whether the row was set aside.
func (r *Relay) fail(ctx context.Context, tx pgx.Tx, x row, cause error) (bool, error) {
	attempts := x.attempts + 1
	limit := r.MaxAttempts
	if limit <= 0 {
		limit = DefaultMaxAttempts
	}
	args := []any{x.id, x.msg.EventID, x.msg.Type, x.msg.Exchange, x.msg.RoutingKey, x.msg.Body, x.msg.Headers, x.createdAt, attempts, cause.Error()}
	if attempts < limit {
		if _, err := tx.Exec(ctx, retrySQL, args...); err != nil {
			return false, fmt.Errorf("put back outbox row %d: %w", x.id, err)
		}
		r.Log.WarnContext(ctx, "outbox event failed; will retry", "event_id", x.msg.EventID, "outbox_id", x.id,
			"attempts", attempts, "max_attempts", limit, "err", cause)
		return false, nil
	}
	if _, err := tx.Exec(ctx, setAsideSQL, args...); err != nil {
		return false, fmt.Errorf("set aside outbox row %d: %w", x.id, err)
	}
	r.Log.ErrorContext(ctx, "outbox event set aside in outbox_failed", "event_id", x.msg.EventID, "outbox_id", x.id,
		"event_type", x.msg.Type, "exchange", x.msg.Exchange, "routing_key", x.msg.RoutingKey, "attempts", attempts, "err", cause)
	return true, nil
}

// Sweep publishes batches until no unpublished row is left or ctx ends. It
// returns the number of rows published. Lambda mode calls it once per
// scheduled invocation; Run calls it on every wake-up.
func (r *Relay) Sweep(ctx context.Context) (int, error) {
	return r.sweep(ctx, ctx)
}

// sweep runs batches with batchCtx and checks stopCtx between them, so a
// shutdown lets the batch in hand commit (within its deadline) once it has
// claimed rows; a batch still claiming gives up at once.
func (r *Relay) sweep(batchCtx, stopCtx context.Context) (int, error) {
	total := 0
	for stopCtx.Err() == nil {
		n, err := r.publishBatch(batchCtx, stopCtx)
		total += n
		if err != nil {
			return total, err
		}
		if n < r.BatchSize {
			return total, nil
		}
	}
	return total, stopCtx.Err()
}

// Run sweeps whenever Wake is called or a NOTIFY on NotifyChannel arrives,
// and every Interval in case a wake-up was missed or another process wrote
// without one, until ctx ends, with Workers sweeps at a time.
// A batch that has claimed rows when ctx ends is finished first, within its
// deadline (see DBTimeout), so Run returns at most about DBTimeout +
// PublishTimeout after ctx ends, even when the database or the broker
// stopped answering. Failures (broker or database away) back off and retry.
func (r *Relay) Run(ctx context.Context) error {
	wakes, signal := r.wakeChannels(), r.Wake
	listener := &pgxlisten.Listener{
		Connect: func(ctx context.Context) (*pgx.Conn, error) {
			c, err := r.Pool.Acquire(ctx)
			if err != nil {
				return nil, err
			}
			return c.Hijack(), nil
		},
		LogError: func(ctx context.Context, err error) {
			if ctx.Err() == nil {
				r.Log.Warn("outbox listener", "err", err)
			}
		},
		ReconnectDelay: time.Second,
	}
	listener.Handle(NotifyChannel, pgxlisten.HandlerFunc(func(context.Context, *pgconn.Notification, *pgx.Conn) error {
		signal()
		return nil
	}))
	var wg sync.WaitGroup
	wg.Go(func() { _ = listener.Listen(ctx) })
	for _, wake := range wakes {
		wg.Go(func() { r.work(ctx, wake) })
	}
	ticker := time.NewTicker(r.Interval)
	defer ticker.Stop()
	signal()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return nil
		case <-ticker.C:
			signal()
		}
	}
}

// work sweeps on every wake-up until ctx ends.
func (r *Relay) work(ctx context.Context, wake chan struct{}) {
	retry := backoff.NewExponentialBackOff()
	retry.InitialInterval = 100 * time.Millisecond
	retry.MaxInterval = 10 * time.Second
	for {
		select {
		case <-ctx.Done():
			return
		case <-wake:
		}
		// Finish the batch in hand on shutdown, within its deadline; stop
		// between batches.
		n, err := r.sweep(context.WithoutCancel(ctx), ctx)
		if n > 0 {
			r.Log.Debug("outbox swept", "published", n)
		}
		if err == nil || ctx.Err() != nil {
			retry.Reset()
			continue
		}
		delay := retry.NextBackOff()
		r.Log.Warn("outbox relay failed; retrying", "err", err, "retry_in", delay.String())
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
			select {
			case wake <- struct{}{}:
			default:
			}
		}
	}
}

// RegisterMetrics reports the outbox backlog (unpublished rows), the age of
// its oldest row and the rows set aside in outbox_failed each time metrics
// are collected.
func (r *Relay) RegisterMetrics() error {
	meter := r.meter()
	backlog, err := meter.Int64ObservableGauge("outbox.backlog", metric.WithUnit("{row}"),
		metric.WithDescription("Outbox rows not yet published"))
	if err != nil {
		return err
	}
	age, err := meter.Float64ObservableGauge("outbox.oldest.age", metric.WithUnit("s"),
		metric.WithDescription("Age of the oldest unpublished outbox row"))
	if err != nil {
		return err
	}
	failed, err := meter.Int64ObservableGauge("outbox.failed", metric.WithUnit("{row}"),
		metric.WithDescription("Outbox rows set aside in outbox_failed, waiting for an operator"))
	if err != nil {
		return err
	}
	_, err = meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		var rows, aside int64
		var oldest float64
		if err := r.Pool.QueryRow(ctx, `
			SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8,
			       (SELECT count(*) FROM outbox_failed)
			FROM outbox`).Scan(&rows, &oldest, &aside); err != nil {
			return fmt.Errorf("measure outbox backlog: %w", err)
		}
		o.ObserveInt64(backlog, rows)
		o.ObserveFloat64(age, oldest)
		o.ObserveInt64(failed, aside)
		return nil
	}, backlog, age, failed)
	return err
}

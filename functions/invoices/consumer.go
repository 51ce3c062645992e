package invoices

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"invoicing/shared/event"
	"invoicing/shared/postgres"
	"invoicing/shared/rabbit"
)

type issuer interface {
	Issue(ctx context.Context, events []event.OrderCreated) ([]Invoice, error)
	Ping(ctx context.Context) error
}

// Consumer turns order.created deliveries from queue "orders" into invoices.
// Deliveries are acked only after the transaction that issued their invoices
// committed; a message that can never succeed is rejected without requeue,
// which dead-letters it to "orders.dead".
//
// The quorum queue counts every delivery that comes back unacked (channel
// closed, nack or reject with requeue) towards its delivery limit, and
// dead-letters a message past it. So while the database cannot take
// invoices the consumer takes no deliveries: it does not start consuming
// until the database answers, and a batch that finds it failing cancels
// the consumer and is held, not returned, until it goes through.
type Consumer struct {
	Session   *rabbit.Session
	Store     issuer
	Log       *slog.Logger
	Prefetch  int
	BatchSize int
	BatchWait time.Duration
	// DBTimeout bounds each issuing transaction and the readiness check, so
	// a database that stopped answering (a black-holed connection) cannot
	// hold a batch, or shutdown, forever. 0 means defaultDBTimeout.
	DBTimeout time.Duration
	// Publisher dead-letters, in Lambda mode, the messages of an event
	// source mapping's batch that can never be processed.
	Publisher interface {
		Publish(ctx context.Context, msgs []rabbit.Message) error
	}
}

const defaultDBTimeout = 10 * time.Second

func (c *Consumer) dbTimeout() time.Duration {
	if c.DBTimeout > 0 {
		return c.DBTimeout
	}
	return defaultDBTimeout
}

// errPaused ends a consume whose consumer was cancelled while the database
// failed, once the deliveries it had taken are settled; Run then consumes
// again as soon as the database answers.
var errPaused = errors.New("consumer paused while the database failed")

func newBackoff() *backoff.ExponentialBackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 100 * time.Millisecond
	b.MaxInterval = 5 * time.Second
	return b
}

// Run consumes until ctx ends, reconnecting with backoff when the broker
// goes away. On shutdown it stops taking deliveries, finishes and acks the
// batch in hand, and returns.
func (c *Consumer) Run(ctx context.Context) error {
	retry := newBackoff()
	for ctx.Err() == nil {
		start := time.Now()
		err := c.consume(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, errPaused) {
			retry.Reset()
			continue
		}
		if time.Since(start) > time.Minute {
			retry.Reset() // it had been consuming: this is a new outage
		}
		delay := retry.NextBackOff()
		c.Log.Warn("consumer stopped; reconnecting", "err", err, "retry_in", delay.String())
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
	}
	return nil
}

// consume runs one channel's worth of consuming; it returns when the channel
// closes or ctx ends, or once a consumer it cancelled has nothing in hand.
func (c *Consumer) consume(ctx context.Context) error {
	// Deliveries taken while the database is down could only be held until
	// a restart or a channel close returns them, each return spending one
	// of the message's deliveries (see Consumer).
	if err := c.databaseReady(ctx); err != nil {
		return fmt.Errorf("database unavailable; not consuming: %w", err)
	}
	// The last channel may have ended because queue "orders" was deleted
	// (the broker cancels its consumers) or Consume found it missing; the
	// connection only declares the topology when it is dialed.
	if err := c.Session.Redeclare(ctx); err != nil {
		return err
	}
	// Opening the channel, Qos and Consume wait for the broker's answer:
	// on shutdown, the session abandons the connection rather than wait
	// for a broker that stopped answering.
	const tag = "invoices"
	var conn *amqp.Connection
	var ch *amqp.Channel
	var deliveries <-chan amqp.Delivery
	err := c.Session.WithConnection(ctx, func(cn *amqp.Connection) (err error) {
		conn = cn
		if ch, err = conn.Channel(); err != nil {
			return fmt.Errorf("open channel: %w", err)
		}
		if err := ch.Qos(c.Prefetch, 0, false); err != nil {
			return fmt.Errorf("set prefetch: %w", err)
		}
		if deliveries, err = ch.Consume(rabbit.Queue, tag, false, false, false, false, nil); err != nil {
			return fmt.Errorf("consume %s: %w", rabbit.Queue, err)
		}
		return nil
	})
	if ch != nil {
		defer c.bounded(conn, ch.Close)
	}
	if err != nil {
		return err
	}
	c.Log.Info("consuming", "queue", rabbit.Queue, "prefetch", c.Prefetch, "batch_size", c.BatchSize)
	paused := false
	pause := func() {
		if paused {
			return
		}
		paused = true
		// Deliveries already prefetched stay in hand and are handled once
		// the database is back; the channel then closes the deliveries.
		if err := c.bounded(conn, func() error { return ch.Cancel(tag, false) }); err != nil {
			c.Log.Warn("cancel consumer", "err", err)
		}
	}
	for {
		batch, open := c.collect(ctx, deliveries)
		if len(batch) > 0 {
			// The batch in hand is finished even when shutdown begins meanwhile.
			if err := c.handle(context.WithoutCancel(ctx), ctx, ch, batch, pause); err != nil {
				return err
			}
		}
		if !open {
			if paused {
				return errPaused
			}
			return errors.New("delivery channel closed")
		}
		if ctx.Err() != nil {
			// Stop taking deliveries; the broker requeues those prefetched
			// but not yet handled when the channel closes.
			_ = c.bounded(conn, func() error { return ch.Cancel(tag, false) })
			return nil
		}
	}
}

// brokerCallTimeout bounds a basic.cancel or channel.close, which wait for
// the broker's answer, so that a broker that stopped answering cannot hold
// shutdown until amqp091 gives up on the silent connection (15 s or more).
const brokerCallTimeout = 5 * time.Second

// bounded runs call, one of those, and abandons conn (see Session.Abandon)
// when it has not returned within brokerCallTimeout: the call then fails,
// and the broker requeues the channel's unacked deliveries when it drops
// the connection, as it would on a close.
func (c *Consumer) bounded(conn *amqp.Connection, call func() error) error {
	t := time.AfterFunc(brokerCallTimeout, func() { c.Session.Abandon(conn) })
	defer t.Stop()
	return call()
}

// idleGap ends a batch early when no further delivery arrived for that
// long: under load deliveries follow each other within microseconds, so a
// batch fills up; a lone message waits no longer than this.
const idleGap = 250 * time.Microsecond

// collect waits for one delivery, then takes more until BatchSize, until no
// delivery came for idleGap, or until BatchWait passed since the first.
// open is false once the channel has closed.
func (c *Consumer) collect(ctx context.Context, deliveries <-chan amqp.Delivery) (batch []amqp.Delivery, open bool) {
	select {
	case <-ctx.Done():
		return nil, true
	case d, ok := <-deliveries:
		if !ok {
			return nil, false
		}
		batch = append(batch, d)
	}
	if c.BatchWait <= 0 {
		return batch, true
	}
	deadline := time.NewTimer(c.BatchWait)
	defer deadline.Stop()
	idle := time.NewTimer(min(idleGap, c.BatchWait))
	defer idle.Stop()
	for len(batch) < c.BatchSize {
		select {
		case d, ok := <-deliveries:
			if !ok {
				return batch, false
			}
			batch = append(batch, d)
			idle.Reset(min(idleGap, c.BatchWait))
		case <-idle.C:
			return batch, true
		case <-deadline.C:
			return batch, true
		}
	}
	return batch, true
}

// databaseReady checks, within DBTimeout, that the database answers.
func (c *Consumer) databaseReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.dbTimeout())
	defer cancel()
	return c.Store.Ping(ctx)
}

// issue runs one issuing transaction within DBTimeout. A retry of a held
// batch also gives way to stop: only the first attempt at the batch in
// hand is always seen through, so that shutdown acks what it can.
func (c *Consumer) issue(ctx, stop context.Context, retry bool, events []event.OrderCreated) ([]Invoice, error) {
	ctx, cancel := context.WithTimeout(ctx, c.dbTimeout())
	defer cancel()
	if retry {
		defer context.AfterFunc(stop, cancel)()
	}
	return c.Store.Issue(ctx, events)
}

// refusedForData reports whether err means the message itself can never be
// issued, whatever the retries: it is invalid, or the database refused its
// values (see postgres.IsDataError). Everything else is held and retried.
func refusedForData(err error) bool {
	return errors.Is(err, event.ErrInvalid) || postgres.IsDataError(err)
}

// handle issues the invoices of one batch and settles its deliveries.
// When the database refuses the batch for its data, each message is issued
// alone and the ones refused are dead-lettered. Any other failure (an
// outage, a timeout, a read-only or half-migrated database) holds the
// deliveries, unacked and with the consumer cancelled through pause, and
// retries with backoff until the database takes them or stop ends; then
// they are left unacked for redelivery.
func (c *Consumer) handle(ctx, stop context.Context, ch settler, batch []amqp.Delivery, pause func()) error {
	events := make([]event.OrderCreated, 0, len(batch))
	good := make([]amqp.Delivery, 0, len(batch))
	spans := make([]trace.Span, 0, len(batch))
	defer func() {
		for _, span := range spans {
			span.End()
		}
	}()
	for _, d := range batch {
		// Each message's span continues the trace of the order it carries.
		_, span := tracer.Start(rabbit.Extract(ctx, d.Headers), "process "+rabbit.Queue,
			trace.WithSpanKind(trace.SpanKindConsumer),
			trace.WithAttributes(rabbit.MessagingAttributes(rabbit.Queue, d.RoutingKey, d.MessageId, len(d.Body))...),
			trace.WithAttributes(semconv.MessagingOperationTypeProcess, semconv.MessagingOperationName("process"),
				attribute.Bool("messaging.rabbitmq.redelivered", d.Redelivered)))
		if d.Redelivered {
			messagesRedelivered.Add(ctx, 1)
		}
		e, err := event.Parse(d.Body)
		if err != nil {
			c.reject(trace.ContextWithSpan(ctx, span), span, d, err)
			span.End()
			continue
		}
		spans = append(spans, span)
		events = append(events, e)
		good = append(good, d)
	}
	if len(good) == 0 {
		return nil
	}
	// The batch's transaction sits under the first message's span, and
	// links every message of the batch.
	links := make([]trace.Link, len(spans))
	for i, span := range spans {
		links[i] = trace.Link{SpanContext: span.SpanContext()}
	}
	batchCtx, batchSpan := tracer.Start(trace.ContextWithSpan(ctx, spans[0]), "issue invoices",
		trace.WithLinks(links...), trace.WithAttributes(semconv.MessagingBatchMessageCount(len(good))))
	defer batchSpan.End()
	// held is what is still in hand; spans stays whole for the deferred End.
	held, heldSpans, heldEvents := good, spans, events
	retry := newBackoff()
	for attempt := 0; ; attempt++ {
		issued, err := c.issue(batchCtx, stop, attempt > 0, heldEvents)
		if err == nil {
			c.Log.DebugContext(batchCtx, "batch issued", "deliveries", len(held), "invoices", len(issued))
			if err := ch.Ack(held[len(held)-1].DeliveryTag, true); err != nil {
				return fmt.Errorf("ack batch: %w", err)
			}
			recordIssued(ctx, heldEvents, issued)
			return nil
		}
		if refusedForData(err) {
			var settled int
			settled, err = c.handleOneByOne(batchCtx, ch, held, heldSpans, heldEvents, err)
			if err == nil {
				return nil
			}
			if settled < 0 {
				return err
			}
			// The database failed for a reason of its own part way: hold
			// the rest like any other failed batch.
			held, heldSpans, heldEvents = held[settled:], heldSpans[settled:], heldEvents[settled:]
		}
		// Stop taking deliveries before saying so, so that whoever reads
		// the log line may count on none being taken after it.
		pause()
		delay := retry.NextBackOff()
		c.Log.WarnContext(batchCtx, "database unavailable; holding batch", "deliveries", len(held), "err", err, "retry_in", delay.String())
		select {
		case <-stop.Done():
			return fmt.Errorf("shutdown while the database is unavailable: %w", err)
		case <-time.After(delay):
		}
		if ch.IsClosed() {
			return errors.New("channel closed while the database was unavailable")
		}
	}
}

// settler settles the deliveries of a batch once their invoices are
// committed: an AMQP channel, or, in Lambda, the batch an event source
// mapping delivered.
type settler interface {
	Ack(tag uint64, multiple bool) error
	IsClosed() bool
}

// recordIssued counts a batch's outcomes and each new invoice's latency
// from its order's creation.
func recordIssued(ctx context.Context, events []event.OrderCreated, issued []Invoice) {
	created := make(map[uuid.UUID]time.Time, len(events))
	for _, e := range events {
		created[e.OrderID] = e.OccurredAt
	}
	for _, inv := range issued {
		if t := created[inv.OrderID]; !t.IsZero() {
			orderToInvoice.Record(ctx, inv.IssuedAt.Sub(t).Seconds())
		}
	}
	messagesProcessed.Add(ctx, int64(len(issued)), metric.WithAttributes(outcome("invoiced")))
	if dup := len(events) - len(issued); dup > 0 {
		messagesProcessed.Add(ctx, int64(dup), metric.WithAttributes(outcome("duplicate")))
	}
}

func outcome(v string) attribute.KeyValue { return attribute.String("outcome", v) }

// handleOneByOne isolates the message a batch failed on: each event is
// issued alone, and the ones the database refuses for their data are
// dead-lettered. When an event fails for any other reason it stops and
// returns that error with how many deliveries it settled, the rest being
// still in hand; settled is -1 when the channel failed.
func (c *Consumer) handleOneByOne(ctx context.Context, ch settler, good []amqp.Delivery, spans []trace.Span, events []event.OrderCreated, batchErr error) (settled int, err error) {
	c.Log.WarnContext(ctx, "batch refused; issuing one by one", "deliveries", len(good), "err", batchErr)
	for i, d := range good {
		one := trace.ContextWithSpan(ctx, spans[i])
		issued, err := c.issue(one, ctx, false, events[i:i+1])
		switch {
		case err == nil:
			if err := d.Ack(false); err != nil {
				return -1, fmt.Errorf("ack: %w", err)
			}
			recordIssued(one, events[i:i+1], issued)
		case refusedForData(err):
			c.reject(one, spans[i], d, err)
		default:
			return i, err
		}
	}
	return len(good), nil
}

func (c *Consumer) reject(ctx context.Context, span trace.Span, d amqp.Delivery, reason error) {
	span.RecordError(reason)
	span.SetStatus(codes.Error, "dead-lettered: "+reason.Error())
	messagesProcessed.Add(ctx, 1, metric.WithAttributes(outcome("dead_lettered")))
	c.Log.ErrorContext(ctx, "message dead-lettered", "message_id", d.MessageId, "redelivered", d.Redelivered, "reason", reason.Error())
	if err := d.Nack(false, false); err != nil {
		c.Log.WarnContext(ctx, "nack failed; the message will be redelivered", "message_id", d.MessageId, "err", err)
	}
}

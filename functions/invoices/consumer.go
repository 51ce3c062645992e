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
}

// Consumer turns order.created deliveries from queue "orders" into invoices.
// Deliveries are acked only after the transaction that issued their invoices
// committed; a message that can never succeed is rejected without requeue,
// which dead-letters it to "orders.dead".
type Consumer struct {
	Session   *rabbit.Session
	Store     issuer
	Log       *slog.Logger
	Prefetch  int
	BatchSize int
	BatchWait time.Duration
}

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
// closes or ctx ends.
func (c *Consumer) consume(ctx context.Context) error {
	// The last channel may have ended because queue "orders" was deleted
	// (the broker cancels its consumers) or Consume found it missing; the
	// connection only declares the topology when it is dialed.
	if err := c.Session.Redeclare(ctx); err != nil {
		return err
	}
	ch, err := c.Session.Channel(ctx)
	if err != nil {
		return err
	}
	defer ch.Close()
	if err := ch.Qos(c.Prefetch, 0, false); err != nil {
		return fmt.Errorf("set prefetch: %w", err)
	}
	const tag = "invoices"
	deliveries, err := ch.Consume(rabbit.Queue, tag, false, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("consume %s: %w", rabbit.Queue, err)
	}
	c.Log.Info("consuming", "queue", rabbit.Queue, "prefetch", c.Prefetch, "batch_size", c.BatchSize)
	for {
		batch, open := c.collect(ctx, deliveries)
		if len(batch) > 0 {
			// The batch in hand is finished even when shutdown begins meanwhile.
			if err := c.handle(context.WithoutCancel(ctx), ctx, ch, batch); err != nil {
				return err
			}
		}
		if !open {
			return errors.New("delivery channel closed")
		}
		if ctx.Err() != nil {
			// Stop taking deliveries; the broker requeues those prefetched
			// but not yet handled when the channel closes.
			_ = ch.Cancel(tag, false)
			return nil
		}
	}
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

// handle issues the invoices of one batch and settles its deliveries.
// Database outages are retried with backoff, holding the deliveries (no
// nack, so the delivery limit is not spent) until the database is back or
// stop ends; then they are left unacked for redelivery.
func (c *Consumer) handle(ctx, stop context.Context, ch *amqp.Channel, batch []amqp.Delivery) error {
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
	retry := newBackoff()
	for {
		issued, err := c.Store.Issue(batchCtx, events)
		if err == nil {
			c.Log.DebugContext(batchCtx, "batch issued", "deliveries", len(good), "invoices", len(issued))
			if err := ch.Ack(good[len(good)-1].DeliveryTag, true); err != nil {
				return fmt.Errorf("ack batch: %w", err)
			}
			recordIssued(ctx, events, issued)
			return nil
		}
		if !postgres.IsUnavailable(err) {
			return c.handleOneByOne(batchCtx, ch, good, spans, events, err)
		}
		delay := retry.NextBackOff()
		c.Log.WarnContext(batchCtx, "database unavailable; holding batch", "deliveries", len(good), "err", err, "retry_in", delay.String())
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
// issued alone, and the ones the database refuses for their content are
// dead-lettered.
func (c *Consumer) handleOneByOne(ctx context.Context, ch *amqp.Channel, good []amqp.Delivery, spans []trace.Span, events []event.OrderCreated, batchErr error) error {
	c.Log.WarnContext(ctx, "batch refused; issuing one by one", "deliveries", len(good), "err", batchErr)
	for i, d := range good {
		one := trace.ContextWithSpan(ctx, spans[i])
		issued, err := c.Store.Issue(one, events[i:i+1])
		switch {
		case err == nil:
			if err := d.Ack(false); err != nil {
				return fmt.Errorf("ack: %w", err)
			}
			recordIssued(one, events[i:i+1], issued)
		case postgres.IsUnavailable(err):
			return fmt.Errorf("database unavailable: %w", err) // unacked: redelivered later
		default:
			c.reject(one, spans[i], d, err)
		}
	}
	return nil
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

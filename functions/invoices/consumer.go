package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/cenkalti/backoff/v5"
	amqp "github.com/rabbitmq/amqp091-go"

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
		err := c.consume(ctx)
		if ctx.Err() != nil {
			return nil
		}
		delay := retry.NextBackOff()
		c.Log.Warn("consumer stopped; reconnecting", "err", err, "retry_in", delay.String())
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		if err == nil {
			retry.Reset()
		}
	}
	return nil
}

// consume runs one channel's worth of consuming; it returns when the channel
// closes or ctx ends.
func (c *Consumer) consume(ctx context.Context) error {
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

// collect waits for one delivery, then takes what else is ready (waiting up
// to BatchWait) up to BatchSize. open is false once the channel has closed.
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
	var timeout <-chan time.Time
	if c.BatchWait > 0 {
		t := time.NewTimer(c.BatchWait)
		defer t.Stop()
		timeout = t.C
	}
	for len(batch) < c.BatchSize {
		if timeout == nil {
			select {
			case d, ok := <-deliveries:
				if !ok {
					return batch, false
				}
				batch = append(batch, d)
				continue
			default:
				return batch, true
			}
		}
		select {
		case d, ok := <-deliveries:
			if !ok {
				return batch, false
			}
			batch = append(batch, d)
		case <-timeout:
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
	for _, d := range batch {
		e, err := event.Parse(d.Body)
		if err != nil {
			c.reject(d, err)
			continue
		}
		events = append(events, e)
		good = append(good, d)
	}
	if len(good) == 0 {
		return nil
	}
	retry := newBackoff()
	for {
		issued, err := c.Store.Issue(ctx, events)
		if err == nil {
			c.Log.Debug("batch issued", "deliveries", len(good), "invoices", len(issued))
			if err := ch.Ack(good[len(good)-1].DeliveryTag, true); err != nil {
				return fmt.Errorf("ack batch: %w", err)
			}
			return nil
		}
		if !postgres.IsUnavailable(err) {
			return c.handleOneByOne(ctx, ch, good, events, err)
		}
		delay := retry.NextBackOff()
		c.Log.Warn("database unavailable; holding batch", "deliveries", len(good), "err", err, "retry_in", delay.String())
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

// handleOneByOne isolates the message a batch failed on: each event is
// issued alone, and the ones the database refuses for their content are
// dead-lettered.
func (c *Consumer) handleOneByOne(ctx context.Context, ch *amqp.Channel, good []amqp.Delivery, events []event.OrderCreated, batchErr error) error {
	c.Log.Warn("batch refused; issuing one by one", "deliveries", len(good), "err", batchErr)
	for i, d := range good {
		_, err := c.Store.Issue(ctx, events[i:i+1])
		switch {
		case err == nil:
			if err := d.Ack(false); err != nil {
				return fmt.Errorf("ack: %w", err)
			}
		case postgres.IsUnavailable(err):
			return fmt.Errorf("database unavailable: %w", err) // unacked: redelivered later
		default:
			c.reject(d, err)
		}
	}
	return nil
}

func (c *Consumer) reject(d amqp.Delivery, reason error) {
	c.Log.Error("message dead-lettered", "message_id", d.MessageId, "redelivered", d.Redelivered, "reason", reason.Error())
	if err := d.Nack(false, false); err != nil {
		c.Log.Warn("nack failed; the message will be redelivered", "message_id", d.MessageId, "err", err)
	}
}

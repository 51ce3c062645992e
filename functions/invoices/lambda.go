package invoices

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"invoicing/shared/rabbit"
	"invoicing/shared/runtime"
)

// DrainResult says what one scheduled drain did.
type DrainResult struct {
	Messages int `json:"messages"`
	// Left is how many messages the queue still held when the drain ended
	// (it ran out of time), as the broker counted them then.
	Left int `json:"left"`
}

// Drain is the consumer for a scheduled Lambda invocation: it takes what
// queue "orders" holds, a batch at a time with basic.get, issues the
// invoices and acks each batch after its commit, until the queue is empty
// or ctx ends. It takes nothing while the database fails, and holds no
// prefetched deliveries, so ending early returns no message to the queue
// and spends none of their deliveries (see Consumer).
func (c *Consumer) Drain(ctx context.Context) (DrainResult, error) {
	var res DrainResult
	if err := c.databaseReady(ctx); err != nil {
		return res, fmt.Errorf("database unavailable; not draining: %w", err)
	}
	if err := c.Session.Redeclare(ctx); err != nil { // the queue may have been deleted
		return res, err
	}
	ch, err := c.Session.Channel(ctx)
	if err != nil {
		return res, err
	}
	defer ch.Close()
	for ctx.Err() == nil {
		batch, left, err := getBatch(ch, c.BatchSize)
		if err != nil {
			return res, err
		}
		if len(batch) == 0 {
			return res, nil
		}
		// The batch in hand is seen through; ctx only stops its retries.
		if err := c.handle(context.WithoutCancel(ctx), ctx, ch, batch, func() {}); err != nil {
			return res, err
		}
		res.Messages += len(batch)
		res.Left = left
	}
	return res, nil
}

// getBatch takes up to n messages from queue "orders" without acking them,
// and returns how many the broker says remain.
func getBatch(ch *amqp.Channel, n int) ([]amqp.Delivery, int, error) {
	var batch []amqp.Delivery
	left := 0
	for len(batch) < n {
		d, ok, err := ch.Get(rabbit.Queue, false)
		if err != nil {
			return batch, 0, fmt.Errorf("get from %s: %w", rabbit.Queue, err)
		}
		if !ok {
			return batch, 0, nil
		}
		batch = append(batch, d)
		left = int(d.MessageCount)
	}
	return batch, left, nil
}

// HandleMessages issues the invoices of a batch that an Amazon MQ event
// source mapping delivered, through the same path as the consumer. The
// mapping acks the batch when the invocation succeeds and returns it to the
// queue when it fails, so: a redelivered message is a no-op; a failure of
// the database holds and retries within the invocation, then fails it (the
// batch comes again); and a message that can never be processed is
// published to the dead-letter exchange here, because the mapping has no
// dead-letter destination of its own and a failed invocation would return
// the whole batch, good messages included, until the delivery limit
// dead-letters all of them.
func (c *Consumer) HandleMessages(ctx context.Context, msgs []runtime.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	b := &mappedBatch{}
	batch := make([]amqp.Delivery, len(msgs))
	for i, m := range msgs {
		batch[i] = amqp.Delivery{
			Acknowledger: b,
			DeliveryTag:  uint64(i + 1),
			MessageId:    m.MessageID,
			Type:         m.Type,
			Headers:      amqp.Table(m.Headers),
			Redelivered:  m.Redelivered,
			Exchange:     rabbit.Exchange,
			RoutingKey:   rabbit.RoutingKeyOrderCreated,
			Body:         m.Body,
		}
	}
	if err := c.handle(context.WithoutCancel(ctx), ctx, b, batch, func() {}); err != nil {
		return err
	}
	if len(b.rejected) == 0 {
		return nil
	}
	dead := make([]rabbit.Message, 0, len(b.rejected))
	for _, tag := range b.rejected {
		d := batch[tag-1]
		dead = append(dead, rabbit.Message{
			Exchange: rabbit.DeadLetterExchange, RoutingKey: rabbit.Queue,
			MessageID: d.MessageId, Type: d.Type, Timestamp: time.Now(), Body: d.Body,
			Headers: amqp.Table{"x-first-death-reason": "rejected", "x-first-death-queue": rabbit.Queue},
		})
	}
	pctx, cancel := context.WithTimeout(ctx, runtime.Remaining(ctx, time.Second))
	defer cancel()
	if err := c.Publisher.Publish(pctx, dead); err != nil {
		// The invocation fails, the batch comes again: its invoices are
		// no-ops then, and these are dead-lettered on the next try.
		return fmt.Errorf("dead-letter %d messages: %w", len(dead), err)
	}
	return nil
}

// mappedBatch settles an event source mapping's batch in memory: acks need
// nothing (the mapping acks the batch when the invocation succeeds), and
// rejections are collected to be dead-lettered.
type mappedBatch struct {
	mu       sync.Mutex
	rejected []uint64
}

func (b *mappedBatch) Ack(uint64, bool) error { return nil }
func (b *mappedBatch) IsClosed() bool         { return false }

func (b *mappedBatch) Nack(tag uint64, multiple, requeue bool) error {
	if multiple || requeue {
		return errors.New("a mapped batch is only rejected message by message, without requeue")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rejected = append(b.rejected, tag)
	return nil
}

func (b *mappedBatch) Reject(tag uint64, requeue bool) error { return b.Nack(tag, false, requeue) }

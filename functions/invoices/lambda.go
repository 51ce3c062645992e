package invoices

import (
	"context"
	"errors"
	"fmt"
	"slices"
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
		// A batch's first attempt runs to its end (up to DBTimeout) even
		// past ctx; take one only while that still fits, or Lambda would
		// end the process mid-transaction and the batch would go back.
		if d, ok := ctx.Deadline(); ok && time.Until(d) < c.dbTimeout() {
			return res, nil
		}
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
// mapping acks the batch when the invocation succeeds and redelivers it
// when it fails, and has no dead-letter destination of its own; every
// redelivery spends one of the queue's deliveries and one of the
// mapping's. So: a redelivered message is a no-op; a message that can
// never be processed is published to the dead-letter exchange here; and
// when the database fails, the batch is held and retried until shortly
// before the deadline and what is still unsettled is then published back
// to queue "orders" as new messages, the invocation succeeding, so that an
// outage never makes good orders run out of deliveries.
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
	// Hold and retry a failing database until shortly before the deadline,
	// leaving time to hand the batch back below.
	hold, cancel := context.WithTimeout(ctx, runtime.Remaining(ctx, handBackMargin))
	defer cancel()
	var dead []rabbit.Message
	if err := c.handle(context.WithoutCancel(ctx), hold, b, batch, func() {}); err != nil {
		// The database is failing. Failing the invocation would make the
		// mapping redeliver the batch, each time spending one of the
		// broker's deliveries and one of the mapping's redeliveries, so an
		// outage of a few minutes would give good orders up. Instead the
		// messages not yet settled go back to the end of queue "orders",
		// as new messages, and the invocation succeeds.
		back := b.unsettled(batch)
		c.Log.WarnContext(ctx, "database failing; messages handed back to the queue", "messages", len(back), "err", err)
		for _, d := range back {
			dead = append(dead, rabbit.Message{
				Exchange: "", RoutingKey: rabbit.Queue,
				MessageID: d.MessageId, Type: d.Type, Timestamp: time.Now(), Body: d.Body, Headers: d.Headers,
			})
		}
	}
	for _, tag := range b.rejected {
		d := batch[tag-1]
		dead = append(dead, rabbit.Message{
			Exchange: rabbit.DeadLetterExchange, RoutingKey: rabbit.Queue,
			MessageID: d.MessageId, Type: d.Type, Timestamp: time.Now(), Body: d.Body,
			Headers: amqp.Table{"x-first-death-reason": "rejected", "x-first-death-queue": rabbit.Queue},
		})
	}
	if len(dead) == 0 {
		return nil
	}
	pctx, cancel := context.WithTimeout(ctx, runtime.Remaining(ctx, time.Second))
	defer cancel()
	if err := c.Publisher.Publish(pctx, dead); err != nil {
		// The invocation fails, the batch comes again: its invoices are
		// no-ops then, and the rest is handed back on the next try.
		return fmt.Errorf("hand back or dead-letter %d messages: %w", len(dead), err)
	}
	return nil
}

// handBackMargin is kept back from an Amazon MQ invocation's time to hand
// the messages of a batch back to the queue when the database fails.
const handBackMargin = 3 * time.Second

// mappedBatch settles an event source mapping's batch in memory: acks need
// nothing (the mapping acks the batch when the invocation succeeds), and
// rejections are collected to be dead-lettered.
type mappedBatch struct {
	mu       sync.Mutex
	rejected []uint64
	acked    map[uint64]bool
	ackedTo  uint64 // every tag up to this one was acked at once
}

func (b *mappedBatch) Ack(tag uint64, multiple bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if multiple {
		b.ackedTo = max(b.ackedTo, tag)
		return nil
	}
	if b.acked == nil {
		b.acked = map[uint64]bool{}
	}
	b.acked[tag] = true
	return nil
}

func (b *mappedBatch) IsClosed() bool { return false }

// unsettled returns the deliveries of batch neither acked nor rejected.
func (b *mappedBatch) unsettled(batch []amqp.Delivery) []amqp.Delivery {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []amqp.Delivery
	for _, d := range batch {
		if d.DeliveryTag <= b.ackedTo || b.acked[d.DeliveryTag] || slices.Contains(b.rejected, d.DeliveryTag) {
			continue
		}
		out = append(out, d)
	}
	return out
}

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

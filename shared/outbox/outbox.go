// Package outbox is the transactional outbox: Add writes an event in the same
// transaction as the data it describes, and Relay publishes stored events to
// RabbitMQ with confirms, deleting each row only once the broker acked it.
// An event may be published more than once; it is never lost.
//
// The table lives in the owning service's database:
//
//	CREATE TABLE outbox (
//	    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
//	    event_id     uuid        NOT NULL,
//	    event_type   text        NOT NULL,
//	    exchange     text        NOT NULL,
//	    routing_key  text        NOT NULL,
//	    body         bytea       NOT NULL,
//	    headers      jsonb       NOT NULL DEFAULT '{}',
//	    created_at   timestamptz NOT NULL DEFAULT now(),
//	    attempts     int         NOT NULL DEFAULT 0,
//	    last_error   text
//	);
//
// and, for rows the relay gave up on, a table outbox_failed with the same
// columns (id without identity, last_error NOT NULL) and failed_at.
package outbox

import (
	"context"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
)

// NotifyChannel is the LISTEN/NOTIFY channel relays listen on, so that a
// writer in another process (or an operator, after moving rows back from
// outbox_failed) can wake them: SELECT pg_notify('outbox', '1'). Add does
// not notify: a NOTIFY on every commit wakes a listening backend and the
// relay's connection each time, and a relay in the writing process is
// woken directly by Relay.Wake instead.
const NotifyChannel = "outbox"

// Message is one stored event.
type Message struct {
	EventID    uuid.UUID
	Type       string
	Exchange   string
	RoutingKey string
	Body       []byte
	// Headers travel as AMQP headers; they carry the W3C trace context of
	// the request that stored the event.
	Headers map[string]string
}

// TraceHeaders returns the trace context of ctx as outbox headers. Add
// stores them with each event whose Headers are nil, so the relay's publish
// span, later and elsewhere, joins the trace that stored the event. Callers
// that store events on behalf of several requests set each event's Headers
// from its own request.
func TraceHeaders(ctx context.Context) map[string]string {
	h := map[string]string{}
	otel.GetTextMapPropagator().Inject(ctx, propagation.MapCarrier(h))
	return h
}

const insertSQL = `
INSERT INTO outbox (event_id, event_type, exchange, routing_key, body, headers)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::jsonb[])`

// Add stores msgs in tx. It is one statement whatever the number of
// messages. Once tx has committed, the caller wakes its relay (Relay.Wake),
// or relays find the rows on their next sweep.
func Add(ctx context.Context, tx pgx.Tx, msgs ...Message) error {
	if len(msgs) == 0 {
		return nil
	}
	if _, err := tx.Exec(ctx, insertSQL, insertArgs(ctx, msgs)...); err != nil {
		return fmt.Errorf("insert outbox: %w", err)
	}
	return nil
}

// Queue adds Add's statement to b, a batch that runs in a transaction.
func Queue(ctx context.Context, b *pgx.Batch, msgs ...Message) {
	if len(msgs) == 0 {
		return
	}
	b.Queue(insertSQL, insertArgs(ctx, msgs)...)
}

func insertArgs(ctx context.Context, msgs []Message) []any {
	ids := make([][16]byte, len(msgs)) // pgx's binary uuid encoder, not driver.Valuer
	types := make([]string, len(msgs))
	exchanges := make([]string, len(msgs))
	keys := make([]string, len(msgs))
	bodies := make([][]byte, len(msgs))
	headers := make([]map[string]string, len(msgs))
	for i, m := range msgs {
		ids[i], types[i], exchanges[i], keys[i], bodies[i] = m.EventID, m.Type, m.Exchange, m.RoutingKey, m.Body
		headers[i] = m.Headers
		if headers[i] == nil {
			headers[i] = TraceHeaders(ctx)
		}
	}
	return []any{ids, types, exchanges, keys, bodies, headers}
}

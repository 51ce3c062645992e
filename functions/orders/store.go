package orders

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"invoicing/shared/event"
	"invoicing/shared/outbox"
	"invoicing/shared/postgres"
	"invoicing/shared/rabbit"
)

// Store keeps orders, their outbox events and idempotent responses in the
// orders database. It owns every transaction.
type Store struct {
	pool     *pgxpool.Pool
	writer   *batchWriter
	timeouts Timeouts
	onCommit func()
}

// Timeouts bound a create's database work.
type Timeouts struct {
	// DB bounds everything up to the commit: waiting for a writer, the
	// transaction, its COMMIT.
	DB time.Duration
	// Lookup bounds finding out, on another connection, whether a
	// transaction whose COMMIT went unanswered committed.
	Lookup time.Duration
}

// DefaultTimeouts are the Timeouts of a Store made without WithTimeouts.
var DefaultTimeouts = Timeouts{DB: 10 * time.Second, Lookup: 2 * time.Second}

// StoreOption adjusts a Store made by NewStore.
type StoreOption func(*Store)

// WithTimeouts sets the bounds of a create's database work.
func WithTimeouts(t Timeouts) StoreOption { return func(s *Store) { s.timeouts = t } }

// OnCommit sets what the store calls, without waiting on it, after a
// transaction that stored orders and their events committed: the relay's
// Wake.
func OnCommit(f func()) StoreOption { return func(s *Store) { s.onCommit = f } }

// NewStore returns a Store over pool whose creates without an idempotency
// key are committed in shared transactions by writers goroutines, up to
// maxBatch orders each. Close stops them.
func NewStore(pool *pgxpool.Pool, writers, maxBatch int, opts ...StoreOption) *Store {
	s := &Store{pool: pool, timeouts: DefaultTimeouts, onCommit: func() {}}
	for _, o := range opts {
		o(s)
	}
	s.writer = newBatchWriter(pool, writers, maxBatch, s.timeouts, s.onCommit)
	return s
}

// Close stops the batch writers once the batches in hand are committed.
func (s *Store) Close() { s.writer.close() }

// OutcomeUnknownError is the answer to a create whose COMMIT was sent but
// not confirmed, when looking the order up afterwards failed too: the order
// may or may not be stored. GET /orders/{OrderID} tells, once the database
// answers again.
type OutcomeUnknownError struct {
	OrderID uuid.UUID
	Err     error
}

func (e *OutcomeUnknownError) Error() string {
	return fmt.Sprintf("order %s may or may not be stored: %v", e.OrderID, e.Err)
}

func (e *OutcomeUnknownError) Unwrap() error { return e.Err }

// notStored is the error of a transaction whose unconfirmed COMMIT turned
// out not to have taken effect: the cause, no longer marked unknown.
func notStored(unknown *postgres.CommitUnknownError) error {
	return fmt.Errorf("commit unconfirmed and not applied: %w", unknown.Err)
}

// settle finds out, within timeout and whether or not the request is still
// there, how the transaction whose COMMIT went unanswered ended, once it
// can no longer change (see postgres.Settle): true when it committed, false
// when it aborted, and an error when that cannot be known, the transaction
// still being in progress or the check failing.
func settle(ctx context.Context, pool *pgxpool.Pool, timeout time.Duration, unknown *postgres.CommitUnknownError) (committed bool, err error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	status, err := postgres.Settle(ctx, pool, unknown.Xact)
	if err != nil {
		return false, err
	}
	return status == postgres.XactCommitted, nil
}

// Response is a stored answer to an idempotent POST, replayed on retry.
type Response struct {
	Status   int
	Location string
	Body     []byte
}

// IdempotentRequest identifies a POST sent with an Idempotency-Key.
type IdempotentRequest struct {
	Key  string
	Hash []byte // of the validated request, so formatting does not matter
}

// Create stores o and its order.created event in one transaction, shared
// with other orders created at the same moment. With an idempotency key it
// runs in a transaction of its own that also stores resp, and instead
// returns the response of an earlier request with the same key
// (replayed=true), ErrIdempotencyInFlight while that request is still
// running, or ErrIdempotencyMismatch when the earlier request had another body.
func (s *Store) Create(ctx context.Context, o Order, idem *IdempotentRequest, resp Response) (stored Response, replayed bool, err error) {
	msg, err := orderCreatedMessage(ctx, o)
	if err != nil {
		return Response{}, false, err
	}
	if idem == nil {
		if err := s.writer.submit(ctx, o, msg); err != nil {
			return Response{}, false, err
		}
		return resp, false, nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeouts.DB)
	defer cancel()
	err = postgres.InSettleableTx(ctx, s.pool, func(*pgx.Batch) {}, func(tx pgx.Tx) error {
		prev, found, err := claimIdempotencyKey(ctx, tx, *idem)
		if err != nil || found {
			stored, replayed = prev, found
			return err
		}
		if err := insertOrders(ctx, tx, []Order{o}, []outbox.Message{msg}); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx,
			`INSERT INTO idempotency_keys (key, request_hash, status, location, body) VALUES ($1, $2, $3, $4, $5)`,
			idem.Key, idem.Hash, resp.Status, resp.Location, resp.Body); err != nil {
			return fmt.Errorf("insert idempotency key: %w", err)
		}
		stored = resp
		return nil
	})
	var unknown *postgres.CommitUnknownError
	if errors.As(err, &unknown) {
		if replayed {
			// The transaction only read an earlier request's
			// committed response: whether it committed changes
			// nothing.
			return stored, replayed, nil
		}
		// The key and the order commit together, in this transaction.
		committed, settleErr := settle(ctx, s.pool, s.timeouts.Lookup, unknown)
		switch {
		case settleErr != nil:
			return Response{}, false, &OutcomeUnknownError{OrderID: o.ID, Err: errors.Join(unknown, settleErr)}
		case !committed:
			return Response{}, false, notStored(unknown)
		}
		s.onCommit()
		return stored, false, nil
	}
	if err != nil {
		return Response{}, false, err
	}
	if !replayed {
		s.onCommit()
	}
	return stored, replayed, nil
}

// CreateOne stores o and its event in a transaction of their own: the
// statements Create commits, one order per commit. The bench measures it as
// the ceiling that batching lifts.
func (s *Store) CreateOne(ctx context.Context, o Order) error {
	msg, err := orderCreatedMessage(ctx, o)
	if err != nil {
		return err
	}
	return postgres.InSettleableTx(ctx, s.pool, func(b *pgx.Batch) {
		queueOrders(ctx, b, []Order{o}, []outbox.Message{msg})
	}, nil)
}

// claimIdempotencyKey takes a transaction-scoped advisory lock on the key, so
// a concurrent request with the same key is told it is in flight rather than
// waiting, then looks for a completed earlier request. Because the order and
// the stored response commit together, a crash leaves no half-done key.
func claimIdempotencyKey(ctx context.Context, tx pgx.Tx, idem IdempotentRequest) (Response, bool, error) {
	var locked bool
	if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))`, idem.Key).Scan(&locked); err != nil {
		return Response{}, false, fmt.Errorf("lock idempotency key: %w", err)
	}
	if !locked {
		return Response{}, false, ErrIdempotencyInFlight
	}
	var prev Response
	var hash []byte
	err := tx.QueryRow(ctx, `SELECT request_hash, status, location, body FROM idempotency_keys WHERE key = $1`, idem.Key).
		Scan(&hash, &prev.Status, &prev.Location, &prev.Body)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return Response{}, false, nil
	case err != nil:
		return Response{}, false, fmt.Errorf("read idempotency key: %w", err)
	case !bytes.Equal(hash, idem.Hash):
		return Response{}, false, ErrIdempotencyMismatch
	}
	return prev, true, nil
}

// orderCreatedMessage builds o's event, carrying the trace context of ctx
// (the request) even when another request's transaction stores it.
func orderCreatedMessage(ctx context.Context, o Order) (outbox.Message, error) {
	evt := event.OrderCreated{
		EventID:     uuid.Must(uuid.NewV7()),
		Type:        event.TypeOrderCreated,
		OccurredAt:  o.CreatedAt,
		OrderID:     o.ID,
		Customer:    event.Customer{ID: o.CustomerID},
		TotalAmount: o.TotalAmount,
		Currency:    o.Currency,
	}
	body, err := json.Marshal(evt)
	if err != nil {
		return outbox.Message{}, fmt.Errorf("encode event: %w", err)
	}
	return outbox.Message{
		EventID:    evt.EventID,
		Type:       event.TypeOrderCreated,
		Exchange:   rabbit.Exchange,
		RoutingKey: rabbit.RoutingKeyOrderCreated,
		Body:       body,
		Headers:    outbox.TraceHeaders(ctx),
	}, nil
}

func jsonItems(items []Item) string {
	if items == nil {
		return "[]"
	}
	b, _ := json.Marshal(items) // Item has only strings and integers
	return string(b)
}

const orderColumns = `id, customer_id, total_amount, currency, status, items, created_at`

func scanOrder(row pgx.CollectableRow) (Order, error) {
	var o Order
	err := row.Scan(&o.ID, &o.CustomerID, &o.TotalAmount, &o.Currency, &o.Status, &o.Items, &o.CreatedAt)
	return o, err
}

// Get returns one order or ErrNotFound.
func (s *Store) Get(ctx context.Context, id uuid.UUID) (Order, error) {
	o, err := postgres.GetOne(ctx, s.pool, scanOrder, ErrNotFound, `SELECT `+orderColumns+` FROM orders WHERE id = $1`, id)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return Order{}, fmt.Errorf("get order: %w", err)
	}
	return o, err
}

// ListFilter selects a page of orders, newest first.
type ListFilter struct {
	CustomerID string
	After      uuid.UUID // exclusive; uuid.Nil for the first page
	Limit      int
}

// List returns up to f.Limit orders, newest first, after the cursor.
func (s *Store) List(ctx context.Context, f ListFilter) ([]Order, error) {
	q, args := postgres.PageQuery(`SELECT `+orderColumns+` FROM orders`,
		[]postgres.Filter{{Column: "customer_id", Value: f.CustomerID}}, f.After, f.Limit)
	rows, _ := s.pool.Query(ctx, q, args...)
	orders, err := pgx.CollectRows(rows, scanOrder)
	if err != nil {
		return nil, fmt.Errorf("list orders: %w", err)
	}
	return orders, nil
}

// PruneIdempotencyKeys deletes stored responses older than ttl.
func (s *Store) PruneIdempotencyKeys(ctx context.Context, ttl time.Duration) (int64, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM idempotency_keys WHERE created_at < now() - $1::interval`, ttl)
	if err != nil {
		return 0, fmt.Errorf("prune idempotency keys: %w", err)
	}
	return tag.RowsAffected(), nil
}

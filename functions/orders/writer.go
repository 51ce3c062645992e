package orders

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/trace"

	"invoicing/shared/outbox"
	"invoicing/shared/postgres"
)

// ErrStoreClosed is returned for a create submitted after Close.
var ErrStoreClosed = errors.New("order store is closed")

// errNoWriter is returned for a create that found no free writer within its
// database budget: it was never sent, so nothing was stored.
var errNoWriter = fmt.Errorf("no order writer became free in time: %w", context.DeadlineExceeded)

// batchWriter coalesces concurrent creates into shared transactions (group
// commit). Each request still gets its answer only after the transaction
// holding its order and outbox row committed, so durability is unchanged,
// but one commit (one WAL flush) now serves many orders. Batches form by
// themselves: a writer takes the first waiting create, then every create
// already waiting, up to max; while writers are busy committing, new
// creates queue up, so batches grow with load and stay at one when idle.
//
// Every create has a budget for the database (timeouts.DB) that starts
// when it is submitted: the wait for a writer and its transaction must fit
// in it, and a shared transaction ends at the earliest deadline of its
// creates. Only a COMMIT that went unanswered adds the lookup that finds
// out what happened (timeouts.Lookup). So an unreachable database answers
// every request within about DB + Lookup, and a shutdown waits no longer.
type batchWriter struct {
	pool     *pgxpool.Pool
	max      int
	timeouts Timeouts
	onCommit func()
	queue    chan *pendingCreate
	stop     chan struct{}
	// aside is the one slot for work a writer hands off so as to go on
	// with the next batch: settling an unanswered COMMIT, retrying a
	// rejected batch order by order. When it is taken, the writer does
	// that work itself, so a database that rejects or drops every batch
	// gets one transaction at most beyond the writers' own.
	aside chan struct{}
	wg    sync.WaitGroup
	once  sync.Once
	// waiting counts creates submitted but not yet taken by a writer, so
	// that tests can tell when a batch has formed.
	waiting atomic.Int64
}

type pendingCreate struct {
	ctx      context.Context
	deadline time.Time
	order    Order
	msg      outbox.Message
	done     chan error
}

func newBatchWriter(pool *pgxpool.Pool, writers, max int, timeouts Timeouts, onCommit func()) *batchWriter {
	w := &batchWriter{pool: pool, max: max, timeouts: timeouts, onCommit: onCommit, queue: make(chan *pendingCreate), stop: make(chan struct{}), aside: make(chan struct{}, 1)}
	for range writers {
		w.wg.Go(w.loop)
	}
	return w
}

// submit queues one create and waits for its transaction's outcome. Once
// queued, it waits even if ctx ends, so that the answer matches what was
// stored; a create whose ctx ended before its transaction began is not
// stored.
func (w *batchWriter) submit(ctx context.Context, o Order, msg outbox.Message) error {
	p := &pendingCreate{ctx: ctx, deadline: time.Now().Add(w.timeouts.DB), order: o, msg: msg, done: make(chan error, 1)}
	if err := w.enqueue(p); err != nil {
		return err
	}
	return <-p.done
}

func (w *batchWriter) enqueue(p *pendingCreate) error {
	w.waiting.Add(1)
	defer w.waiting.Add(-1)
	budget := time.NewTimer(time.Until(p.deadline))
	defer budget.Stop()
	select {
	case w.queue <- p:
		return nil
	case <-p.ctx.Done():
		return p.ctx.Err()
	case <-budget.C:
		return errNoWriter
	case <-w.stop:
		return ErrStoreClosed
	}
}

// close stops the writers after the batches in hand. Callers stop sending
// first (the HTTP server has shut down).
func (w *batchWriter) close() {
	w.once.Do(func() { close(w.stop) })
	w.wg.Wait()
}

func (w *batchWriter) loop() {
	for {
		var first *pendingCreate
		select {
		case first = <-w.queue:
		case <-w.stop:
			return
		}
		batch := []*pendingCreate{first}
	fill:
		for len(batch) < w.max {
			select {
			case p := <-w.queue:
				batch = append(batch, p)
			default:
				break fill
			}
		}
		w.commit(batch)
	}
}

// commit stores batch in one transaction and answers each create. A create
// whose client left or whose budget ran out before the transaction began
// is answered so and not stored.
func (w *batchWriter) commit(batch []*pendingCreate) {
	live := batch[:0]
	now := time.Now()
	for _, p := range batch {
		switch {
		case p.ctx.Err() != nil:
			p.done <- p.ctx.Err()
		case !now.Before(p.deadline):
			p.done <- errNoWriter
		default:
			live = append(live, p)
		}
	}
	if len(live) == 0 {
		return
	}
	// The transaction's spans join the first request's trace; the others
	// link to it. Its context outlives any one client going away, but not
	// the earliest budget among its creates.
	deadline := live[0].deadline
	for _, p := range live[1:] {
		if p.deadline.Before(deadline) {
			deadline = p.deadline
		}
	}
	ctx, cancel := context.WithDeadline(context.WithoutCancel(live[0].ctx), deadline)
	defer cancel()
	for _, p := range live[1:] {
		trace.SpanFromContext(p.ctx).AddLink(trace.LinkFromContext(ctx))
	}
	orders := make([]Order, len(live))
	msgs := make([]outbox.Message, len(live))
	for i, p := range live {
		orders[i], msgs[i] = p.order, p.msg
	}
	err := postgres.InSettleableTx(ctx, w.pool, func(b *pgx.Batch) { queueOrders(ctx, b, orders, msgs) }, nil)
	var unknown *postgres.CommitUnknownError
	switch {
	case errors.As(err, &unknown):
		// Finding out takes up to timeouts.Lookup: the writer goes on with
		// the next batch meanwhile. ctx is cancelled once commit returns;
		// settle uses it only for its values (it looks up without
		// cancellation, within timeouts.Lookup).
		w.beside(func() { w.settle(ctx, live, unknown) })
		return
	case err == nil || len(live) == 1 || !postgres.IsDataRejected(err):
		// Retrying alone cures only a row the server rejected. An
		// unreachable database would fail each retry again, slowly.
		if err == nil {
			w.onCommit()
		}
		for _, p := range live {
			p.done <- err
		}
		return
	}
	// One bad row must not fail its neighbours: retry each alone, but not
	// for a client that has left meanwhile: nobody would learn of it. The
	// retries run beside the writer, which goes on with the next batch.
	w.beside(func() {
		for _, p := range live {
			w.commit([]*pendingCreate{p})
		}
	})
}

// beside runs f in a goroutine of its own when the writers' one slot for
// such work is free, and here otherwise. Close waits for it either way.
func (w *batchWriter) beside(f func()) {
	select {
	case w.aside <- struct{}{}:
		w.wg.Go(func() {
			defer func() { <-w.aside }()
			f()
		})
	default:
		f()
	}
}

// settle answers the creates of a transaction whose COMMIT went unanswered
// with how that transaction ended once it can no longer change: all of its
// orders are stored or none is. When even that cannot be found out, each is
// answered with *OutcomeUnknownError.
func (w *batchWriter) settle(ctx context.Context, live []*pendingCreate, unknown *postgres.CommitUnknownError) {
	committed, err := settle(ctx, w.pool, w.timeouts.Lookup, unknown)
	if err == nil && committed {
		w.onCommit()
	}
	for _, p := range live {
		switch {
		case err != nil:
			p.done <- &OutcomeUnknownError{OrderID: p.order.ID, Err: errors.Join(unknown, err)}
		case committed:
			p.done <- nil
		default:
			p.done <- notStored(unknown)
		}
	}
}

const insertOrdersSQL = `
INSERT INTO orders (id, customer_id, total_amount, currency, status, items, created_at)
SELECT id, customer_id, total_amount, currency, status, items::jsonb, created_at
FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::timestamptz[])
     AS t(id, customer_id, total_amount, currency, status, items, created_at)`

// queueOrders adds to b the two statements that store orders and their
// events, whatever their number: one for the orders, one for the outbox.
func queueOrders(ctx context.Context, b *pgx.Batch, orders []Order, msgs []outbox.Message) {
	b.Queue(insertOrdersSQL, ordersArgs(orders)...)
	outbox.Queue(ctx, b, msgs...)
}

// insertOrders runs queueOrders' statements in tx.
func insertOrders(ctx context.Context, tx pgx.Tx, orders []Order, msgs []outbox.Message) error {
	if _, err := tx.Exec(ctx, insertOrdersSQL, ordersArgs(orders)...); err != nil {
		return fmt.Errorf("insert orders: %w", err)
	}
	return outbox.Add(ctx, tx, msgs...)
}

func ordersArgs(orders []Order) []any {
	n := len(orders)
	// [16]byte and time.Time take pgx's direct binary encoders; uuid.UUID
	// would go through driver.Valuer and a text round trip.
	ids := make([][16]byte, n)
	customers := make([]string, n)
	amounts := make([]int64, n)
	currencies := make([]string, n)
	statuses := make([]string, n)
	items := make([]string, n)
	created := make([]time.Time, n)
	for i, o := range orders {
		ids[i], customers[i], amounts[i], currencies[i], statuses[i], created[i] = o.ID, o.CustomerID, o.TotalAmount, o.Currency, o.Status, o.CreatedAt
		items[i] = jsonItems(o.Items)
	}
	return []any{ids, customers, amounts, currencies, statuses, items, created}
}

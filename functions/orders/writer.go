package orders

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel/trace"

	"invoicing/shared/outbox"
	"invoicing/shared/postgres"
)

// ErrStoreClosed is returned for a create submitted after Close.
var ErrStoreClosed = errors.New("order store is closed")

// batchWriter coalesces concurrent creates into shared transactions (group
// commit). Each request still gets its answer only after the transaction
// holding its order and outbox row committed, so durability is unchanged,
// but one commit (one WAL flush) now serves many orders. Batches form by
// themselves: a writer takes the first waiting create, then every create
// already waiting, up to max; while writers are busy committing, new
// creates queue up, so batches grow with load and stay at one when idle.
type batchWriter struct {
	pool  *pgxpool.Pool
	max   int
	queue chan *pendingCreate
	stop  chan struct{}
	wg    sync.WaitGroup
	once  sync.Once
}

type pendingCreate struct {
	ctx   context.Context
	order Order
	msg   outbox.Message
	done  chan error
}

func newBatchWriter(pool *pgxpool.Pool, writers, max int) *batchWriter {
	w := &batchWriter{pool: pool, max: max, queue: make(chan *pendingCreate), stop: make(chan struct{})}
	for range writers {
		w.wg.Go(w.loop)
	}
	return w
}

// submit queues one create and waits for its transaction's outcome. Once
// queued, it waits even if ctx ends, so that the answer matches what was
// stored; a create whose ctx ended before its batch began is not stored.
func (w *batchWriter) submit(ctx context.Context, o Order, msg outbox.Message) error {
	p := &pendingCreate{ctx: ctx, order: o, msg: msg, done: make(chan error, 1)}
	select {
	case w.queue <- p:
		return <-p.done
	case <-ctx.Done():
		return ctx.Err()
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

func (w *batchWriter) commit(batch []*pendingCreate) {
	live := batch[:0]
	for _, p := range batch {
		if err := p.ctx.Err(); err != nil {
			p.done <- err
			continue
		}
		live = append(live, p)
	}
	if len(live) == 0 {
		return
	}
	// The transaction's spans join the first request's trace; the others
	// link to it. Its context outlives any one client going away.
	ctx := context.WithoutCancel(live[0].ctx)
	for _, p := range live[1:] {
		trace.SpanFromContext(p.ctx).AddLink(trace.LinkFromContext(ctx))
	}
	orders := make([]Order, len(live))
	msgs := make([]outbox.Message, len(live))
	for i, p := range live {
		orders[i], msgs[i] = p.order, p.msg
	}
	err := postgres.InTx(ctx, w.pool, func(b *pgx.Batch) { queueOrders(ctx, b, orders, msgs) }, nil)
	if err == nil || len(live) == 1 {
		for _, p := range live {
			p.done <- err
		}
		return
	}
	// One bad row must not fail its neighbours: retry each alone.
	for _, p := range live {
		p.done <- postgres.InTx(context.WithoutCancel(p.ctx), w.pool, func(b *pgx.Batch) {
			queueOrders(p.ctx, b, []Order{p.order}, []outbox.Message{p.msg})
		}, nil)
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

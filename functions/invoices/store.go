package invoices

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"invoicing/shared/event"
	"invoicing/shared/postgres"
)

// Invoice is an issued invoice, as the API returns it.
type Invoice struct {
	ID         uuid.UUID `json:"id"`
	Number     string    `json:"number"`
	OrderID    uuid.UUID `json:"orderId"`
	CustomerID string    `json:"customerId"`
	Amount     int64     `json:"amount"`
	Currency   string    `json:"currency"`
	Status     string    `json:"status"`
	IssuedAt   time.Time `json:"issuedAt"`
}

// ErrNotFound is returned for an unknown invoice.
var ErrNotFound = errors.New("invoice not found")

// Store keeps invoices in the invoices database and owns its transactions.
type Store struct {
	pool *pgxpool.Pool
}

// Issue creates one invoice per order in events that has none yet, in one
// transaction, and returns the invoices it created. Events for orders that
// already have an invoice (redeliveries, duplicates) are skipped.
//
// Numbering: invoice numbers must be gapless per calendar year, which a
// sequence cannot give (a rolled-back nextval leaves a hole). Each year has
// a counter row; Issue locks it, numbers the new invoices last+1..last+k and
// writes last+k back, all in the batch's transaction. A rollback undoes the
// counter with the invoices, so no number is ever skipped, and numbers rise
// in commit order. The lock serialises issuers, but it is taken once per
// batch, not per invoice, so a batch of hundreds costs one lock hand-off. It
// also makes the duplicate check below race-free: no other transaction can
// insert an invoice between the check and the insert.
func (s *Store) Issue(ctx context.Context, events []event.OrderCreated) ([]Invoice, error) {
	var issued []Invoice
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		issued = issued[:0]
		var year int
		var now time.Time
		if err := tx.QueryRow(ctx, `SELECT extract(year FROM now() AT TIME ZONE 'UTC')::int, now()`).Scan(&year, &now); err != nil {
			return fmt.Errorf("read transaction time: %w", err)
		}
		var last int64
		err := tx.QueryRow(ctx, `
			INSERT INTO invoice_counters (year, last) VALUES ($1, 0)
			ON CONFLICT (year) DO UPDATE SET last = invoice_counters.last
			RETURNING last`, year).Scan(&last)
		if err != nil {
			return fmt.Errorf("lock invoice counter: %w", err)
		}

		orderIDs := make([]uuid.UUID, len(events))
		for i, e := range events {
			orderIDs[i] = e.OrderID
		}
		rows, _ := tx.Query(ctx, `SELECT order_id FROM invoices WHERE order_id = ANY($1)`, orderIDs)
		existing, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
		if err != nil {
			return fmt.Errorf("find existing invoices: %w", err)
		}
		seen := make(map[uuid.UUID]bool, len(events))
		for _, id := range existing {
			seen[id] = true
		}

		var (
			ids, eventIDs, orders []uuid.UUID
			numbers, customers    []string
			currencies            []string
			seqs, amounts         []int64
			orderTimes            []*time.Time
		)
		for _, e := range events {
			if seen[e.OrderID] {
				continue
			}
			seen[e.OrderID] = true
			last++
			inv := Invoice{
				ID: uuid.Must(uuid.NewV7()), Number: fmt.Sprintf("INV-%d-%06d", year, last),
				OrderID: e.OrderID, CustomerID: e.Customer.ID, Amount: e.TotalAmount,
				Currency: e.Currency, Status: "issued", IssuedAt: now,
			}
			issued = append(issued, inv)
			ids, numbers, seqs = append(ids, inv.ID), append(numbers, inv.Number), append(seqs, last)
			orders, eventIDs, customers = append(orders, e.OrderID), append(eventIDs, e.EventID), append(customers, e.Customer.ID)
			amounts, currencies = append(amounts, e.TotalAmount), append(currencies, e.Currency)
			var created *time.Time
			if !e.OccurredAt.IsZero() {
				created = &e.OccurredAt
			}
			orderTimes = append(orderTimes, created)
		}
		if len(issued) == 0 {
			return nil
		}
		if _, err := tx.Exec(ctx, `
			INSERT INTO invoices (id, number, year, seq, order_id, event_id, customer_id, amount, currency, order_created_at, issued_at)
			SELECT id, number, $3, seq, order_id, event_id, customer_id, amount, currency, order_created_at, $11
			FROM unnest($1::uuid[], $2::text[], $4::bigint[], $5::uuid[], $6::uuid[], $7::text[], $8::bigint[], $9::text[], $10::timestamptz[])
			     AS t(id, number, seq, order_id, event_id, customer_id, amount, currency, order_created_at)`,
			ids, numbers, year, seqs, orders, eventIDs, customers, amounts, currencies, orderTimes, now); err != nil {
			return fmt.Errorf("insert invoices: %w", err)
		}
		if _, err := tx.Exec(ctx, `UPDATE invoice_counters SET last = $2 WHERE year = $1`, year, last); err != nil {
			return fmt.Errorf("advance invoice counter: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return issued, nil
}

const invoiceColumns = `id, number, order_id, customer_id, amount, currency, status, issued_at`

func scanInvoice(row pgx.CollectableRow) (Invoice, error) {
	var v Invoice
	err := row.Scan(&v.ID, &v.Number, &v.OrderID, &v.CustomerID, &v.Amount, &v.Currency, &v.Status, &v.IssuedAt)
	return v, err
}

// Get returns one invoice or ErrNotFound.
func (s *Store) Get(ctx context.Context, id uuid.UUID) (Invoice, error) {
	rows, _ := s.pool.Query(ctx, `SELECT `+invoiceColumns+` FROM invoices WHERE id = $1`, id)
	v, err := pgx.CollectExactlyOneRow(rows, scanInvoice)
	if errors.Is(err, pgx.ErrNoRows) {
		return Invoice{}, ErrNotFound
	}
	if err != nil {
		return Invoice{}, fmt.Errorf("get invoice: %w", err)
	}
	return v, nil
}

// ListFilter selects a page of invoices, newest first.
type ListFilter struct {
	OrderID    uuid.UUID
	CustomerID string
	After      uuid.UUID
	Limit      int
}

// List returns up to f.Limit invoices, newest first, after the cursor.
func (s *Store) List(ctx context.Context, f ListFilter) ([]Invoice, error) {
	q, args := postgres.PageQuery(`SELECT `+invoiceColumns+` FROM invoices`,
		[]postgres.Filter{{Column: "order_id", Value: f.OrderID}, {Column: "customer_id", Value: f.CustomerID}}, f.After, f.Limit)
	rows, _ := s.pool.Query(ctx, q, args...)
	invoices, err := pgx.CollectRows(rows, scanInvoice)
	if err != nil {
		return nil, fmt.Errorf("list invoices: %w", err)
	}
	return invoices, nil
}

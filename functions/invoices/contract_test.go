package invoices

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"invoicing/functions/invoices/migrations"
	"invoicing/functions/orders"
	ordermigrations "invoicing/functions/orders/migrations"
	"invoicing/shared/event"
	"invoicing/shared/testenv"
)

// acceptedCurrencies are every code the shared currency rule accepts.
func acceptedCurrencies() []string {
	var codes []string
	for a := 'A'; a <= 'Z'; a++ {
		for b := 'A'; b <= 'Z'; b++ {
			for c := 'A'; c <= 'Z'; c++ {
				if code := string([]rune{a, b, c}); event.CheckCurrency(code) == nil {
					codes = append(codes, code)
				}
			}
		}
	}
	return codes
}

// randomOrderBody draws a POST /orders body near the edges of every rule:
// customer ids of 0 to 66 characters from several scripts (controls and
// invisible characters included), amounts around the maximum, items whose
// sum lands on, under or past it. Some bodies are refused; that is the point.
func randomOrderBody(r *rand.Rand) string {
	alphabets := [][]rune{
		[]rune("abcXYZ019-_.@ "), []rune("éüñçàøß"), []rune("漢字日本語中文한국어"), []rune("😀🎉🚀👍"),
		{0, '\t', '\n', 0x7f, 0x200b, 0x2028, 0xfeff}, // never printable
	}
	n := r.IntN(67)
	var id strings.Builder
	for range n {
		alpha := alphabets[r.IntN(len(alphabets)-1)]
		if r.IntN(500) == 0 {
			alpha = alphabets[len(alphabets)-1]
		}
		id.WriteRune(alpha[r.IntN(len(alpha))])
	}
	body := map[string]any{"customerId": id.String()}
	if r.IntN(2) == 0 {
		body["currency"] = []string{"BRL", "USD", "EUR", "JPY", "KWD"}[r.IntN(5)]
	}
	amounts := []int64{1, 2, 999, event.MaxAmount - 1, event.MaxAmount, event.MaxAmount + 1, r.Int64N(event.MaxAmount) + 1}
	if r.IntN(2) == 0 {
		body["totalAmount"] = amounts[r.IntN(len(amounts))]
		return mustJSON(body)
	}
	var items []map[string]any
	var sum int64
	for i := range r.IntN(5) + 1 {
		q := []int64{1, 2, 1_000_000}[r.IntN(3)]
		p := []int64{0, 1, event.MaxAmount / q, event.MaxAmount/q - 1, r.Int64N(event.MaxAmount/q + 1)}[r.IntN(5)]
		items = append(items, map[string]any{"sku": fmt.Sprintf("sku-%d", i), "quantity": q, "unitPrice": p})
		sum += q * p // at most 5 lines of at most 10^12: no overflow
	}
	body["items"] = items
	if r.IntN(3) == 0 {
		body["totalAmount"] = sum
	}
	return mustJSON(body)
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// Every order the orders API accepts becomes an event that event.Parse (the
// consumer's parser) accepts with the same fields, and that the invoices
// store issues as one invoice. The orders side is the real handler over its
// real migrated database, the event the outbox row it wrote; the invoices
// side is Store.Issue over its real migrated database.
func TestEveryAcceptedOrderIsInvoiced(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	_, ordersPool := testenv.MigratedDatabase(t, ordermigrations.FS)
	orderStore := orders.NewStore(ordersPool, 2, 64)
	t.Cleanup(orderStore.Close)
	api := orders.NewServer(log, orderStore, 1<<20, nil)
	_, invoicesPool := testenv.MigratedDatabase(t, migrations.FS)
	invoiceStore := &Store{pool: invoicesPool}

	must := []string{
		`{"customerId":"` + strings.Repeat("漢", 64) + `","totalAmount":1}`,
		`{"customerId":"` + strings.Repeat("é", 64) + `","totalAmount":1}`,
		`{"customerId":"` + strings.Repeat("😀", 64) + `","totalAmount":1}`,
		`{"customerId":"` + strings.Repeat("e\u0301", 32) + `","totalAmount":1}`, // combining accents
		`{"customerId":"c","totalAmount":1000000000000}`,
		`{"customerId":"c","items":[{"sku":"a","quantity":1000000,"unitPrice":999999},{"sku":"b","quantity":1,"unitPrice":1000000}]}`,
		`{"customerId":"c","totalAmount":1000000000000,"items":[{"sku":"a","quantity":2,"unitPrice":500000000000}]}`,
	}
	currencies := acceptedCurrencies()
	for _, code := range currencies {
		must = append(must, `{"customerId":"c-`+code+`","totalAmount":1999,"currency":"`+code+`"}`)
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("random bodies from seed %d", seed)
	r := rand.New(rand.NewPCG(seed, seed))
	bodies := append([]string(nil), must...)
	for range 400 {
		bodies = append(bodies, randomOrderBody(r))
	}

	// Concurrent requests, so the orders store writes them in batches as in production.
	answers := make([]*httptest.ResponseRecorder, len(bodies))
	var wg sync.WaitGroup
	work := make(chan int)
	for range 8 {
		wg.Go(func() {
			for i := range work {
				req := httptest.NewRequest(http.MethodPost, "/orders", strings.NewReader(bodies[i]))
				req.Header.Set("Content-Type", "application/json")
				answers[i] = httptest.NewRecorder()
				api.ServeHTTP(answers[i], req)
			}
		})
	}
	for i := range bodies {
		work <- i
	}
	close(work)
	wg.Wait()

	accepted := map[uuid.UUID]orders.Order{}
	for i, rec := range answers {
		switch {
		case rec.Code == http.StatusCreated:
			var o orders.Order
			if err := json.Unmarshal(rec.Body.Bytes(), &o); err != nil {
				t.Fatalf("201 body %s: %v", rec.Body, err)
			}
			accepted[o.ID] = o
		case i < len(must):
			t.Errorf("%s: %d %s, want 201", bodies[i], rec.Code, rec.Body)
		case rec.Code != http.StatusBadRequest:
			t.Errorf("%s: %d %s, want 201 or 400", bodies[i], rec.Code, rec.Body)
		}
	}
	if len(accepted) < len(must)+100 {
		t.Fatalf("only %d of %d bodies accepted; the generator no longer tests much", len(accepted), len(bodies))
	}

	rows, err := ordersPool.Query(context.Background(), `SELECT body FROM outbox`)
	if err != nil {
		t.Fatal(err)
	}
	var events []event.OrderCreated
	for rows.Next() {
		var body []byte
		if err := rows.Scan(&body); err != nil {
			t.Fatal(err)
		}
		e, err := event.Parse(body)
		if err != nil {
			t.Errorf("the consumer refuses an accepted order's event: %v\n%s", err, body)
			continue
		}
		o, ok := accepted[e.OrderID]
		if !ok || e.Customer.ID != o.CustomerID || e.TotalAmount != o.TotalAmount || e.Currency != o.Currency || !e.OccurredAt.Equal(o.CreatedAt) {
			t.Errorf("event %+v, order %+v", e, o)
		}
		events = append(events, e)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(events) != len(accepted) {
		t.Fatalf("%d events parsed for %d accepted orders", len(events), len(accepted))
	}

	issued, err := invoiceStore.Issue(context.Background(), events)
	if err != nil {
		t.Fatalf("Issue: %v", err)
	}
	if len(issued) != len(accepted) {
		t.Fatalf("%d invoices for %d accepted orders", len(issued), len(accepted))
	}
	for _, v := range issued {
		o := accepted[v.OrderID]
		if v.CustomerID != o.CustomerID || v.Amount != o.TotalAmount || v.Currency != o.Currency {
			t.Errorf("invoice %+v for order %+v", v, o)
		}
	}
	t.Logf("%d of %d orders accepted, parsed and invoiced; %d currencies", len(accepted), len(bodies), len(currencies))
}

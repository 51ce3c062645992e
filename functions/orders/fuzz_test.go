package orders

import (
	"context"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"invoicing/shared/event"
	"invoicing/shared/web"
)

// overflowingItems are 20 lines whose true sum is 2^64 + 1000: summed in
// int64 they wrap around to exactly 1000.
var overflowingItems = `[` + strings.Repeat(`{"sku":"a","quantity":1000000,"unitPrice":1000000000000},`, 18) +
	`{"sku":"b","quantity":1000000,"unitPrice":446744073709},{"sku":"c","quantity":1,"unitPrice":552616}]`

// FuzzDecodeCreateOrder feeds arbitrary bodies through the one decode and
// validate path. It must answer every input with a 4xx problem or a request
// that keeps every rule; never panic, never a 5xx. An accepted request must
// also become an order.created event that event.Parse, the consumer's
// parser, accepts with the same fields.
func FuzzDecodeCreateOrder(f *testing.F) {
	for _, seed := range []string{
		`{"customerId":"c","totalAmount":1999,"currency":"BRL"}`,
		`{"customerId":"c","items":[{"sku":"a","quantity":2,"unitPrice":5}]}`,
		`{"customerId":"c","totalAmount":10,"items":[{"sku":"a","quantity":2,"unitPrice":5}]}`,
		`{"customerId":"c","totalAmount":19.99}`,
		`{"customerId":"c","totalAmount":1,"currency":null}`,
		`{"customerId":"\u0000","totalAmount":1}`,
		`{"customerId":"c","totalAmount":1e3}`,
		`{"customerId":"c","totalAmount":1} []`,
		"{\"customerId\":\"\xff\",\"totalAmount\":1}",
		`{"customerId":"c","items":[{"sku":"a","quantity":1000000,"unitPrice":1000000000000}]}`,
		`{"customerId":"c","items":` + overflowingItems + `}`,
		`{"customerId":"c","totalAmount":1000,"items":` + overflowingItems + `}`,
		`{"customerId":"` + strings.Repeat("漢", 64) + `","totalAmount":1000000000000,"currency":"JPY"}`,
		`{"customerId":"` + strings.Repeat("é", 64) + `","totalAmount":1,"currency":"EUR"}`,
		`{"customerId":"` + strings.Repeat("😀", 64) + `","totalAmount":1}`,
		`{"customerId":"c","items":[{"sku":"a","quantity":1000000,"unitPrice":999999},{"sku":"b","quantity":1,"unitPrice":1000000}]}`,
		`[]`, `null`, `""`, `{`, ``,
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, body string) {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodPost, "/orders", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		r, err := web.Decode[createOrderRequest](rec, req, 1<<20)
		if err != nil {
			var we *web.Error
			if !errors.As(err, &we) || we.Status < 400 || we.Status > 499 {
				t.Fatalf("error %v is not a 4xx web.Error", err)
			}
			return
		}
		if r.CustomerID == nil || event.CheckCustomerID(*r.CustomerID) != nil {
			t.Fatalf("accepted customerId %v", r.CustomerID)
		}
		if r.TotalAmount == nil || *r.TotalAmount < 1 || *r.TotalAmount > event.MaxAmount {
			t.Fatalf("accepted totalAmount %v", r.TotalAmount)
		}
		if event.CheckCurrency(r.Currency.Value) != nil {
			t.Fatalf("accepted currency %q", r.Currency.Value)
		}
		if r.Items != nil {
			// Exact arithmetic: an int64 sum would wrap just like the code under test.
			sum := new(big.Int)
			for _, it := range *r.Items {
				sum.Add(sum, new(big.Int).Mul(big.NewInt(*it.Quantity), big.NewInt(*it.UnitPrice)))
			}
			if !sum.IsInt64() || sum.Int64() != *r.TotalAmount {
				t.Fatalf("items add up to %s, total %d", sum, *r.TotalAmount)
			}
		}
		o := newOrder(r, time.Now())
		if o.TotalAmount != *r.TotalAmount || o.Status != StatusPending {
			t.Fatalf("order %+v from %+v", o, r)
		}
		msg, err := orderCreatedMessage(context.Background(), o)
		if err != nil {
			t.Fatal(err)
		}
		e, err := event.Parse(msg.Body)
		if err != nil {
			t.Fatalf("the consumer refuses the event of an accepted order: %v\n%s", err, msg.Body)
		}
		if e.OrderID != o.ID || e.Customer.ID != o.CustomerID || e.TotalAmount != o.TotalAmount ||
			e.Currency != o.Currency || !e.OccurredAt.Equal(o.CreatedAt) || e.EventID != msg.EventID {
			t.Fatalf("event %+v from order %+v", e, o)
		}
	})
}

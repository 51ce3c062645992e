package orders

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"invoicing/shared/web"
)

// FuzzDecodeCreateOrder feeds arbitrary bodies through the one decode and
// validate path. It must answer every input with a 4xx problem or a request
// that keeps every rule; never panic, never a 5xx.
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
		if r.CustomerID == nil || checkText(*r.CustomerID) != "" {
			t.Fatalf("accepted customerId %v", r.CustomerID)
		}
		if r.TotalAmount == nil || *r.TotalAmount < 1 || *r.TotalAmount > maxAmount {
			t.Fatalf("accepted totalAmount %v", r.TotalAmount)
		}
		if !currencyCode.MatchString(r.Currency.Value) {
			t.Fatalf("accepted currency %q", r.Currency.Value)
		}
		if r.Items != nil {
			var sum int64
			for _, it := range *r.Items {
				sum += *it.Quantity * *it.UnitPrice
			}
			if sum != *r.TotalAmount {
				t.Fatalf("items add up to %d, total %d", sum, *r.TotalAmount)
			}
		}
		o := newOrder(r, time.Now())
		if o.TotalAmount != *r.TotalAmount || o.Status != StatusPending {
			t.Fatalf("order %+v from %+v", o, r)
		}
	})
}

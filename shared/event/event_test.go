package event

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
)

func TestParse(t *testing.T) {
	order := uuid.MustParse("0196f3c0-0000-7000-8000-000000000001")
	evt := uuid.MustParse("0196f3c0-0000-7000-8000-000000000002")
	current := OrderCreated{EventID: evt, Type: TypeOrderCreated, OccurredAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		OrderID: order, Customer: Customer{ID: "c"}, TotalAmount: 1999, Currency: "USD"}
	body, _ := json.Marshal(current)
	got, err := Parse(body)
	if err != nil || got != current {
		t.Errorf("current form: %+v, %v", got, err)
	}

	legacy := `{"orderId":"` + order.String() + `","totalAmount":2500,"customer":{"id":"node"}}`
	got, err = Parse([]byte(legacy))
	want := OrderCreated{EventID: order, Type: TypeOrderCreated, OrderID: order, Customer: Customer{ID: "node"}, TotalAmount: 2500, Currency: "BRL"}
	if err != nil || got != want {
		t.Errorf("legacy form: %+v, %v", got, err)
	}

	for name, body := range map[string]string{
		"not JSON":         `nope`,
		"array":            `[]`,
		"no order":         `{"totalAmount":1,"customer":{"id":"c"}}`,
		"order not a uuid": `{"orderId":"42","totalAmount":1,"customer":{"id":"c"}}`,
		"no customer":      `{"orderId":"` + order.String() + `","totalAmount":1}`,
		"no amount":        `{"orderId":"` + order.String() + `","customer":{"id":"c"}}`,
		"amount string":    `{"orderId":"` + order.String() + `","totalAmount":"1","customer":{"id":"c"}}`,
		"amount fraction":  `{"orderId":"` + order.String() + `","totalAmount":1.5,"customer":{"id":"c"}}`,
		"amount negative":  `{"orderId":"` + order.String() + `","totalAmount":-1,"customer":{"id":"c"}}`,
		"unknown type":     `{"type":"order.paid","orderId":"` + order.String() + `","totalAmount":1,"customer":{"id":"c"}}`,
		"unknown version":  `{"version":3,"orderId":"` + order.String() + `","totalAmount":1,"customer":{"id":"c"}}`,
		"bad currency":     `{"currency":"usd","orderId":"` + order.String() + `","totalAmount":1,"customer":{"id":"c"}}`,
		"unknown currency": `{"currency":"ZZZ","orderId":"` + order.String() + `","totalAmount":1,"customer":{"id":"c"}}`,
		"amount too large": `{"orderId":"` + order.String() + `","totalAmount":1000000000001,"customer":{"id":"c"}}`,
		"empty customer":   `{"orderId":"` + order.String() + `","totalAmount":1,"customer":{"id":""}}`,
		"NUL customer":     `{"orderId":"` + order.String() + `","totalAmount":1,"customer":{"id":"a\u0000b"}}`,
		"65 characters":    `{"orderId":"` + order.String() + `","totalAmount":1,"customer":{"id":"` + strings.Repeat("漢", 65) + `"}}`,
	} {
		if _, err := Parse([]byte(body)); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: err = %v, want ErrInvalid", name, err)
		}
	}
}

// The limits count characters, as the API does: 64 characters of any
// script are one customer id, however many bytes they take.
func TestParseAcceptsWhatTheRulesAccept(t *testing.T) {
	order := uuid.MustParse("0196f3c0-0000-7000-8000-000000000001")
	for _, customer := range []string{
		strings.Repeat("漢", MaxCustomerIDLength),
		strings.Repeat("é", MaxCustomerIDLength),
		strings.Repeat("😀", MaxCustomerIDLength),
		strings.Repeat("x", MaxCustomerIDLength),
	} {
		if err := CheckCustomerID(customer); err != nil {
			t.Fatalf("CheckCustomerID(%q) = %v", customer, err)
		}
		body, _ := json.Marshal(map[string]any{"orderId": order, "totalAmount": MaxAmount, "customer": map[string]string{"id": customer}})
		got, err := Parse(body)
		if err != nil || got.Customer.ID != customer || got.TotalAmount != MaxAmount || got.Currency != DefaultCurrency {
			t.Errorf("legacy form with %d bytes of customer id: %+v, %v", len(customer), got, err)
		}
	}
}

func TestRules(t *testing.T) {
	for _, s := range []string{"", "a\x00", "a\nb", "\xff", strings.Repeat("é", MaxCustomerIDLength+1), "\u200b"} {
		if CheckCustomerID(s) == nil {
			t.Errorf("CheckCustomerID(%q) accepted", s)
		}
	}
	for _, n := range []int64{0, -1, MaxAmount + 1} {
		if CheckAmount(n) == nil {
			t.Errorf("CheckAmount(%d) accepted", n)
		}
	}
	for _, n := range []int64{1, MaxAmount} {
		if err := CheckAmount(n); err != nil {
			t.Errorf("CheckAmount(%d) = %v", n, err)
		}
	}
	for _, c := range []string{"", "brl", "BR", "BRLL", "ZZZ", "B\x00L"} {
		if CheckCurrency(c) == nil {
			t.Errorf("CheckCurrency(%q) accepted", c)
		}
	}
	for _, c := range []string{"BRL", "USD", "EUR", "JPY"} {
		if err := CheckCurrency(c); err != nil {
			t.Errorf("CheckCurrency(%q) = %v", c, err)
		}
	}
}

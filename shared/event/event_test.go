package event

import (
	"encoding/json"
	"errors"
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
	} {
		if _, err := Parse([]byte(body)); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: err = %v, want ErrInvalid", name, err)
		}
	}
}

package orders

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"invoicing/shared/event"
	"invoicing/shared/web"
)

// Limits of an order's items; the limits of the fields its event carries
// (customer id, amount, currency) are the rules of package event.
const (
	maxItems    = 100
	maxQuantity = 1_000_000
)

// Order is a stored order, as the API returns it.
type Order struct {
	ID          uuid.UUID `json:"id"`
	CustomerID  string    `json:"customerId"`
	TotalAmount int64     `json:"totalAmount"`
	Currency    string    `json:"currency"`
	Status      string    `json:"status"`
	CreatedAt   time.Time `json:"createdAt"`
	Items       []Item    `json:"items"`
}

// Item is one line of an order.
type Item struct {
	SKU       string `json:"sku"`
	Quantity  int64  `json:"quantity"`
	UnitPrice int64  `json:"unitPrice"`
}

// StatusPending is the status of every new order.
const StatusPending = "pending"

// Errors the store returns; routes.go maps them to HTTP statuses.
var (
	ErrNotFound            = errors.New("order not found")
	ErrIdempotencyInFlight = errors.New("a request with this Idempotency-Key is still being processed")
	ErrIdempotencyMismatch = errors.New("this Idempotency-Key was used with a different request body")
)

// createOrderRequest is the body of POST /orders. Pointers tell an absent
// field from a zero one.
type createOrderRequest struct {
	CustomerID  *string        `json:"customerId"`
	TotalAmount *int64         `json:"totalAmount"`
	Currency    optionalString `json:"currency"`
	Items       *[]itemRequest `json:"items"`
}

// optionalString tells an absent field (Set false) from an explicit null,
// which a pointer cannot: a null currency is an error, not the default.
type optionalString struct {
	Set   bool
	Null  bool
	Value string
}

func (o *optionalString) UnmarshalJSON(b []byte) error {
	o.Set = true
	if string(b) == "null" {
		o.Null = true
		return nil
	}
	return json.Unmarshal(b, &o.Value)
}

func (o optionalString) MarshalJSON() ([]byte, error) { return json.Marshal(o.Value) }

type itemRequest struct {
	SKU       *string `json:"sku"`
	Quantity  *int64  `json:"quantity"`
	UnitPrice *int64  `json:"unitPrice"`
}

// Validate checks every rule and fills the defaults: currency BRL when
// absent, totalAmount as the sum of the items when absent. The rules of the
// fields the event carries come from package event, which the consumer
// parses with: whatever is accepted here is accepted there.
func (r *createOrderRequest) Validate() []web.FieldError {
	var errs []web.FieldError
	add := func(field, format string, args ...any) {
		errs = append(errs, web.FieldError{Field: field, Detail: fmt.Sprintf(format, args...)})
	}
	if r.CustomerID == nil {
		add("customerId", "is required")
	} else if err := event.CheckCustomerID(*r.CustomerID); err != nil {
		add("customerId", "%v", err)
	}
	switch {
	case !r.Currency.Set:
		r.Currency = optionalString{Set: true, Value: event.DefaultCurrency}
	case r.Currency.Null:
		add("currency", "must be an ISO 4217 code of three capital letters, like BRL")
	default:
		if err := event.CheckCurrency(r.Currency.Value); err != nil {
			add("currency", "%v", err)
		}
	}

	var sum int64
	itemsOK, sumTooLarge := true, false
	if r.Items != nil {
		items := *r.Items
		switch {
		case len(items) == 0:
			add("items", "must not be empty when present")
			itemsOK = false
		case len(items) > maxItems:
			add("items", "must have at most %d entries", maxItems)
			itemsOK = false
		}
		for i, it := range items {
			f := func(name string) string { return fmt.Sprintf("items[%d].%s", i, name) }
			if it.SKU == nil {
				add(f("sku"), "is required")
			} else if err := event.CheckText(*it.SKU); err != nil {
				add(f("sku"), "%v", err)
			}
			switch {
			case it.Quantity == nil:
				add(f("quantity"), "is required")
				itemsOK = false
			case *it.Quantity < 1 || *it.Quantity > maxQuantity:
				add(f("quantity"), "must be from 1 to %d", maxQuantity)
				itemsOK = false
			}
			switch {
			case it.UnitPrice == nil:
				add(f("unitPrice"), "is required")
				itemsOK = false
			case *it.UnitPrice < 0 || *it.UnitPrice > event.MaxAmount:
				add(f("unitPrice"), "must be from 0 to %d", int64(event.MaxAmount))
				itemsOK = false
			}
			if itemsOK && !sumTooLarge {
				sum, sumTooLarge = addLine(sum, *it.Quantity, *it.UnitPrice)
			}
		}
	}

	switch {
	case r.TotalAmount != nil && event.CheckAmount(*r.TotalAmount) != nil:
		add("totalAmount", "%v", event.CheckAmount(*r.TotalAmount))
	case r.Items == nil && r.TotalAmount == nil:
		add("totalAmount", "is required when items are not given")
	case r.Items != nil && itemsOK && sumTooLarge:
		add("items", "add up to more than %d; the total must be from 1 to %d", int64(event.MaxAmount), int64(event.MaxAmount))
	case r.Items != nil && itemsOK && r.TotalAmount != nil && *r.TotalAmount != sum:
		add("totalAmount", "is %d but the items add up to %d", *r.TotalAmount, sum)
	case r.Items != nil && itemsOK && r.TotalAmount == nil:
		if err := event.CheckAmount(sum); err != nil {
			add("items", "add up to %d; the total must be from 1 to %d", sum, int64(event.MaxAmount))
		} else {
			r.TotalAmount = &sum
		}
	}
	return errs
}

// addLine adds quantity*unitPrice to sum, all non-negative, and reports
// whether the result would exceed event.MaxAmount. It never computes a value
// past the maximum, so nothing can wrap around int64 whatever the bounds of
// a line: 100 lines of 10^6 * 10^12 add up to far more than int64 holds.
func addLine(sum, quantity, unitPrice int64) (int64, bool) {
	room := event.MaxAmount - sum
	if quantity != 0 && unitPrice > room/quantity {
		return sum, true
	}
	return sum + quantity*unitPrice, false
}

// NewOrder returns a pending order for customer, as POST /orders creates it.
func NewOrder(customer string, amount int64, currency string, now time.Time) Order {
	return newOrder(createOrderRequest{CustomerID: &customer, TotalAmount: &amount, Currency: optionalString{Set: true, Value: currency}}, now)
}

// newOrder turns a validated request into an order with a fresh id.
func newOrder(r createOrderRequest, now time.Time) Order {
	items := []Item{}
	if r.Items != nil {
		for _, it := range *r.Items {
			items = append(items, Item{SKU: *it.SKU, Quantity: *it.Quantity, UnitPrice: *it.UnitPrice})
		}
	}
	return Order{
		ID:          uuid.Must(uuid.NewV7()),
		CustomerID:  *r.CustomerID,
		TotalAmount: *r.TotalAmount,
		Currency:    r.Currency.Value,
		Status:      StatusPending,
		// PostgreSQL keeps microseconds; the API answers what a GET will show.
		CreatedAt: now.UTC().Truncate(time.Microsecond),
		Items:     items,
	}
}

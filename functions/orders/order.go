package orders

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/google/uuid"
	"golang.org/x/text/currency"

	"invoicing/shared/event"
	"invoicing/shared/web"
)

// Limits of an order, checked before anything is stored.
const (
	maxAmount     = 1_000_000_000_000 // 10^12 minor units
	maxItems      = 100
	maxQuantity   = 1_000_000
	maxTextLength = 64
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

var currencyCode = regexp.MustCompile(`^[A-Z]{3}$`)

// Validate checks every rule and fills the defaults: currency BRL when
// absent, totalAmount as the sum of the items when absent.
func (r *createOrderRequest) Validate() []web.FieldError {
	var errs []web.FieldError
	add := func(field, format string, args ...any) {
		errs = append(errs, web.FieldError{Field: field, Detail: fmt.Sprintf(format, args...)})
	}
	if r.CustomerID == nil {
		add("customerId", "is required")
	} else if msg := checkText(*r.CustomerID); msg != "" {
		add("customerId", "%s", msg)
	}
	switch {
	case !r.Currency.Set:
		r.Currency = optionalString{Set: true, Value: event.DefaultCurrency}
	case r.Currency.Null || !currencyCode.MatchString(r.Currency.Value):
		add("currency", "must be an ISO 4217 code of three capital letters, like BRL")
	default:
		if _, err := currency.ParseISO(r.Currency.Value); err != nil {
			add("currency", "%q is not an ISO 4217 currency code", r.Currency.Value)
		}
	}

	var sum int64
	itemsOK := true
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
			} else if msg := checkText(*it.SKU); msg != "" {
				add(f("sku"), "%s", msg)
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
			case *it.UnitPrice < 0 || *it.UnitPrice > maxAmount:
				add(f("unitPrice"), "must be from 0 to %d", int64(maxAmount))
				itemsOK = false
			}
			if itemsOK {
				sum += *it.Quantity * *it.UnitPrice // both bounded: no overflow across 100 items
			}
		}
	}

	switch {
	case r.TotalAmount != nil && (*r.TotalAmount < 1 || *r.TotalAmount > maxAmount):
		add("totalAmount", "must be an integer number of minor units from 1 to %d", int64(maxAmount))
	case r.Items == nil && r.TotalAmount == nil:
		add("totalAmount", "is required when items are not given")
	case r.Items != nil && itemsOK && r.TotalAmount != nil && *r.TotalAmount != sum:
		add("totalAmount", "is %d but the items add up to %d", *r.TotalAmount, sum)
	case r.Items != nil && itemsOK && r.TotalAmount == nil:
		if sum < 1 || sum > maxAmount {
			add("items", "add up to %d; the total must be from 1 to %d", sum, int64(maxAmount))
		} else {
			r.TotalAmount = &sum
		}
	}
	return errs
}

func checkText(s string) string {
	if !utf8.ValidString(s) {
		return "must be valid UTF-8"
	}
	n := utf8.RuneCountInString(s)
	if n < 1 || n > maxTextLength {
		return fmt.Sprintf("must be 1 to %d characters", maxTextLength)
	}
	for _, c := range s {
		if !unicode.IsPrint(c) {
			return "must contain printable characters only"
		}
	}
	return ""
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

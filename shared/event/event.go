// Package event defines order.created, the only contract between the orders
// and invoices services, and parses both its current form and the original
// Node.js producer's {orderId, totalAmount, customer:{id}}.
package event

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
)

// TypeOrderCreated is the event type, also sent as the AMQP type property.
const TypeOrderCreated = "order.created"

// DefaultCurrency applies to legacy messages, which carry no currency.
const DefaultCurrency = "BRL"

// Customer identifies who the order is for.
type Customer struct {
	ID string `json:"id"`
}

// OrderCreated is published once per stored order.
type OrderCreated struct {
	EventID     uuid.UUID `json:"eventId"`
	Type        string    `json:"type"`
	OccurredAt  time.Time `json:"occurredAt"`
	OrderID     uuid.UUID `json:"orderId"`
	Customer    Customer  `json:"customer"`
	TotalAmount int64     `json:"totalAmount"`
	Currency    string    `json:"currency"`
}

// ErrInvalid marks a message that can never be processed, whatever retries.
var ErrInvalid = errors.New("invalid order.created message")

// wire accepts every field either form may carry; pointers tell absent from zero.
type wire struct {
	EventID     *uuid.UUID       `json:"eventId"`
	Type        *string          `json:"type"`
	Version     *int             `json:"version"`
	OccurredAt  *time.Time       `json:"occurredAt"`
	OrderID     *uuid.UUID       `json:"orderId"`
	Customer    *Customer        `json:"customer"`
	TotalAmount *json.RawMessage `json:"totalAmount"`
	Currency    *string          `json:"currency"`
}

// Parse decodes and checks a message body. Errors wrap ErrInvalid. A legacy
// message has no eventId: its order id serves as event id, since the legacy
// producer sent one message per order.
func Parse(body []byte) (OrderCreated, error) {
	var w wire
	if err := json.Unmarshal(body, &w); err != nil {
		return OrderCreated{}, fmt.Errorf("%w: not JSON: %v", ErrInvalid, err)
	}
	if w.Type != nil && *w.Type != TypeOrderCreated {
		return OrderCreated{}, fmt.Errorf("%w: unknown type %q", ErrInvalid, *w.Type)
	}
	if w.Version != nil && *w.Version != 1 {
		return OrderCreated{}, fmt.Errorf("%w: unknown version %d", ErrInvalid, *w.Version)
	}
	if w.OrderID == nil || *w.OrderID == uuid.Nil {
		return OrderCreated{}, fmt.Errorf("%w: orderId is missing", ErrInvalid)
	}
	if w.Customer == nil {
		return OrderCreated{}, fmt.Errorf("%w: customer is missing", ErrInvalid)
	}
	if err := CheckCustomerID(w.Customer.ID); err != nil {
		return OrderCreated{}, fmt.Errorf("%w: customer.id %w", ErrInvalid, err)
	}
	if w.TotalAmount == nil {
		return OrderCreated{}, fmt.Errorf("%w: totalAmount is missing", ErrInvalid)
	}
	raw := bytes.TrimSpace(*w.TotalAmount)
	if len(raw) == 0 || raw[0] == '"' {
		return OrderCreated{}, fmt.Errorf("%w: totalAmount is not a number", ErrInvalid)
	}
	var n json.Number
	if err := json.Unmarshal(raw, &n); err != nil {
		return OrderCreated{}, fmt.Errorf("%w: totalAmount is not a number", ErrInvalid)
	}
	amount, err := n.Int64()
	if err != nil {
		return OrderCreated{}, fmt.Errorf("%w: totalAmount %s is not an integer of minor units", ErrInvalid, n)
	}
	if err := CheckAmount(amount); err != nil {
		return OrderCreated{}, fmt.Errorf("%w: totalAmount %w", ErrInvalid, err)
	}
	e := OrderCreated{
		Type:        TypeOrderCreated,
		OrderID:     *w.OrderID,
		Customer:    *w.Customer,
		TotalAmount: amount,
		Currency:    DefaultCurrency,
		EventID:     *w.OrderID,
	}
	if w.EventID != nil {
		e.EventID = *w.EventID
	}
	if w.OccurredAt != nil {
		e.OccurredAt = *w.OccurredAt
	}
	if w.Currency != nil {
		if err := CheckCurrency(*w.Currency); err != nil {
			return OrderCreated{}, fmt.Errorf("%w: currency %w", ErrInvalid, err)
		}
		e.Currency = *w.Currency
	}
	return e, nil
}

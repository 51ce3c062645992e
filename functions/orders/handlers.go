package orders

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/gorilla/mux"

	"invoicing/shared/event"
	"invoicing/shared/web"
)

// maxIdempotencyKey bounds the Idempotency-Key header, as Stripe does.
const maxIdempotencyKey = 255

func handleCreateOrder(store *Store, bodyLimit int64) web.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		idem, err := idempotencyKey(r)
		if err != nil {
			return err
		}
		req, err := web.Decode[createOrderRequest](w, r, bodyLimit)
		if err != nil {
			return err
		}
		o := newOrder(req, time.Now())
		body, err := json.Marshal(o)
		if err != nil {
			return fmt.Errorf("encode order: %w", err)
		}
		if idem != nil {
			canonical, _ := json.Marshal(req) // validated request with defaults filled
			sum := sha256.Sum256(canonical)
			idem.Hash = sum[:]
		}
		resp := Response{Status: http.StatusCreated, Location: "/orders/" + o.ID.String(), Body: body}
		stored, replayed, err := store.Create(r.Context(), o, idem, resp)
		if err != nil {
			return err
		}
		if replayed {
			w.Header().Set("Idempotent-Replayed", "true")
		} else {
			ordersCreated.Add(r.Context(), 1)
		}
		w.Header().Set("Location", stored.Location)
		web.WriteRawJSON(w, stored.Status, stored.Body)
		return nil
	}
}

func idempotencyKey(r *http.Request) (*IdempotentRequest, error) {
	values := r.Header.Values("Idempotency-Key")
	if len(values) == 0 {
		return nil, nil
	}
	key := strings.TrimSpace(values[0])
	if len(values) > 1 || len(key) < 1 || len(key) > maxIdempotencyKey {
		return nil, web.Errorf(http.StatusBadRequest, "Idempotency-Key must be one header of 1 to %d characters", maxIdempotencyKey)
	}
	for _, c := range []byte(key) {
		if c < 0x20 || c > 0x7e {
			return nil, web.Errorf(http.StatusBadRequest, "Idempotency-Key must be printable ASCII")
		}
	}
	return &IdempotentRequest{Key: key}, nil
}

func handleGetOrder(store *Store) web.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		id, err := web.PathID(mux.Vars(r)["id"])
		if err != nil {
			return err
		}
		o, err := store.Get(r.Context(), id)
		if err != nil {
			return err
		}
		web.WriteJSON(w, http.StatusOK, o)
		return nil
	}
}

func handleListOrders(store *Store) web.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		limit, after, err := web.PageParams(r)
		if err != nil {
			return err
		}
		// The filter follows the rule of stored customer ids, which also keeps
		// text PostgreSQL cannot take (NUL, invalid UTF-8) away from the query.
		customer := r.URL.Query().Get("customerId")
		if customer != "" {
			if err := event.CheckCustomerID(customer); err != nil {
				return web.ValidationError([]web.FieldError{{Field: "customerId", Detail: err.Error()}})
			}
		}
		orders, err := store.List(r.Context(), ListFilter{CustomerID: customer, After: after, Limit: limit + 1})
		if err != nil {
			return err
		}
		web.WriteJSON(w, http.StatusOK, web.NewPage(orders, limit, func(o Order) uuid.UUID { return o.ID }))
		return nil
	}
}

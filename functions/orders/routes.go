package orders

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/gorilla/mux"

	"invoicing/shared/postgres"
	"invoicing/shared/web"
)

// NewServer returns the orders API. The same handler serves net/http and Lambda.
func NewServer(log *slog.Logger, store *Store, bodyLimit int64, checks map[string]web.Check) http.Handler {
	return web.Observe(log, routes(log, store, bodyLimit, checks))
}

// Router returns the API's routes with no dependencies behind them, for
// checks that only match requests (the Kong configuration's route test).
func Router() *mux.Router {
	return routes(slog.New(slog.DiscardHandler), nil, 0, nil)
}

// routes lists the whole API.
func routes(log *slog.Logger, store *Store, bodyLimit int64, checks map[string]web.Check) *mux.Router {
	r := web.NewRouter()
	h := func(fn web.HandlerFunc) http.Handler { return web.Handle(log, httpError, fn) }
	r.Handle("/orders", h(handleCreateOrder(store, bodyLimit))).Methods(http.MethodPost)
	r.Handle("/orders", h(handleListOrders(store))).Methods(http.MethodGet)
	r.Handle("/orders/{id}", h(handleGetOrder(store))).Methods(http.MethodGet)
	// Readiness is the database only: the outbox accepts orders while the
	// broker is away, so a broker outage must not take the API out of the
	// load balancer. The broker still shows in the answer.
	ready := web.Ready(log, checks, "postgres")
	r.Handle("/health/live", web.Live()).Methods(http.MethodGet)
	r.Handle("/health/ready", ready).Methods(http.MethodGet)
	r.Handle("/health", ready).Methods(http.MethodGet) // kept for existing probes
	return r
}

// httpError maps the domain's errors to HTTP answers, in one place.
func httpError(err error) error {
	var unknown *OutcomeUnknownError
	switch {
	case errors.As(err, &unknown):
		// Not "retry": a retry without an Idempotency-Key could store the
		// order twice. The id lets the client check first.
		id := unknown.OrderID.String()
		return &web.Error{
			Status: http.StatusServiceUnavailable,
			Title:  http.StatusText(http.StatusServiceUnavailable),
			Type:   "about:blank",
			Detail: fmt.Sprintf("the order store did not confirm whether order %s was stored; "+
				"check GET /orders/%s before retrying (retrying with the same Idempotency-Key is always safe)", id, id),
			Extensions: map[string]any{"orderId": id, "outcome": "unknown"},
		}
	case errors.Is(err, ErrNotFound):
		return web.Errorf(http.StatusNotFound, "%v", err)
	case errors.Is(err, ErrIdempotencyInFlight):
		return web.Errorf(http.StatusConflict, "%v; retry later", err)
	case errors.Is(err, ErrIdempotencyMismatch):
		return web.Errorf(http.StatusUnprocessableEntity, "%v", err)
	case errors.Is(err, ErrStoreClosed) || postgres.IsUnavailable(err):
		return web.Errorf(http.StatusServiceUnavailable, "the order store is unavailable; nothing was stored, retry later")
	}
	return err
}

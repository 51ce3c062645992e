package invoices

import (
	"errors"
	"log/slog"
	"net/http"

	"github.com/gorilla/mux"

	"invoicing/shared/postgres"
	"invoicing/shared/web"
)

// NewServer returns the invoices read API. The same handler serves net/http and Lambda.
func NewServer(log *slog.Logger, store *Store, checks map[string]web.Check) http.Handler {
	return web.Observe(log, routes(log, store, checks))
}

// Router returns the API's routes with no dependencies behind them, for
// checks that only match requests (the Kong configuration's route test).
func Router() *mux.Router {
	return routes(slog.New(slog.DiscardHandler), nil, nil)
}

// routes lists the whole API.
func routes(log *slog.Logger, store *Store, checks map[string]web.Check) *mux.Router {
	r := web.NewRouter()
	h := func(fn web.HandlerFunc) http.Handler { return web.Handle(log, httpError, fn) }
	r.Handle("/invoices", h(handleListInvoices(store))).Methods(http.MethodGet)
	r.Handle("/invoices/{id}", h(handleGetInvoice(store))).Methods(http.MethodGet)
	// Readiness is what the read API needs, the database; the consumer's
	// broker shows in the answer but does not stop reads being served.
	ready := web.Ready(log, checks, "postgres")
	r.Handle("/health/live", web.Live()).Methods(http.MethodGet)
	r.Handle("/health/ready", ready).Methods(http.MethodGet)
	r.Handle("/health", ready).Methods(http.MethodGet) // kept for existing probes
	return r
}

// httpError maps the domain's errors to HTTP answers, in one place.
func httpError(err error) error {
	switch {
	case errors.Is(err, ErrNotFound):
		return web.Errorf(http.StatusNotFound, "%v", err)
	case postgres.IsUnavailable(err):
		return web.Errorf(http.StatusServiceUnavailable, "the invoice store is unavailable; retry later")
	}
	return err
}

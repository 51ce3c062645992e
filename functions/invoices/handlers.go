package invoices

import (
	"net/http"

	"github.com/google/uuid"
	"github.com/gorilla/mux"

	"invoicing/shared/event"
	"invoicing/shared/web"
)

func handleGetInvoice(store *Store) web.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		id, err := web.PathID(mux.Vars(r)["id"])
		if err != nil {
			return err
		}
		v, err := store.Get(r.Context(), id)
		if err != nil {
			return err
		}
		web.WriteJSON(w, http.StatusOK, v)
		return nil
	}
}

func handleListInvoices(store *Store) web.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		limit, after, err := web.PageParams(r)
		if err != nil {
			return err
		}
		q := r.URL.Query()
		f := ListFilter{After: after, Limit: limit + 1, CustomerID: q.Get("customerId")}
		var fields []web.FieldError
		if v := q.Get("orderId"); v != "" {
			if f.OrderID, err = uuid.Parse(v); err != nil {
				fields = append(fields, web.FieldError{Field: "orderId", Detail: "must be a UUID"})
			}
		}
		// The filter follows the rule of the customer ids invoices are issued
		// for; it also keeps text PostgreSQL cannot take (NUL, invalid UTF-8)
		// away from the query, where it would fail as a 500.
		if f.CustomerID != "" {
			if err := event.CheckCustomerID(f.CustomerID); err != nil {
				fields = append(fields, web.FieldError{Field: "customerId", Detail: err.Error()})
			}
		}
		if len(fields) > 0 {
			return web.ValidationError(fields)
		}
		invoices, err := store.List(r.Context(), f)
		if err != nil {
			return err
		}
		web.WriteJSON(w, http.StatusOK, web.NewPage(invoices, limit, func(v Invoice) uuid.UUID { return v.ID }))
		return nil
	}
}

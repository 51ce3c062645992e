package invoices

import (
	"net/http"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/gorilla/mux"

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
		if !utf8.ValidString(f.CustomerID) || utf8.RuneCountInString(f.CustomerID) > 64 {
			fields = append(fields, web.FieldError{Field: "customerId", Detail: "must be valid UTF-8 of at most 64 characters"})
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

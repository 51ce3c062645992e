package web

import (
	"encoding/base64"
	"net/http"
	"strconv"

	"github.com/google/uuid"
)

// Page limits for list endpoints.
const (
	DefaultPageSize = 20
	MaxPageSize     = 100
)

// Page is the answer of a list endpoint. NextCursor is empty on the last page.
type Page[T any] struct {
	Data       []T    `json:"data"`
	NextCursor string `json:"nextCursor,omitempty"`
}

// PageParams reads limit and cursor from the query string. The cursor is the
// opaque form of the last id of the previous page.
func PageParams(r *http.Request) (limit int, after uuid.UUID, err error) {
	q := r.URL.Query()
	limit = DefaultPageSize
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxPageSize {
			return 0, uuid.Nil, &Error{Status: http.StatusBadRequest, Title: "Validation failed", Type: "about:blank",
				Detail: "limit must be an integer from 1 to " + strconv.Itoa(MaxPageSize),
				Errors: []FieldError{{Field: "limit", Detail: "must be from 1 to " + strconv.Itoa(MaxPageSize)}}}
		}
		limit = n
	}
	if v := q.Get("cursor"); v != "" {
		raw, err := base64.RawURLEncoding.DecodeString(v)
		if err == nil {
			after, err = uuid.FromBytes(raw)
		}
		if err != nil {
			return 0, uuid.Nil, &Error{Status: http.StatusBadRequest, Title: "Validation failed", Type: "about:blank",
				Detail: "cursor is not one this API returned",
				Errors: []FieldError{{Field: "cursor", Detail: "invalid"}}}
		}
	}
	return limit, after, nil
}

// NewPage builds a page from up to limit+1 rows fetched: the extra row only
// tells that another page exists.
func NewPage[T any](rows []T, limit int, id func(T) uuid.UUID) Page[T] {
	p := Page[T]{Data: rows}
	if len(rows) > limit {
		p.Data = rows[:limit]
		last := id(rows[limit-1])
		p.NextCursor = base64.RawURLEncoding.EncodeToString(last[:])
	}
	if p.Data == nil {
		p.Data = []T{}
	}
	return p
}

// PathID parses the {id} path variable as a UUID, or answers 400.
func PathID(raw string) (uuid.UUID, error) {
	id, err := uuid.Parse(raw)
	if err != nil {
		e := Errorf(http.StatusBadRequest, "id %q is not a UUID", raw)
		e.Errors = []FieldError{{Field: "id", Detail: "must be a UUID"}}
		return uuid.Nil, e
	}
	return id, nil
}

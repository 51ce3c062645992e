// Package web holds the HTTP conventions both APIs share: one decode-and-
// validate path for request bodies, RFC 9457 problem responses, and the
// middleware that logs requests and turns panics into 500s.
package web

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
)

// FieldError names one invalid field of a request.
type FieldError struct {
	Field  string `json:"field"`
	Detail string `json:"detail"`
}

// Error is an error with an HTTP status. Handlers return it; Handle writes it
// as application/problem+json.
type Error struct {
	Status int          `json:"status"`
	Title  string       `json:"title"`
	Detail string       `json:"detail,omitempty"`
	Type   string       `json:"type"`
	Errors []FieldError `json:"errors,omitempty"`
	// Extensions are further members of the problem (RFC 9457 section
	// 3.2), such as the id a client needs to check what happened. Names
	// of the members above are ignored here.
	Extensions map[string]any `json:"-"`
}

// MarshalJSON writes the standard members, then the extensions.
func (e *Error) MarshalJSON() ([]byte, error) {
	type standard Error // without this method
	body, err := json.Marshal((*standard)(e))
	if err != nil || len(e.Extensions) == 0 {
		return body, err
	}
	ext := make(map[string]any, len(e.Extensions))
	for k, v := range e.Extensions {
		switch k {
		case "status", "title", "detail", "type", "errors":
		default:
			ext[k] = v
		}
	}
	more, err := json.Marshal(ext)
	if err != nil || len(ext) == 0 {
		return body, err
	}
	return append(append(body[:len(body)-1], ','), more[1:]...), nil
}

func (e *Error) Error() string {
	if e.Detail != "" {
		return e.Title + ": " + e.Detail
	}
	return e.Title
}

// Errorf builds an Error with a formatted detail. The title is the status text.
func Errorf(status int, format string, args ...any) *Error {
	return &Error{Status: status, Title: http.StatusText(status), Detail: fmt.Sprintf(format, args...), Type: "about:blank"}
}

// ValidationError is the 400 answer to a body that decoded but broke a rule.
func ValidationError(fields []FieldError) *Error {
	return &Error{
		Status: http.StatusBadRequest,
		Title:  "Validation failed",
		Detail: "one or more fields are invalid; see errors",
		Type:   "about:blank",
		Errors: fields,
	}
}

// WriteProblem writes e as application/problem+json.
func WriteProblem(w http.ResponseWriter, e *Error) {
	body, _ := json.Marshal(e) // Error has only marshalable fields
	w.Header().Set("Content-Type", "application/problem+json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(e.Status)
	_, _ = w.Write(append(body, '\n'))
}

// WriteJSON writes v with the given status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		WriteProblem(w, Errorf(http.StatusInternalServerError, "the response could not be encoded"))
		return
	}
	WriteRawJSON(w, status, body)
}

// WriteRawJSON writes an already encoded JSON body.
func WriteRawJSON(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// HandlerFunc is an HTTP handler that may fail. Errors of type *Error are
// written as they are; others become a 500 whose detail hides the cause.
type HandlerFunc func(w http.ResponseWriter, r *http.Request) error

// Handle adapts fn to http.Handler. mapErr, when not nil, turns the errors
// that are not already *Error (domain and store errors) into *Error, in one
// place per service.
func Handle(log *slog.Logger, mapErr func(error) error, fn HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		err := fn(w, r)
		if err == nil {
			return
		}
		var we *Error
		if !errors.As(err, &we) && mapErr != nil {
			err = mapErr(err)
		}
		if !errors.As(err, &we) {
			log.ErrorContext(r.Context(), "request failed", "method", r.Method, "path", r.URL.Path, "err", err)
			we = Errorf(http.StatusInternalServerError, "the request could not be completed; it is safe to retry")
		}
		WriteProblem(w, we)
	})
}

// NotFound answers requests that match no route.
func NotFound() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		WriteProblem(w, Errorf(http.StatusNotFound, "no route for %s", r.URL.Path))
	})
}

// MethodNotAllowed answers requests whose path exists but not with this method.
func MethodNotAllowed() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		WriteProblem(w, Errorf(http.StatusMethodNotAllowed, "%s is not allowed on %s", r.Method, r.URL.Path))
	})
}

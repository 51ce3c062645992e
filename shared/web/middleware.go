package web

import (
	"context"
	"log/slog"
	"net/http"
	"runtime/debug"
	"time"

	"github.com/gorilla/mux"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"invoicing/shared/telemetry"
)

type statusRecorder struct {
	http.ResponseWriter
	status int
	bytes  int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	n, err := s.ResponseWriter.Write(b)
	s.bytes += n
	return n, err
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// CorrelationIDHeader carries the id the gateway (Kong's correlation-id
// plugin) gives each request; the request log line repeats it, so a log
// line can be found from the gateway's log and the other way round.
const CorrelationIDHeader = "X-Correlation-ID"

// Observe traces every request (404 and 405 too), logs one line per request
// with its trace id (and the gateway's correlation id when present), and turns a panic into a 500 problem instead of a
// dropped connection. The span is named by the route template once the
// router matched one ("GET /orders/{id}"), by the method alone otherwise.
func Observe(log *slog.Logger, next http.Handler) http.Handler {
	if !telemetry.Enabled() {
		return logAndRecover(log, next)
	}
	return otelhttp.NewHandler(logAndRecover(log, next), "http.server",
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string { return r.Method }))
}

func logAndRecover(log *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
		route := new(string)
		r = r.WithContext(context.WithValue(r.Context(), routeKey{}, route))
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				log.ErrorContext(r.Context(), "panic", "panic", p, "stack", string(debug.Stack()))
				if rec.status == 0 {
					WriteProblem(rec, Errorf(http.StatusInternalServerError, "the request could not be completed"))
				}
			}
			attrs := []any{"method", r.Method, "path", r.URL.Path, "route", *route,
				"status", rec.status, "bytes", rec.bytes,
				"duration_ms", float64(time.Since(start).Microseconds()) / 1000}
			if id := r.Header.Get(CorrelationIDHeader); id != "" {
				attrs = append(attrs, "correlation_id", id)
			}
			log.InfoContext(r.Context(), "request", attrs...)
		}()
		next.ServeHTTP(rec, r)
	})
}

type routeKey struct{}

// Route returns the matched route template ("/orders/{id}") or "" when none matched.
func Route(r *http.Request) string {
	if route := mux.CurrentRoute(r); route != nil {
		if t, err := route.GetPathTemplate(); err == nil {
			return t
		}
	}
	return ""
}

// NewRouter returns a router whose 404 and 405 answers are problem documents
// and which tells Observe the matched route template.
func NewRouter() *mux.Router {
	r := mux.NewRouter()
	r.NotFoundHandler = NotFound()
	r.MethodNotAllowedHandler = MethodNotAllowed()
	r.Use(func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			route := Route(req)
			if p, ok := req.Context().Value(routeKey{}).(*string); ok {
				*p = route
			}
			span := trace.SpanFromContext(req.Context())
			span.SetName(req.Method + " " + route)
			span.SetAttributes(semconv.HTTPRoute(route))
			if l, ok := otelhttp.LabelerFromContext(req.Context()); ok {
				l.Add(semconv.HTTPRoute(route))
			}
			next.ServeHTTP(w, req)
		})
	})
	return r
}

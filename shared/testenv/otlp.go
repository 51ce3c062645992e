package testenv

import (
	"bytes"
	"compress/gzip"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"

	collectormetrics "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// Span is one received span with the service that sent it.
type Span struct {
	Service string
	// Resource holds the string and int attributes of the resource that
	// sent the span.
	Resource map[string]string
	*tracepb.Span
}

// TraceID is the span's trace id in hex.
func (s Span) TraceID() string { return hex.EncodeToString(s.Span.TraceId) }

// SpanID is the span's id in hex.
func (s Span) SpanID() string { return hex.EncodeToString(s.Span.SpanId) }

// ParentID is the parent span's id in hex, "" for a root.
func (s Span) ParentID() string { return hex.EncodeToString(s.Span.ParentSpanId) }

// Attr returns a string or int attribute as a string.
func (s Span) Attr(key string) string {
	for _, kv := range s.Attributes {
		if kv.Key == key {
			return attrString(kv.Value)
		}
	}
	return ""
}

func attrString(v *commonpb.AnyValue) string {
	if _, ok := v.GetValue().(*commonpb.AnyValue_IntValue); ok {
		return strconv.FormatInt(v.GetIntValue(), 10)
	}
	return v.GetStringValue()
}

// OTLPReceiver is an OTLP/HTTP endpoint inside the test that decodes the
// real protobuf export requests the services send.
type OTLPReceiver struct {
	URL string

	mu      sync.Mutex
	spans   []Span
	metrics map[string]bool
}

// NewOTLPReceiver starts a receiver; it stops when the test ends.
func NewOTLPReceiver(t testing.TB) *OTLPReceiver {
	r := &OTLPReceiver{metrics: map[string]bool{}}
	srv := httptest.NewServer(http.HandlerFunc(r.serve(t)))
	t.Cleanup(srv.Close)
	r.URL = srv.URL
	return r
}

func (r *OTLPReceiver) serve(t testing.TB) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, req *http.Request) {
		var body io.Reader = req.Body
		if req.Header.Get("Content-Encoding") == "gzip" {
			gz, err := gzip.NewReader(req.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			body = gz
		}
		raw, _ := io.ReadAll(body)
		var resp proto.Message
		switch req.URL.Path {
		case "/v1/traces":
			var ex collectortrace.ExportTraceServiceRequest
			if err := proto.Unmarshal(raw, &ex); err != nil {
				t.Errorf("bad trace export: %v", err)
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			r.mu.Lock()
			for _, rs := range ex.ResourceSpans {
				resource := map[string]string{}
				for _, kv := range rs.Resource.GetAttributes() {
					resource[kv.Key] = attrString(kv.Value)
				}
				for _, ss := range rs.ScopeSpans {
					for _, s := range ss.Spans {
						r.spans = append(r.spans, Span{Service: resource["service.name"], Resource: resource, Span: s})
					}
				}
			}
			r.mu.Unlock()
			resp = &collectortrace.ExportTraceServiceResponse{}
		case "/v1/metrics":
			var ex collectormetrics.ExportMetricsServiceRequest
			if err := proto.Unmarshal(raw, &ex); err != nil {
				t.Errorf("bad metrics export: %v", err)
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			r.mu.Lock()
			for _, rm := range ex.ResourceMetrics {
				for _, sm := range rm.ScopeMetrics {
					for _, m := range sm.Metrics {
						r.metrics[m.Name] = true
					}
				}
			}
			r.mu.Unlock()
			resp = &collectormetrics.ExportMetricsServiceResponse{}
		default:
			http.NotFound(w, req)
			return
		}
		out, _ := proto.Marshal(resp)
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = io.Copy(w, bytes.NewReader(out))
	}
}

// Spans returns the spans received so far.
func (r *OTLPReceiver) Spans() []Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Span(nil), r.spans...)
}

// HasMetric reports whether a metric of that name was received.
func (r *OTLPReceiver) HasMetric(name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.metrics[name]
}

package web

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestRequestLogCarriesTheCorrelationID(t *testing.T) {
	for _, tc := range []struct{ name, id string }{{"with header", "3f1c0f6e-8a51-4d3b-9a57-0b6f1b9e2c11#7"}, {"without header", ""}} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			h := Observe(slog.New(slog.NewJSONHandler(&buf, nil)), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
			req := httptest.NewRequest(http.MethodGet, "/orders", nil)
			if tc.id != "" {
				req.Header.Set(CorrelationIDHeader, tc.id)
			}
			h.ServeHTTP(httptest.NewRecorder(), req)
			var line map[string]any
			if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
				t.Fatalf("log line %q: %v", buf.String(), err)
			}
			got, present := line["correlation_id"]
			if tc.id == "" && present {
				t.Errorf("correlation_id = %v, want it absent without the header", got)
			}
			if tc.id != "" && got != tc.id {
				t.Errorf("correlation_id = %v, want %q (line %s)", got, tc.id, buf.String())
			}
		})
	}
}
